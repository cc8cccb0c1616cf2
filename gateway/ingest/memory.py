"""In-memory stand-ins for the anchor and forward stages' outside parts, for unit tests.

They keep the real parts' promises that the pipeline relies on (an anchor is idempotent,
a transaction is confirmed until the chain loses it, identical bytes are stored once),
and let a test decide what fails: the real ones are ``anchor.py`` and ``forward.py``.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from gateway.ingest.stages import AnchorItem, AnchorResult, ForwardOutcome
from gateway.ledger.types import BatchedLeaf


class MemoryAnchorer:
    """The anchor stage on a ledger in a dict: each new version lands in a block of its own.

    Attributes
    ----------
    failures:
        Record key -> the exception its next anchors raise (delete the entry to let it land).
    records:
        Record key -> the versions anchored under it, in order.
    """

    recorder = "0x" + "ab" * 20

    def __init__(self) -> None:
        self.failures: dict[bytes, Exception] = {}
        self.records: dict[bytes, list[AnchorItem]] = {}
        self._landed: dict[tuple[bytes, bytes], AnchorResult] = {}
        self._lost: set[str] = set()
        self._blocks = 0
        self._lock = threading.Lock()

    def anchor(self, item: AnchorItem, *, batched: BatchedLeaf | None = None) -> AnchorResult:
        """Record ``item`` once; the same version again answers with its first landing."""
        failure = self.failures.get(item.record_key)
        if failure is not None:
            raise failure
        with self._lock:
            landed = self._landed.get((item.record_key, item.digest))
            if landed is not None and landed.tx_hash not in self._lost:
                return landed
            self._blocks += 1
            block = self._blocks
            tx_hash = (
                "0x"
                + hashlib.sha256(
                    item.record_key + item.digest + block.to_bytes(8, "big")
                ).hexdigest()
            )
            result = AnchorResult(
                tx_hash=tx_hash, block_number=block, block_time=1_700_000_000 + block,
                recorder=self.recorder,
            )  # fmt: skip
            self._landed[(item.record_key, item.digest)] = result
            self.records.setdefault(item.record_key, []).append(item)
            return result

    def confirmed(self, tx_hash: str) -> bool:
        """True for a transaction this ledger holds and has not lost."""
        with self._lock:
            held = {result.tx_hash for result in self._landed.values()}
            return tx_hash in held and tx_hash not in self._lost

    def lose(self, tx_hash: str) -> None:
        """The chain forgets a transaction (a node restarted from an older state)."""
        with self._lock:
            self._lost.add(tx_hash)


class MemoryForwarder:
    """The forward stage on a PACS in a dict: digest -> the Part-10 bytes it was sent.

    Attributes
    ----------
    failure:
        The exception every forward raises while it is set (a ``PacsUnavailable``, a
        ``PacsRejected``).
    conflict:
        What the PACS answers instead of storing, while it is set: it holds other bytes
        under the same SOP Instance UID.
    """

    def __init__(self) -> None:
        self.failure: Exception | None = None
        self.conflict: str | None = None
        self.stored: dict[bytes, bytes] = {}

    def forward(self, path: Path, *, digest: bytes) -> ForwardOutcome:
        """Keep the file's bytes under ``digest``; its Orthanc id is derived from the digest."""
        if self.failure is not None:
            raise self.failure
        orthanc_id = digest.hex()[:8]
        if self.conflict is not None:
            return ForwardOutcome(orthanc_id=orthanc_id, conflict=self.conflict)
        self.stored.setdefault(digest, path.read_bytes())
        return ForwardOutcome(orthanc_id=orthanc_id, conflict=None)
