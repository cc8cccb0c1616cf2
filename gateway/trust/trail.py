"""The tamper-evident access trail: who read which image, when, and the verdict served.

Data flow (docs/architecture.md, "The access trail")::

    Orthanc plugin ──append──> access.sqlite (its journal, XrayGateway.AlertsDir)
                                    │ read-only, past the high-water mark
    API reads (token name) ──┐      v
                             └──> index: access_log ──cut──> access_batches
                                                                 │ recordAccessBatch(root, n)
                                                                 v
                                                  xray contract (batch of kind Access)

Each entry becomes an :class:`~gateway.core.access.AccessLeaf` (pseudonymous keys only);
the leaves of a batch make the same RFC 6962 tree as image batches, and its root is
anchored as a batch of kind ``Access`` in the contract's one sequence of batch ids.
Queries (:meth:`Trail.entries`) answer "who read study X" and "what did user Y read",
each entry with its leaf inputs, inclusion proof, batch root, batch id and transaction.
:func:`check_trail` (run by every audit sweep) recomputes each anchored batch's root from
the entries the index holds now: a deleted entry (a leaf index gone), an edited one (the
root differs) or a whole batch gone from the index (the chain's ``AccessBatchAnchored``
has no local batch) is a ``trail_tampered`` finding.

Trust window: an entry is sealed against change once its batch is on the chain. Before
that it can be changed without trace: in the plugin's journal until imported (the
importer runs every ``poll_s``, one second by default), then in the index until its batch
is cut (at ``GATEWAY_TRAIL_BATCH_MAX`` entries or ``GATEWAY_TRAIL_WINDOW_S``) and mined.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from gateway.core.access import AccessLeaf, instance_key, study_key, who_key
from gateway.core.merkle import InclusionProof, MerkleTree, verify_inclusion
from gateway.errors import GatewayError, XrayBatchExists
from gateway.index import access
from gateway.index.access import AccessRow, NewEntry, TrailBatch
from gateway.index.db import Index
from gateway.index.engine import DATABASE_ERRORS
from gateway.ledger.base import LedgerReader
from gateway.ledger.types import Anchor, LedgerEvent
from gateway.trust.access_journal import read_after

log = logging.getLogger(__name__)

# What a round of the loop may fail with and try again on its next round (either engine).
_RETRIED: tuple[type[Exception], ...] = (GatewayError, *DATABASE_ERRORS)

PLUGIN_SOURCE = "orthanc-plugin"


class TrailWriter(Protocol):
    """What anchoring a trail batch needs of the contract (:class:`XrayLedger`)."""

    def batch_id_of(self, root: bytes) -> int: ...

    def record_access_batch(self, *, root: bytes, count: int) -> tuple[int, Anchor]: ...

    def events(
        self, name: str, *, from_block: int = 0, to_block: int | None = None,
        filters: dict[str, Any] | None = None,
    ) -> list[LedgerEvent]: ...  # fmt: skip


@dataclass(frozen=True)
class ProvenEntry:
    """One entry with the evidence that puts it on the chain (``batch_id`` None: not yet)."""

    entry: AccessRow
    leaf: AccessLeaf
    batch_id: int | None
    root: bytes | None
    tx_hash: str | None
    block_number: int | None
    proof: InclusionProof | None

    def as_json(self) -> dict[str, object]:
        """The entry, its leaf inputs and its proof, as the API and the CLI show them."""
        e = self.entry
        return {
            "id": e.id,
            "at": e.at,
            "who": e.who,
            "who_kind": e.who_kind,
            "route": e.route,
            "study_instance_uid": e.study_instance_uid,
            "sop_instance_uid": e.sop_instance_uid,
            "verdict": e.verdict,
            "served": e.served,
            "anchored": self.batch_id is not None,
            "leaf_inputs": self.leaf.as_json(),
            "leaf": self.leaf.hash().hex(),
            "batch_id": self.batch_id,
            "root": self.root.hex() if self.root else None,
            "tx_hash": self.tx_hash,
            "block_number": self.block_number,
            "proof": None
            if self.proof is None
            else {
                "index": self.proof.index,
                "size": self.proof.size,
                "path": [node.hex() for node in self.proof.path],
            },
        }


@dataclass(frozen=True)
class TrailFinding:
    """A difference between the local trail and what the chain anchored."""

    batch_id: int
    problem: str  # "deleted", "edited" or "batch_missing"
    explanation: str
    leaf_indexes: tuple[int, ...] = ()


class Trail:
    """The access trail over the gateway's index, with the site's pseudonym key."""

    def __init__(self, index: Index, *, pseudonym_key: bytes) -> None:
        self.index = index
        self._key = pseudonym_key

    # -- writing -----------------------------------------------------------------------------

    def leaf(self, row: AccessRow) -> AccessLeaf:
        """The leaf inputs of one local entry (pseudonymous keys only)."""
        return AccessLeaf(
            entry_id=row.id,
            at_ms=round(row.at * 1000),
            # an erased study's entries keep these keys, not their UIDs (trust/erasure.py)
            record_key=row.leaf_record_key or instance_key(self._key, row.sop_instance_uid),
            study_key=row.leaf_study_key or study_key(self._key, row.study_instance_uid),
            who_key=who_key(self._key, row.who_kind, row.who),
            route=row.route,
            verdict=row.verdict,
            served=row.served,
        )

    def root(self, rows: Sequence[AccessRow]) -> bytes:
        return MerkleTree([self.leaf(row).hash() for row in rows]).root

    def record(
        self, *, who: str, who_kind: str, route: str, verdict: str, served: bool,
        sop_instance_uid: str | None = None, study_instance_uid: str | None = None,
    ) -> None:  # fmt: skip
        """Add one read made through the gateway itself (the API: ``who`` is the token name)."""
        entry = NewEntry(
            source_seq=None, at=time.time(), who=who, who_kind=who_kind, route=route,
            sop_instance_uid=sop_instance_uid, study_instance_uid=study_instance_uid,
            verdict=verdict, served=served,
        )  # fmt: skip
        access.add(self.index, access.API_SOURCE, [entry])

    def import_journal(self, path: Path, *, source: str, limit: int = 5000) -> int:
        """Import the plugin journal's entries past this source's high-water mark."""
        imported = 0
        while True:
            fresh = read_after(path, access.high_water(self.index, source), limit=limit)
            if not fresh:
                return imported
            imported += access.add(self.index, source, [
                NewEntry(
                    source_seq=e.id, at=e.at, who=e.who, who_kind=e.who_kind, route=e.route,
                    sop_instance_uid=e.sop_instance_uid, study_instance_uid=e.study_instance_uid,
                    verdict=e.verdict, served=e.served,
                )
                for e in fresh
            ])  # fmt: skip
            if len(fresh) < limit:
                return imported

    def cut(
        self, *, max_entries: int, window_s: float, now: float | None = None
    ) -> TrailBatch | None:
        """Cut a batch once ``max_entries`` wait, or the oldest has waited ``window_s``."""
        ((waiting, oldest),) = self.index.query(
            "SELECT COUNT(*), MIN(at) FROM access_log WHERE batch IS NULL"
        )
        now = time.time() if now is None else now
        if not waiting or (waiting < max_entries and now - float(oldest) < window_s):
            return None
        return access.cut_batch(self.index, limit=max_entries, root_of=self.root)

    def send(self, ledger: TrailWriter, *, worker: str, lease_s: float = 60.0) -> list[int]:
        """Anchor every open batch this worker can lease; returns the chain's batch ids.

        A root already on the chain (a send whose receipt was lost) is closed with the id
        the chain gave it, never sent twice.
        """
        landed: list[int] = []
        while (batch := access.claim_open_batch(self.index, worker, lease_s=lease_s)) is not None:
            try:
                batch_id, tx_hash, block = self._anchor(ledger, batch)
            except GatewayError as exc:
                access.fail_batch(self.index, batch.id, str(exc), retry_in=5.0)
                log.warning("access trail batch %d not anchored yet: %s", batch.id, exc)
                break
            access.close_batch(
                self.index, batch.id, batch_id=batch_id, tx_hash=tx_hash, block_number=block
            )
            landed.append(batch_id)
        return landed

    def _anchor(self, ledger: TrailWriter, batch: TrailBatch) -> tuple[int, str, int]:
        existing = ledger.batch_id_of(batch.root)
        if existing == 0:
            try:
                batch_id, anchor = ledger.record_access_batch(root=batch.root, count=batch.count)
                return batch_id, anchor.tx_hash, anchor.block_number
            except XrayBatchExists:
                existing = ledger.batch_id_of(batch.root)
        # sent before (its receipt lost): the chain's event says where it landed
        (event,) = ledger.events("AccessBatchAnchored", filters={"batchId": existing})
        return existing, event.tx_hash, event.block_number

    # -- reading -----------------------------------------------------------------------------

    def entries(
        self, *, study: str | None = None, who: str | None = None, after: int = 0,
        limit: int = 100,
    ) -> list[ProvenEntry]:  # fmt: skip
        """Entries of one study or one reader, oldest first, each with its proof."""
        keyed = None if study is None else study_key(self._key, study)  # an erased study's too
        rows = access.entries(
            self.index, study=study, who=who, after=after, limit=limit, study_key=keyed
        )
        trees: dict[int, tuple[TrailBatch, MerkleTree]] = {}
        found = []
        for row in rows:
            leaf = self.leaf(row)
            if row.batch is None or row.leaf_index is None:
                found.append(ProvenEntry(row, leaf, None, None, None, None, None))
                continue
            if row.batch not in trees:
                batch = access.batch(self.index, row.batch)
                members = access.batch_entries(self.index, row.batch)
                trees[row.batch] = (batch, MerkleTree([self.leaf(m).hash() for m in members]))
            batch, tree = trees[row.batch]
            if batch.state != "landed":
                found.append(ProvenEntry(row, leaf, None, None, None, None, None))
                continue
            found.append(
                ProvenEntry(
                    row,
                    leaf,
                    batch.batch_id,
                    tree.root,
                    batch.tx_hash,
                    batch.block_number,
                    tree.proof(row.leaf_index) if row.leaf_index < tree.size else None,
                )
            )
        return found


def proof_holds(entry: ProvenEntry, ledger: LedgerReader) -> bool:
    """Whether ``entry``'s leaf, by its proof, is in the access batch the chain holds."""
    if entry.batch_id is None or entry.proof is None:
        return False
    on_chain = ledger.batch_of(entry.batch_id)
    return (
        ledger.batch_kind_of(entry.batch_id) == "access"
        and entry.proof.size == on_chain.count
        and verify_inclusion(leaf=entry.leaf.hash(), proof=entry.proof, root=on_chain.root)
    )


def check_trail(trail: Trail, ledger: LedgerReader) -> tuple[int, list[TrailFinding]]:
    """Recompute every anchored trail batch from the local entries and compare with the chain.

    Returns how many batches were checked and what differs: leaf indexes with no entry
    (deleted), a root that differs although every leaf index is there (edited), and
    access batches the chain holds, anchored by this gateway's recorders, that the index
    no longer knows (deleted whole).

    A batch mined while this runs is not among the landed batches read first: its sender
    closes it in the index on the receipt, before or after the chain's events are read.
    It is still known, by its root, and its entries are checked against the chain like
    any landed batch's.
    """
    findings: list[TrailFinding] = []
    batches = access.landed_batches(trail.index)
    for batch in batches:
        assert batch.batch_id is not None
        findings.extend(_check_batch(trail, ledger, batch))
    known = {batch.batch_id for batch in batches}
    ours = _our_recorders(trail.index)
    for event in ledger.events("AccessBatchAnchored"):
        batch_id = int(event.args["batchId"])  # type: ignore[call-overload]
        recorder = str(event.args.get("recorder", "")).lower()
        if batch_id in known or recorder not in ours:
            continue
        landing = access.batch_of_root(trail.index, bytes(event.args["root"]))  # type: ignore[call-overload]
        if landing is not None:  # mined while this ran (closed in the index since, or not)
            landing = replace(landing, batch_id=batch_id, tx_hash=event.tx_hash)
            findings.extend(_check_batch(trail, ledger, landing))
        else:
            findings.append(
                TrailFinding(
                    batch_id,
                    "batch_missing",
                    f"Access batch {batch_id} (transaction {event.tx_hash}) was anchored by "
                    "this gateway, but the index holds none of its entries: they were deleted.",
                )
            )
    return len(batches), findings


def _check_batch(trail: Trail, ledger: LedgerReader, batch: TrailBatch) -> list[TrailFinding]:
    assert batch.batch_id is not None
    on_chain = ledger.batch_of(batch.batch_id)
    rows = access.batch_entries(trail.index, batch.id)
    held = {row.leaf_index for row in rows}
    gone = tuple(i for i in range(on_chain.count) if i not in held)
    if gone:
        return [
            TrailFinding(
                batch.batch_id,
                "deleted",
                f"{len(gone)} of the {on_chain.count} entries access batch {batch.batch_id} "
                f"anchored (transaction {batch.tx_hash}) are gone from the local trail "
                f"(leaf indexes {', '.join(map(str, gone[:20]))}).",
                gone,
            )
        ]
    if (
        ledger.batch_kind_of(batch.batch_id) != "access"
        or len(rows) != on_chain.count
        or (trail.root(rows) != on_chain.root)
    ):
        return [
            TrailFinding(
                batch.batch_id,
                "edited",
                f"The entries of access batch {batch.batch_id} (transaction {batch.tx_hash}) "
                "no longer hash to the root the chain holds: an entry was edited.",
            )
        ]
    return []


def _our_recorders(index: Index) -> set[str]:
    """The recorder accounts that wrote this index's anchors (lowercase)."""
    return {
        str(recorder).lower()
        for (recorder,) in index.query(
            "SELECT DISTINCT recorder FROM instances WHERE recorder IS NOT NULL"
        )
    }


class TrailLoop:
    """A thread that imports the plugin's journal and, where it may send, anchors batches.

    ``journal``: the plugin's ``access.sqlite`` and the source name it is imported under
    (None: this process imports nothing). ``ledger``: the recorder's client of the process
    that anchors images (one account's nonces are handed out by one process), or None.
    """

    def __init__(
        self, trail: Trail, *, journal: tuple[Path, str] | None, ledger: TrailWriter | None,
        worker: str, max_entries: int, window_s: float, poll_s: float = 1.0,
    ) -> None:  # fmt: skip
        self.trail = trail
        self.journal = journal
        self.ledger = ledger
        self.worker = worker
        self.max_entries = max_entries
        self.window_s = window_s
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="access-trail", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def tick(self) -> None:
        """One round: import, cut, send."""
        if self.journal is not None:
            path, source = self.journal
            self.trail.import_journal(path, source=source)
        if self.ledger is not None:
            while self.trail.cut(max_entries=self.max_entries, window_s=self.window_s):
                pass
            self.trail.send(self.ledger, worker=self.worker)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.tick()
            except _RETRIED as exc:
                log.warning("access trail: %s", exc)
