"""The plugin's view of the ledger: the xray contract's events, followed in the background.

A read in Orthanc never waits for the chain. A thread in Orthanc's process follows the
contract's ``ImageRecorded``, ``ImageSuperseded``, ``BatchAnchored`` and
``ImageRetired`` events (a few ``eth_getLogs`` per interval, whatever the number of
images) and keeps, in memory, which ``(record_key, digest)`` pairs and batch ids the chain
holds and which records are retired. The check then asks :meth:`LedgerMirror.facts`:

- on chain: the index's evidence is confirmed by the ledger;
- not on chain although the mirror has synced past the block the index names: the
  index claims an anchor the ledger does not hold, so the copy is refused;
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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.ledger.merkle import decode_proof, leaf_hash, verify_inclusion
from gateway.orthanc_plugin.verdict import LedgerFacts, Retirement, Version

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
    """

    def __init__(
        self,
        *,
        connect: Callable[[], XrayLedger],
        from_block: int = 0,
        log_range: int = 5_000,
        interval: float = 2.0,
        log: Callable[[str], None] = lambda message: None,
    ) -> None:
        self._connect = connect
        self._ledger: XrayLedger | None = None
        self._next = from_block
        self._log_range = log_range
        self.interval = interval
        self.log = log
        self._recorded: set[tuple[bytes, bytes]] = set()
        self._batches: dict[int, tuple[bytes, int]] = {}  # id -> (root, count)
        self._retired: dict[bytes, Retirement] = {}
        self._synced: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    @property
    def synced_block(self) -> int | None:
        """The last block whose events are all in the mirror, or None before the first sync."""
        return self._synced

    def facts(self, version: Version) -> LedgerFacts:
        """What the chain says about ``version`` as far as the mirror has synced."""
        synced = self._synced
        retired = self._retired.get(version.record_key) if version.record_key else None
        if synced is None:
            return LedgerFacts(on_chain=None, synced_block=None, retired=retired)
        if version.batch_id is not None:
            batch = self._batches.get(version.batch_id)
            if batch is not None:  # the chain holds this batch: the proof must lead to it
                return LedgerFacts(
                    on_chain=_member(version, *batch), synced_block=synced, retired=retired
                )
            known = False
        else:
            known = (
                version.record_key is not None
                and (version.record_key, version.digest) in self._recorded
            )
        if known:
            return LedgerFacts(on_chain=True, synced_block=synced, retired=retired)
        covered = version.block_number is not None and version.block_number <= synced
        return LedgerFacts(
            on_chain=False if covered else None, synced_block=synced, retired=retired
        )

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

        for log in logs("ImageRecorded") + logs("ImageSuperseded"):
            self._recorded.add((bytes(log["args"]["recordKey"]), bytes(log["args"]["digest"])))
        for log in logs("BatchAnchored"):
            args = log["args"]
            self._batches[int(args["batchId"])] = (bytes(args["root"]), int(args["count"]))
        for log in logs("ImageRetired"):
            block = int(log["blockNumber"])
            try:
                block_time: int | None = int(ledger.w3.eth.get_block(block)["timestamp"])
            except Exception:
                block_time = None
            self._retired[bytes(log["args"]["recordKey"])] = Retirement(
                by=str(log["args"]["by"]),
                reason=str(log["args"]["reason"]),
                block_number=block,
                block_time=block_time,
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


def _member(version: Version, root: bytes, count: int) -> bool:
    """Whether the version's proof leads from its leaf to ``root`` in a tree of ``count``."""
    record_key, patient_key, pixels, encoded = (
        version.record_key, version.patient_key, version.pixel_digest, version.proof,
    )  # fmt: skip
    if record_key is None or patient_key is None or pixels is None or encoded is None:
        return False
    try:
        leaf = leaf_hash(
            record_key=record_key, patient_key=patient_key, digest=version.digest,
            pixel_digest=pixels,
        )  # fmt: skip
        proof = decode_proof(encoded)
    except ValueError:
        return False
    return proof.size == count and verify_inclusion(leaf=leaf, proof=proof, root=root)


def wait_synced(mirror: LedgerMirror, block: int, *, timeout: float = 30.0) -> bool:
    """Wait until ``mirror`` has synced ``block`` (tests and start-up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        synced = mirror.synced_block
        if synced is not None and synced >= block:
            return True
        time.sleep(0.05)
    return False
