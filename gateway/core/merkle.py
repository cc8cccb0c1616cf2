"""RFC 6962 Merkle trees over SHA-256: leaves, roots, inclusion proofs (pure).

leaf = H(0x00 || record_key || patient_key || digest || pixel_digest)
node = H(0x01 || left || right)

The tree for n leaves splits at the largest power of two below n (RFC 6962 §2.1). Built
level by level, that is the same as pairing nodes left to right and carrying an unpaired
last node up unchanged, which is what :class:`MerkleTree` does in O(n).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"


def leaf_hash(
    *, record_key: bytes, patient_key: bytes, digest: bytes, pixel_digest: bytes
) -> bytes:
    """Hash one image into its leaf."""
    for value in (record_key, patient_key, digest, pixel_digest):
        if len(value) != 32:
            raise ValueError("leaf fields are 32-byte values")
    return hashlib.sha256(LEAF_PREFIX + record_key + patient_key + digest + pixel_digest).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash two children into their parent."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


@dataclass(frozen=True)
class InclusionProof:
    """Evidence that the leaf at ``index`` belongs to the tree of ``size`` leaves."""

    index: int
    size: int
    path: tuple[bytes, ...]


class MerkleTree:
    """An RFC 6962 tree over already-hashed leaves."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        levels = [list(leaves)]
        while len(levels[-1]) > 1:
            below = levels[-1]
            above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            if len(below) % 2:
                above.append(below[-1])
            levels.append(above)
        self._levels = levels

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        """The Merkle tree head."""
        return self._levels[-1][0]

    def proof(self, index: int) -> InclusionProof:
        """The audit path of leaf ``index``, nearest sibling first."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} is outside a tree of {self.size}")
        path: list[bytes] = []
        i = index
        for level in self._levels[:-1]:
            sibling = i ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            i //= 2
        return InclusionProof(index=index, size=self.size, path=tuple(path))


def verify_inclusion(*, leaf: bytes, proof: InclusionProof, root: bytes) -> bool:
    """Check an inclusion proof (RFC 9162 §2.1.3.2). Never raises on bad input."""
    index, size = proof.index, proof.size
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    node = leaf
    for sibling in proof.path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and node == root


def in_batch(*, leaf: bytes, proof: InclusionProof, root: bytes, count: int) -> bool:
    """The proven-batch-member rule: ``proof`` leads from ``leaf`` to the ``root`` of a
    batch of exactly ``count`` leaves. Never raises on bad input.

    The root alone does not commit to the tree's size (a proof for another size may
    reach it), so the leaf count the ledger holds for the batch must match the proof's.
    """
    return proof.size == count and verify_inclusion(leaf=leaf, proof=proof, root=root)


def claimed_in_batch(
    *,
    record_key: bytes | None,
    patient_key: bytes | None,
    digest: bytes | None,
    pixel_digest: bytes | None,
    proof: InclusionProof | bytes | None,
    root: bytes,
    count: int,
) -> bool:
    """Whether a claimed image is a proven member of the batch of ``root`` and ``count``.

    The leaf is hashed from the claimed fields, then :func:`in_batch` decides. ``proof`` is
    an :class:`InclusionProof` or its encoded form (:func:`encode_proof`, as the index keeps
    it). Never raises on bad input: a missing field, a field that is not 32 bytes or a
    malformed proof proves nothing and gives ``False``.
    """
    if record_key is None or patient_key is None or digest is None or pixel_digest is None:
        return False
    if proof is None:
        return False
    try:
        leaf = leaf_hash(
            record_key=record_key, patient_key=patient_key, digest=digest,
            pixel_digest=pixel_digest,
        )  # fmt: skip
        inclusion = decode_proof(proof) if isinstance(proof, bytes) else proof
    except ValueError:
        return False
    return in_batch(leaf=leaf, proof=inclusion, root=root, count=count)


def encode_proof(proof: InclusionProof) -> bytes:
    """Serialise a proof for the index: index and size (8 bytes each, big-endian), then the path."""
    return proof.index.to_bytes(8, "big") + proof.size.to_bytes(8, "big") + b"".join(proof.path)


def decode_proof(data: bytes) -> InclusionProof:
    """The inverse of :func:`encode_proof`; raises ValueError on a malformed value."""
    if len(data) < 16 or (len(data) - 16) % 32:
        raise ValueError("a serialised proof is 16 bytes then 32-byte nodes")
    path = tuple(data[i : i + 32] for i in range(16, len(data), 32))
    return InclusionProof(
        index=int.from_bytes(data[:8], "big"), size=int.from_bytes(data[8:16], "big"), path=path
    )
