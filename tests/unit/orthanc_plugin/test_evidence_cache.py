"""The evidence cache's rules, on a stand-in record book: an answer is kept only while the
index's notifications are heard, and never across one that arrived during its look-up.

The listener's real session (PostgreSQL ``LISTEN``, a cut session) is tested in
tests/integration/test_evidence_cache.py.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.errors import ReadRefused
from gateway.index.evidence_view import EVERYTHING
from gateway.orthanc_plugin.catalog import Catalog
from gateway.orthanc_plugin.evidence import RecordBook
from gateway.orthanc_plugin.evidence_cache import EvidenceCache
from gateway.orthanc_plugin.guard import DICOM, Guard
from gateway.orthanc_plugin.storage import FileArea
from gateway.orthanc_plugin.verdict import Version
from gateway.trust.alerts import Alerts
from tests.unit.orthanc_plugin.test_look_ahead import WatchedRecords, recorded_file


def version(digest: bytes) -> Version:
    return Version(
        version=1, digest=digest, pixel_digest=None, record_key=None, tx_hash="0xab",
        block_number=1, block_time=None, recorder=None, batch_id=None, leaf_index=None,
        transfer_syntax=None, patient_key=None, proof=None, received_at=None, erased=False,
    )  # fmt: skip


class Book:
    """Answers from a dict, counting look-ups; ``during`` runs inside the next look-up."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[Version, ...]] = {}
        self.lookups = 0
        self.during: Callable[[], None] | None = None

    def versions(self, sop_instance_uid: str) -> tuple[Version, ...]:
        self.lookups += 1
        answer = self.rows.get(sop_instance_uid, ())
        if self.during is not None:
            during, self.during = self.during, None
            during()  # e.g. a commit, and its notification, while the query ran
        return answer


@pytest.fixture
def book() -> Book:
    book = Book()
    book.rows["1.2.3"] = (version(b"\x01" * 32),)
    return book


def test_nothing_is_kept_before_the_listener_listens(book: Book) -> None:
    cache = EvidenceCache(book)
    for _ in range(3):
        assert cache.versions("1.2.3") == book.rows["1.2.3"]
    assert book.lookups == 3 and not cache.cached("1.2.3")
    counts = cache.counts()
    assert (counts.hits, counts.bypassed, counts.entries) == (0, 3, 0)


def test_while_listening_an_answer_is_kept_until_its_uid_is_notified(book: Book) -> None:
    cache = EvidenceCache(book)
    cache.listening_began()
    first = cache.versions("1.2.3")
    assert cache.versions("1.2.3") == first and book.lookups == 1
    book.rows["1.2.3"] = (*first, version(b"\x02" * 32))  # a new version committed…
    cache.heard("9.9.9")  # …another UID's notification changes nothing here
    assert len(cache.versions("1.2.3")) == 1 and book.lookups == 1
    cache.heard("1.2.3")  # …its own drops it
    assert len(cache.versions("1.2.3")) == 2 and book.lookups == 2
    counts = cache.counts()
    assert (counts.hits, counts.misses, counts.dropped) == (2, 2, 1)


def test_an_answer_is_not_kept_when_a_notification_arrives_during_its_look_up(
    book: Book,
) -> None:
    """The look-up may have read the rows before the commit the notification announces."""
    cache = EvidenceCache(book)
    cache.listening_began()
    book.during = lambda: cache.heard("1.2.3")
    cache.versions("1.2.3")
    assert not cache.cached("1.2.3")
    cache.versions("1.2.3")  # looked up again, and kept this time
    assert book.lookups == 2 and cache.cached("1.2.3")


def test_an_answer_looked_up_across_a_drop_and_a_new_listen_is_not_kept(book: Book) -> None:
    """Notifications sent while the session was down were never heard."""
    cache = EvidenceCache(book)
    cache.listening_began()

    def dropped_and_back() -> None:
        cache.listening_ended()
        cache.listening_began()

    book.during = dropped_and_back
    cache.versions("1.2.3")
    assert not cache.cached("1.2.3")


def test_a_dropped_session_forgets_everything_and_keeps_nothing_until_back(book: Book) -> None:
    cache = EvidenceCache(book)
    cache.listening_began()
    cache.versions("1.2.3")
    cache.listening_ended()
    for _ in range(2):
        cache.versions("1.2.3")
    assert book.lookups == 3 and cache.counts().bypassed == 2 and cache.counts().entries == 0
    cache.listening_began()
    cache.versions("1.2.3")
    cache.versions("1.2.3")
    assert book.lookups == 4


def test_a_truncation_flushes_every_uid(book: Book) -> None:
    cache = EvidenceCache(book)
    cache.listening_began()
    for uid in ("1.2.3", "4.5.6"):
        cache.versions(uid)
    cache.heard(EVERYTHING)
    assert not cache.cached("1.2.3") and not cache.cached("4.5.6")


def test_the_cache_is_bounded_least_recently_used_out_and_by_age(book: Book) -> None:
    now = [0.0]
    cache = EvidenceCache(book, limit=2, max_age_s=10.0, clock=lambda: now[0])
    cache.listening_began()
    for uid in ("a", "b"):
        cache.versions(uid)
    cache.versions("a")  # a is now the most recently used
    cache.versions("c")  # b goes
    assert cache.cached("a") and cache.cached("c") and not cache.cached("b")
    now[0] = 10.0
    assert not cache.cached("a")
    lookups = book.lookups
    cache.versions("a")
    assert book.lookups == lookups + 1


def test_a_cached_answer_still_refuses_a_flipped_byte(tmp_path: Path) -> None:
    """Only the index's answer is kept: the file is hashed and judged on every read."""
    data, index = recorded_file(tmp_path)
    records = WatchedRecords(RecordBook(index))
    cache = EvidenceCache(records)
    cache.listening_began()
    checker = Guard(
        area=FileArea(tmp_path / "storage", sync=False),
        catalog=Catalog(tmp_path / "catalog.sqlite"),
        records=cache,
        alerts=Alerts(tmp_path / "alerts.sqlite"),
        look_ahead=True,
    )
    name = str(uuid.uuid4())
    checker.create(name, DICOM, data)
    for _ in range(3):
        assert checker.read(name, DICOM) == data
    assert len(records.threads) == 1  # one look-up, on the look-ahead's thread; then memory
    path = checker.area.path(name)
    before = path.stat()
    edited = bytearray(data)
    edited[-3] ^= 0x01
    path.write_bytes(bytes(edited))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ReadRefused) as refused:
        checker.read(name, DICOM)
    assert refused.value.verdict.status == "tampered"
    assert len(records.threads) == 1 and cache.counts().hits >= 3
    checker.close()
