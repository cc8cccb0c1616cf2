"""Verification on the stack `up` starts: verdicts, every tamper class made for real, audit, restore, roles.

One stack, 200 small CT slices sent with DCMTK's storescu. The first tests check that
everything verifies intact (API and the independent CLI); the last one plants every
tamper class, then checks each verdict, the audit sweep (every planted problem and no
false one) and restore.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

import dicom_fixtures
from gateway.core.fingerprint import fingerprint_bytes
from gateway.core.merkle import decode_proof
from gateway.ledger import XrayLedger
from gateway.ledger.accounts import load_account
from gateway.pacs.client import Pacs
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env, run

COUNT = 300
STUDY = "1.2.826.0.1.3680043.10.1138.7.1"


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return dicom_fixtures.ct_series(
        tmp_path_factory.mktemp("series"), COUNT, rows=64, cols=64, study_uid=STUDY,
        prefix="1.2.826.0.1.3680043.10.1138.7.2.",
    )  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, series: list[Path]) -> Iterator[Up]:
    up = Up(gateway_env(tmp_path_factory.mktemp("verify") / "var"))
    try:
        result = storescu(up.dicom_port, series)
        assert result.returncode == 0, result.stdout[-2000:]
        up.wait_done(COUNT)
        yield up
    finally:
        assert up.stop() == 0


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def api(up: Up, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"http://127.0.0.1:{up.api_port}", headers=headers, timeout=120)


def admin_token(up: Up) -> str:
    return (up.data_dir / "api-token").read_text().strip()


def issue(up: Up, role: str, name: str) -> str:
    result = run(up.env, "token", "create", "--role", role, "--name", name)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def pacs(up: Up) -> Pacs:
    creds = json.loads((up.data_dir / "keys" / "orthanc-http.json").read_text())
    return Pacs(
        f"http://127.0.0.1:{up.env['GATEWAY_ORTHANC_HTTP_PORT']}",
        user=creds["user"], password=creds["password"],
    )  # fmt: skip


def stored_path(up: Up, orthanc_id: str) -> Path:
    """Where Orthanc keeps the instance's file on disk."""
    creds = json.loads((up.data_dir / "keys" / "orthanc-http.json").read_text())
    info = httpx.get(
        f"http://127.0.0.1:{up.env['GATEWAY_ORTHANC_HTTP_PORT']}/instances/{orthanc_id}"
        "/attachments/dicom/info",
        auth=(creds["user"], creds["password"]),
    ).json()
    found = list((up.data_dir / "orthanc").rglob(info["Uuid"]))
    assert len(found) == 1, found
    return found[0]


def ledger_admin(up: Up) -> XrayLedger:
    return XrayLedger.at(
        f"http://127.0.0.1:{up.env['GATEWAY_ANVIL_PORT']}",
        up.value("xray contract"),
        account=load_account(up.data_dir / "keys" / "admin.key"),
    )


def test_every_instance_verifies_intact_through_the_api(stack: Up, series: list[Path]) -> None:
    with api(stack, admin_token(stack)) as client:
        study = client.get(f"/v1/studies/{STUDY}/verify")
        assert study.status_code == 200, study.text
        body = study.json()
        assert body["summary"]["intact"] == COUNT and body["summary"]["total"] == COUNT
        verdict = client.get(f"/v1/instances/{uid_of(series[0])}/verify").json()
    assert verdict["status"] == "intact"
    evidence = verdict["evidence"]
    assert evidence["recorded_digest"] == evidence["digest_now"]
    assert evidence["tx_hash"].startswith("0x") and evidence["block_number"] > 0
    assert evidence["block_time"] > 0 and evidence["recorder_name"] == "xray-gateway"
    assert verdict["copies"] == {"pacs": "ok", "store": "ok", "ledger": "ok"}
    # anchored in a Merkle batch (the default): the proof leads to the root on chain
    batch = evidence["batch"]
    on_chain = ledger_admin(stack).batch_of(batch["batch_id"])
    assert batch["root"] == on_chain.root.hex() and batch["size"] == on_chain.count > 1


def test_the_independent_cli_verifies_files_with_chain_contract_and_key_only(
    stack: Up, series: list[Path], tmp_path: Path
) -> None:
    # An auditor's machine: no data dir, nothing of the gateway but the pseudonym key.
    key = tmp_path / "pseudonym.key"
    key.write_bytes((stack.data_dir / "keys" / "pseudonym.key").read_bytes())
    key.chmod(0o600)
    env = {k: v for k, v in stack.env.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_DATA_DIR"] = str(tmp_path / "empty")
    args = ["verify", "--json", "--chain-url",
            f"http://127.0.0.1:{stack.env['GATEWAY_ANVIL_PORT']}",
            "--contract", stack.value("xray contract"), "--pseudonym-key", str(key)]  # fmt: skip
    # The images were anchored in Merkle batches: the chain holds only roots, so the
    # ledger alone cannot vouch for a file...
    alone = run(env, *args, *map(str, series[:3]))
    assert alone.returncode == 3, alone.stderr
    assert [v["status"] for v in json.loads(alone.stdout)] == ["unregistered"] * 3
    # ...until the gateway's API supplies the inclusion proofs, which the CLI checks on chain
    token = tmp_path / "auditor.token"
    token.write_text(issue(stack, "auditor", "cli-auditor"))
    args += ["--proofs", f"http://127.0.0.1:{stack.api_port}", "--token-file", str(token)]
    result = run(env, *args, *map(str, series[:50]))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    verdicts = json.loads(result.stdout)
    assert [v["status"] for v in verdicts] == ["intact"] * 50
    assert all(v["evidence"]["batch"]["batch_id"] >= 1 for v in verdicts)
    assert not (tmp_path / "empty").exists()  # it never looked for an index or a store

    # the same CLI says so when a file is altered
    altered = tmp_path / "altered.dcm"
    ds = dcmread(series[0])
    ds.PatientName = "Someone^Else"
    ds.save_as(altered)
    result = run(env, *args, str(altered))
    assert result.returncode == 3
    (verdict,) = json.loads(result.stdout)
    assert (verdict["status"], verdict["tamper"]) == ("tampered", "header_changed")
    assert "Someone" not in result.stdout + result.stderr  # no store: no diff, and no PHI


def test_tokens_and_roles(stack: Up, series: list[Path]) -> None:
    uid = uid_of(series[1])
    with api(stack) as anonymous:
        reply = anonymous.get(f"/v1/instances/{uid}/verify")
        assert reply.status_code == 401
        assert reply.headers["content-type"] == "application/problem+json"
        assert reply.headers["www-authenticate"].startswith("Bearer")
    with api(stack, "not-a-token") as wrong:
        assert wrong.get(f"/v1/instances/{uid}/verify").status_code == 401
    auditor, clinician = issue(stack, "auditor", "audit-1"), issue(stack, "clinician", "dr-a")
    with api(stack, auditor) as client:
        assert client.get(f"/v1/instances/{uid}/verify").status_code == 200
        forbidden = client.post(f"/v1/instances/{uid}/restore")
        assert forbidden.status_code == 403 and "auditor" in forbidden.json()["detail"]
    with api(stack, clinician) as client:
        assert client.get(f"/v1/instances/{uid}/verify").status_code == 200
        assert client.post("/v1/audits").status_code == 403
        assert client.get(f"/v1/recorders/{stack.value('recorder')}/records").status_code == 403
    with api(stack, admin_token(stack)) as client:
        assert client.get("/v1/instances/1.2.3.bad..uid/verify").status_code == 422
        assert client.get("/v1/instances/1.2.3.4.5.6/verify").status_code == 404
    # revoked tokens stop working
    assert run(stack.env, "token", "revoke", "audit-1").returncode == 0
    with api(stack, auditor) as client:
        assert client.get(f"/v1/instances/{uid}/verify").status_code == 401


def test_ledger_views_per_patient_and_per_recorder(stack: Up, series: list[Path]) -> None:
    ds = dcmread(series[0], stop_before_pixels=True)
    identity = {"patient_id": ds.PatientID, "issuer": ds.IssuerOfPatientID}
    with api(stack, admin_token(stack)) as client:
        key = client.post("/v1/patients/key", json=identity).json()["patient_key"]
        nobody_key = client.post("/v1/patients/key", json={"patient_id": "NOBODY-42"}).json()
        patient = client.get("/v1/patients/records", params={"patient_key": key}).json()
        nobody = client.get("/v1/patients/records", params=nobody_key).json()
        recorder = client.get(f"/v1/recorders/{stack.value('recorder')}/records").json()
        batches = client.get(f"/v1/recorders/{stack.value('recorder')}/batches").json()
    uids = {r["sop_instance_uid"] for r in patient["items"]}
    assert {uid_of(p) for p in series} <= uids
    assert patient["xrayhash_count"] + sum(1 for r in patient["items"] if r["batch_id"]) >= COUNT
    assert nobody["items"] == [] and nobody["xrayhash_count"] == 0
    assert recorder["name"] == "xray-gateway" and "recorder" in recorder["roles"]
    assert len(recorder["items"]) >= COUNT
    in_batches = {r["batch_id"] for r in recorder["items"] if r["batch_id"] is not None}
    assert in_batches <= {b["batch_id"] for b in batches["items"]}


def orthanc_reads(up: Up, path: Path, orthanc: Pacs) -> dict[str, httpx.Response]:
    """The instance's file through Orthanc's REST API and through DICOMweb (WADO-RS)."""
    ds = dcmread(path, stop_before_pixels=True)
    creds = json.loads((up.data_dir / "keys" / "orthanc-http.json").read_text())
    base = f"http://127.0.0.1:{up.env['GATEWAY_ORTHANC_HTTP_PORT']}"
    auth = (creds["user"], creds["password"])
    orthanc_id = orthanc.find(str(ds.SOPInstanceUID)) or "none"
    wado = (f"{base}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")  # fmt: skip
    return {
        "rest": httpx.get(f"{base}/instances/{orthanc_id}/file", auth=auth, timeout=60),
        "dicomweb": httpx.get(
            wado,
            auth=auth,
            timeout=60,
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        ),
    }


def recorded_part(reply: httpx.Response) -> bytes | None:
    """The single Part-10 file in a WADO-RS multipart answer."""
    boundary = reply.headers["content-type"].split("boundary=")[-1].strip('"').split(";")[0]
    parts = [p for p in reply.content.split(b"--" + boundary.encode()) if b"\r\n\r\n" in p]
    if len(parts) != 1:
        return None
    body = parts[0].split(b"\r\n\r\n", 1)[1]
    return body[:-2] if body.endswith(b"\r\n") else body


def wait_audit(client: httpx.Client, audit_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        state = client.get(f"/v1/audits/{audit_id}").json()
        if state["state"] != "running":
            return state
        time.sleep(0.5)
    raise AssertionError("the audit never finished")


def test_every_tamper_class_is_detected_audited_and_restored(
    stack: Up, series: list[Path], tmp_path: Path
) -> None:
    orthanc = pacs(stack)
    uids = [uid_of(p) for p in series]
    planted: dict[str, tuple[str, str | None]] = {}

    # pixels_changed: a byte flipped near the end of the stored file (inside Pixel Data)
    for uid in uids[0:5]:
        path = stored_path(stack, orthanc.find(uid) or "")
        data = bytearray(path.read_bytes())
        data[-100] ^= 0xFF
        path.write_bytes(bytes(data))
        planted[uid] = ("tampered", "pixels_changed")
    # header_changed: PatientName edited, the file replaced in Orthanc's storage
    for uid in uids[5:10]:
        path = stored_path(stack, orthanc.find(uid) or "")
        ds = dcmread(path)
        ds.PatientName = "Tampered^Name"
        ds.save_as(path)
        planted[uid] = ("tampered", "header_changed")
    # missing: deleted from Orthanc
    for uid in uids[10:15]:
        orthanc.delete(orthanc.find(uid) or "")
        planted[uid] = ("missing", None)
    # store_corrupt: one bit flipped in the sealed object
    rows = {r["sop_instance_uid"]: r for r in stack.rows()}
    for uid in uids[15:20]:
        name = rows[uid]["object_name"]
        sealed = stack.data_dir / "objects" / name[:2] / name  # the fs store fans out by prefix
        data = bytearray(sealed.read_bytes())
        data[len(data) // 2] ^= 0x01
        sealed.write_bytes(bytes(data))
        planted[uid] = ("store_corrupt", None)
    # retired on chain by the admin
    ledger = ledger_admin(stack)
    for uid in uids[20:25]:
        row = rows[uid]  # anchored in a batch: the chain checks the proof before retiring
        ledger.retire_batched_image(
            record_key=bytes(row["record_key"]), patient_key=bytes(row["patient_key"]),
            digest=bytes(row["digest"]), pixel_digest=bytes(row["pixel_digest"]),
            batch_id=row["batch_id"], proof=decode_proof(bytes(row["proof"])),
            reason="wrong_patient",
        )  # fmt: skip
        planted[uid] = ("retired", None)
    # unregistered: posted straight to Orthanc, around the gateway
    strays = dicom_fixtures.ct_series(
        tmp_path / "strays", 5, rows=32, cols=32, study_uid=STUDY,
        prefix="1.2.826.0.1.3680043.10.1138.7.9.",
    )  # fmt: skip
    for path in strays:
        orthanc.store(path, digest=b"")
        planted[uid_of(path)] = ("unregistered", None)

    admin = api(stack, admin_token(stack))
    auditor = api(stack, issue(stack, "auditor", "audit-2"))
    with admin, auditor:
        for uid, (status, tamper) in planted.items():
            verdict = admin.get(f"/v1/instances/{uid}/verify").json()
            assert (verdict["status"], verdict["tamper"]) == (status, tamper), (uid, verdict)
        header = admin.get(f"/v1/instances/{uids[5]}/verify").json()
        (change,) = [c for c in header["changes"] if c["keyword"] == "PatientName"]
        assert change["after"] == "Tampered^Name" and not change["redacted"]
        # an auditor sees which attribute changed, not its values
        redacted = auditor.get(f"/v1/instances/{uids[5]}/verify").json()
        (change,) = [c for c in redacted["changes"] if c["keyword"] == "PatientName"]
        assert change["redacted"] and change["before"] is None and change["after"] is None
        assert "Tampered" not in json.dumps(redacted)
        pixels = admin.get(f"/v1/instances/{uids[0]}/verify").json()
        assert pixels["evidence"]["pixel_digest_now"] != pixels["evidence"]["recorded_pixel_digest"]

        # POST /v1/verify: the original file is registered and unaltered; an edited one is not
        original = admin.post("/v1/verify", content=series[30].read_bytes(),
                              headers={"Content-Type": "application/dicom"})  # fmt: skip
        assert original.json()["status"] == "intact", original.text
        edited = admin.post(
            "/v1/verify", content=stored_path(stack, orthanc.find(uids[6]) or "").read_bytes()
        )
        assert (edited.json()["status"], edited.json()["tamper"]) == ("tampered", "header_changed")
        assert admin.post("/v1/verify", content=b"not dicom at all").status_code == 422

        # the sweep finds every planted problem and nothing else
        started = auditor.post("/v1/audits")
        assert started.status_code == 202, started.text
        state = wait_audit(auditor, started.json()["id"])
        assert state["state"] == "done", state
        found = {
            f["sop_instance_uid"]: (f["status"], f["tamper"]) for f in state["report"]["findings"]
        }
        assert found == planted
        summary = state["report"]["summary"]
        assert summary["total"] == COUNT + 5 and summary["intact"] == COUNT - 25
        assert state["done"] == state["total"] == COUNT + 5
        assert admin.get("/v1/alerts", params={"kind": "tampered"}).json()["items"]

        # a radiologist's REST or DICOMweb GET of a tampered instance gets an error, not bytes
        for uid in uids[0:1] + uids[5:6]:
            for name, reply in orthanc_reads(stack, series[uids.index(uid)], orthanc).items():
                assert reply.status_code >= 400, (uid, name, reply.status_code)
                assert b"Tampered^Name" not in reply.content, (uid, name)

        # restore puts the verified original back: tampered and missing become intact
        for uid in uids[0:1] + uids[5:6] + uids[10:11]:
            restored = admin.post(f"/v1/instances/{uid}/restore")
            assert restored.status_code == 200, restored.text
            assert restored.json()["status"] == "intact"
            assert admin.get(f"/v1/instances/{uid}/verify").json()["status"] == "intact"
            # ... and Orthanc serves it again, the recorded bytes, on both paths
            recorded = bytes(rows[uid]["digest"])
            for name, reply in orthanc_reads(stack, series[uids.index(uid)], orthanc).items():
                assert reply.status_code == 200, (uid, name, reply.status_code)
                if name == "rest":
                    assert fingerprint_bytes(reply.content).digest == recorded, uid
                else:
                    part = recorded_part(reply)
                    assert part is not None, (uid, name, reply.headers)
                    assert fingerprint_bytes(part).digest == recorded, uid
        # nothing to restore from: a corrupt sealed original, a retired record, a stray
        for uid in (uids[15], uids[20], uid_of(strays[0])):
            refused = admin.post(f"/v1/instances/{uid}/restore")
            assert refused.status_code == 409, refused.text

    # the CLI restores and audits too
    result = run(stack.env, "restore", uids[1])
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["status"] == "intact"
    result = run(stack.env, "audit", "--json")
    assert result.returncode == 3, result.stderr[-2000:]
    report = json.loads(result.stdout)
    still = {uid for uid, _ in planted.items()} - {uids[0], uids[1], uids[5], uids[10]}
    assert {f["sop_instance_uid"] for f in report["findings"]} == still
