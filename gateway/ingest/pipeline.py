"""The only module that knows the order of the stages after the ack.

fingerprint -> seal -> put -> anchor -> forward -> committed

Rows run their stages on a pool of worker threads, except at ``anchor`` when a batcher
is configured: there one thread gathers the rows that reached it into Merkle batches
(``anchor.BatchAnchorer``: one ``recordBatch`` per batch), lands each batch, and moves
its rows on to ``forward`` all at once, while the pool keeps fingerprinting, sealing,
storing and forwarding other rows. A new version of an image (same SOP Instance UID,
other bytes) is anchored on its own (``supersedeImage``, or ``supersedeBatchedImage``
with the inclusion proof from the index if its first version was batched), so that the
chain itself knows the image changed, and the key stays the gateway's on chain.

Each stage reads a row of the index, does one idempotent piece of work, and advances the
row in the same step that records the work's result. A crash between the work and the
advance repeats the work, which is why every stage is idempotent: the object name is
content-addressed, the anchor looks the record up on the ledger before sending, and
Orthanc answers ``AlreadyStored`` to identical bytes.

The index saying "anchored" is only as good as the chain still holding the transaction.
An embedded anvil killed without its state dump comes back without its last blocks, so
on start the pipeline checks the newest anchors it recorded, newest first, and anchors
again every record the chain lost (:meth:`Pipeline.reconcile_anchors`). The same check
runs again whenever the chain was unreachable, before anything new is anchored: a node
restarted from an older state dump has lost its newest blocks.

Failures are of two kinds (:func:`is_transient`). A downstream that is unavailable (object
store, chain node, PACS: refused, timed out, 5xx) or a row that must wait for another is
retried for as long as it takes, with backoff capped at :data:`TRANSIENT_CAP_S`, and shown
as failing; when any row gets through a stage, the rows waiting at that stage for such a
reason are due at once, so a backlog drains as soon as its downstream is back. Any other
failure (the PACS refused the file, the contract reverted, a bug) is retried
:data:`PERMANENT_ATTEMPTS` times, then the row is parked at stage ``failed`` with its
reason, logged at ERROR, and waits for ``xray-gateway retry``; its spool file is kept.
A Merkle batch is failed, retried and parked as a whole, the same way.

A spool file that no longer hashes to what the listener acked (``spool_sha256``: someone
changed it after the ack) is parked at once, with a ``spool_swapped`` alert: its bytes
are not the modality's, so they are never sealed, anchored or forwarded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway import failpoints
from gateway.core import keys
from gateway.core.fingerprint import MAX_INSTANCE_BYTES, fingerprint_and_header
from gateway.core.keys import Keyring
from gateway.core.merkle import decode_proof
from gateway.core.seal import seal
from gateway.errors import (
    ChainUnavailable,
    DatasetUnreadable,
    MustWait,
    PacsUnavailable,
    SpoolSwapped,
    SpoolUnavailable,
    StoreUnavailable,
    TransactionPending,
)
from gateway.index.db import Index, PendingBatch, Row
from gateway.ingest.spool import Spool, fsync_dir
from gateway.ledger.types import BatchedLeaf
from gateway.store import ObjectStore
from gateway.trust.alerts import Alerts

log = logging.getLogger(__name__)
#: Stages past ``forward``: the PACS holds the row, and its spool copy may be gone.
FORWARDED = ("committed", "conflict")


@dataclass(frozen=True)
class AnchorItem:
    """What the ledger records for one image version."""

    record_key: bytes
    patient_key: bytes
    digest: bytes
    pixel_digest: bytes
    body_part: str
    modality: str


@dataclass(frozen=True)
class AnchorResult:
    """Where the record landed."""

    tx_hash: str
    block_number: int
    block_time: int
    recorder: str
    batch_id: int | None = None
    leaf_index: int | None = None
    proof: bytes | None = None


class Anchorer(Protocol):
    """The anchor stage for one image: one transaction."""

    def anchor(self, item: AnchorItem, *, batched: BatchedLeaf | None = None) -> AnchorResult:
        """Anchor ``item``; ``batched`` is its key's first anchoring, when that was a batch."""
        ...

    def confirmed(self, tx_hash: str) -> bool:
        """True when the chain holds ``tx_hash`` as a successful transaction."""
        ...


class Gather(Protocol):
    """Decides when the rows waiting at the anchor stage make a batch (``anchor.Gatherer``)."""

    max_size: int

    def offer(self, row_ids: Sequence[int], now: float) -> None:
        """The rows that may join a batch now, oldest first."""
        ...

    def take(self, now: float) -> list[int] | None:
        """The next batch's rows in leaf order, or None if none is due."""
        ...

    def wait_s(self, now: float) -> float | None:
        """Seconds until a batch is due by its window (None: nothing waits)."""
        ...


class Batcher(Protocol):
    """The anchor stage for many images: persisted Merkle batches, one transaction each."""

    def gatherer(self) -> Gather:
        """A fresh window/size policy for the batch thread."""
        ...

    def open(self, members: Sequence[tuple[int, AnchorItem]]) -> PendingBatch:
        """Build and persist a batch of (row id, item), before anything is sent."""
        ...

    def land(self, batch: PendingBatch, items: Sequence[AnchorItem]) -> list[AnchorResult]:
        """Anchor ``batch`` unless the chain already holds it; one result per item."""
        ...


@dataclass(frozen=True)
class ForwardOutcome:
    """What the PACS made of an instance."""

    orthanc_id: str
    conflict: str | None


class Forwarder(Protocol):
    """The forward stage: put the received Part-10 bytes into the PACS."""

    def forward(self, path: Path, *, digest: bytes) -> ForwardOutcome: ...


def object_name(record_key: bytes, digest: bytes) -> str:
    """``<hex record_key>/<hex digest>``: no PHI, and a new version never overwrites."""
    return f"{record_key.hex()}/{digest.hex()}"


TRANSIENT_CAP_S = 60.0
"""Longest wait between two tries of a row whose downstream is unavailable."""
PERMANENT_ATTEMPTS = 5
"""Tries, for a permanent reason, before a row is parked at stage ``failed``."""

# Unavailable downstreams, waits, and the OS saying "not now" (disk full, connection reset).
TRANSIENT: tuple[type[BaseException], ...] = (
    MustWait,
    StoreUnavailable,
    ChainUnavailable,
    TransactionPending,
    PacsUnavailable,
    SpoolUnavailable,
    TimeoutError,
    ConnectionError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether a stage's failure is worth retrying for as long as it takes."""
    if isinstance(exc, TRANSIENT):
        return True
    # ENOSPC, EIO... on our own disk: not the row's fault, room may come back.
    return isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError))


def backoff(attempts: int, *, cap: float = 300.0) -> float:
    """Seconds before the next try: 0.5, 1, 2, … capped at ``cap`` (five minutes)."""
    return float(min(cap, 0.5 * 2 ** min(attempts, 10)))


class Pipeline:
    """Runs every due stage of every row, on a small pool of worker threads.

    Parameters
    ----------
    index, spool, store:
        The local index, the received-instance spool and the object store.
    keyring, pseudonym_key:
        The current KEK seals new objects; the pseudonym key names records and patients.
    anchorer, forwarder:
        The ledger and PACS stages.
    batcher:
        Gathers rows at the anchor stage into Merkle batches; ``None`` anchors each image
        with ``anchorer`` (``GATEWAY_BATCH_MAX=1``).
    sealed_dir:
        Where sealed objects wait between the seal and put stages.
    workers:
        Concurrent rows in flight.
    pause:
        Called before each stage and each look for due rows; the listener's
        ``yield_to_acks`` holds the pipeline back while C-STOREs are streaming in.
    max_instance_bytes:
        The most bytes a deflated dataset may inflate to (``GATEWAY_MAX_INSTANCE_BYTES``),
        in a temporary file on the spool's filesystem.
    alerts:
        Where a spool file changed after the ack is reported (``spool_swapped``).
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
        pause: Callable[[], None] | None = None,
        max_instance_bytes: int = MAX_INSTANCE_BYTES,
        alerts: Alerts | None = None,
    ) -> None:
        self.index = index
        self.alerts = alerts
        self.max_instance_bytes = max_instance_bytes
        self.spool = spool
        self.store = store
        self.keyring = keyring
        self.pseudonym_key = pseudonym_key
        self.anchorer = anchorer
        self.forwarder = forwarder
        self.batcher = batcher
        self.sealed_dir = sealed_dir
        self.pause = pause
        sealed_dir.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pipeline")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inflight: set[int] = set()
        self._lock = threading.Lock()
        self._anchor_locks: dict[bytes, threading.Lock] = {}
        self._held_at: set[str] = set()  # stages where rows wait for a transient reason
        self._thread: threading.Thread | None = None
        self._batch_thread: threading.Thread | None = None
        self._batch_wake = threading.Event()
        self._batching = False
        self._reconciled = threading.Event()  # the anchors recorded before start are checked
        self._reconciled.set()  # (only start() has any to check: it clears this)
        self._reconcile_at = 0.0
        self._reconciler: threading.Thread | None = None
        self._reconcile_attempts = 0
        self.reanchored = 0  # records the chain had lost, anchored again since start

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        self._reconciled.clear()
        self._thread = threading.Thread(
            target=self._dispatch, name="pipeline-dispatch", daemon=True
        )
        self._thread.start()
        if self.batcher is not None:
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

    def wake(self, row_id: int | None = None) -> None:
        """Something new is due (called by the listener after each ack)."""
        self._wake.set()

    def idle(self) -> bool:
        """Nothing in flight and nothing due now."""
        with self._lock:
            busy = bool(self._inflight) or self._batching
        return not busy and not self.index.due(limit=1)

    def _batched(self, row: Row) -> bool:
        """Whether this row's anchor stage is the batcher's: first versions are batched."""
        return self.batcher is not None and (row.version or 1) == 1

    def _dispatch(self) -> None:
        stages = ("fingerprint", "seal", "put", "forward") if self.batcher else None
        while not self._stop.is_set():
            self._wake.clear()
            if self.pause is not None:
                self.pause()
            if (
                not self._reconciled.is_set()
                and time.monotonic() >= self._reconcile_at
                and not (self._reconciler is not None and self._reconciler.is_alive())
            ):  # on its own thread: a chain that times out must not hold back the other stages
                self._reconciler = threading.Thread(
                    target=self._try_reconcile, name="pipeline-reconcile", daemon=True
                )
                self._reconciler.start()
            for row in self.index.due(limit=256, stages=stages):
                if row.stage == "anchor" and not self._reconciled.is_set():
                    continue  # no new anchor before the recorded ones are checked
                self._submit(row.id)
            self._wake.wait(0.25)

    def _submit(self, row_id: int) -> None:
        with self._lock:
            if row_id in self._inflight:
                return
            self._inflight.add(row_id)
        self._pool.submit(self._run, row_id)

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
                self._anchor(self.index.get(row.id), advance=False)
                self.reanchored += 1
            elif row.tx_hash not in relanded:  # a lost batch is sent again whole: same root
                relanded.add(str(row.tx_hash))
                for batch in self.index.reopen_batches(str(row.tx_hash)):
                    self._land(batch)
                    self.reanchored += batch.count
        self._reconciled.set()
        self._wake.set()
        return len(lost)

    def _run(self, row_id: int) -> None:
        try:
            self.process(row_id)
        finally:
            with self._lock:
                self._inflight.discard(row_id)
            self._wake.set()

    def process(self, row_id: int) -> str:
        """Run the row's stages until it is done or a stage must wait; returns its stage."""
        while True:
            row = self.index.get(row_id)
            step = getattr(self, f"_stage_{row.stage}", None)
            if step is None:
                return row.stage
            if row.stage == "anchor" and self._batched(row):
                self._batch_wake.set()  # the batch thread takes it from here
                return row.stage
            if self.pause is not None:
                self.pause()
            try:
                step(row)
            except Exception as exc:  # every failure is recorded on the row, with its reason
                self._failed(row, exc)
                return row.stage
            self._succeeded(row)

    def _failed(self, row: Row, exc: Exception) -> None:
        reason = f"{row.stage}: {type(exc).__name__}: {exc}"[:500]
        if is_transient(exc):
            retry_in = backoff(row.attempts, cap=TRANSIENT_CAP_S)
            level = logging.INFO if isinstance(exc, MustWait) else logging.WARNING
            log.log(
                level, "row %d (%s): %s; retry in %.1f s", row.id, _short(row), reason, retry_in
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
                row.id, _short(row), reason, row.strikes + 1, row.id,
            )  # fmt: skip
            self.index.park(row.id, reason)
        else:
            retry_in = backoff(row.strikes)
            log.warning(
                "row %d (%s): %s; attempt %d of %d, retry in %.1f s",
                row.id, _short(row), reason, row.strikes + 1, PERMANENT_ATTEMPTS, retry_in,
            )  # fmt: skip
            self.index.fail(row.id, reason, retry_in=retry_in, permanent=True)

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
                    self._land(batch)
                rows = self.index.due_unbatched("anchor", limit=4 * gatherer.max_size)
                for row in rows:
                    if not self._batched(row):
                        self._submit(row.id)  # a new version: anchored on its own
                first = [row for row in rows if self._batched(row)]
                by_id = {row.id: row for row in first}
                now = time.monotonic()
                gatherer.offer([row.id for row in first], now)
                while not self._stop.is_set() and (chosen := gatherer.take(now)) is not None:
                    batch = self.batcher.open([(i, _anchor_item(by_id[i])) for i in chosen])
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
        assert self.batcher is not None
        rows = [self.index.get(row_id) for row_id in batch.members]
        try:
            results = self.batcher.land(batch, [_anchor_item(row) for row in rows])
        except Exception as exc:  # retried whole: same members, same root
            self._batch_failed(batch, rows, exc)
            return
        failpoints.hit("pipeline.after_anchor")
        first = results[0]
        assert first.batch_id is not None
        self.index.close_batch(
            batch.id, batch_id=first.batch_id, tx_hash=first.tx_hash,
            block_number=first.block_number,
            rows={
                row.id: {
                    # a re-landed batch (the chain lost it) leaves its forwarded rows as
                    # they were: their spool copies are gone and Orthanc holds them
                    "stage": row.stage if row.stage in FORWARDED else "forward",
                    "tx_hash": result.tx_hash,
                    "block_number": result.block_number, "block_time": result.block_time,
                    "recorder": result.recorder, "batch_id": result.batch_id,
                    "leaf_index": result.leaf_index, "proof": result.proof, "attempts": 0,
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
            and self._reconciled.is_set()
            and self._thread is not None
        ):
            log.info("the chain is unreachable: recorded anchors are checked again once it is back")
            self._reconcile_attempts = 0
            self._reconcile_at = time.monotonic()
            self._reconciled.clear()

    # -- stages ----------------------------------------------------------------------------

    def _stage_fingerprint(self, row: Row) -> None:
        failpoints.hit("pipeline.before_fingerprint")
        path = self.spool.path_of(row.entry_id)
        try:
            with path.open("rb") as stream:
                limit, scratch = self.max_instance_bytes, self.spool.incoming
                fp, header = fingerprint_and_header(stream, limit=limit, scratch=scratch)
        except DatasetUnreadable as exc:
            # The listener checked this before acking; reaching here means the spool file
            # changed under us. Keep it and say so: an acked image is never dropped.
            now = _file_sha256(path)
            if row.spool_sha256 is not None and now != row.spool_sha256:
                self._swapped(row, f"it no longer parses and its SHA-256 is {now.hex()[:16]}…")
            raise DatasetUnreadable(f"spooled instance no longer parses: {exc}") from exc
        if row.spool_sha256 is not None and fp.file_sha256 != row.spool_sha256:
            self._swapped(row, f"its SHA-256 is now {fp.file_sha256.hex()[:16]}…")
        record_key = keys.record_key(self.pseudonym_key, row.sop_instance_uid)
        values = {
            "record_key": record_key,
            "patient_key": keys.patient_key(
                self.pseudonym_key, header.issuer_of_patient_id, header.patient_id
            ),
            "digest": fp.digest,
            "pixel_digest": fp.pixel_digest,
            "transfer_syntax": fp.transfer_syntax,
            "modality": header.modality,
            "body_part": header.body_part,
            "study_instance_uid": header.study_instance_uid,
            "series_instance_uid": header.series_instance_uid,
            "object_name": object_name(record_key, fp.digest),
        }
        stage, version, duplicate_of = self.index.claim_fingerprint(row.id, values)
        if stage == "duplicate":
            log.info("row %d is a duplicate of row %s (same UID, same bytes)", row.id, duplicate_of)
            self.spool.discard(row.entry_id)
        elif version > 1:
            log.warning(
                "row %d: new version %d of record %s (same UID, different bytes); it will "
                "supersede the previous one",
                row.id,
                version,
                record_key.hex()[:12],
            )

    def _swapped(self, row: Row, what: str) -> None:
        """Refuse a spool file changed after the ack: alert, then park the row (raises)."""
        assert row.spool_sha256 is not None
        reason = (
            f"spool file changed after the ack: {what}, not "
            f"{row.spool_sha256.hex()[:16]}… as received; not sealed (file kept)"
        )
        log.error("row %d (%s): %s", row.id, _short(row), reason)
        if self.alerts is not None:
            self.alerts.record(
                kind="spool_swapped",
                source="pipeline",
                sop_instance_uid=row.sop_instance_uid,
                detail=f"row {row.id}: {reason}",
            )
        raise SpoolSwapped(reason)

    def _sealed_path(self, row: Row) -> Path:
        return self.sealed_dir / f"{row.entry_id}.seal"

    def _stage_seal(self, row: Row) -> None:
        assert row.record_key is not None and row.digest is not None
        target = self._sealed_path(row)
        tmp = target.with_suffix(".tmp")
        kek = self.keyring.current
        sealed = hashlib.sha256()  # what is sealed must be what was acked and fingerprinted
        with self.spool.path_of(row.entry_id).open("rb") as plain, tmp.open("wb") as out:
            seal(plain, out, record_key=row.record_key, digest=row.digest, kek=kek, hasher=sealed)
            out.flush()
            os.fsync(out.fileno())
        if row.spool_sha256 is not None and sealed.digest() != row.spool_sha256:
            tmp.unlink(missing_ok=True)
            self._swapped(row, f"it changed before sealing: {sealed.hexdigest()[:16]}…")
        tmp.rename(target)
        fsync_dir(self.sealed_dir)
        self.index.update(row.id, stage="put", kek_id=kek.kek_id, attempts=0, last_error=None)

    def _stage_put(self, row: Row) -> None:
        assert row.object_name is not None
        sealed = self._sealed_path(row)
        if not sealed.exists():
            if self.store.exists(row.object_name):  # put done, crash before the advance
                self.index.update(row.id, stage="anchor", attempts=0, last_error=None)
                return
            self.index.update(row.id, stage="seal")
            return
        failpoints.hit("pipeline.before_put")
        with sealed.open("rb") as source:
            self.store.put(row.object_name, source, length=sealed.stat().st_size)
        failpoints.hit("pipeline.after_put")
        self.index.update(row.id, stage="anchor", attempts=0, last_error=None)
        sealed.unlink(missing_ok=True)

    def _stage_anchor(self, row: Row) -> None:
        assert row.record_key and row.patient_key and row.digest and row.pixel_digest
        older = [
            other
            for other in self.index.versions_of(row.record_key, exclude=row.id)
            if other.id < row.id and other.stage in ("fingerprint", "seal", "put", "anchor")
        ]
        if older:
            raise MustWait(f"waiting for row {older[0].id}, an older version, to be anchored")
        if not self._reconciled.is_set():
            raise MustWait("the anchors recorded so far are not checked against the chain yet")
        self._anchor(row, advance=True)

    def _anchor(self, row: Row, *, advance: bool) -> None:
        """Anchor the row's version and record where; ``advance`` moves it on to forward."""
        assert row.record_key and row.patient_key and row.digest and row.pixel_digest
        with self._anchor_lock(row.record_key):
            result = self.anchorer.anchor(_anchor_item(row), batched=self._batched_origin(row))
        failpoints.hit("pipeline.after_anchor")
        progress = {"stage": "forward", "attempts": 0, "last_error": None} if advance else {}
        self.index.update(
            row.id,
            tx_hash=result.tx_hash,
            block_number=result.block_number,
            block_time=result.block_time,
            recorder=result.recorder,
            batch_id=result.batch_id,
            leaf_index=result.leaf_index,
            proof=result.proof,
            **progress,
        )

    def _batched_origin(self, row: Row) -> BatchedLeaf | None:
        """The batch leaf (with its proof) that first anchored ``row``'s key, if one did."""
        assert row.record_key is not None
        for other in self.index.versions_of(row.record_key, exclude=row.id):
            if other.batch_id is not None and other.proof is not None:
                assert other.patient_key and other.digest and other.pixel_digest
                return BatchedLeaf(
                    patient_key=other.patient_key, digest=other.digest,
                    pixel_digest=other.pixel_digest, batch_id=other.batch_id,
                    proof=decode_proof(other.proof),
                )  # fmt: skip
        return None

    def _anchor_lock(self, record_key: bytes) -> threading.Lock:
        with self._lock:
            return self._anchor_locks.setdefault(record_key, threading.Lock())

    def _stage_forward(self, row: Row) -> None:
        assert row.digest is not None
        outcome = self.forwarder.forward(self.spool.path_of(row.entry_id), digest=row.digest)
        if outcome.conflict:
            log.warning("row %d: version conflict in the PACS: %s", row.id, outcome.conflict)
        self.index.update(
            row.id,
            stage="conflict" if outcome.conflict else "committed",
            orthanc_id=outcome.orthanc_id,
            conflict=outcome.conflict,
            committed_at=time.time(),
            attempts=0,
            last_error=None,
        )
        self.spool.discard(row.entry_id)


def _file_sha256(path: Path) -> bytes:
    """SHA-256 of a whole file (only where the fingerprint could not take it)."""
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").digest()


def _anchor_item(row: Row) -> AnchorItem:
    assert row.record_key and row.patient_key and row.digest and row.pixel_digest
    return AnchorItem(
        record_key=row.record_key,
        patient_key=row.patient_key,
        digest=row.digest,
        pixel_digest=row.pixel_digest,
        body_part=row.body_part or "",
        modality=row.modality or "",
    )


def _short(row: Row) -> str:
    """How a row appears in logs: its record key prefix, never patient data."""
    return row.record_key.hex()[:12] if row.record_key else f"entry {row.entry_id[:8]}"
