"""Builders of uncompressed, realistic image datasets for each modality."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    MRImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    UltrasoundImageStorage,
)

from dicom_fixtures._dataset import Series, base_dataset, set_pixels
from dicom_fixtures._pixels import (
    Ellipse,
    abdomen_ultrasound,
    body_slice,
    chest_radiograph,
    head_slice,
    phantom,
)


def _ds(value: float) -> str:
    """Format `value` as a short Decimal String."""
    return f"{value:.10g}"


def _add_plane(
    ds: Dataset,
    *,
    rows: int,
    cols: int,
    spacing: float,
    z: float,
    frame_of_reference_uid: str,
) -> None:
    """Add Frame of Reference and axial Image Plane attributes to `ds`."""
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = [_ds(-spacing * cols / 2), _ds(-spacing * rows / 2), _ds(z)]
    ds.SliceLocation = _ds(z)


def ct_image(
    series: Series,
    sop_instance_uid: str,
    instance_number: int,
    *,
    rows: int = 512,
    cols: int = 512,
    z_fraction: float = 0.5,
    seed: int,
    frame_of_reference_uid: str,
) -> Dataset:
    """Return an axial chest CT slice (16-bit allocated, 12 stored, HU rescale).

    Parameters
    ----------
    series : Series
        Series the slice belongs to.
    sop_instance_uid : str
        SOP Instance UID of the slice.
    instance_number : int
        Instance Number; the slice position is ``-2.5 mm * instance_number``.
    rows, cols : int, optional
        Matrix size.
    z_fraction : float, optional
        Relative position along the scan (0 to 1); changes the anatomy.
    seed : int
        Noise seed.
    frame_of_reference_uid : str
        Frame of Reference UID shared by the series.

    Returns
    -------
    pydicom.dataset.Dataset
    """
    ds = base_dataset(
        series=series,
        sop_class_uid=CTImageStorage,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.AcquisitionDate = series.study.date
    ds.AcquisitionTime = series.study.time
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = "2.5"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = "350"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = 200
    ds.ConvolutionKernel = "STANDARD"
    _add_plane(
        ds,
        rows=rows,
        cols=cols,
        spacing=350 / cols,
        z=-2.5 * instance_number,
        frame_of_reference_uid=frame_of_reference_uid,
    )
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.WindowCenterWidthExplanation = "SOFT TISSUE"
    pixels = phantom(rows, cols, body_slice(z_fraction), background=24, noise_bits=5, seed=seed)
    set_pixels(ds, pixels, rows=rows, cols=cols, bits_stored=12)
    return ds


def mr_image(
    series: Series,
    sop_instance_uid: str,
    instance_number: int,
    *,
    rows: int = 256,
    cols: int = 256,
    seed: int,
    frame_of_reference_uid: str,
) -> Dataset:
    """Return an axial T1 spin-echo MR head slice (16-bit allocated, 12 stored).

    Parameters
    ----------
    series : Series
        Series the slice belongs to.
    sop_instance_uid : str
        SOP Instance UID of the slice.
    instance_number : int
        Instance Number.
    rows, cols : int, optional
        Matrix size.
    seed : int
        Noise seed.
    frame_of_reference_uid : str
        Frame of Reference UID shared by the study.

    Returns
    -------
    pydicom.dataset.Dataset
    """
    ds = base_dataset(
        series=series,
        sop_class_uid=MRImageStorage,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.AcquisitionNumber = 1
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = "se2d1"
    ds.SliceThickness = "5"
    ds.RepetitionTime = "500"
    ds.EchoTime = "15"
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = "63.87"
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = "1.5"
    ds.SpacingBetweenSlices = "6"
    ds.EchoTrainLength = "1"
    ds.FlipAngle = "90"
    _add_plane(
        ds,
        rows=rows,
        cols=cols,
        spacing=240 / cols,
        z=6.0 * instance_number,
        frame_of_reference_uid=frame_of_reference_uid,
    )
    ds.WindowCenter = "500"
    ds.WindowWidth = "1000"
    pixels = phantom(rows, cols, head_slice(), background=0, noise_bits=6, seed=seed)
    set_pixels(ds, pixels, rows=rows, cols=cols, bits_stored=12)
    return ds


def _add_projection(ds: Dataset, *, spacing: float, kvp: str, body_part_code: str) -> None:
    """Add the acquisition and anatomy attributes of a PA chest radiograph."""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.KVP = kvp
    ds.DistanceSourceToDetector = "1800"
    ds.ExposureTime = "10"
    ds.XRayTubeCurrent = 250
    ds.Exposure = 3
    ds.ImagerPixelSpacing = [_ds(spacing), _ds(spacing)]
    ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    region = Dataset()
    region.CodeValue = body_part_code
    region.CodingSchemeDesignator = "SCT"
    region.CodeMeaning = "Chest"
    ds.AnatomicRegionSequence = [region]


def dx_image(
    series: Series,
    sop_instance_uid: str,
    instance_number: int,
    *,
    rows: int = 2500,
    cols: int = 2000,
    seed: int,
) -> Dataset:
    """Return a PA chest DX image for presentation (16-bit allocated, 14 stored).

    Parameters
    ----------
    series : Series
        Series the image belongs to.
    sop_instance_uid : str
        SOP Instance UID.
    instance_number : int
        Instance Number.
    rows, cols : int, optional
        Matrix size; the default is about 10 MB of pixel data.
    seed : int
        Noise seed.

    Returns
    -------
    pydicom.dataset.Dataset
    """
    ds = base_dataset(
        series=series,
        sop_class_uid=DigitalXRayImageStorageForPresentation,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
    )
    ds.PresentationIntentType = "FOR PRESENTATION"
    _add_projection(ds, spacing=0.175, kvp="125", body_part_code="51185008")
    ds.DetectorType = "SCINTILLATOR"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.WindowCenter = "7000"
    ds.WindowWidth = "14000"
    pixels = phantom(rows, cols, chest_radiograph(14000), background=400, noise_bits=5, seed=seed)
    set_pixels(ds, pixels, rows=rows, cols=cols, bits_stored=14)
    return ds


def cr_image(
    series: Series,
    sop_instance_uid: str,
    instance_number: int,
    *,
    rows: int = 1024,
    cols: int = 1024,
    seed: int,
) -> Dataset:
    """Return a PA chest CR image, MONOCHROME1 (16-bit allocated, 12 stored).

    Parameters
    ----------
    series : Series
        Series the image belongs to.
    sop_instance_uid : str
        SOP Instance UID.
    instance_number : int
        Instance Number.
    rows, cols : int, optional
        Matrix size.
    seed : int
        Noise seed.

    Returns
    -------
    pydicom.dataset.Dataset
    """
    ds = base_dataset(
        series=series,
        sop_class_uid=ComputedRadiographyImageStorage,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
    )
    _add_projection(ds, spacing=350 / cols, kvp="110", body_part_code="51185008")
    ds.PlateID = "FX-PLATE-01"
    ds.PlateType = "ST-VI"
    ds.PhosphorType = "BaFBr"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    top = 4000  # MONOCHROME1: dense bone is a low stored value
    shapes = [Ellipse(s.cx, s.cy, s.rx, s.ry, top - s.value) for s in chest_radiograph(3600)]
    pixels = phantom(rows, cols, shapes, background=top, noise_bits=5, seed=seed)
    set_pixels(ds, pixels, rows=rows, cols=cols, bits_stored=12, photometric="MONOCHROME1")
    return ds


def sc_multiframe_header(
    series: Series,
    sop_instance_uid: str,
    instance_number: int,
    *,
    frames: int,
    rows: int,
    cols: int,
    frame_time: str = "100",
) -> Dataset:
    """Return a Multi-frame Grayscale Word Secondary Capture dataset without pixels.

    Parameters
    ----------
    series : Series
        Series the instance belongs to.
    sop_instance_uid : str
        SOP Instance UID.
    instance_number : int
        Instance Number.
    frames : int
        *Number of Frames*.
    rows, cols : int
        Matrix size of each frame (16-bit allocated, 12 stored, HU rescale).
    frame_time : str, optional
        *Frame Time* in ms, the frame increment.

    Returns
    -------
    pydicom.dataset.Dataset
        Every attribute but *Pixel Data*.
    """
    ds = base_dataset(
        series=series,
        sop_class_uid=MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
    )
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "SYN"
    ds.BurnedInAnnotation = "NO"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.FrameTime = frame_time
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    set_pixels(ds, None, rows=rows, cols=cols, bits_stored=12)
    return ds


def sc_multiframe(
    series: Series,
    sop_instance_uid: str,
    instance_number: int,
    *,
    frames: int = 10,
    rows: int = 256,
    cols: int = 256,
    seed: int,
) -> Dataset:
    """Return a Multi-frame Grayscale Word Secondary Capture cine of CT slices.

    Parameters
    ----------
    series : Series
        Series the instance belongs to.
    sop_instance_uid : str
        SOP Instance UID.
    instance_number : int
        Instance Number.
    frames : int, optional
        Number of frames.
    rows, cols : int, optional
        Matrix size of each frame.
    seed : int
        Noise seed of the first frame; frame ``i`` uses ``seed + i``.

    Returns
    -------
    pydicom.dataset.Dataset
    """
    ds = sc_multiframe_header(
        series, sop_instance_uid, instance_number, frames=frames, rows=rows, cols=cols
    )
    data = b"".join(
        phantom(
            rows,
            cols,
            body_slice(i / max(1, frames - 1)),
            background=24,
            noise_bits=5,
            seed=seed + i,
        )
        for i in range(frames)
    )
    set_pixels(ds, data, rows=rows, cols=cols, bits_stored=12)
    return ds


def us_image(
    series: Series,
    sop_instance_uid: str,
    instance_number: int,
    *,
    rows: int = 480,
    cols: int = 640,
    seed: int,
) -> Dataset:
    """Return an 8-bit MONOCHROME2 abdominal ultrasound image.

    Parameters
    ----------
    series : Series
        Series the image belongs to.
    sop_instance_uid : str
        SOP Instance UID.
    instance_number : int
        Instance Number.
    rows, cols : int, optional
        Matrix size.
    seed : int
        Speckle noise seed.

    Returns
    -------
    pydicom.dataset.Dataset
    """
    ds = base_dataset(
        series=series,
        sop_class_uid=UltrasoundImageStorage,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
    ds.BurnedInAnnotation = "NO"
    ds.WindowCenter = "128"
    ds.WindowWidth = "256"
    pixels = phantom(
        rows, cols, abdomen_ultrasound(), background=0, noise_bits=6, seed=seed, bits_allocated=8
    )
    set_pixels(ds, pixels, rows=rows, cols=cols, bits_allocated=8, bits_stored=8)
    return ds
