"""The log kept from a real chain into a PostgreSQL index, and receipts checked on chain.

anvil with a fresh xray contract, batches anchored by the recorder; the index on a real
PostgreSQL server (schema step 12 and its ``ON CONFLICT`` on that engine). A receipt
built as the API builds it passes ``chain_checks``; each thing the chain can contradict
(the batch root, the block, the log's root) fails it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.core.checkpoint import Checkpoint, sign
from gateway.core.merkle import MerkleTree, leaf_hash
from gateway.core.receipt import CHAIN, Receipt
from gateway.core.tlog import log_leaf_hash, tree_root, verify_consistency
from gateway.index.db import Index
from gateway.ledger import XrayLedger
from gateway.trust.receipts import build_receipt, chain_checks
from gateway.trust.tlog import BatchLog, default_origin
from gateway.trust.verify import BatchEvidence, Record
from tests.conftest import Cast
from tests.integration.postgres import PostgresCluster

pytestmark = pytest.mark.integration


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def anchor_batches(recorder: XrayLedger, labels: list[str]) -> list[tuple[int, str, MerkleTree]]:
    """One batch of two leaves per label: (batch id, transaction, tree)."""
    made = []
    for label in labels:
        tree = MerkleTree(
            [
                leaf_hash(record_key=h(f"{label}{i}"), patient_key=h("p"), digest=h(f"d{label}{i}"),
                          pixel_digest=h(f"x{label}{i}"))
                for i in range(2)
            ]
        )  # fmt: skip
        batch_id, anchor = recorder.record_batch(root=tree.root, count=2)
        made.append((batch_id, anchor.tx_hash, tree))
    return made


@pytest.fixture
def recorder(xray: XrayLedger, cast: Cast) -> XrayLedger:
    return xray.as_account(cast.recorder)


@pytest.fixture
def index(postgres: PostgresCluster) -> Iterator[Index]:
    opened = Index(postgres.create_database())
    yield opened
    opened.close()


def new_log(ledger: XrayLedger, index: Index, key: Ed25519PrivateKey) -> BatchLog:
    origin = default_origin(ledger.chain_id(), ledger.address)
    return BatchLog(chain=ledger, index=index, key=key, origin=origin)


def test_two_nodes_keep_one_log_of_the_chains_batches_on_postgresql(
    recorder: XrayLedger, index: Index
) -> None:
    key = Ed25519PrivateKey.generate()
    made = anchor_batches(recorder, ["a", "b", "c"])
    first = new_log(recorder, index, key)
    old, _ = first.checkpoint()
    assert old.size == 3
    assert old.root == tree_root([log_leaf_hash(i, t.root) for i, _, t in made])
    made += anchor_batches(recorder, ["d", "e"])
    other_node = Index(index.location)  # another node, the same index
    try:
        new, note = new_log(recorder, other_node, key).checkpoint()
    finally:
        other_node.close()
    assert new.size == 5 and note.startswith(f"xray-gateway/31337/{recorder.address.lower()}\n5\n")
    kept = index.query("SELECT batch_id, root FROM log_leaves ORDER BY batch_id")
    assert [(int(i), bytes(r)) for i, r in kept] == [(i, t.root) for i, _, t in made]
    proof = first.consistency(3, 5)
    assert verify_consistency(
        first=3, second=5, first_root=old.root, second_root=new.root, proof=proof
    )


def test_a_receipt_passes_the_chain_checks_and_each_contradiction_fails(
    recorder: XrayLedger, index: Index
) -> None:
    made = anchor_batches(recorder, ["f", "g"])
    batch_id, tx_hash, tree = made[1]
    proof = tree.proof(1)
    record = Record(
        record_key=h("g1"), patient_key=h("p"), digest=h("dg1"), pixel_digest=h("xg1"),
        version=1, tx_hash=tx_hash, block_number=None, block_time=None, recorder=None,
        batch=BatchEvidence(batch_id=batch_id, root=tree.root.hex(), leaf_index=1, size=2,
                            proof=[node.hex() for node in proof.path]),
    )  # fmt: skip
    key = Ed25519PrivateKey.generate()
    log = new_log(recorder, index, key)
    receipt = build_receipt(record, chain=recorder, log=log)
    assert receipt is not None and receipt.batch is not None
    reader = XrayLedger.at(recorder.w3.provider.endpoint_uri, receipt.contract)  # type: ignore[attr-defined]
    checks = chain_checks(receipt, reader)
    assert [(c.name, c.ok) for c in checks] == [
        ("contract", True), ("chain id", True), ("transaction", True), ("batch root", True),
        ("log root", True),
    ]  # fmt: skip

    def failing(changed: Receipt) -> list[str]:
        found = chain_checks(changed, reader)
        assert all(c.kind == CHAIN for c in found)
        return [c.name for c in found if not c.ok]

    other_root = replace(receipt.batch, root=made[0][2].root)
    assert failing(replace(receipt, batch=other_root)) == ["batch root"]
    assert failing(replace(receipt, block_hash="0x" + "00" * 32)) == ["transaction"]
    assert failing(replace(receipt, chain_id=1)) == ["chain id"]
    # a checkpoint signed by the log key over a log the contract does not hold
    forged = Checkpoint(origin=log.origin, size=log.sync(), root=h("not the chain's log"))
    assert failing(replace(receipt, checkpoint=sign(forged, key))) == ["log root"]


def test_a_single_record_receipt_names_its_transaction_and_the_chain_proves_it(
    recorder: XrayLedger, index: Index
) -> None:
    fields = {
        "record_key": h("s1"),
        "patient_key": h("p"),
        "digest": h("ds1"),
        "pixel_digest": h("xs1"),
    }
    anchor = recorder.record_image(**fields, body_part="CHEST", modality="CR")
    record = Record(
        **fields, version=1, tx_hash=anchor.tx_hash, block_number=anchor.block_number,
        block_time=None, recorder=None,
    )  # fmt: skip
    log = new_log(recorder, index, Ed25519PrivateKey.generate())
    receipt = build_receipt(record, chain=recorder, log=log)
    assert receipt is not None
    data = receipt.to_json()
    assert data["anchoring"] == "single" and data["batch"] is None and data["checkpoint"] is None
    assert data["transaction"]["block_number"] == anchor.block_number
    reader = XrayLedger.at(recorder.w3.provider.endpoint_uri, receipt.contract)  # type: ignore[attr-defined]
    assert [(c.name, c.ok) for c in chain_checks(receipt, reader)] == [
        ("contract", True), ("chain id", True), ("transaction", True), ("record", True),
    ]  # fmt: skip
    other = replace(receipt, digest=h("another file"))
    assert [c.name for c in chain_checks(other, reader) if not c.ok] == ["record"]
