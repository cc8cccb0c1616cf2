"""The offline receipt check: a file against its receipt, the proofs, the log key.

Receipts are made here as the gateway makes them (a batch tree over real leaves, the
log over batch roots, a checkpoint signed by a fresh key); each check must fail on the
one thing it guards.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import dicom_fixtures
from gateway.core.checkpoint import Checkpoint, sign, verifier_of
from gateway.core.fingerprint import fingerprint
from gateway.core.merkle import MerkleTree, leaf_hash
from gateway.core.receipt import (
    CHAIN,
    FILE,
    PROOF,
    UNPROVEN,
    BatchPart,
    LogPart,
    Receipt,
    check_consistency,
    check_receipt,
    load_receipt,
)
from gateway.core.tlog import consistency_proof, inclusion_proof, log_leaf_hash, tree_root
from gateway.errors import ReceiptMalformed

ORIGIN = "xray-gateway/31337/0x5fbdb2315678afecb367f032d93f642f64180aa3"
KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return dicom_fixtures.ct_series(tmp_path_factory.mktemp("ct"), 3, rows=16, cols=16)


def batch_roots(count: int) -> list[bytes]:
    return [bytes([i]) * 32 for i in range(1, count + 1)]


def make_receipt(file: Path, *, batch_id: int = 3, log_size: int = 5) -> Receipt:
    """The receipt of ``file`` as leaf 1 of a 3-leaf batch ``batch_id`` in a log of ``log_size``."""
    with file.open("rb") as stream:
        found = fingerprint(stream)
    keys = {"record_key": b"\x11" * 32, "patient_key": b"\x22" * 32}
    leaves = [
        leaf_hash(**keys, digest=b"\x01" * 32, pixel_digest=b"\x02" * 32),
        leaf_hash(**keys, digest=found.digest, pixel_digest=found.pixel_digest),
        leaf_hash(**keys, digest=b"\x03" * 32, pixel_digest=b"\x04" * 32),
    ]
    tree = MerkleTree(leaves)
    roots = batch_roots(log_size)
    roots[batch_id - 1] = tree.root
    log_leaves = [log_leaf_hash(i + 1, root) for i, root in enumerate(roots)]
    checkpoint = Checkpoint(origin=ORIGIN, size=log_size, root=tree_root(log_leaves))
    return Receipt(
        anchoring="batch", **keys, digest=found.digest, pixel_digest=found.pixel_digest,
        version=1, tx_hash="0x" + "ab" * 32, block_number=12, block_hash="0x" + "cd" * 32,
        chain_id=31337, contract="0x5FbDB2315678afecb367f032d93F642f64180aa3",
        batch=BatchPart(batch_id=batch_id, root=tree.root, count=3, proof=tree.proof(1)),
        log=LogPart(proof=inclusion_proof(log_leaves, batch_id - 1)),
        checkpoint=sign(checkpoint, KEY),
    )  # fmt: skip


def failed(checks: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(c.name, c.kind) for c in checks if not c.ok]


def test_a_receipt_verifies_its_file_offline_and_round_trips_as_json(
    files: list[Path], tmp_path: Path
) -> None:
    receipt = make_receipt(files[0])
    path = tmp_path / "r.json"
    path.write_text(json.dumps(receipt.to_json()))
    loaded = load_receipt(path)
    assert loaded == receipt
    checks = check_receipt(loaded, files[0], verifier_of(KEY, ORIGIN))
    assert [c.name for c in checks] == ["file", "batch", "checkpoint", "log"]
    assert failed(checks) == []


def test_another_or_an_edited_file_fails_as_file(files: list[Path], tmp_path: Path) -> None:
    receipt = make_receipt(files[0])
    assert failed(check_receipt(receipt, files[1], verifier_of(KEY, ORIGIN))) == [("file", FILE)]
    edited = tmp_path / "edited.dcm"
    data = bytearray(files[0].read_bytes())
    data[-1] ^= 0xFF  # one pixel byte
    edited.write_bytes(bytes(data))
    assert failed(check_receipt(receipt, edited, verifier_of(KEY, ORIGIN))) == [("file", FILE)]


def test_a_tampered_receipt_fails_where_it_was_tampered(files: list[Path]) -> None:
    receipt = make_receipt(files[0])
    key = verifier_of(KEY, ORIGIN)
    assert receipt.batch is not None and receipt.log is not None and receipt.checkpoint
    other_key = replace(receipt, patient_key=b"\x33" * 32)
    assert failed(check_receipt(other_key, files[0], key)) == [("batch", PROOF)]
    path = list(receipt.batch.proof.path)
    path[0] = b"\x00" * 32
    forged = replace(receipt.batch, proof=replace(receipt.batch.proof, path=tuple(path)))
    assert failed(check_receipt(replace(receipt, batch=forged), files[0], key)) == [
        ("batch", PROOF)
    ]
    wrong_count = replace(receipt.batch, count=4)
    assert failed(check_receipt(replace(receipt, batch=wrong_count), files[0], key)) == [
        ("batch", PROOF)
    ]
    log_path = list(receipt.log.proof.path)
    log_path[-1] = b"\x00" * 32
    bad_log = LogPart(proof=replace(receipt.log.proof, path=tuple(log_path)))
    assert failed(check_receipt(replace(receipt, log=bad_log), files[0], key)) == [("log", PROOF)]
    moved = LogPart(proof=replace(receipt.log.proof, index=receipt.log.proof.index + 1))
    assert failed(check_receipt(replace(receipt, log=moved), files[0], key)) == [("log", PROOF)]
    edited = receipt.checkpoint.replace("\n5\n", "\n6\n", 1)
    assert failed(check_receipt(replace(receipt, checkpoint=edited), files[0], key)) == [
        ("checkpoint", PROOF)
    ]


def test_a_checkpoint_signed_by_another_key_fails_even_under_the_same_name(
    files: list[Path],
) -> None:
    receipt = make_receipt(files[0])
    impostor = verifier_of(Ed25519PrivateKey.generate(), ORIGIN)
    assert failed(check_receipt(receipt, files[0], impostor)) == [("checkpoint", PROOF)]
    assert failed(check_receipt(receipt, files[0], None)) == [("checkpoint", PROOF)]


def test_a_single_record_receipt_is_unproven_offline(files: list[Path]) -> None:
    receipt = replace(
        make_receipt(files[0]), anchoring="single", batch=None, log=None, checkpoint=None
    )
    back = Receipt.from_json(json.loads(json.dumps(receipt.to_json())))
    assert back == receipt
    checks = check_receipt(back, files[0], None)
    assert failed(checks) == [("anchoring", UNPROVEN)]
    assert checks[0].ok and checks[0].name == "file"
    assert CHAIN not in {c.kind for c in checks}


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(format="xray-receipt/2"),
        lambda d: d.update(anchoring="other"),
        lambda d: d["instance"].update(digest="00"),
        lambda d: d["batch"].pop("root"),
        lambda d: d.update(checkpoint=None),
        lambda d: d["log"].update(proof=["zz"]),
    ],
)
def test_a_malformed_receipt_is_refused(files: list[Path], edit) -> None:  # type: ignore[no-untyped-def]
    data = make_receipt(files[0]).to_json()
    edit(data)
    with pytest.raises(ReceiptMalformed):
        Receipt.from_json(data)


def test_the_receipt_holds_no_uid_nor_patient_data(files: list[Path]) -> None:
    from pydicom import dcmread

    ds = dcmread(files[0])
    text = json.dumps(make_receipt(files[0]).to_json())
    for value in (ds.SOPInstanceUID, ds.StudyInstanceUID, str(ds.PatientID), str(ds.PatientName)):
        assert value not in text


def test_consistency_between_two_signed_checkpoints() -> None:
    leaves = [log_leaf_hash(i + 1, root) for i, root in enumerate(batch_roots(9))]
    old = sign(Checkpoint(origin=ORIGIN, size=4, root=tree_root(leaves[:4])), KEY)
    new = sign(Checkpoint(origin=ORIGIN, size=9, root=tree_root(leaves)), KEY)
    proof = consistency_proof(leaves, 4)
    key = verifier_of(KEY, ORIGIN)
    assert failed(check_consistency(old_note=old, new_note=new, proof=proof, log_key=key)) == []
    forged = (b"\x00" * 32, *proof[1:])
    assert failed(check_consistency(old_note=old, new_note=new, proof=forged, log_key=key)) == [
        ("consistency", PROOF)
    ]
    rewritten = [*leaves[:2], log_leaf_hash(3, b"\xee" * 32), *leaves[3:]]
    other = sign(Checkpoint(origin=ORIGIN, size=9, root=tree_root(rewritten)), KEY)
    assert failed(
        check_consistency(
            old_note=old, new_note=other, proof=consistency_proof(rewritten, 4), log_key=key
        )
    ) == [("consistency", PROOF)]
    assert failed(check_consistency(old_note=new, new_note=old, proof=(), log_key=key)) == [
        ("consistency", PROOF)
    ]
    impostor = verifier_of(Ed25519PrivateKey.generate(), ORIGIN)
    assert failed(check_consistency(old_note=old, new_note=new, proof=proof, log_key=impostor)) == [
        ("old checkpoint", PROOF)
    ]
