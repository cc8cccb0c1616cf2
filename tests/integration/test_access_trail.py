"""The access trail on the stack `up` starts: reads through Orthanc's REST and the Web
Viewer (the integrity plugin's journal) and through the API, imported, anchored in access
batches on anvil, queried with inclusion proofs that check against the chain, and a
deleted entry found by the audit sweep."""

from __future__ import annotations

import collections
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.core.access import AccessLeaf, instance_key, study_key
from gateway.core.keys import load_pseudonym_key
from gateway.core.merkle import InclusionProof, verify_inclusion
from gateway.ledger import XrayLedger
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env, run
from tests.integration.plugin_helpers import make_study

pytestmark = pytest.mark.integration

READS = 100  # through Orthanc: half REST file downloads, half Web Viewer slices


class Trail:
    """The running stack, its Orthanc user, its API token and its chain."""

    def __init__(self, up: Up) -> None:
        self.up = up
        creds = json.loads((up.data_dir / "keys" / "orthanc-http.json").read_text())
        self.auth = (creds["user"], creds["password"])
        self.user = creds["user"]
        self.orthanc = f"http://127.0.0.1:{up.env['GATEWAY_ORTHANC_HTTP_PORT']}"
        self.api = f"http://127.0.0.1:{up.api_port}"
        token = (up.data_dir / "api-token").read_text().strip()
        self.headers = {"Authorization": f"Bearer {token}"}
        self.ledger = XrayLedger.at(
            f"http://127.0.0.1:{up.env['GATEWAY_ANVIL_PORT']}", up.value("xray contract")
        )

    def orthanc_get(self, path: str) -> requests.Response:
        return requests.get(f"{self.orthanc}{path}", auth=self.auth, timeout=60)

    def api_get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(f"{self.api}{path}", headers=self.headers, params=params, timeout=60)

    def access(self, **query: Any) -> list[dict[str, Any]]:
        """Every entry of a query, page by page through the cursor."""
        found: list[dict[str, Any]] = []
        after = 0
        while True:
            reply = self.api_get("/v1/access", **query, after=after, limit=40)
            reply.raise_for_status()
            page = reply.json()
            found += page["entries"]
            if page["next"] is None:
                return found
            after = page["next"]


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trail]:
    env = gateway_env(
        tmp_path_factory.mktemp("access-trail") / "var",
        GATEWAY_TRAIL_BATCH_MAX="64",  # 100 reads and more: several access batches
        GATEWAY_TRAIL_WINDOW_S="0",
    )
    up = Up(env)
    try:
        yield Trail(up)
    finally:
        assert up.stop() == 0


def _wait_anchored(trail: Trail, count: int, **query: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 90
    entries: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        entries = trail.access(**query)
        if len(entries) >= count and all(e["anchored"] for e in entries):
            return entries
        time.sleep(0.5)
    anchored = sum(e["anchored"] for e in entries)
    raise AssertionError(f"{len(entries)} entries, {anchored} anchored; wanted {count}")


def _wait_confirmed(trail: Trail, orthanc_id: str) -> None:
    deadline = time.monotonic() + 60
    answer: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = trail.orthanc_get(f"/xray/instances/{orthanc_id}/integrity").json()
        if answer["status"] == "intact" and "confirmed on the ledger" in str(answer["ledger"]):
            return
        time.sleep(0.5)
    raise AssertionError(f"never confirmed: {answer}")


def _proof_checks(entry: dict[str, Any], ledger: XrayLedger) -> bool:
    """The entry's leaf, recomputed from its inputs, is in the access batch on the chain."""
    inputs = entry["leaf_inputs"]
    leaf = AccessLeaf(
        entry_id=inputs["entry_id"], at_ms=inputs["at_ms"],
        record_key=bytes.fromhex(inputs["record_key"]), study_key=bytes.fromhex(inputs["study_key"]),
        who_key=bytes.fromhex(inputs["who_key"]), route=inputs["route"],
        verdict=inputs["verdict"], served=inputs["served"],
    )  # fmt: skip
    proof = InclusionProof(
        index=entry["proof"]["index"], size=entry["proof"]["size"],
        path=tuple(bytes.fromhex(node) for node in entry["proof"]["path"]),
    )  # fmt: skip
    batch = ledger.batch_of(entry["batch_id"])
    return (
        ledger.batch_kind_of(entry["batch_id"]) == "access"
        and leaf.hash().hex() == entry["leaf"]
        and proof.size == batch.count
        and batch.root.hex() == entry["root"]
        and verify_inclusion(leaf=leaf.hash(), proof=proof, root=batch.root)
    )


def test_reads_are_anchored_queryable_provable_and_a_deleted_entry_is_audited(
    trail: Trail, tmp_path: Path
) -> None:
    study = make_study(tmp_path, count=4)
    result = storescu(trail.up.dicom_port, study.files)
    assert result.returncode == 0, result.stdout[-2000:]
    rows = trail.up.wait_done(len(study.files))
    ids = [row["orthanc_id"] for row in rows]
    study_uid = rows[0]["study_instance_uid"]
    for orthanc_id in ids:  # the plugin's ledger mirror has seen every anchor
        _wait_confirmed(trail, orthanc_id)

    for i in range(READS):
        orthanc_id = ids[i % len(ids)]
        path = (
            f"/instances/{orthanc_id}/file" if i % 2 == 0
            else f"/web-viewer/instances/deflate-{orthanc_id}_0"
        )  # fmt: skip
        assert trail.orthanc_get(path).status_code == 200, path
    # and through the API, by the admin token's name
    verified = trail.api_get(f"/v1/instances/{rows[0]['sop_instance_uid']}/verify")
    assert verified.status_code == 200

    by_user = _wait_anchored(trail, READS, user=trail.user)
    assert len(by_user) == READS
    assert collections.Counter(e["route"] for e in by_user) == {"rest": 50, "viewer": 50}
    assert {(e["who_kind"], e["verdict"], e["served"]) for e in by_user} == {
        ("orthanc-user", "intact", True)
    }
    by_study = _wait_anchored(trail, READS + 1, study=study_uid)
    assert len(by_study) == READS + 1
    api_reads = [e for e in by_study if e["who_kind"] == "token"]
    assert [(e["route"], e["sop_instance_uid"]) for e in api_reads] == [
        ("api:verify", rows[0]["sop_instance_uid"])
    ]
    assert {e["sop_instance_uid"] for e in by_study} == {row["sop_instance_uid"] for row in rows}

    # each proof checks against the chain; the leaf holds pseudonymous keys only
    key = load_pseudonym_key(trail.up.data_dir / "keys")
    assert all(_proof_checks(entry, trail.ledger) for entry in by_study)
    for entry in by_study:
        inputs = entry["leaf_inputs"]
        assert inputs["record_key"] == instance_key(key, entry["sop_instance_uid"]).hex()
        assert inputs["study_key"] == study_key(key, study_uid).hex()
        assert study_uid not in json.dumps(inputs) and trail.user not in json.dumps(inputs)
    batches = sorted({e["batch_id"] for e in by_study})
    assert len(batches) >= 2  # GATEWAY_TRAIL_BATCH_MAX=64

    # the command line answers the same query
    listed = run(trail.up.env, "access", "--study", study_uid, "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == READS + 1

    # one entry deleted from the local store: the audit sweep reports it, and alerts
    victim = by_study[37]
    index = sqlite3.connect(trail.up.data_dir / "index.sqlite", timeout=30)
    with index:
        index.execute("DELETE FROM access_log WHERE id = ?", (victim["id"],))
    index.close()
    started = requests.post(f"{trail.api}/v1/audits", headers=trail.headers, timeout=60)
    assert started.status_code in (200, 202), started.text
    audit_id = started.json()["id"]
    deadline = time.monotonic() + 60
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = trail.api_get(f"/v1/audits/{audit_id}").json()
        if state["state"] != "running":
            break
        time.sleep(0.5)
    assert state["state"] == "done", state
    found = [f for f in state["report"]["findings"] if f["status"] == "trail_tampered"]
    assert len(found) == 1, state["report"]["findings"]
    assert found[0]["notes"] == [f"access batch {victim['batch_id']}: deleted"]
    assert f"leaf indexes {victim['proof']['index']})" in found[0]["explanation"]
    assert state["report"]["summary"]["trail_batches_checked"] >= len(batches)
    alerts = trail.api_get("/v1/alerts", kind="trail_tampered").json()
    assert len(alerts) == 1 and alerts[0]["source"] == "audit"
