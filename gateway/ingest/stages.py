"""The work of each stage after the ack, on one row; the order is the stage table's (pipeline.py).

Each step reads its row, does one idempotent piece of work, and returns what the index
must record (a :class:`StepDone`: the work's result and the next stage the table names, in
one update) with what follows that update (a spool file discarded, a sealed copy removed).
:meth:`Steps.commit` records many rows' steps in one transaction: the pipeline runs a
round of rows' steps at once and commits them together. A crash between the work and the
commit repeats the work, which is why every step is idempotent: the object name is
content-addressed, the anchor looks the record up on the ledger before sending, and
Orthanc answers ``AlreadyStored`` to identical bytes.

The outside parts the steps use are small protocols (:class:`Anchorer`,
:class:`Forwarder`, and the store's ``ObjectStore``); ``gateway/ingest/memory.py`` holds
in-memory stand-ins for unit tests, ``anchor.py`` and ``forward.py`` the real ones.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway import failpoints
from gateway.core import keys
from gateway.core.fingerprint import MAX_INSTANCE_BYTES, fingerprint_and_header
from gateway.core.keys import Kek, Keyring, StudyKey
from gateway.core.merkle import decode_proof
from gateway.core.seal import seal
from gateway.errors import DatasetUnreadable, MustWait, SpoolSwapped
from gateway.index.db import Index, Landed, Row, StageMove
from gateway.index.erasure import StudyKeys, erased_digest
from gateway.ingest.spool import Spool, fsync_dir
from gateway.ledger.types import BatchedLeaf
from gateway.store import ObjectStore
from gateway.store.base import AdoptingStore
from gateway.trust.alerts import Alerts

log = logging.getLogger(__name__)


# -- what the anchor and forward steps need from outside -----------------------------------


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


@dataclass(frozen=True)
class ForwardOutcome:
    """What the PACS made of an instance."""

    orthanc_id: str
    conflict: str | None


class Forwarder(Protocol):
    """The forward stage: put the received Part-10 bytes into the PACS."""

    def forward(self, path: Path, *, digest: bytes) -> ForwardOutcome: ...


# -- one row of the stage table --------------------------------------------------------------


@dataclass(frozen=True)
class StepDone:
    """A step's work on one row, done: what the index records, and what follows the commit.

    ``then`` runs only once the move is committed (it is given where the row landed): a
    file the row no longer needs is removed only when the index no longer needs it.
    ``sync`` is a directory whose entries (a file the step renamed into it) must be
    durable before the move is recorded: fsynced once for every step of a round.
    """

    move: StageMove
    then: Callable[[Landed], None] | None = None
    sync: Path | None = None


Step = Callable[["Steps", Row, "Stage"], StepDone]
"""A stage's work: ``step(steps, row, stage)``; what moves the row on (to ``stage.next``)."""


@dataclass(frozen=True)
class Stage:
    """One row of the stage table: what runs at ``name``, and where the row goes from there.

    Attributes
    ----------
    name:
        The stage, as the index names it (``gateway.index.db.STAGES``).
    step:
        The :class:`Steps` method that does its work.
    next:
        Where the row goes once the work is done.
    aside:
        Where the step sends a row off the flow instead: a duplicate, a conflict.
    back:
        Where the step sends a row whose earlier stage's work was lost.
    batched:
        With a batcher, first versions wait here for the batch thread, not for the pool.
    anywhere:
        Its step reads no file of the receiving node's (spool, sealed dir): a row here may
        be worked by any gateway node sharing the index.
    """

    name: str
    step: Step
    next: str
    aside: str | None = None
    back: str | None = None
    batched: bool = False
    anywhere: bool = False


# -- the steps ---------------------------------------------------------------------------------


class Steps:
    """The work of each stage, on the parts the pipeline was given.

    Parameters
    ----------
    index, spool, store:
        The local index, the received-instance spool and the object store.
    keyring, pseudonym_key:
        The KEKs wrap each study's key (which seals its objects, format v2); the pseudonym
        key names records, studies and patients.
    anchorer, forwarder:
        The ledger and PACS sides of the anchor and forward stages.
    sealed_dir:
        Where sealed objects wait between the seal and put stages.
    max_instance_bytes:
        The most bytes a deflated dataset may inflate to, in a temporary file on the
        spool's filesystem.
    alerts:
        Where a spool file changed after the ack is reported (``spool_swapped``).
    anchors_checked:
        Set once the anchors recorded before start are checked against the chain; no new
        anchor is sent before.
    unanchored:
        The stages a row is at before it is anchored: a newer version waits for an older
        one there.
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
        anchors_checked: threading.Event,
        unanchored: tuple[str, ...],
        max_instance_bytes: int = MAX_INSTANCE_BYTES,
        alerts: Alerts | None = None,
    ) -> None:
        self.index = index
        self.spool = spool
        self.store = store
        self.keyring = keyring
        self.pseudonym_key = pseudonym_key
        self.anchorer = anchorer
        self.forwarder = forwarder
        self.sealed_dir = sealed_dir
        self.anchors_checked = anchors_checked
        self.unanchored = unanchored
        self.max_instance_bytes = max_instance_bytes
        self.alerts = alerts
        self.study_keys = StudyKeys(index, keyring)
        self._lock = threading.Lock()
        self._anchor_locks: dict[bytes, threading.Lock] = {}
        sealed_dir.mkdir(parents=True, exist_ok=True)

    def _advance(
        self, row: Row, to: str, *, then: Callable[[Landed], None] | None = None,
        sync: Path | None = None, **values: Any,
    ) -> StepDone:  # fmt: skip
        """The work's ``values`` and the move to ``to``, as one update of the row."""
        move = StageMove(row.id, to, {"attempts": 0, "last_error": None, **values})
        return StepDone(move, then, sync)

    def commit(
        self, done: Sequence[StepDone], *, release: tuple[str, Sequence[int]] | None = None
    ) -> list[Landed]:
        """Record these rows' steps in one transaction (:meth:`record`), then run what
        follows each (:meth:`after`)."""
        landed = self.record(done, release=release)
        for step, where in zip(done, landed, strict=True):
            self.after(step, where)
        return landed

    def record(
        self, done: Sequence[StepDone], *, release: tuple[str, Sequence[int]] | None = None
    ) -> list[Landed]:
        """Record these rows' steps in one transaction; where each row landed.

        ``release`` (worker, row ids): claims that worker drops in the same transaction.
        The directories the steps name (``sync``) are fsynced first, each once.
        """
        for directory in dict.fromkeys(step.sync for step in done if step.sync is not None):
            fsync_dir(directory)
        return self.index.advance_many([step.move for step in done], release=release)

    def after(self, step: StepDone, landed: Landed) -> None:
        """What follows a recorded step (removing a file the row no longer needs).

        Best effort: a failure is logged, and the file is left behind, never needed again.
        """
        if step.then is None:
            return
        try:
            step.then(landed)
        except OSError:
            log.exception("row %d: cleaning up after its step failed", step.move.row_id)

    # -- fingerprint: digests and keys of the acked bytes; a new version or a duplicate ------

    def fingerprint(self, row: Row, stage: Stage) -> StepDone:
        assert stage.aside is not None
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
        if erased_digest(self.index, fp.digest):
            return self._refuse_erased(row)
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
        # new, new version or duplicate: decided in the commit, under the record key's lock
        move = StageMove(row.id, stage.next, values, duplicate_stage=stage.aside)
        return StepDone(move, lambda landed: self._fingerprinted(row, landed, stage, record_key))

    def _fingerprinted(self, row: Row, landed: Landed, stage: Stage, record_key: bytes) -> None:
        """After the commit: a duplicate's spool copy goes; a new version is logged."""
        if landed.stage == stage.aside:
            log.info(
                "row %d is a duplicate of row %s (same UID, same bytes)", row.id,
                landed.duplicate_of,
            )  # fmt: skip
            self.spool.discard(row.entry_id)
        elif landed.version > 1:
            log.warning(
                "row %d: new version %d of record %s (same UID, different bytes); it will "
                "supersede the previous one", row.id, landed.version, record_key.hex()[:12],
            )  # fmt: skip

    def _refuse_erased(self, row: Row) -> StepDone:
        """An erased image came back (same dataset digest): never kept, and alerted."""
        reason = "the image was erased on request; a copy sent again is not kept"
        log.error("row %d: %s", row.id, reason)
        if self.alerts is not None:
            self.alerts.record(
                kind="erased", source="pipeline", sop_instance_uid=row.sop_instance_uid,
                detail=f"row {row.id}: {reason}",
            )  # fmt: skip
        move = StageMove(row.id, "rejected", {"last_error": reason})
        return StepDone(move, lambda _: self.spool.discard(row.entry_id))

    def _swapped(self, row: Row, what: str) -> None:
        """Refuse a spool file changed after the ack: alert, then park the row (raises)."""
        assert row.spool_sha256 is not None
        reason = (
            f"spool file changed after the ack: {what}, not "
            f"{row.spool_sha256.hex()[:16]}… as received; not sealed (file kept)"
        )
        log.error("row %d (%s): %s", row.id, describe(row), reason)
        if self.alerts is not None:
            self.alerts.record(
                kind="spool_swapped",
                source="pipeline",
                sop_instance_uid=row.sop_instance_uid,
                detail=f"row {row.id}: {reason}",
            )
        raise SpoolSwapped(reason)

    # -- seal and put: the encrypted copy, then the object store ------------------------------

    def sealed_path(self, row: Row) -> Path:
        """Where the row's sealed object waits between the seal and put stages."""
        return self.sealed_dir / f"{row.entry_id}.seal"

    def seal(self, row: Row, stage: Stage) -> StepDone:
        assert row.record_key is not None and row.digest is not None
        target = self.sealed_path(row)
        tmp = target.with_suffix(".tmp")
        key, kek_id = self._sealing_key(row)
        sealed = hashlib.sha256()  # what is sealed must be what was acked and fingerprinted
        with self.spool.path_of(row.entry_id).open("rb") as plain, tmp.open("wb") as out:
            seal(plain, out, record_key=row.record_key, digest=row.digest, kek=key, hasher=sealed)
            out.flush()
            os.fsync(out.fileno())
        if row.spool_sha256 is not None and sealed.digest() != row.spool_sha256:
            tmp.unlink(missing_ok=True)
            self._swapped(row, f"it changed before sealing: {sealed.hexdigest()[:16]}…")
        tmp.rename(target)  # its directory is fsynced before the move is recorded
        return self._advance(row, stage.next, sync=self.sealed_dir, kek_id=kek_id)

    def _sealing_key(self, row: Row) -> tuple[Kek | StudyKey, str]:
        """The study's key (format v2, erasable) and the KEK wrapping it; a row without a
        study UID (none reach here: the listener refuses them) is sealed under the KEK."""
        if row.study_instance_uid is None:
            return self.keyring.current, self.keyring.current.kek_id
        ref = keys.study_ref(self.pseudonym_key, row.study_instance_uid)
        return self.study_keys.for_study(ref)

    def put(self, row: Row, stage: Stage) -> StepDone:
        """Store the sealed copy: a filesystem store on the same device takes the file itself
        (a rename, ``FilesystemStore.adopt``); any other store gets a copy."""
        assert row.object_name is not None and stage.back is not None
        sealed = self.sealed_path(row)
        if not sealed.exists():
            if self.store.exists(row.object_name):  # put done, crash before the advance
                return self._advance(row, stage.next)
            return StepDone(StageMove(row.id, stage.back, {}))  # the sealed copy is lost
        failpoints.hit("pipeline.before_put")
        length = sealed.stat().st_size
        store = self.store
        if not (
            isinstance(store, AdoptingStore) and store.adopt(row.object_name, sealed, length=length)
        ):
            with sealed.open("rb") as source:  # another device, or S3: a copy
                store.put(row.object_name, source, length=length)
        failpoints.hit("pipeline.after_put")
        return self._advance(row, stage.next, then=lambda _: sealed.unlink(missing_ok=True))

    # -- anchor: the record on the ledger --------------------------------------------------------

    def anchor(self, row: Row, stage: Stage) -> StepDone:
        assert row.record_key and row.patient_key and row.digest and row.pixel_digest
        older = [
            other
            for other in self.index.versions_of(row.record_key, exclude=row.id)
            if other.id < row.id and other.stage in self.unanchored
        ]
        if older:
            raise MustWait(f"waiting for row {older[0].id}, an older version, to be anchored")
        if not self.anchors_checked.is_set():
            raise MustWait("the anchors recorded so far are not checked against the chain yet")
        return self._advance(row, stage.next, **self._anchored(row))

    def reanchor(self, row: Row) -> None:
        """Anchor the row's version again where it stands (the chain lost its transaction)."""
        self.index.update(row.id, **self._anchored(row))

    def _anchored(self, row: Row) -> dict[str, Any]:
        """Anchor the row's version; the columns that say where it landed."""
        with self._anchor_lock(row):
            result = self.anchorer.anchor(anchor_item(row), batched=self._batched_origin(row))
        failpoints.hit("pipeline.after_anchor")
        return {
            "tx_hash": result.tx_hash,
            "block_number": result.block_number,
            "block_time": result.block_time,
            "recorder": result.recorder,
            "batch_id": result.batch_id,
            "leaf_index": result.leaf_index,
            "proof": result.proof,
            "anchored_at": time.time(),
        }

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

    def _anchor_lock(self, row: Row) -> threading.Lock:
        """One anchor at a time per record key: versions are sent in order."""
        assert row.record_key is not None
        with self._lock:
            return self._anchor_locks.setdefault(row.record_key, threading.Lock())

    # -- forward: the PACS -----------------------------------------------------------------------

    def forward(self, row: Row, stage: Stage) -> StepDone:
        assert row.digest is not None and stage.aside is not None
        outcome = self.forwarder.forward(self.spool.path_of(row.entry_id), digest=row.digest)
        if outcome.conflict:
            log.warning("row %d: version conflict in the PACS: %s", row.id, outcome.conflict)
        return self._advance(
            row,
            stage.aside if outcome.conflict else stage.next,
            orthanc_id=outcome.orthanc_id,
            conflict=outcome.conflict,
            committed_at=time.time(),
            then=lambda _: self.spool.discard(row.entry_id),
        )


def object_name(record_key: bytes, digest: bytes) -> str:
    """``<hex record_key>/<hex digest>``: no PHI, and a new version never overwrites."""
    return f"{record_key.hex()}/{digest.hex()}"


def anchor_item(row: Row) -> AnchorItem:
    """What the ledger records for the row's version."""
    assert row.record_key and row.patient_key and row.digest and row.pixel_digest
    return AnchorItem(
        record_key=row.record_key,
        patient_key=row.patient_key,
        digest=row.digest,
        pixel_digest=row.pixel_digest,
        body_part=row.body_part or "",
        modality=row.modality or "",
    )


def describe(row: Row) -> str:
    """How a row appears in logs: its record key prefix, never patient data."""
    return row.record_key.hex()[:12] if row.record_key else f"entry {row.entry_id[:8]}"


def _file_sha256(path: Path) -> bytes:
    """SHA-256 of a whole file (only where the fingerprint could not take it)."""
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").digest()
