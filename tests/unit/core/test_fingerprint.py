"""Digests are taken over the bytes as received, meta excluded, pixels never decoded."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import random
import struct
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

import dicom_fixtures
from gateway.core.fingerprint import (
    _HEADER_TAGS,
    EMPTY_SHA256,
    MAX_DEPTH,
    MAX_ELEMENTS,
    InstanceHeader,
    _walk_top_level,
    _walked_header,
    check_nesting,
    check_structure,
    checked_header,
    dataset_digest,
    dataset_offset,
    fingerprint,
    fingerprint_bytes,
    load_dataset,
    plain_dataset,
    read_header,
)
from gateway.errors import DatasetTooLarge, DatasetUnreadable
from gateway.fuzz.mutate import mutate
from tests import bombs
from tests.bombs import UNDEFINED


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return dicom_fixtures.generate(tmp_path_factory.mktemp("fixtures"))


def test_digests_match_an_independent_computation(catalogue: list[Path]) -> None:
    for path in catalogue:
        data = path.read_bytes()
        with path.open("rb") as stream:
            fp = fingerprint(stream)
        assert fp.digest == hashlib.sha256(data[fp.dataset_offset :]).digest(), path.name
        ds = dcmread(path)
        assert fp.transfer_syntax == ds.file_meta.TransferSyntaxUID
        # pydicom's PixelData is the value as stored (items without the delimiter when encapsulated)
        assert fp.pixel_digest == hashlib.sha256(ds.PixelData).digest(), path.name


def test_the_whole_file_hash_comes_with_the_fingerprint(catalogue: list[Path]) -> None:
    """What the pipeline compares with the spool's hash at the ack: every byte of the file,
    deflated ones (hashed as received) included."""
    for path in catalogue:
        data = path.read_bytes()
        with path.open("rb") as stream:
            fp = fingerprint(stream)
        assert fp.file_sha256 == hashlib.sha256(data).digest(), path.name


def test_rewriting_the_file_meta_keeps_the_digest(catalogue: list[Path], tmp_path: Path) -> None:
    path = catalogue[0]
    ds = dcmread(path)
    ds.file_meta.ImplementationVersionName = "OTHER_HOP"
    ds.file_meta.SourceApplicationEntityTitle = "SOMEWHERE"
    out = tmp_path / "rewritten.dcm"
    ds.save_as(out, enforce_file_format=True)
    with path.open("rb") as a, out.open("rb") as b:
        first, second = fingerprint(a), fingerprint(b)
    assert first.dataset_offset != second.dataset_offset
    assert first.digest == second.digest
    assert first.pixel_digest == second.pixel_digest


# --- the one dataset digest: the gateway's fingerprint and the Orthanc plugin's -------------

PYDICOM_FILES = sorted((Path(pydicom.__file__).parent / "data" / "test_files").rglob("*.dcm"))


def test_the_plugins_digest_is_the_gateways_in_every_transfer_syntax(
    catalogue: list[Path],
) -> None:
    """:func:`dataset_digest` (what the plugin hashes on every read) gives
    :func:`fingerprint`'s digest and syntax wherever the gateway takes a file in; where the
    gateway refuses the dataset but reads the File Meta, it still hashes from the same offset."""
    syntaxes: set[str] = set()
    for path in catalogue + PYDICOM_FILES:
        data = path.read_bytes()
        try:
            fp = fingerprint_bytes(data)
        except (DatasetUnreadable, DatasetTooLarge):
            try:
                offset, syntax = dataset_offset(io.BytesIO(data))
            except DatasetUnreadable:
                with pytest.raises(DatasetUnreadable):
                    dataset_digest(data)
                continue
            assert dataset_digest(data) == (hashlib.sha256(data[offset:]).digest(), str(syntax))
            continue
        assert dataset_digest(data) == (fp.digest, fp.transfer_syntax), path.name
        syntaxes.add(fp.transfer_syntax)
    assert {
        "1.2.840.10008.1.2",  # implicit VR little endian
        "1.2.840.10008.1.2.1",  # explicit VR little endian
        "1.2.840.10008.1.2.2",  # explicit VR big endian
        "1.2.840.10008.1.2.1.99",  # deflated
        "1.2.840.10008.1.2.4.50",  # JPEG baseline (encapsulated)
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
        "1.2.840.10008.1.2.5",  # RLE lossless
    } <= syntaxes


@pytest.mark.parametrize("delta", [40, -40, 1 << 20])
def test_the_dataset_starts_after_the_last_meta_element_whatever_the_group_length_says(
    catalogue: list[Path], delta: int
) -> None:
    """Elements of another group inside a lying (0002,0000) are dataset, not meta."""
    data = bytearray(catalogue[0].read_bytes())
    assert data[132:140] == b"\x02\x00\x00\x00UL\x04\x00"
    data[140:144] = (int.from_bytes(data[140:144], "little") + delta).to_bytes(4, "little")
    truthful = fingerprint_bytes(catalogue[0].read_bytes())
    assert dataset_offset(io.BytesIO(bytes(data)))[0] == truthful.dataset_offset
    assert dataset_digest(bytes(data)) == (truthful.digest, truthful.transfer_syntax)


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda data: data[128:], "no preamble"),
        (lambda data: data[:128] + b"DICX" + data[132:], "no DICM prefix"),
        (
            lambda data: data.replace(b"\x02\x00\x10\x00UI", b"\x02\x00\x10\x00UU", 1),
            "unknown VR of the Transfer Syntax UID",
        ),
        pytest.param(
            lambda data: data.replace(b"\x02\x00\x00\x00UL", b"\x02\x00\x00\x00HL", 1),
            "unknown VR of the group length",
            # pydicom then tries the File Meta as implicit VR, and says so
            marks=pytest.mark.filterwarnings("ignore:Expected implicit VR:UserWarning"),
        ),
        (lambda data: data.replace(b"\x02\x00\x10\x00", b"\x02\x00\x11\x00", 1), "no syntax"),
        (lambda data: data[:138] + b"\x03\x00" + data[140:], "a UL of 3 bytes"),
    ],
)
def test_a_file_meta_the_gateway_cannot_read_has_no_dataset_digest(
    catalogue: list[Path], edit: Callable[[bytes], bytes], why: str
) -> None:
    """The plugin then keeps the whole file's SHA-256 (guard.py). An unknown VR, and a
    value of the wrong length, used to escape :func:`dataset_offset` as pydicom's
    NotImplementedError and BytesLengthException, not DatasetUnreadable."""
    data = edit(catalogue[0].read_bytes())
    assert data != catalogue[0].read_bytes(), why
    with pytest.raises(DatasetUnreadable):
        dataset_digest(data)
    with pytest.raises(DatasetUnreadable):
        fingerprint_bytes(data)


def test_a_header_edit_changes_the_digest_but_not_the_pixel_digest(
    catalogue: list[Path], tmp_path: Path
) -> None:
    path = next(p for p in catalogue if p.name == "mr_head.dcm")
    ds = dcmread(path)
    ds.PatientName = "EDITED^NAME"
    out = tmp_path / "edited.dcm"
    ds.save_as(out, enforce_file_format=True)
    before, after = fingerprint_bytes(path.read_bytes()), fingerprint_bytes(out.read_bytes())
    assert before.digest != after.digest
    assert before.pixel_digest == after.pixel_digest


def test_no_pixel_data_hashes_to_empty(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = "2.25.1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert fingerprint_bytes(buffer.getvalue()).pixel_digest == EMPTY_SHA256


def test_header_attributes(catalogue: list[Path]) -> None:
    path = next(p for p in catalogue if p.name == "dx_chest.dcm")
    with path.open("rb") as stream:
        header = read_header(stream)
    assert (header.modality, header.body_part) == ("DX", "CHEST")
    assert header.sop_instance_uid == dcmread(path, stop_before_pixels=True).SOPInstanceUID


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 132,
        b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff",
        b"not dicom at all" * 20,
    ],
)
def test_garbage_is_unreadable(data: bytes) -> None:
    with pytest.raises(DatasetUnreadable):
        fingerprint_bytes(data)
    with pytest.raises(DatasetUnreadable):
        read_header(io.BytesIO(data))


def test_large_pixel_data_hashed_on_two_threads_gives_the_same_digests(tmp_path: Path) -> None:
    # above PARALLEL_PIXELS the pixel digest runs beside the dataset digest, chunk by chunk
    path = dicom_fixtures.large_multiframe(tmp_path / "big.dcm", target_bytes=20 << 20)
    data = path.read_bytes()
    with path.open("rb") as stream:
        fp = fingerprint(stream)
    assert fp.digest == hashlib.sha256(data[fp.dataset_offset :]).digest()
    assert fp.pixel_digest == hashlib.sha256(dcmread(path).PixelData).digest()
    assert fp.dataset_length == len(data) - fp.dataset_offset


# -- bounded decoding: what a hostile file may declare ---------------------------------------


def _peak_traced(call: Callable[[], object]) -> int:
    """Peak bytes Python allocated while ``call`` ran (zlib's output buffers included)."""
    tracemalloc.start()
    try:
        with contextlib.suppress(DatasetUnreadable):
            call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A deflated instance of 256 MiB of zero Pixel Data, about 260 KB as sent."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.dcm"
    bombs.deflate_bomb(path, inflated=256 << 20)
    return path


def test_a_deflate_bomb_is_inflated_as_a_stream_not_in_memory(bomb: Path) -> None:
    assert bomb.stat().st_size < 1 << 20
    with bomb.open("rb") as stream:
        assert _peak_traced(lambda: read_header(stream)) < 16 << 20
        header = read_header(stream)
        assert _peak_traced(lambda: fingerprint(stream)) < 16 << 20
        fp = fingerprint(stream)
    assert header.modality == "CT"
    assert fp.digest == hashlib.sha256(bomb.read_bytes()[fp.dataset_offset :]).digest()
    assert fp.pixel_digest == hashlib.sha256(bytes(256 << 20)).digest()


@pytest.mark.parametrize("parse", [check_structure, read_header, checked_header, fingerprint])
def test_a_deflate_bomb_past_the_cap_is_too_large(bomb: Path, parse: Callable[..., object]) -> None:
    with bomb.open("rb") as stream, pytest.raises(DatasetTooLarge, match="inflates past"):
        parse(stream, limit=64 << 20)


def test_the_check_before_the_ack_inflates_deflated_datasets() -> None:
    _, good = bombs.deflated(b"")
    truncated = good[:-4]
    corrupt = good[:-40] + bytes(b ^ 0x5A for b in good[-40:])
    _, overrun = bombs.deflated(bombs.element(0x0009, 0x1010, b"OB", 1 << 20) + b"short")
    with io.BytesIO(good) as stream:
        assert str(check_structure(stream)) == "1.2.840.10008.1.2.1.99"
    for data in (truncated, corrupt, overrun):
        with pytest.raises(DatasetUnreadable):
            check_structure(io.BytesIO(data))


def _in_defined_sequence(content: bytes) -> bytes:
    """``content`` inside one item of a defined-length sequence that fits the file: the
    top level looks sound, only a walk into the sequence finds what is wrong."""
    body = bombs.item(len(content)) + content
    return bombs.element(0x0040, 0xA730, b"SQ", len(body)) + body


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(bombs.element(0x0008, 0x0104, b"UT", 0xFFFFFFF0) + b"x" * 16, id="4GB-value"),
        pytest.param(bombs.element(0x0040, 0xA730, b"SQ", UNDEFINED) + bombs.item(), id="no-end"),
        pytest.param(bombs.element(0x0009, 0x1010, b"OB", UNDEFINED) + b"\x01" * 64, id="no-delim"),
    ],
)
def test_nested_lengths_must_fit_and_undefined_lengths_must_end(content: bytes) -> None:
    _, data = bombs.instance(_in_defined_sequence(content))
    for parse in (check_structure, read_header, fingerprint_bytes):
        with pytest.raises(DatasetUnreadable):
            parse(io.BytesIO(data)) if parse is not fingerprint_bytes else parse(data)


def test_sequences_nest_at_most_32_deep() -> None:
    _, fine = bombs.instance(bombs.nested(MAX_DEPTH))
    assert check_structure(io.BytesIO(fine)) and read_header(io.BytesIO(fine))
    for depth in (MAX_DEPTH + 1, 5000):  # 5000: pydicom alone would hit RecursionError
        uid, data = bombs.instance(bombs.nested(depth))
        with pytest.raises(DatasetUnreadable, match="nest more than 32"):
            check_structure(io.BytesIO(data))
        with pytest.raises(DatasetUnreadable, match="nest more than 32"):
            read_header(io.BytesIO(data))
        _, packed = bombs.deflated(bombs.nested(depth), uid=uid)
        with pytest.raises(DatasetUnreadable, match="nest more than 32"):
            fingerprint_bytes(packed)


def _many_elements(count: int) -> bytes:
    """``count`` empty private elements, each with its own tag (pydicom would keep each)."""
    tags = (
        (group, element) for group in range(0x0009, 0x0FFF, 2) for element in range(0x1000, 0x10000)
    )
    return b"".join(
        struct.pack("<HH2sH", group, element, b"LO", 0)
        for group, element in itertools.islice(tags, count)
    )


def test_read_header_holds_only_the_attributes_it_needs() -> None:
    # pydicom alone keeps every element it reads: 14 MiB for these 50,000 empty ones
    _, data = bombs.instance(_many_elements(50_000))
    with io.BytesIO(data) as stream:
        assert _peak_traced(lambda: read_header(stream)) < 4 << 20
        assert read_header(stream).modality == "CT"


def test_a_dataset_of_more_elements_than_the_cap_is_too_large() -> None:
    uid, data = bombs.instance(_many_elements(2_000))
    stream = io.BytesIO(data)
    offset, syntax = dataset_offset(stream)
    check_nesting(stream, offset, syntax, max_elements=3_000)
    with pytest.raises(DatasetTooLarge, match="more than 1000 elements"):
        check_nesting(stream, offset, syntax, max_elements=1_000)
    _, packed = bombs.deflated(_many_elements(2_000), uid=uid)
    with pytest.raises(DatasetTooLarge, match="more than 1000 elements"):
        load_dataset(io.BytesIO(packed), max_bytes=1 << 20, max_elements=1_000)
    assert MAX_ELEMENTS >= 500_000  # an enhanced multi-frame of thousands of frames fits


def _encapsulated(*fragments: bytes, junk: bytes = b"") -> bytes:
    """Pixel Data of undefined length: an empty offset table, the fragments, ``junk``, the end."""
    items = bombs.item(0) + b"".join(bombs.item(len(f)) + f for f in fragments)
    return bombs.element(0x7FE0, 0x0010, b"OB", UNDEFINED) + items + junk + bombs.SEQUENCE_END


def test_encapsulated_pixel_data_must_be_items_then_the_delimiter() -> None:
    """pydicom finds the delimiter by searching, so a fragment whose bytes were shifted
    passed the check before the ack; DCMTK (and so Orthanc) then refused the file and it
    was parked after it had been acked. Found by the fuzz campaign (seed 11)."""
    _, sound = bombs.instance(_encapsulated(b"\xff\xd8\xff\xd9", b"\x00" * 6))
    check_structure(io.BytesIO(sound))
    _, shifted = bombs.instance(_encapsulated(b"\xff\xd8\xff\xd9", junk=b"\x12\x34\x56\x78" * 2))
    for parse in (check_structure, checked_header):
        with pytest.raises(DatasetUnreadable, match="encapsulated Pixel Data is not items"):
            parse(io.BytesIO(shifted))


@pytest.mark.parametrize(
    ("content", "why"),
    [
        pytest.param(
            struct.pack("<HH2sH", 0x0028, 0x0030, b"ES", 8) + b"0.5\\0.5 ",
            "no standard VR",
            id="unknown-VR",  # pydicom: a 2-byte length; DCMTK: a 4-byte one
        ),
        pytest.param(
            struct.pack("<HH2sH", 0x0020, 0x000D, b"<\x00", 4) + b"1.2 ",
            "no standard VR",
            id="VR-not-letters",  # pydicom: an implicit element; DCMTK: a 2-byte length
        ),
        pytest.param(bombs.item(4) + b"abcd", "where an element should be", id="item-at-top"),
        pytest.param(
            _encapsulated(b"\xff\xd8\xff\xd9")[: -len(bombs.SEQUENCE_END) + 5],
            "encapsulated Pixel Data is not items",
            id="delimiter-cut-short",
        ),
    ],
)
def test_what_dcmtk_would_refuse_is_refused_before_the_ack(content: bytes, why: str) -> None:
    """Each was acked in the full fuzz campaign (seed 1), then refused by Orthanc."""
    _, data = bombs.instance(content)
    for parse in (check_structure, checked_header):
        with pytest.raises(DatasetUnreadable, match=why):
            parse(io.BytesIO(data))


def _pydicoms_answer(data: bytes) -> object:
    """What the check before the ack answered when pydicom parsed the header: the walk,
    then ``dcmread(stop_before_pixels=True, specific_tags=...)`` (the type of the error)."""
    try:
        with io.BytesIO(data) as stream:
            check_structure(stream)
            return read_header(stream)
    except (DatasetUnreadable, DatasetTooLarge) as exc:
        return type(exc)


def _checked(data: bytes) -> object:
    try:
        with io.BytesIO(data) as stream:
            return checked_header(stream)
    except (DatasetUnreadable, DatasetTooLarge) as exc:
        return type(exc)


def test_the_check_before_the_ack_reads_the_header_as_pydicom_does(catalogue: list[Path]) -> None:
    """checked_header keeps the header's elements from its own walk instead of a pydicom
    parse: over every fixture and 40 seeded mutations of each, the same header or the same
    refusal."""
    rng = random.Random(14)
    compared = agreed_headers = 0
    for path in catalogue:
        original = path.read_bytes()
        for data in [original, *(mutate(original, rng)[0] for _ in range(40))]:
            expected = _pydicoms_answer(data)
            assert _checked(data) == expected, path.name
            compared += 1
            agreed_headers += isinstance(expected, InstanceHeader)
    assert compared > 400 and agreed_headers > 100  # the mutations left many readable


def test_header_elements_after_the_pixels_are_not_the_header() -> None:
    """pydicom's parse stops at Pixel Data: a SOP Instance UID after it is no header."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    late_uid = b"1.2.3.4\x00"
    content = (
        out.getvalue()
        + bombs.element(0x7FE0, 0x0010, b"OW", 4) + b"\x00" * 4
        + bombs.element(0x0008, 0x0018, b"UI", len(late_uid)) + late_uid
    )  # fmt: skip
    data = bombs.file_meta("1.2.3.4") + content
    assert _checked(data) == _pydicoms_answer(data) == DatasetUnreadable


@pytest.mark.parametrize("where", ["long value", "implicit data that looks explicit"])
def test_where_the_walk_could_read_otherwise_pydicom_parses(where: str) -> None:
    """A header value the walk defers (over 256 bytes), or an implicit VR dataset whose
    first element's length reads as a VR ("LO"), so that pydicom would switch to explicit
    VR: checked_header leaves those to pydicom's parse, and answers as it does."""
    uid = generate_uid()
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = where != "long value"
    write_dataset(out, ds)
    if where == "long value":  # an over-long Patient ID (LO holds 64), written raw
        content = out.getvalue() + bombs.element(0x0010, 0x0020, b"LO", 300) + b"P" * 300
        syntax = ExplicitVRLittleEndian
    else:  # (0008,0001) first, implicit: its length 0x4F4C is b"LO" on the wire
        content = struct.pack("<HHL", 0x0008, 0x0001, 0x4F4C) + bytes(0x4F4C) + out.getvalue()
        syntax = ImplicitVRLittleEndian
    data = bombs.file_meta(uid, syntax) + content
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom's, about what it read
        expected = _pydicoms_answer(data)
        assert _checked(data) == expected
        with io.BytesIO(data) as stream, plain_dataset(stream) as plain:
            _, kept = _walk_top_level(stream, plain.offset, plain.syntax, keep=_HEADER_TAGS)
            assert _walked_header(plain, kept) is None  # pydicom's parse answered
    if where == "long value":
        assert isinstance(expected, InstanceHeader) and expected.sop_instance_uid == uid
