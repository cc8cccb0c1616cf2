"""The only module that knows the order of the stages after the ack: its table and scheduler.

fingerprint -> seal -> put -> anchor -> forward -> committed

:data:`STAGE_TABLE` says it: each stage, the step that does its work (``stages.py``) and
the stage a row goes to next. The :class:`Pipeline` runs it: it finds due rows, claims
them for its workers, runs each row's step, and records failures, retries and parking.

The pipeline claims the rows it works in the index (``claimed_by``, ``claim_until``: a
lease it renews while it lives, dropped when a row waits or is done), so that several
pipelines, each in its own worker process (``xray-gateway worker``), share one index and
never work the same row at once; a dead worker's rows return to the queue when its lease
runs out, or at once when it starts again under the same id.

Rows run their stages in rounds, except at ``anchor`` when a batcher is configured. The
dispatch thread holds up to ``round_rows`` claimed rows; each round runs every held row's
step at once on a pool of worker threads (fingerprint, seal, put and forward: several
uploads to the PACS at a time), then records the results of every step that has finished,
and drops the claims of the rows that are done or wait, in one index transaction: one
commit for many rows rather than one per row and stage. A step still running (a slow
upload, a large instance) stays out of that commit and joins a later one: a round waits
at most :data:`ROUND_WAIT_S` for its slowest row, so one slow row never holds the others
back. Rows newly due join the next round, so a stream of images moves through the stages
in waves. Rows on their way to the anchor stage are claimed and started first: while any
is, at most :data:`FORWARDS_BESIDE_UPSTREAM` forwards run beside them, so that the PACS
storing earlier images does not slow the rows the next batch waits for. While a modality
is still sending (an ack less than :data:`SENDING_S` ago), no forward starts at all, for
at most :data:`FORWARD_HOLD_S` in all, a budget that only time with no modality sending
refills (so a peer pausing briefly between long streams cannot hold forwards for good):
on few cores the PACS storing whole images beside the stream slowed the acks twofold
(docs/performance.md, "Session 10"). At ``anchor`` one
thread gathers the rows that
reached it into Merkle batches (``anchor.BatchAnchorer``: one ``recordBatch`` per batch),
lands each batch, and moves its rows on to ``forward`` all at once, while the rounds go
on with other rows. A new version of an image (same SOP Instance UID,
other bytes) is anchored on its own (``supersedeImage``, or ``supersedeBatchedImage``
with the inclusion proof from the index if its first version was batched), so that the
chain itself knows the image changed, and the key stays the gateway's on chain.

Each step reads a row of the index, does one idempotent piece of work, and advances the
row in the same update that records the work's result (see ``stages.py``); a crash
between the work and the round's commit repeats the work.

The index saying "anchored" is only as good as the chain still holding the transaction.
An embedded anvil killed without its state dump comes back without its last blocks, so
on start the pipeline checks the newest anchors it recorded, newest first, and anchors
again every record the chain lost (:meth:`Pipeline.reconcile_anchors`). The same check
runs again whenever the chain was unreachable, before anything new is anchored: a node
restarted from an older state dump has lost its newest blocks.

Failures are of two kinds (:func:`gateway.errors.is_transient`). A downstream that is
unavailable (object store, chain node, PACS: refused, timed out, 5xx) or a row that must
wait for another (both an :class:`~gateway.errors.Unavailable`) is retried for as long
as it takes, with backoff capped at :data:`TRANSIENT_CAP_S`, and shown as failing; when
any row gets through a stage, the rows waiting at that stage for such a reason are due
at once, so a backlog drains as soon as its downstream is back. Any other failure (the
PACS refused the file, the contract reverted, a bug) is retried :data:`PERMANENT_ATTEMPTS`
times, then the row is parked at stage ``failed`` with its reason, logged at ERROR, and
waits for ``xray-gateway retry``; its spool file is kept.
A Merkle batch is failed, retried and parked as a whole, the same way.

A spool file that no longer hashes to what the listener acked (``spool_sha256``: someone
changed it after the ack) is parked at once, with a ``spool_swapped`` alert: its bytes
are not the modality's, so they are never sealed, anchored or forwarded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Protocol

from gateway import failpoints
from gateway.core.fingerprint import MAX_INSTANCE_BYTES
from gateway.core.keys import Keyring
from gateway.errors import ChainUnavailable, MustWait, SpoolSwapped, is_transient
from gateway.index.db import Index, PendingBatch, Row
from gateway.ingest.retry import backoff
from gateway.ingest.spool import Spool
from gateway.ingest.stages import (
    Anchorer,
    AnchorItem,
    AnchorResult,
    Forwarder,
    Stage,
    StepDone,
    Steps,
    anchor_item,
    describe,
)
from gateway.store import ObjectStore
from gateway.trust.alerts import Alerts
from gateway.trust.erasure import erase_if_named

log = logging.getLogger(__name__)

#: The order of the stages after the ack, the step that does each one's work, and where a
#: row goes from each. The names are the index's (``gateway.index.db.STAGES``).
STAGE_TABLE: tuple[Stage, ...] = (
    Stage("fingerprint", Steps.fingerprint, next="seal", aside="duplicate"),
    Stage("seal", Steps.seal, next="put"),
    Stage("put", Steps.put, next="anchor", back="seal"),
    Stage("anchor", Steps.anchor, next="forward", batched=True, anywhere=True),
    Stage("forward", Steps.forward, next="committed", aside="conflict"),
)
STAGE = {stage.name: stage for stage in STAGE_TABLE}
#: Where the batch thread takes first versions, when a batcher is configured.
ANCHOR = next(stage for stage in STAGE_TABLE if stage.batched)
#: Stages a row is at before it is anchored.
UNANCHORED = tuple(stage.name for stage in STAGE_TABLE[: STAGE_TABLE.index(ANCHOR) + 1])
#: Stages a row passes on its way to the anchor stage.
ON_THE_WAY = UNANCHORED[:-1]
#: Stages any node may work: the rest read the receiving node's spool or sealed dir.
ANYWHERE = tuple(stage.name for stage in STAGE_TABLE if stage.anywhere)
#: Stages past the last one: the PACS holds the row, and its spool copy may be gone.
FORWARDED = tuple(name for name in (STAGE_TABLE[-1].next, STAGE_TABLE[-1].aside) if name)


class Gather(Protocol):
    """Decides when the rows waiting at the anchor stage make a batch (``anchor.Gatherer``)."""

    max_size: int

    def offer(self, row_ids: Sequence[int], now: float, *, streaming: bool = False) -> None:
        """The rows that may join a batch now, oldest first; ``streaming``: more are coming."""
        ...

    def take(self, now: float) -> list[int] | None:
        """The next batch's rows in leaf order, or None if none is due."""
        ...

    def wait_s(self, now: float) -> float | None:
        """Seconds until a batch is due by time (None: nothing waits)."""
        ...


class Batcher(Protocol):
    """The anchor stage for many images: persisted Merkle batches, one transaction each."""

    def gatherer(self) -> Gather:
        """A fresh size and time policy for the batch thread."""
        ...

    def open(self, members: Sequence[tuple[int, AnchorItem]]) -> PendingBatch:
        """Build and persist a batch of (row id, item), before anything is sent."""
        ...

    def land(self, batch: PendingBatch, items: Sequence[AnchorItem]) -> list[AnchorResult]:
        """Anchor ``batch`` unless the chain already holds it; one result per item."""
        ...


ROUND_WAIT_S = 0.25
"""Longest a round waits for its slowest steps before recording those that finished."""
FORWARDS_BESIDE_UPSTREAM = 1
"""Forward steps in flight at once while rows are on their way to the anchor stage."""
SENDING_S = 0.1
"""An ack less than this long ago: a modality is still sending, and forwards wait."""
FORWARD_HOLD_S = 10.0
"""The longest forwards wait for acks to pause (then one runs beside them): a budget that
drains while forwards wait and refills, up to this, while no modality sends."""
TRANSIENT_CAP_S = 60.0
"""Longest wait between two tries of a row whose downstream is unavailable."""
PERMANENT_ATTEMPTS = 5
"""Tries, for a permanent reason, before a row is parked at stage ``failed``."""


class Pipeline:
    """Runs every due stage of every row, on a small pool of worker threads.

    Parameters
    ----------
    index, spool, store:
        The local index, the received-instance spool and the object store.
    keyring, pseudonym_key:
        The current KEK seals new objects; the pseudonym key names records and patients.
    anchorer, forwarder:
        The ledger and PACS sides of the anchor and forward stages.
    batcher:
        Gathers rows at the anchor stage into Merkle batches; ``None`` anchors each image
        with ``anchorer`` (``GATEWAY_BATCH_MAX=1``).
    sealed_dir:
        Where sealed objects wait between the seal and put stages.
    workers:
        Threads running rows' steps at once (PACS uploads among them).
    round_rows:
        The most rows the dispatch thread holds: each round steps them all, and records
        their results in one index transaction.
    pause:
        Called before each round (and each stage of a row run alone); the listener's
        ``yield_to_acks`` holds the pipeline back while C-STOREs are streaming in.
    last_ack:
        When the latest C-STORE was acked (``time.monotonic()``; the listener's, or the
        worker's bell): no forward starts while a modality is still sending.
    max_instance_bytes:
        The most bytes a deflated dataset may inflate to (``GATEWAY_MAX_INSTANCE_BYTES``),
        in a temporary file on the spool's filesystem.
    alerts:
        Where a spool file changed after the ack is reported (``spool_swapped``).
    worker:
        This pipeline's id in the index's claims (unique among running pipelines; the
        same id after a restart frees what it held at once).
    lease_s:
        How long a claim lasts unless renewed (renewed every third of it while alive).
    poll_s:
        The longest wait between two looks for due rows when nothing wakes the pipeline.
    anchors:
        Whether this pipeline anchors (the anchor stage, the batch thread, the check of
        the recorded anchors). One pipeline per recorder key does: the ledger's nonces are
        handed out in one process. The others leave rows at ``anchor`` to it.
    """

    def __init__(
        self,
        *,
        index: Index,
        spool: Spool,
        store: ObjectStore,
        keyring: Keyring,
        pseudonym_key: bytes,
        anchorer: Anchorer,
        forwarder: Forwarder,
        sealed_dir: Path,
        batcher: Batcher | None = None,
        workers: int = 4,
        round_rows: int = 64,
        pause: Callable[[], None] | None = None,
        last_ack: Callable[[], float] | None = None,
        max_instance_bytes: int = MAX_INSTANCE_BYTES,
        alerts: Alerts | None = None,
        worker: str = "local",
        lease_s: float = 30.0,
        poll_s: float = 0.25,
        anchors: bool = True,
    ) -> None:
        self.index = index
        self.worker = worker
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.workers = workers
        self.round_rows = round_rows
        self.anchors = anchors
        self.anchorer = anchorer
        self.batcher = batcher
        self.pause = pause
        self.last_ack = last_ack
        self._hold_left = FORWARD_HOLD_S  # how much longer forwards may wait for acks
        self._hold_seen: float | None = None  # when _forwards_wait last looked
        self._quiet = True  # at that look: no modality was sending
        self._reconciled = threading.Event()  # the anchors recorded before start are checked
        self._reconciled.set()  # (only start() has any to check: it clears this)
        self.steps = Steps(
            index=index, spool=spool, store=store, keyring=keyring, pseudonym_key=pseudonym_key,
            anchorer=anchorer, forwarder=forwarder, sealed_dir=sealed_dir,
            anchors_checked=self._reconciled, unanchored=UNANCHORED,
            max_instance_bytes=max_instance_bytes, alerts=alerts,
        )  # fmt: skip
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pipeline")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inflight: set[int] = set()
        self._lock = threading.Lock()
        self._held_at: set[str] = set()  # stages where rows wait for a transient reason
        self._thread: threading.Thread | None = None
        self._batch_thread: threading.Thread | None = None
        self._batch_wake = threading.Event()
        self._batching = False
        self._reconcile_at = 0.0
        self._reconciler: threading.Thread | None = None
        self._reconcile_attempts = 0
        self._renewer: threading.Thread | None = None
        self.reanchored = 0  # records the chain had lost, anchored again since start

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        released = self.index.release_claims(self.worker)  # this id's earlier life held them
        if released:
            log.info("worker %s starts again: %d rows it held are due now", self.worker, released)
        if self.anchors:
            self._reconciled.clear()
        self._renewer = threading.Thread(target=self._renew, name="pipeline-lease", daemon=True)
        self._renewer.start()
        self._thread = threading.Thread(
            target=self._dispatch, name="pipeline-dispatch", daemon=True
        )
        self._thread.start()
        if self.batcher is not None and self.anchors:
            self._batch_thread = threading.Thread(
                target=self._gather, name="pipeline-batch", daemon=True
            )
            self._batch_thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._batch_wake.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._batch_thread is not None:
            self._batch_thread.join(60)  # a batch being sent finishes, or is resumed later
        if self._reconciler is not None:
            self._reconciler.join(30)  # a re-anchor under way finishes, or runs again at start
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._renewer is not None:
            self._renewer.join(10)
        self.index.release_claims(self.worker)  # rows gathered for a batch not yet cut

    def _renew(self) -> None:
        """Keep this worker's claims alive while it runs (a dead worker's run out)."""
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.index.renew_claims(self.worker, lease_s=self.lease_s)
            except Exception:  # the index is busy or failing: the next renewal may do
                log.exception("renewing worker %s's claims failed", self.worker)

    def wake(self, row_id: int | None = None) -> None:
        """Something new is due (called by the listener after each ack)."""
        self._wake.set()

    def idle(self) -> bool:
        """Nothing in flight and nothing due now."""
        with self._lock:
            busy = bool(self._inflight) or self._batching
        return not busy and not self.index.due(limit=1)

    def _batched(self, stage: Stage, row: Row) -> bool:
        """Whether the batch thread runs this row's stage: first versions, with a batcher."""
        return stage.batched and self.batcher is not None and (row.version or 1) == 1

    def _pooled(self) -> tuple[str, ...]:
        """The stages the rounds run: with a batcher, rows at its stage are the batch
        thread's to hand out; a pipeline that does not anchor leaves them too."""
        return tuple(
            stage.name
            for stage in STAGE_TABLE
            if not (stage.batched and (self.batcher or not self.anchors))
        )

    def _dispatch(self) -> None:
        pooled = self._pooled()
        held: list[Row] = []  # claimed, waiting for their next step
        running: dict[Future[StepDone | Exception], Row] = {}  # steps under way
        try:
            while not self._stop.is_set():
                self._wake.clear()
                if self.pause is not None:
                    self.pause()  # once per round: acks first while C-STOREs stream in
                self._start_reconcile()
                # no new anchor before the recorded ones are checked
                stages = tuple(
                    name for name in pooled if name != ANCHOR.name or self._reconciled.is_set()
                )
                held = held + self._claim_next(stages, held, running)
                if not held and not running:
                    self._wake.wait(self.poll_s)
                    continue
                try:
                    # rows went on: no wake-up needed
                    held = self._round(held, running, wait_s=ROUND_WAIT_S)
                except Exception:  # the index failed between steps: they run again later
                    log.exception("a round of %d rows failed; retrying in 1 s", len(held))
                    self._unclaim_quietly([row.id for row in held])
                    with self._lock:
                        self._inflight.difference_update(row.id for row in held)
                    held = []
                    self._stop.wait(1.0)
        finally:
            with self._lock:
                self._inflight.difference_update(row.id for row in [*held, *running.values()])

    def _start_reconcile(self) -> None:
        """Check the recorded anchors on a thread of its own when due: a chain that times
        out must not hold back the other stages."""
        if (
            not self._reconciled.is_set()
            and time.monotonic() >= self._reconcile_at
            and not (self._reconciler is not None and self._reconciler.is_alive())
        ):
            self._reconciler = threading.Thread(
                target=self._try_reconcile, name="pipeline-reconcile", daemon=True
            )
            self._reconciler.start()

    def _claim_next(
        self,
        stages: tuple[str, ...],
        held: list[Row],
        running: dict[Future[StepDone | Exception], Row],
    ) -> list[Row]:
        """Claim the next round's new rows: rows on their way to the anchor stage first.

        The forward (a whole image stored by the PACS through its integrity plugin) competes
        with fingerprint, seal and put for the same cores, and only the commit waits for it;
        the anchor's latency and the size of a batch wait for the others. So while any row
        is on its way to the anchor stage, at most :data:`FORWARDS_BESIDE_UPSTREAM` forward
        steps are in flight (never none: a long stream still commits as it goes). While a
        modality is still sending, none starts, for at most :data:`FORWARD_HOLD_S` in all.
        """
        room = self.round_rows - len(held) - len(running)
        upstream = tuple(name for name in stages if name in UNANCHORED)
        downstream = tuple(name for name in stages if name not in UNANCHORED)
        rows = self._claim(upstream, room=room)
        room -= len(rows)
        if self._forwards_wait():
            return rows
        in_flight = [*held, *running.values(), *rows]
        if any(row.stage in UNANCHORED for row in in_flight):
            forwarding = sum(1 for row in in_flight if row.stage not in UNANCHORED)
            room = min(room, FORWARDS_BESIDE_UPSTREAM - forwarding)
        return rows + self._claim(downstream, room=room)

    def _forwards_wait(self) -> bool:
        """True while a modality is still sending (an ack less than :data:`SENDING_S` ago)
        and the hold's budget lasts.

        The budget (:data:`FORWARD_HOLD_S` at most) drains while forwards wait and refills
        only while no modality sends, second for second: one stream is held for at most
        that long, and a peer that streams on with brief pauses holds forwards only as
        long as its pauses add up to, not the hold's length again after each pause.
        """
        if self.last_ack is None:
            return False
        now = time.monotonic()
        elapsed = 0.0 if self._hold_seen is None else now - self._hold_seen
        self._hold_seen = now
        if self._quiet:  # since the last look, no one sent (until a new stream began)
            self._hold_left = min(FORWARD_HOLD_S, self._hold_left + elapsed)
        elif self._hold_left > 0:  # since the last look, forwards waited
            self._hold_left -= elapsed
        self._quiet = now - self.last_ack() >= SENDING_S
        return not self._quiet and self._hold_left > 0

    def _claim(self, stages: tuple[str, ...], *, room: int) -> list[Row]:
        """Claim up to ``room`` due rows for the next round (none if the index fails now)."""
        if room <= 0:
            return []
        try:
            rows = self.index.claim_due(
                self.worker, stages=stages, anywhere=ANYWHERE, limit=room, lease_s=self.lease_s
            )
        except Exception:  # the index is busy or failing: the held rows go on meanwhile
            log.exception("claiming due rows failed; trying again next round")
            return []
        with self._lock:
            self._inflight.update(row.id for row in rows)
        return rows

    def _round(
        self,
        rows: list[Row],
        running: dict[Future[StepDone | Exception], Row] | None = None,
        *,
        wait_s: float | None = None,
    ) -> list[Row]:
        """Start every held row's step; record, in one transaction, every step that has
        finished within ``wait_s`` (None: wait for all of them).

        ``running`` holds the steps still under way between rounds: a later round records
        them (the dispatch thread's rounds wait :data:`ROUND_WAIT_S`). Returns the rows that go on to another step in the next round. The others
        (done, parked, failed and waiting for a retry, or at the anchor stage for the batch
        thread) lose this worker's claim in the same transaction. (A fingerprint found to
        be a duplicate is known only in the commit: it leaves at the next round.)
        """
        running = {} if running is None else running
        leaving: list[int] = []
        settled: list[Row] = []  # rows this round records: not runnable now, or finished
        for row in sorted(rows, key=lambda row: row.stage not in UNANCHORED):  # upstream first
            stage = self._runnable(row)
            if stage is None:
                leaving.append(row.id)
                settled.append(row)
            else:
                running[self._pool.submit(self._step, row, stage)] = row
        # a slow step keeps running: the dispatch thread claims and starts new rows meanwhile
        finished = wait(running, timeout=wait_s).done if running else set()
        if not finished and not leaving:
            return []  # nothing to record this round
        done: list[StepDone] = []
        for future in finished:
            row = running.pop(future)
            settled.append(row)
            outcome = future.result()
            if isinstance(outcome, StepDone):
                done.append(outcome)
            else:
                leaving.append(row.id)
                self._record_failure(row, outcome)
        going_on = [d.move.row_id for d in done if self._goes_on(d.move.stage)]
        leaving += [d.move.row_id for d in done if not self._goes_on(d.move.stage)]
        by_id = {row.id: row for row in settled}  # the steps still running are not here
        try:
            landed = self.steps.record(done, release=(self.worker, leaving))
        except Exception:  # the index failed: the work is done again from the rows' stages
            log.exception("recording a round of %d steps failed; they run again", len(done))
            self._unclaim_quietly(list(by_id))
            done, landed, going_on = [], [], []
        list(self._pool.map(self.steps.after, done, landed))  # file removals, side by side
        for d in done:
            self._succeeded(by_id[d.move.row_id])
            if d.move.stage == ANCHOR.name:
                self._batch_wake.set()  # the batch thread takes it from here
        with self._lock:
            self._inflight.difference_update(set(by_id) - set(going_on))
        return self.index.rows_of(going_on)

    def _runnable(self, row: Row) -> Stage | None:
        """The stage the round runs for ``row`` now, or None if it leaves the round."""
        stage = STAGE.get(row.stage)
        if stage is None or erase_if_named(row, self.steps):  # an erasure named it: no further
            return None
        if self._batched(stage, row) or (stage is ANCHOR and not self.anchors):
            return None
        return stage

    def _goes_on(self, stage_name: str) -> bool:
        """Whether a row that landed at ``stage_name`` takes its next step in a round."""
        stage = STAGE.get(stage_name)  # None: done; at the anchor stage with a batcher, the
        # batch thread's (it hands a new version to the pool alone)
        return stage is not None and not (
            stage is ANCHOR and (self.batcher is not None or not self.anchors)
        )

    def _step(self, row: Row, stage: Stage) -> StepDone | Exception:
        """One row's step in a round (on a pool thread): what to record, or why it failed."""
        try:
            return stage.step(self.steps, row, stage)
        except Exception as exc:  # recorded on the row, with its reason, by the round
            return exc

    def _record_failure(self, row: Row, exc: Exception) -> None:
        try:
            self._failed(row, exc)
        except Exception:  # the index failed too: the row is tried again as it stands
            log.exception("row %d: recording its failure failed", row.id)

    def _unclaim_quietly(self, row_ids: list[int]) -> None:
        try:
            self.index.unclaim(self.worker, row_ids)
        except Exception:  # their claims run out with the lease
            log.exception("dropping this worker's claims failed")

    def _submit(self, row_id: int) -> None:
        with self._lock:
            if row_id in self._inflight:
                return
            self._inflight.add(row_id)
        self._pool.submit(self._work, row_id)

    def _try_reconcile(self) -> None:
        try:
            self.reconcile_anchors()
        except Exception as exc:  # the chain is down: the other stages go on meanwhile
            retry_in = min(2.0, backoff(self._reconcile_attempts))  # new anchors wait on it
            self._reconcile_attempts += 1
            self._reconcile_at = time.monotonic() + retry_in
            log.warning(
                "cannot check the recorded anchors against the chain yet (%s: %s); retry in "
                "%.1f s", type(exc).__name__, exc, retry_in,
            )  # fmt: skip

    def reconcile_anchors(self) -> int:
        """Anchor again the records the chain lost since they were anchored; returns how many.

        Runs once, when the pipeline starts, before any new anchor (the anchor stage waits
        for it). The anchored rows are checked newest first, and the check stops at the
        first transaction the chain still holds: a chain that lost blocks lost its newest
        ones (an anvil restarted from an older state dump). Lost rows are anchored again
        oldest first, so that a version is recorded before the one that supersedes it;
        their stage is left as it is (a committed row stays committed). A lost batch is
        re-opened and landed again whole (same members, same root, so the same proofs); its
        rows keep their stage too (a committed row's spool copy is gone: it is not
        forwarded again).
        """
        lost: list[Row] = []
        checked: dict[str, bool] = {}
        offset, page = 0, 64
        while True:
            rows = self.index.anchored_newest_first(limit=page, offset=offset)
            confirmed = False
            for row in rows:
                assert row.tx_hash is not None
                if row.tx_hash not in checked:
                    checked[row.tx_hash] = self.anchorer.confirmed(row.tx_hash)
                if checked[row.tx_hash]:
                    confirmed = True
                    break
                lost.append(row)
            if confirmed or len(rows) < page:
                break
            offset += page
        if lost:
            log.warning(
                "the chain no longer holds %d anchored record(s) (newest block %s): anchoring "
                "them again", len(lost), lost[0].block_number,
            )  # fmt: skip
        relanded: set[str] = set()
        for row in sorted(lost, key=lambda r: r.id):
            if self.batcher is None or row.batch_id is None:
                self.steps.reanchor(self.index.get(row.id))
                self.reanchored += 1
            elif row.tx_hash not in relanded:  # a lost batch is sent again whole: same root
                relanded.add(str(row.tx_hash))
                for batch in self.index.reopen_batches(str(row.tx_hash)):
                    if self.index.claim_batch(self.worker, batch.id, lease_s=self.lease_s):
                        self._land(batch)  # else another worker's batch thread lands it
                        self.reanchored += batch.count
        self._reconciled.set()
        self._wake.set()
        return len(lost)

    def _work(self, row_id: int) -> None:
        try:
            self.process(row_id)
        finally:
            try:
                self.index.unclaim(self.worker, [row_id])  # it waits, or it is done
            finally:
                with self._lock:
                    self._inflight.discard(row_id)
                self._wake.set()

    def process(self, row_id: int) -> str:
        """Run the row's stages until it is done or a stage must wait; returns that stage."""
        while True:
            row = self.index.get(row_id)
            if not self.advance(row):
                return row.stage

    def advance(self, row: Row) -> bool:
        """Run the row's stage once, as the stage table says; True if the next may run now.

        False when the row is done or parked (no stage of the table), when the batch thread
        takes it from here, or when the step failed (recorded on the row, with its reason).
        """
        stage = STAGE.get(row.stage)
        if stage is None or erase_if_named(row, self.steps):  # an erasure named it: no further
            return False
        if self._batched(stage, row):
            self._batch_wake.set()  # the batch thread takes it from here
            return False
        if stage is ANCHOR and not self.anchors:
            return False  # the anchoring pipeline takes it from here
        if self.pause is not None:
            self.pause()
        try:
            self.steps.commit([stage.step(self.steps, row, stage)])
        except Exception as exc:  # every failure is recorded on the row, with its reason
            self._failed(row, exc)
            return False
        self._succeeded(row)
        return True

    def _failed(self, row: Row, exc: Exception) -> None:
        reason = f"{row.stage}: {type(exc).__name__}: {exc}"[:500]
        if is_transient(exc):
            retry_in = backoff(row.attempts, cap=TRANSIENT_CAP_S)
            level = logging.INFO if isinstance(exc, MustWait) else logging.WARNING
            log.log(
                level, "row %d (%s): %s; retry in %.1f s", row.id, describe(row), reason, retry_in
            )
            self.index.fail(row.id, reason, retry_in=retry_in)
            if not isinstance(exc, MustWait):
                with self._lock:
                    self._held_at.add(row.stage)
                self._chain_down(exc)
        elif isinstance(exc, SpoolSwapped) or row.strikes + 1 >= PERMANENT_ATTEMPTS:
            log.error(
                "row %d (%s): %s; parked at stage failed after %d attempts (spool file kept; "
                "`xray-gateway retry %d` re-queues it)",
                row.id, describe(row), reason, row.strikes + 1, row.id,
            )  # fmt: skip
            self.index.park(row.id, reason)
            self._alert_parked(row.sop_instance_uid, f"row {row.id}: {reason}")
        else:
            retry_in = backoff(row.strikes)
            log.warning(
                "row %d (%s): %s; attempt %d of %d, retry in %.1f s",
                row.id, describe(row), reason, row.strikes + 1, PERMANENT_ATTEMPTS, retry_in,
            )  # fmt: skip
            self.index.fail(row.id, reason, retry_in=retry_in, permanent=True)

    def _alert_parked(self, sop_instance_uid: str, detail: str) -> None:
        """A row stopped at stage ``failed`` waits for an operator: tell one (alert ``parked``)."""
        if self.steps.alerts is not None:
            self.steps.alerts.record(
                kind="parked", source="pipeline", sop_instance_uid=sop_instance_uid, detail=detail
            )

    def _succeeded(self, row: Row) -> None:
        if row.strikes:
            self.index.succeeded(row.id)
        with self._lock:
            held = row.stage in self._held_at
            self._held_at.discard(row.stage)
        if held:
            released = self.index.release(row.stage)
            if released:
                log.info("stage %s works again: %d waiting rows are due now", row.stage, released)
                self._wake.set()

    # -- the batch thread --------------------------------------------------------------------

    def _gather(self) -> None:
        """Cut batches from the rows at the anchor stage and land them, until stopped.

        Open batches (persisted, not landed: a failure, or a crash) come first and are
        re-sent whole once their retry time has come; rows they hold join no other batch.
        """
        assert self.batcher is not None
        gatherer = self.batcher.gatherer()
        while not self._stop.is_set():
            self._batch_wake.clear()
            wait = 0.25
            if (
                not self._reconciled.is_set()
            ):  # no new batch before the recorded anchors are checked
                self._batch_wake.wait(wait)
                continue
            try:
                self._batching = True
                for batch in self.index.open_batches():
                    if self.index.claim_batch(self.worker, batch.id, lease_s=self.lease_s):
                        self._land(batch)  # else another worker is landing it
                rows = self.index.claim_unbatched(
                    self.worker, ANCHOR.name, limit=4 * gatherer.max_size, lease_s=self.lease_s
                )
                rows = [row for row in rows if not erase_if_named(row, self.steps)]
                for row in rows:
                    if not self._batched(ANCHOR, row):
                        self._submit(row.id)  # a new version: anchored on its own
                first = [row for row in rows if self._batched(ANCHOR, row)]
                by_id = {row.id: row for row in first}
                now = time.monotonic()
                # a batch keeps filling while rows are on their way to it (bounded by the
                # gatherer's latency limit); rows waiting out a backoff are not on their way
                streaming = bool(first) and bool(self.index.due(limit=1, stages=ON_THE_WAY))
                gatherer.offer([row.id for row in first], now, streaming=streaming)
                while not self._stop.is_set() and (chosen := gatherer.take(now)) is not None:
                    batch = self.batcher.open([(i, anchor_item(by_id[i])) for i in chosen])
                    log.info("batch %d: %d images, root %s", batch.id, batch.count,
                             batch.root.hex()[:12])  # fmt: skip
                    self._land(batch)
                    now = time.monotonic()
                left = gatherer.wait_s(now)
                if left is not None:
                    wait = min(wait, left)
            except Exception:  # the index itself failed: say so, and keep going
                log.exception("the batch thread failed; retrying in 1 s")
                wait = 1.0
            finally:
                self._batching = False
            if wait > 0:
                self._batch_wake.wait(wait)

    def _land(self, batch: PendingBatch) -> None:
        """Anchor one persisted batch and move its rows on, or note why it must wait."""
        try:
            self._land_claimed(batch)
        finally:
            self.index.unclaim(self.worker, batch.members)

    def _land_claimed(self, batch: PendingBatch) -> None:
        assert self.batcher is not None
        rows = self.index.rows_of(batch.members)
        try:
            results = self.batcher.land(batch, [anchor_item(row) for row in rows])
        except Exception as exc:  # retried whole: same members, same root
            self._batch_failed(batch, rows, exc)
            return
        failpoints.hit("pipeline.after_anchor")
        first = results[0]
        assert first.batch_id is not None
        anchored_at = time.time()
        self.index.close_batch(
            batch.id, batch_id=first.batch_id, tx_hash=first.tx_hash,
            block_number=first.block_number,
            rows={
                row.id: {
                    # a re-landed batch (the chain lost it) leaves its forwarded rows as
                    # they were: their spool copies are gone and Orthanc holds them
                    "stage": row.stage if row.stage in FORWARDED else ANCHOR.next,
                    "tx_hash": result.tx_hash,
                    "block_number": result.block_number, "block_time": result.block_time,
                    "recorder": result.recorder, "batch_id": result.batch_id,
                    "leaf_index": result.leaf_index, "proof": result.proof,
                    "anchored_at": anchored_at, "attempts": 0,
                    "strikes": 0, "last_error": None, "next_attempt_at": 0,
                }
                for row, result in zip(rows, results, strict=True)
            },
        )  # fmt: skip
        log.info("batch %d landed as batch %d in block %d", batch.id, first.batch_id,
                 first.block_number)  # fmt: skip
        with self._lock:
            held = "batch" in self._held_at
            self._held_at.discard("batch")
        if held and (released := self.index.release_batches()):
            log.info("the chain takes batches again: %d waiting batches are due now", released)
        self._wake.set()

    def _batch_failed(self, batch: PendingBatch, rows: list[Row], exc: Exception) -> None:
        """A batch failed to land: retried whole, or parked whole (like a row, see ``_failed``)."""
        reason = f"anchor: batch {batch.id}: {type(exc).__name__}: {exc}"[:500]
        if is_transient(exc):
            retry_in = backoff(batch.attempts, cap=TRANSIENT_CAP_S)
            log.warning("%s; %d images wait, retry in %.1f s", reason, batch.count, retry_in)
            self.index.fail_batch(batch.id, reason, retry_in=retry_in)
            with self._lock:
                self._held_at.add("batch")
            self._chain_down(exc)
            return
        strikes = 1 + max((row.strikes for row in rows), default=0)
        if strikes >= PERMANENT_ATTEMPTS:
            log.error(
                "%s; its %d images are parked at stage failed after %d attempts (spool files "
                "kept; `xray-gateway retry --all` re-queues them)", reason, batch.count, strikes,
            )  # fmt: skip
            self.index.abandon_batch(batch.id, reason)
            for row in rows:
                self._alert_parked(row.sop_instance_uid, f"row {row.id}: {reason}")
            return
        retry_in = backoff(strikes - 1)
        log.warning(
            "%s; attempt %d of %d, %d images wait, retry in %.1f s",
            reason, strikes, PERMANENT_ATTEMPTS, batch.count, retry_in,
        )  # fmt: skip
        self.index.fail_batch(batch.id, reason, retry_in=retry_in, permanent=True)

    def _chain_down(self, exc: Exception) -> None:
        """The chain did not answer: check the recorded anchors again before the next one."""
        if (
            isinstance(exc, ChainUnavailable)
            and self.anchors
            and self._reconciled.is_set()
            and self._thread is not None
        ):
            log.info("the chain is unreachable: recorded anchors are checked again once it is back")
            self._reconcile_attempts = 0
            self._reconcile_at = time.monotonic()
            self._reconciled.clear()
