"""The access trail on a real SQLite index and the in-memory ledger: the journal's import
past its high-water mark, batches cut once, proofs against the chain's root, and the
audit's check finding deleted, edited and vanished entries."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.core.access import NO_KEY, AccessLeaf, instance_key, study_key, who_key
from gateway.core.merkle import leaf_hash
from gateway.index import access
from gateway.index.access import TrailBatch
from gateway.index.db import Index
from gateway.ledger.memory import MemoryLedger
from gateway.ledger.types import Anchor, LedgerEvent
from gateway.trust.access_journal import AccessJournal, read_after
from gateway.trust.trail import Trail, check_trail, proof_holds

KEY = b"k" * 32
RECORDER = "0x" + "ab" * 20


class Writer:
    """The recorder's side of the in-memory ledger, as :class:`TrailWriter` wants it."""

    def __init__(self, ledger: MemoryLedger) -> None:
        self.ledger = ledger
        self.sent = 0

    def batch_id_of(self, root: bytes) -> int:
        return next((i for i in range(1, 10_000) if self._root(i) == root), 0)

    def _root(self, batch_id: int) -> bytes | None:
        try:
            return self.ledger.batch_of(batch_id).root
        except Exception:
            return None

    def record_access_batch(self, *, root: bytes, count: int) -> tuple[int, Anchor]:
        self.sent += 1
        batch = self.ledger.record_access_batch(recorder=RECORDER, root=root, count=count)
        return batch.batch_id, Anchor(f"0x{batch.batch_id:064x}", batch.block_number, 0, 0)

    def events(self, name: str, **kwargs: object) -> list[LedgerEvent]:
        return self.ledger.events(name, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def location(tmp_path: Path) -> Path | str:
    """The index's database: SQLite here; tests/integration/test_trail_postgres.py runs the
    same tests on PostgreSQL."""
    return tmp_path / "index.sqlite"


@pytest.fixture
def index(location: Path | str) -> Iterator[Index]:
    db = Index(location)
    yield db
    db.close()


def _journal(tmp_path: Path, reads: int) -> Path:
    journal = AccessJournal(tmp_path / "access.sqlite")
    for i in range(reads):
        journal.append(
            who="alice" if i % 2 else "bob", who_kind="orthanc-user",
            route="viewer" if i % 3 else "rest", verdict="intact", served=True,
            sop_instance_uid=f"1.2.3.{i % 4}", study_instance_uid="1.2.3",
        )  # fmt: skip
    journal.close()
    return tmp_path / "access.sqlite"


def test_the_journal_is_imported_once_past_its_high_water_mark(
    index: Index, tmp_path: Path
) -> None:
    path = _journal(tmp_path, 10)
    trail = Trail(index, pseudonym_key=KEY)
    assert trail.import_journal(path, source="plugin:a", limit=3) == 10
    assert trail.import_journal(path, source="plugin:a") == 0  # nothing new
    AccessJournal(path).append(who="carol", who_kind="address", route="rest",
                               verdict="tampered", served=False)  # fmt: skip
    assert trail.import_journal(path, source="plugin:a") == 1
    assert access.high_water(index, "plugin:a") == 11
    # a racing importer that read the same entries adds none twice
    again = [access.NewEntry(e.id, e.at, e.who, e.who_kind, e.route, e.sop_instance_uid,
                             e.study_instance_uid, e.verdict, e.served)
             for e in read_after(path, 0)]  # fmt: skip
    assert access.add(index, "plugin:a", again) == 0
    assert access.counts(index)["entries"] == 11
    assert read_after(tmp_path / "none.sqlite", 0) == []


def test_batches_are_cut_once_anchored_and_every_proof_checks_against_the_chain(
    index: Index, tmp_path: Path
) -> None:
    trail = Trail(index, pseudonym_key=KEY)
    trail.import_journal(_journal(tmp_path, 25), source="plugin:a")
    # not yet: fewer than the batch size, and the window has not passed
    assert trail.cut(max_entries=10, window_s=3600) is not None  # 25 >= 10
    assert trail.cut(max_entries=10, window_s=3600) is not None
    assert trail.cut(max_entries=10, window_s=3600) is None  # 5 left, window open
    assert trail.cut(max_entries=10, window_s=0) is not None
    ledger = MemoryLedger()
    writer = Writer(ledger)
    landed = trail.send(writer, worker="n/up")
    assert landed == [1, 2, 3] and writer.sent == 3
    assert trail.send(writer, worker="n/up") == []  # nothing open: nothing sent twice
    entries = trail.entries(study="1.2.3", limit=100)
    assert len(entries) == 25
    assert all(proof_holds(entry, ledger) for entry in entries)
    alice = trail.entries(who="alice")
    assert len(alice) == 12 and {e.entry.who for e in alice} == {"alice"}
    # the leaf holds keys, never the names and UIDs
    leaf = entries[0].leaf
    assert leaf.record_key == instance_key(KEY, "1.2.3.0")
    assert leaf.study_key == study_key(KEY, "1.2.3")
    assert leaf.who_key == who_key(KEY, "orthanc-user", "bob")
    assert b"alice" not in leaf.hash() and "1.2.3" not in str(leaf.as_json())
    assert check_trail(trail, ledger) == (3, [])


def test_a_batch_whose_root_is_on_the_chain_already_is_closed_not_sent_again(
    index: Index, tmp_path: Path
) -> None:
    trail = Trail(index, pseudonym_key=KEY)
    trail.import_journal(_journal(tmp_path, 3), source="plugin:a")
    batch = trail.cut(max_entries=10, window_s=0)
    assert batch is not None
    ledger = MemoryLedger()
    ledger.record_access_batch(recorder=RECORDER, root=batch.root, count=batch.count)
    writer = Writer(ledger)
    assert trail.send(writer, worker="n/up") == [1]
    assert writer.sent == 0
    assert access.batch(index, batch.id).tx_hash == ledger.events("AccessBatchAnchored")[0].tx_hash


def _anchored_trail(index: Index, tmp_path: Path) -> tuple[Trail, MemoryLedger]:
    trail = Trail(index, pseudonym_key=KEY)
    trail.import_journal(_journal(tmp_path, 12), source="plugin:a")
    while trail.cut(max_entries=5, window_s=0):
        pass
    ledger = MemoryLedger()
    trail.send(Writer(ledger), worker="n/up")
    with index.transaction() as db:  # the recorder that wrote this index's anchors
        db.execute(
            "INSERT INTO instances (entry_id, sop_instance_uid, sop_class_uid, received_at,"
            " size, stage, recorder) VALUES ('e', '1.2', '1.2', 0, 0, 'committed', ?)",
            (RECORDER,),
        )
    return trail, ledger


def test_the_audit_finds_a_deleted_an_edited_and_a_vanished_batch(
    index: Index, tmp_path: Path
) -> None:
    trail, ledger = _anchored_trail(index, tmp_path)
    assert check_trail(trail, ledger) == (3, [])
    with index.transaction() as raw:
        raw.execute("DELETE FROM access_log WHERE batch = 1 AND leaf_index = 3")
        raw.execute("UPDATE access_log SET who = 'mallory' WHERE batch = 2 AND leaf_index = 0")
    checked, findings = check_trail(trail, ledger)
    assert checked == 3
    assert [(f.batch_id, f.problem, f.leaf_indexes) for f in findings] == [
        (1, "deleted", (3,)), (2, "edited", ()),
    ]  # fmt: skip
    with index.transaction() as raw:  # the third batch, entries and all
        raw.execute("DELETE FROM access_log WHERE batch = 3")
        raw.execute("DELETE FROM access_batches WHERE id = 3")
    _, findings = check_trail(trail, ledger)
    assert [(f.batch_id, f.problem) for f in findings] == [
        (1, "deleted"), (2, "edited"), (3, "batch_missing"),
    ]  # fmt: skip


def _one_more_batch_cut(index: Index, tmp_path: Path) -> tuple[Trail, MemoryLedger, TrailBatch]:
    """Three anchored batches, and a fourth (one read) cut but not sent yet."""
    trail, ledger = _anchored_trail(index, tmp_path)
    AccessJournal(tmp_path / "access.sqlite").append(
        who="carol", who_kind="address", route="rest", verdict="intact", served=True
    )
    trail.import_journal(tmp_path / "access.sqlite", source="plugin:a")
    cut = trail.cut(max_entries=5, window_s=0)
    assert cut is not None
    return trail, ledger, cut


def test_a_batch_mined_but_not_yet_closed_by_its_sender_is_checked_not_called_missing(
    index: Index, tmp_path: Path
) -> None:
    trail, ledger, sending = _one_more_batch_cut(index, tmp_path)
    # the sender's transaction is mined; its receipt is not back, so the batch is still open
    ledger.record_access_batch(recorder=RECORDER, root=sending.root, count=sending.count)
    assert access.batch(index, sending.id).state == "open"
    assert check_trail(trail, ledger) == (3, [])
    with index.transaction() as raw:  # its one entry deleted in that window is still found
        raw.execute("DELETE FROM access_log WHERE batch = ?", (sending.id,))
    _, findings = check_trail(trail, ledger)
    assert [(f.batch_id, f.problem, f.leaf_indexes) for f in findings] == [(4, "deleted", (0,))]


class SendsMeanwhile:
    """The ledger as the audit reads it, with a trail batch sent (mined, then closed in the
    index) just before the audit reads the chain's access batches: after it read the
    landed ones."""

    def __init__(self, ledger: MemoryLedger, send: Callable[[], object]) -> None:
        self.ledger, self.send = ledger, send

    def events(self, name: str, **kwargs: Any) -> list[LedgerEvent]:
        if name == "AccessBatchAnchored":
            self.send()
        return self.ledger.events(name, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ledger, name)


def test_a_batch_mined_and_closed_while_the_audit_runs_is_checked_not_called_missing(
    index: Index, tmp_path: Path
) -> None:
    trail, ledger, _ = _one_more_batch_cut(index, tmp_path)
    meanwhile = SendsMeanwhile(ledger, lambda: trail.send(Writer(ledger), worker="n/up"))
    assert check_trail(trail, meanwhile) == (3, [])  # type: ignore[arg-type]
    assert check_trail(trail, ledger) == (4, [])


def test_an_erased_study_s_entries_lose_their_uids_and_their_batches_still_check(
    index: Index, tmp_path: Path
) -> None:
    from gateway.index.erasure import forget_trail_uids

    trail, ledger = _anchored_trail(index, tmp_path)  # 12 reads of study 1.2.3, anchored
    before = {e.entry.id: e.leaf.hash() for e in trail.entries(study="1.2.3")}
    changed = forget_trail_uids(index, pseudonym_key=KEY, studies=["1.2.3"], sop_uids=[])
    assert changed == 12
    assert index.query(
        "SELECT COUNT(*) FROM access_log WHERE study_instance_uid IS NOT NULL"
        " OR sop_instance_uid IS NOT NULL"
    ) == [(0,)]
    assert check_trail(trail, ledger) == (3, [])  # every root rebuilds: no trail_tampered
    after = trail.entries(study="1.2.3")  # still found by the study's key, UIDs gone
    assert {e.entry.id: e.leaf.hash() for e in after} == before
    assert all(proof_holds(entry, ledger) for entry in after)
    assert {e.entry.study_instance_uid for e in after} == {None}
    assert {e.entry.who for e in after} == {"alice", "bob"}  # the readers stay


def test_an_access_leaf_binds_every_field_and_never_equals_an_image_leaf() -> None:
    base = AccessLeaf(
        entry_id=7, at_ms=1_700_000_000_000, record_key=instance_key(KEY, "1.2"),
        study_key=NO_KEY, who_key=who_key(KEY, "token", "admin"), route="api:verify",
        verdict="intact", served=True,
    )  # fmt: skip
    changed = [
        AccessLeaf(**{**base.__dict__, name: value})
        for name, value in (
            ("entry_id", 8), ("at_ms", 1), ("record_key", NO_KEY), ("study_key", b"s" * 32),
            ("who_key", b"w" * 32), ("route", "rest"), ("verdict", "tampered"), ("served", False),
        )
    ]  # fmt: skip
    hashes = {leaf.hash() for leaf in [base, *changed]}
    assert len(hashes) == 1 + len(changed)
    # an image leaf hashes 0x00 and four 32-byte values; an access leaf's preimage starts
    # with its tag right after the prefix, so the two cannot be confused
    image = leaf_hash(record_key=base.record_key, patient_key=NO_KEY, digest=NO_KEY,
                      pixel_digest=NO_KEY)  # fmt: skip
    assert image not in hashes
