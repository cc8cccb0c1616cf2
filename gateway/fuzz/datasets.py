"""The dataset corpus, re-encoded into every transfer syntax the listener accepts, and mutated.

Sources: a few catalogue fixtures (``dicom_fixtures``, each in its own syntax: native,
deflated, big endian, RLE, JPEG, JPEG-LS, JPEG 2000) and pydicom's bundled test files.
Those are listed from pydicom's own ``test_files`` directory rather than with
``get_testdata_files()``, which may download more files: the input stream must not depend
on the network. Every native source is also re-encoded into the other native syntaxes
(implicit and explicit VR little endian, explicit VR big endian, deflated); encapsulated
ones stay in their own.
"""

from __future__ import annotations

import hashlib
import random
import warnings
import zlib
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.dsutils import encode

from gateway.fuzz.mutate import LengthField, mutate

NATIVE = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)
#: Catalogue fixtures small enough to send thousands of times (each under 1 MB).
FIXTURES = (
    "mr_head",
    "ct_chest_1",
    "ct_chest_rle",
    "us_abdomen_jpeg_baseline",
    "ct_chest_jpeg_lossless",
    "mr_head_jpeg_ls",
    "ct_chest_deflated",
    "ct_chest_big_endian",
    "cr_chest_j2k",
)
MAX_SOURCE_BYTES = 2 << 20
#: Where most mutations land: the header, before the pixel values.
HEADER_FOCUS = 4096
_STORAGE = frozenset(str(c.abstract_syntax) for c in AllStoragePresentationContexts)
_UID_PREFIX = "2.25."


@dataclass(frozen=True)
class Source:
    """One corpus entry: a Part-10 file and a transfer syntax to send it in."""

    name: str
    path: Path
    transfer_syntax: str


@dataclass(frozen=True)
class StoreInput:
    """A mutated C-STORE: the Part-10 file to send and what it claims."""

    kind: str
    source: str
    transfer_syntax: str
    sop_class: str
    request_uid: str
    dataset_uid: str
    part10: bytes
    operators: tuple[str, ...]


def pydicom_test_files() -> list[Path]:
    """pydicom's bundled test files that a storage SCU could send (sorted, local only)."""
    root = Path(pydicom.__file__).parent / "data" / "test_files"
    found = []
    for path in sorted(root.rglob("*.dcm")):
        if path.stat().st_size > MAX_SOURCE_BYTES:
            continue
        meta = _read(path)
        if meta is not None:
            found.append(path)
    return found


def _read(path: Path) -> Dataset | None:
    """The file as a dataset when it is a storage instance with file meta, else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except Exception:  # a test file pydicom itself cannot read is left out
        return None
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta or "SOPInstanceUID" not in ds:
        return None
    if str(ds.get("SOPClassUID", "")) not in _STORAGE:
        return None
    return ds


def corpus(fixtures_dir: Path) -> list[Source]:
    """Every (source, transfer syntax) pair, in a fixed order."""
    from dicom_fixtures.catalogue import generate

    files = [*generate(fixtures_dir, FIXTURES), *pydicom_test_files()]
    sources = []
    for path in files:
        ds = _read(path)
        if ds is None:
            continue
        syntax = str(ds.file_meta.TransferSyntaxUID)
        syntaxes = NATIVE if syntax in NATIVE else (syntax,)
        sources += [Source(name=path.stem, path=path, transfer_syntax=ts) for ts in syntaxes]
    return sources


@cache
def _dataset(path: Path) -> Dataset:
    ds = _read(path)
    assert ds is not None
    return ds


def instance_uid(seed: int, index: int, salt: str = "") -> str:
    """A fresh SOP Instance UID for input ``index`` of ``seed`` (``2.25.<digits>``)."""
    digest = hashlib.sha256(f"{seed}:{index}:{salt}".encode()).digest()
    return _UID_PREFIX + str(int.from_bytes(digest[:15], "big"))


def encoded(source: Source, sop_instance: str) -> bytes | None:
    """The source dataset (without file meta) in its transfer syntax, with a new instance UID."""
    ds = _dataset(source.path)
    ts = pydicom.uid.UID(source.transfer_syntax)
    original = ds.SOPInstanceUID
    ds.SOPInstanceUID = sop_instance
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    except Exception:  # a syntax pydicom cannot write this dataset in
        data = None
    finally:
        ds.SOPInstanceUID = original
    return data


def element_lengths(data: bytes, transfer_syntax: str) -> list[LengthField]:
    """Where the top-level elements' lengths sit in ``data`` (pydicom's raw reader)."""
    ts = pydicom.uid.UID(transfer_syntax)
    fields: list[LengthField] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for raw in data_element_generator(
                BytesIO(data), ts.is_implicit_VR, ts.is_little_endian
            ):
                if not isinstance(raw, RawDataElement):
                    continue
                long_form = ts.is_implicit_VR or raw.VR in _LONG_VRS
                size = 4 if long_form else 2
                fields.append(LengthField(raw.value_tell - size, size, not ts.is_little_endian))
    except Exception:  # the walk stops where the bytes stop making sense
        pass
    return fields


_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)


def store_input(
    sources: list[Source], rng: random.Random, *, seed: int, index: int, mutated: bool = True
) -> StoreInput | None:
    """A C-STORE of a mutated source; None when the source cannot be encoded in its syntax.

    ``mutated=False`` sends the source as it is (with its fresh UID): the control stream.
    """
    source = rng.choice(sources)
    uid = instance_uid(seed, index)
    data = encoded(source, uid)
    if data is None:
        return None
    ts = pydicom.uid.UID(source.transfer_syntax)
    ops: list[str] = []
    roll = rng.random()
    if roll < 0.1 or not mutated:
        ops.append("unmutated")
    elif ts.is_deflated and roll < 0.55:
        # Mutate the inflated dataset, then deflate it again: only a check that inflates
        # sees the damage.
        inflated = zlib.decompress(data, -zlib.MAX_WBITS)
        fields = element_lengths(inflated, ExplicitVRLittleEndian)
        inflated, ops = mutate(inflated, rng, fields=fields, focus=HEADER_FOCUS)
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(inflated) + compressor.flush()
        ops = ["inflated", *ops]
    else:
        fields = [] if ts.is_deflated else element_lengths(data, source.transfer_syntax)
        data, ops = mutate(data, rng, fields=fields, focus=HEADER_FOCUS)
    request_uid = uid
    if mutated and rng.random() < 0.05:
        request_uid = instance_uid(seed, index, "request")
        ops.append("uid-mismatch")
    sop_class = str(_dataset(source.path).SOPClassUID)
    return StoreInput(
        kind="c_store",
        source=source.name,
        transfer_syntax=source.transfer_syntax,
        sop_class=sop_class,
        request_uid=request_uid,
        dataset_uid=uid,
        part10=part10(data, sop_class=sop_class, sop_instance=request_uid, transfer_syntax=ts),
        operators=tuple(ops),
    )


def part10(data: bytes, *, sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, file meta (what the SCU's request will claim), then ``data`` as it is."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.10.1337.1")
    out = BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    return out.getvalue() + data
