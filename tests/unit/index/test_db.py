"""The index on either engine: rows as persisted tasks, retries, parking, batches, counts,
the schema's steps, Storage Commitment's table and the backup.

:class:`IndexContract` is the engine-independent suite: here on a SQLite file, and in
tests/integration/test_index_postgres.py on a fresh PostgreSQL database per test.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import BackupFailed, IndexSchemaTooNew, IndexUnavailable
from gateway.index import schema
from gateway.index.backup import backup
from gateway.index.db import STAGES, Index, Landed, StageMove, error_class
from gateway.index.engine import DATABASE_ERRORS, INTEGRITY_ERRORS, connect
from gateway.ingest.commitment import CommitmentLog, Reference, Report

CT = "1.2.840.10008.5.1.4.1.1.2"
KEY, OTHER_KEY = b"k" * 32, b"o" * 32
A, B = b"\xaa" * 32, b"\xbb" * 32
HOUR = 3600.0


def received(index: Index, uid: str = "1.2.3", **values: Any) -> int:
    """A row as the receiver adds it, then moved on by ``values``."""
    row_id = index.add_received(
        entry_id=f"entry-{uid}-{time.monotonic_ns()}", sop_instance_uid=uid, sop_class_uid=CT,
        calling_aet="CT1", size=10,
    )  # fmt: skip
    if values:
        index.update(row_id, **values)
    return row_id


def fingerprinted(index: Index, digest: bytes, *, key: bytes = KEY) -> tuple[str, int, int | None]:
    """Claim a freshly received row as fingerprinted with ``digest`` under ``key``."""
    values = {"record_key": key, "digest": digest}
    return index.claim_fingerprint(
        received(index), values, next_stage="seal", duplicate_stage="duplicate"
    )


def until(condition: Any) -> None:
    """Wait (at most 10 s) until ``condition()`` holds."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.001)


def at_version(location: Path | str, version: int) -> None:
    """A database as an older gateway left it: the first ``version`` steps, and one row."""
    db = connect(location)
    schema.migrate(db, where=str(location), to=version)
    db.execute(
        "INSERT INTO instances (entry_id, sop_instance_uid, sop_class_uid, received_at, size,"
        " stage) VALUES ('e1', '1.2.3', ?, 0, 1, 'anchor')",
        (CT,),
    )
    db.close()


def set_version(location: Path | str, version: int) -> None:
    db = connect(location)
    db.execute("UPDATE schema_version SET version = ?", (version,))
    db.close()


class IndexContract:
    """What the index does on every engine; a subclass provides ``location`` (a fresh,
    empty database) and ``restore`` (a backup file -> a location to open it at)."""

    @pytest.fixture
    def location(self) -> Path | str:
        raise NotImplementedError

    @pytest.fixture
    def restore(self) -> Any:
        raise NotImplementedError

    @pytest.fixture
    def index(self, location: Path | str) -> Iterator[Index]:
        index = Index(location)
        yield index
        index.close()

    # --- the console's chart (part 5 of #15) ------------------------------------------------------

    def test_activity_counts_received_and_anchored_rows_per_bucket(self, index: Index) -> None:
        base = 1_800_000_000  # a multiple of the 600 s bucket
        for received_at, anchored_at in ((base + 10, base + 20), (base + 599.9, base + 650),
                                         (base + 700, None), (base - 5, None)):  # fmt: skip
            index.update(received(index), received_at=received_at, anchored_at=anchored_at)
        assert index.activity(since=base, bucket_s=600) == [(base, 2, 1), (base + 600, 1, 1)]
        assert index.activity(since=base + 10_000, bucket_s=600) == []

    # --- the ack's insert: group commit (ack part of #14) ---------------------------------------------

    def _receive_together(self, index: Index, entries: list[str]) -> list[tuple[str, object]]:
        """``add_received`` of ``entries`` on threads of their own while the first commit is
        held: the first row is committed alone, the others line up and share one commit."""
        lock = index._ack_lock if index._ack is not None else index._lock
        results: list[tuple[str, object]] = []

        def receive(entry: str) -> None:
            try:
                row_id = index.add_received(
                    entry_id=entry, sop_instance_uid="1.2.3", sop_class_uid=CT,
                    calling_aet="CT1", size=10,
                )  # fmt: skip
                results.append((entry, row_id))
            except DATABASE_ERRORS as exc:
                results.append((entry, exc))

        threads = [threading.Thread(target=receive, args=(entry,)) for entry in entries]
        with lock:  # the first writer waits here, holding its turn
            threads[0].start()
            until(lambda: index._acks.writing)
            for thread in threads[1:]:
                thread.start()
            until(lambda: index._acks.waiting == len(entries) - 1)
        for thread in threads:
            thread.join(30)
        return results

    def test_rows_received_together_share_one_commit_and_each_has_its_own_id(
        self, index: Index
    ) -> None:
        entries = [f"together-{n}" for n in range(6)]
        ids = self._receive_together(index, entries)
        assert index._acks.writes == 2  # the first alone, then the five that lined up
        assert len({row_id for _, row_id in ids}) == 6
        for entry, row_id in ids:
            assert isinstance(row_id, int)
            row = index.get(row_id)
            assert (row.entry_id, row.stage) == (entry, "fingerprint")

    def test_a_refused_row_in_a_shared_commit_fails_only_its_own_ack(self, index: Index) -> None:
        # the same spool entry twice (entry_id is unique): one of the two is refused
        results = self._receive_together(index, ["first", "a", "twice", "b", "twice"])
        refused = [r for _, r in results if isinstance(r, Exception)]
        assert len(refused) == 1 and isinstance(refused[0], INTEGRITY_ERRORS)
        landed = sorted(index.get(r).entry_id for _, r in results if isinstance(r, int))
        assert landed == ["a", "b", "first", "twice"]

    # --- rows: received, updated, due ------------------------------------------------------------

    def test_a_received_row_waits_at_fingerprint_with_its_spool_hash(self, index: Index) -> None:
        row_id = index.add_received(
            entry_id="e1", sop_instance_uid="1.2.3", sop_class_uid=CT, calling_aet="CT1", size=42,
            spool_sha256=b"s" * 32,
        )  # fmt: skip
        row = index.get(row_id)
        assert (row.stage, row.attempts, row.strikes, row.size) == ("fingerprint", 0, 0, 42)
        assert row.spool_sha256 == b"s" * 32 and row.parked_stage is None
        assert index.has_entry("e1") and not index.has_entry("e2")
        assert [r.id for r in index.due()] == [row_id]
        with pytest.raises(INTEGRITY_ERRORS):  # one row per acknowledged entry
            index.add_received(
                entry_id="e1", sop_instance_uid="1.2.4", sop_class_uid=CT, calling_aet="CT1", size=1
            )

    def test_update_sets_only_columns_of_the_schema(self, index: Index) -> None:
        row_id = received(index)
        index.update(row_id, stage="seal", digest=A, modality="CT")
        row = index.get(row_id)
        assert (row.stage, row.digest, row.modality) == ("seal", A, "CT")
        with pytest.raises(KeyError, match="no_such_column"):
            index.update(row_id, no_such_column=1)

    def test_due_rows_are_those_with_work_whose_time_has_come_oldest_first(
        self, index: Index
    ) -> None:
        later = received(index, "1.1", stage="put", next_attempt_at=time.time() + HOUR)
        seal = received(index, "1.2", stage="seal")
        fingerprint = received(index, "1.3")
        for done in ("committed", "duplicate", "rejected", "conflict", "failed"):
            received(index, f"2.{done}", stage=done)
        assert [r.id for r in index.due()] == [seal, fingerprint]
        assert [r.id for r in index.due(now=time.time() + 2 * HOUR)] == [later, seal, fingerprint]
        assert [r.id for r in index.due(stages=("seal",))] == [seal]
        assert [r.id for r in index.due(limit=1)] == [seal]
        assert "committed" not in STAGES[:-1]  # due() looks at every stage but the last

    def test_a_failure_waits_its_retry_time_and_a_permanent_one_adds_a_strike(
        self, index: Index
    ) -> None:
        row_id = received(index, stage="anchor")
        index.fail(row_id, "anchor: ChainUnavailable: down", retry_in=HOUR)
        row = index.get(row_id)
        assert (row.attempts, row.strikes, row.last_error) == (
            1,
            0,
            "anchor: ChainUnavailable: down",
        )
        assert index.due() == [] and [r.id for r in index.due(now=row.next_attempt_at)] == [row_id]
        index.fail(row_id, "anchor: XrayNotRecorder: no", retry_in=HOUR, permanent=True)
        assert (index.get(row_id).attempts, index.get(row_id).strikes) == (2, 1)
        index.succeeded(row_id)
        assert index.get(row_id).strikes == 0

    def test_release_makes_a_stage_backlog_due_but_not_rows_failing_for_their_own_reason(
        self, index: Index
    ) -> None:
        waiting = received(index, "1.1", stage="put")
        struck = received(index, "1.2", stage="put")
        elsewhere = received(index, "1.3", stage="seal")
        for row_id in (waiting, struck, elsewhere):
            index.fail(row_id, "StoreUnavailable: down", retry_in=HOUR, permanent=row_id == struck)
        assert index.release("put") == 1
        assert [r.id for r in index.due()] == [waiting]
        assert index.release("put") == 0  # nothing left waiting there

    def test_a_parked_row_keeps_where_it_stopped_until_it_is_requeued(self, index: Index) -> None:
        first = received(index, "1.1", stage="anchor")
        second = received(index, "1.2", stage="forward")
        index.fail(first, "anchor: XrayNotRecorder: no", retry_in=HOUR, permanent=True)
        index.park(first, "anchor: XrayNotRecorder: no")
        index.park(first, "again")  # parking a parked row changes nothing
        index.park(second, "forward: PacsRejected: bad file")
        row = index.get(first)
        assert (row.stage, row.parked_stage, row.last_error) == (
            "failed", "anchor", "anchor: XrayNotRecorder: no",
        )  # fmt: skip
        assert (row.attempts, row.strikes) == (2, 2)
        assert index.due() == [] and [r.id for r in index.parked()] == [first, second]

        assert index.requeue([second + 100]) == []  # not a parked row: left alone
        assert index.requeue([second]) == [second]
        assert index.get(second).stage == "forward"
        assert index.requeue() == [first]
        row = index.get(first)
        assert (row.stage, row.parked_stage, row.attempts, row.strikes) == ("anchor", None, 0, 0)
        assert [r.id for r in index.due()] == [first, second]

    def test_a_row_parked_without_its_stage_is_requeued_from_the_start(self, index: Index) -> None:
        row_id = received(index, stage="failed")  # parked before parked_stage existed
        assert index.requeue() == [row_id]
        assert index.get(row_id).stage == "fingerprint"

    def test_a_transaction_that_raises_leaves_nothing_behind(self, index: Index) -> None:
        row_id = received(index)
        with pytest.raises(RuntimeError), index.transaction() as db:
            db.execute("UPDATE instances SET stage = 'seal' WHERE id = ?", (row_id,))
            raise RuntimeError("crash between two statements")
        assert index.get(row_id).stage == "fingerprint"

    # --- versions: the claim at fingerprint and the counted-versions rule ------------------------

    def test_the_claim_numbers_new_versions_and_spots_duplicates(self, index: Index) -> None:
        assert fingerprinted(index, A) == ("seal", 1, None)
        first = index.all()[-1].id
        assert fingerprinted(index, B) == ("seal", 2, None)
        assert fingerprinted(index, A) == ("duplicate", 0, first)
        assert fingerprinted(index, A, key=OTHER_KEY) == ("seal", 1, None)  # another record
        duplicate = index.all()[2]
        assert (duplicate.stage, duplicate.version, duplicate.digest) == ("duplicate", None, A)
        assert (duplicate.attempts, duplicate.next_attempt_at, duplicate.last_error) == (0, 0, None)

    def test_duplicates_and_rejected_rows_are_not_versions(self, index: Index) -> None:
        rejected = received(index, stage="rejected", record_key=KEY, digest=A, version=1)
        assert fingerprinted(index, A) == ("seal", 1, None)  # a rejected reception never counted
        assert fingerprinted(index, A)[0] == "duplicate"
        unclaimed = received(index, stage="fingerprint", record_key=KEY)  # no digest yet
        assert fingerprinted(index, B) == ("seal", 2, None)
        versions = index.versions_of(KEY)
        assert [r.stage for r in versions] == ["seal", "fingerprint", "seal"]
        assert rejected not in [r.id for r in versions]
        assert [r.id for r in index.versions_of(KEY, exclude=unclaimed)] == [
            versions[0].id, versions[2].id,
        ]  # fmt: skip
        # every row, duplicates and rejected included, by the other look-ups
        assert len(index.by_record_key(KEY)) == 5 and len(index.by_record(KEY, A)) == 3

    # --- a round of the pipeline: many rows' steps in one commit ---------------------------------

    def test_many_moves_and_fingerprints_are_decided_in_one_commit(self, index: Index) -> None:
        sealed, stored = received(index, "1.1"), received(index, "1.2", stage="put")
        first, copy, newer = received(index, "2.1"), received(index, "2.2"), received(index, "2.3")
        index.claim_due("w1", stages=("fingerprint", "put"), limit=10, lease_s=60)
        moves = [  # the copy before its original, as a round may list them
            StageMove(copy, "seal", {"record_key": KEY, "digest": A}, duplicate_stage="duplicate"),
            StageMove(sealed, "seal", {"record_key": OTHER_KEY, "digest": B},
                      duplicate_stage="duplicate"),
            StageMove(stored, "anchor", {"attempts": 0, "last_error": None}),
            StageMove(first, "seal", {"record_key": KEY, "digest": A}, duplicate_stage="duplicate"),
            StageMove(newer, "seal", {"record_key": KEY, "digest": B}, duplicate_stage="duplicate"),
        ]  # fmt: skip

        landed = index.advance_many(moves, release=("w1", [stored, copy]))

        assert landed == [
            Landed("duplicate", 0, first),  # the older row of the same bytes is the original
            Landed("seal", 1, None),
            Landed("anchor", 0, None),
            Landed("seal", 1, None),
            Landed("seal", 2, None),
        ]
        rows = {row.id: row for row in index.all()}
        assert [rows[i].stage for i in (sealed, stored, first, copy, newer)] == [
            "seal", "anchor", "seal", "duplicate", "seal",
        ]  # fmt: skip
        assert (rows[first].digest, rows[newer].version) == (A, 2)
        assert index.claim_counts() == {"w1": 3}  # the released two, dropped in the same commit

    def test_a_move_that_cannot_be_recorded_leaves_every_row_as_it_was(self, index: Index) -> None:
        one, two, three = (received(index, f"1.{n}") for n in (1, 2, 3))
        with pytest.raises(KeyError):  # a column the schema lacks: refused before the commit
            index.advance_many([StageMove(one, "seal", {}), StageMove(two, "seal", {"x": 1})])
        with pytest.raises(KeyError):  # the second fingerprint fails after the first is written
            index.advance_many([
                StageMove(one, "seal", {}),
                StageMove(two, "seal", {"record_key": KEY, "digest": A},
                          duplicate_stage="duplicate"),
                StageMove(three, "seal", {"record_key": KEY}, duplicate_stage="duplicate"),
            ])  # fmt: skip
        assert [row.stage for row in index.rows_of([three, one, two])] == ["fingerprint"] * 3
        assert [row.digest for row in index.rows_of([two])] == [None]

    def test_batched_rows_are_versions_with_a_batch_and_a_proof(self, index: Index) -> None:
        proven = received(index, "1.1", stage="committed", batch_id=7, proof=b"p")
        received(index, "1.2", stage="duplicate", batch_id=7, proof=b"p")
        received(index, "1.3", stage="committed", batch_id=7)  # no proof
        received(index, "1.4", stage="committed")
        assert [r.id for r in index.batched()] == [proven]

    def test_look_ups_by_uid_and_study(self, index: Index) -> None:
        one = received(index, "1.1", study_instance_uid="9.1")
        received(index, "1.2", study_instance_uid="9.2")
        again = received(index, "1.1", study_instance_uid="9.1")
        assert [r.id for r in index.by_uid("1.1")] == [one, again]
        assert [r.id for r in index.by_study("9.1")] == [one, again]
        assert index.by_uid("1.9") == [] and len(index.all()) == 3

    def test_anchored_rows_newest_block_first(self, index: Index) -> None:
        old = received(index, "1.1", stage="committed", tx_hash="0x1", block_number=5)
        new = received(index, "1.2", stage="forward", tx_hash="0x2", block_number=9)
        conflict = received(index, "1.3", stage="conflict", tx_hash="0x3", block_number=7)
        received(index, "1.4", stage="anchor", tx_hash="0x4", block_number=10)  # not past anchor
        received(index, "1.5", stage="committed")  # no transaction
        assert [r.id for r in index.anchored_newest_first(limit=10)] == [new, conflict, old]
        assert [r.id for r in index.anchored_newest_first(limit=1, offset=1)] == [conflict]

    # --- Merkle batches ---------------------------------------------------------------------------

    def test_a_row_is_in_one_open_batch_at_a_time(self, index: Index) -> None:
        ids = [received(index, f"1.{i}", stage="anchor") for i in range(4)]
        batch = index.open_batch(root=b"r" * 32, members=ids[:2])
        assert (batch.count, batch.members, batch.attempts) == (2, (ids[0], ids[1]), 0)
        assert [r.id for r in index.due_unbatched("anchor", limit=10)] == ids[2:]
        with pytest.raises(ValueError, match="already in an open batch"):
            index.open_batch(root=b"s" * 32, members=[ids[1], ids[2]])
        assert index.open_batches() == [batch] and index.batch_counts() == {"open": 1}

    def test_a_failed_batch_says_why_on_every_member_and_waits(self, index: Index) -> None:
        ids = [received(index, f"1.{i}", stage="anchor") for i in range(2)]
        transient = index.open_batch(root=b"t" * 32, members=ids[:1])
        permanent = index.open_batch(root=b"p" * 32, members=ids[1:])
        index.fail_batch(transient.id, "anchor: ChainUnavailable: down", retry_in=HOUR)
        index.fail_batch(permanent.id, "anchor: XrayNotRecorder: no", retry_in=HOUR, permanent=True)
        assert index.open_batches() == []  # neither is due
        assert [b.id for b in index.open_batches(due_only=False)] == [transient.id, permanent.id]
        assert [(r.attempts, r.strikes, r.last_error) for r in map(index.get, ids)] == [
            (1, 0, "anchor: ChainUnavailable: down"),
            (1, 1, "anchor: XrayNotRecorder: no"),
        ]
        assert index.release_batches() == 1  # only the batch without struck members
        (due,) = index.open_batches()
        assert (due.id, due.attempts, due.last_error) == (
            transient.id, 1, "anchor: ChainUnavailable: down",
        )  # fmt: skip

    def test_a_landed_batch_sets_its_rows_in_one_transaction_and_can_be_reopened(
        self, index: Index
    ) -> None:
        ids = [received(index, f"1.{i}", stage="anchor") for i in range(2)]
        batch = index.open_batch(root=b"r" * 32, members=ids)
        with pytest.raises(KeyError):
            index.close_batch(
                batch.id, batch_id=1, tx_hash="0xa", block_number=3,
                rows={ids[0]: {"stage": "forward"}, ids[1]: {"no_such_column": 1}},
            )  # fmt: skip
        assert index.get(ids[0]).stage == "anchor" and index.batch_counts() == {"open": 1}
        rows = {row_id: {"stage": "forward", "leaf_index": i} for i, row_id in enumerate(ids)}
        index.close_batch(batch.id, batch_id=1, tx_hash="0xa", block_number=3, rows=rows)
        assert index.batch_counts() == {"landed": 1} and index.open_batches(due_only=False) == []
        assert [(r.stage, r.leaf_index) for r in map(index.get, ids)] == [
            ("forward", 0),
            ("forward", 1),
        ]

        assert index.reopen_batches("0xother") == []
        (reopened,) = index.reopen_batches("0xa")  # the chain lost the transaction
        assert (reopened.id, reopened.members, reopened.attempts) == (batch.id, tuple(ids), 0)

    def test_an_abandoned_batch_parks_its_rows_which_can_join_a_new_batch(
        self, index: Index
    ) -> None:
        ids = [received(index, f"1.{i}", stage="anchor") for i in range(2)]
        batch = index.open_batch(root=b"r" * 32, members=ids)
        index.abandon_batch(batch.id, "anchor: XrayNotRecorder: no")
        assert index.batch_counts() == {} and index.open_batches(due_only=False) == []
        assert [(r.stage, r.parked_stage) for r in map(index.get, ids)] == [
            ("failed", "anchor")
        ] * 2
        assert index.requeue() == ids
        assert index.open_batch(root=b"r" * 32, members=ids).members == tuple(ids)

    # --- what `status` and /metrics count ---------------------------------------------------------

    def test_counts_of_stages_failures_and_parked_rows(self, index: Index) -> None:
        committed = received(index, "1.1", stage="committed")
        pending = received(index, "1.2", stage="put")
        failing = received(index, "1.3", stage="anchor")
        index.fail(failing, "anchor: ChainUnavailable: connection refused", retry_in=HOUR)
        index.fail(pending, "put: StoreUnavailable: 503", retry_in=2 * HOUR)
        parked = received(index, "1.4", stage="forward")
        index.park(parked, "forward: PacsRejected: bad")
        assert index.stage_counts() == {"committed": 1, "put": 1, "anchor": 1, "failed": 1}
        oldest = index.oldest_pending()
        assert oldest is not None and oldest.id == pending
        assert [r.id for r in index.failing()] == [pending, failing]  # latest retry first
        assert index.failure_counts() == {
            ("anchor", "ChainUnavailable"): 1, ("put", "StoreUnavailable"): 1,
        }  # fmt: skip
        assert index.parked_counts() == {("forward", "PacsRejected"): 1}
        assert committed not in [r.id for r in index.failing()]
        index.update(pending, stage="committed")
        index.update(failing, stage="committed")
        assert index.oldest_pending() is None and index.failing() == []

    def test_query_runs_a_statement_for_modules_with_their_own_table(self, index: Index) -> None:
        received(index, "1.1", stage="committed")
        assert index.query("SELECT COUNT(*) FROM instances WHERE stage = ?", ("committed",)) == [
            (1,)
        ]

    # --- the schema's steps -------------------------------------------------------------------

    def test_a_new_index_has_every_step(self, location: Path | str) -> None:
        index = Index(location)
        assert index.query("SELECT version FROM schema_version") == [(schema.LATEST,)]
        index.close()

    def test_an_older_schema_is_upgraded_when_opened_and_keeps_its_rows(
        self, location: Path | str
    ) -> None:
        at_version(location, 1)  # the first schema: no strikes, parked_stage, spool_sha256
        index = Index(location)
        (row,) = index.all()
        assert (row.stage, row.strikes, row.parked_stage, row.spool_sha256) == (
            "anchor", 0, None, None,
        )  # fmt: skip
        index.park(row.id, "anchor: ValueError: x")
        index.update(row.id, spool_sha256=b"s" * 32)
        row = index.get(row.id)
        assert (row.stage, row.parked_stage, row.strikes, row.spool_sha256) == (
            "failed", "anchor", 1, b"s" * 32,
        )  # fmt: skip
        assert CommitmentLog(index).counts() == {}  # step 5 made the commitments table
        assert index.query("SELECT version FROM schema_version") == [(schema.LATEST,)]
        index.close()
        again = Index(location)  # a second open finds nothing to do
        assert len(again.all()) == 1
        again.close()

    def test_an_older_schema_read_only_shows_the_added_columns_defaults(
        self, location: Path | str
    ) -> None:
        at_version(location, 1)
        readonly = Index(location, readonly=True)
        (row,) = readonly.all()
        assert (row.strikes, row.parked_stage, row.spool_sha256) == (0, None, None)
        assert readonly.parked() == []
        with pytest.raises(DATABASE_ERRORS):
            readonly.update(row.id, stage="seal")
        readonly.close()
        db = connect(location)  # and the database was left as it was
        assert schema.version(db) == 1 and "strikes" not in db.columns("instances")
        db.close()

    def test_a_schema_newer_than_the_code_is_refused(self, location: Path | str) -> None:
        received(index := Index(location))
        index.close()
        set_version(location, schema.LATEST + 1)
        for readonly in (False, True):
            with pytest.raises(IndexSchemaTooNew, match=f"schema version {schema.LATEST + 1}"):
                Index(location, readonly=readonly)
        db = connect(location)  # nothing was changed, nor downgraded
        assert schema.version(db) == schema.LATEST + 1
        db.close()

    def test_an_empty_database_is_not_an_index_read_only(self, location: Path | str) -> None:
        if isinstance(location, Path):
            sqlite3.connect(location).close()  # an empty file
        with pytest.raises(IndexUnavailable, match="no index"):
            Index(location, readonly=True)
        db = connect(location)  # and nothing was created in it
        assert db.columns("instances") == set() and db.columns("schema_version") == set()
        db.close()

    # --- Storage Commitment's table, in the same database -------------------------------------

    def test_commitment_requests_are_kept_and_reported(self, index: Index) -> None:
        log = CommitmentLog(index)
        refs = [Reference(CT, "1.2.3"), Reference(CT, "1.2.4")]
        first = log.add(transaction_uid="9.9", calling_aet="CT1", refs=refs, deadline=5.0, tls=True)
        second = log.add(transaction_uid="9.8", calling_aet="CT1", refs=refs[:1], deadline=5.0)
        request = log.get(first)
        assert (request.refs, request.state, request.tls) == (tuple(refs), "open", True)
        assert [r.id for r in log.due(time.time())] == [first, second]
        log.decided(first, Report("9.9", committed=tuple(refs), failed=()))
        log.failed_delivery(first, "peer down", retry_in=HOUR)
        assert [r.id for r in log.due(time.time())] == [second]
        assert [u.request for u in log.undelivered(10)] == [first]
        log.delivered(first)
        assert log.counts() == {"open": 1, "reported": 1}
        assert log.get(first).event_type == 1

    # --- backup --------------------------------------------------------------------------------

    def test_a_backup_is_a_copy_that_opens_as_an_index(
        self, index: Index, location: Path | str, restore: Any, tmp_path: Path
    ) -> None:
        kept = received(index, "1.1", stage="committed", digest=A)
        CommitmentLog(index).add(transaction_uid="9.9", calling_aet="CT1", refs=[], deadline=1.0)
        dest = tmp_path / "copy.backup"
        assert backup(location, dest) == dest.stat().st_size > 0
        received(index, "1.2")  # after the copy: not in it
        with pytest.raises(BackupFailed, match="exists"):
            backup(location, dest)
        copy = Index(restore(dest))
        assert [(r.id, r.stage, r.digest) for r in copy.all()] == [(kept, "committed", A)]
        assert CommitmentLog(copy).counts() == {"open": 1}
        copy.close()
        assert sorted(p.name for p in tmp_path.iterdir() if "copy" in p.name) == ["copy.backup"]


class TestSqliteIndex(IndexContract):
    @pytest.fixture
    def location(self, tmp_path: Path) -> Path:
        return tmp_path / "index.sqlite"

    @pytest.fixture
    def restore(self) -> Any:
        return lambda dest: dest  # VACUUM INTO wrote a SQLite file


@pytest.mark.parametrize(
    ("last_error", "name"),
    [
        ("anchor: ChainUnavailable: connection refused", "ChainUnavailable"),
        ("ChainUnavailable", "ChainUnavailable"),
        ("put: store said no", "unknown"),
        (None, "unknown"),
    ],
)
def test_error_class_names_the_exception_in_a_last_error(last_error: str | None, name: str) -> None:
    assert error_class(last_error) == name


# --- SQLite only: an index file written before schema_version existed ------------------------


def legacy_index(path: Path, steps: int) -> None:
    """An index as a gateway before versioned migrations left it: the tables of the first
    ``steps`` steps, no ``schema_version`` table, one row."""
    db = sqlite3.connect(path)
    for step in schema.STEPS[:steps]:
        if isinstance(step, schema.Create):
            db.executescript(step.sql)
        elif isinstance(step, schema.PostgresOnly):
            continue  # nothing on SQLite
        else:
            db.execute(f"ALTER TABLE {step.table} ADD COLUMN {step.name} {step.declaration}")
    db.execute(
        "INSERT INTO instances (entry_id, sop_instance_uid, sop_class_uid, received_at, size,"
        " stage) VALUES ('e1', '1.2.3', ?, 0, 1, 'anchor')",
        (CT,),
    )
    db.commit()
    db.close()


@pytest.mark.parametrize("steps", [1, schema.LATEST])
def test_an_index_from_before_versioned_migrations_is_upgraded(tmp_path: Path, steps: int) -> None:
    path = tmp_path / "index.sqlite"
    legacy_index(path, steps)  # 1: the first schema; LATEST: what the last release made
    index = Index(path)
    (row,) = index.all()
    index.park(row.id, "anchor: ValueError: x")
    assert (index.get(row.id).parked_stage, index.get(row.id).strikes) == ("anchor", 1)
    assert index.query("SELECT version FROM schema_version") == [(schema.LATEST,)]
    assert CommitmentLog(index).counts() == {}
    index.close()


def test_an_index_from_before_versioned_migrations_read_only_is_left_as_it_was(
    tmp_path: Path,
) -> None:
    path = tmp_path / "index.sqlite"
    legacy_index(path, 1)
    readonly = Index(path, readonly=True)
    (row,) = readonly.all()
    assert (row.strikes, row.parked_stage, row.spool_sha256) == (0, None, None)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        readonly.update(row.id, stage="seal")
    readonly.close()
    db = sqlite3.connect(path)
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert "schema_version" not in tables and "commitments" not in tables


def test_a_missing_index_is_not_created_read_only(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Index(tmp_path / "absent.sqlite", readonly=True)
    assert not (tmp_path / "absent.sqlite").exists()


def test_a_backup_of_a_missing_index_fails_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(BackupFailed, match="no index"):
        backup(tmp_path / "absent.sqlite", tmp_path / "copy")
    assert list(tmp_path.iterdir()) == []
