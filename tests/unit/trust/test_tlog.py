"""The log kept from the chain's batches: leaves read once, checkpoints, proofs."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.core.checkpoint import open_checkpoint
from gateway.core.tlog import log_leaf_hash, tree_root, verify_consistency, verify_log_inclusion
from gateway.index.db import Index
from gateway.ledger.memory import MemoryLedger
from gateway.trust.tlog import BatchLog, default_origin

RECORDER = "0x" + "aa" * 20


class CountingLedger(MemoryLedger):
    """The stand-in chain, counting ``batchOf`` reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def batch_of(self, batch_id: int):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().batch_of(batch_id)


def anchor(ledger: MemoryLedger, count: int) -> None:
    for _ in range(count):
        n = ledger.batch_count() + 1
        ledger.record_batch(recorder=RECORDER, root=n.to_bytes(32, "big"), count=n)


@pytest.fixture
def index(tmp_path: Path) -> Index:
    return Index(tmp_path / "index.sqlite")


def test_the_log_is_the_chains_batches_in_id_order_signed_by_the_log_key(index: Index) -> None:
    ledger = CountingLedger()
    anchor(ledger, 5)
    key = Ed25519PrivateKey.generate()
    log = BatchLog(chain=ledger, index=index, key=key, origin=default_origin(31337, "0xABC"))
    checkpoint, note = log.checkpoint()
    leaves = [log_leaf_hash(i, i.to_bytes(32, "big")) for i in range(1, 6)]
    assert checkpoint.size == 5 and checkpoint.root == tree_root(leaves)
    assert open_checkpoint(note, log.verifier) == checkpoint
    assert checkpoint.origin == "xray-gateway/31337/0xabc"
    proof = log.inclusion(3, 5)
    assert verify_log_inclusion(leaf=leaves[2], proof=proof, root=checkpoint.root)


def test_each_batch_is_read_from_the_chain_once_per_index(index: Index) -> None:
    ledger = CountingLedger()
    anchor(ledger, 4)
    key = Ed25519PrivateKey.generate()
    BatchLog(chain=ledger, index=index, key=key, origin="o").sync()
    assert ledger.reads == 4
    anchor(ledger, 2)
    other_node = BatchLog(chain=ledger, index=index, key=key, origin="o")
    assert other_node.sync() == 6
    assert ledger.reads == 6  # the four kept in the shared index were not read again
    assert [row[0] for row in index.query("SELECT batch_id FROM log_leaves ORDER BY batch_id")] == [
        1, 2, 3, 4, 5, 6,
    ]  # fmt: skip


def test_a_checkpoint_taken_later_is_consistent_with_an_earlier_one(index: Index) -> None:
    ledger = MemoryLedger()
    anchor(ledger, 3)
    log = BatchLog(chain=ledger, index=index, key=Ed25519PrivateKey.generate(), origin="o")
    old, _ = log.checkpoint()
    anchor(ledger, 10)
    new, _ = log.checkpoint()
    assert (old.size, new.size) == (3, 13)
    proof = log.consistency(old.size, new.size)
    assert verify_consistency(
        first=3, second=13, first_root=old.root, second_root=new.root, proof=proof
    )


def test_proofs_outside_the_log_are_refused(index: Index) -> None:
    ledger = MemoryLedger()
    anchor(ledger, 3)
    log = BatchLog(chain=ledger, index=index, key=Ed25519PrivateKey.generate(), origin="o")
    for first, second in ((0, 2), (3, 2), (2, 4)):
        with pytest.raises(ValueError):
            log.consistency(first, second)
    for batch, size in ((4, 3), (0, 3), (2, 4)):
        with pytest.raises(ValueError):
            log.inclusion(batch, size)


def test_the_empty_log_has_a_checkpoint(index: Index) -> None:
    log = BatchLog(chain=MemoryLedger(), index=index, key=Ed25519PrivateKey.generate(), origin="o")
    checkpoint, note = log.checkpoint()
    assert checkpoint.size == 0
    assert note.startswith("o\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\n")
