"""Receipts: built from what the ledger confirms, and checked against the chain when asked.

:func:`build_receipt` turns the record the verifier confirms for an instance (the newest
version by its owner) into an ``xray-receipt/1`` (:mod:`gateway.core.receipt`), with the
batch's place in the append-only log at a fresh signed checkpoint.
:func:`chain_checks` is what ``xray-gateway verify --receipt R FILE --chain URL`` adds to
the offline checks: the chain, not the receipt, says which root batch ``id`` has.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, cast

from gateway.core.checkpoint import parse_checkpoint
from gateway.core.merkle import InclusionProof
from gateway.core.receipt import CHAIN, BatchPart, Check, LogPart, Receipt
from gateway.core.tlog import log_leaf_hash, tree_root
from gateway.errors import ChainUnavailable, LedgerError, XrayUnknownBatch
from gateway.ledger.client import XrayLedger
from gateway.trust.tlog import BatchLog
from gateway.trust.verify import Record, Verifier


class BlockReader(Protocol):
    """Where a receipt's transaction landed, and the chain's id and contract."""

    @property
    def address(self) -> str: ...

    def chain_id(self) -> int: ...

    def transaction_block(self, tx_hash: str) -> tuple[int, str]: ...


def build_receipt(record: Record, *, chain: BlockReader, log: BatchLog) -> Receipt | None:
    """The receipt of ``record``, or ``None`` when it has no transaction to point at.

    A batched record gets the batch's inclusion proof and the batch's place in the log at
    the newest checkpoint; a single record gets neither (``"anchoring": "single"``).
    """
    if record.tx_hash is None:
        return None
    block_number, block_hash = chain.transaction_block(record.tx_hash)
    single = Receipt(
        anchoring="single",
        record_key=record.record_key,
        patient_key=record.patient_key,
        digest=record.digest,
        pixel_digest=record.pixel_digest,
        version=record.version,
        tx_hash=record.tx_hash,
        block_number=block_number,
        block_hash=block_hash,
        chain_id=chain.chain_id(),
        contract=chain.address,
    )
    evidence = record.batch
    if evidence is None:
        return single
    path = tuple(bytes.fromhex(node) for node in evidence.proof)
    batch = BatchPart(
        batch_id=evidence.batch_id,
        root=bytes.fromhex(evidence.root),
        count=evidence.size,
        proof=InclusionProof(index=evidence.leaf_index, size=evidence.size, path=path),
    )
    checkpoint, note = log.checkpoint()
    entry = LogPart(proof=log.inclusion(evidence.batch_id, checkpoint.size))
    return replace(single, anchoring="batch", batch=batch, log=entry, checkpoint=note)


@dataclass(frozen=True)
class Receipts:
    """What the API's receipt and log routes work with."""

    verifier: Verifier
    chain: BlockReader
    log: BatchLog

    def of(self, sop_instance_uid: str) -> Receipt | None:
        """The receipt of the newest version of the instance the ledger confirms, if any."""
        record = self.verifier.record(sop_instance_uid)
        return None if record is None else build_receipt(record, chain=self.chain, log=self.log)


def chain_checks(receipt: Receipt, ledger: XrayLedger) -> list[Check]:
    """What the chain at ``ledger`` says about ``receipt``; each failure is of kind ``chain``.

    - ``contract``: the address holds the xray contract's code (contracts/out/Xray.json);
    - ``chain id``: the node serves the chain the receipt names;
    - ``transaction``: the transaction is mined in the receipt's block, whose hash the
      chain still holds at that number;
    - for a batch: ``batchOf(id)`` has the receipt's root and count, and the log's root at
      the checkpoint's size, rebuilt from ``batchOf(1..size)``, is the checkpoint's;
    - for a single record: the contract holds a version of the key with the digests.
    """
    try:
        checks = [_contract(ledger), _chain_id(receipt, ledger), _transaction(receipt, ledger)]
        if receipt.batch is None:
            return [*checks, _single_record(receipt, ledger)]
        return [*checks, _batch_root(receipt, ledger), _log_root(receipt, ledger)]
    except ChainUnavailable:
        raise  # not an answer from the chain: the CLI says it could not run (exit 1)
    except LedgerError as exc:
        return [Check("chain", False, f"the chain refused a read: {exc}", CHAIN)]


def _contract(ledger: XrayLedger) -> Check:
    ok = ledger.code_matches_artifact()
    detail = "the xray contract's code" if ok else "code that is not the xray contract's"
    return Check("contract", ok, f"{ledger.address} holds {detail}", CHAIN)


def _chain_id(receipt: Receipt, ledger: XrayLedger) -> Check:
    found = ledger.chain_id()
    ok = found == receipt.chain_id
    return Check(
        "chain id", ok, f"chain {found}" + ("" if ok else f", not {receipt.chain_id}"), CHAIN
    )


def _transaction(receipt: Receipt, ledger: XrayLedger) -> Check:
    try:
        number, block_hash = ledger.transaction_block(receipt.tx_hash)
    except LedgerError:
        return Check(
            "transaction", False, f"the chain holds no transaction {receipt.tx_hash}", CHAIN
        )
    if (number, block_hash) != (receipt.block_number, receipt.block_hash):
        return Check(
            "transaction", False, f"mined in block {number} {block_hash}, not the receipt's", CHAIN
        )
    if ledger.block_hash(number) != block_hash:
        return Check("transaction", False, f"block {number} is no longer {block_hash}", CHAIN)
    return Check("transaction", True, f"mined in block {number} {block_hash}", CHAIN)


def _batch_root(receipt: Receipt, ledger: XrayLedger) -> Check:
    batch = receipt.batch
    assert batch is not None
    try:
        found = ledger.batch_of(batch.batch_id)
    except XrayUnknownBatch:
        return Check("batch root", False, f"the contract has no batch {batch.batch_id}", CHAIN)
    if (found.root, found.count) != (batch.root, batch.count):
        return Check(
            "batch root", False, f"batchOf({batch.batch_id}) is another root or count", CHAIN
        )
    return Check("batch root", True, f"batchOf({batch.batch_id}).root is the receipt's", CHAIN)


def _log_root(receipt: Receipt, ledger: XrayLedger) -> Check:
    assert receipt.checkpoint is not None
    text = receipt.checkpoint[: receipt.checkpoint.rindex("\n\n") + 1]
    checkpoint = parse_checkpoint(text)  # its signature was checked offline
    if ledger.batch_count() < checkpoint.size:
        return Check(
            "log root", False, f"the contract has fewer than {checkpoint.size} batches", CHAIN
        )
    leaves = [log_leaf_hash(i, ledger.batch_of(i).root) for i in range(1, checkpoint.size + 1)]
    if tree_root(leaves) != checkpoint.root:
        return Check(
            "log root", False, "the contract's batches do not make the checkpoint's root", CHAIN
        )
    return Check("log root", True, f"the contract's first {checkpoint.size} batches", CHAIN)


def _single_record(receipt: Receipt, ledger: XrayLedger) -> Check:
    for event in ledger.version_events(receipt.record_key):
        args = event.args
        if (
            bytes(cast(bytes, args["digest"])) == receipt.digest
            and bytes(cast(bytes, args["pixelDigest"])) == receipt.pixel_digest
            and event.tx_hash == receipt.tx_hash
        ):
            return Check("record", True, f"recorded in transaction {event.tx_hash}", CHAIN)
    return Check("record", False, "the contract holds no such version of the record", CHAIN)


__all__ = ["BlockReader", "Receipts", "build_receipt", "chain_checks"]
