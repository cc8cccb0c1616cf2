"""The check before the ack walks each dataset once: the same answers as its two walks did.

``checked_header`` used to walk every element header twice: :func:`check_nesting`, then
pydicom's generator over the top level (:func:`_walk_top_level`) to keep the header's
elements. It now keeps them in the first walk. :func:`_two_walks` below is the old
implementation, kept as the oracle: over generated datasets (well-formed, truncated,
flipped, with lengths that lie, undefined lengths, sequences, encapsulated pixels, stray
delimiters, character sets pydicom refuses), the new check returns the same header or
refuses with the same error (and so the same DICOM status).
"""

from __future__ import annotations

import io
import struct
import warnings

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from gateway.core.fingerprint import (
    _HEADER_TAGS,
    InstanceHeader,
    _parse_header,
    _walk_top_level,
    _walked_header,
    _walker,
    check_nesting,
    checked_header,
    plain_dataset,
)
from gateway.errors import DatasetUnreadable
from tests import bombs

UNDEFINED = 0xFFFFFFFF
LONG_VRS = (b"OB", b"OW", b"OF", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OD", b"OL", b"OV")


def _two_walks(data: bytes) -> object:
    """The check before the ack as it was: two walks (the oracle)."""
    try:
        with io.BytesIO(data) as stream, plain_dataset(stream) as plain:
            check_nesting(plain.stream, plain.offset, plain.syntax)
            _, kept = _walk_top_level(plain.stream, plain.offset, plain.syntax, keep=_HEADER_TAGS)
            header = _walked_header(plain, kept)
            return header if header is not None else _parse_header(plain)
    except Exception as exc:  # a refusal, or what escapes it (an unknown syntax's ValueError)
        return type(exc), str(exc)


def _one_walk(data: bytes) -> object:
    try:
        with io.BytesIO(data) as stream:
            return checked_header(stream)
    except Exception as exc:
        return type(exc), str(exc)


class Encoder:
    """Element and item headers in one transfer syntax (the values are the caller's)."""

    def __init__(self, syntax: str) -> None:
        self.implicit = syntax == ImplicitVRLittleEndian
        self.endian = ">" if syntax == ExplicitVRBigEndian else "<"

    def element(self, tag: int, vr: bytes, length: int) -> bytes:
        group, elem = tag >> 16, tag & 0xFFFF
        if self.implicit:
            return struct.pack(self.endian + "HHL", group, elem, length)
        if vr in LONG_VRS or length > 0xFFFF:
            return struct.pack(self.endian + "HH2sHL", group, elem, vr, 0, length)
        return struct.pack(self.endian + "HH2sH", group, elem, vr, length)

    def item(self, tag: int, length: int) -> bytes:
        return struct.pack(self.endian + "HHL", tag >> 16, tag & 0xFFFF, length)


#: Tags the generator draws from: the header's, the character set, the pixel tags, a
#: sequence, private ones, and the item tags that may only frame sequences.
HEADER_TAGS = sorted(_HEADER_TAGS)
OTHER_TAGS = [0x00080060, 0x00200013, 0x00280010, 0x0040A730, 0x00091010, 0x00291010,
              0x7FE00008, 0x7FE00010]  # fmt: skip
VRS = [b"UI", b"LO", b"CS", b"SH", b"PN", b"US", b"OB", b"OW", b"SQ", b"UN", b"UT", b"ES",
       b"<\x00"]  # fmt: skip
VALUE_BYTES = st.binary(max_size=24) | st.sampled_from(
    [b"1.2.840.10008.5.1.4.1.1.2\x00", b"1.2.3.4", b"ISO_IR 100", b"ISO_IR 192", b"bogus",
     b"\\ISO 2022 IR 87", b"CT ", b"A\\B ", b"\xe9t\xe9", b"P" * 300]
)  # fmt: skip


@st.composite
def _element(draw: st.DrawFn, enc: Encoder, depth: int) -> bytes:
    """One element: a valued one, a sequence of items, or encapsulated pixels, whose
    declared length is right, a little off, or undefined."""
    tag = draw(st.sampled_from(HEADER_TAGS + OTHER_TAGS))
    vr = draw(st.sampled_from(VRS))
    kind = draw(st.sampled_from(["value", "value", "value", "sequence", "encapsulated"]))
    if kind == "sequence" and depth < 3:
        items = []
        for _ in range(draw(st.integers(0, 2))):
            body = b"".join(draw(st.lists(_element(enc, depth + 1), max_size=3)))
            undefined = draw(st.booleans())
            items.append(
                enc.item(0xFFFEE000, UNDEFINED) + body + enc.item(0xFFFEE00D, 0)
                if undefined
                else enc.item(0xFFFEE000, len(body)) + body
            )
        value = b"".join(items)
        if draw(st.booleans()):
            return enc.element(tag, b"SQ", UNDEFINED) + value + enc.item(0xFFFEE0DD, 0)
        return enc.element(tag, b"SQ", len(value)) + value
    if kind == "encapsulated":
        fragments = draw(st.lists(st.binary(max_size=12), max_size=3))
        value = enc.item(0xFFFEE000, 0) + b"".join(
            enc.item(0xFFFEE000, len(f)) + f for f in fragments
        )
        return enc.element(tag, b"OB", UNDEFINED) + value + enc.item(0xFFFEE0DD, 0)
    value = draw(VALUE_BYTES)
    if len(value) % 2 and draw(st.booleans()):
        value += b" "
    length = len(value) + draw(st.sampled_from([0, 0, 0, 0, -1, 1, 4]))
    if vr not in LONG_VRS and not enc.implicit:
        length = min(max(length, 0), 0xFFFF)
    return enc.element(tag, vr, max(length, 0)) + value


def _usual_header(enc: Encoder, uid: str) -> bytes:
    """The attributes the listener needs (as bombs.header), in ``enc``'s syntax."""
    values = [
        (0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\x00"),
        (0x00080018, b"UI", _even(uid.encode(), b"\x00")),
        (0x00080060, b"CS", b"CT"),
        (0x00100020, b"LO", b"BOMB-1"),
        (0x0020000D, b"UI", b"1.2.826.0.1.3680043.8.498.2\x00"),
        (0x0020000E, b"UI", b"1.2.826.0.1.3680043.8.498.3\x00"),
    ]
    return b"".join(enc.element(tag, vr, len(value)) + value for tag, vr, value in values)


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


@st.composite
def instances(draw: st.DrawFn) -> bytes:
    """A Part-10 file: the usual header (or not), generated elements in tag order or not,
    stray item tags, then perhaps truncated and a few bytes flipped."""
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
    syntax = draw(st.sampled_from([syntaxes[0], *syntaxes]))
    enc = Encoder(syntax)
    uid = "1.2.826.0.1.3680043.8.498." + str(draw(st.integers(1, 10**12)))
    pieces = draw(st.lists(_element(enc, 0), max_size=8))
    if draw(st.booleans()):
        pieces.sort(key=lambda piece: struct.unpack(enc.endian + "HH", piece[:4]))
    if draw(st.integers(0, 9)) == 0:
        pieces.insert(draw(st.integers(0, len(pieces))), enc.item(0xFFFEE00D, 0))
    usual = _usual_header(enc, uid) if draw(st.integers(0, 4)) else b""
    if draw(st.integers(0, 3)) == 0:  # native pixels, then header elements pydicom never reads
        late = _usual_header(enc, uid + "9")
        pieces.append(
            enc.element(0x7FE00010, b"OW", 4) + b"\0" * 4 + late[draw(st.sampled_from([0, 34])) :]
        )
    data = bombs.file_meta(uid, syntax) + usual + b"".join(pieces)
    if draw(st.integers(0, 5)) == 0:
        data = data[: len(data) - draw(st.integers(1, 40))]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    return data


def _same_answer(data: bytes, *, strict: bool) -> None:
    """Both checks give the same header, or the same refusal; with ``strict``, pydicom's
    warnings are errors (a character set it refuses, a value it cannot convert). Where the
    one walk kept the top level itself, it kept what pydicom's generator yields."""
    with warnings.catch_warnings():
        warnings.simplefilter("error" if strict else "ignore")
        expected = _two_walks(data)
        assert _one_walk(data) == expected
    if strict:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _kept_as_the_generator_keeps_them(data)


def _kept_as_the_generator_keeps_them(data: bytes) -> None:
    """Where the walk passed and kept the top level itself, it kept what pydicom's
    generator yields: the same raw elements (tag, VR, length, value, offset, encoding)."""
    try:
        with io.BytesIO(data) as stream, plain_dataset(stream) as plain:
            walker = _walker(plain.stream, plain.offset, plain.syntax, keep=_HEADER_TAGS)
            walker.walk()
            if not walker.top_level_plain:
                return
            _, kept = _walk_top_level(plain.stream, plain.offset, plain.syntax, keep=_HEADER_TAGS)
    except Exception:  # refused: _same_answer compared the refusals
        return
    assert walker.kept == kept


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=instances(), strict=st.booleans())
@example(data=bombs.instance(b"")[1], strict=False)
def test_one_walk_answers_as_the_two_walks_did(data: bytes, strict: bool) -> None:
    _same_answer(data, strict=strict)


def test_a_deflated_dataset_is_walked_once_in_its_inflated_copy() -> None:
    uid, data = bombs.deflated(b"", uid="1.2.826.0.1.3680043.8.498.77")
    assert bombs.file_meta(uid, DeflatedExplicitVRLittleEndian) in data
    _same_answer(data, strict=False)
    assert isinstance(_one_walk(data), InstanceHeader)


def test_a_top_level_undefined_length_leaves_the_top_level_to_pydicom() -> None:
    """Encapsulated pixels (or any undefined-length element at the top level): pydicom
    parses or searches their end its own way, so its generator walks the top level."""
    enc = Encoder(ExplicitVRLittleEndian)
    pixels = (
        enc.element(0x7FE00010, b"OB", UNDEFINED)
        + enc.item(0xFFFEE000, 0)
        + enc.item(0xFFFEE000, 4)
        + b"\xff\xd8\xff\xd9"
        + enc.item(0xFFFEE0DD, 0)
    )
    uid, data = bombs.instance(pixels)
    with io.BytesIO(data) as stream, plain_dataset(stream) as plain:
        walker = _walker(plain.stream, plain.offset, plain.syntax, keep=_HEADER_TAGS)
        walker.walk()
        assert not walker.top_level_plain
    _same_answer(data, strict=False)
    header = _one_walk(data)
    assert isinstance(header, InstanceHeader) and header.sop_instance_uid == uid


def test_a_character_set_pydicom_refuses_is_refused_as_before() -> None:
    """With pydicom's warnings as errors, an unknown character set stops its generator;
    the one walk hands that dataset to the generator, which refuses it as it did."""
    enc = Encoder(ExplicitVRLittleEndian)
    charset = enc.element(0x00080005, b"CS", 6) + b"bogus "
    uid, plain_file = bombs.instance(b"")
    meta = bombs.file_meta(uid)
    data = meta + charset + plain_file[len(meta) :]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refused = _one_walk(data)
        assert refused == _two_walks(data)
    assert isinstance(refused, tuple) and refused[0] is DatasetUnreadable
    assert "cannot be walked" in refused[1]
