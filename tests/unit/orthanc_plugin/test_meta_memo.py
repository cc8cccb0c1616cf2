"""The File Meta memo gives exactly the digest and syntax a fresh parse gives, on any bytes."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dicom_fixtures
from gateway.core import fingerprint
from gateway.core.fingerprint import dataset_digest, dataset_offset
from gateway.orthanc_plugin.meta_memo import MetaMemo

EXPLICIT = b"1.2.840.10008.1.2.1"
BIG_ENDIAN = b"1.2.840.10008.1.2.2"  # as long: the meta keeps its size


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    (path,) = dicom_fixtures.ct_series(tmp_path_factory.mktemp("ct"), count=1, rows=8, cols=8)
    return Path(path).read_bytes()


def fresh(data: bytes) -> tuple[bytes, str] | str:
    """What the gateway's own dataset_digest says (the type of what it raises, if it does)."""
    try:
        return dataset_digest(data)
    except Exception as exc:  # whatever a fresh parse raises, the memo must raise too
        return type(exc).__name__


def memo_says(memo: MetaMemo, uuid: str, data: bytes) -> tuple[bytes, str] | str:
    try:
        return memo.dataset_digest(uuid, data)
    except Exception as exc:
        return type(exc).__name__


def counting_parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the File Meta parses the memo makes."""
    calls: list[int] = []

    def counted(stream):  # type: ignore[no-untyped-def]
        calls.append(1)
        return dataset_offset(stream)

    monkeypatch.setattr("gateway.orthanc_plugin.meta_memo.dataset_offset", counted)
    return calls


def test_an_unchanged_file_is_parsed_once_and_hashed_every_time(
    ct: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    parses = counting_parses(monkeypatch)
    memo = MetaMemo()
    answers = [memo.dataset_digest("a", ct) for _ in range(3)]
    assert answers == [dataset_digest(ct)] * 3 and len(parses) == 1


def test_a_changed_dataset_is_hashed_anew_without_a_parse(
    ct: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    memo = MetaMemo()
    memo.dataset_digest("a", ct)
    parses = counting_parses(monkeypatch)
    edited = ct[:-1] + bytes([ct[-1] ^ 0xFF])  # the last pixel byte
    assert memo.dataset_digest("a", edited) == dataset_digest(edited) != dataset_digest(ct)
    assert not parses  # the File Meta bytes are the same: so is where the dataset starts


def test_a_changed_transfer_syntax_is_parsed_again(ct: bytes) -> None:
    memo = MetaMemo()
    memo.dataset_digest("a", ct)
    assert EXPLICIT in ct
    edited = ct.replace(EXPLICIT, BIG_ENDIAN, 1)
    assert memo.dataset_digest("a", edited) == dataset_digest(edited)
    assert memo.dataset_digest("a", edited)[1] != dataset_digest(ct)[1]


def test_a_meta_that_grows_into_the_dataset_is_parsed_again(ct: bytes) -> None:
    """The first dataset element turned into a group 0002 element: the meta now ends later."""
    memo = MetaMemo()
    memo.dataset_digest("a", ct)
    offset, _ = dataset_offset(io.BytesIO(ct))
    element = struct.pack("<HH2sH", 0x0002, 0x0100, b"UI", 4) + b"1.2\x00"
    grown = ct[:offset] + element + ct[offset:]
    assert memo.dataset_digest("a", grown) == dataset_digest(grown) == dataset_digest(ct)


@pytest.mark.filterwarnings("ignore")
def test_a_file_cut_short_after_its_meta_is_judged_as_a_fresh_parse_judges_it(ct: bytes) -> None:
    memo = MetaMemo()
    memo.dataset_digest("a", ct)
    offset, _ = dataset_offset(io.BytesIO(ct))
    for cut in range(offset - 2, offset + 14):
        assert memo_says(memo, "a", ct[:cut]) == fresh(ct[:cut]), cut


def test_forgotten_and_other_attachments_are_parsed(
    ct: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    memo = MetaMemo(limit=1)
    memo.dataset_digest("a", ct)
    parses = counting_parses(monkeypatch)
    memo.dataset_digest("b", ct)  # another attachment: its own parse (and the memo starts over)
    memo.forget("b")
    memo.dataset_digest("b", ct)
    assert len(parses) == 2


@pytest.mark.filterwarnings("ignore")  # pydicom warns of odd values, as in production
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edits=st.lists(st.tuples(st.integers(0, 420), st.integers(0, 255)), min_size=1, max_size=4))
def test_any_edit_near_the_meta_gives_what_a_fresh_parse_gives(
    ct: bytes, edits: list[tuple[int, int]]
) -> None:
    """Byte edits in the preamble, the File Meta and the first dataset elements."""
    memo = MetaMemo()
    memo.dataset_digest("a", ct)
    edited = bytearray(ct)
    for position, value in edits:
        edited[position] = value
    assert memo_says(memo, "a", bytes(edited)) == fresh(bytes(edited))


def test_the_memo_hashes_with_the_gateway_definition() -> None:
    """One definition of where the dataset starts: the memo calls the fingerprint's."""
    import gateway.orthanc_plugin.meta_memo as meta_memo

    assert meta_memo.dataset_offset is fingerprint.dataset_offset


def test_a_kept_mark_answers_a_cold_memo_without_a_parse(
    ct: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalogue's mark from arrival: a new memo (Orthanc restarted) takes it when the
    bytes fit it, and parses afresh when they do not."""
    first = MetaMemo()
    first.dataset_digest("a", ct)
    kept = first.mark("a")
    assert kept is not None and kept.syntax == dataset_digest(ct)[1]
    parses = counting_parses(monkeypatch)
    cold = MetaMemo()
    assert cold.dataset_digest("a", ct, kept=kept) == dataset_digest(ct) and not parses
    assert cold.mark("a") == kept
    edited = ct.replace(EXPLICIT, BIG_ENDIAN, 1)
    other = MetaMemo()
    assert other.dataset_digest("a", edited, kept=kept) == dataset_digest(edited)
    assert len(parses) == 1 and other.mark("a") != kept


@pytest.mark.filterwarnings("ignore")
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edits=st.lists(st.tuples(st.integers(0, 420), st.integers(0, 255)), min_size=1, max_size=4))
def test_any_edit_near_the_meta_gives_a_fresh_parses_answer_with_a_kept_mark(
    ct: bytes, edits: list[tuple[int, int]]
) -> None:
    """The same property for a cold memo given the mark kept from the unedited file."""
    first = MetaMemo()
    first.dataset_digest("a", ct)
    kept = first.mark("a")
    edited = bytearray(ct)
    for position, value in edits:
        edited[position] = value
    try:
        said: tuple[bytes, str] | str = MetaMemo().dataset_digest("a", bytes(edited), kept=kept)
    except Exception as exc:
        said = type(exc).__name__
    assert said == fresh(bytes(edited))
