"""Erasure by crypto-shredding, in two steps: a dry run lists what would go, a confirmation
carrying its hash erases it; the ledger keeps only pseudonymous keys and digests.

A plan names every version the index holds of the studies asked for (by Study Instance
UID, or every study of a patient), and what is left of each: the sealed object, the spool
and sealed-stage copies, the PACS copy, the chain record. Its hash covers the *set* (the
studies, and each version's record key and digest), not the progress: a confirmation is
refused if the set changed since the dry run (an image arrived, or a version was
removed), and running the same confirmation again after a crash finishes the job.

The steps, each skipping what is done already, in the order that never leaves an erased
study looking intact:

1. the study keys are destroyed (crypto-shredding: every sealed copy, kept anywhere, is
   now unopenable; the verifier says the original is unusable);
2. the sealed objects, the sealed-stage files and the spool copies are deleted;
3. the instances are deleted from the PACS;
4. each record is retired on chain with reason ``erased`` (``retireBatchedImage`` with its
   proof for a batched one), unless it is already;
5. the index rows move to stage ``erased`` (their evidence kept: verify and audit say
   ``erased``, and a copy that reappears is recognised by its digest);
6. the erasure log says ``done``, and the access trail records who confirmed it.

Images still in the pipeline do not stop a confirmation. Before step 1 the confirmation
names its rows in the index (``erase_plan``); the pipeline's check at each stage's entry
(:func:`erase_if_named`) then erases such a row instead of sealing, storing, anchoring or
forwarding it. The confirmation waits, before step 2, for the rows a worker is running a
step on right now, or that sit in a Merkle batch not yet landed (they may still be
anchored, and are then retired in step 4).

Every node sheds its own copies: the node that confirms deletes what it holds, and each
node's :class:`Shedder` deletes the spool and sealed-stage files of erased rows that it
holds, then notes in the index that it has shed the erasure (:meth:`Eraser.status`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway import failpoints
from gateway.core import keys
from gateway.core.merkle import InclusionProof, decode_proof
from gateway.core.seal import STUDY_KEY_VERSION, read_seal_header, reseal_v2
from gateway.errors import (
    ErasureChanged,
    ErasureInFlight,
    ErasureNotFound,
    InstanceMissing,
    KeyShredded,
    OldKeksInUse,
)
from gateway.index import erasure as log_
from gateway.index.db import Index, Row
from gateway.index.erasure import StudyKeys, study_shredded, vacuum_study_keys
from gateway.index.queries import is_version
from gateway.ledger.types import Anchor, Retirement, RetireReason
from gateway.store.base import ObjectStore
from gateway.store.rewrap import rewrap_store

log = logging.getLogger(__name__)

#: Why an erasure is asked for: a fixed set, so that the log and the trail carry no free text.
REASONS = ("gdpr_art17", "patient_request", "retention_expired", "legal_order", "wrong_patient")


class SpoolFiles(Protocol):
    """Where received bytes wait (:class:`gateway.ingest.spool.Spool`)."""

    def path_of(self, entry_id: str) -> Path: ...


class PacsCopies(Protocol):
    """The PACS as erasure uses it (:class:`gateway.pacs.client.Pacs`)."""

    def find(self, sop_instance_uid: str) -> str | None: ...

    def delete(self, orthanc_id: str) -> None: ...


class Retirements(Protocol):
    """The contract as erasure uses it (:class:`gateway.ledger.client.XrayLedger`)."""

    def retirement_of(self, record_key: bytes) -> Retirement | None: ...

    def retire_image(self, *, record_key: bytes, reason: RetireReason | str) -> Anchor: ...

    def retire_batched_image(
        self, *, record_key: bytes, patient_key: bytes, digest: bytes, pixel_digest: bytes,
        batch_id: int, proof: InclusionProof, reason: RetireReason | str,
    ) -> Anchor: ...  # fmt: skip


#: What to do about v1 objects: erasure deletes them, but a kept copy opens with the KEK.
V1_REMEDY = (
    "some objects are sealed in format v1 (under the KEK, before study keys): erasing deletes"
    " them, but a copy kept elsewhere still opens with the KEK. Run `xray-gateway keys rotate"
    " --retire-old` (every node stopped; then delete the old KEK files copied to other nodes):"
    " it re-seals remaining v1 objects under their study keys, re-wraps every key under a new"
    " KEK and destroys the old KEKs."
)


@dataclass(frozen=True)
class PlannedInstance:
    """One version to erase, and what is left of it (pseudonymous keys only)."""

    record_key: str
    digest: str
    study: str
    object: bool
    spool: bool
    pacs: bool
    chain: str  # "direct", "batch <id>", "none" (never anchored), "retired: <reason>"
    sealed_v1: bool = False  # its object is format v1: a kept copy opens with the KEK


@dataclass(frozen=True)
class ErasureSet:
    """What an erasure would remove, and the hash a confirmation must carry.

    ``studies`` are pseudonymous study references (hex), ``study_keys`` their key ids;
    nothing here is a UID or a patient identifier, so a plan may be logged.
    """

    plan_hash: str
    reason: str
    studies: tuple[str, ...]
    study_keys: tuple[str, ...]
    instances: tuple[PlannedInstance, ...]
    rows: tuple[Row, ...] = field(repr=False, compare=False)
    uids: tuple[str, ...] = field(repr=False, compare=False)

    def public(self) -> dict[str, Any]:
        """The plan as the CLI and the API show it, and the log keeps it."""
        return {
            "hash": self.plan_hash,
            "reason": self.reason,
            "studies": list(self.studies),
            "study_keys": list(self.study_keys),
            "instances": [vars(i) for i in self.instances],
            "counts": {
                "instances": len(self.instances),
                "objects": sum(i.object for i in self.instances),
                "spool_copies": sum(i.spool for i in self.instances),
                "pacs_copies": sum(i.pacs for i in self.instances),
                "chain_records": sum(i.chain != "none" for i in self.instances),
                "v1_objects": sum(i.sealed_v1 for i in self.instances),
            },
            "remedy": V1_REMEDY if any(i.sealed_v1 for i in self.instances) else None,
        }


@dataclass
class Eraser:
    """Plans and carries out erasures over the gateway's parts.

    Parameters
    ----------
    index, store, pacs, ledger:
        The index (rows, study keys, the log), the object store, Orthanc, and the xray
        contract writing as the records' owner (the recorder) or the admin.
    keyring, pseudonym_key:
        Open the study keys; name studies, patients and records.
    spool, sealed_dir:
        Where received bytes and sealed-but-not-stored objects wait on this node.
    trail:
        Records the confirmation in the access trail: ``(who, who_kind, route)``.
    node:
        This gateway node's id: a confirmation notes that this node has shed its copies.
    settle_s:
        How long a confirmation waits for the set's rows that the pipeline is working
        right now (then :class:`~gateway.errors.ErasureInFlight`: confirm again).
    """

    index: Index
    store: ObjectStore
    pacs: PacsCopies
    ledger: Retirements
    study_keys: StudyKeys
    pseudonym_key: bytes
    spool: SpoolFiles
    sealed_dir: Path
    trail: Callable[[str, str, str], None] | None = None
    node: str = ""
    settle_s: float = 60.0

    # -- step 1: the dry run -------------------------------------------------------------

    def plan(
        self,
        *,
        reason: str,
        asked_by: str,
        study: str | None = None,
        patient: tuple[str, str] | None = None,
    ) -> ErasureSet:
        """List what erasing ``study`` (a UID) or ``patient`` (issuer, ID) would remove,
        and keep the plan in the erasure log under its hash.

        Raises
        ------
        ErasureNotFound
            The index holds no image of that study or patient.
        ValueError
            An unknown reason, or neither or both of ``study`` and ``patient``.
        """
        if reason not in REASONS:
            raise ValueError(f"unknown erasure reason {reason!r}: use one of {', '.join(REASONS)}")
        if (study is None) == (patient is None):
            raise ValueError("name either a study or a patient")
        if study is not None and not study.strip():
            raise ErasureNotFound("an empty Study Instance UID names no study")
        studies = [study] if study is not None else self._studies_of(*patient)  # type: ignore[misc]
        made = self._plan(studies, reason)
        if not made.instances:
            raise ErasureNotFound("the gateway holds no image of that study or patient")
        log_.log_plan(
            self.index, plan_hash=made.plan_hash, reason=reason, asked_by=asked_by,
            plan=made.public(),
        )  # fmt: skip
        if self.trail is not None:
            self.trail(asked_by, "admin", f"erasure dry run {made.plan_hash[:16]} ({reason})")
        return made

    def _studies_of(self, issuer: str, patient_id: str) -> list[str]:
        key = keys.patient_key(self.pseudonym_key, issuer, patient_id)
        rows = self.index.query(
            "SELECT DISTINCT study_instance_uid FROM instances"
            " WHERE patient_key = ? AND study_instance_uid IS NOT NULL",
            (key,),
        )
        return sorted(str(uid) for (uid,) in rows)

    def _plan(self, studies: Sequence[str], reason: str) -> ErasureSet:
        refs = {uid: keys.study_ref(self.pseudonym_key, uid).hex() for uid in studies}
        rows = [
            row
            for uid in studies
            for row in self.index.by_study(uid)
            if is_version(row.stage) and row.record_key is not None and row.digest is not None
        ]
        key_ids = self.study_keys.key_ids([bytes.fromhex(ref) for ref in refs.values()])
        instances = tuple(self._planned(row, refs) for row in rows)
        members = sorted((i.record_key, i.digest) for i in instances)
        digest = hashlib.sha256(
            json.dumps({"studies": sorted(refs.values()), "versions": members}).encode()
        ).hexdigest()
        return ErasureSet(
            plan_hash=digest, reason=reason, studies=tuple(sorted(refs.values())),
            study_keys=tuple(sorted(key_ids.values())), instances=instances, rows=tuple(rows),
            uids=tuple(studies),
        )  # fmt: skip

    def _planned(self, row: Row, refs: dict[str, str]) -> PlannedInstance:
        assert row.record_key is not None and row.digest is not None
        return PlannedInstance(
            record_key=row.record_key.hex(),
            digest=row.digest.hex(),
            study=refs[str(row.study_instance_uid)],
            object=row.object_name is not None and self.store.exists(row.object_name),
            spool=self._spooled(row),
            pacs=self.pacs.find(row.sop_instance_uid) is not None,
            chain=self._chain_state(row),
            sealed_v1=self._sealed_v1(row),
        )

    def _sealed_v1(self, row: Row) -> bool:
        if row.object_name is None or not self.store.exists(row.object_name):
            return False
        with self.store.open(row.object_name) as sealed:
            return read_seal_header(sealed).version != STUDY_KEY_VERSION

    def _spooled(self, row: Row) -> bool:
        return self.spool.path_of(row.entry_id).exists() or self._sealed_file(row).exists()

    def _sealed_file(self, row: Row) -> Path:
        return self.sealed_dir / f"{row.entry_id}.seal"

    def _chain_state(self, row: Row) -> str:
        assert row.record_key is not None
        retired = self.ledger.retirement_of(row.record_key)
        if retired is not None:
            return f"retired: {retired.reason}"
        if row.batch_id is not None and row.proof is not None:
            return f"batch {row.batch_id}"
        return "direct" if row.tx_hash is not None else "none"

    # -- step 2: the confirmation -------------------------------------------------------

    def confirm(self, plan_hash: str, *, reason: str, confirmed_by: str) -> ErasureSet:
        """Erase what the dry run ``plan_hash`` listed, if the set is still the same.

        Run again after a crash, it finishes what is left (each step skips what is done).

        Raises
        ------
        ErasureChanged
            No dry run made that hash, the reason differs, or the set changed since.
        """
        logged = log_.erasure(self.index, plan_hash)
        if logged is None or logged.reason != reason:
            raise ErasureChanged(
                "no dry run with that hash and reason: run the dry run and confirm its hash"
            )
        studies = self._uids_of(logged.plan)
        now = self._plan(studies, reason)
        if now.plan_hash != plan_hash:
            raise ErasureChanged(
                "the set changed since the dry run (images arrived or went): run it again"
            )
        log_.mark(self.index, plan_hash, log_.ERASING, by=confirmed_by)
        self._erase(now)
        log_.mark(self.index, plan_hash, log_.DONE)
        if self.trail is not None:
            self.trail(confirmed_by, "admin", f"erasure {plan_hash[:16]} ({reason})")
        return now

    def status(self, plan_hash: str) -> dict[str, Any]:
        """An erasure as the log holds it, and which nodes have shed their local copies.

        Raises
        ------
        ErasureNotFound
            No dry run made that hash.
        """
        logged = log_.erasure(self.index, plan_hash)
        if logged is None:
            raise ErasureNotFound("no erasure with that hash")
        nodes = log_.shedding(self.index, plan_hash)
        return {
            "hash": logged.plan_hash, "reason": logged.reason, "state": logged.state,
            "asked_by": logged.asked_by, "planned_at": logged.planned_at,
            "confirmed_by": logged.confirmed_by, "confirmed_at": logged.confirmed_at,
            "done_at": logged.done_at, "counts": logged.plan.get("counts", {}),
            "nodes": nodes,
            "nodes_not_shed": sorted(node for node, seen in nodes.items() if not seen["shed"]),
        }  # fmt: skip

    def _uids_of(self, plan: dict[str, Any]) -> list[str]:
        """The study UIDs behind the plan's pseudonymous references (read from the index)."""
        wanted = set(plan.get("studies", []))
        rows = self.index.query(
            "SELECT DISTINCT study_instance_uid FROM instances WHERE study_instance_uid IS NOT NULL"
        )
        return sorted(
            str(uid) for (uid,) in rows
            if keys.study_ref(self.pseudonym_key, str(uid)).hex() in wanted
        )  # fmt: skip

    def _erase(self, plan: ErasureSet) -> None:
        log_.name_rows(self.index, plan.plan_hash, [row.id for row in plan.rows])
        self.study_keys.destroy([bytes.fromhex(ref) for ref in plan.studies])
        vacuum_study_keys(self.index)
        failpoints.hit("erasure.after_shred")
        self._settle(plan)
        rows = [self.index.get(row.id) for row in plan.rows]  # as the pipeline left them
        for row in rows:
            self._delete_copies(row)
        failpoints.hit("erasure.after_delete")
        retired: set[bytes] = set()
        for row in sorted(rows, key=lambda r: -(r.version or 0)):  # newest version first
            assert row.record_key is not None
            if row.record_key not in retired:
                self._retire(row)
                retired.add(row.record_key)
        failpoints.hit("erasure.after_retire")
        with self.index.transaction() as db:
            for row in rows:
                db.execute("UPDATE instances SET stage = 'erased' WHERE id = ?", (row.id,))
        log_.forget_trail_uids(
            self.index, pseudonym_key=self.pseudonym_key, studies=plan.uids,
            sop_uids=[row.sop_instance_uid for row in rows],
        )  # fmt: skip
        log_.record_shed(self.index, plan.plan_hash, node=self.node, files=0)

    def _settle(self, plan: ErasureSet) -> None:
        """Wait while the pipeline works rows of the set: a step under way, or a batch not
        yet landed. Named rows are not worked again (:func:`erase_if_named`).

        Raises
        ------
        ErasureInFlight
            Some are still worked after :attr:`settle_s` (a chain or PACS outage).
        """
        ids = [row.id for row in plan.rows]
        deadline = time.monotonic() + self.settle_s
        while busy := log_.in_flight(self.index, ids):
            if time.monotonic() >= deadline:
                raise ErasureInFlight(
                    f"{len(busy)} images of the set are still being worked by the pipeline (a"
                    " step under way, or a batch not landed); they are erased as they come"
                    " out: confirm again to finish"
                )
            time.sleep(0.1)

    def _delete_copies(self, row: Row) -> None:
        if row.object_name is not None:
            self.store.delete(row.object_name)
        self._sealed_file(row).unlink(missing_ok=True)
        self.spool.path_of(row.entry_id).unlink(missing_ok=True)
        orthanc_id = self.pacs.find(row.sop_instance_uid)
        if orthanc_id is not None:
            # gone between the two calls is what was wanted
            with contextlib.suppress(InstanceMissing):
                self.pacs.delete(orthanc_id)

    def _retire(self, row: Row) -> None:
        assert row.record_key is not None
        if self.ledger.retirement_of(row.record_key) is not None:
            return  # retired already (by a run that crashed after it, or before: kept)
        if row.batch_id is not None and row.proof is not None:
            assert row.patient_key and row.digest and row.pixel_digest
            self.ledger.retire_batched_image(
                record_key=row.record_key, patient_key=row.patient_key, digest=row.digest,
                pixel_digest=row.pixel_digest, batch_id=row.batch_id,
                proof=decode_proof(row.proof), reason=RetireReason.ERASED,
            )  # fmt: skip
        elif row.tx_hash is not None:
            self.ledger.retire_image(record_key=row.record_key, reason=RetireReason.ERASED)


# -- in the pipeline: a row an erasure named goes no further ----------------------------------

#: The stage right after the fingerprint: the first to use the study's key.
SEALING = "seal"


class PipelineParts(Protocol):
    """What the pipeline's check needs (:class:`gateway.ingest.stages.Steps` has it)."""

    @property
    def index(self) -> Index: ...

    @property
    def store(self) -> ObjectStore: ...

    @property
    def spool(self) -> SpoolFiles: ...

    @property
    def sealed_dir(self) -> Path: ...

    @property
    def pseudonym_key(self) -> bytes: ...


def erase_if_named(row: Row, parts: PipelineParts) -> bool:
    """The pipeline's check before each stage: erase the row instead if an erasure named it
    (or, about to be sealed, its study was erased meanwhile); True if it was.

    Its spool file, sealed-stage file and stored object (if any) are deleted, then it moves
    to ``erased``: it is never anchored or forwarded. The check costs nothing for a row no
    erasure named, except one look-up at the seal stage (a row fingerprinted after its
    study was erased).
    """
    if row.erase_plan is None:
        if row.stage != SEALING or row.study_instance_uid is None:
            return False
        ref = keys.study_ref(parts.pseudonym_key, row.study_instance_uid)
        if not study_shredded(parts.index, ref):
            return False
    parts.spool.path_of(row.entry_id).unlink(missing_ok=True)
    (parts.sealed_dir / f"{row.entry_id}.seal").unlink(missing_ok=True)
    (parts.sealed_dir / f"{row.entry_id}.tmp").unlink(missing_ok=True)
    if row.object_name is not None:
        parts.store.delete(row.object_name)
    if log_.take_erased(parts.index, row.id, stage=row.stage):
        log.info("row %d: erased on request at stage %s, before it was anchored", row.id, row.stage)
    return True


# -- on every node: shed the local copies of erased rows ---------------------------------


class SpoolDirs(SpoolFiles, Protocol):
    """The spool's ``ready/`` directory too (:class:`gateway.ingest.spool.Spool`)."""

    @property
    def ready(self) -> Path: ...


@dataclass
class Shedder:
    """Deletes this node's copies (spool and sealed-stage files) of erased rows, and notes
    in the index, per erasure, that this node has shed it.

    It sweeps at start, when woken, and every ``period_s``: an erasure confirmed on
    another node is shed here within one period.
    """

    index: Index
    spool: SpoolDirs
    sealed_dir: Path
    node: str
    period_s: float = 5.0
    _wake: threading.Event = field(default_factory=threading.Event, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="erasure-shed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def wake(self) -> None:
        """Sweep now (an erasure was confirmed on this node)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.sweep()
            except Exception:  # the index is busy or failing: the next sweep may do
                log.exception("shedding the copies of erased images failed; retrying")
            self._wake.wait(self.period_s)

    def sweep(self) -> int:
        """Delete every local copy of an erased row; returns how many files went."""
        deleted = 0
        for plan_hash in log_.unshed(self.index, self.node):
            files = sum(self._delete(entry) for entry in log_.entries_of(
                self.index, plan_hash, self.node
            ))  # fmt: skip
            deleted += files
            if files:
                log.info("erasure %s: deleted %d local files", plan_hash[:16], files)
            entry = log_.erasure(self.index, plan_hash)
            if entry is not None and entry.state == log_.DONE:
                log_.record_shed(self.index, plan_hash, node=self.node, files=files)
                log.info("erasure %s: this node holds no copy of it any more", plan_hash[:16])
        held = {path.name.split(".")[0] for path in self.spool.ready.glob("*.dcm")}
        held |= {path.name.split(".")[0] for path in self.sealed_dir.glob("*.*")}
        for copy in log_.erased_entries(self.index, sorted(held)):
            deleted += self._delete(copy.entry_id)
        return deleted

    def _delete(self, entry_id: str) -> int:
        paths = (
            self.spool.path_of(entry_id),
            self.sealed_dir / f"{entry_id}.seal",
            self.sealed_dir / f"{entry_id}.tmp",
        )
        gone = 0
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                gone += 1
        return gone


def upgrade_to_v2(
    index: Index, store: ObjectStore, *, study_keys: StudyKeys, pseudonym_key: bytes
) -> int:
    """Seal every v1 object of a known study again under its study key (format v2), so that
    images stored before erasure existed can be erased too; returns how many moved.

    Each object is opened and sealed anew into a temporary file, then put in place of the
    old one (``replace=True``); an object already v2, or of a study that was erased, is
    left alone. Run again after a failure, it carries on.
    """
    moved = 0
    rows = index.query(
        "SELECT object_name, study_instance_uid FROM instances"
        " WHERE object_name IS NOT NULL AND study_instance_uid IS NOT NULL AND stage != 'erased'"
    )
    for name, study in rows:
        if not store.exists(str(name)):
            continue
        with store.open(str(name)) as sealed:
            if read_seal_header(sealed).version == STUDY_KEY_VERSION:
                continue
        try:
            key, _ = study_keys.for_study(keys.study_ref(pseudonym_key, str(study)))
        except KeyShredded:
            continue
        record_key, digest = (bytes.fromhex(part) for part in str(name).split("/"))
        with tempfile.TemporaryFile() as out, store.open(str(name)) as sealed:
            reseal_v2(
                sealed, out, record_key=record_key, digest=digest,
                keyring=study_keys.keyring, study_key=key,
            )  # fmt: skip
            length = out.tell()
            out.seek(0)
            store.put(str(name), out, length=length, replace=True)
        moved += 1
    return moved


@dataclass(frozen=True)
class RetiredKeks:
    """What ``keys rotate --retire-old`` did."""

    current_kek: str
    study_keys_rewrapped: int
    moved_to_v2: int
    v1_rewrapped: int
    destroyed: tuple[str, ...]


def retire_old_keks(
    index: Index, store: ObjectStore, *, keys_dir: Path, pseudonym_key: bytes
) -> RetiredKeks:
    """A new KEK, every study key re-wrapped under it, every v1 object of a known study
    sealed again under its study key (and any v1 object left re-wrapped under the new KEK);
    then, once nothing names an old KEK, the old KEKs destroyed: a kept copy of a v1 object
    opens with no key the gateway holds. Run with every gateway node stopped (a running
    one would wrap new study keys under the KEK it loaded).

    Raises
    ------
    OldKeksInUse
        Something still names an old KEK after the re-wrap: nothing is destroyed.
    """
    kek = keys.rotate_kek(keys_dir)
    keyring = keys.load_keyring(keys_dir)
    study_keys = StudyKeys(index, keyring)
    wrapped = study_keys.rewrap(kek)
    moved = upgrade_to_v2(index, store, study_keys=study_keys, pseudonym_key=pseudonym_key)
    rewrapped = rewrap_store(store, keyring=keyring, new_kek=kek)
    _nothing_under_old_keks(index, store, current=kek.kek_id)
    destroyed = keys.destroy_old_keks(keys_dir, keep=kek.kek_id)
    log.info("retired KEKs %s: %d v1 objects sealed again under their study keys",
             ", ".join(destroyed) or "(none)", moved)  # fmt: skip
    return RetiredKeks(kek.kek_id, wrapped, moved, rewrapped, tuple(destroyed))


def _nothing_under_old_keks(index: Index, store: ObjectStore, *, current: str) -> None:
    """Refuse to destroy old KEKs while a live study key or a v1 object is wrapped under one."""
    ((left,),) = index.query(
        "SELECT COUNT(*) FROM study_keys WHERE destroyed_at IS NULL AND kek_id != ?", (current,)
    )
    for name in store.names():
        with store.open(name) as sealed:
            header = read_seal_header(sealed)
        left += header.version != STUDY_KEY_VERSION and header.kek_id != current
    if left:
        raise OldKeksInUse(
            f"{left} study keys or v1 objects are still wrapped under an old KEK: none destroyed",
            kek_id=current,
        )
