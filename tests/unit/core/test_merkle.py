"""RFC 6962 trees: every member of a big batch verifies, anything wrong does not."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.merkle import (
    InclusionProof,
    MerkleTree,
    claimed_in_batch,
    encode_proof,
    in_batch,
    leaf_hash,
    node_hash,
    verify_inclusion,
)


def _leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [
        leaf_hash(
            record_key=hashlib.sha256(salt + b"r%d" % i).digest(),
            patient_key=hashlib.sha256(b"p%d" % (i % 7)).digest(),
            digest=hashlib.sha256(b"d%d" % i).digest(),
            pixel_digest=hashlib.sha256(b"x%d" % i).digest(),
        )
        for i in range(n)
    ]


# Reference: RFC 6962 §2.1 written out recursively, to check the level-by-level builder.
def _mth(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def test_leaf_hash_is_domain_separated() -> None:
    parts = [bytes([i]) * 32 for i in range(4)]
    expected = hashlib.sha256(b"\x00" + b"".join(parts)).digest()
    assert (
        leaf_hash(record_key=parts[0], patient_key=parts[1], digest=parts[2], pixel_digest=parts[3])
        == expected
    )
    with pytest.raises(ValueError):
        leaf_hash(record_key=b"short", patient_key=parts[1], digest=parts[2], pixel_digest=parts[3])


def test_every_member_of_a_1000_leaf_batch_verifies() -> None:
    leaves = _leaves(1000)
    tree = MerkleTree(leaves)
    assert tree.root == _mth(leaves)
    for i, leaf in enumerate(leaves):
        assert verify_inclusion(leaf=leaf, proof=tree.proof(i), root=tree.root), i


def test_wrong_leaf_index_or_proof_fails() -> None:
    leaves = _leaves(1000)
    tree = MerkleTree(leaves)
    proof = tree.proof(421)
    assert verify_inclusion(leaf=leaves[421], proof=proof, root=tree.root)
    # wrong leaf
    assert not verify_inclusion(leaf=leaves[422], proof=proof, root=tree.root)
    # wrong index, same path
    for index in (420, 422, 0, 999, 1000, -1):
        moved = InclusionProof(index=index, size=proof.size, path=proof.path)
        assert not verify_inclusion(leaf=leaves[421], proof=moved, root=tree.root)
    # a size that changes the tree's shape (the root does not commit to the size: the
    # ledger's batch count does, and verify_batch_member checks it)
    for size in (512, 422, 2000):
        assert not verify_inclusion(
            leaf=leaves[421], proof=InclusionProof(421, size, proof.path), root=tree.root
        )
    # a flipped bit in one sibling, a sibling missing, a sibling too many, siblings swapped
    flipped = bytes([proof.path[3][0] ^ 1]) + proof.path[3][1:]
    bad_paths = [
        (*proof.path[:3], flipped, *proof.path[4:]),
        proof.path[:-1],
        (*proof.path, proof.path[0]),
        (proof.path[1], proof.path[0], *proof.path[2:]),
    ]
    for path in bad_paths:
        assert not verify_inclusion(
            leaf=leaves[421], proof=InclusionProof(421, 1000, path), root=tree.root
        )
    # another tree's root
    assert not verify_inclusion(
        leaf=leaves[421], proof=proof, root=MerkleTree(_leaves(1000, b"x")).root
    )


def test_single_leaf_tree_is_its_leaf() -> None:
    (leaf,) = _leaves(1)
    tree = MerkleTree([leaf])
    assert tree.root == leaf
    assert tree.proof(0).path == ()
    assert verify_inclusion(leaf=leaf, proof=tree.proof(0), root=leaf)


def test_empty_tree_and_out_of_range_proof_are_refused() -> None:
    with pytest.raises(ValueError):
        MerkleTree([])
    with pytest.raises(IndexError):
        MerkleTree(_leaves(3)).proof(3)


@settings(max_examples=150, deadline=None)
@given(size=st.integers(min_value=1, max_value=300), data=st.data())
def test_random_sizes_match_rfc6962_and_verify(size: int, data: st.DataObject) -> None:
    leaves = _leaves(size)
    tree = MerkleTree(leaves)
    assert tree.root == _mth(leaves)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    proof = tree.proof(index)
    assert list(proof.path) == _path(index, leaves)
    assert verify_inclusion(leaf=leaves[index], proof=proof, root=tree.root)
    other = data.draw(st.integers(min_value=0, max_value=size - 1))
    if other != index:
        assert not verify_inclusion(leaf=leaves[other], proof=proof, root=tree.root)
        moved = InclusionProof(index=other, size=size, path=proof.path)
        assert not verify_inclusion(leaf=leaves[index], proof=moved, root=tree.root)


def test_a_batch_member_needs_the_batch_count_not_only_the_root() -> None:
    leaves = _leaves(4)
    tree = MerkleTree(leaves)
    proof = tree.proof(0)
    assert in_batch(leaf=leaves[0], proof=proof, root=tree.root, count=4)
    # the same path, claimed for a 3-leaf tree, still reaches the 4-leaf root...
    shrunk = InclusionProof(index=0, size=3, path=proof.path)
    assert verify_inclusion(leaf=leaves[0], proof=shrunk, root=tree.root)
    # ...but the batch the ledger holds has 4 leaves: not a member
    assert not in_batch(leaf=leaves[0], proof=shrunk, root=tree.root, count=4)
    assert not in_batch(leaf=leaves[1], proof=proof, root=tree.root, count=4)


def _claimed(i: int) -> dict[str, bytes]:
    return {
        "record_key": hashlib.sha256(b"r%d" % i).digest(),
        "patient_key": hashlib.sha256(b"p%d" % (i % 7)).digest(),
        "digest": hashlib.sha256(b"d%d" % i).digest(),
        "pixel_digest": hashlib.sha256(b"x%d" % i).digest(),
    }


def test_a_claimed_image_is_a_member_by_its_fields_and_proof_encoded_or_not() -> None:
    tree = MerkleTree(_leaves(5))
    proof = tree.proof(3)
    batch = {"root": tree.root, "count": 5}
    assert claimed_in_batch(**_claimed(3), proof=proof, **batch)
    assert claimed_in_batch(**_claimed(3), proof=encode_proof(proof), **batch)
    # any claimed field changed: another leaf, not a member
    for name in ("record_key", "patient_key", "digest", "pixel_digest"):
        fields = _claimed(3) | {name: hashlib.sha256(b"forged").digest()}
        assert not claimed_in_batch(**fields, proof=proof, **batch), name
    assert not claimed_in_batch(**_claimed(2), proof=proof, **batch)
    assert not claimed_in_batch(**_claimed(3), proof=proof, root=tree.root, count=6)


def test_a_malformed_claim_proves_nothing_and_raises_nothing() -> None:
    tree = MerkleTree(_leaves(5))
    proof = tree.proof(3)
    batch = {"root": tree.root, "count": 5}
    for name in ("record_key", "patient_key", "digest", "pixel_digest"):
        assert not claimed_in_batch(**(_claimed(3) | {name: None}), proof=proof, **batch)
        assert not claimed_in_batch(**(_claimed(3) | {name: b"short"}), proof=proof, **batch)
    assert not claimed_in_batch(**_claimed(3), proof=None, **batch)
    assert not claimed_in_batch(**_claimed(3), proof=encode_proof(proof)[:-1], **batch)
    assert not claimed_in_batch(**_claimed(3), proof=b"", **batch)
