"""The C-STORE response's command set, encoded directly: the same bytes as pynetdicom's.

pynetdicom 3.0 sends each C-STORE response by building a pydicom ``Dataset`` of its
command set from the response primitive (``DIMSEMessage.primitive_to_message``), encoding
it once to learn its group length and once more to send it (``encode_msg``): about
0.27 ms of CPU per response on the listener's thread, for six elements whose layout never
changes. :func:`encode_store_response` writes the same bytes from the four values that
vary, and :func:`store_response_pdvs` cuts them into the P-DATA values ``encode_msg``
would send (:class:`gateway.ingest.listener.GuardedDIMSE` sends them). A response with
anything else (an Error Comment, an Offending Element, a UID that is not plain digits and
dots) is left to pynetdicom.
"""

from __future__ import annotations

import re
import struct
from typing import Any

#: A UID encoded here: digits and dots, 1-64 characters. Anything else goes to pynetdicom.
_PLAIN_UID = re.compile(r"[0-9.]{1,64}")
#: (0000,0100) Command Field of a C-STORE-RSP, and (0000,0800) "no data set".
C_STORE_RSP = 0x8001
NO_DATASET = 0x0101
#: The Message Control Header of a command fragment (PS3.8 E.2): more follow, the last.
COMMAND_FRAGMENT, LAST_COMMAND_FRAGMENT = b"\x01", b"\x03"


def _element(tag: int, value: bytes) -> bytes:
    """One implicit VR little endian element (the command set's encoding, PS3.7 6.3.1)."""
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def _uid(value: str) -> bytes:
    """A UI value as pydicom writes it: ASCII, padded with NUL to an even length."""
    data = value.encode("ascii")
    return data + b"\0" if len(data) % 2 else data


def _us(value: object) -> bytes | None:
    return struct.pack("<H", value) if type(value) is int and 0 <= value <= 0xFFFF else None


def encode_store_response(primitive: Any) -> bytes | None:
    """The command set pynetdicom encodes for the C-STORE response ``primitive``
    (``pynetdicom.dimse_primitives.C_STORE``), group length first; None for anything but
    a response with plain UIDs, a status and nothing else."""
    if primitive.OffendingElement is not None or primitive.ErrorComment is not None:
        return None
    uids = (primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID)
    if not all(isinstance(uid, str) and _PLAIN_UID.fullmatch(uid) for uid in uids):
        return None
    responding_to, status = _us(primitive.MessageIDBeingRespondedTo), _us(primitive.Status)
    if responding_to is None or status is None:
        return None
    body = (
        _element(0x00000002, _uid(uids[0]))
        + _element(0x00000100, struct.pack("<H", C_STORE_RSP))
        + _element(0x00000120, responding_to)
        + _element(0x00000800, struct.pack("<H", NO_DATASET))
        + _element(0x00000900, status)
        + _element(0x00001000, _uid(uids[1]))
    )
    return _element(0x00000000, struct.pack("<L", len(body))) + body


def store_response_pdvs(encoded: bytes, max_pdu_length: int) -> list[bytes] | None:
    """The presentation data values pynetdicom's ``encode_msg`` sends for the command set
    ``encoded`` under the peer's maximum PDU length (0: no limit), one P-DATA each: the
    fragments of at most ``max_pdu_length`` - 6 bytes, each after its control header.
    None for a length pynetdicom refuses (1-6)."""
    if max_pdu_length == 0:
        fragments = [encoded]
    elif max_pdu_length < 7:
        return None
    else:
        size = max_pdu_length - 6
        fragments = [encoded[at : at + size] for at in range(0, len(encoded), size)]
    last = len(fragments) - 1
    return [
        (LAST_COMMAND_FRAGMENT if i == last else COMMAND_FRAGMENT) + fragment
        for i, fragment in enumerate(fragments)
    ]
