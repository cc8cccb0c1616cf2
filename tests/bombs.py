"""Hostile Part-10 files crafted byte by byte: deflate bombs, huge declared lengths, deep nesting.

Each builder writes what a hostile peer would send; none of them needs more memory than
a chunk, however large the dataset it declares (the bomb is compressed as it is written).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)

CHUNK = 1 << 20
UNDEFINED = 0xFFFFFFFF


def file_meta(sop_instance_uid: str, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information of a CT instance."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue()


def header(sop_instance_uid: str) -> bytes:
    """The attributes the listener needs before it acks, in Explicit VR Little Endian."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.Modality = "CT"
    ds.PatientID = "BOMB-1"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def element(group: int, elem: int, vr: bytes, length: int) -> bytes:
    """An Explicit VR Little Endian element header declaring ``length`` bytes of value."""
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHL", group, elem, vr, 0, length)
    return struct.pack("<HH2sH", group, elem, vr, length)


def item(length: int = UNDEFINED) -> bytes:
    return struct.pack("<HHL", 0xFFFE, 0xE000, length)


ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def nested(depth: int) -> bytes:
    """Content Sequence items nested ``depth`` deep, undefined lengths, closed properly."""
    opening = (element(0x0040, 0xA730, b"SQ", UNDEFINED) + item()) * depth
    return opening + (ITEM_END + SEQUENCE_END) * depth


def instance(dataset: bytes, *, uid: str | None = None) -> tuple[str, bytes]:
    """A Part-10 file: meta, the usual header, then ``dataset`` (raw elements after it)."""
    uid = uid or generate_uid()
    return uid, file_meta(uid) + header(uid) + dataset


def deflated(dataset: bytes, *, uid: str | None = None) -> tuple[str, bytes]:
    """The same, Deflated Explicit VR Little Endian."""
    uid = uid or generate_uid()
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = packer.compress(header(uid) + dataset) + packer.flush()
    return uid, file_meta(uid, DeflatedExplicitVRLittleEndian) + body


def deflate_bomb(path: Path, *, inflated: int, uid: str | None = None) -> str:
    """A deflated CT instance whose Pixel Data is ``inflated`` bytes of zeros; returns its UID.

    About 1 KB on the wire per MB inflated: 2 GiB is sent as about 2 MB. Compressed as it
    is written, a chunk at a time.
    """
    uid = uid or generate_uid()
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(CHUNK)
    with path.open("wb") as out:
        out.write(file_meta(uid, DeflatedExplicitVRLittleEndian))
        out.write(packer.compress(header(uid) + element(0x7FE0, 0x0010, b"OB", inflated)))
        left = inflated
        while left:
            step = min(left, CHUNK)
            out.write(packer.compress(zeros[:step]))
            left -= step
        out.write(packer.flush())
    return uid
