"""Bulk fixtures for benchmarks: a long CT series, a run of chest DX images, a streamed huge multi-frame."""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian

from dicom_fixtures._dataset import (
    Patient,
    Series,
    Study,
    checked_uid,
    file_meta,
    make_uid,
    write_part10,
)
from dicom_fixtures._images import ct_image, dx_image, sc_multiframe_header
from dicom_fixtures._pixels import body_slice, phantom

#: Default Study Instance UID of `ct_series`.
CT_SERIES_STUDY_UID = make_uid(1, 100)
#: Default UID prefix of `ct_series`: series ``prefix + "0"``, slice i ``prefix + str(i)``.
CT_SERIES_PREFIX = make_uid(4, 100) + "."
#: Default Study Instance UID of `dx_series`.
DX_SERIES_STUDY_UID = make_uid(1, 300)
#: Default UID prefix of `dx_series`: series ``prefix + "0"``, image i ``prefix + str(i)``.
DX_SERIES_PREFIX = make_uid(4, 300) + "."
#: SOP Instance UID of the `large_multiframe` instance.
LARGE_MULTIFRAME_UID = make_uid(2, 200, 1) + ".1"

_MAX_ELEMENT_LENGTH = 0xFFFFFFFE
_BENCH = Patient("BENCHMARK^CT", "FX-0100", "19750505", "M")
_CHEST = Patient("BENCHMARK^DX", "FX-0300", "19600303", "F")
_LARGE = Patient("LARGE^MULTIFRAME", "FX-0200", "19850808", "F")


def ct_series(
    out_dir: Path,
    count: int = 200,
    *,
    rows: int = 512,
    cols: int = 512,
    study_uid: str = CT_SERIES_STUDY_UID,
    prefix: str = CT_SERIES_PREFIX,
) -> list[Path]:
    """Write a deterministic axial CT series of 16-bit slices.

    Parameters
    ----------
    out_dir : pathlib.Path
        Directory to write ``ct_0001.dcm`` ... into; created if missing.
    count : int, optional
        Number of slices.
    rows, cols : int, optional
        Matrix size of each slice.
    study_uid : str, optional
        Study Instance UID.
    prefix : str, optional
        UID prefix ending in ``"."``: the Series Instance UID is
        ``prefix + "0"`` and slice ``i`` (1-based) is ``prefix + str(i)``.
        Also derives the Frame of Reference UID (``prefix + "0.1"``).

    Returns
    -------
    list of pathlib.Path
        The slice files, in instance order.

    Raises
    ------
    ValueError
        If `count`, `rows` or `cols` is not positive or a UID would be invalid.
    """
    _check_series(count=count, rows=rows, cols=cols, study_uid=study_uid, prefix=prefix)
    study = Study(
        checked_uid(study_uid), _BENCH, "20240201", "080000", "FXA0100", "100", "CT BENCH"
    )
    series = Series(checked_uid(prefix + "0"), study, 1, "CT", "CHEST", f"AXIAL {count} SLICES")
    frame_of_reference_uid = checked_uid(prefix + "0.1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(1, count + 1):
        ds = ct_image(
            series,
            f"{prefix}{i}",
            i,
            rows=rows,
            cols=cols,
            z_fraction=(i - 1) / max(1, count - 1),
            seed=10_000 + i,
            frame_of_reference_uid=frame_of_reference_uid,
        )
        paths.append(write_part10(out_dir / f"ct_{i:04d}.dcm", ds, ExplicitVRLittleEndian))
    return paths


def dx_series(
    out_dir: Path,
    count: int = 20,
    *,
    rows: int = 2500,
    cols: int = 2000,
    study_uid: str = DX_SERIES_STUDY_UID,
    prefix: str = DX_SERIES_PREFIX,
) -> list[Path]:
    """Write deterministic PA chest DX images (16-bit allocated; about 10 MB each by default).

    The phantom is drawn once; image ``i`` shows it scrolled up by ``4 * i`` rows, so every
    file has its own pixels (and digests) without drawing a new phantom per image.

    Parameters
    ----------
    out_dir : pathlib.Path
        Directory to write ``dx_0001.dcm`` ... into; created if missing.
    count : int, optional
        Number of images.
    rows, cols : int, optional
        Matrix size of each image.
    study_uid : str, optional
        Study Instance UID.
    prefix : str, optional
        UID prefix ending in ``"."``: the Series Instance UID is ``prefix + "0"`` and
        image ``i`` (1-based) is ``prefix + str(i)``.

    Returns
    -------
    list of pathlib.Path
        The image files, in instance order.

    Raises
    ------
    ValueError
        If `count`, `rows` or `cols` is not positive or a UID would be invalid.
    """
    _check_series(count=count, rows=rows, cols=cols, study_uid=study_uid, prefix=prefix)
    study = Study(
        checked_uid(study_uid), _CHEST, "20240215", "090000", "FXA0300", "300", "XR CHEST BENCH"
    )
    series = Series(checked_uid(prefix + "0"), study, 1, "DX", "CHEST", f"PA {count} IMAGES")
    ds = dx_image(series, f"{prefix}1", 1, rows=rows, cols=cols, seed=30_000)
    base = bytes(ds.PixelData)
    row_bytes = cols * 2
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(1, count + 1):
        ds.SOPInstanceUID = f"{prefix}{i}"
        ds.InstanceNumber = i
        offset = (4 * (i - 1) * row_bytes) % len(base)
        ds.PixelData = base[offset:] + base[:offset]
        paths.append(write_part10(out_dir / f"dx_{i:04d}.dcm", ds, ExplicitVRLittleEndian))
    return paths


def large_multiframe(
    path: Path,
    target_bytes: int = 1_000_000_000,
    *,
    rows: int = 1024,
    cols: int = 1024,
) -> Path:
    """Stream a multi-frame 16-bit instance of about `target_bytes` to `path`.

    The header is written by pydicom; the *Pixel Data* element (explicit VR
    little endian ``OW`` with a 4-byte length) is then appended frame by
    frame, so memory use stays at about one frame whatever the size.

    Parameters
    ----------
    path : pathlib.Path
        Output file; overwritten if present.
    target_bytes : int, optional
        Wanted pixel data size; the frame count is
        ``max(1, target_bytes // (rows * cols * 2))``.
    rows, cols : int, optional
        Matrix size of each frame.

    Returns
    -------
    pathlib.Path
        `path`.

    Raises
    ------
    ValueError
        If the sizes are not positive or the pixel data would not fit in a
        32-bit element length.
    """
    if target_bytes < 1 or rows < 1 or cols < 1:
        raise ValueError("target_bytes, rows and cols must be positive")
    frame_bytes = rows * cols * 2
    frames = max(1, target_bytes // frame_bytes)
    length = frames * frame_bytes
    if length > _MAX_ELEMENT_LENGTH:
        raise ValueError(f"{length} bytes of pixel data do not fit in one element")

    study = Study(make_uid(1, 200), _LARGE, "20240301", "100000", "FXA0200", "200", "LARGE")
    series = Series(make_uid(2, 200, 1), study, 1, "OT", "CHEST", f"{frames} FRAMES")
    ds = sc_multiframe_header(
        series, LARGE_MULTIFRAME_UID, 1, frames=frames, rows=rows, cols=cols, frame_time="40"
    )
    ds.file_meta = file_meta(ds, ExplicitVRLittleEndian)

    base = memoryview(phantom(rows, cols, body_slice(0.5), background=24, noise_bits=5, seed=200))
    row_bytes = cols * 2
    with open(path, "wb") as fp:
        dcmwrite(fp, ds, enforce_file_format=True)
        # (7FE0,0010) OW, 2 reserved bytes, 4-byte length: PS3.5 7.1.2.
        fp.write(struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", length))
        for i in range(frames):
            # Frame i is the base frame scrolled up by 4*i rows (no copy).
            offset = (4 * i * row_bytes) % frame_bytes
            fp.write(base[offset:])
            fp.write(base[:offset])
    return Path(path)


def _check_series(*, count: int, rows: int, cols: int, study_uid: str, prefix: str) -> None:
    """Refuse sizes and UIDs a series generator cannot write (ValueError)."""
    if count < 1 or rows < 1 or cols < 1:
        raise ValueError("count, rows and cols must be positive")
    if not prefix.endswith("."):
        raise ValueError(f"prefix must end with '.': {prefix!r}")
    checked_uid(study_uid)
    checked_uid(f"{prefix}{count}")
