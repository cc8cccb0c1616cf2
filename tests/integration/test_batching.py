"""Merkle-batched anchoring on real parts: `up` with 1,000 CT slices from DCMTK, a real anvil.

Every image's inclusion proof is checked against ``batchOf`` on chain, an image tampered
inside a batch is caught by the API, the Orthanc plugin and the independent CLI's
verifier, a forged claim is not believed, and a batch that fails is retried whole and
anchored once. The last test drives :class:`~gateway.ingest.anchor.BatchAnchorer` alone to show
that a batch whose transaction landed before a crash is not sent again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from pydicom import dcmread

import dicom_fixtures
from gateway.core.fingerprint import fingerprint_bytes
from gateway.core.keys import load_pseudonym_key
from gateway.core.merkle import decode_proof, leaf_hash, verify_inclusion
from gateway.index.db import Index
from gateway.ingest.anchor import BatchAnchorer, SingleAnchorer, leaf_of
from gateway.ingest.stages import AnchorItem
from gateway.ledger import BatchedLeaf, MerkleTree, UserType, XrayLedger
from gateway.ledger.accounts import load_account
from gateway.ledger.anvil import Anvil
from gateway.trust.claims import BatchClaim, ClaimSource
from gateway.trust.verify import Verifier
from tests.conftest import Cast
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env
from tests.integration.plugin_helpers import flip_pixel_byte, stored_file

COUNT = 1000
STUDY = "1.2.826.0.1.3680043.10.1138.9.1"


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return dicom_fixtures.ct_series(
        tmp_path_factory.mktemp("series"), COUNT, rows=16, cols=16, study_uid=STUDY,
        prefix="1.2.826.0.1.3680043.10.1138.9.2.",
    )  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, series: list[Path]) -> Iterator[Up]:
    # Windows long enough that batches are cut by size: at this machine's ingest rate the
    # default 2 s latency limit could cut a batch before 256 images reached it.
    up = Up(
        gateway_env(
            tmp_path_factory.mktemp("batching") / "var",
            GATEWAY_BATCH_MAX="256",
            GATEWAY_BATCH_WINDOW_MS="10000",
            GATEWAY_ANCHOR_MAX_DELAY_MS="10000",
        )
    )
    try:
        result = storescu(up.dicom_port, series)
        assert result.returncode == 0, result.stdout[-2000:]
        up.wait_done(COUNT, timeout=1800)
        yield up
    finally:
        assert up.stop() == 0


def ledger_of(up: Up, *, admin: bool = False) -> XrayLedger:
    return XrayLedger.at(
        f"http://127.0.0.1:{up.env['GATEWAY_ANVIL_PORT']}",
        up.value("xray contract"),
        account=load_account(up.data_dir / "keys" / "admin.key") if admin else None,
    )


def api(up: Up) -> httpx.Client:
    token = (up.data_dir / "api-token").read_text().strip()
    return httpx.Client(
        base_url=f"http://127.0.0.1:{up.api_port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=600,
    )


def batches_table(up: Up) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{up.data_dir / 'index.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM batches ORDER BY id").fetchall()
    finally:
        db.close()


def orthanc(up: Up) -> tuple[str, tuple[str, str]]:
    creds = json.loads((up.data_dir / "keys" / "orthanc-http.json").read_text())
    return f"http://127.0.0.1:{up.env['GATEWAY_ORTHANC_HTTP_PORT']}", (
        creds["user"], creds["password"],
    )  # fmt: skip


def test_every_image_of_a_1000_image_run_has_a_proof_that_meets_the_chain(stack: Up) -> None:
    ledger = ledger_of(stack)
    rows = [r for r in stack.rows() if r["stage"] == "committed"]
    assert len(rows) == COUNT
    batch_ids = {r["batch_id"] for r in rows}
    assert None not in batch_ids
    on_chain = {i: ledger.batch_of(i) for i in batch_ids}
    for row in rows:
        leaf = leaf_hash(
            record_key=bytes(row["record_key"]), patient_key=bytes(row["patient_key"]),
            digest=bytes(row["digest"]), pixel_digest=bytes(row["pixel_digest"]),
        )  # fmt: skip
        proof = decode_proof(bytes(row["proof"]))
        batch = on_chain[row["batch_id"]]
        assert proof.index == row["leaf_index"] and proof.size == batch.count
        assert verify_inclusion(leaf=leaf, proof=proof, root=batch.root), row["id"]
        # when the gateway had the receipt: after the ack, before the row moved on
        assert row["received_at"] <= row["anchored_at"] <= row["committed_at"], row["id"]
    # one transaction per batch, none per image, and every batch the gateway made landed once
    assert ledger.events("ImageRecorded") == []
    events = ledger.events("BatchAnchored")
    assert sorted(int(e.args["batchId"]) for e in events) == sorted(batch_ids)
    assert sum(b.count for b in on_chain.values()) == COUNT
    assert max(b.count for b in on_chain.values()) == 256  # cut by size, never above it
    landed = batches_table(stack)
    assert [b["state"] for b in landed] == ["landed"] * len(events)
    gas = sum(
        int(ledger.w3.eth.get_transaction_receipt(e.tx_hash)["gasUsed"])  # type: ignore[arg-type]
        for e in events
    )
    print(f"{len(events)} batches for {COUNT} images: {gas / COUNT:.0f} gas per image")
    assert gas / COUNT < 1000


def test_every_verdict_of_the_run_is_intact_with_batch_evidence(stack: Up) -> None:
    with api(stack) as client:
        reply = client.get(f"/v1/studies/{STUDY}/verify")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["summary"]["intact"] == COUNT == body["summary"]["total"]
    ledger = ledger_of(stack)
    roots = {}
    for verdict in body["instances"]:
        batch = verdict["evidence"]["batch"]
        assert verdict["copies"] == {"pacs": "ok", "store": "ok", "ledger": "ok"}
        if batch["batch_id"] not in roots:
            roots[batch["batch_id"]] = ledger.batch_of(batch["batch_id"]).root.hex()
        assert batch["root"] == roots[batch["batch_id"]]
        assert verdict["evidence"]["tx_hash"].startswith("0x")


def test_an_image_tampered_inside_a_batch_is_detected_and_a_forged_claim_is_not_believed(
    stack: Up, series: list[Path], tmp_path: Path
) -> None:
    rows = {r["sop_instance_uid"]: r for r in stack.rows()}
    victim_uid = str(dcmread(series[300], stop_before_pixels=True).SOPInstanceUID)
    neighbour_uid = str(dcmread(series[301], stop_before_pixels=True).SOPInstanceUID)
    victim = rows[victim_uid]
    url, auth = orthanc(stack)
    path = stored_file(stack.data_dir, url, auth, victim["orthanc_id"])
    flip_pixel_byte(path)
    tampered = path.read_bytes()

    with api(stack) as client:
        verdict = client.get(f"/v1/instances/{victim_uid}/verify").json()
        neighbour = client.get(f"/v1/instances/{neighbour_uid}/verify").json()
    assert (verdict["status"], verdict["tamper"]) == ("tampered", "pixels_changed")
    assert verdict["evidence"]["batch"]["batch_id"] == victim["batch_id"]
    assert neighbour["status"] == "intact"
    # the plugin refuses the altered file on Orthanc's own routes
    assert httpx.get(f"{url}/instances/{victim['orthanc_id']}/file", auth=auth).status_code == 500

    # A claim forged for the tampered bytes, carrying the real proof and batch, is not
    # believed: its leaf does not lead to the root on chain. Neither is the true claim
    # moved to another batch.
    ledger = ledger_of(stack)
    key = load_pseudonym_key(stack.data_dir / "keys")
    now = fingerprint_bytes(tampered)
    real = BatchClaim(
        record_key=bytes(victim["record_key"]), patient_key=bytes(victim["patient_key"]),
        digest=bytes(victim["digest"]), pixel_digest=bytes(victim["pixel_digest"]),
        batch_id=victim["batch_id"], proof=decode_proof(bytes(victim["proof"])),
    )  # fmt: skip
    forged = dataclasses.replace(real, digest=now.digest, pixel_digest=now.pixel_digest)
    other = {r["batch_id"] for r in rows.values()} - {victim["batch_id"]}
    moved = dataclasses.replace(real, batch_id=min(other))
    copy = tmp_path / "tampered.dcm"
    copy.write_bytes(tampered)
    for claim in (forged, moved):
        verifier = Verifier(ledger=ledger, pseudonym_key=key, claims=_source(claim))
        assert verifier.record(victim_uid) is None
        assert verifier.file(copy).status == "unregistered"
    believed = Verifier(ledger=ledger, pseudonym_key=key, claims=_source(real)).file(copy)
    assert (believed.status, believed.tamper) == ("tampered", "pixels_changed")


def _source(claim: BatchClaim) -> ClaimSource:
    return lambda uid: [claim]


def test_a_failed_batch_is_retried_whole_and_anchored_once(stack: Up, tmp_path: Path) -> None:
    """The recorder loses its role: the batch reverts and waits; restored, it lands once."""
    admin = ledger_of(stack, admin=True)
    recorder = stack.value("recorder")
    study = "1.2.826.0.1.3680043.10.1138.9.3"
    files = dicom_fixtures.ct_series(
        tmp_path, 12, rows=16, cols=16, study_uid=study, prefix="1.2.826.0.1.3680043.10.1138.9.4."
    )
    before = len(batches_table(stack))
    admin.set_permission(recorder, "", UserType.RECORDER, enabled=False)
    try:
        assert storescu(stack.dicom_port, files).returncode == 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            failed = [b for b in batches_table(stack)[before:] if b["attempts"] >= 2]
            if failed:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no batch failed twice: {batches_table(stack)[before:]}")
        batch = failed[0]
        assert batch["state"] == "open" and "XrayNotRecorder" in batch["last_error"]
        new = [r for r in stack.rows() if r["study_instance_uid"] == study]
        waiting = [r for r in new if r["stage"] == "anchor"]
        assert waiting and all(r["batch_id"] is None for r in waiting)
        uid = waiting[0]["sop_instance_uid"]
        with api(stack) as client:
            verdict = client.get(f"/v1/instances/{uid}/verify").json()
        assert verdict["status"] == "pending" and "batch" in " ".join(verdict["notes"])
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.api_port}/metrics") as reply:
            metrics = reply.read().decode()
        assert re.search(r'^xray_gateway_batches\{state="open"\} [1-9]', metrics, re.M), metrics
    finally:
        admin.set_permission(recorder, "xray-gateway", UserType.RECORDER, enabled=True)
    rows = stack.wait_done(COUNT + len(files), timeout=600)
    after = batches_table(stack)[before:]
    assert all(b["state"] == "landed" for b in after)
    landed = next(b for b in after if b["id"] == batch["id"])
    assert (bytes(landed["root"]), landed["count"]) == (bytes(batch["root"]), batch["count"])
    members = [r for r in rows if r["batch_id"] == landed["batch_id"]]
    assert len(members) == batch["count"]
    assert sorted(r["leaf_index"] for r in members) == list(range(batch["count"]))
    events = admin.events("BatchAnchored", filters={"root": bytes(batch["root"])})
    assert len(events) == 1 and int(events[0].args["batchId"]) == landed["batch_id"]
    # every image batch on chain is one of the index's (the access trail's batches share
    # the contract's id sequence, and land whenever earlier tests' reads are due)
    on_chain = range(1, admin.batch_count() + 1)
    image_batches = [i for i in on_chain if admin.batch_kind_of(i) == "image"]
    assert image_batches == [b["batch_id"] for b in batches_table(stack)]
    committed = {r["sop_instance_uid"] for r in rows if r["study_instance_uid"] == study}
    assert len(committed) == len(files)


def _item(i: int) -> AnchorItem:
    def h(label: str) -> bytes:
        return hashlib.sha256(f"{label}:{i}".encode()).digest()

    return AnchorItem(
        record_key=h("rec"), patient_key=h("pat"), digest=h("dig"), pixel_digest=h("pix"),
        body_part="CHEST", modality="CT",
    )  # fmt: skip


def test_a_batch_that_landed_before_a_crash_is_not_sent_again(
    xray: XrayLedger, cast: Cast, tmp_path: Path
) -> None:
    recorder = xray.as_account(cast.recorder)
    index = Index(tmp_path / "index.sqlite")
    items = [_item(i) for i in range(5)]
    ids = [
        index.add_received(entry_id=f"e{i}", sop_instance_uid=f"1.2.{i}",
                           sop_class_uid="1.2.840.10008.5.1.4.1.1.2", calling_aet="CT", size=1)
        for i in range(5)
    ]  # fmt: skip
    anchorer = BatchAnchorer(recorder, index, max_size=256, window_ms=0)
    batch = anchorer.open(list(zip(ids, items, strict=True)))
    # The transaction went out and was mined; the gateway died before it saw the receipt.
    landed_id, _ = recorder.record_batch(root=batch.root, count=batch.count)
    index.close()

    reopened = Index(tmp_path / "index.sqlite")
    (resumed,) = reopened.open_batches()
    assert resumed == batch
    results = BatchAnchorer(recorder, reopened, max_size=256, window_ms=0).land(resumed, items)
    assert xray.batch_count() == 1  # batchIdOf(root) found it: nothing was sent again
    assert {r.batch_id for r in results} == {landed_id}
    on_chain = xray.batch_of(landed_id)
    for i, (item, result) in enumerate(zip(items, results, strict=True)):
        assert result.leaf_index == i and result.proof is not None
        assert xray.verify_batch_member(
            leaf=leaf_of(item), proof=decode_proof(result.proof), batch_id=landed_id
        )
    assert results[0].block_number == on_chain.block_number and results[0].tx_hash
    # a batch whose members changed since it was persisted is refused, not re-rooted
    with pytest.raises(Exception, match="no longer give the persisted root"):
        anchorer.land(resumed, [*items[:4], _item(99)])
    # landing it again (another crash after landing) still sends nothing
    again = BatchAnchorer(recorder, reopened, max_size=256, window_ms=0).land(resumed, items)
    assert again == results and xray.batch_count() == 1


def test_a_new_version_of_a_batched_key_takes_it_back_from_a_squatter_once(
    xray: XrayLedger, cast: Cast, anvil: Anvil
) -> None:
    recorder = xray.as_account(cast.recorder)
    items = [_item(i) for i in range(3)]
    tree = MerkleTree([leaf_of(item) for item in items])
    batch_id, _ = recorder.record_batch(root=tree.root, count=3)
    # a rogue Recorder writes a forged digest under the key of batched image 0
    rogue = Account.create()
    anvil.fund(rogue.address)
    xray.set_permission(rogue.address, "rogue", UserType.RECORDER)
    original = items[0]
    forged = dataclasses.replace(original, digest=hashlib.sha256(b"forged").digest())
    xray.as_account(rogue).record_image(**dataclasses.asdict(forged))
    assert xray.owner_of(original.record_key) == rogue.address
    # the gateway's version 2, anchored with the proof of version 1's batch
    leaf = BatchedLeaf(
        patient_key=original.patient_key, digest=original.digest,
        pixel_digest=original.pixel_digest, batch_id=batch_id, proof=tree.proof(0),
    )  # fmt: skip
    version_2 = dataclasses.replace(original, digest=hashlib.sha256(b"version 2").digest())
    anchorer = SingleAnchorer(recorder)
    landed = anchorer.anchor(version_2, batched=leaf)
    assert xray.owner_of(original.record_key) == cast.recorder.address
    image = xray.image_of(original.record_key)
    assert image is not None and image.current.digest == version_2.digest
    # a crash between send and receipt: run again, nothing is sent, the same evidence
    assert anchorer.anchor(version_2, batched=leaf) == landed
    assert xray.image_of(original.record_key) == image


def test_a_new_version_of_a_batched_image_is_recorded_on_its_own_and_wins(
    stack: Up, series: list[Path], tmp_path: Path
) -> None:
    original = series[500]
    ds = dcmread(original)
    uid = str(ds.SOPInstanceUID)
    ds.ImageComments = "corrected after review"  # same SOP Instance UID, other bytes
    corrected = tmp_path / "corrected.dcm"
    ds.save_as(corrected)
    before = len(stack.rows())
    assert storescu(stack.dicom_port, [corrected]).returncode == 0
    rows = [r for r in stack.wait_done(before + 1) if r["sop_instance_uid"] == uid]
    first, second = rows
    assert (first["version"], second["version"]) == (1, 2)
    assert first["batch_id"] is not None
    # not batched: one supersedeBatchedImage, carrying the proof of the batched version 1,
    # which makes the gateway's recorder the key's owner on chain
    assert second["batch_id"] is None and second["tx_hash"].startswith("0x")
    ledger = ledger_of(stack)
    record_key = bytes(second["record_key"])
    assert ledger.events("ImageRecorded", filters={"recordKey": record_key}) == []
    (event,) = ledger.events("ImageSuperseded", filters={"recordKey": record_key})
    assert event.args["digest"] == bytes(second["digest"]) and event.tx_hash == second["tx_hash"]
    assert event.args["previousDigest"] == bytes(first["digest"])
    assert ledger.owner_of(record_key) == first["recorder"] == second["recorder"]
    assert second["stage"] == "conflict"  # Orthanc keeps version 1 under that UID

    with api(stack) as client:
        pacs_copy = client.get(f"/v1/instances/{uid}/verify").json()
        upload = client.post("/v1/verify", content=corrected.read_bytes()).json()
        old = client.post("/v1/verify", content=original.read_bytes()).json()
    # the newest version, recorded later than the batch, is the one the ledger vouches for
    assert upload["status"] == "intact" and upload["evidence"]["batch"] is None
    assert upload["evidence"]["tx_hash"] == second["tx_hash"]
    for verdict in (pacs_copy, old):
        assert verdict["status"] == "tampered", verdict
        assert "older, superseded version" in " ".join(verdict["notes"])


def test_a_crash_after_the_batch_landed_does_not_anchor_it_again(tmp_path: Path) -> None:
    """SIGKILL of the anchoring worker right after ``recordBatch`` landed, before the rows
    moved on: `up` starts it again, it finds the open batch, asks ``batchIdOf(root)`` and
    sends nothing again."""
    files = dicom_fixtures.ct_series(
        tmp_path / "series", 8, rows=16, cols=16, study_uid="1.2.826.0.1.3680043.10.1138.9.5",
        prefix="1.2.826.0.1.3680043.10.1138.9.6.",
    )  # fmt: skip
    env = gateway_env(tmp_path / "var", GATEWAY_BATCH_WINDOW_MS="2000")
    up = Up({**env, "GATEWAY_FAILPOINT": "pipeline.after_anchor"})
    try:
        worker = up.worker_pid()
        storescu(up.dicom_port, files)  # acked well before the 2 s window closes
        up.wait_logged("worker-up-1 exited (code -9): starting it again")
        assert up.wait_restarted("worker-up-1", worker) != worker
        assert up.proc.poll() is None  # the listener lived on
        assert storescu(up.dicom_port, files).returncode == 0  # resent: duplicates of acked ones
        rows = up.wait_done(2 * len(files), timeout=300)
        ledger = ledger_of(up)
        events = ledger.events("BatchAnchored")
        assert len(events) == 1 == ledger.batch_count()  # landed before the crash, not re-sent
        (crashed,) = batches_table(up)
        assert crashed["state"] == "landed" and crashed["count"] == len(files)
        assert bytes(events[0].args["root"]) == bytes(crashed["root"])
        anchored = [r for r in rows if r["stage"] == "committed"]
        assert len(anchored) == len(files)
        assert {r["batch_id"] for r in anchored} == {int(events[0].args["batchId"])}
        assert "batch 1 is already on chain as batch 1: not sent again" in up.log_path.read_text()
    finally:
        assert up.stop() == 0
