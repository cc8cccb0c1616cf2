"""The plugin's view of the ledger: the xray contract's events, followed in the background.

A read in Orthanc never waits for the chain. A thread in Orthanc's process follows the
contract's ``ImageRecorded``, ``ImageSuperseded``, ``BatchAnchored``, ``ImageRetired``,
``RoleGranted`` and ``RoleRevoked`` events (a few ``eth_getLogs`` per interval, whatever
the number of images) and keeps, in memory, who wrote which version of which record key,
which batches the chain holds, the retirements and the Recorder/admin role history.
The check then asks :meth:`LedgerMirror.facts`, which applies the same rule as the
verify API and the CLI (:func:`gateway.core.ownership.rule`): the owner of a key is the trusted
recorder of its earliest anchoring, and only the owner's (or the admin's) versions and
retirements count:

- on chain: the index's evidence is confirmed by the ledger, written by the owner;
- not on chain although the mirror has synced past the block the index names: the
  index claims an anchor the ledger does not hold (or that another account wrote), so
  the copy is refused;
- not synced that far yet (or the chain unreachable): the index's evidence stands alone
  until the mirror catches up.

The mirror is rebuilt from the chain at every start (nothing of it is on disk for an
intruder to edit). A batched version is confirmed when its inclusion proof (from the
index) leads from the leaf of its record key, patient key and digests to the root and
leaf count the chain's ``BatchAnchored`` event holds: a few SHA-256 per read, no chain
call. An index row whose digest was rewritten, or whose proof was forged, meets a root
it does not lead to and is refused once the mirror holds that batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.core.merkle import claimed_in_batch
from gateway.core.ownership import (
    Anchoring,
    Position,
    Retiring,
    Role,
    RoleChange,
    Ruling,
    Trust,
    rule,
    same_account,
)
from gateway.ledger.roles import role_change
from gateway.ledger.types import retire_reason_name
from gateway.orthanc_plugin.verdict import LedgerFacts, RetirementFacts, Version

if TYPE_CHECKING:
    from gateway.ledger.client import XrayLedger


class LedgerMirror:
    """Follows the xray contract's events; thread-safe reads, one writer thread.

    Parameters
    ----------
    connect:
        Returns a read-only :class:`~gateway.ledger.client.XrayLedger`; called in the
        mirror's thread (importing web3 takes a second: Orthanc's start does not wait).
    from_block:
        The contract's deployment block: no event of it is older.
    log_range:
        The most blocks one ``eth_getLogs`` may span (Besu refuses wider ranges).
    interval:
        Seconds between polls.
    log:
        Orthanc's log.
    trusted_recorders:
        ``XrayGateway.TrustedRecorders``: only these recorders count; by default whoever
        held the Recorder role when it wrote.
    """

    def __init__(
        self,
        *,
        connect: Callable[[], XrayLedger],
        from_block: int = 0,
        log_range: int = 5_000,
        interval: float = 2.0,
        log: Callable[[str], None] = lambda message: None,
        trusted_recorders: frozenset[str] | None = None,
    ) -> None:
        self._connect = connect
        self._ledger: XrayLedger | None = None
        self._next = from_block
        self._log_range = log_range
        self.interval = interval
        self.log = log
        self._trusted_recorders = trusted_recorders
        # record key -> its direct versions (recorder, where, digest)
        self._versions: dict[bytes, list[Anchoring[None]]] = {}
        self._batches: dict[int, _Batch] = {}
        self._retired: dict[bytes, list[tuple[Retiring, int | None]]] = {}  # with block time
        self._roles: dict[Position, RoleChange] = {}
        self._trust = Trust(configured=trusted_recorders)
        self._synced: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    @property
    def synced_block(self) -> int | None:
        """The last block whose events are all in the mirror, or None before the first sync."""
        return self._synced

    def facts(self, version: Version, others: Sequence[Version] = ()) -> LedgerFacts:
        """What the chain says about ``version`` as far as the mirror has synced.

        ``others`` are the index's other versions of the instance: their proven batch
        memberships are anchorings of the key too, and the earliest one decides its owner.
        """
        synced = self._synced
        if synced is None:
            return LedgerFacts(on_chain=None, synced_block=None)
        if version.record_key is None:
            return LedgerFacts(on_chain=False, synced_block=synced)
        ruling = self.ruling(version.record_key, (version, *others))
        retired = self._retirement(version.record_key, ruling)
        foreign = _foreign(ruling)
        accepted = any(a.digest == version.digest for a in ruling.accepted)
        if accepted:
            return LedgerFacts(True, synced, retired=retired, foreign=foreign)
        if version.batch_id is not None:
            if version.batch_id in self._batches:  # the chain holds this batch: the proof decides
                return LedgerFacts(False, synced, retired=retired, foreign=foreign)
        elif any(a.digest == version.digest for a in ruling.foreign):
            return LedgerFacts(False, synced, retired=retired, foreign=foreign)
        covered = version.block_number is not None and version.block_number <= synced
        return LedgerFacts(
            on_chain=False if covered else None, synced_block=synced, retired=retired,
            foreign=foreign,
        )  # fmt: skip

    def ruling(self, record_key: bytes, versions: Sequence[Version]) -> Ruling[None]:
        """The trust rule over the key's direct versions and the index's proven batch leaves."""
        anchorings = list(self._versions.get(record_key, ()))
        for version in versions:
            batch = self._batches.get(version.batch_id) if version.batch_id is not None else None
            if batch is None or version.record_key != record_key:
                continue
            if _member(version, batch.root, batch.count):
                anchorings.append(
                    Anchoring(batch.recorder, batch.at, version.digest, batched=True, item=None)
                )
        retirements = [retiring for retiring, _ in self._retired.get(record_key, ())]
        return rule(anchorings, retirements, self._trust)

    def _retirement(self, record_key: bytes, ruling: Ruling[None]) -> RetirementFacts | None:
        counted = ruling.retirement
        if counted is None:
            return None
        for retiring, block_time in self._retired.get(record_key, ()):
            if retiring == counted:
                return RetirementFacts(
                    by=retiring.account, reason=retiring.reason,
                    block_number=retiring.at.block_number, block_time=block_time,
                )  # fmt: skip
        return None

    def sync(self) -> int:
        """Fetch every event up to the current head; returns the head. Raises on chain errors."""
        if self._ledger is None:
            self._ledger = self._connect()
        ledger = self._ledger
        head = int(ledger.w3.eth.block_number)
        start = self._next
        while start <= head:
            end = min(head, start + self._log_range - 1)
            self._apply(ledger, start, end)
            self._next = end + 1
            self._synced = end
            start = end + 1
        if self._synced is None or self._synced < head:
            self._synced = head
        return head

    def _apply(self, ledger: XrayLedger, start: int, end: int) -> None:
        events = ledger.contract.events

        def logs(name: str) -> list[Any]:
            return list(getattr(events, name)().get_logs(from_block=start, to_block=end))

        ids: dict[bytes, Role] = {
            ledger.role_id("recorder"): "recorder",
            ledger.role_id("admin"): "admin",
        }
        for name in ("RoleGranted", "RoleRevoked"):
            for log in logs(name):
                change = role_change(name, dict(log["args"]), _at(log), ids)
                if change is not None:
                    self._roles[change.at] = change
        self._trust = Trust(self._roles.values(), configured=self._trusted_recorders)
        for log in logs("ImageRecorded") + logs("ImageSuperseded"):
            args = log["args"]
            self._versions.setdefault(bytes(args["recordKey"]), []).append(
                Anchoring(str(args["recorder"]), _at(log), bytes(args["digest"]), False, None)
            )
        for log in logs("BatchAnchored"):
            args = log["args"]
            self._batches[int(args["batchId"])] = _Batch(
                root=bytes(args["root"]), count=int(args["count"]),
                recorder=str(args["recorder"]), at=_at(log),
            )  # fmt: skip
        for log in logs("ImageRetired"):
            try:
                block_time: int | None = int(
                    ledger.w3.eth.get_block(log["blockNumber"])["timestamp"]
                )
            except Exception:
                block_time = None
            retiring = Retiring(
                str(log["args"]["by"]), _at(log), retire_reason_name(log["args"]["reason"])
            )
            self._retired.setdefault(bytes(log["args"]["recordKey"]), []).append(
                (retiring, block_time)
            )

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="xray-ledger-mirror", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
                if self._failing:
                    self.log(f"xray-gateway: ledger mirror caught up (block {self._synced})")
                self._failing = False
            except Exception as exc:
                if not self._failing:
                    self.log(
                        f"xray-gateway: ledger mirror cannot reach the chain ({type(exc).__name__}:"
                        f" {exc}); reads rely on the index's evidence until it can"
                    )
                self._failing = True
                self._ledger = None
            self._stop.wait(self.interval)


@dataclass(frozen=True)
class _Batch:
    """A ``BatchAnchored`` event: the root, its leaf count, who anchored it and where."""

    root: bytes
    count: int
    recorder: str
    at: Position


def _at(log: Any) -> Position:
    return Position(int(log["blockNumber"]), int(log["logIndex"]))


def _foreign(ruling: Ruling[None]) -> tuple[str, ...]:
    """Accounts other than the owner whose versions or retirements of the key were ignored."""
    owner = ruling.owner
    accounts = {a.account for a in ruling.foreign} | {r.account for r in ruling.ignored_retirements}
    return tuple(sorted(a for a in accounts if owner is None or not same_account(a, owner)))


def _member(version: Version, root: bytes, count: int) -> bool:
    """Whether the version's proof leads from its leaf to ``root`` in a tree of ``count``."""
    return claimed_in_batch(
        record_key=version.record_key, patient_key=version.patient_key, digest=version.digest,
        pixel_digest=version.pixel_digest, proof=version.proof, root=root, count=count,
    )  # fmt: skip


def wait_synced(mirror: LedgerMirror, block: int, *, timeout: float = 30.0) -> bool:
    """Wait until ``mirror`` has synced ``block`` (tests and start-up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        synced = mirror.synced_block
        if synced is not None and synced >= block:
            return True
        time.sleep(0.05)
    return False
