"""Claims on rows: which worker process works a row, for how long, and what a crash leaves."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.index.db import Index
from tests.unit.index.test_db import received

POOLED = ("fingerprint", "seal", "put", "forward")


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    index = Index(tmp_path / "index.sqlite")
    yield index
    index.close()


def test_a_claimed_row_is_not_claimed_again_until_released(index: Index) -> None:
    first, second = received(index, "1.1"), received(index, "1.2")
    assert [r.id for r in index.claim_due("w1", stages=POOLED, limit=1, lease_s=30)] == [first]
    assert [r.id for r in index.claim_due("w2", stages=POOLED, limit=5, lease_s=30)] == [second]
    assert index.claim_due("w1", stages=POOLED, limit=5, lease_s=30) == []
    index.unclaim("w1", [first])
    assert [r.id for r in index.claim_due("w2", stages=POOLED, limit=5, lease_s=30)] == [first]
    assert index.claim_counts() == {"w2": 2}


def test_a_dead_workers_claims_return_when_the_lease_runs_out(index: Index) -> None:
    row = received(index)
    now = time.time()
    index.claim_due("dead", stages=POOLED, limit=5, lease_s=30, now=now)
    assert index.claim_due("w2", stages=POOLED, limit=5, lease_s=30, now=now + 29) == []
    taken = index.claim_due("w2", stages=POOLED, limit=5, lease_s=30, now=now + 31)
    assert [r.id for r in taken] == [row]


def test_a_worker_started_again_under_its_id_frees_its_claims_at_once(index: Index) -> None:
    row = received(index)
    index.claim_due("w1", stages=POOLED, limit=5, lease_s=3600)
    assert index.release_claims("w1") == 1
    assert [r.id for r in index.claim_due("w2", stages=POOLED, limit=5, lease_s=30)] == [row]


def test_renewing_keeps_a_live_workers_rows_from_others(index: Index) -> None:
    received(index)
    index.claim_due("w1", stages=POOLED, limit=5, lease_s=1)
    assert index.renew_claims("w1", lease_s=3600) == 1
    later = time.time() + 60
    assert index.claim_due("w2", stages=POOLED, limit=5, lease_s=30, now=later) == []


def test_unclaim_leaves_another_workers_claim_alone(index: Index) -> None:
    row = received(index)
    index.claim_due("w1", stages=POOLED, limit=5, lease_s=30)
    index.unclaim("w2", [row])
    assert index.claim_counts() == {"w1": 1}


def test_only_due_rows_at_the_given_stages_are_claimed(index: Index) -> None:
    received(index, "1.1", stage="anchor")
    received(index, "1.2", next_attempt_at=time.time() + 3600)
    received(index, "1.3", stage="committed")
    assert index.claim_due("w1", stages=POOLED, limit=5, lease_s=30) == []


def test_one_batch_thread_holds_the_rows_it_may_cut_a_batch_from(index: Index) -> None:
    rows = [received(index, f"1.{n}", stage="anchor") for n in range(3)]
    mine = index.claim_unbatched("w1", "anchor", limit=10, lease_s=30)
    assert [r.id for r in mine] == rows
    assert index.claim_unbatched("w2", "anchor", limit=10, lease_s=30) == []
    later = received(index, "1.9", stage="anchor")  # w1 looks again: its rows and the new one
    again = index.claim_unbatched("w1", "anchor", limit=10, lease_s=30)
    assert [r.id for r in again] == [*rows, later]


def test_an_open_batch_is_landed_by_one_worker_at_a_time(index: Index) -> None:
    rows = [received(index, f"1.{n}", stage="anchor") for n in range(2)]
    batch = index.open_batch(root=b"r" * 32, members=rows)
    assert index.claim_unbatched("w2", "anchor", limit=10, lease_s=30) == []  # in a batch
    assert index.claim_batch("w1", batch.id, lease_s=30)
    assert not index.claim_batch("w2", batch.id, lease_s=30)
    assert index.claim_batch("w1", batch.id, lease_s=30)  # its own: renewed
    index.unclaim("w1", batch.members)
    assert index.claim_batch("w2", batch.id, lease_s=30)


def _claim_all(path: str, worker: str, out: multiprocessing.Queue[list[int]]) -> None:
    index = Index(Path(path))
    taken: list[int] = []
    while rows := index.claim_due(worker, stages=POOLED, limit=3, lease_s=60):
        taken.extend(r.id for r in rows)
    index.close()
    out.put(taken)


def test_processes_claiming_at_once_never_take_the_same_row(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    index = Index(path)
    rows = {received(index, f"1.{n}") for n in range(300)}
    index.close()
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[list[int]] = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(str(path), f"w{n}", out)) for n in range(3)]
    for proc in procs:
        proc.start()
    taken = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(60)
    every = [row for part in taken for row in part]
    assert sorted(every) == sorted(rows)  # each row once: none twice, none left
