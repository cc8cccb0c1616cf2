"""The plugin's evidence cache on a real PostgreSQL index: every gateway write that changes
what the view shows is heard, a cut listen session bypasses the cache, and a real Orthanc
with the plugin shows each new verdict on the next read after the notification.

Real parts: the session's PostgreSQL cluster, the gateway's own index writes
(:class:`gateway.index.db.Index` on PostgreSQL, whose schema steps make the notifying
triggers), the plugin's read-only role, Orthanc 1.10 with the Python plugin. Waits poll
observable state up to a deadline; nothing is timed.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
import requests

import dicom_fixtures
from gateway.core.fingerprint import fingerprint_bytes, read_header
from gateway.index.db import Index
from gateway.orthanc_plugin import plugin_section
from gateway.orthanc_plugin.evidence import PostgresRecordBook
from gateway.orthanc_plugin.evidence_cache import EvidenceCache, EvidenceListener
from gateway.orthanc_plugin.verdict import Version
from gateway.pacs.embedded import EmbeddedOrthanc
from gateway.procs import free_port
from tests.integration.pg_evidence import evidence_reader
from tests.integration.plugin_helpers import flip_pixel_byte, integrity, stored_file
from tests.integration.postgres import PostgresCluster

pytestmark = pytest.mark.integration

CT = "1.2.840.10008.5.1.4.1.1.2"
DEADLINE_S = 20.0
T = TypeVar("T")


def until(what: Callable[[], T], ok: Callable[[T], bool], *, why: str) -> T:
    """Poll ``what`` until ``ok`` holds of its value, up to :data:`DEADLINE_S`."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = what()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{why}: still {value!r}")
        time.sleep(0.05)


@dataclass
class Listening:
    """The gateway's index (its owner's writes), and the plugin's cached, listened view."""

    index: Index
    owner_url: str
    cache: EvidenceCache
    listener: EvidenceListener
    book: PostgresRecordBook


@pytest.fixture
def listening(postgres: PostgresCluster) -> Iterator[Listening]:
    url = postgres.create_database()
    index = Index(url)  # the gateway's schema steps: the tables and the notifying triggers
    reader = evidence_reader(postgres, url)
    book = PostgresRecordBook(reader)
    cache = EvidenceCache(book)
    listener = EvidenceListener(reader, cache, heartbeat_s=1.0)
    try:
        yield Listening(index=index, owner_url=url, cache=cache, listener=listener, book=book)
    finally:
        listener.close()
        book.close()
        index.close()


def add_version(
    index: Index, sop: str, digest: bytes, *, version: int = 1, **values: object
) -> int:
    """A received row fingerprinted as the pipeline records it (not anchored)."""
    row = index.add_received(
        entry_id=str(uuid.uuid4()), sop_instance_uid=sop, sop_class_uid=CT, calling_aet="CT1",
        size=1,
    )  # fmt: skip
    index.update(row, stage="anchor", digest=digest, version=version, **values)
    return row


def cached_then(
    cache: EvidenceCache, sop: str, change: Callable[[], None]
) -> Callable[[Callable[[tuple[Version, ...]], bool], str], tuple[Version, ...]]:
    """Make sure ``sop``'s answer is kept, run ``change``, and return a waiter for the next
    answer (the entry dropped by the notification, looked up afresh)."""
    cache.versions(sop)
    cache.versions(sop)
    assert cache.cached(sop), "the answer was not kept while listening"
    change()

    def wait(ok: Callable[[tuple[Version, ...]], bool], why: str) -> tuple[Version, ...]:
        return until(lambda: cache.versions(sop), ok, why=why)

    return wait


def test_every_write_the_view_shows_drops_the_kept_answer(listening: Listening) -> None:
    index, cache = listening.index, listening.cache
    sop = "1.2.826.0.1.3680043.2.1143.777.1"
    assert cache.versions(sop) == () and not cache.cached(sop)  # before LISTEN: not kept
    assert cache.counts().bypassed == 1
    listening.listener.start()
    until(lambda: cache.listening, bool, why="the listener never listened")

    # a version appears (fingerprinted): the empty answer kept for the UID is dropped
    first: list[int] = []
    wait = cached_then(cache, sop, lambda: first.append(add_version(index, sop, b"\x01" * 32)))
    (v1,) = wait(lambda v: len(v) == 1, "the new version was not heard")
    assert v1.tx_hash is None

    # anchored
    wait = cached_then(cache, sop, lambda: index.update(first[0], tx_hash="0xab", block_number=3))
    wait(lambda v: v[0].tx_hash == "0xab", "the anchor was not heard")

    # a step the view does not show (forward -> committed) notifies nothing: a later
    # notification of another UID arrives after it would have, and the answer is still kept
    dropped = cache.counts().dropped
    index.update(first[0], stage="committed")
    other = "1.2.826.0.1.3680043.2.1143.777.2"
    wait_other = cached_then(cache, other, lambda: add_version(index, other, b"\x09" * 32))
    wait_other(lambda v: len(v) == 1, "the other UID's version was not heard")
    assert cache.cached(sop) and cache.counts().dropped == dropped + 1

    # a new version supersedes it
    wait = cached_then(
        cache, sop, lambda: add_version(index, sop, b"\x02" * 32, version=2, tx_hash="0xcd")
    )
    versions = wait(lambda v: len(v) == 2, "the new version was not heard")
    assert [v.digest for v in versions] == [b"\x01" * 32, b"\x02" * 32]

    # erased on request (gateway/trust/erasure.py's update)
    def erase() -> None:
        with index.transaction() as db:
            db.execute("UPDATE instances SET stage = 'erased' WHERE id = ?", (first[0],))

    wait = cached_then(cache, sop, erase)
    wait(lambda v: v[0].erased, "the erasure was not heard")

    # the row stops being a version (found a duplicate): it leaves the view
    wait = cached_then(cache, sop, lambda: index.update(first[0], stage="duplicate"))
    wait(lambda v: len(v) == 1 and v[0].version == 2, "the row leaving the view was not heard")

    # and the whole table emptied (a restore from a backup starts with a TRUNCATE)
    def truncate() -> None:
        with psycopg.connect(listening.owner_url, autocommit=True) as db:
            db.execute("TRUNCATE instances CASCADE")

    wait = cached_then(cache, other, truncate)
    wait(lambda v: v == (), "the truncation was not heard")
    assert cache.counts().flushes >= 1


def test_a_cut_listen_session_forgets_everything_then_listens_again(
    listening: Listening,
) -> None:
    index, cache, listener = listening.index, listening.cache, listening.listener
    sop = "1.2.826.0.1.3680043.2.1143.778.1"
    row = add_version(index, sop, b"\x01" * 32)
    listener.start()
    until(lambda: cache.listening, bool, why="the listener never listened")
    cache.versions(sop)
    assert cache.cached(sop)
    pid = listener.backend_pid
    assert pid is not None
    with psycopg.connect(listening.owner_url, autocommit=True) as db:
        cut = db.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
    assert cut == (True,)
    # the cut is seen: everything forgotten (a read meanwhile looks up afresh: the
    # listener that cannot log in, below, shows it)
    until(lambda: cache.counts().flushes, lambda n: n >= 1, why="the cut was not seen")
    until(lambda: listener.backend_pid not in (None, pid), bool, why="it never listened again")
    # listening again: kept anew, and notifications heard on the new session
    wait = cached_then(cache, sop, lambda: index.update(row, tx_hash="0xef", block_number=4))
    wait(lambda v: v[0].tx_hash == "0xef", "the anchor was not heard on the new session")


def test_while_not_listening_every_read_looks_up_afresh(listening: Listening) -> None:
    """A listener that cannot log in (a wrong password): the cache keeps nothing and every
    look-up sees the last commit at once."""
    index, cache = listening.index, listening.cache
    sop = "1.2.826.0.1.3680043.2.1143.779.1"
    row = add_version(index, sop, b"\x01" * 32)
    user, rest = listening.listener.url.split("://", 1)[1].split(":", 1)
    refused = EvidenceListener(
        f"postgresql://{user}:not-the-password@{rest.split('@', 1)[1]}", cache, heartbeat_s=1.0
    ).start()
    try:
        for block in range(5, 9):
            index.update(row, tx_hash=f"0x{block:02x}", block_number=block)
            assert cache.versions(sop)[0].block_number == block  # no wait: nothing kept
        counts = cache.counts()
        assert not counts.listening and counts.hits == 0 and counts.entries == 0
        assert counts.bypassed == 4
    finally:
        refused.close()


def test_an_index_without_the_notifying_triggers_is_never_cached(listening: Listening) -> None:
    """A gateway older than the plugin has not made the triggers yet: nothing would be
    heard, so nothing is kept, and the plugin says why."""
    index, cache = listening.index, listening.cache
    sop = "1.2.826.0.1.3680043.2.1143.780.1"
    row = add_version(index, sop, b"\x01" * 32)
    with psycopg.connect(listening.owner_url, autocommit=True) as db:
        db.execute("DROP TRIGGER xray_evidence_updated ON instances")
    said: list[str] = []
    listener = EvidenceListener(listening.listener.url, cache, log=said.append).start()
    try:
        until(lambda: said, bool, why="the plugin never said why it does not cache")
        assert "no notifying triggers" in said[0] and not cache.listening
        index.update(row, tx_hash="0xab", block_number=3)  # would not be notified
        assert cache.versions(sop)[0].tx_hash == "0xab" and cache.counts().entries == 0
    finally:
        listener.close()


# --- a real Orthanc with the plugin ---------------------------------------------------------


def test_orthanc_shows_each_new_verdict_on_the_read_after_the_notification(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    """pending -> intact (anchored) -> erased, through the plugin's cache; a flipped byte is
    refused although the evidence comes from memory."""
    url = postgres.create_database()
    index = Index(url)
    reader = evidence_reader(postgres, url)
    files = dicom_fixtures.ct_series(tmp_path / "in", count=2, rows=16, cols=16)
    rows = []
    for path in files:
        data = path.read_bytes()
        fp, header = fingerprint_bytes(data), read_header(io.BytesIO(data))
        rows.append(add_version(index, header.sop_instance_uid, fp.digest,
                                pixel_digest=fp.pixel_digest))  # fmt: skip
    data_dir = tmp_path / "orthanc"
    orthanc = EmbeddedOrthanc(
        data_dir=data_dir, http_port=free_port(), dicom_port=free_port(), aet="CACHEPACS",
        plugin=Path(__file__).resolve().parents[2] / "gateway" / "orthanc_plugin" / "entry.py",
        plugin_config=plugin_section(data_dir=data_dir, index_url=reader),
    )  # fmt: skip
    orthanc.start()
    try:
        auth = orthanc.credentials
        ids = []
        for path in files:
            reply = requests.post(f"{orthanc.url}/instances", data=path.read_bytes(), auth=auth,
                                  timeout=60)  # fmt: skip
            reply.raise_for_status()
            ids.append(str(reply.json()["ID"]))

        def counts() -> dict[str, object]:
            reply = requests.get(f"{orthanc.url}/xray/evidence-cache", auth=auth, timeout=30)
            reply.raise_for_status()
            answer: dict[str, object] = reply.json()
            return answer

        def status(n: int) -> str:
            return str(integrity(orthanc.url, auth, "instances", ids[n])["status"])

        def read(n: int) -> requests.Response:
            return requests.get(f"{orthanc.url}/instances/{ids[n]}/file", auth=auth, timeout=60)

        until(counts, lambda c: c["listening"] is True, why="the plugin never listened")
        for _ in range(2):
            assert read(0).status_code == 200 and status(0) == "pending"
        assert int(str(counts()["hits"])) >= 1

        index.update(rows[0], stage="committed", tx_hash="0xab", block_number=3)
        until(lambda: status(0), lambda s: s == "intact", why="the anchor was not heard")
        assert read(0).content == files[0].read_bytes()

        with index.transaction() as db:
            db.execute("UPDATE instances SET stage = 'erased' WHERE id = ?", (rows[0],))
        until(lambda: status(0), lambda s: s == "erased", why="the erasure was not heard")
        assert read(0).status_code != 200

        # the other instance: its evidence kept, its bytes still hashed on every read
        index.update(rows[1], stage="committed", tx_hash="0xcd", block_number=3)
        until(lambda: status(1), lambda s: s == "intact", why="the anchor was not heard")
        hits = int(str(counts()["hits"]))
        assert read(1).status_code == 200 and int(str(counts()["hits"])) > hits
        flip_pixel_byte(stored_file(data_dir, orthanc.url, auth, ids[1]))
        assert read(1).status_code != 200 and status(1) == "tampered"
    finally:
        orthanc.stop()
        index.close()
