"""Shared DICOM building blocks: UID root, synthetic patients and Part-10 writing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicom_fixtures._pixels import swap_words

#: Fixed root of every UID the fixtures use (a UUID-derived ``2.25`` root).
UID_ROOT = "2.25.243011392191530527287830733995182415898."
IMPLEMENTATION_CLASS_UID = UID_ROOT + "0.1"
IMPLEMENTATION_VERSION_NAME = "XRGW_FIXTURES_1"
MANUFACTURER = "xray-gateway fixtures"
ISSUER_OF_PATIENT_ID = "XRAY-GATEWAY-FIXTURES"

NATIVE_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)


def make_uid(*parts: int) -> str:
    """Return ``UID_ROOT`` followed by `parts`, checked for validity.

    Parameters
    ----------
    *parts : int
        Non-negative numeric components appended to the root.

    Returns
    -------
    str
        A valid UID of at most 64 characters.
    """
    return checked_uid(UID_ROOT + ".".join(str(part) for part in parts))


def checked_uid(value: str) -> str:
    """Return `value` if it is a valid DICOM UID, else raise ``ValueError``.

    Parameters
    ----------
    value : str
        Candidate UID.

    Returns
    -------
    str
        `value` unchanged.
    """
    if not UID(value).is_valid:
        raise ValueError(f"not a valid DICOM UID (max 64 chars, digits and dots): {value!r}")
    return value


@dataclass(frozen=True)
class Patient:
    """A synthetic, obviously fake patient."""

    name: str
    patient_id: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class Study:
    """Study-level attributes shared by every instance of one study."""

    uid: str
    patient: Patient
    date: str
    time: str
    accession: str
    study_id: str
    description: str


@dataclass(frozen=True)
class Series:
    """Series-level attributes shared by every instance of one series."""

    uid: str
    study: Study
    number: int
    modality: str
    body_part: str
    description: str


def base_dataset(
    *,
    series: Series,
    sop_class_uid: str,
    sop_instance_uid: str,
    instance_number: int,
) -> Dataset:
    """Return a dataset with the patient, study, series and equipment modules.

    Parameters
    ----------
    series : Series
        Series (and through it study and patient) of the instance.
    sop_class_uid, sop_instance_uid : str
        SOP Common module identifiers.
    instance_number : int
        Instance Number within the series.

    Returns
    -------
    pydicom.dataset.Dataset
        Dataset without image attributes or file meta information.
    """
    study = series.study
    patient = study.patient
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = study.date
    ds.InstanceCreationTime = study.time
    ds.StudyDate = study.date
    ds.SeriesDate = study.date
    ds.ContentDate = study.date
    ds.StudyTime = study.time
    ds.SeriesTime = study.time
    ds.ContentTime = study.time
    ds.AccessionNumber = study.accession
    ds.Modality = series.modality
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = "Fixture General Hospital"
    ds.ReferringPhysicianName = "REFERRER^FIXTURE"
    ds.StationName = "FIXTURE01"
    ds.StudyDescription = study.description
    ds.SeriesDescription = series.description
    ds.ManufacturerModelName = "synthetic"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = ISSUER_OF_PATIENT_ID
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientIdentityRemoved = "NO"
    ds.BodyPartExamined = series.body_part
    ds.DeviceSerialNumber = "FX-0000001"
    ds.SoftwareVersions = "1"
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series.uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series.number
    ds.InstanceNumber = instance_number
    return ds


def set_pixels(
    ds: Dataset,
    pixel_data: bytes | None,
    *,
    rows: int,
    cols: int,
    bits_allocated: int = 16,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
) -> None:
    """Add the Image Pixel module for a single-sample image to `ds`.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        Dataset to update in place.
    pixel_data : bytes or None
        Native little-endian pixel data of every frame; ``None`` leaves
        *Pixel Data* out (for a caller that streams it).
    rows, cols : int
        Matrix size.
    bits_allocated, bits_stored : int, optional
        Bits per sample; *High Bit* is ``bits_stored - 1``.
    photometric : str, optional
        *Photometric Interpretation*, MONOCHROME1 or MONOCHROME2.
    """
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if pixel_data is not None:
        ds.PixelData = pixel_data
        ds["PixelData"].VR = "OW" if bits_allocated > 8 else "OB"


def file_meta(ds: Dataset, transfer_syntax_uid: str) -> FileMetaDataset:
    """Return fixed File Meta Information for `ds` in `transfer_syntax_uid`.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        Dataset with *SOP Class UID* and *SOP Instance UID*.
    transfer_syntax_uid : str
        Transfer syntax of the file.

    Returns
    -------
    pydicom.dataset.FileMetaDataset
        Meta information naming this package, not the pydicom version, as
        the implementation.
    """
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def write_part10(path: Path, ds: Dataset, transfer_syntax_uid: str) -> Path:
    """Write `ds` as a DICOM Part-10 file with fixed file meta information.

    Native pixel data is given little endian and is byte-swapped here for
    Explicit VR Big Endian; encapsulated pixel data is written as is.

    Parameters
    ----------
    path : pathlib.Path
        Output file.
    ds : pydicom.dataset.Dataset
        Dataset to write; not modified.
    transfer_syntax_uid : str
        Transfer syntax of the file.

    Returns
    -------
    pathlib.Path
        `path`.
    """
    out = Dataset()
    for elem in ds:
        out.add(elem)
    tsyntax = UID(transfer_syntax_uid)
    if tsyntax == ExplicitVRBigEndian and "PixelData" in ds and ds.BitsAllocated == 16:
        out.add(DataElement(0x7FE00010, "OW", swap_words(ds.PixelData)))
    out.file_meta = file_meta(ds, tsyntax)
    dcmwrite(path, out, enforce_file_format=True)
    return path
