"""The append-only log's tree: RFC 6962 roots, inclusion and consistency proofs.

The vectors are transparency-dev/merkle's (testonly/constants.go and proof/verify_test.go,
the Go reference implementation Certificate Transparency logs use): eight leaf inputs,
the root of every prefix, and published inclusion and consistency proofs.
"""

from __future__ import annotations

import hashlib

import pytest

from gateway.core.merkle import LEAF_PREFIX, InclusionProof
from gateway.core.tlog import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    log_leaf_data,
    log_leaf_hash,
    tree_root,
    verify_consistency,
    verify_log_inclusion,
)

LEAF_INPUTS = [
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
]  # fmt: skip
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf number, 1-based; tree size; audit path)
INCLUSION = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (2, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
# (first size, second size, consistency proof)
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip

LEAVES = [hashlib.sha256(LEAF_PREFIX + bytes.fromhex(data)).digest() for data in LEAF_INPUTS]


def nodes(hexes: list[str]) -> tuple[bytes, ...]:
    return tuple(bytes.fromhex(h) for h in hexes)


def root(size: int) -> bytes:
    return bytes.fromhex(ROOTS[size])


@pytest.mark.parametrize("size", range(9))
def test_the_root_of_every_prefix_is_the_reference_root(size: int) -> None:
    assert tree_root(LEAVES[:size]) == root(size)


def test_the_empty_log_has_the_root_of_nothing() -> None:
    assert root(0) == EMPTY_ROOT


@pytest.mark.parametrize(("leaf", "size", "path"), INCLUSION)
def test_inclusion_proofs_are_the_reference_ones_and_verify(
    leaf: int, size: int, path: list[str]
) -> None:
    proof = inclusion_proof(LEAVES[:size], leaf - 1)
    assert proof.path == nodes(path)
    assert verify_log_inclusion(leaf=LEAVES[leaf - 1], proof=proof, root=root(size))
    assert not verify_log_inclusion(leaf=LEAVES[leaf % size], proof=proof, root=root(size))


@pytest.mark.parametrize(("first", "second", "path"), CONSISTENCY)
def test_consistency_proofs_are_the_reference_ones_and_verify(
    first: int, second: int, path: list[str]
) -> None:
    proof = consistency_proof(LEAVES[:second], first)
    assert proof == nodes(path)
    assert verify_consistency(
        first=first, second=second, first_root=root(first), second_root=root(second), proof=proof
    )


@pytest.mark.parametrize(("first", "second", "path"), CONSISTENCY[1:])
def test_a_forged_consistency_proof_fails(first: int, second: int, path: list[str]) -> None:
    proof = nodes(path)
    args = {
        "first": first,
        "second": second,
        "first_root": root(first),
        "second_root": root(second),
    }
    for i in range(len(proof)):  # every node flipped in turn
        forged = list(proof)
        forged[i] = bytes([forged[i][0] ^ 1]) + forged[i][1:]
        assert not verify_consistency(**args, proof=forged)  # type: ignore[arg-type]
    assert not verify_consistency(**args, proof=proof[:-1])  # type: ignore[arg-type]
    assert not verify_consistency(**args, proof=[*proof, proof[0]])  # type: ignore[arg-type]
    # a rewritten history: the old root is not the one the proof was made for
    assert not verify_consistency(
        **{**args, "first_root": root(first - 1) if first > 1 else root(2)}, proof=proof
    )  # type: ignore[arg-type]


def test_every_pair_of_sizes_up_to_40_is_consistent_and_a_dropped_leaf_is_not() -> None:
    leaves = [log_leaf_hash(i, hashlib.sha256(str(i).encode()).digest()) for i in range(1, 41)]
    rewritten = [*leaves[:5], log_leaf_hash(6, b"\x00" * 32), *leaves[6:]]
    for second in range(1, 41):
        for first in range(1, second + 1):
            proof = consistency_proof(leaves[:second], first)
            old, new = tree_root(leaves[:first]), tree_root(leaves[:second])
            assert verify_consistency(
                first=first, second=second, first_root=old, second_root=new, proof=proof
            )
            if first > 5:  # the old log held leaf 6; the new one says another thing there
                changed = tree_root(rewritten[:second])
                other = consistency_proof(rewritten[:second], first)
                assert not verify_consistency(
                    first=first, second=second, first_root=old, second_root=changed, proof=other
                )


def test_bad_sizes_give_no_proof_and_never_verify() -> None:
    with pytest.raises(ValueError):
        consistency_proof(LEAVES[:4], 0)
    with pytest.raises(ValueError):
        consistency_proof(LEAVES[:4], 5)
    assert not verify_consistency(
        first=0, second=4, first_root=root(0), second_root=root(4), proof=[]
    )
    assert not verify_consistency(
        first=5, second=4, first_root=root(5), second_root=root(4), proof=[]
    )
    assert not verify_consistency(
        first=1, second=1, first_root=root(1), second_root=root(2), proof=[]
    )
    assert not verify_consistency(
        first=2, second=5, first_root=root(2), second_root=root(5), proof=[b"short"]
    )


def test_a_log_leaf_is_the_batch_id_as_uint256_then_its_root() -> None:
    batch_root = bytes(range(32))
    data = log_leaf_data(7, batch_root)
    assert data == b"\x00" * 31 + b"\x07" + batch_root
    assert log_leaf_hash(7, batch_root) == hashlib.sha256(b"\x00" + data).digest()
    with pytest.raises(ValueError):
        log_leaf_data(0, batch_root)
    with pytest.raises(ValueError):
        log_leaf_data(1, b"short")
    proof = InclusionProof(index=0, size=1, path=())
    assert verify_log_inclusion(
        leaf=log_leaf_hash(7, batch_root),
        proof=proof,
        root=tree_root([log_leaf_hash(7, batch_root)]),
    )
