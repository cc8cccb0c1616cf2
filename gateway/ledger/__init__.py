"""The xray contract on an Ethereum chain: client, Merkle batching, anvil launcher."""

from gateway.core.merkle import InclusionProof, MerkleTree, leaf_hash, verify_inclusion
from gateway.ledger.client import XrayLedger, connect, deploy, load_artifact
from gateway.ledger.types import (
    Anchor,
    Batch,
    BatchedLeaf,
    Grant,
    Image,
    ImageVersion,
    RetireReason,
    UserType,
)

__all__ = [
    "Anchor",
    "Batch",
    "BatchedLeaf",
    "Grant",
    "Image",
    "ImageVersion",
    "InclusionProof",
    "MerkleTree",
    "RetireReason",
    "UserType",
    "XrayLedger",
    "connect",
    "deploy",
    "leaf_hash",
    "load_artifact",
    "verify_inclusion",
]
