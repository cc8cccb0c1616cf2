"""Retries on a real index: transient failures retry with a cap, permanent ones park the row."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.errors import ChainUnavailable, PacsRejected, StoreUnavailable, XrayNotRecorder
from gateway.index.db import Index, Row
from gateway.ingest.pipeline import (
    PERMANENT_ATTEMPTS,
    TRANSIENT_CAP_S,
    MustWait,
    Pipeline,
    is_transient,
)

CT = "1.2.840.10008.5.1.4.1.1.2"


class Scripted(Pipeline):
    """The real retry logic around an anchor stage whose outcome the test decides per row."""

    def __init__(self, index: Index, tmp: Path) -> None:
        unused = cast(Any, None)
        super().__init__(
            index=index, spool=unused, store=unused, keyring=unused, pseudonym_key=b"k" * 32,
            anchorer=unused, forwarder=unused, sealed_dir=tmp / "sealed", workers=1,
        )  # fmt: skip
        self.outcome: dict[int, Exception | None] = {}

    def _stage_anchor(self, row: Row) -> None:
        error = self.outcome.get(row.id)
        if error is not None:
            raise error
        self.index.update(row.id, stage="forward", attempts=0, last_error=None)

    def _stage_forward(self, row: Row) -> None:
        raise MustWait("stop here")


@pytest.fixture
def index(tmp_path: Path) -> Index:
    return Index(tmp_path / "index.sqlite")


def at_anchor(index: Index, n: int) -> int:
    row_id = index.add_received(
        entry_id=f"{n:02d}" + "cd" * 15, sop_instance_uid=f"1.2.3.{n}", sop_class_uid=CT,
        calling_aet="CT1", size=10,
    )  # fmt: skip
    index.update(row_id, stage="anchor", record_key=bytes([n]) * 32)
    return row_id


def test_what_counts_as_transient() -> None:
    for exc in (StoreUnavailable("x"), ChainUnavailable("x"), MustWait("x"), TimeoutError(),
                OSError(28, "No space left on device")):  # fmt: skip
        assert is_transient(exc), exc
    for exc in (PacsRejected("x"), XrayNotRecorder(), ValueError("bug"), FileNotFoundError()):
        assert not is_transient(exc), exc


def test_a_permanent_failure_parks_the_row_after_bounded_attempts(
    index: Index, tmp_path: Path
) -> None:
    pipeline = Scripted(index, tmp_path)
    row_id = at_anchor(index, 1)
    pipeline.outcome[row_id] = XrayNotRecorder()
    for attempt in range(1, PERMANENT_ATTEMPTS):
        assert pipeline.process(row_id) == "anchor"
        row = index.get(row_id)
        assert (row.stage, row.strikes, row.attempts) == ("anchor", attempt, attempt)
    pipeline.process(row_id)
    row = index.get(row_id)
    assert (row.stage, row.parked_stage) == ("failed", "anchor")
    assert row.last_error is not None and "XrayNotRecorder" in row.last_error
    assert not index.due() and index.parked_counts() == {("anchor", "XrayNotRecorder"): 1}
    assert index.oldest_pending() is None and not index.failing()
    assert pipeline.process(row_id) == "failed"  # no stage runs for a parked row

    pipeline.outcome[row_id] = None
    assert index.requeue([row_id + 1]) == []
    assert index.requeue([row_id]) == [row_id]
    row = index.get(row_id)
    assert (row.stage, row.parked_stage, row.attempts, row.strikes) == ("anchor", None, 0, 0)
    assert [r.id for r in index.due()] == [row_id]
    assert pipeline.process(row_id) == "forward"


def test_transient_failures_are_retried_for_as_long_as_it_takes(
    index: Index, tmp_path: Path
) -> None:
    pipeline = Scripted(index, tmp_path)
    row_id = at_anchor(index, 2)
    pipeline.outcome[row_id] = ChainUnavailable("connection refused")
    for _ in range(3 * PERMANENT_ATTEMPTS):
        pipeline.process(row_id)
    row = index.get(row_id)
    assert (row.stage, row.strikes, row.attempts) == ("anchor", 0, 3 * PERMANENT_ATTEMPTS)
    assert row.next_attempt_at - time.time() <= TRANSIENT_CAP_S
    assert [r.id for r in index.failing()] == [row_id]


def test_a_success_makes_the_stage_backlog_due_at_once(index: Index, tmp_path: Path) -> None:
    pipeline = Scripted(index, tmp_path)
    first, waiting, broken = at_anchor(index, 3), at_anchor(index, 4), at_anchor(index, 5)
    pipeline.outcome = {
        first: ChainUnavailable("down"),
        waiting: ChainUnavailable("down"),
        broken: PacsRejected("refused"),
    }
    for _ in range(8):
        for row_id in (first, waiting, broken):
            if index.get(row_id).stage == "anchor":
                pipeline.process(row_id)
    assert index.get(waiting).next_attempt_at > time.time() + 10
    pipeline.outcome[first] = None  # the chain is back
    assert pipeline.process(first) == "forward"
    assert index.get(waiting).next_attempt_at == 0
    assert [r.id for r in index.due()] == [waiting]
    assert index.get(broken).stage == "failed"  # not woken: its reason is its own


def test_a_success_clears_the_strikes(index: Index, tmp_path: Path) -> None:
    pipeline = Scripted(index, tmp_path)
    row_id = at_anchor(index, 6)
    pipeline.outcome[row_id] = PacsRejected("flaky")
    for _ in range(PERMANENT_ATTEMPTS - 1):
        pipeline.process(row_id)
    pipeline.outcome[row_id] = None
    pipeline.process(row_id)
    row = index.get(row_id)
    assert (row.stage, row.strikes) == ("forward", 0)


def test_an_index_from_before_parking_is_upgraded(tmp_path: Path) -> None:
    from tests.unit.index.test_db import legacy_index

    path = tmp_path / "index.sqlite"
    legacy_index(path, 1)  # before strikes and parked_stage
    readonly = Index(path, readonly=True)  # `status` on an index not yet upgraded
    assert readonly.all()[0].strikes == 0 and readonly.parked() == []
    readonly.close()
    index = Index(path)
    assert index.all()[0].parked_stage is None
    index.park(index.all()[0].id, "anchor: ValueError: x")
    assert index.parked()[0].parked_stage == "anchor"
