"""Grants made on chain, imported into the index: ``up`` follows ``AccessGranted`` and
``AccessRevoked`` from a cursor kept in the index.

A Hospital or Doctor account may call ``grantAccess``/``revokeAccess`` on the contract
itself, not through the gateway. :class:`GrantSync` reads those events block range by
block range, past a cursor in the shared index (``chain_cursors``, name ``grants``), and
writes each one into the ``grants`` table as the gateway's own writes do: a row only from a
mined event, keys as the chain names them (grantee, patient, study), the granter's
address. Enforcement matches grants by key (:meth:`gateway.trust.grants.Grants.check`), so:

- a grantee that is an account address is shown as that address (its grantee id); a token
  key is shown as the name of the token whose id it is derived from (that id is the row's
  grantee id), when this gateway issued it, else as ``key:<hex>`` with no grantee id; all
  are enforced alike, by key;
- a grant on a study or patient key the index does not know yet is kept, and applies as
  soon as an instance of that study or patient arrives (the loop names its study then).

**Idempotent.** Importing the same event twice changes nothing (the grant id and its
transaction are the row's), so a restart that re-reads blocks, or several nodes sharing
one index, import each grant once. One pass at a time per cluster moves the cursor
(compare-and-set under a lock); a node whose pass lost the race has imported the same
events and leaves the cursor alone.

**Reorgs.** Only blocks ``confirmations`` deep are read (``GATEWAY_GRANT_SYNC_CONFIRMATIONS``).
The cursor keeps the hash of the last block read; if the chain now has another block at
that height, the blocks of the last ``reorg_depth`` are read again and what they held
before and hold no more is undone (grants dropped, revocations un-done) before the chain's
events there are imported. The Orthanc plugin's ledger mirror rebuilds its whole view at
each start instead; the grants are kept in the shared index, so they are mended in place.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from eth_utils.address import to_checksum_address

from gateway.core.access import grantee_key, study_key
from gateway.index import grants as rows
from gateway.index.db import Index
from gateway.index.grants import ChainCursor, GrantRow
from gateway.ledger.types import LedgerEvent

log = logging.getLogger(__name__)

#: The cursor's name in ``chain_cursors``.
CURSOR = "grants"
#: The events followed, in the order a block's events are applied when ids tie.
EVENTS = ("AccessGranted", "AccessRevoked")
#: Instance rows read per pass while naming the studies of grants made on chain.
STUDY_SCAN = 10_000


class GrantEvents(Protocol):
    """What the sync reads from the chain (:class:`~gateway.ledger.client.XrayLedger`)."""

    from_block: int

    def events(
        self, name: str, *, from_block: int = 0, to_block: int | None = None
    ) -> list[LedgerEvent]: ...

    def head_block(self) -> int: ...

    def block_hash(self, block_number: int) -> str: ...

    def block_time(self, block_number: int) -> int: ...


@dataclass(frozen=True)
class SyncPass:
    """What one pass did: the blocks read, grants and revocations new to the index, rows
    a reorg undid, and whether this pass moved the cursor."""

    first: int
    last: int
    granted: int
    revoked: int
    undone: int
    moved: bool


class GrantSync:
    """Imports the contract's grant events into the index from its cursor.

    Parameters
    ----------
    chain:
        The contract (read-only is enough).
    index:
        The index (``grants``, ``chain_cursors``; instances for study names).
    pseudonym_key:
        The site's pseudonym key: study keys, and token holders' grantee keys.
    token_ids:
        ``(name, id)`` of the tokens this gateway issued (``Tokens.ids``): a token key is
        shown by the name of the token whose id it is derived from.
    confirmations:
        Blocks below the head that are not read yet (0: up to the head).
    reorg_depth:
        How many blocks are read again when the last block read changed.
    """

    def __init__(
        self,
        *,
        chain: GrantEvents,
        index: Index,
        pseudonym_key: bytes,
        token_ids: Callable[[], Iterable[tuple[str, str]]] = tuple,
        confirmations: int = 0,
        reorg_depth: int = 64,
    ) -> None:
        self.chain = chain
        self.index = index
        self.pseudonym_key = pseudonym_key
        self.token_ids = token_ids
        self.confirmations = confirmations
        self.reorg_depth = reorg_depth
        self._studies_read = 0  # instance rows whose Study UID the naming has hashed
        self._study_keys: dict[bytes, str] = {}

    def sync(self) -> SyncPass | None:
        """One pass: import the blocks past the cursor up to the confirmed head (None: none
        new), then name the studies that standing grants made on chain wait for."""
        done = self._import()
        self.name_studies()
        return done

    def _import(self) -> SyncPass | None:
        read = rows.cursor(self.index, CURSOR)
        head = self.chain.head_block()
        last = head - self.confirmations
        first = read.next_block if read is not None else self.chain.from_block
        reorged = read is not None and self._reorged(read, head)
        if reorged:  # read the last reorg_depth blocks again (never past the head)
            first = max(self.chain.from_block, min(first - self.reorg_depth, last + 1))
            log.warning("grant sync: the chain changed below block %d: reading again", first)
        elif last < first:
            return None
        found = sorted(
            (event for name in EVENTS
             for event in self.chain.events(name, from_block=first, to_block=last)),
            key=lambda e: (e.block_number, e.log_index),
        ) if last >= first else []  # fmt: skip
        undone = 0
        if reorged:  # everything imported from `first` on, up to where the cursor was
            assert read is not None
            undone = self._undo(found, first, max(last, read.next_block - 1))
        granted = revoked = 0
        names = self._names() if any(e.name == "AccessGranted" for e in found) else {}
        for event in found:
            if event.name == "AccessGranted":
                granted += rows.import_granted(self.index, self._grant(event, names))
            else:
                revoked += rows.import_revoked(
                    self.index, _number(event.args["grantId"]), at=self._time(event),
                    by=str(event.args["by"]), tx_hash=event.tx_hash, block=event.block_number,
                )  # fmt: skip
        after = ChainCursor(last + 1, self._hash(last))
        moved = rows.move_cursor(self.index, CURSOR, read=read, to=after)
        return SyncPass(first, last, granted, revoked, undone, moved)

    def _hash(self, block: int) -> str | None:
        """The hash of ``block`` (None before the deployment block: nothing to compare)."""
        return self.chain.block_hash(block) if block >= self.chain.from_block else None

    def _reorged(self, read: ChainCursor, head: int) -> bool:
        """Whether the block the cursor last read is gone, or has another hash now."""
        if read.last_hash is None or read.next_block <= self.chain.from_block:
            return False
        if read.next_block - 1 > head:
            return True
        return self.chain.block_hash(read.next_block - 1) != read.last_hash

    def _undo(self, found: list[LedgerEvent], first: int, last: int) -> int:
        def held(name: str) -> set[tuple[int, str]]:
            return {(_number(e.args["grantId"]), e.tx_hash) for e in found if e.name == name}

        return rows.undo_reorged(
            self.index, first=first, last=last, granted=held("AccessGranted"),
            revoked=held("AccessRevoked"),
        )  # fmt: skip

    def _names(self) -> dict[bytes, tuple[str, str]]:
        """Grantee key -> ``(name, id)``, for the tokens this gateway issued."""
        return {
            grantee_key(self.pseudonym_key, token_id): (name, token_id)
            for name, token_id in self.token_ids()
        }

    def _time(self, event: LedgerEvent) -> float:
        return float(self.chain.block_time(event.block_number))

    def _grant(self, event: LedgerEvent, names: dict[bytes, tuple[str, str]]) -> GrantRow:
        """The index row of an ``AccessGranted`` event (keys; names where this gateway knows)."""
        args = event.args
        grantee, study = _key(args["grantee"]), _key(args["studyKey"])
        kind, shown, grantee_id = grantee_shown(grantee, names)
        return GrantRow(
            id=_number(args["grantId"]), grantee=shown, grantee_kind=kind, grantee_key=grantee,
            patient_key=_key(args["patientKey"]), study_instance_uid=None,
            study_key=study if any(study) else None,
            expires_at=float(_number(args["expiresAt"])), granted_at=self._time(event),
            granted_by=str(args["granter"]), tx_hash=event.tx_hash,
            block_number=event.block_number, revoked_at=None, revoked_by=None, revoke_tx=None,
            grantee_id=grantee_id,
        )  # fmt: skip

    def name_studies(self, *, now: float | None = None) -> int:
        """Give the standing study grants made on chain their Study UID once the index holds
        an instance of that study; returns how many grants were named.

        The index's rows are hashed once each, a bounded slice per pass, and only while
        some standing grant waits for a name.
        """
        wanted = set(rows.unnamed_study_keys(self.index, now=time.time() if now is None else now))
        named = 0
        while wanted:
            batch = rows.studies_after(self.index, self._studies_read, limit=STUDY_SCAN)
            for row_id, uid in batch:
                self._study_keys.setdefault(study_key(self.pseudonym_key, uid), uid)
                self._studies_read = row_id
            for key in [k for k in wanted if k in self._study_keys]:
                named += rows.name_study(self.index, key, self._study_keys[key])
                wanted.discard(key)
            if len(batch) < STUDY_SCAN:
                break
        return named


def _key(value: object) -> bytes:
    """A ``bytes32`` event argument."""
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValueError("not a 32-byte key")
    return value


def _number(value: object) -> int:
    """A ``uint`` event argument."""
    if not isinstance(value, int):
        raise ValueError("not a number")
    return value


def grantee_shown(grantee: bytes, names: dict[bytes, tuple[str, str]]) -> tuple[str, str, str]:
    """``(kind, label, grantee id)`` of a grantee key: ``account``, its checksummed address
    and the address when it is an address left-padded to 32 bytes, else ``token``, the
    token's name and id (or ``key:<hex>`` and ``""`` for a token this gateway did not
    issue)."""
    if len(grantee) == 32 and not any(grantee[:12]):
        address = str(to_checksum_address(grantee[12:]))
        return "account", address, address.lower()
    name, token_id = names.get(grantee, ("key:" + grantee.hex(), ""))
    return "token", name, token_id


class GrantSyncLoop:
    """The thread ``up`` runs: :meth:`GrantSync.sync` every ``interval`` seconds."""

    def __init__(self, sync: GrantSync, *, interval: float) -> None:
        self.sync = sync
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grant-sync", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                done = self.sync.sync()
                if done is not None and (done.granted or done.revoked or done.undone):
                    log.info(
                        "grant sync: blocks %d-%d: %d grants, %d revocations imported, %d undone",
                        done.first, done.last, done.granted, done.revoked, done.undone,
                    )  # fmt: skip
                if self._failing:
                    log.info("grant sync: the chain answers again")
                self._failing = False
            except Exception as exc:  # the chain or the index is out: try again next time
                if not self._failing:
                    log.warning("grant sync: %s: %s; trying again", type(exc).__name__, exc)
                self._failing = True
            self._stop.wait(self.interval)


__all__ = ["CURSOR", "GrantEvents", "GrantSync", "GrantSyncLoop", "SyncPass", "grantee_shown"]
