"""The scheduler on its real index, through the stand-ins: the stage table, retries, parking."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import dicom_fixtures
from gateway.errors import ChainUnavailable, PacsRejected, StoreUnavailable, XrayNotRecorder
from gateway.index.db import DONE_STAGES, STAGES, Index
from gateway.ingest import pipeline as pipeline_module
from gateway.ingest import stages
from gateway.ingest.pipeline import (
    ANCHOR,
    FORWARD_HOLD_S,
    PERMANENT_ATTEMPTS,
    SENDING_S,
    STAGE_TABLE,
    TRANSIENT_CAP_S,
)
from tests.unit.ingest.conftest import Line


def test_the_stage_table_runs_the_index_stages_in_order() -> None:
    names = [stage.name for stage in STAGE_TABLE]
    assert names == list(STAGES[:-1])
    assert [stage.next for stage in STAGE_TABLE] == list(STAGES[1:])
    for stage in STAGE_TABLE:
        assert stage.aside is None or stage.aside in DONE_STAGES, stage
        assert stage.back is None or names.index(stage.back) < names.index(stage.name), stage
    assert [stage.name for stage in STAGE_TABLE if stage.batched] == [ANCHOR.name] == ["anchor"]


def test_an_image_runs_every_stage_to_committed(line: Line, two_images: list[bytes]) -> None:
    row_id = line.acked(two_images[0])

    assert line.pipeline.process(row_id) == "committed"

    row = line.index.get(row_id)
    assert row.object_name is not None and line.store.exists(row.object_name)
    assert row.record_key is not None and row.digest is not None
    assert [item.digest for item in line.anchorer.records[row.record_key]] == [row.digest]
    assert row.tx_hash is not None and line.anchorer.confirmed(row.tx_hash)
    assert row.anchored_at is not None and row.received_at <= row.anchored_at <= time.time()
    assert line.forwarder.stored == {row.digest: two_images[0]}
    assert not line.spool.path_of(row.entry_id).exists()
    assert list(line.sealed_dir.iterdir()) == []
    assert (row.attempts, row.strikes, row.last_error) == (0, 0, None)


def test_a_permanent_failure_parks_the_row_after_bounded_attempts(line: Line) -> None:
    row_id = line.at_anchor(1)
    record_key = line.index.get(row_id).record_key
    assert record_key is not None
    line.anchorer.failures[record_key] = XrayNotRecorder()
    for attempt in range(1, PERMANENT_ATTEMPTS):
        assert line.pipeline.process(row_id) == "anchor"
        row = line.index.get(row_id)
        assert (row.stage, row.strikes, row.attempts) == ("anchor", attempt, attempt)
    line.pipeline.process(row_id)
    row = line.index.get(row_id)
    assert (row.stage, row.parked_stage) == ("failed", "anchor")
    assert row.last_error is not None and "XrayNotRecorder" in row.last_error
    assert not line.index.due() and line.index.parked_counts() == {("anchor", "XrayNotRecorder"): 1}
    assert line.index.oldest_pending() is None and not line.index.failing()
    assert line.pipeline.process(row_id) == "failed"  # no stage runs for a parked row
    assert line.spool.path_of(row.entry_id).exists()  # kept for `xray-gateway retry`

    del line.anchorer.failures[record_key]
    assert line.index.requeue([row_id + 1]) == []
    assert line.index.requeue([row_id]) == [row_id]
    row = line.index.get(row_id)
    assert (row.stage, row.parked_stage, row.attempts, row.strikes) == ("anchor", None, 0, 0)
    assert [r.id for r in line.index.due()] == [row_id]
    assert line.pipeline.process(row_id) == "committed"


def test_transient_failures_are_retried_for_as_long_as_it_takes(line: Line) -> None:
    row_id = line.at_anchor(2)
    line.anchorer.failures[bytes([2]) * 32] = ChainUnavailable("connection refused")
    for _ in range(3 * PERMANENT_ATTEMPTS):
        line.pipeline.process(row_id)
    row = line.index.get(row_id)
    assert (row.stage, row.strikes, row.attempts) == ("anchor", 0, 3 * PERMANENT_ATTEMPTS)
    # the backoff doubled up to its cap: 0.5 s * 2**14 is far past it
    assert TRANSIENT_CAP_S - 5 < row.next_attempt_at - time.time() <= TRANSIENT_CAP_S
    assert [r.id for r in line.index.failing()] == [row_id]

    del line.anchorer.failures[bytes([2]) * 32]
    assert line.pipeline.process(row_id) == "committed"


def test_a_store_outage_holds_rows_at_put_until_it_is_back(
    line: Line, two_images: list[bytes]
) -> None:
    row_id = line.acked(two_images[0])
    line.store.outage = StoreUnavailable("connection refused")
    for _ in range(PERMANENT_ATTEMPTS + 1):
        assert line.pipeline.process(row_id) == "put"
    row = line.index.get(row_id)
    assert (row.strikes, row.attempts) == (0, PERMANENT_ATTEMPTS + 1)
    assert row.last_error is not None and row.last_error.startswith("put: StoreUnavailable")

    line.store.outage = None
    assert line.pipeline.process(row_id) == "committed"


def test_a_success_makes_the_stage_backlog_due_at_once(line: Line) -> None:
    first, waiting, broken = line.at_anchor(3), line.at_anchor(4), line.at_anchor(5)
    down = ChainUnavailable("down")
    line.anchorer.failures = {bytes([3]) * 32: down, bytes([4]) * 32: down}
    line.anchorer.failures[bytes([5]) * 32] = PacsRejected("refused")
    for _ in range(8):
        for row_id in (first, waiting, broken):
            if line.index.get(row_id).stage == "anchor":
                line.pipeline.process(row_id)
    assert line.index.get(waiting).next_attempt_at > time.time() + 10
    del line.anchorer.failures[bytes([3]) * 32]  # the chain is back
    assert line.pipeline.process(first) == "committed"
    assert line.index.get(waiting).next_attempt_at == 0
    assert [r.id for r in line.index.due()] == [waiting]
    assert line.index.get(broken).stage == "failed"  # not woken: its reason is its own


def test_a_success_clears_the_strikes(line: Line) -> None:
    row_id = line.at_anchor(6)
    line.anchorer.failures[bytes([6]) * 32] = PacsRejected("flaky")
    for _ in range(PERMANENT_ATTEMPTS - 1):
        line.pipeline.process(row_id)
    assert line.index.get(row_id).strikes == PERMANENT_ATTEMPTS - 1
    del line.anchorer.failures[bytes([6]) * 32]
    line.forwarder.failure = PacsRejected("refused once")
    line.pipeline.process(row_id)
    row = line.index.get(row_id)
    assert (row.stage, row.strikes) == ("forward", 1)  # counted again from zero at forward


def test_a_newer_version_waits_for_the_older_one_without_a_strike(
    line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    key = b"v" * 32
    older, newer = line.at_anchor(7, record_key=key), line.at_anchor(8, record_key=key)
    line.index.update(older, stage="put")  # not anchored yet
    with caplog.at_level(logging.INFO, logger="gateway.ingest.pipeline"):
        assert line.pipeline.process(newer) == "anchor"
    row = line.index.get(newer)
    assert (row.strikes, row.attempts) == (0, 1)
    assert row.last_error is not None and f"waiting for row {older}" in row.last_error
    assert [r.levelno for r in caplog.records] == [logging.INFO]  # a wait, not an outage

    line.index.update(older, stage="anchor")
    assert line.pipeline.process(older) == "committed"
    assert line.pipeline.process(newer) == "committed"
    assert len(line.anchorer.records[key]) == 2


def test_a_record_the_chain_lost_is_anchored_again_where_it_stands(line: Line) -> None:
    row_id = line.at_anchor(9)
    assert line.pipeline.process(row_id) == "committed"
    lost = line.index.get(row_id).tx_hash
    assert lost is not None
    line.anchorer.lose(lost)

    assert line.pipeline.reconcile_anchors() == 1

    row = line.index.get(row_id)
    assert row.stage == "committed" and row.tx_hash not in (None, lost)
    assert row.tx_hash is not None and line.anchorer.confirmed(row.tx_hash)
    assert line.pipeline.reconcile_anchors() == 0


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


def test_a_round_runs_many_rows_steps_and_records_them_in_one_commit(
    line: Line, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = dicom_fixtures.ct_series(line.sealed_dir.parent / "ct8", 8, rows=16, cols=16)
    ids = [line.acked(path.read_bytes(), uid=f"1.2.3.{n}") for n, path in enumerate(images)]
    commits: list[int] = []
    advance_many = line.index.advance_many

    def counted(moves: Any, **kw: Any) -> Any:
        commits.append(len(moves))
        return advance_many(moves, **kw)

    monkeypatch.setattr(line.index, "advance_many", counted)
    pipeline = line.pipeline
    held = pipeline._claim(("fingerprint", "seal", "put", "forward"), room=64)
    assert [row.id for row in held] == ids

    held = pipeline._round(held)  # every fingerprint, then one commit

    assert commits == [8]
    assert [row.stage for row in held] == ["seal"] * 8
    assert line.index.claim_counts() == {"local": 8}  # still held: they go on together
    while held:
        held = pipeline._round(held)
    assert commits == [8] * 5  # seal, put, anchor (one by one: no batcher here), forward
    assert {line.index.get(i).stage for i in ids} == {"committed"}
    assert line.index.claim_counts() == {}  # dropped in the commit that moved them there
    assert list(line.sealed_dir.iterdir()) == []  # each sealed copy went once it was stored
    assert not any(line.spool.path_of(line.index.get(i).entry_id).exists() for i in ids)


def test_a_failing_row_leaves_its_round_and_the_others_go_on(
    line: Line, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [line.at_anchor(n) for n in (1, 2, 3)]
    line.index.update(ids[1], stage="forward")
    line.index.update(ids[2], stage="forward")
    line.index.update(ids[0], stage="forward")
    refused = line.index.get(ids[1]).digest
    forward = line.forwarder.forward

    def refusing(path: Path, *, digest: bytes) -> Any:
        if digest == refused:
            raise PacsRejected("Orthanc refused the file: not DICOM")
        return forward(path, digest=digest)

    monkeypatch.setattr(line.forwarder, "forward", refusing)
    held = line.pipeline._claim(("forward",), room=64)

    assert line.pipeline._round(held) == []

    stages = [line.index.get(i) for i in ids]
    assert [row.stage for row in stages] == ["committed", "forward", "committed"]
    assert (stages[1].strikes, stages[1].attempts) == (1, 1)
    assert "PacsRejected" in (stages[1].last_error or "")
    assert line.index.claim_counts() == {}


def test_a_round_of_seals_syncs_the_sealed_directory_once_before_its_commit(
    line: Line, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = dicom_fixtures.ct_series(line.sealed_dir.parent / "ct6", 6, rows=16, cols=16)
    for n, path in enumerate(images):
        line.acked(path.read_bytes(), uid=f"1.2.4.{n}")
    pipeline = line.pipeline
    held = pipeline._round(pipeline._claim(("fingerprint",), room=64))  # now at seal
    events: list[str] = []
    fsync_dir = stages.fsync_dir
    advance_many = line.index.advance_many
    monkeypatch.setattr(
        stages, "fsync_dir", lambda path: (events.append(f"sync {path.name}"), fsync_dir(path))
    )
    monkeypatch.setattr(
        line.index, "advance_many",
        lambda moves, **kw: (events.append(f"commit {len(moves)}"), advance_many(moves, **kw))[1],
    )  # fmt: skip

    held = pipeline._round(held)

    assert [row.stage for row in held] == ["put"] * 6
    assert events == ["sync sealed", "commit 6"]
    assert len(list(line.sealed_dir.glob("*.seal"))) == 6


def test_a_slow_step_never_holds_the_rest_of_its_round_back(
    line: Line, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a hung upload (a large instance, a PACS slow for one file) stays out of the commits
    # of the others, which go on; it is recorded by a later round once it finishes
    ids = [line.at_anchor(n) for n in (1, 2, 3)]
    for row_id in ids:
        line.index.update(row_id, stage="forward")
    slow = line.index.get(ids[0]).digest
    release = threading.Event()
    forward = line.forwarder.forward

    def hanging(path: Path, *, digest: bytes) -> Any:
        if digest == slow:
            assert release.wait(120)
        return forward(path, digest=digest)

    monkeypatch.setattr(line.forwarder, "forward", hanging)
    pipeline = line.pipeline
    pool = ThreadPoolExecutor(3)  # the line's pipeline has one thread: uploads side by side
    monkeypatch.setattr(pipeline, "_pool", pool)
    running: dict[Any, Any] = {}
    held = pipeline._claim(("forward",), room=64)
    rounds = 0
    while {line.index.get(i).stage for i in ids[1:]} != {"committed"}:
        held = pipeline._round(held, running, wait_s=0.05)
        rounds += 1
        assert rounds < 1000, "the fast rows never committed"
    assert line.index.get(ids[0]).stage == "forward"  # still uploading, and still claimed
    assert [row.id for row in running.values()] == [ids[0]]
    assert line.index.claim_counts() == {"local": 1}

    # a row due later is claimed, stepped and recorded while the slow one still runs
    later = line.at_anchor(4)
    line.index.update(later, stage="forward")
    held = pipeline._round(held, running, wait_s=0.05)  # nothing new finished: none held
    assert held == [] and line.index.get(ids[0]).stage == "forward"
    held = pipeline._claim(("forward",), room=64)
    assert [row.id for row in held] == [later]
    while line.index.get(later).stage != "committed":
        held = pipeline._round(held, running, wait_s=0.05)
        rounds += 1
        assert rounds < 2000, "the later row never committed"
    assert [row.id for row in running.values()] == [ids[0]]

    release.set()
    while running:
        held = pipeline._round(held, running, wait_s=0.05)
    assert line.index.get(ids[0]).stage == "committed"
    assert line.index.claim_counts() == {}
    pool.shutdown()


class Clock:
    """``time`` as the pipeline module sees it, with a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(pipeline_module, "time", fake)
    return fake


class Sending:
    """Two rows waiting at ``forward``, and a modality whose last ack the test sets."""

    STAGES = ("fingerprint", "seal", "put", "anchor", "forward")

    def __init__(self, line: Line, clock: Clock) -> None:
        self.line, self.clock = line, clock
        self.forwards = [line.at_anchor(n) for n in (1, 2)]
        for row_id in self.forwards:
            line.index.update(row_id, stage="forward")
        self.acked = clock.now
        line.pipeline.last_ack = lambda: self.acked

    def ack(self) -> None:
        self.acked = self.clock.now

    def claim(self) -> list[int]:
        """The ids of the rows the next round claims, each handed back at once."""
        pipeline = self.line.pipeline
        ids = [row.id for row in pipeline._claim_next(self.STAGES, [], {})]
        self.line.index.unclaim(pipeline.worker, ids)
        return ids


def test_no_forward_starts_while_a_modality_is_still_sending_unless_its_stream_goes_on(
    line: Line, clock: Clock
) -> None:
    # on two cores the PACS storing whole images beside a stream of large ones halved the
    # acks' speed; a stream that goes on for FORWARD_HOLD_S still commits as it goes
    modality = Sending(line, clock)
    assert modality.claim() == []  # acked just now
    clock.now += SENDING_S
    assert modality.claim() == modality.forwards

    clock.now += FORWARD_HOLD_S  # quiet long enough to refill the hold
    for _ in range(10):  # a new stream: held again, until it has gone on too long
        modality.ack()
        assert modality.claim() == []
        clock.now += FORWARD_HOLD_S / 10
    modality.ack()
    assert modality.claim() == modality.forwards


def test_a_peer_pausing_briefly_between_long_streams_holds_forwards_only_as_long_as_its_pauses(
    line: Line, clock: Clock
) -> None:
    # the hold is a budget, refilled only while no modality sends: a peer that streams for
    # almost the hold's length, pauses just past SENDING_S and streams again gets back only
    # what it paused, not the whole hold once more
    modality = Sending(line, clock)
    held = 0
    for _ in range(3):  # three bursts of 9.9 s, an ack every 0.1 s
        for _ in range(99):
            modality.ack()
            held += not modality.claim()
            clock.now += 0.1
        clock.now += 0.02  # the peer pauses: its last ack is 0.12 s old
        assert modality.claim() == modality.forwards
    # the first 10 s of its stream, then about each pause's worth: ~12 s of 29.7, not 29.7
    assert held * 0.1 <= FORWARD_HOLD_S + 3 * 0.25


def test_rows_on_their_way_to_the_anchor_go_first_and_forwards_wait_beside_them(
    line: Line, two_images: list[bytes]
) -> None:
    # the forward (the PACS storing a whole image) must not starve fingerprint, seal and
    # put, which the anchor's latency and the size of a batch wait for
    forwards = [line.at_anchor(n) for n in (1, 2, 3)]
    for row_id in forwards:
        line.index.update(row_id, stage="forward")
    newer = [line.acked(data, uid=f"1.2.5.{n}") for n, data in enumerate(two_images)]
    pipeline = line.pipeline
    stages = ("fingerprint", "seal", "put", "anchor", "forward")

    held = pipeline._claim_next(stages, [], {})

    assert [row.id for row in held] == [*newer, forwards[0]]  # older forwards, yet behind
    assert pipeline._claim_next(stages, held, {}) == []  # one forward beside them at most
    for row in held:  # done with them: once none is on its way, forwards take every place
        line.index.unclaim(pipeline.worker, [row.id])
        line.index.update(row.id, stage="committed")
    assert [row.id for row in pipeline._claim_next(stages, [], {})] == forwards[1:]
