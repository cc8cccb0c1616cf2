"""Receipts: what proves one instance was anchored, checked offline with no gateway (pure).

A receipt (``"format": "xray-receipt/1"``, JSON) holds no patient data, only:

- ``instance``: the leaf's inputs: ``record_key``, ``patient_key`` (HMACs, hex),
  ``digest``, ``pixel_digest`` (SHA-256, hex) and the index's ``version``;
- ``anchoring``: ``"batch"`` (anchored in a Merkle batch) or ``"single"`` (its own
  ``recordImage``/``supersede…`` transaction: then ``batch``, ``log`` and
  ``checkpoint`` are ``null``, and only ``--chain`` can prove it);
- ``batch``: its ``id`` on the contract, ``root``, leaf ``count``, the instance's
  ``leaf_index`` and the inclusion ``proof`` (hex nodes, nearest sibling first);
- ``transaction``: ``hash``, ``block_number``, ``block_hash``; ``chain``: ``chain_id`` and
  ``contract`` (the xray contract's address);
- ``log``: the batch's ``leaf_index`` (its id - 1) in the append-only log, the log's
  ``tree_size`` and the inclusion ``proof`` to the root of ``checkpoint``, the signed
  checkpoint note (:mod:`gateway.core.checkpoint`) at that size.

:func:`check_receipt` runs every check that needs nothing but the file, the receipt and
the log key the auditor holds. This module imports only ``gateway.core`` and the
foundation, so an auditor's copy of the verifier needs no gateway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.checkpoint import Checkpoint, NoteVerifier, open_checkpoint
from gateway.core.fingerprint import fingerprint
from gateway.core.merkle import InclusionProof, claimed_in_batch
from gateway.core.tlog import log_leaf_hash, verify_consistency, verify_log_inclusion
from gateway.errors import CheckpointInvalid, DatasetUnreadable, ReceiptMalformed

FORMAT = "xray-receipt/1"

# What each failing check means for the exit code of `xray-gateway verify --receipt`.
FILE = "file"  # the file is not the one the receipt is for
PROOF = "proof"  # the receipt does not prove itself
CHAIN = "chain"  # the chain disagrees with the receipt
UNPROVEN = "unproven"  # nothing failed, but nothing proved the record either


@dataclass(frozen=True)
class BatchPart:
    """Where the instance's leaf sits in its anchored batch."""

    batch_id: int
    root: bytes
    count: int
    proof: InclusionProof


@dataclass(frozen=True)
class LogPart:
    """Where the batch sits in the append-only log, at the checkpoint's size."""

    proof: InclusionProof


@dataclass(frozen=True)
class Receipt:
    """One instance's receipt (:data:`FORMAT`); see the module docstring for the fields."""

    anchoring: str
    record_key: bytes
    patient_key: bytes
    digest: bytes
    pixel_digest: bytes
    version: int | None
    tx_hash: str
    block_number: int
    block_hash: str
    chain_id: int
    contract: str
    batch: BatchPart | None = None
    log: LogPart | None = None
    checkpoint: str | None = None

    def to_json(self) -> dict[str, Any]:
        batch = self.batch
        return {
            "format": FORMAT,
            "anchoring": self.anchoring,
            "instance": {
                "record_key": self.record_key.hex(),
                "patient_key": self.patient_key.hex(),
                "digest": self.digest.hex(),
                "pixel_digest": self.pixel_digest.hex(),
                "version": self.version,
            },
            "batch": None
            if batch is None
            else {
                "id": batch.batch_id,
                "root": batch.root.hex(),
                "count": batch.count,
                "leaf_index": batch.proof.index,
                "proof": [node.hex() for node in batch.proof.path],
            },
            "transaction": {
                "hash": self.tx_hash,
                "block_number": self.block_number,
                "block_hash": self.block_hash,
            },
            "chain": {"chain_id": self.chain_id, "contract": self.contract},
            "log": None
            if self.log is None
            else {
                "leaf_index": self.log.proof.index,
                "tree_size": self.log.proof.size,
                "proof": [node.hex() for node in self.log.proof.path],
            },
            "checkpoint": self.checkpoint,
        }

    @classmethod
    def from_json(cls, data: Any) -> Receipt:
        """Parse :meth:`to_json`'s form; raises ReceiptMalformed on anything else."""
        try:
            return _parse(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ReceiptMalformed(f"not an {FORMAT} receipt: {type(exc).__name__} {exc}") from None


def _parse(data: Any) -> Receipt:
    if data.get("format") != FORMAT:
        raise ValueError(f"format is {data.get('format')!r}")
    anchoring = data["anchoring"]
    if anchoring not in ("batch", "single"):
        raise ValueError(f"anchoring is {anchoring!r}")
    instance, tx, chain = data["instance"], data["transaction"], data["chain"]
    batch = log = None
    if anchoring == "batch":
        raw = data["batch"]
        batch = BatchPart(
            batch_id=int(raw["id"]),
            root=_bytes32(raw["root"]),
            count=int(raw["count"]),
            proof=InclusionProof(
                index=int(raw["leaf_index"]), size=int(raw["count"]), path=_nodes(raw["proof"])
            ),
        )
        entry = data["log"]
        log = LogPart(
            proof=InclusionProof(
                index=int(entry["leaf_index"]),
                size=int(entry["tree_size"]),
                path=_nodes(entry["proof"]),
            )
        )
        if not isinstance(data["checkpoint"], str):
            raise TypeError("checkpoint is not a string")
    version = instance.get("version")
    return Receipt(
        anchoring=anchoring,
        record_key=_bytes32(instance["record_key"]),
        patient_key=_bytes32(instance["patient_key"]),
        digest=_bytes32(instance["digest"]),
        pixel_digest=_bytes32(instance["pixel_digest"]),
        version=None if version is None else int(version),
        tx_hash=str(tx["hash"]),
        block_number=int(tx["block_number"]),
        block_hash=str(tx["block_hash"]),
        chain_id=int(chain["chain_id"]),
        contract=str(chain["contract"]),
        batch=batch,
        log=log,
        checkpoint=data["checkpoint"] if anchoring == "batch" else None,
    )


def _bytes32(value: Any) -> bytes:
    raw = bytes.fromhex(value)
    if len(raw) != 32:
        raise ValueError("a hash is 32 bytes")
    return raw


def _nodes(values: Any) -> tuple[bytes, ...]:
    return tuple(_bytes32(value) for value in values)


def load_receipt(path: Path) -> Receipt:
    """Read a receipt file; ReceiptMalformed if it is not JSON of :data:`FORMAT`."""
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReceiptMalformed(f"{path} is not JSON: {exc}") from None
    return Receipt.from_json(data)


@dataclass(frozen=True)
class Check:
    """One check of a receipt: its name, whether it held, what was found, and the kind of
    failure it is (:data:`FILE`, :data:`PROOF`, :data:`CHAIN`, :data:`UNPROVEN`)."""

    name: str
    ok: bool
    detail: str
    kind: str = PROOF


def check_receipt(receipt: Receipt, file: Path, log_key: NoteVerifier | None) -> list[Check]:
    """Every offline check of ``file`` against ``receipt``, in order, stopping at the first
    that fails (later ones would only repeat it).

    1. ``file``: the file's digest and pixel digest (:func:`gateway.core.fingerprint.
       fingerprint`) are the receipt's;
    2. ``batch``: the leaf hashed from the receipt's inputs leads by its proof to the batch
       root, in a batch of exactly ``count`` leaves;
    3. ``checkpoint``: the checkpoint note is signed by ``log_key`` (the key the auditor
       holds, never one from the receipt) and its origin is the key's name;
    4. ``log``: the batch's log leaf (id ‖ root) leads by its proof to the checkpoint's root,
       at the checkpoint's size, at leaf ``id - 1``.

    A single record has no batch nor log proof: after ``file`` comes an ``anchoring`` check
    of kind :data:`UNPROVEN` that only ``--chain`` can settle.
    """
    checks = [_check_file(receipt, file)]
    if receipt.anchoring == "single":
        checks.append(
            Check(
                "anchoring",
                False,
                "a single record has no batch or log proof: only --chain can prove it",
                UNPROVEN,
            )
        )
        return checks
    for step in (_check_batch, _check_checkpoint_and_log):
        if not checks[-1].ok:
            break
        checks += step(receipt, log_key)
    return checks


def _check_file(receipt: Receipt, file: Path) -> Check:
    try:
        with file.open("rb") as stream:
            found = fingerprint(stream)
    except DatasetUnreadable as exc:
        return Check("file", False, f"not a DICOM file this verifier can read: {exc}", FILE)
    if found.digest != receipt.digest:
        return Check(
            "file",
            False,
            f"digest {found.digest.hex()} is not the receipt's {receipt.digest.hex()}",
            FILE,
        )
    if found.pixel_digest != receipt.pixel_digest:
        return Check("file", False, "pixel digest is not the receipt's", FILE)
    return Check("file", True, f"digest {found.digest.hex()}", FILE)


def _check_batch(receipt: Receipt, _key: NoteVerifier | None) -> list[Check]:
    batch = receipt.batch
    assert batch is not None
    proven = claimed_in_batch(
        record_key=receipt.record_key, patient_key=receipt.patient_key, digest=receipt.digest,
        pixel_digest=receipt.pixel_digest, proof=batch.proof, root=batch.root, count=batch.count,
    )  # fmt: skip
    if not proven:
        return [
            Check("batch", False, f"the leaf does not lead to the root of batch {batch.batch_id}")
        ]
    return [
        Check("batch", True, f"leaf {batch.proof.index} of {batch.count} in batch {batch.batch_id}")
    ]


def _check_checkpoint_and_log(receipt: Receipt, log_key: NoteVerifier | None) -> list[Check]:
    batch, log, note = receipt.batch, receipt.log, receipt.checkpoint
    assert batch is not None and log is not None and note is not None
    if log_key is None:
        return [Check("checkpoint", False, "no log key to check the checkpoint's signature with")]
    try:
        checkpoint = open_checkpoint(note, log_key)
    except CheckpointInvalid as exc:
        return [Check("checkpoint", False, str(exc))]
    checks = [Check("checkpoint", True, f"{checkpoint.origin} at size {checkpoint.size}")]
    return [*checks, _check_log(batch, log, checkpoint)]


def _check_log(batch: BatchPart, log: LogPart, checkpoint: Checkpoint) -> Check:
    if log.proof.index != batch.batch_id - 1:
        return Check("log", False, f"log leaf {log.proof.index} is not batch {batch.batch_id}'s")
    if log.proof.size != checkpoint.size:
        return Check("log", False, f"the proof is for size {log.proof.size}, not {checkpoint.size}")
    leaf = log_leaf_hash(batch.batch_id, batch.root)
    if not verify_log_inclusion(leaf=leaf, proof=log.proof, root=checkpoint.root):
        return Check("log", False, f"batch {batch.batch_id} does not lead to the checkpoint's root")
    return Check(
        "log", True, f"batch {batch.batch_id} is leaf {log.proof.index} of {checkpoint.size}"
    )


__all__ = [
    "CHAIN",
    "FILE",
    "FORMAT",
    "PROOF",
    "UNPROVEN",
    "BatchPart",
    "Check",
    "LogPart",
    "Receipt",
    "check_consistency",
    "check_receipt",
    "load_receipt",
]


def check_consistency(
    *, old_note: str, new_note: str, proof: tuple[bytes, ...], log_key: NoteVerifier
) -> list[Check]:
    """Whether the log at ``new_note`` still begins with the log at ``old_note``.

    Both checkpoints must be signed by ``log_key``; then ``proof`` (RFC 6962 §2.1.2) must
    lead from the old root to the new one. Stops at the first check that fails.
    """
    checkpoints: list[Checkpoint] = []
    for name, note in (("old checkpoint", old_note), ("new checkpoint", new_note)):
        try:
            checkpoint = open_checkpoint(note, log_key)
        except CheckpointInvalid as exc:
            return [*_signed(checkpoints), Check(name, False, str(exc))]
        checkpoints.append(checkpoint)
    old, new = checkpoints
    checks = _signed(checkpoints)
    if old.size > new.size:
        return [
            *checks,
            Check("consistency", False, f"the log shrank from {old.size} to {new.size}"),
        ]
    if old.size == 0:
        return [*checks, Check("consistency", True, "the empty log is a prefix of every log")]
    consistent = verify_consistency(
        first=old.size, second=new.size, first_root=old.root, second_root=new.root, proof=proof
    )
    if not consistent:
        return [
            *checks,
            Check(
                "consistency", False, f"the proof does not lead from size {old.size} to {new.size}"
            ),
        ]
    return [*checks, Check("consistency", True, f"size {old.size} is a prefix of size {new.size}")]


def _signed(checkpoints: list[Checkpoint]) -> list[Check]:
    names = ("old checkpoint", "new checkpoint")
    return [
        Check(name, True, f"{c.origin} at size {c.size}")
        for name, c in zip(names, checkpoints, strict=False)
    ]
