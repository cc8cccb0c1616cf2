"""PDUs built with ``pynetdicom.pdu``, their length fields, and the PDU-level fuzz inputs.

Every builder returns the PDU's encoded bytes (pynetdicom's own encoder, so a PDU left
unmutated is exactly what a conforming peer sends); :func:`length_fields` finds where the
PDU, item, sub-item and PDV lengths sit in those bytes so that they can be corrupted.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ, A_RELEASE_RP, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ABORT,
    A_ASSOCIATE,
    P_DATA,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext, build_context

from gateway.fuzz.mutate import HUGE_LENGTHS, LengthField, mutate

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1337.1"
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

# PDU type bytes (PS3.8 9.3).
A_ASSOCIATE_RQ_TYPE, A_ASSOCIATE_AC_TYPE, A_ASSOCIATE_RJ_TYPE = 0x01, 0x02, 0x03
P_DATA_TF_TYPE, A_RELEASE_RQ_TYPE, A_RELEASE_RP_TYPE, A_ABORT_TYPE = 0x04, 0x05, 0x06, 0x07
PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}


def contexts(pairs: Iterable[tuple[str, Sequence[str]]]) -> list[PresentationContext]:
    """Presentation contexts with odd ids 1, 3, 5… for (abstract syntax, transfer syntaxes)."""
    out = []
    for number, (abstract, syntaxes) in enumerate(pairs):
        context = build_context(abstract, list(syntaxes))
        context.context_id = 2 * number + 1
        out.append(context)
    return out


def associate_rq(
    *,
    calling: str,
    called: str,
    requested: Sequence[PresentationContext],
    max_pdu: int = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ as pynetdicom's SCU sends it."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    primitive.presentation_context_definition_list = list(requested)
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = UID(IMPLEMENTATION_UID)
    primitive.user_information = [length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def release_rq() -> bytes:
    return bytes(A_RELEASE_RQ().encode())


def release_rp() -> bytes:
    return bytes(A_RELEASE_RP().encode())


def abort(source: int = 0, reason: int = 0) -> bytes:
    primitive = A_ABORT()
    primitive.abort_source = source
    pdu = A_ABORT_RQ()
    pdu.from_primitive(primitive)
    pdu.reason_diagnostic = reason
    return bytes(pdu.encode())


def p_data(context_id: int, fragment: bytes, *, control: int) -> bytes:
    """One P-DATA-TF with one PDV: ``control`` is the message control header byte."""
    primitive = P_DATA()
    primitive.presentation_data_value_list = [(context_id, bytes([control]) + fragment)]
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def echo_message(context_id: int, *, message_id: int = 1) -> list[bytes]:
    """A C-ECHO-RQ as P-DATA-TF PDUs."""
    request = C_ECHO()
    request.MessageID = message_id
    request.AffectedSOPClassUID = VERIFICATION
    message = C_ECHO_RQ()
    message.primitive_to_message(request)
    return _encode(message, context_id, 16384)


def store_message(
    context_id: int,
    *,
    sop_class: str,
    sop_instance: str,
    dataset: bytes,
    max_pdu: int = 16384,
    message_id: int = 1,
) -> list[bytes]:
    """A C-STORE-RQ carrying the encoded ``dataset`` as P-DATA-TF PDUs of at most ``max_pdu``."""
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_instance
    request.Priority = 2
    request.DataSet = BytesIO(dataset)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return _encode(message, context_id, max_pdu)


def _encode(message: C_ECHO_RQ | C_STORE_RQ, context_id: int, max_pdu: int) -> list[bytes]:
    out = []
    for primitive in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out.append(bytes(pdu.encode()))
    return out


def length_fields(pdu: bytes) -> list[LengthField]:
    """The PDU length and, for A-ASSOCIATE-RQ and P-DATA-TF, every item/sub-item/PDV length."""
    if len(pdu) < 6:
        return []
    found = [LengthField(2, 4)]
    if pdu[0] in (A_ASSOCIATE_RQ_TYPE, A_ASSOCIATE_AC_TYPE):
        found += _item_lengths(pdu, 74, len(pdu))
    elif pdu[0] == P_DATA_TF_TYPE:
        offset = 6
        while offset + 4 <= len(pdu):
            found.append(LengthField(offset, 4))
            (length,) = struct.unpack(">L", pdu[offset : offset + 4])
            offset += 4 + length
    return found


def _item_lengths(pdu: bytes, start: int, end: int) -> list[LengthField]:
    """Item lengths (2 bytes after type and reserved), recursing into contexts and user info."""
    found = []
    offset = start
    while offset + 4 <= end:
        item_type = pdu[offset]
        (length,) = struct.unpack(">H", pdu[offset + 2 : offset + 4])
        found.append(LengthField(offset + 2, 2))
        body = offset + 4
        if item_type in (0x20, 0x21):  # presentation context: id, reserved x3, sub-items
            found += _item_lengths(pdu, body + 4, min(end, body + length))
        elif item_type == 0x50:  # user information: sub-items
            found += _item_lengths(pdu, body, min(end, body + length))
        offset = body + length
    return found


@dataclass
class RawInput:
    """What a raw-socket input sends: ``before`` and, once associated, ``after`` the AC.

    ``associate`` is the A-ASSOCIATE-RQ that opens a valid association first (empty: the
    ``before`` bytes go on a fresh connection). ``release`` ends the input with an
    A-RELEASE-RQ. ``uids`` are the SOP Instance UIDs of C-STOREs inside it.
    """

    kind: str
    before: bytes = b""
    associate: bytes = b""
    after: list[bytes] = field(default_factory=list)
    release: bool = False
    uids: tuple[str, ...] = ()
    operators: list[str] = field(default_factory=list)


def random_bytes_input(rng: random.Random) -> RawInput:
    """Random bytes; half the time behind a plausible PDU type byte and length."""
    body = rng.randbytes(rng.choice((0, 1, 5, 6, 64, 512, 4096, rng.randint(1, 20000))))
    if rng.random() < 0.5 and body:
        pdu_type = rng.randint(0, 8)
        declared = rng.choice((len(body), rng.getrandbits(32), *HUGE_LENGTHS))
        body = struct.pack(">BBL", pdu_type, 0, declared & 0xFFFFFFFF) + body
    return RawInput(kind="random_bytes", before=body, operators=["random"])


def association_input(rng: random.Random, *, called: str) -> RawInput:
    """Mutated, truncated, repeated or out-of-order PDUs where an association should start."""
    choice = rng.randrange(6)
    rq = associate_rq(
        calling="FUZZSCU",
        called=called,
        requested=_random_contexts(rng),
        max_pdu=rng.choice((0, 1, 16384, 0xFFFFFFFF, rng.getrandbits(32))),
    )
    if rng.random() < 0.3:  # AE titles pynetdicom would not encode: empty, spaces, backslash
        title = rng.choice((b"", b" ", b"\\", b"\x00", called.lower().encode(), b"A" * 16))
        offset = rng.choice((10, 26))  # called, then calling AE title (16 bytes each)
        rq = rq[:offset] + title.ljust(16, b" ")[:16] + rq[offset + 16 :]
    if choice == 0:  # one mutated A-ASSOCIATE-RQ
        data, ops = mutate(rq, rng, fields=length_fields(rq))
        return RawInput(kind="association", before=data, operators=["rq", *ops])
    if choice == 1:  # truncated: the connection ends before a whole request
        return RawInput(kind="association", before=rq[: rng.randrange(len(rq))],
                        operators=["rq", "truncate"])  # fmt: skip
    if choice == 2:  # a huge declared PDU length, then a few bytes
        data = struct.pack(">BBL", 1, 0, rng.choice(HUGE_LENGTHS)) + rq[6 : rng.randint(6, len(rq))]
        return RawInput(kind="association", before=data, operators=["rq", "huge-length"])
    if choice == 3:  # PDUs out of order: no association yet
        pdu = rng.choice(
            [release_rq(), release_rp(), abort(rng.randint(0, 2), rng.randint(0, 6)),
             *echo_message(rng.choice((1, 3, 255)))]
        )  # fmt: skip
        data = pdu * rng.randint(1, 3) + (rq if rng.random() < 0.5 else b"")
        return RawInput(kind="association", before=data, operators=["out-of-order"])
    if choice == 4:  # the request repeated
        return RawInput(kind="association", before=rq * rng.randint(2, 4), operators=["repeat"])
    data, ops = mutate(rq, rng, fields=length_fields(rq), rounds=rng.randint(3, 8))
    return RawInput(kind="association", before=data, operators=["rq", *ops])


def _random_contexts(rng: random.Random) -> list[PresentationContext]:
    pool = [
        (VERIFICATION, [IMPLICIT_LE]),
        (CT_IMAGE_STORAGE, [EXPLICIT_LE, IMPLICIT_LE]),
        (SECONDARY_CAPTURE, [IMPLICIT_LE]),
        ("1.2.3.4.5.6", [IMPLICIT_LE]),  # an abstract syntax nobody supports
    ]
    picked = rng.sample(pool, rng.randint(1, len(pool)))
    return contexts(picked)


def valid_contexts() -> list[PresentationContext]:
    """What a P-DATA input asks for: Verification (1), CT (3), SC (5)."""
    return contexts(
        [
            (VERIFICATION, [IMPLICIT_LE]),
            (CT_IMAGE_STORAGE, [EXPLICIT_LE, IMPLICIT_LE]),
            (SECONDARY_CAPTURE, [EXPLICIT_LE, IMPLICIT_LE]),
        ]
    )


def small_dataset(sop_instance: str, rng: random.Random) -> Dataset:
    """A small secondary-capture image, enough for the listener to file it."""
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = "2.25.1001"
    ds.SeriesInstanceUID = "2.25.1002"
    ds.PatientID = "FUZZ"
    ds.Modality = "OT"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rng.randbytes(64)
    return ds


def valid_association_input(*, called: str) -> RawInput:
    """A valid association, released at once (the control stream)."""
    rq = associate_rq(calling="FUZZSCU", called=called, requested=valid_contexts())
    return RawInput(kind="association", associate=rq, release=True, operators=["valid"])


def p_data_input(
    rng: random.Random, *, called: str, sop_instance: str, mutated: bool = True
) -> RawInput:
    """A valid association (Verification 1, CT 3, SC 5), then mutated P-DATA-TF PDUs.

    ``mutated=False`` sends the message as it is, then releases (the control stream).
    """
    from pynetdicom.dsutils import encode

    rq = associate_rq(calling="FUZZSCU", called=called, requested=valid_contexts())
    uids: tuple[str, ...] = ()
    if rng.random() < 0.25:
        message = echo_message(1, message_id=rng.randint(1, 0xFFFF))
        ops = ["echo"]
    else:
        ds = small_dataset(sop_instance, rng)
        implicit = rng.random() < 0.5  # context 5 proposes implicit VR, 3 explicit
        data = encode(ds, implicit, True, False)
        assert data is not None
        if mutated and rng.random() < 0.3:
            data, _ = mutate(data, rng)
        message = store_message(
            5 if implicit else 3,
            sop_class=SECONDARY_CAPTURE,
            sop_instance=sop_instance,
            dataset=data,
            max_pdu=rng.choice((16384, 256, 64, 32)),
        )
        uids = (sop_instance,)
        ops = ["store"]
    if not mutated:
        return RawInput(kind="p_data", associate=rq, after=message, release=True, uids=uids,
                        operators=[*ops, "valid"])  # fmt: skip
    pdus, more = _mutate_message(message, rng)
    release = not more or more[-1] not in ("release-mid-dataset", "abort-mid-dataset")
    return RawInput(kind="p_data", associate=rq, after=pdus, release=release, uids=uids,
                    operators=ops + more)  # fmt: skip


def _mutate_message(pdus: list[bytes], rng: random.Random) -> tuple[list[bytes], list[str]]:
    """One of the P-DATA attacks on a message's PDUs."""
    pdus = list(pdus)
    choice = rng.randrange(10)
    if choice == 0:  # an unaccepted or invalid presentation context id
        wrong = rng.choice((0, 2, 7, 9, 127, 255))
        targets = range(len(pdus)) if rng.random() < 0.5 else [rng.randrange(len(pdus))]
        for i in targets:
            pdus[i] = pdus[i][:10] + bytes([wrong]) + pdus[i][11:]
        return pdus, [f"context-{wrong}"]
    if choice == 1:  # a PDV or PDU length set wrong or huge
        i = rng.randrange(len(pdus))
        pdus[i], _ = mutate(pdus[i], rng, fields=length_fields(pdus[i]), rounds=1)
        return pdus, ["length"]
    if choice == 2:  # the same PDU twice (or more)
        i = rng.randrange(len(pdus))
        pdus[i:i] = [pdus[i]] * rng.randint(1, 3)
        return pdus, ["duplicate"]
    if choice == 3 and len(pdus) > 1:  # out of order
        i, j = rng.sample(range(len(pdus)), 2)
        pdus[i], pdus[j] = pdus[j], pdus[i]
        return pdus, ["reorder"]
    if choice == 4 and len(pdus) > 1:  # A-RELEASE-RQ in the middle of the dataset
        cut = rng.randrange(1, len(pdus))
        tail = pdus[cut:] if rng.random() < 0.5 else []
        return [*pdus[:cut], release_rq(), *tail], ["release-mid-dataset"]
    if choice == 5:  # A-ABORT in the middle
        cut = rng.randrange(0, len(pdus))
        return [*pdus[:cut], abort(0, 0)], ["abort-mid-dataset"]
    if choice == 6:  # the byte stream cut short
        stream = b"".join(pdus)
        return [stream[: rng.randrange(len(stream))]], ["truncate"]
    if choice == 7:  # the message control header: command/dataset/last bits wrong
        i = rng.randrange(len(pdus))
        pdus[i] = pdus[i][:11] + bytes([rng.randrange(256)]) + pdus[i][12:]
        return pdus, ["control-header"]
    i = rng.randrange(len(pdus))  # byte-level mutation of one PDU
    pdus[i], ops = mutate(pdus[i], rng, fields=length_fields(pdus[i]))
    return pdus, ops
