"""The fixed catalogue of fixture instances and its deterministic generator."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    RLELossless,
    UltrasoundImageStorage,
)

from dicom_fixtures import _images
from dicom_fixtures._codecs import check_encoder, compress
from dicom_fixtures._dataset import NATIVE_SYNTAXES, Patient, Series, Study, make_uid, write_part10

_SOP_CLASSES: dict[Callable[..., Dataset], str] = {
    _images.ct_image: CTImageStorage,
    _images.mr_image: MRImageStorage,
    _images.dx_image: DigitalXRayImageStorageForPresentation,
    _images.cr_image: ComputedRadiographyImageStorage,
    _images.sc_multiframe: MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    _images.us_image: UltrasoundImageStorage,
}


@dataclass(frozen=True)
class Fixture:
    """One catalogue entry: what `generate` writes to ``<name>.dcm``.

    Attributes
    ----------
    name : str
        File stem and key of the fixture.
    description : str
        One line on what the instance is and why it is in the catalogue.
    sop_class_uid, sop_instance_uid, study_instance_uid : str
        Identifiers of the instance, fixed for good.
    transfer_syntax_uid : str
        Transfer syntax of the Part-10 file.
    approx_bytes : int
        Approximate file size in bytes.
    """

    name: str
    description: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    approx_bytes: int


_RECIPES: dict[str, Callable[[], Dataset]] = {}


def _fixture(
    name: str,
    description: str,
    *,
    series: Series,
    instance_number: int,
    transfer_syntax_uid: str,
    approx_bytes: int,
    builder: Callable[..., Dataset],
    **options: object,
) -> Fixture:
    """Define a fixture and remember how to build its uncompressed dataset."""
    sop_instance_uid = f"{series.uid}.{instance_number}"
    _RECIPES[name] = partial(builder, series, sop_instance_uid, instance_number, **options)
    return Fixture(
        name=name,
        description=description,
        sop_class_uid=_SOP_CLASSES[builder],
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=series.study.uid,
        transfer_syntax_uid=str(transfer_syntax_uid),
        approx_bytes=approx_bytes,
    )


_JANE = Patient("DOE^JANE", "FX-0001", "19700101", "F")
_JOHN = Patient("DOE^JOHN", "FX-0002", "19650615", "M")
_RICHARD = Patient("ROE^RICHARD", "FX-0003", "19801120", "M")
_ANNA = Patient("TEST^ANNA", "FX-0004", "19920302", "F")
_ALEX = Patient("FIXTURE^ALEX", "FX-0005", "20000101", "O")

_CT = Study(make_uid(1, 1), _JANE, "20240102", "093000", "FXA0001", "1", "CT CHEST W/O CONTRAST")
_CT_TS = Study(
    make_uid(1, 2), _JANE, "20240103", "101500", "FXA0002", "2", "CT CHEST SYNTAX VARIANTS"
)
_MR = Study(make_uid(1, 3), _JOHN, "20240110", "140000", "FXA0003", "3", "MR HEAD W/O CONTRAST")
_DX = Study(make_uid(1, 4), _RICHARD, "20240115", "081000", "FXA0004", "4", "XR CHEST PA")
_CR = Study(make_uid(1, 5), _RICHARD, "20230601", "111500", "FXA0005", "5", "XR CHEST PA PRIOR")
_US = Study(make_uid(1, 6), _ANNA, "20240120", "151500", "FXA0006", "6", "US ABDOMEN")
_SC = Study(make_uid(1, 7), _ALEX, "20240125", "120000", "FXA0007", "7", "CT CINE CAPTURE")


def _series(study: Study, number: int, modality: str, body_part: str, description: str) -> Series:
    """Return series `number` of `study`, with a UID derived from both."""
    study_number = int(study.uid.rsplit(".", 1)[1])
    return Series(
        make_uid(2, study_number, number), study, number, modality, body_part, description
    )


_CT_AXIAL = _series(_CT, 1, "CT", "CHEST", "AXIAL 2.5MM")
_CT_RLE = _series(_CT_TS, 1, "CT", "CHEST", "AXIAL RLE LOSSLESS")
_CT_JPEG = _series(_CT_TS, 2, "CT", "CHEST", "AXIAL JPEG LOSSLESS SV1")
_CT_DEFLATE = _series(_CT_TS, 3, "CT", "CHEST", "AXIAL DEFLATED")
_CT_BIG = _series(_CT_TS, 4, "CT", "CHEST", "AXIAL BIG ENDIAN")
_MR_T1 = _series(_MR, 1, "MR", "HEAD", "AX T1 SE")
_MR_JLS = _series(_MR, 2, "MR", "HEAD", "AX T1 SE JPEG-LS")
_DX_PA = _series(_DX, 1, "DX", "CHEST", "CHEST PA")
_CR_PA = _series(_CR, 1, "CR", "CHEST", "CHEST PA")
_CR_J2K = _series(_CR, 2, "CR", "CHEST", "CHEST PA JPEG 2000")
_US_ABD = _series(_US, 1, "US", "ABDOMEN", "LIVER")
_SC_CINE = _series(_SC, 1, "OT", "CHEST", "CINE 10 FRAMES")

_CT_FOR = make_uid(5, 1)
_CT_TS_FOR = make_uid(5, 2)
_MR_FOR = make_uid(5, 3)

CATALOGUE: tuple[Fixture, ...] = (
    *(
        _fixture(
            f"ct_chest_{i}",
            f"CT chest slice {i} of 3, 512x512 16-bit, one series",
            series=_CT_AXIAL,
            instance_number=i,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            approx_bytes=526_000,
            builder=_images.ct_image,
            z_fraction=0.3 + 0.1 * i,
            seed=100 + i,
            frame_of_reference_uid=_CT_FOR,
        )
        for i in (1, 2, 3)
    ),
    _fixture(
        "mr_head",
        "MR head slice, 256x256 16-bit, implicit VR little endian",
        series=_MR_T1,
        instance_number=1,
        transfer_syntax_uid=ImplicitVRLittleEndian,
        approx_bytes=133_000,
        builder=_images.mr_image,
        seed=201,
        frame_of_reference_uid=_MR_FOR,
    ),
    _fixture(
        "dx_chest",
        "DX chest PA for presentation, 2500x2000 16-bit (~10 MB)",
        series=_DX_PA,
        instance_number=1,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        approx_bytes=10_002_000,
        builder=_images.dx_image,
        seed=301,
    ),
    _fixture(
        "cr_chest",
        "CR chest PA prior, 1024x1024 16-bit MONOCHROME1",
        series=_CR_PA,
        instance_number=1,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        approx_bytes=2_099_000,
        builder=_images.cr_image,
        seed=401,
    ),
    _fixture(
        "sc_multiframe",
        "Multi-frame grayscale word secondary capture, 10 frames of 256x256 16-bit",
        series=_SC_CINE,
        instance_number=1,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        approx_bytes=1_312_000,
        builder=_images.sc_multiframe,
        seed=501,
    ),
    _fixture(
        "ct_chest_rle",
        "CT chest slice, RLE Lossless (pydicom encoder)",
        series=_CT_RLE,
        instance_number=1,
        transfer_syntax_uid=RLELossless,
        approx_bytes=280_000,
        builder=_images.ct_image,
        seed=601,
        frame_of_reference_uid=_CT_TS_FOR,
    ),
    _fixture(
        "us_abdomen_jpeg_baseline",
        "US abdomen 640x480 8-bit, JPEG Baseline lossy (DCMTK dcmcjpeg)",
        series=_US_ABD,
        instance_number=1,
        transfer_syntax_uid=JPEGBaseline8Bit,
        approx_bytes=144_000,
        builder=_images.us_image,
        seed=701,
    ),
    _fixture(
        "ct_chest_jpeg_lossless",
        "CT chest slice, JPEG Lossless SV1 (DCMTK dcmcjpeg)",
        series=_CT_JPEG,
        instance_number=1,
        transfer_syntax_uid=JPEGLosslessSV1,
        approx_bytes=197_000,
        builder=_images.ct_image,
        seed=602,
        frame_of_reference_uid=_CT_TS_FOR,
    ),
    _fixture(
        "mr_head_jpeg_ls",
        "MR head slice, JPEG-LS Lossless (DCMTK dcmcjpls)",
        series=_MR_JLS,
        instance_number=1,
        transfer_syntax_uid=JPEGLSLossless,
        approx_bytes=59_000,
        builder=_images.mr_image,
        seed=202,
        frame_of_reference_uid=_MR_FOR,
    ),
    _fixture(
        "cr_chest_j2k",
        "CR chest PA, 1024x1024, JPEG 2000 Lossless (pydicom + OpenJPEG)",
        series=_CR_J2K,
        instance_number=1,
        transfer_syntax_uid=JPEG2000Lossless,
        approx_bytes=769_000,
        builder=_images.cr_image,
        seed=402,
    ),
    _fixture(
        "ct_chest_deflated",
        "CT chest slice, Deflated Explicit VR Little Endian",
        series=_CT_DEFLATE,
        instance_number=1,
        transfer_syntax_uid=DeflatedExplicitVRLittleEndian,
        approx_bytes=242_000,
        builder=_images.ct_image,
        seed=603,
        frame_of_reference_uid=_CT_TS_FOR,
    ),
    _fixture(
        "ct_chest_big_endian",
        "CT chest slice, Explicit VR Big Endian (retired syntax, still sent by old modalities)",
        series=_CT_BIG,
        instance_number=1,
        transfer_syntax_uid=ExplicitVRBigEndian,
        approx_bytes=526_000,
        builder=_images.ct_image,
        seed=604,
        frame_of_reference_uid=_CT_TS_FOR,
    ),
)

_BY_NAME = {fixture.name: fixture for fixture in CATALOGUE}


def source_dataset(name: str) -> Dataset:
    """Return the uncompressed dataset a fixture is made from.

    Parameters
    ----------
    name : str
        Fixture name.

    Returns
    -------
    pydicom.dataset.Dataset
        Dataset with native little-endian pixel data and no file meta.

    Raises
    ------
    KeyError
        If `name` is not in the catalogue.
    """
    return _RECIPES[_select([name])[0].name]()


def _select(names: Iterable[str] | None) -> list[Fixture]:
    """Return the fixtures called `names` (all if ``None``), without duplicates."""
    if names is None:
        return list(CATALOGUE)
    if isinstance(names, str):
        names = [names]
    wanted = list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in _BY_NAME]
    if unknown:
        raise KeyError(f"unknown fixture(s) {unknown}; known: {sorted(_BY_NAME)}")
    return [_BY_NAME[name] for name in wanted]


def generate(out_dir: Path, names: Iterable[str] | None = None) -> list[Path]:
    """Write catalogue fixtures as ``<name>.dcm`` Part-10 files.

    Output is byte-identical on every run: UIDs, dates and pixel data are
    fixed. Every needed encoder is checked before anything is written.

    Parameters
    ----------
    out_dir : pathlib.Path
        Directory to write into; created if missing. Existing files of the
        same name are overwritten.
    names : iterable of str, optional
        Fixture names to write (a single name may be given as a string);
        all of `CATALOGUE` if ``None``.

    Returns
    -------
    list of pathlib.Path
        Written files, in the order of `names` (or of the catalogue).

    Raises
    ------
    KeyError
        If a name is not in the catalogue.
    FixtureToolError
        If a DCMTK tool or Python package that a selected fixture needs is
        missing, or an encoder fails.
    """
    selected = _select(names)
    for fixture in selected:
        check_encoder(fixture.transfer_syntax_uid, fixture.name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fixture in selected:
        ds = _RECIPES[fixture.name]()
        if fixture.transfer_syntax_uid not in NATIVE_SYNTAXES:
            ds = compress(ds, fixture.transfer_syntax_uid)
        paths.append(write_part10(out_dir / f"{fixture.name}.dcm", ds, fixture.transfer_syntax_uid))
    return paths
