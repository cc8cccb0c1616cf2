"""Claims on rows: which worker process works a row, for how long, and what a crash leaves.

:class:`ClaimsContract` holds on every engine: SQLite here, PostgreSQL in
tests/integration/test_index_postgres.py (where claimers pass each other's row locks
instead of taking turns), including claimers in several processes at once.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.index.db import Index
from gateway.index.engine import connect
from tests.unit.index.test_db import CT, received

POOLED = ("fingerprint", "seal", "put", "forward")
PROCESSES = 3


def _claim_all(location: str, worker: str, start: Any, out: Any) -> None:
    """A worker process: claim due rows, a few at a time, until none is left."""
    index = Index(location)
    start.wait()
    taken: list[int] = []
    while rows := index.claim_due(worker, stages=POOLED, limit=3, lease_s=600):
        taken.extend(r.id for r in rows)
    index.close()
    out.put(taken)


def _cut_batches(location: str, worker: str, start: Any, out: Any) -> None:
    """A worker's batch thread: claim unbatched rows, cut a batch from them, until none is left."""
    index = Index(location)
    start.wait()
    batches: list[list[int]] = []
    while rows := index.claim_unbatched(worker, "anchor", limit=7, lease_s=600):
        members = [r.id for r in rows]
        root = hashlib.sha256(repr(members).encode()).digest()
        index.open_batch(root=root, members=members)  # raises if a member is in an open batch
        batches.append(members)
    index.close()
    out.put(batches)


def _land_batches(location: str, worker: str, start: Any, out: Any, batches: list[int]) -> None:
    """A worker landing open batches: which of ``batches`` it won, all starting at once."""
    index = Index(location)
    start.wait()
    won = [batch for batch in batches if index.claim_batch(worker, batch, lease_s=600)]
    index.close()
    out.put(won)


def _in_processes(target: Any, location: Path | str, *extra: Any) -> list[Any]:
    """Run ``target(location, worker, barrier, queue, *extra)`` in :data:`PROCESSES`
    processes, each passing the barrier once its index is open; what each put."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Barrier(PROCESSES)
    procs = [
        ctx.Process(target=target, args=(str(location), f"w{n}", start, out, *extra))
        for n in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    try:
        return [out.get(timeout=300) for _ in procs]
    finally:
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0] * PROCESSES


class ClaimsContract:
    """What claims do on every engine; a subclass provides ``location`` (a fresh database)."""

    @pytest.fixture
    def location(self) -> Path | str:
        raise NotImplementedError

    @pytest.fixture
    def index(self, location: Path | str) -> Iterator[Index]:
        index = Index(location)
        yield index
        index.close()

    def test_a_claimed_row_is_not_claimed_again_until_released(self, index: Index) -> None:
        first, second = received(index, "1.1"), received(index, "1.2")
        assert [r.id for r in index.claim_due("w1", stages=POOLED, limit=1, lease_s=30)] == [first]
        assert [r.id for r in index.claim_due("w2", stages=POOLED, limit=5, lease_s=30)] == [second]
        assert index.claim_due("w1", stages=POOLED, limit=5, lease_s=30) == []
        index.unclaim("w1", [first])
        assert [r.id for r in index.claim_due("w2", stages=POOLED, limit=5, lease_s=30)] == [first]
        assert index.claim_counts() == {"w2": 2}

    def test_a_dead_workers_claims_return_when_the_lease_runs_out(self, index: Index) -> None:
        row = received(index)
        now = time.time()
        index.claim_due("dead", stages=POOLED, limit=5, lease_s=30, now=now)
        assert index.claim_due("w2", stages=POOLED, limit=5, lease_s=30, now=now + 29) == []
        taken = index.claim_due("w2", stages=POOLED, limit=5, lease_s=30, now=now + 31)
        assert [r.id for r in taken] == [row]

    def test_a_worker_started_again_under_its_id_frees_its_claims_at_once(
        self, index: Index
    ) -> None:
        row = received(index)
        index.claim_due("w1", stages=POOLED, limit=5, lease_s=3600)
        assert index.release_claims("w1") == 1
        assert [r.id for r in index.claim_due("w2", stages=POOLED, limit=5, lease_s=30)] == [row]

    def test_renewing_keeps_a_live_workers_rows_from_others(self, index: Index) -> None:
        received(index)
        index.claim_due("w1", stages=POOLED, limit=5, lease_s=1)
        assert index.renew_claims("w1", lease_s=3600) == 1
        later = time.time() + 60
        assert index.claim_due("w2", stages=POOLED, limit=5, lease_s=30, now=later) == []

    def test_unclaim_leaves_another_workers_claim_alone(self, index: Index) -> None:
        row = received(index)
        index.claim_due("w1", stages=POOLED, limit=5, lease_s=30)
        index.unclaim("w2", [row])
        assert index.claim_counts() == {"w1": 1}

    def test_only_due_rows_at_the_given_stages_are_claimed(self, index: Index) -> None:
        received(index, "1.1", stage="anchor")
        received(index, "1.2", next_attempt_at=time.time() + 3600)
        received(index, "1.3", stage="committed")
        assert index.claim_due("w1", stages=POOLED, limit=5, lease_s=30) == []

    def test_another_nodes_rows_are_claimed_only_at_the_stages_any_node_may_work(
        self, index: Index
    ) -> None:
        theirs = [
            index.add_received(
                entry_id=f"b-{n}",
                sop_instance_uid=f"1.{n}",
                sop_class_uid=CT,
                calling_aet="CT1",
                size=10,
                received_by="node-b",
            )
            for n in range(2)
        ]
        index.update(theirs[1], stage="anchor")
        stages = (*POOLED, "anchor")
        claim = index.claim_due
        assert claim("node-a/up-1", stages=stages, limit=5, lease_s=30) == []
        taken = claim("node-a/up-1", stages=stages, anywhere=("anchor",), limit=5, lease_s=30)
        assert [r.id for r in taken] == [theirs[1]]
        assert [r.id for r in claim("node-b/up-1", stages=stages, limit=5, lease_s=30)] == [
            theirs[0]
        ]

    def test_one_batch_thread_holds_the_rows_it_may_cut_a_batch_from(self, index: Index) -> None:
        rows = [received(index, f"1.{n}", stage="anchor") for n in range(3)]
        mine = index.claim_unbatched("w1", "anchor", limit=10, lease_s=30)
        assert [r.id for r in mine] == rows
        assert index.claim_unbatched("w2", "anchor", limit=10, lease_s=30) == []
        later = received(index, "1.9", stage="anchor")  # w1 looks again: its rows and the new one
        again = index.claim_unbatched("w1", "anchor", limit=10, lease_s=30)
        assert [r.id for r in again] == [*rows, later]

    def test_an_open_batch_is_landed_by_one_worker_at_a_time(self, index: Index) -> None:
        rows = [received(index, f"1.{n}", stage="anchor") for n in range(2)]
        batch = index.open_batch(root=b"r" * 32, members=rows)
        assert index.claim_unbatched("w2", "anchor", limit=10, lease_s=30) == []  # in a batch
        assert index.claim_batch("w1", batch.id, lease_s=30)
        assert not index.claim_batch("w2", batch.id, lease_s=30)
        assert index.claim_batch("w1", batch.id, lease_s=30)  # its own: renewed
        index.unclaim("w1", batch.members)
        assert index.claim_batch("w2", batch.id, lease_s=30)

    # --- claimers in several processes at once ---------------------------------------------

    def test_processes_claiming_at_once_never_take_the_same_row(
        self, index: Index, location: Path | str
    ) -> None:
        rows = {received(index, f"1.{n}") for n in range(300)}
        taken = _in_processes(_claim_all, location)
        every = [row for part in taken for row in part]
        assert sorted(every) == sorted(rows)  # each row once: none twice, none left

    def test_processes_cutting_batches_at_once_never_cut_a_row_twice(
        self, index: Index, location: Path | str
    ) -> None:
        rows = {received(index, f"1.{n}", stage="anchor") for n in range(150)}
        cut = [batch for part in _in_processes(_cut_batches, location) for batch in part]
        every = [row for batch in cut for row in batch]
        assert sorted(every) == sorted(rows)  # each row in one batch: none twice, none left
        in_index = index.query("SELECT row_id FROM batch_members ORDER BY row_id")
        assert [r for (r,) in in_index] == sorted(rows)

    def test_processes_landing_the_same_batches_at_once_land_each_once(
        self, index: Index, location: Path | str
    ) -> None:
        batches = []
        for b in range(20):
            members = [received(index, f"1.{b}.{n}", stage="anchor") for n in range(4)]
            batches.append(index.open_batch(root=bytes([b]) * 32, members=members).id)
        won = _in_processes(_land_batches, location, batches)
        assert sorted(batch for part in won for batch in part) == batches  # one winner each


class TestSqliteClaims(ClaimsContract):
    @pytest.fixture
    def location(self, tmp_path: Path) -> Path:
        return tmp_path / "index.sqlite"


def test_sqlite_claims_need_no_row_lock_clause(tmp_path: Path) -> None:
    """SQLite has no ``FOR UPDATE``: its ``BEGIN IMMEDIATE`` makes the claimer the one writer."""
    db = connect(tmp_path / "index.sqlite")
    try:
        assert db.row_lock("skip") == db.row_lock("nowait") == ""
    finally:
        db.close()
