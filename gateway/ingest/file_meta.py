"""The File Meta Information pynetdicom writes at the head of each received dataset, encoded directly.

pynetdicom 3.0 starts each C-STORE dataset's file with a File Meta (PS3.10 7.1) that it
builds as a pydicom ``FileMetaDataset`` (``create_file_meta``) and writes with pydicom's
``write_file_meta_info``: 0.25-0.5 ms of CPU per instance, about a tenth of the
listener's whole CPU per CT slice, for seven elements whose layout never changes.
:func:`encode_file_meta` writes the same bytes from the three UIDs that vary, and
:func:`create_file_meta` / :func:`write_file_meta_info` stand in for pynetdicom's two
calls (:func:`gateway.ingest.receive.route_received_datasets` installs them). A UID
that is not plain digits and dots (a hostile peer's) goes through pydicom's own writer, so
whatever a peer sends is written exactly as pynetdicom would write it.

A file that notes what was written (``wrote_file_meta``: the spool's
:class:`~gateway.ingest.spool.IncomingFile`) is told the encoded File Meta and its
transfer syntax, so that the check before the ack knows where the dataset starts
without parsing the File Meta again (:class:`gateway.core.fingerprint.WrittenMeta`).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

from pydicom.filewriter import write_file_meta_info as pydicom_write_file_meta_info
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dsutils import create_file_meta as pynetdicom_create_file_meta

#: A UID encoded here: digits and dots, 1-64 characters. Anything else goes to pydicom.
_PLAIN_UID = re.compile(r"[0-9.]{1,64}")


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element with a 16-bit length (UI, SH, UL)."""
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _padded(value: str, pad: bytes) -> bytes:
    """``value`` in ASCII, padded to an even length as PS3.5 6.2 pads its VR."""
    data = value.encode("ascii")
    return data + pad if len(data) % 2 else data


#: The elements after the three UIDs, the same in every file pynetdicom writes.
_IMPLEMENTATION = _element(0x00020012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\0")) + (
    _element(0x00020013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" "))
)
#: (0002,0001) File Meta Information Version, OB: a 32-bit length after two reserved bytes.
_VERSION = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"


@dataclass(frozen=True)
class ReceivedFileMeta:
    """The values of the File Meta pynetdicom writes for a received dataset, as it passed
    them."""

    sop_class_uid: UID
    sop_instance_uid: UID
    transfer_syntax: UID


def encode_file_meta(meta: ReceivedFileMeta) -> bytes | None:
    """The File Meta's bytes (group length first) as pydicom writes them for pynetdicom's
    ``create_file_meta``; None when a UID is not plain digits and dots."""
    uids = (meta.sop_class_uid, meta.sop_instance_uid, meta.transfer_syntax)
    if not all(_PLAIN_UID.fullmatch(uid) for uid in uids):
        return None
    body = (
        _VERSION
        + _element(0x00020002, b"UI", _padded(meta.sop_class_uid, b"\0"))
        + _element(0x00020003, b"UI", _padded(meta.sop_instance_uid, b"\0"))
        + _element(0x00020010, b"UI", _padded(meta.transfer_syntax, b"\0"))
        + _IMPLEMENTATION
    )
    return _element(0x00020000, b"UL", struct.pack("<I", len(body))) + body


def create_file_meta(
    *, sop_class_uid: Any, sop_instance_uid: Any, transfer_syntax: Any, **others: Any
) -> Any:
    """pynetdicom's ``create_file_meta`` as ``dimse_messages`` calls it: the three values,
    kept for :func:`write_file_meta_info`; a call with other arguments is pynetdicom's."""
    if others:
        return pynetdicom_create_file_meta(
            sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid,
            transfer_syntax=transfer_syntax, **others,
        )  # fmt: skip
    return ReceivedFileMeta(sop_class_uid, sop_instance_uid, transfer_syntax)


def write_file_meta_info(fp: Any, file_meta: Any, enforce_standard: bool = True) -> None:
    """pydicom's ``write_file_meta_info``, with :func:`encode_file_meta`'s bytes for a
    :class:`ReceivedFileMeta` of plain UIDs."""
    if isinstance(file_meta, ReceivedFileMeta):
        encoded = encode_file_meta(file_meta)
        if encoded is not None:
            fp.write(encoded)
            noted = getattr(fp, "wrote_file_meta", None)
            if noted is not None:  # an IncomingFile: the check before the ack skips its parse
                noted(encoded, str(file_meta.transfer_syntax))
            return
        file_meta = pynetdicom_create_file_meta(
            sop_class_uid=file_meta.sop_class_uid,
            sop_instance_uid=file_meta.sop_instance_uid,
            transfer_syntax=file_meta.transfer_syntax,
        )
    pydicom_write_file_meta_info(fp, file_meta, enforce_standard=enforce_standard)
