"""The append-only log over the contract's batches, kept from the chain, with signed checkpoints.

Its leaves are every batch the xray contract holds, in id order (every node's image
batches, and whatever else the contract numbers in the same sequence), as
:mod:`gateway.core.tlog` hashes them. They are read from the chain (``batchCount``,
``batchOf``), never from one node's memory of what it sent, and kept in the shared index
(``log_leaves``, schema step 12) so that each batch is read once per cluster. Checkpoints
are signed with the gateway's log key (:mod:`gateway.core.checkpoint`).
"""

from __future__ import annotations

import threading
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.core.checkpoint import Checkpoint, NoteVerifier, sign, verifier_of
from gateway.core.merkle import InclusionProof
from gateway.core.tlog import consistency_proof, inclusion_proof, log_leaf_hash, tree_root
from gateway.index.db import Index
from gateway.ledger.types import Batch


class BatchSource(Protocol):
    """What the log reads from the chain: how many batches there are, and each one."""

    def batch_count(self) -> int: ...

    def batch_of(self, batch_id: int) -> Batch: ...


def default_origin(chain_id: int, contract: str) -> str:
    """The log's origin when ``GATEWAY_LOG_ORIGIN`` is unset: one log per chain and contract."""
    return f"xray-gateway/{chain_id}/{contract.lower()}"


class BatchLog:
    """The log of every anchored batch; checkpoints, inclusion and consistency proofs.

    Parameters
    ----------
    chain:
        The xray contract (``batchCount``/``batchOf``).
    index:
        Where the leaves are kept (shared by every node of the cluster).
    key, origin:
        The log's Ed25519 key and the origin it signs checkpoints as.
    """

    def __init__(
        self, *, chain: BatchSource, index: Index, key: Ed25519PrivateKey, origin: str
    ) -> None:
        self.chain = chain
        self.index = index
        self.key = key
        self.origin = origin
        self.verifier: NoteVerifier = verifier_of(key, origin)
        self._lock = threading.Lock()
        self._leaves: list[bytes] = []

    def sync(self) -> int:
        """Read the batches the chain holds beyond those kept; the log's size after."""
        with self._lock:
            kept = self.index.query("SELECT batch_id, root FROM log_leaves ORDER BY batch_id")
            for batch_id, root in kept[len(self._leaves) :]:
                if batch_id != len(self._leaves) + 1:
                    break  # a gap (a node still writing): read it from the chain below
                self._leaves.append(log_leaf_hash(int(batch_id), bytes(root)))
            count = self.chain.batch_count()
            fresh = [self.chain.batch_of(i) for i in range(len(self._leaves) + 1, count + 1)]
            if fresh:
                with self.index.transaction() as db:
                    for batch in fresh:
                        db.execute(
                            "INSERT INTO log_leaves (batch_id, root) VALUES (?, ?)"
                            " ON CONFLICT (batch_id) DO NOTHING",
                            (batch.batch_id, batch.root),
                        )
                self._leaves += [log_leaf_hash(b.batch_id, b.root) for b in fresh]
            return len(self._leaves)

    def _prefix(self, size: int) -> list[bytes]:
        if size > len(self._leaves):
            self.sync()
        with self._lock:
            if not 0 <= size <= len(self._leaves):
                raise ValueError(f"the log holds {len(self._leaves)} batches, not {size}")
            return self._leaves[:size]

    def checkpoint(self) -> tuple[Checkpoint, str]:
        """The log at its newest size, and that checkpoint as a note signed by the log key."""
        size = self.sync()
        checkpoint = Checkpoint(origin=self.origin, size=size, root=tree_root(self._prefix(size)))
        return checkpoint, sign(checkpoint, self.key)

    def inclusion(self, batch_id: int, size: int) -> InclusionProof:
        """The proof that batch ``batch_id`` is leaf ``batch_id - 1`` of the log of ``size``.

        Raises ValueError when the batch is not in the log of that size.
        """
        if not 1 <= batch_id <= size:
            raise ValueError(f"batch {batch_id} is not in the log of size {size}")
        return inclusion_proof(self._prefix(size), batch_id - 1)

    def consistency(self, first: int, second: int) -> tuple[bytes, ...]:
        """The RFC 6962 proof that the log of ``first`` is a prefix of the log of ``second``.

        Raises ValueError unless ``0 < first <= second <= size``.
        """
        if first > second:
            raise ValueError(f"no consistency proof from size {first} down to {second}")
        return consistency_proof(self._prefix(second), first)


__all__ = ["BatchLog", "BatchSource", "default_origin"]
