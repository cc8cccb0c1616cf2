"""Grants of read access on the stack `up` starts (anvil, Orthanc with the plugin, storescu):
a grantee token reads exactly the granted study through the API and the console (headless
Chromium), until the grant is revoked or expires (403 with the problem type that says
why); the grant events are on chain with keys only; the study's zip holds only files that
verify, and names the tampered one in its manifest."""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Page, expect
from pydicom import dcmread
from pydicom.fileset import FileSet

from gateway.core.access import grantee_key, study_key
from gateway.core.keys import load_pseudonym_key, patient_key
from gateway.ledger import XrayLedger
from gateway.trust.share import discard
from tests.integration.browser import OfflineBrowser
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env, run
from tests.integration.plugin_helpers import Study, flip_pixel_byte, make_study, stored_file

pytestmark = pytest.mark.integration

SLICES = 3  # of the granted study; one of them is tampered with in Orthanc's storage


@dataclass
class GrantStack:
    up: Up
    api: str
    admin: str
    granted: Study  # the study granted; its first slice is tampered with
    other: Study  # the same patient's other study, never granted to the study grantee
    tampered_uid: str
    patient: dict[str, str]  # PatientID, IssuerOfPatientID, PatientName, PatientBirthDate
    ledger: XrayLedger

    def get(self, path: str, token: str, **params: Any) -> requests.Response:
        return requests.get(
            f"{self.api}{path}", headers={"Authorization": f"Bearer {token}"}, params=params,
            timeout=120,
        )  # fmt: skip

    def as_admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("headers", {"Authorization": f"Bearer {self.admin}"})
        return requests.request(method, f"{self.api}{path}", timeout=120, **kwargs)

    def grantee(self, name: str) -> str:
        issued = run(self.up.env, "token", "create", "--name", name, "--role", "grantee")
        assert issued.returncode == 0, issued.stderr
        return issued.stdout.strip()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrantStack]:
    root = tmp_path_factory.mktemp("grants")
    env = gateway_env(root / "var", GATEWAY_TRAIL_WINDOW_S="0")
    up = Up(env)
    try:
        granted, other = make_study(root, count=SLICES), make_study(root, count=1)
        sent = storescu(up.dicom_port, granted.files + other.files)
        assert sent.returncode == 0, sent.stdout[-2000:]
        rows = up.wait_done(SLICES + 1)
        assert [row["stage"] for row in rows] == ["committed"] * (SLICES + 1)
        creds = json.loads((up.data_dir / "keys" / "orthanc-http.json").read_text())
        orthanc = f"http://127.0.0.1:{env['GATEWAY_ORTHANC_HTTP_PORT']}"
        victim = next(r for r in rows if r["sop_instance_uid"] == granted.sop_uids[0])
        flip_pixel_byte(
            stored_file(
                up.data_dir, orthanc, (creds["user"], creds["password"]), victim["orthanc_id"]
            )
        )
        ds = dcmread(granted.files[0])
        patient = {
            "PatientID": str(ds.PatientID), "IssuerOfPatientID": str(ds.IssuerOfPatientID),
            "PatientName": str(ds.PatientName), "PatientBirthDate": str(ds.PatientBirthDate),
        }  # fmt: skip
        ledger = XrayLedger.at(
            f"http://127.0.0.1:{env['GATEWAY_ANVIL_PORT']}", up.value("xray contract")
        )
        yield GrantStack(
            up, f"http://127.0.0.1:{up.api_port}", (up.data_dir / "api-token").read_text().strip(),
            granted, other, granted.sop_uids[0], patient, ledger,
        )  # fmt: skip
    finally:
        assert up.stop() == 0


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


def _problem(reply: requests.Response) -> str:
    assert reply.status_code == 403, (reply.status_code, reply.text[:300])
    assert reply.headers["content-type"].startswith("application/problem+json")
    return str(reply.json()["type"]).rsplit("/", 1)[-1]


def _grant(stack: GrantStack, grantee: str, grant_id: int) -> dict[str, Any]:
    """One grant as the admin's list shows it (a revoked grant is kept, state `revoked`)."""
    listed = stack.as_admin("GET", "/v1/grants", params={"grantee": grantee, "limit": 1000})
    assert listed.status_code == 200, listed.text
    found: dict[str, Any] = next(g for g in listed.json()["items"] if g["id"] == grant_id)
    return found


def _reads(stack: GrantStack, token: str) -> dict[str, requests.Response]:
    """The same requests, each time: the granted study, one of its instances, the zip, and
    the other study (never granted)."""
    s = stack
    return {
        "study": s.get(f"/v1/studies/{s.granted.study_uid}/verify", token),
        "instance": s.get(f"/v1/instances/{s.granted.sop_uids[1]}/verify", token),
        "download": s.get(f"/v1/studies/{s.granted.study_uid}/download", token),
        "other": s.get(f"/v1/studies/{s.other.study_uid}/verify", token),
    }


def _open_viewer(page: Page, stack: GrantStack, token: str, study_uid: str) -> int:
    page.goto("/console/login")
    page.fill("#token", token)
    page.keyboard.press("Enter")
    page.wait_for_url("**/console")
    answer = page.goto(f"/console/studies/{study_uid}/view")
    assert answer is not None
    return answer.status


def test_a_study_grant_reads_exactly_that_study_until_it_is_revoked(
    stack: GrantStack, offline_browser: OfflineBrowser
) -> None:
    token = stack.grantee("dr-outside")
    before = _reads(stack, token)
    assert {k: _problem(r) for k, r in before.items()} == dict.fromkeys(before, "not-granted")

    made = stack.as_admin("POST", "/v1/grants", json={
        "to": "dr-outside", "study_instance_uid": stack.granted.study_uid,
        "until": _iso(time.time() + 3600),
    })  # fmt: skip
    assert made.status_code == 201, made.text
    grant = made.json()
    assert grant["state"] == "active" and grant["grantee_kind"] == "token"

    reads = _reads(stack, token)
    assert reads["study"].status_code == 200
    summary = reads["study"].json()["summary"]
    assert (summary["intact"], summary["tampered"], summary["total"]) == (SLICES - 1, 1, SLICES)
    assert reads["instance"].json()["status"] == "intact"
    assert reads["download"].status_code == 200
    assert _problem(reads["other"]) == "not-granted"
    listing = stack.get("/v1/studies", token).json()
    assert listing["items"] == [stack.granted.study_uid]
    # everything else stays closed to the grantee role
    assert _problem(stack.get("/v1/audits", token)) == "forbidden"
    assert _problem(stack.get(f"/v1/instances/{stack.granted.sop_uids[1]}/proof", token)) == (
        "forbidden"
    )

    with offline_browser.page(stack.api) as cut:
        page = cut.page
        assert _open_viewer(page, stack, token, stack.granted.study_uid) == 200
        items = page.locator("#viewer-instances li")
        expect(items).to_have_count(SLICES)
        expect(page.locator(f'li[data-uid="{stack.tampered_uid}"] .status')).to_have_text(
            "tampered"
        )
        images = page.locator("#viewer-instances img")
        expect(images).to_have_count(SLICES - 1)  # the tampered one is not rendered
        for i in range(SLICES - 1):
            image = images.nth(i)
            assert image.get_attribute("src", timeout=5000).startswith("/console/")  # type: ignore[union-attr]
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
            )
        page.goto("/console")
        expect(page.locator("#granted-studies a")).to_have_text([stack.granted.study_uid])
        assert page.goto(f"/console/studies/{stack.other.study_uid}/view").status == 403  # type: ignore[union-attr]
        expect(page.get_by_role("heading", level=1)).to_have_text("Not granted")
        assert cut.left == []  # the images came through the gateway, never from Orthanc

    revoked = stack.as_admin("DELETE", f"/v1/grants/{grant['id']}")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    after = _reads(stack, token)
    assert {k: _problem(r) for k, r in after.items()} == {
        "study": "grant-revoked", "instance": "grant-revoked", "download": "grant-revoked",
        "other": "not-granted",
    }  # fmt: skip
    assert stack.get("/v1/studies", token).json()["items"] == []
    with offline_browser.page(stack.api) as cut:
        assert _open_viewer(cut.page, stack, token, stack.granted.study_uid) == 403
        expect(cut.page.get_by_role("heading", level=1)).to_have_text("Grant revoked")

    # every use, served or refused, is in the access trail under the token's name
    trail = stack.as_admin("GET", "/v1/access", params={"user": "dr-outside", "limit": 1000})
    entries = trail.json()["items"]
    seen = {(e["route"], e["verdict"], e["served"]) for e in entries}
    assert ("api:verify-study", "intact", True) in seen
    assert ("api:download", "tampered", False) in seen
    assert ("console:preview", "intact", True) in seen
    assert ("api:verify-study", "grant-revoked", False) in seen
    assert ("api:verify-study", "not-granted", False) in seen


def test_a_grant_made_on_the_command_line_expires(stack: GrantStack) -> None:
    until = time.time() + 30  # room for the CLI and the first read on a loaded machine
    made = run(stack.up.env, "grant", "--study", stack.granted.study_uid, "--to", "dr-brief",
               "--until", _iso(until))  # fmt: skip
    assert made.returncode == 0, made.stderr
    grant = json.loads(made.stdout)
    token = grant["token"]  # issued with the grant: dr-brief had no token
    assert stack.get(f"/v1/studies/{stack.granted.study_uid}/verify", token).status_code == 200
    listed = run(stack.up.env, "grants", "--study", stack.granted.study_uid)
    assert grant["id"] in [g["id"] for g in json.loads(listed.stdout)]
    # wait for the expiry by asking until the answer changes (bounded), then check the rest
    deadline = time.monotonic() + 90
    reply = stack.get(f"/v1/studies/{stack.granted.study_uid}/verify", token)
    while reply.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.5)
        reply = stack.get(f"/v1/studies/{stack.granted.study_uid}/verify", token)
    assert _problem(reply) == "grant-expired"
    # it closed at the expiry (whole seconds, as the chain keeps it), not before
    assert time.time() >= datetime.fromisoformat(grant["expires_at"]).timestamp() == int(until)
    after = _reads(stack, token)
    assert {k: _problem(r) for k, r in after.items()} == {
        "study": "grant-expired", "instance": "grant-expired", "download": "grant-expired",
        "other": "not-granted",
    }  # fmt: skip


def test_a_patient_grant_downloads_a_zip_of_verified_files_without_the_tampered_one(
    stack: GrantStack, tmp_path: Path
) -> None:
    token = stack.grantee("dr-family")
    made = stack.as_admin("POST", "/v1/grants", json={
        "to": "dr-family", "patient_id": stack.patient["PatientID"],
        "issuer": stack.patient["IssuerOfPatientID"], "until": _iso(time.time() + 3600),
    })  # fmt: skip
    assert made.status_code == 201, made.text
    assert made.json()["study_instance_uid"] is None
    # a patient grant covers each of the patient's studies
    listing = stack.get("/v1/studies", token).json()["items"]
    assert listing == sorted([stack.granted.study_uid, stack.other.study_uid])
    reply = stack.get(f"/v1/studies/{stack.granted.study_uid}/download", token)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(reply.content))
    manifest = json.loads(archive.read("MANIFEST.json"))
    assert sorted(manifest["included"]) == sorted(stack.granted.sop_uids[1:])
    assert [(e["sop_instance_uid"], e["status"]) for e in manifest["left_out"]] == [
        (stack.tampered_uid, "tampered")
    ]
    names = sorted(n for n in archive.namelist() if n not in ("MANIFEST.json", "DICOMDIR"))
    assert names == sorted(manifest["files"].values()) and len(names) == SLICES - 1
    # a CD-viewer style File-set: the DICOMDIR, read with pydicom, lists exactly the
    # included files, by PS3.10 File IDs, each of which is in the zip and verifies
    unpacked = tmp_path / "zip"
    archive.extractall(unpacked)
    fileset = FileSet(dcmread(unpacked / "DICOMDIR"))
    listed = {i.SOPInstanceUID: Path(i.path) for i in fileset}
    discard(fileset)
    assert sorted(listed) == sorted(stack.granted.sop_uids[1:])
    for uid, path in listed.items():
        file_id = path.relative_to(unpacked)
        assert all(re.fullmatch(r"[A-Z0-9_]{1,8}", part) for part in file_id.parts), file_id
        assert manifest["files"][uid] == file_id.as_posix()
        checked = stack.as_admin(  # each file verifies on its own against the ledger
            "POST", "/v1/verify", data=path.read_bytes(),
            headers={"Authorization": f"Bearer {stack.admin}", "Content-Type": "application/dicom"},
        )  # fmt: skip
        assert checked.status_code == 200, checked.text
        assert (checked.json()["status"], checked.json()["sop_instance_uid"]) == ("intact", uid)


def test_the_grant_events_are_on_chain_with_keys_only(stack: GrantStack) -> None:
    pseudonym = load_pseudonym_key(stack.up.data_dir / "keys")
    granted = stack.ledger.events("AccessGranted")
    revoked = stack.ledger.events("AccessRevoked")
    assert len(granted) == 3 and len(revoked) == 1  # dr-outside, dr-brief, dr-family
    patient = patient_key(pseudonym, stack.patient["IssuerOfPatientID"], stack.patient["PatientID"])
    study = study_key(pseudonym, stack.granted.study_uid)
    first = granted[0].args
    listed = stack.as_admin("GET", "/v1/grants", params={"grantee": "dr-outside"}).json()
    token_id = listed["items"][0]["grantee_id"]
    assert token_id.startswith("tok-")  # the grant binds the token's id, not its name
    assert (first["grantee"], first["patientKey"], first["studyKey"]) == (
        grantee_key(pseudonym, token_id),
        patient,
        study,
    )
    assert granted[2].args["studyKey"] == bytes(32)  # the patient grant: every study
    # the views: a patient key lists all three, the study key the two study grants
    assert stack.ledger.grants_of(patient) == [1, 2, 3]
    assert stack.ledger.grants_of(study) == [1, 2]
    assert stack.ledger.grant_of(1).revoked_by is not None
    assert stack.ledger.grant_of(2).revoked_by is None
    # no patient data, no UID and no grantee name in any of their logs or transactions
    secrets = [v.encode() for v in stack.patient.values() if v] + [
        stack.granted.study_uid.encode(), b"dr-outside", b"dr-brief", b"dr-family",
    ]  # fmt: skip
    for event in granted + revoked:
        receipt = stack.ledger.w3.eth.get_transaction_receipt(event.tx_hash)  # type: ignore[arg-type]
        tx = stack.ledger.w3.eth.get_transaction(event.tx_hash)  # type: ignore[arg-type]
        blobs = [bytes(tx["input"])] + [
            bytes(log["data"]) + b"".join(bytes(t) for t in log["topics"])
            for log in receipt["logs"]
        ]
        for blob in blobs:
            assert not any(secret in blob for secret in secrets), event.name


def test_a_token_issued_again_under_a_revoked_name_inherits_none_of_its_grants(
    stack: GrantStack,
) -> None:
    old = stack.grantee("dr-reissued")
    made = stack.as_admin("POST", "/v1/grants", json={
        "to": "dr-reissued", "study_instance_uid": stack.granted.study_uid,
        "until": _iso(time.time() + 3600),
    })  # fmt: skip
    assert made.status_code == 201, made.text
    study = f"/v1/studies/{stack.granted.study_uid}/verify"
    assert stack.get(study, old).status_code == 200
    revoked = run(stack.up.env, "token", "revoke", "dr-reissued")
    assert revoked.returncode == 0, revoked.stderr
    assert stack.get(study, old).status_code == 401  # the old token is gone
    new = stack.grantee("dr-reissued")  # the same name, another holder
    assert {k: _problem(r) for k, r in _reads(stack, new).items()} == {
        "study": "not-granted", "instance": "not-granted", "download": "not-granted",
        "other": "not-granted",
    }  # fmt: skip
    assert stack.get("/v1/studies", new).json()["items"] == []
    # the grant still stands, for the token it was made to (no longer issued)
    kept = _grant(stack, "dr-reissued", made.json()["id"])
    assert kept["state"] == "active"
    # a grant to a name with no token is refused: it would bind to nobody
    nobody = stack.as_admin("POST", "/v1/grants", json={
        "to": "dr-nobody", "study_instance_uid": stack.granted.study_uid,
        "until": _iso(time.time() + 3600),
    })  # fmt: skip
    assert nobody.status_code == 422 and "has no token" in nobody.json()["detail"]


def test_a_grant_is_extended_and_narrowed_by_a_new_grant_then_the_old_ones_revocation(
    stack: GrantStack,
) -> None:
    token = stack.grantee("dr-carried")
    made = stack.as_admin("POST", "/v1/grants", json={
        "to": "dr-carried", "patient_id": stack.patient["PatientID"],
        "issuer": stack.patient["IssuerOfPatientID"], "until": _iso(time.time() + 3600),
    })  # fmt: skip
    assert made.status_code == 201, made.text
    first = made.json()
    # extend through the API: a new grant replacing the first, which is revoked after it
    later = time.time() + 7200
    extended = stack.as_admin("PATCH", f"/v1/grants/{first['id']}", json={"until": _iso(later)})
    assert extended.status_code == 200, extended.text
    second = extended.json()
    assert (second["replaces"], second["state"], second["study_instance_uid"]) == (
        first["id"], "active", None,
    )  # fmt: skip
    assert datetime.fromisoformat(second["expires_at"]).timestamp() == int(later)
    assert second["grantee_id"] == first["grantee_id"]
    old = _grant(stack, "dr-carried", first["id"])
    assert old["state"] == "revoked"
    # grant first, then revoke: the new grant was mined in an earlier block than the revocation
    revoke_block = stack.ledger.w3.eth.get_transaction_receipt(old["revoke_tx"])["blockNumber"]
    assert second["block_number"] < revoke_block
    assert stack.ledger.grant_of(second["id"]).revoked_by is None
    assert stack.get("/v1/studies", token).json()["items"] == sorted(
        [stack.granted.study_uid, stack.other.study_uid]
    )
    # narrow on the command line to the patient's other study
    narrowed = run(stack.up.env, "grant", "--extend", str(second["id"]),
                   "--study", stack.other.study_uid)  # fmt: skip
    assert narrowed.returncode == 0, narrowed.stderr
    third = json.loads(narrowed.stdout)
    assert (third["replaces"], third["study_instance_uid"], third["expires_at"]) == (
        second["id"], stack.other.study_uid, second["expires_at"],
    )  # fmt: skip
    assert stack.get(f"/v1/studies/{stack.other.study_uid}/verify", token).status_code == 200
    assert _problem(stack.get(f"/v1/studies/{stack.granted.study_uid}/verify", token)) == (
        "grant-revoked"
    )
    assert stack.get("/v1/studies", token).json()["items"] == [stack.other.study_uid]
    # a revoked grant is not carried on; an expiry must be in the future
    again = stack.as_admin("PATCH", f"/v1/grants/{first['id']}", json={"until": _iso(later)})
    assert again.status_code == 409 and again.json()["type"].endswith("/grant-not-standing")
    past = stack.as_admin("PATCH", f"/v1/grants/{third['id']}",
                          json={"until": _iso(time.time() - 60)})  # fmt: skip
    assert past.status_code == 422 and "future" in past.json()["detail"]
    wider = stack.as_admin("PATCH", f"/v1/grants/{third['id']}",
                           json={"study_instance_uid": stack.granted.study_uid})  # fmt: skip
    assert wider.status_code == 422, wider.text
