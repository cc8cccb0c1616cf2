"""Verdicts: the PACS copy vs the sealed original vs the ledger record, for one instance at a time.

A verdict is built from three copies of an image:

* the **ledger record**: the single record (``imageOf``) or the batch root that an
  inclusion proof leads to (``batchOf``). It is the authority: the local index only says
  where to look (which batch, which proof), and every claim it makes is checked on chain;
* the **sealed original** in the object store, opened and hashed;
* the **PACS copy** in Orthanc, hashed as stored (through the plugin's unchecked route
  when the plugin guards reads, since the point is to look at a tampered copy).

The statuses, what each means and how bad it is, and the rules that give them
(:func:`~gateway.trust.verdicts.decide`, the plugin's too) are in
:mod:`gateway.trust.verdicts`; the verifier gathers the facts. In order of precedence:

* an index row not yet committed (any stage before ``committed``, ``forward`` included,
  or parked at ``failed`` with its error) → ``pending`` with its stage, whatever the
  ledger and the PACS say meanwhile;
* no ledger record, but a claim of an anchor the chain cannot check (a batch it does not
  know, a transaction it does not have, a block above its head) → ``unconfirmed`` with the
  reason; a claim the chain refutes is ignored; then ``unregistered`` if the PACS has it;
* a retired record → ``retired``; no PACS copy → ``missing``; another digest →
  ``tampered``; a sealed original that is gone or does not open → ``store_corrupt``;
  else ``intact``.

This module gathers the facts; the batch claims it checks are in :mod:`gateway.trust.claims`
and the attribute diff of a tampered copy in :mod:`gateway.trust.diff`. The :class:`Verifier`
reads the outside through small interfaces (:class:`~gateway.pacs.base.PacsArchive`,
:class:`~gateway.ledger.base.LedgerReader`, :class:`~gateway.index.base.IndexRows`), so
that unit tests drive it through in-memory stand-ins (:mod:`gateway.pacs.memory`,
:mod:`gateway.ledger.memory`) while integration tests use Orthanc, anvil and the index.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, BinaryIO, Literal, cast

from gateway.core import keys
from gateway.core.fingerprint import (
    MAX_INSTANCE_BYTES,
    Fingerprint,
    fingerprint,
    fingerprint_and_header,
)
from gateway.core.keys import Keyring
from gateway.core.merkle import InclusionProof
from gateway.core.ownership import (
    Anchoring,
    Position,
    Retiring,
    Ruling,
    rule,
    same_account,
)
from gateway.core.seal import StudyKeySource, open_sealed
from gateway.errors import (
    DatasetUnreadable,
    InstanceMissing,
    ObjectNotFound,
    PacsUnavailable,
    SealError,
    StoreError,
    UnknownInstance,
    XrayUnknownBatch,
)
from gateway.index.base import IndexRows
from gateway.index.db import PARKED, STAGES, Row
from gateway.index.queries import is_version
from gateway.ledger.base import LedgerReader
from gateway.ledger.roles import RoleHistory
from gateway.ledger.types import LedgerEvent, retire_reason_name
from gateway.pacs.base import PacsArchive
from gateway.store import ObjectStore
from gateway.trust.alerts import Alerts
from gateway.trust.claims import BatchClaim, ClaimSource, index_claims, proving_batch
from gateway.trust.diff import AttributeChange, diff
from gateway.trust.verdicts import (
    EXPLANATIONS,
    STATUSES,
    AnchorState,
    CopyState,
    Facts,
    Original,
    Reason,
    Status,
    decide,
)

log = logging.getLogger(__name__)

Tamper = Literal["header_changed", "pixels_changed"]
# Copies larger than this are hashed from a temporary file rather than from memory.
SPOOL_IN_MEMORY = 16 << 20
#: Stages of a row the gateway has not finished with: every one before ``committed``
#: (``forward`` included: anchored, not yet in the PACS), and ``failed`` (parked with its
#: error until an operator re-queues it; the image is acked and kept, not lost).
PENDING_STAGES = (*STAGES[: STAGES.index("committed")], PARKED)
#: The ``source`` of the alerts a verifier records.
ALERT_SOURCE = "verifier"
#: How the rules' facts and reasons read in a verdict's ``copies`` and ``tamper``.
_PACS_STATE = {CopyState.ABSENT: "absent", CopyState.SAME: "ok", CopyState.DIFFERS: "differs"}
_ORIGINAL = {
    "ok": Original.OK,
    "unchecked": Original.UNCHECKED,
    "absent": Original.UNUSABLE,
    "corrupt": Original.UNUSABLE,
}
_TAMPER: dict[Reason, Tamper] = {
    Reason.HEADER_CHANGED: "header_changed",
    Reason.PIXELS_CHANGED: "pixels_changed",
}


@dataclass(frozen=True)
class BatchEvidence:
    """Where a batched image's leaf sits and the root it leads to."""

    batch_id: int
    root: str
    leaf_index: int
    size: int
    proof: list[str]


@dataclass(frozen=True)
class Evidence:
    """What the ledger and the copies say, in hex; no patient data."""

    record_key: str
    recorded_digest: str | None = None
    recorded_pixel_digest: str | None = None
    digest_now: str | None = None
    pixel_digest_now: str | None = None
    version: int | None = None
    tx_hash: str | None = None
    block_number: int | None = None
    block_time: int | None = None
    recorder: str | None = None
    recorder_name: str | None = None
    batch: BatchEvidence | None = None
    retired_by: str | None = None
    retired_at: int | None = None
    retire_reason: str | None = None
    #: Accounts whose versions or retirements of this record were ignored: not its owner.
    foreign_claims: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Copies:
    """The state of each copy: ``ok``, ``differs``, ``absent``, ``corrupt``, ``unchecked``,
    or for the ledger also ``retired`` and ``unconfirmed`` (an anchor it does not confirm)."""

    pacs: str = "unchecked"
    store: str = "unchecked"
    ledger: str = "unchecked"


@dataclass(frozen=True)
class Verdict:
    """The integrity verdict for one SOP instance."""

    sop_instance_uid: str
    status: Status
    explanation: str
    evidence: Evidence
    copies: Copies
    tamper: Tamper | None = None
    changes: list[AttributeChange] = field(default_factory=list)
    orthanc_id: str | None = None
    notes: list[str] = field(default_factory=list)
    checked_at: float = field(default_factory=time.time)
    #: For ``pending``: the stage the gateway's work is at (``failed``: parked).
    stage: str | None = None


@dataclass(frozen=True)
class StudyVerdict:
    """Every instance of a study, and how many have each status."""

    study_instance_uid: str
    summary: dict[str, int]
    instances: list[Verdict]


@dataclass(frozen=True)
class Record:
    """An image version as the ledger confirms it."""

    record_key: bytes
    patient_key: bytes
    digest: bytes
    pixel_digest: bytes
    version: int | None
    tx_hash: str | None
    block_number: int | None
    block_time: int | None
    recorder: str | None
    batch: BatchEvidence | None = None
    retired_by: str | None = None
    retired_at: int | None = None
    retire_reason: str | None = None
    ignored: tuple[str, ...] = ()  # accounts whose writes under this key do not count
    # digests of every version that counts (the owner's and the admin's), oldest first
    counted: tuple[bytes, ...] = ()

    @property
    def retired(self) -> bool:
        return self.retired_by is not None

    def claim(self) -> BatchClaim | None:
        """The batch claim this record was confirmed by, for an auditor to re-check."""
        if self.batch is None:
            return None
        return BatchClaim(
            record_key=self.record_key,
            patient_key=self.patient_key,
            digest=self.digest,
            pixel_digest=self.pixel_digest,
            batch_id=self.batch.batch_id,
            proof=InclusionProof(
                index=self.batch.leaf_index,
                size=self.batch.size,
                path=tuple(bytes.fromhex(node) for node in self.batch.proof),
            ),
            version=self.version,
            tx_hash=self.tx_hash,
        )


@dataclass(frozen=True)
class Copy:
    """A copy that was hashed: its digests and, if kept, where its bytes are."""

    fingerprint: Fingerprint
    path: Path | None


class Verifier:
    """Builds verdicts. Every part but the ledger and the pseudonym key is optional.

    Parameters
    ----------
    ledger:
        The xray contract (read-only is enough).
    pseudonym_key:
        Turns SOP Instance UIDs into record keys.
    pacs:
        Orthanc; without it no PACS copy is checked (the CLI verifying files).
    store, keyring:
        The object store and the KEKs that open its sealed originals.
    study_keys:
        The index's study keys, which open sealed originals of format v2.
    index:
        The gateway's index: where batched images keep their proofs, and what is pending.
        Its claims are checked on chain, never trusted.
    claims:
        Where batch proofs come from; by default the index's.
    max_instance_bytes:
        The most bytes a deflated dataset may inflate to (``GATEWAY_MAX_INSTANCE_BYTES``);
        every copy is parsed within it.
    trusted_recorders:
        ``GATEWAY_TRUSTED_RECORDERS``: only these accounts' records count. By default,
        any account that held the Recorder role when it wrote (see :mod:`gateway.core.ownership`).
    alerts:
        Where ``foreign_claim`` alerts go (writes by others than a record's owner).
    """

    def __init__(
        self,
        *,
        ledger: LedgerReader,
        pseudonym_key: bytes,
        pacs: PacsArchive | None = None,
        store: ObjectStore | None = None,
        keyring: Keyring | None = None,
        study_keys: StudyKeySource | None = None,
        index: IndexRows | None = None,
        claims: ClaimSource | None = None,
        max_instance_bytes: int = MAX_INSTANCE_BYTES,
        trusted_recorders: frozenset[str] | None = None,
        alerts: Alerts | None = None,
    ) -> None:
        self.ledger = ledger
        self.roles = RoleHistory(ledger, configured=trusted_recorders)
        self.alerts = alerts
        self._alerted: set[tuple[bytes, str]] = set()
        self._batch_events: dict[int, LedgerEvent] = {}
        self.max_instance_bytes = max_instance_bytes
        self.claims = claims or (index_claims(index) if index is not None else None)
        self.pseudonym_key = pseudonym_key
        self.pacs = pacs
        self.store = store
        self.keyring = keyring
        self.study_keys = study_keys
        self.index = index
        self._names: dict[str, str] = {}
        self._names_lock = threading.Lock()

    # -- public ---------------------------------------------------------------------------

    def instance(self, sop_instance_uid: str, *, show_phi: bool = False) -> Verdict:
        """The verdict for the instance Orthanc holds under ``sop_instance_uid``.

        Raises
        ------
        UnknownInstance
            Neither the PACS, the index nor the ledger knows the instance.
        """
        # The index first, the PACS after: a row seen pending here may be committed (and
        # forwarded) by the time the PACS answers, never the other way round, so an image
        # on its way to the PACS is never found absent from it and called ``missing``.
        pending = self._pending(sop_instance_uid)
        try:
            orthanc_id = self.pacs.find(sop_instance_uid) if self.pacs is not None else None
        except PacsUnavailable as exc:
            if pending is None:
                raise
            # An outage of the PACS is when images wait at `forward`: say so, not 503.
            return self._pending_verdict(
                sop_instance_uid, pending, copy=None, pacs="unchecked",
                notes=[f"the PACS could not be reached: {exc}"],
            )  # fmt: skip
        with self._pacs_copy(orthanc_id) as copy:
            return self._verdict(
                sop_instance_uid, copy=copy, orthanc_id=orthanc_id, show_phi=show_phi,
                pending=pending,
            )  # fmt: skip

    def file(
        self,
        path: Path,
        *,
        show_phi: bool = False,
        scratch: Path | None = None,
        limit: int | None = None,
    ) -> Verdict:
        """Is this exact Part-10 file registered and unaltered?

        A deflated file is inflated into ``scratch`` (default ``GATEWAY_TMPDIR``), to at
        most ``limit`` bytes and never past ``max_instance_bytes``.

        Raises
        ------
        DatasetTooLarge
            The file's dataset inflates past ``max_instance_bytes`` (or ``limit``).
        DatasetUnreadable
            The file is not a readable DICOM Part-10 file.
        UnknownInstance
            Its SOP Instance UID was never recorded nor received.
        """
        cap = self.max_instance_bytes if limit is None else min(limit, self.max_instance_bytes)
        with path.open("rb") as stream:
            fp, header = fingerprint_and_header(stream, limit=cap, scratch=scratch)
        uid, copy = header.sop_instance_uid, Copy(fp, path)
        return self._verdict(
            uid, copy=copy, orthanc_id=None, show_phi=show_phi, pending=self._pending(uid)
        )

    def study(self, study_instance_uid: str, *, show_phi: bool = False) -> StudyVerdict:
        """Every instance of a study the PACS or the index knows, each with its verdict.

        Raises
        ------
        UnknownInstance
            Neither the PACS nor the index knows the study.
        """
        uids: dict[str, None] = {}
        if self.pacs is not None:
            for uid in self.pacs.study_instance_uids(study_instance_uid):
                uids[uid] = None
        if self.index is not None:
            for row in self.index.by_study(study_instance_uid):
                if is_version(row.stage):
                    uids[row.sop_instance_uid] = None
        if not uids:
            raise UnknownInstance(
                f"no study {study_instance_uid} in the PACS or the gateway's index"
            )
        verdicts = [self.instance(uid, show_phi=show_phi) for uid in uids]
        return StudyVerdict(study_instance_uid, summarise(verdicts), verdicts)

    def record(self, sop_instance_uid: str) -> Record | None:
        """The newest version of the image the ledger confirms by its owner, or ``None``.

        Every write under the record key goes through :func:`gateway.core.ownership.rule`: the owner
        is the trusted recorder of the earliest anchoring; versions and retirements by
        anyone but the owner (or the admin) are ignored and alerted as ``foreign_claim``.
        """
        record_key = keys.record_key(self.pseudonym_key, sop_instance_uid)
        ruling = self._ruling(record_key, sop_instance_uid)
        self._alert_foreign(sop_instance_uid, record_key, ruling)
        newest = ruling.newest
        if newest is None:
            return None
        record = newest.item
        retirement = ruling.retirement
        return replace(
            record,
            block_time=record.block_time or self._block_time(record.block_number),
            retired_by=retirement.account if retirement else None,
            retired_at=self._block_time(retirement.at.block_number) if retirement else None,
            retire_reason=retirement.reason if retirement else None,
            ignored=tuple(
                sorted(
                    {a.account for a in ruling.foreign}
                    | {r.account for r in ruling.ignored_retirements}
                )
            ),
            counted=tuple(a.digest for a in ruling.accepted),
        )

    def _ruling(self, record_key: bytes, uid: str) -> Ruling[Record]:
        anchorings = [*self._direct(record_key), *self._batched(record_key, uid)]
        retirements = [
            Retiring(
                account=str(event.args["by"]),
                at=Position(event.block_number, event.log_index),
                reason=retire_reason_name(event.args["reason"]),
            )
            for event in self.ledger.retirement_events(record_key)
        ]
        return rule(anchorings, retirements, self.roles.trust())

    def original(self, record: Record, sink: IO[bytes]) -> Fingerprint:
        """Open the sealed original of ``record`` into ``sink`` and fingerprint it.

        Raises
        ------
        ObjectNotFound, StoreError
            The object is gone or the store cannot be read.
        SealError
            The object does not authenticate.
        """
        if self.store is None or self.keyring is None:
            raise StoreError("no object store configured for this verifier")
        name = f"{record.record_key.hex()}/{record.digest.hex()}"
        with self.store.open(name) as sealed:
            open_sealed(
                sealed, cast(BinaryIO, sink), record_key=record.record_key, digest=record.digest,
                keyring=self.keyring, study_keys=self.study_keys,
            )  # fmt: skip
        sink.flush()
        sink.seek(0)
        return fingerprint(cast(BinaryIO, sink), limit=self.max_instance_bytes)

    # -- building a verdict -----------------------------------------------------------------

    def _verdict(
        self,
        uid: str,
        *,
        copy: Copy | None,
        orthanc_id: str | None,
        show_phi: bool,
        pending: Row | None,
    ) -> Verdict:
        """Gather the facts of ``uid`` and word what :func:`~gateway.trust.verdicts.decide` makes
        of them. Each step reads only what the rules still need: a pending row decides
        alone (the ledger is not read), a retired record before its copies are opened."""
        if pending is not None:
            return self._pending_verdict(uid, pending, copy=copy, orthanc_id=orthanc_id)
        record = self.record(uid)
        now = copy.fingerprint if copy is not None else None
        base = Evidence(
            record_key=keys.record_key(self.pseudonym_key, uid).hex(),
            digest_now=now.digest.hex() if now else None,
            pixel_digest_now=now.pixel_digest.hex() if now else None,
        )
        if record is None:
            reasons = self._unconfirmed(uid)
            unrecorded = decide(
                Facts(
                    anchor=AnchorState.UNCONFIRMED if reasons else AnchorState.NONE,
                    copy=CopyState.ABSENT if copy is None else CopyState.UNCOMPARED,
                )
            )
            if unrecorded is None:
                raise UnknownInstance(
                    f"no instance {uid} in the PACS, the gateway's index or the ledger"
                )
            return Verdict(
                uid, unrecorded.status, EXPLANATIONS[unrecorded.status], base,
                Copies(pacs="ok" if copy else "absent",
                       ledger="unconfirmed" if reasons else "absent"),
                orthanc_id=orthanc_id, notes=reasons,
            )  # fmt: skip
        evidence = self._evidence(record, now)
        if copy is None:
            pacs_state = CopyState.ABSENT
        elif copy.fingerprint.digest == record.digest:
            pacs_state = CopyState.SAME
        else:
            pacs_state = CopyState.DIFFERS
        facts = Facts(
            anchor=AnchorState.CONFIRMED, copy=pacs_state, retired=record.retired,
            erased=record.retired and record.retire_reason == "erased",
            same_pixels=(
                copy.fingerprint.pixel_digest == record.pixel_digest
                if copy is not None and pacs_state is CopyState.DIFFERS
                else None
            ),
        )  # fmt: skip
        if facts.erased:
            # Nothing to open: the sealed original was deleted and its study key destroyed.
            return Verdict(
                uid, "erased", EXPLANATIONS["erased"], evidence,
                Copies(pacs="ok" if copy else "absent", store="absent", ledger="retired"),
                orthanc_id=orthanc_id,
                notes=[f"erased: retired by {record.retired_by} with reason erased"]
                + (["a copy of the erased image is in the PACS"] if copy else []),
            )  # fmt: skip
        if decide(facts) is Reason.RETIRED:
            return Verdict(
                uid, "retired", EXPLANATIONS["retired"], evidence,
                Copies(pacs="ok" if copy else "absent", ledger="retired"),
                orthanc_id=orthanc_id,
                notes=[f"retired by {record.retired_by}: {record.retire_reason or 'no reason given'}"],
            )  # fmt: skip
        notes: list[str] = []
        with _scratch() as original_sink:
            store_state, original = self._check_store(record, original_sink, notes)
            reason = decide(replace(facts, original=_ORIGINAL[store_state]))
            assert reason is not None  # a record is known
            copies = Copies(pacs=_PACS_STATE[pacs_state], store=store_state, ledger="ok")
            tamper = _TAMPER.get(reason)
            changes: list[AttributeChange] = []
            compared = False  # the copy's attributes read against the sealed original's
            if tamper is not None:
                assert copy is not None
                if store_state in ("absent", "corrupt"):
                    notes.append(
                        "the sealed original is unusable too: the image cannot be restored"
                    )
                elif copy.path is not None and original is not None:
                    changes = diff(
                        original, copy.path, show_phi=show_phi, limit=self.max_instance_bytes
                    )
                    compared = True
            if tamper is not None and self._superseded(record, copy):
                notes.append("this copy matches an older, superseded version of the image")
        explanation = EXPLANATIONS[reason.status]
        if tamper == "header_changed" and compared and not changes:
            # the diff read both and found every attribute equal: the bytes differ in their
            # encoding only (e.g. a sender's toolkit dropped the trailing padding or
            # rewrote lengths), which says nothing was edited, though the bytes are not
            # the recorded ones
            explanation += (
                " No attribute value differs from the sealed original and the pixel data is"
                " the same: these bytes encode the recorded dataset differently (a toolkit"
                " dropped trailing padding or rewrote lengths, say); re-encoded, not edited."
            )
        elif tamper == "header_changed":
            explanation += " The pixel data is unchanged; attributes of the header were edited."
        elif tamper == "pixels_changed":
            explanation += " The pixel data itself was changed."
        return Verdict(
            uid, reason.status, explanation, evidence, copies, tamper=tamper, changes=changes,
            orthanc_id=orthanc_id, notes=notes,
        )  # fmt: skip

    def _check_store(
        self, record: Record, sink: IO[bytes], notes: list[str]
    ) -> tuple[str, Path | None]:
        if self.store is None or self.keyring is None:
            return "unchecked", None
        try:
            opened = self.original(record, sink)
        except ObjectNotFound:
            notes.append("the sealed original is not in the object store")
            return "absent", None
        except SealError as exc:
            notes.append(f"the sealed original does not open: {exc}")
            return "corrupt", None
        except StoreError as exc:
            notes.append(f"the object store could not be read: {exc}")
            return "unchecked", None
        if opened.digest != record.digest:
            notes.append("the sealed original opens but hashes to another digest")
            return "corrupt", None
        return "ok", Path(sink.name)

    def _evidence(self, record: Record, now: Fingerprint | None) -> Evidence:
        return Evidence(
            record_key=record.record_key.hex(),
            recorded_digest=record.digest.hex(),
            recorded_pixel_digest=record.pixel_digest.hex(),
            digest_now=now.digest.hex() if now else None,
            pixel_digest_now=now.pixel_digest.hex() if now else None,
            version=record.version,
            tx_hash=record.tx_hash,
            block_number=record.block_number,
            block_time=record.block_time,
            recorder=record.recorder,
            recorder_name=self._name_of(record.recorder) if record.recorder else None,
            batch=record.batch,
            retired_by=record.retired_by,
            retired_at=record.retired_at,
            retire_reason=record.retire_reason,
            foreign_claims=list(record.ignored),
        )

    def _superseded(self, record: Record, copy: Copy | None) -> bool:
        """Whether the copy is an older version the ledger confirms, by the record's owner."""
        if copy is None:
            return False
        digest = copy.fingerprint.digest
        return digest != record.digest and digest in record.counted

    # -- the ledger -------------------------------------------------------------------------

    def _direct(self, record_key: bytes) -> list[Anchoring[Record]]:
        """Every version written straight under ``record_key`` (``recordImage``/``supersede…``)."""
        found: list[Anchoring[Record]] = []
        for event in self.ledger.version_events(record_key):
            args = event.args
            recorder = str(args["recorder"])
            record = Record(
                record_key=record_key,
                patient_key=bytes(cast(bytes, args["patientKey"])),
                digest=bytes(cast(bytes, args["digest"])),
                pixel_digest=bytes(cast(bytes, args["pixelDigest"])),
                version=int(cast(int, args.get("version", 1))),
                tx_hash=event.tx_hash,
                block_number=event.block_number,
                block_time=None,
                recorder=recorder,
            )
            at = Position(event.block_number, event.log_index)
            found.append(Anchoring(recorder, at, record.digest, batched=False, item=record))
        return found

    def _batched(self, record_key: bytes, uid: str) -> list[Anchoring[Record]]:
        """Every batched version whose claim the chain confirms, at its batch's anchoring."""
        found: list[Anchoring[Record]] = []
        for claim in self.claims(uid) if self.claims is not None else ():
            if claim.record_key != record_key:
                continue
            batch = proving_batch(self.ledger, claim)
            if batch is None:
                log.warning(
                    "a claim puts record %s in batch %d, but its proof does not lead to that "
                    "batch's root", record_key.hex()[:12], claim.batch_id,
                )  # fmt: skip
                continue
            event = self._batch_event(claim.batch_id, batch.block_number)
            record = Record(
                record_key=record_key,
                patient_key=claim.patient_key,
                digest=claim.digest,
                pixel_digest=claim.pixel_digest,
                version=claim.version,
                tx_hash=event.tx_hash if event else claim.tx_hash,
                block_number=batch.block_number,
                block_time=batch.anchored_at,
                recorder=batch.recorder,
                batch=BatchEvidence(
                    batch_id=claim.batch_id,
                    root=batch.root.hex(),
                    leaf_index=claim.proof.index,
                    size=claim.proof.size,
                    proof=[node.hex() for node in claim.proof.path],
                ),
            )
            at = Position(batch.block_number, event.log_index if event else 0)
            found.append(Anchoring(batch.recorder, at, claim.digest, batched=True, item=record))
        return found

    def _batch_event(self, batch_id: int, block_number: int) -> LedgerEvent | None:
        """The ``BatchAnchored`` event of ``batch_id``, read from its own block only (kept: a
        mined batch does not change)."""
        with self._names_lock:
            if batch_id in self._batch_events:
                return self._batch_events[batch_id]
        events = self.ledger.events(
            "BatchAnchored", from_block=block_number, to_block=block_number,
            filters={"batchId": batch_id},
        )  # fmt: skip
        event = events[0] if events else None
        if event is not None:
            with self._names_lock:
                self._batch_events[batch_id] = event
        return event

    def _block_time(self, block_number: int | None) -> int | None:
        if block_number is None:
            return None
        return self.ledger.block_time(block_number)

    def _alert_foreign(self, uid: str, record_key: bytes, ruling: Ruling[Record]) -> None:
        """One ``foreign_claim`` alert per (record key, account) whose writes were ignored."""
        if self.alerts is None or ruling.owner is None:
            return
        writes = [(a.account, a.at, f"a version (digest {a.digest.hex()})") for a in ruling.foreign]
        writes += [
            (r.account, r.at, f"a retirement ({r.reason})") for r in ruling.ignored_retirements
        ]
        for account, at, what in writes:
            if same_account(account, ruling.owner):
                continue  # the owner's own later write (e.g. after losing the role): not foreign
            with self._names_lock:
                if (record_key, account.lower()) in self._alerted:
                    continue
                self._alerted.add((record_key, account.lower()))
            earlier = self.alerts.recent(sop_instance_uid=uid, kind="foreign_claim", limit=1000)
            if any(
                alert.source == ALERT_SOURCE and account.lower() in alert.detail.lower()
                for alert in earlier
            ):
                continue
            self.alerts.record(
                kind="foreign_claim",
                source=ALERT_SOURCE,
                sop_instance_uid=uid,
                detail=(
                    f"{account} wrote {what} under record key {record_key.hex()} at block "
                    f"{at.block_number}, but the record belongs to {ruling.owner}, its first "
                    "trusted recorder: the write is ignored by every verdict"
                ),
            )

    def _name_of(self, address: str) -> str:
        with self._names_lock:
            if address not in self._names:
                self._names[address] = self.ledger.name_of(address)
            return self._names[address]

    def _pending(self, uid: str) -> Row | None:
        """The newest row of ``uid`` the gateway has not finished with (see PENDING_STAGES)."""
        if self.index is None:
            return None
        for row in reversed(self.index.by_uid(uid)):
            if row.stage in PENDING_STAGES:
                return row
        return None

    def _pending_verdict(
        self,
        uid: str,
        row: Row,
        *,
        copy: Copy | None,
        orthanc_id: str | None = None,
        pacs: str | None = None,
        notes: list[str] | None = None,
    ) -> Verdict:
        """``pending`` at the row's stage (:attr:`~gateway.trust.verdicts.Reason.IN_PROGRESS`,
        first of the rules): what the ledger and the PACS hold is not judged yet."""
        now = copy.fingerprint if copy is not None else None
        stage = row.parked_stage if row.stage == PARKED else row.stage
        said = [f"parked at stage {stage}" if row.stage == PARKED else f"stage {stage}"]
        if row.last_error:
            said[0] += f": {row.last_error}"
        if row.stage == PARKED:
            said.append("an operator must re-queue it (`xray-gateway retry`)")
        if now is not None and row.digest is not None and now.digest != row.digest:
            said.append("the PACS holds another copy than the one being processed")
        evidence = Evidence(
            record_key=keys.record_key(self.pseudonym_key, uid).hex(),
            recorded_digest=row.digest.hex() if row.digest else None,
            recorded_pixel_digest=row.pixel_digest.hex() if row.pixel_digest else None,
            digest_now=now.digest.hex() if now else None,
            pixel_digest_now=now.pixel_digest.hex() if now else None,
            version=row.version,
            tx_hash=row.tx_hash,
            block_number=row.block_number,
            block_time=row.block_time,
            recorder=row.recorder,
        )
        return Verdict(
            uid, "pending", EXPLANATIONS["pending"], evidence,
            Copies(pacs=pacs or ("ok" if copy else "absent"), ledger="unchecked"),
            orthanc_id=orthanc_id, notes=[*said, *(notes or [])], stage=row.stage,
        )  # fmt: skip

    def _unconfirmed(self, uid: str) -> list[str]:
        """Why the anchor the gateway's records claim for ``uid`` cannot be confirmed on chain.

        Called only when the ledger confirms no record of ``uid``. A claim the chain cannot
        check (a batch it does not know, a transaction it does not have, a block above its
        head) is unconfirmed; a claim the chain refutes (a proof that misses a known root, a
        transaction that records something else) is ignored, as :meth:`_batched` does. Empty
        when nothing unconfirmable is claimed: the instance is then unregistered or unknown.
        """
        record_key = keys.record_key(self.pseudonym_key, uid)
        reasons = [
            self._batch_unconfirmed(claim)
            for claim in (self.claims(uid) if self.claims is not None else ())
            if claim.record_key == record_key
        ]
        if self.index is not None:
            head: int | None = None
            for row in self.index.by_uid(uid):
                if not is_version(row.stage) or row.batch_id is not None:
                    continue  # batched rows are claims, above
                if row.tx_hash is None and row.block_number is None:
                    continue
                if head is None:
                    head = self.ledger.head_block()
                reasons.append(self._single_unconfirmed(row, head))
        return [reason for reason in reasons if reason is not None]

    def _batch_unconfirmed(self, claim: BatchClaim) -> str | None:
        try:
            self.ledger.batch_of(claim.batch_id)
        except XrayUnknownBatch:
            return f"batch {claim.batch_id} is unknown to the contract"
        return None  # a known batch: the proof missed its root, the claim is false

    def _single_unconfirmed(self, row: Row, head: int) -> str | None:
        if row.block_number is not None and row.block_number > head:
            return (
                f"the index records block {row.block_number}, above the chain's head {head}: "
                "the node has not caught up"
            )
        if row.tx_hash is not None and not self._has_transaction(row.tx_hash):
            return f"transaction {row.tx_hash} is not found on the chain"
        return None  # the chain has the transaction, and no such record: the claim is false

    def _has_transaction(self, tx_hash: str) -> bool:
        return self.ledger.has_transaction(tx_hash)

    # -- the PACS copy ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _pacs_copy(self, orthanc_id: str | None) -> Iterator[Copy | None]:
        if orthanc_id is None or self.pacs is None:
            yield None
            return
        with tempfile.NamedTemporaryFile(prefix="xray-copy-", suffix=".dcm") as sink:
            try:
                self.pacs.fetch_stored(orthanc_id, sink)
            except InstanceMissing:  # deleted between the lookup and the read
                yield None
                return
            sink.flush()
            sink.seek(0)
            try:
                fp = fingerprint(cast(BinaryIO, sink), limit=self.max_instance_bytes)
            except DatasetUnreadable:
                # Unparsable bytes still have a digest, and it is not the recorded one.
                sink.seek(0)
                fp = _raw_fingerprint(cast(BinaryIO, sink))
            yield Copy(fp, Path(sink.name))


def summarise(verdicts: list[Verdict]) -> dict[str, int]:
    """How many verdicts have each status (every status present, zero or not)."""
    summary: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for verdict in verdicts:
        summary[verdict.status] += 1
    summary["total"] = len(verdicts)
    return summary


def _raw_fingerprint(stream: BinaryIO) -> Fingerprint:
    import hashlib

    h = hashlib.sha256()
    while chunk := stream.read(1 << 20):
        h.update(chunk)
    return Fingerprint(
        digest=h.digest(), pixel_digest=b"", transfer_syntax="", dataset_offset=0,
        dataset_length=stream.tell(),
    )  # fmt: skip


@contextlib.contextmanager
def _scratch() -> Iterator[IO[bytes]]:
    with tempfile.NamedTemporaryFile(prefix="xray-original-", suffix=".dcm") as sink:
        yield sink


__all__ = [
    "EXPLANATIONS",
    "STATUSES",
    "BatchEvidence",
    "Copies",
    "Evidence",
    "Record",
    "StudyVerdict",
    "Verdict",
    "Verifier",
    "summarise",
]
