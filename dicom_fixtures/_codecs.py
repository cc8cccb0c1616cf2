"""Deterministic pixel data compression: pydicom RLE, DCMTK JPEG/JPEG-LS, OpenJPEG."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.encoders.base import JPEG2000LosslessEncoder, RLELosslessEncoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from dicom_fixtures._dataset import write_part10

#: DCMTK command line (tool and options) for each transfer syntax it produces.
#: ``+un`` keeps the SOP Instance UID, so the output depends only on the input.
DCMTK_COMMANDS: dict[str, tuple[str, ...]] = {
    JPEGBaseline8Bit: ("dcmcjpeg", "+eb", "+q", "90", "+un"),
    JPEGLosslessSV1: ("dcmcjpeg", "+e1", "+un"),
    JPEGLSLossless: ("dcmcjpls", "+el", "+un"),
}
#: Python distributions needed to encode JPEG 2000 through pydicom.
J2K_MODULES = {"numpy": "numpy", "pylibjpeg": "pylibjpeg", "openjpeg": "pylibjpeg-openjpeg"}

_PIXEL_MODULE = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
)


class FixtureToolError(RuntimeError):
    """An external tool or package needed to produce a fixture is missing or failed."""


def _importable(module: str) -> bool:
    """Return whether top-level `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_encoder(transfer_syntax_uid: str, fixture: str | None = None) -> None:
    """Raise ``FixtureToolError`` if `transfer_syntax_uid` cannot be produced here.

    Parameters
    ----------
    transfer_syntax_uid : str
        Transfer syntax to encode to.
    fixture : str, optional
        Fixture name, for the error message.
    """
    needer = f"fixture {fixture!r}" if fixture else UID(transfer_syntax_uid).name
    if transfer_syntax_uid in DCMTK_COMMANDS:
        tool = DCMTK_COMMANDS[transfer_syntax_uid][0]
        if shutil.which(tool) is None:
            raise FixtureToolError(
                f"{needer} needs the DCMTK tool {tool!r} "
                "(Debian package 'dcmtk'), which is not on PATH"
            )
    elif transfer_syntax_uid == JPEG2000Lossless:
        missing = [dist for module, dist in J2K_MODULES.items() if not _importable(module)]
        if missing or not JPEG2000LosslessEncoder.is_available:
            raise FixtureToolError(
                f"{needer} needs the Python packages "
                f"{', '.join(J2K_MODULES.values())} to encode JPEG 2000 "
                f"(missing: {', '.join(missing) or 'a usable pylibjpeg plugin'})"
            )


def _frames(ds: Dataset) -> list[bytes]:
    """Split the native pixel data of `ds` into frames."""
    count = int(ds.get("NumberOfFrames", 1))
    size = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    data = ds.PixelData
    return [data[i * size : (i + 1) * size] for i in range(count)]


def _encode_with_pydicom(ds: Dataset, transfer_syntax_uid: str) -> bytes:
    """Return encapsulated pixel data encoded by a pydicom encoder plugin."""
    encoder, plugin = (
        (RLELosslessEncoder, "pydicom")
        if transfer_syntax_uid == RLELossless
        else (JPEG2000LosslessEncoder, "pylibjpeg")
    )
    frames = [
        encoder.encode(
            frame,
            encoding_plugin=plugin,
            rows=ds.Rows,
            columns=ds.Columns,
            samples_per_pixel=ds.SamplesPerPixel,
            bits_allocated=ds.BitsAllocated,
            bits_stored=ds.BitsStored,
            pixel_representation=ds.PixelRepresentation,
            photometric_interpretation=ds.PhotometricInterpretation,
            number_of_frames=1,
        )
        for frame in _frames(ds)
    ]
    return encapsulate(frames)


def _encode_with_dcmtk(ds: Dataset, transfer_syntax_uid: str) -> bytes:
    """Return encapsulated pixel data encoded by a DCMTK command-line tool."""
    tool, *options = DCMTK_COMMANDS[transfer_syntax_uid]
    executable = shutil.which(tool) or tool
    with tempfile.TemporaryDirectory(prefix="dicom-fixtures-") as tmp:
        source = write_part10(Path(tmp) / "in.dcm", ds, ExplicitVRLittleEndian)
        target = Path(tmp) / "out.dcm"
        result = subprocess.run(
            [executable, *options, str(source), str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise FixtureToolError(
                f"{tool} failed with exit code {result.returncode}: {result.stderr.strip()}"
            )
        encoded = dcmread(target)
    if encoded.file_meta.TransferSyntaxUID != transfer_syntax_uid:
        raise FixtureToolError(
            f"{tool} wrote transfer syntax {encoded.file_meta.TransferSyntaxUID}, "
            f"expected {transfer_syntax_uid}"
        )
    changed = [kw for kw in _PIXEL_MODULE if encoded.get(kw) != ds.get(kw)]
    if changed:
        raise FixtureToolError(f"{tool} changed the image pixel attributes {changed}")
    return bytes(encoded.PixelData)


def compress(ds: Dataset, transfer_syntax_uid: str) -> Dataset:
    """Return a copy of `ds` whose native pixel data is compressed.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        Dataset with native little-endian pixel data; not modified.
    transfer_syntax_uid : str
        One of RLE Lossless, JPEG Baseline, JPEG Lossless SV1, JPEG-LS
        Lossless or JPEG 2000 Lossless.

    Returns
    -------
    pydicom.dataset.Dataset
        Shallow copy of `ds` with encapsulated *Pixel Data*; lossy syntaxes
        also get the lossy compression attributes.

    Raises
    ------
    FixtureToolError
        If the encoder is missing or fails.
    """
    if transfer_syntax_uid in DCMTK_COMMANDS:
        check_encoder(transfer_syntax_uid)
        encapsulated = _encode_with_dcmtk(ds, transfer_syntax_uid)
    elif transfer_syntax_uid in (RLELossless, JPEG2000Lossless):
        check_encoder(transfer_syntax_uid)
        encapsulated = _encode_with_pydicom(ds, transfer_syntax_uid)
    else:
        raise ValueError(f"no encoder for transfer syntax {UID(transfer_syntax_uid).name}")
    out = Dataset()
    for elem in ds:
        out.add(elem)
    if transfer_syntax_uid == JPEGBaseline8Bit:
        ratio = len(ds.PixelData) / len(encapsulated)
        out.ImageType = ["DERIVED", *ds.ImageType[1:]]
        out.DerivationDescription = "Lossy JPEG baseline compression, quality 90 (DCMTK)"
        out.LossyImageCompression = "01"
        out.LossyImageCompressionRatio = f"{ratio:.2f}"
        out.LossyImageCompressionMethod = "ISO_10918_1"
    pixel_data = DataElement(0x7FE00010, "OB", encapsulated)
    pixel_data.is_undefined_length = True
    out.add(pixel_data)
    return out
