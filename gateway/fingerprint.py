"""Fingerprints of a received instance: dataset digest and pixel digest (pure, streaming).

``digest`` is SHA-256 of the dataset bytes exactly as received in the negotiated transfer
syntax, File Meta Information (group 0002) excluded: every hop rewrites the meta, while
Orthanc stores the dataset bytes unchanged. ``pixel_digest`` is SHA-256 of the value of
(7FE0,0010) Pixel Data as received: for native pixels the value field; for encapsulated
pixels every item (offset table and fragments, with their item headers) up to but not
including the Sequence Delimitation Item. No Pixel Data gives SHA-256 of zero bytes.

Nothing is decoded: pydicom walks the element headers and seeks over the values.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, data_element_generator, read_preamble
from pydicom.uid import UID

from gateway import filemap
from gateway.errors import DatasetUnreadable

PIXEL_DATA = 0x7FE00010
CHUNK = 1 << 20
# Pixel Data of at least this size is hashed on a second thread, in chunks of this size.
PARALLEL_PIXELS = 8 << 20
PARALLEL_CHUNK = 4 << 20
_PIXEL_POOL: ThreadPoolExecutor | None = None
_PIXEL_POOL_LOCK = threading.Lock()
EMPTY_SHA256 = hashlib.sha256(b"").digest()


@dataclass(frozen=True)
class Fingerprint:
    """The two digests recorded on the ledger, and the transfer syntax they were taken in."""

    digest: bytes
    pixel_digest: bytes
    transfer_syntax: str
    dataset_offset: int
    dataset_length: int


@dataclass(frozen=True)
class InstanceHeader:
    """The attributes the gateway needs from a dataset. PatientID and issuer are PHI:
    they only ever leave this object as an HMAC (``patient_key``)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    modality: str
    body_part: str


def dataset_offset(stream: BinaryIO) -> tuple[int, UID]:
    """Offset of the dataset after the File Meta Information, and the transfer syntax."""
    stream.seek(0)
    try:
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
    except (InvalidDicomError, EOFError, ValueError, KeyError, NotImplementedError) as exc:
        raise DatasetUnreadable(f"no readable DICOM File Meta Information: {exc}") from exc
    syntax = meta.get("TransferSyntaxUID")
    if not syntax:
        raise DatasetUnreadable("the File Meta Information has no Transfer Syntax UID")
    return stream.tell(), UID(str(syntax))


def read_header(stream: BinaryIO) -> InstanceHeader:
    """Parse the attributes before Pixel Data; raises DatasetUnreadable if pydicom cannot."""
    stream.seek(0)
    try:
        ds = dcmread(stream, stop_before_pixels=True, defer_size=4096)
        values = {
            "sop_class_uid": ds.get("SOPClassUID", ""),
            "sop_instance_uid": ds.get("SOPInstanceUID", ""),
            "study_instance_uid": ds.get("StudyInstanceUID", ""),
            "series_instance_uid": ds.get("SeriesInstanceUID", ""),
            "patient_id": ds.get("PatientID", ""),
            "issuer_of_patient_id": ds.get("IssuerOfPatientID", ""),
            "modality": ds.get("Modality", ""),
            "body_part": ds.get("BodyPartExamined", ""),
        }
    except Exception as exc:  # pydicom raises many types on malformed input
        raise DatasetUnreadable(
            f"the dataset cannot be parsed: {type(exc).__name__}: {exc}"
        ) from exc
    header = InstanceHeader(**{key: str(value or "").strip() for key, value in values.items()})
    if not header.sop_instance_uid or not header.sop_class_uid:
        raise DatasetUnreadable("the dataset has no SOP Class UID or SOP Instance UID")
    return header


def fingerprint(stream: BinaryIO) -> Fingerprint:
    """Digest a Part-10 instance read from ``stream`` (seekable), in bounded memory.

    The element headers are walked first (seeking over values) to find Pixel Data; then
    the dataset is read once and each chunk feeds both digests. Over a large Pixel Data
    value the pixel digest runs on a second thread beside the dataset digest (hashlib
    releases the GIL), so one big instance hashes on two cores.
    """
    offset, syntax = dataset_offset(stream)
    if syntax.is_deflated:
        digest, length, _ = _hash_once(stream, offset, None)
        pixel_digest = _deflated_pixel_digest(stream, offset)
    else:
        found = pixel_range(stream, offset, syntax)
        digest, length, pixel = _hash_once(stream, offset, found)
        pixel_digest = EMPTY_SHA256 if pixel is None else pixel
    return Fingerprint(
        digest=digest,
        pixel_digest=pixel_digest,
        transfer_syntax=str(syntax),
        dataset_offset=offset,
        dataset_length=length,
    )


def _read_chunks(stream: BinaryIO, size: int) -> Iterator[memoryview]:
    while chunk := stream.read(size):
        yield memoryview(chunk)


def _pixel_hasher() -> ThreadPoolExecutor:
    global _PIXEL_POOL
    with _PIXEL_POOL_LOCK:
        if _PIXEL_POOL is None:
            _PIXEL_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pixel-digest")
        return _PIXEL_POOL


def _hash_once(
    stream: BinaryIO, offset: int, pixels: tuple[int, int] | None
) -> tuple[bytes, int, bytes | None]:
    """SHA-256 from ``offset`` to the end and of the ``pixels`` range, in one pass.

    A regular file is read through memory maps (no copy out of the page cache).

    Returns the dataset digest, the dataset length and the pixel digest (None without a
    range). A range that runs past the end of the stream raises DatasetUnreadable.
    """
    sha = hashlib.sha256()
    pixel = hashlib.sha256() if pixels is not None else None
    start, end = pixels if pixels is not None else (0, 0)
    parallel = pixel is not None and end - start >= PARALLEL_PIXELS
    pool = _pixel_hasher() if parallel else None
    stream.seek(offset)
    position = offset
    length = 0
    size = PARALLEL_CHUNK if parallel else CHUNK
    views = filemap.chunks(stream, size) or _read_chunks(stream, size)
    for view in views:
        lo, hi = max(start - position, 0), min(end - position, len(view))
        pending: Future[None] | None = None
        if pixel is not None and lo < hi:
            if pool is not None:
                pending = pool.submit(pixel.update, view[lo:hi])
            else:
                pixel.update(view[lo:hi])
        sha.update(view)
        if pending is not None:
            pending.result()
        position += len(view)
        length += len(view)
    if pixel is not None and position < end:
        raise DatasetUnreadable("the Pixel Data element runs past the end of the file")
    return sha.digest(), length, pixel.digest() if pixel is not None else None


def pixel_range(stream: BinaryIO, offset: int, syntax: UID) -> tuple[int, int] | None:
    """Where the Pixel Data value lies, walking every top-level element header.

    Raises DatasetUnreadable when an element runs past the end of the stream, which is how
    a truncated instance shows up: its header parses, its last element does not fit.
    """
    size = stream.seek(0, io.SEEK_END)
    stream.seek(offset)
    try:
        implicit = syntax.is_implicit_VR
        little = syntax.is_little_endian
    except ValueError as exc:
        raise DatasetUnreadable(f"unknown transfer syntax {syntax}") from exc
    found: tuple[int, int] | None = None
    end = offset
    try:
        for element in data_element_generator(stream, implicit, little, defer_size=256):
            end = stream.tell()  # the generator leaves us just past the element
            short = (
                isinstance(element, RawDataElement)
                and element.length != 0xFFFFFFFF
                and isinstance(element.value, bytes)
                and len(element.value) != element.length
            )
            if end > size or short:
                raise DatasetUnreadable(f"element {element.tag} runs past the end of the data")
            if element.tag == PIXEL_DATA and isinstance(element, RawDataElement):
                # the Sequence Delimitation Item of encapsulated pixels is framing, not value
                found = (element.value_tell, end - 8 if element.length == 0xFFFFFFFF else end)
    except DatasetUnreadable:
        raise
    except Exception as exc:  # malformed lengths or tags inside the dataset
        raise DatasetUnreadable(
            f"the dataset cannot be walked: {type(exc).__name__}: {exc}"
        ) from exc
    if end != size:  # the generator stops quietly on a partial element header
        raise DatasetUnreadable(f"{size - end} bytes after the last complete element")
    return found


def _pixel_digest(stream: BinaryIO, offset: int, syntax: UID) -> bytes:
    found = pixel_range(stream, offset, syntax)
    return EMPTY_SHA256 if found is None else _hash_range(stream, *found)


def check_structure(stream: BinaryIO) -> UID:
    """Cheap pre-ack check: meta readable and every element fits (no hashing)."""
    offset, syntax = dataset_offset(stream)
    if not syntax.is_deflated:
        pixel_range(stream, offset, syntax)
    return syntax


def _hash_range(stream: BinaryIO, start: int, end: int) -> bytes:
    sha = hashlib.sha256()
    stream.seek(start)
    remaining = end - start
    while remaining > 0:
        chunk = stream.read(min(CHUNK, remaining))
        if not chunk:
            raise DatasetUnreadable("the Pixel Data element runs past the end of the file")
        sha.update(chunk)
        remaining -= len(chunk)
    return sha.digest()


def _deflated_pixel_digest(stream: BinaryIO, offset: int) -> bytes:
    """Deflated Explicit VR Little Endian: inflate to a temp file, then walk it."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    stream.seek(offset)
    with tempfile.TemporaryFile(dir=os.environ.get("GATEWAY_TMPDIR")) as inflated:
        try:
            while chunk := stream.read(CHUNK):
                inflated.write(inflater.decompress(chunk))
            inflated.write(inflater.flush())
        except zlib.error as exc:
            raise DatasetUnreadable(f"the deflated dataset does not inflate: {exc}") from exc
        inflated.flush()
        return _pixel_digest(inflated, 0, UID("1.2.840.10008.1.2.1"))


def fingerprint_bytes(data: bytes) -> Fingerprint:
    """Convenience for small in-memory instances (tests, the verify API)."""
    return fingerprint(io.BytesIO(data))
