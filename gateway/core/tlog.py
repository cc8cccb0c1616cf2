"""The append-only log over anchored batches: leaves, roots, inclusion and consistency (pure).

Every batch the xray contract anchors, in batch-id order (ids start at 1), is one leaf of
an RFC 6962 tree: leaf data = batch id (uint256, big-endian) ‖ batch root, hashed with the
0x00 leaf prefix; nodes are :func:`gateway.core.merkle.node_hash` (0x01 prefix). The
tree of the first ``n`` batches is the log at size ``n``; an auditor holding its root can
ask for a consistency proof (RFC 6962 §2.1.2, verified as RFC 9162 §2.1.4.2) that the
log at a later size still begins with exactly those batches.

Inclusion proofs are :class:`gateway.core.merkle.MerkleTree`'s (the batch tree is the
same RFC 6962 shape); consistency proofs are built and checked here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from gateway.core.merkle import (
    LEAF_PREFIX,
    InclusionProof,
    MerkleTree,
    node_hash,
    verify_inclusion,
)

#: The root of the empty log: SHA-256 of nothing (RFC 6962 §2.1).
EMPTY_ROOT = hashlib.sha256(b"").digest()


def log_leaf_data(batch_id: int, root: bytes) -> bytes:
    """The leaf data of batch ``batch_id``: its id as a uint256, big-endian, then its root."""
    if batch_id < 1:
        raise ValueError("batch ids start at 1")
    if len(root) != 32:
        raise ValueError("a batch root is 32 bytes")
    return batch_id.to_bytes(32, "big") + root


def log_leaf_hash(batch_id: int, root: bytes) -> bytes:
    """The RFC 6962 leaf hash of batch ``batch_id`` (0x00 prefix)."""
    return hashlib.sha256(LEAF_PREFIX + log_leaf_data(batch_id, root)).digest()


def tree_root(leaves: Sequence[bytes]) -> bytes:
    """The root of the log whose leaf hashes are ``leaves`` (:data:`EMPTY_ROOT` for none)."""
    return MerkleTree(leaves).root if leaves else EMPTY_ROOT


def inclusion_proof(leaves: Sequence[bytes], index: int) -> InclusionProof:
    """The audit path of leaf ``index`` in the log whose leaf hashes are ``leaves``."""
    if not leaves:
        raise IndexError("the empty log has no leaves")
    return MerkleTree(leaves).proof(index)


def consistency_proof(leaves: Sequence[bytes], first: int) -> tuple[bytes, ...]:
    """The RFC 6962 §2.1.2 proof that the log of ``first`` leaves is a prefix of ``leaves``.

    Raises ValueError unless ``0 < first <= len(leaves)`` (a proof from the empty log is
    empty and proves nothing, so none is given).
    """
    if not 0 < first <= len(leaves):
        raise ValueError(f"no consistency proof from size {first} to {len(leaves)}")
    return tuple(_subproof(first, leaves, 0, len(leaves), complete=True))


def _subproof(m: int, leaves: Sequence[bytes], lo: int, hi: int, *, complete: bool) -> list[bytes]:
    """SUBPROOF(m, D[lo:hi], b) of RFC 6962 §2.1.2."""
    n = hi - lo
    if m == n:
        return [] if complete else [_subtree_root(leaves, lo, hi)]
    k = _split(n)
    if m <= k:
        return [
            *_subproof(m, leaves, lo, lo + k, complete=complete),
            _subtree_root(leaves, lo + k, hi),
        ]
    return [
        *_subproof(m - k, leaves, lo + k, hi, complete=False),
        _subtree_root(leaves, lo, lo + k),
    ]


def _subtree_root(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) over leaf hashes."""
    if hi - lo == 1:
        return leaves[lo]
    k = _split(hi - lo)
    return node_hash(_subtree_root(leaves, lo, lo + k), _subtree_root(leaves, lo + k, hi))


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def verify_consistency(
    *, first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Check a consistency proof (RFC 9162 §2.1.4.2). Never raises on bad input.

    True only when the log of ``second`` leaves with ``second_root`` begins with the log of
    ``first`` leaves with ``first_root``. Sizes below 1 or ``first > second`` are refused.
    """
    if not 0 < first <= second or any(len(node) != 32 for node in proof):
        return False
    if first == second:
        return not proof and first_root == second_root
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two: the old root is a node of the new tree
        path.insert(0, first_root)
    if not path:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for node in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(node, fr)
            sr = node_hash(node, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, node)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root


def verify_log_inclusion(*, leaf: bytes, proof: InclusionProof, root: bytes) -> bool:
    """Check that ``leaf`` is leaf ``proof.index`` of the log of ``proof.size`` with ``root``."""
    return verify_inclusion(leaf=leaf, proof=proof, root=root)


__all__ = [
    "EMPTY_ROOT",
    "consistency_proof",
    "inclusion_proof",
    "log_leaf_data",
    "log_leaf_hash",
    "tree_root",
    "verify_consistency",
    "verify_log_inclusion",
]
