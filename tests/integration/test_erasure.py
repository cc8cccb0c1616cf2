"""Erasure by crypto-shredding on the stack `up` starts (anvil, Orthanc with the plugin), fed
by DCMTK's storescu: two studies of one patient, one erased in two steps.

What it shows: the dry run's hash is required and a changed set refuses it; a crash
mid-erasure (a failpoint in the CLI) is finished by confirming again; the erased study's
objects are gone and its study key destroyed; sealed bytes kept beforehand open with no
key the gateway holds; it is absent from Orthanc, reports ``erased`` in verify and audit,
its chain records are retired with reason ``erased``; the other study still verifies
``intact``; a copy sent again is refused by the listener, and one put straight into
Orthanc is not served and is flagged.
"""

from __future__ import annotations

import io
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

import dicom_fixtures
from gateway.bench.postgres import PostgresCluster
from gateway.core import keys
from gateway.core.keys import StudyKey, load_keyring, load_pseudonym_key
from gateway.core.seal import STUDY_KEY_VERSION, open_sealed, read_seal_header
from gateway.errors import KeyShredded, SealCorrupt, SealError
from gateway.index.db import Index
from gateway.index.erasure import StudyKeys
from gateway.ledger import XrayLedger
from gateway.pacs.client import Pacs
from gateway.store import ObjectStore, open_store
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env, run
from tests.integration.s3 import MotoServer

pytestmark = pytest.mark.integration

ERASED = "1.2.826.0.1.3680043.10.1616.1"
KEPT = "1.2.826.0.1.3680043.10.1616.2"
COUNT = 4  # slices per study
FIGURES: dict[str, Any] = {}


def study_files(tmp: Path, study: str, count: int) -> list[Path]:
    return dicom_fixtures.ct_series(
        tmp / study, count, rows=32, cols=32, study_uid=study, prefix=f"{study}.9.",
    )  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    tmp = tmp_path_factory.mktemp("erasure-series")
    # the erased study gets one slice more, sent later to change the set
    return {ERASED: study_files(tmp, ERASED, COUNT + 1), KEPT: study_files(tmp, KEPT, COUNT)}


@pytest.fixture(scope="module", params=["fs-sqlite", "s3-postgres"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    files: dict[str, list[Path]],
) -> Iterator[Up]:
    """`up` on the filesystem store and SQLite; and on moto's S3 and PostgreSQL, where
    objects are deleted through S3 and the study key destroyed in PostgreSQL (VACUUM)."""
    root = tmp_path_factory.mktemp(f"erasure-{request.param}")
    extra: dict[str, str] = {}
    moto: MotoServer | None = None
    if request.param == "s3-postgres":
        postgres: PostgresCluster = request.getfixturevalue("postgres")
        moto = MotoServer(log_dir=root)
        moto.start()
        url = postgres.create_database()
        reader = f"xray_evidence_{secrets.token_hex(4)}"
        postgres.create_role(reader)
        extra = {
            "GATEWAY_STORE_URL": f"s3://{moto.endpoint}/xray-erasure",
            "GATEWAY_S3_ACCESS_KEY": "moto-access", "GATEWAY_S3_SECRET_KEY": "moto-secret-key",
            "GATEWAY_INDEX_URL": url,
            "GATEWAY_PLUGIN_INDEX_URL": postgres.url(url.rsplit("/", 1)[1], user=reader),
        }  # fmt: skip
    up = Up(gateway_env(root / "var", **extra))
    try:
        sent = storescu(up.dicom_port, files[ERASED][:COUNT] + files[KEPT])
        assert sent.returncode == 0, sent.stdout[-2000:]
        up.wait_done(2 * COUNT)
        yield up
    finally:
        assert up.stop() == 0
        if moto is not None:
            moto.stop()


def api(up: Up) -> httpx.Client:
    token = (up.data_dir / "api-token").read_text().strip()
    return httpx.Client(
        base_url=f"http://127.0.0.1:{up.api_port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )


def pacs(up: Up) -> Pacs:
    creds = json.loads((up.data_dir / "keys" / "orthanc-http.json").read_text())
    return Pacs(
        f"http://127.0.0.1:{up.env['GATEWAY_ORTHANC_HTTP_PORT']}",
        user=creds["user"], password=creds["password"],
    )  # fmt: skip


def ledger(up: Up) -> XrayLedger:
    return XrayLedger.at(
        f"http://127.0.0.1:{up.env['GATEWAY_ANVIL_PORT']}", up.value("xray contract")
    )


def object_store(up: Up) -> ObjectStore:
    url = up.env.get("GATEWAY_STORE_URL") or f"file://{up.data_dir / 'objects'}"
    return open_store(
        url, access_key=up.env.get("GATEWAY_S3_ACCESS_KEY"),
        secret_key=up.env.get("GATEWAY_S3_SECRET_KEY"),
    )  # fmt: skip


def index_location(up: Up) -> Path | str:
    return up.env.get("GATEWAY_INDEX_URL") or up.data_dir / "index.sqlite"


def sealed_bytes(up: Up, name: str) -> bytes:
    with object_store(up).open(name) as stream:
        return bytes(stream.read())


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def rows_of(up: Up, study: str) -> list[Any]:
    return [r for r in up.rows() if r["study_instance_uid"] == study]


def wait_audit(client: httpx.Client) -> dict[str, Any]:
    started = client.post("/v1/audits")
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = client.get(f"/v1/audits/{started.json()['id']}").json()
        if state["state"] != "running":
            return dict(state)
        time.sleep(0.3)
    raise AssertionError("the audit never finished")


class Only:
    """A study key source that answers every id with one key (trying each key held)."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def study_key(self, key_id: str) -> StudyKey:
        return StudyKey(key_id, self.key)


def test_new_images_are_sealed_under_their_study_s_key(stack: Up) -> None:
    pseudonym_key = load_pseudonym_key(stack.data_dir / "keys")
    index = Index(index_location(stack), readonly=True)
    try:
        key_ids = {
            study: index.query(
                "SELECT key_id FROM study_keys WHERE study_ref = ?",
                (keys.study_ref(pseudonym_key, study),),
            )
            for study in (ERASED, KEPT)
        }
    finally:
        index.close()
    assert all(len(found) == 1 for found in key_ids.values())
    for study, ((key_id,),) in key_ids.items():
        for row in rows_of(stack, study):
            header = read_seal_header(_io(sealed_bytes(stack, row["object_name"])))
            assert (header.version, header.kek_id) == (STUDY_KEY_VERSION, key_id)


def test_erasure_end_to_end(stack: Up, files: dict[str, list[Path]]) -> None:
    store = object_store(stack)
    erased_rows = rows_of(stack, ERASED)
    assert len(erased_rows) == COUNT
    # someone keeps the sealed bytes before the erasure
    kept_copies = {r["object_name"]: sealed_bytes(stack, r["object_name"]) for r in erased_rows}
    patient = dcmread(files[ERASED][0], stop_before_pixels=True)

    with api(stack) as client:
        # -- the dry run: pseudonymous keys only, and a hash -------------------------------
        planned = client.post(
            "/v1/erasures", json={"study_instance_uid": ERASED, "reason": "gdpr_art17"}
        )
        assert planned.status_code == 200, planned.text
        plan = planned.json()
        assert plan["dry_run"] and plan["counts"] == {
            "instances": COUNT, "objects": COUNT, "spool_copies": 0, "pacs_copies": COUNT,
            "chain_records": COUNT, "v1_objects": 0,
        }  # fmt: skip
        for phi in (ERASED, str(patient.PatientID), str(patient.PatientName)):
            assert phi not in planned.text
        # nothing went yet
        assert all(store.exists(name) for name in kept_copies)
        # admin only: an auditor may not even list
        auditor = run(stack.env, "token", "create", "--role", "auditor", "--name", "erase-audit")
        reply = httpx.post(
            f"http://127.0.0.1:{stack.api_port}/v1/erasures",
            json={"study_instance_uid": ERASED, "reason": "gdpr_art17"},
            headers={"Authorization": f"Bearer {auditor.stdout.strip()}"},
        )
        assert reply.status_code == 403
        # a wrong hash, or another reason, is refused
        wrong = client.post(f"/v1/erasures/{'0' * 64}/confirm", json={"reason": "gdpr_art17"})
        assert wrong.status_code == 409 and wrong.json()["type"].endswith("erasure-changed")
        other = client.post(f"/v1/erasures/{plan['hash']}/confirm", json={"reason": "legal_order"})
        assert other.status_code == 409
        # -- the set changes (one more slice arrives): the old hash no longer confirms -----
        sent = storescu(stack.dicom_port, files[ERASED][COUNT:])
        assert sent.returncode == 0, sent.stdout[-2000:]
        stack.wait_done(2 * COUNT + 1)
        stale = client.post(f"/v1/erasures/{plan['hash']}/confirm", json={"reason": "gdpr_art17"})
        assert stale.status_code == 409, stale.text
        plan = client.post(
            "/v1/erasures", json={"study_instance_uid": ERASED, "reason": "gdpr_art17"}
        ).json()
        assert plan["counts"]["instances"] == COUNT + 1
        for r in rows_of(stack, ERASED):
            kept_copies.setdefault(r["object_name"], sealed_bytes(stack, r["object_name"]))

    # -- the confirmation crashes after the study key was destroyed (CLI, failpoint) ------
    crashed = run(
        {**stack.env, "GATEWAY_FAILPOINT": "erasure.after_shred"},
        "erase", "--confirm", plan["hash"], "--reason", "gdpr_art17",
    )  # fmt: skip
    assert crashed.returncode == -9, crashed.stderr[-2000:]  # SIGKILL at the failpoint
    with api(stack) as client:
        half = client.get(f"/v1/studies/{ERASED}/verify").json()
        assert half["summary"]["intact"] == 0, half["summary"]  # never reported intact
        # confirming again finishes it
        started = time.monotonic()
        done = client.post(f"/v1/erasures/{plan['hash']}/confirm", json={"reason": "gdpr_art17"})
        FIGURES["confirm_s"] = round(time.monotonic() - started, 2)
        assert done.status_code == 200, done.text
        assert not done.json()["dry_run"]

        # -- what is left ------------------------------------------------------------------
        # objects gone
        assert not any(store.exists(name) for name in kept_copies)
        # absent from Orthanc
        orthanc = pacs(stack)
        erased_uids = [uid_of(p) for p in files[ERASED]]
        assert all(orthanc.find(uid) is None for uid in erased_uids)
        # verify: erased, never missing; the other study of the patient intact
        study = client.get(f"/v1/studies/{ERASED}/verify").json()
        assert study["summary"]["erased"] == COUNT + 1 == study["summary"]["total"], study
        one = client.get(f"/v1/instances/{erased_uids[0]}/verify").json()
        assert one["status"] == "erased" and one["copies"]["pacs"] == "absent"
        kept = client.get(f"/v1/studies/{KEPT}/verify").json()
        assert kept["summary"]["intact"] == COUNT == kept["summary"]["total"]
        # audit: erased counted, no finding (nothing is missing)
        audit = wait_audit(client)
        assert audit["report"]["summary"]["erased"] == COUNT + 1
        assert audit["report"]["summary"]["missing"] == 0
        assert audit["report"]["summary"]["intact"] == COUNT
        assert not [f for f in audit["report"]["findings"] if f["status"] != "trail_tampered"]

    # the study key is destroyed; the kept sealed bytes open with no key the gateway holds
    keyring = load_keyring(stack.data_dir / "keys")
    index = Index(index_location(stack))
    try:
        table = index.query("SELECT key_id, wrapped_key, destroyed_at FROM study_keys")
        study_keys = StudyKeys(index, keyring)
        live = [study_keys.study_key(str(k)) for k, w, _ in table if w is not None]
        shredded = [str(k) for k, w, at in table if w is None and at is not None]
        assert len(shredded) == 1 and len(live) == 1
        for name, blob in kept_copies.items():
            record_key, digest = (bytes.fromhex(part) for part in name.split("/"))
            opened = dict(record_key=record_key, digest=digest, keyring=keyring)
            with pytest.raises(KeyShredded):
                open_sealed(_io(blob), _io(), **opened, study_keys=study_keys)  # type: ignore[arg-type]
            candidates = [k.key for k in live] + [kek.key for kek in keyring.keks.values()]
            for key in candidates:
                with pytest.raises(SealCorrupt):
                    open_sealed(_io(blob), _io(), **opened, study_keys=Only(key))  # type: ignore[arg-type]
            with pytest.raises(SealError):  # the KEK ring alone cannot open a v2 object
                open_sealed(_io(blob), _io(), **opened)  # type: ignore[arg-type]
    finally:
        index.close()

    # chain records retired with reason erased (batched ones through their proof)
    chain = ledger(stack)
    for row in rows_of(stack, ERASED):
        retirement = chain.retirement_of(bytes(row["record_key"]))
        assert retirement is not None and retirement.reason == "erased", row["id"]
        assert row["stage"] == "erased"
    assert all(chain.retirement_of(bytes(r["record_key"])) is None for r in rows_of(stack, KEPT))
    # gas of the erasure on chain: one retirement per image (its proof for a batched one)
    txs = {
        event.tx_hash
        for row in rows_of(stack, ERASED)
        for event in chain.events("ImageRetired", filters={"recordKey": bytes(row["record_key"])})
    }
    gas = [int(chain.w3.eth.get_transaction_receipt(tx)["gasUsed"]) for tx in txs]  # type: ignore[arg-type]
    assert len(gas) == COUNT + 1
    FIGURES.update(gas_per_study=sum(gas), gas_per_image=round(sum(gas) / len(gas)))

    # -- a copy that reappears ------------------------------------------------------------
    resent = storescu(stack.dicom_port, files[ERASED][:1], extra=("-v",))
    # 0x0124, "Refused: Not Authorized" (a general status, PS3.7 C.4; DCMTK has no name for it)
    assert resent.returncode != 0 and "Status: 0x124" in resent.stdout, resent.stdout[-2000:]
    assert len(stack.rows()) == 2 * COUNT + 1  # not kept: no row
    creds = json.loads((stack.data_dir / "keys" / "orthanc-http.json").read_text())
    base = f"http://127.0.0.1:{stack.env['GATEWAY_ORTHANC_HTTP_PORT']}"
    auth = (creds["user"], creds["password"])
    put = httpx.post(f"{base}/instances", content=files[ERASED][0].read_bytes(), auth=auth)
    assert put.status_code == 200, put.text
    served = httpx.get(f"{base}/instances/{put.json()['ID']}/file", auth=auth, timeout=60)
    assert served.status_code >= 400  # the plugin refuses to serve an erased image
    with api(stack) as client:
        again = client.get(f"/v1/instances/{erased_uids[0]}/verify").json()
        assert again["status"] == "erased" and again["copies"]["pacs"] == "ok"
        audit = wait_audit(client)
        flagged = {f["sop_instance_uid"]: f["status"] for f in audit["report"]["findings"]}
        assert flagged.get(erased_uids[0]) == "erased"
        assert client.get("/v1/alerts", params={"kind": "erased"}).json()["items"]
    print(f"\nerasure figures: {FIGURES}")


def test_the_cli_dry_run_by_patient_lists_both_studies_without_phi(
    stack: Up, files: dict[str, list[Path]]
) -> None:
    patient = dcmread(files[KEPT][0], stop_before_pixels=True)
    listed = run(
        stack.env, "erase", "--patient", str(patient.PatientID),
        "--issuer", str(patient.IssuerOfPatientID), "--reason", "patient_request",
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    plan = json.loads(listed.stdout)
    assert plan["dry_run"] and len(plan["studies"]) == 2
    for phi in (KEPT, ERASED, str(patient.PatientID), str(patient.PatientName)):
        assert phi not in listed.stdout
    assert "--confirm" in listed.stderr


def _io(data: bytes = b"") -> io.BytesIO:
    return io.BytesIO(data)
