"""Erasure across gateway nodes and in flight: two nodes (`xray-gateway up` each) on one
PostgreSQL index, one filesystem object store and one chain (anvil), fed by storescu.

- Node b's object store is unreachable, so its images wait at ``put`` with their spool
  and sealed copies on b (never anchored: node a's recorder could not retire a record
  node b's wrote). The erasure is confirmed on node a, which cannot reach b's disk: b's
  own sweep deletes its copies, and the erasure's status says both nodes have shed.
- Node b, given the object store now, anchors a study with its own recorder while node a
  is down. The erasure confirmed on node a (back up) retires those records: the contract
  lets only their owner retire them, so each retirement is queued for the worker that
  holds node b's recorder key, and node b sends it.
- Node a holds one image of a study before the object store (a failpoint held by a release
  file) while the erasure is confirmed: the confirmation waits for it, the pipeline erases
  it instead of anchoring it, and nothing of the study is left or anchored afterwards.
  The study's reads in the access trail, anchored before, lose their UIDs: the audit
  rebuilds every access batch's root (no ``trail_tampered``) and the proofs still check.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

import dicom_fixtures
from gateway.core.merkle import InclusionProof, verify_inclusion
from gateway.ledger import XrayLedger
from gateway.ledger.accounts import load_or_create_account
from gateway.ledger.anvil import Anvil
from gateway.procs import free_port
from gateway.store import open_store
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env, run
from tests.integration.pacs import TestOrthanc
from tests.integration.postgres import PostgresCluster
from tests.integration.test_nodes import copy_shared_keys
from tests.integration.test_outage import uids_of, wait_for

pytestmark = pytest.mark.integration

UID_PREFIX = "1.2.826.0.1.3680043.10.1617."
ON_B, HELD_ON_A = f"{UID_PREFIX}1.0", f"{UID_PREFIX}2.0"  # the studies erased
ANCHORED_BY_B = f"{UID_PREFIX}3.0"
COUNT = 3  # slices per study


@dataclass
class Cluster:
    a: Up
    b: Up
    index_url: str
    store_url: str
    orthanc: TestOrthanc
    ledger: XrayLedger
    release: Path  # node a's held put goes on once this file exists
    tmp: Path
    recorder_b: str  # node b's recorder address
    ups: list[Up]  # every `up` started, stopped at the end


def rows(index_url: str, study: str) -> list[dict[str, Any]]:
    with psycopg.connect(index_url, row_factory=dict_row) as pg:
        return pg.execute(
            "SELECT * FROM instances WHERE study_instance_uid = %s ORDER BY id", (study,)
        ).fetchall()


@pytest.fixture(scope="module")
def cluster(
    postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("erasure-nodes")
    anvil = Anvil(state_dir=tmp / "anvil", port=free_port())
    orthanc = TestOrthanc(data_dir=tmp / "orthanc")
    index_url = postgres.create_database()
    ups: list[Up] = []
    try:
        anvil.start()
        orthanc.start()
        user, password = orthanc.orthanc.credentials
        shared = dict(
            GATEWAY_INDEX_URL=index_url,
            GATEWAY_CHAIN_URL=anvil.url,
            GATEWAY_STORE_URL=f"file://{tmp / 'objects'}",
        )
        var_a, var_b = tmp / "a" / "var", tmp / "b" / "var"
        admin = load_or_create_account(var_a / "keys" / "admin.key")
        recorder_a = load_or_create_account(var_a / "keys" / "recorder.key")
        recorder_b = load_or_create_account(var_b / "keys" / "recorder.key")
        for account in (admin, recorder_a, recorder_b):
            anvil.fund(account.address)
        release = tmp / "release-put"
        env_a = gateway_env(
            var_a, GATEWAY_NODE_ID="gw-a",
            GATEWAY_ORTHANC_URL=orthanc.orthanc.url.replace("http://", f"http://{user}:{password}@"),
            GATEWAY_FAILPOINT="pipeline.before_put", GATEWAY_FAILPOINT_RELEASE=str(release),
            GATEWAY_TRAIL_WINDOW_S="1", **shared,
        )  # fmt: skip
        deployed = run(env_a, "contract", "deploy")
        assert deployed.returncode == 0, deployed.stderr
        ups.append(Up(env_a))
        address = ups[0].value("xray contract")
        granted = run(env_a, "contract", "grant", recorder_b.address, "--role", "recorder",
                      "--name", "xray-gateway-b")  # fmt: skip
        assert granted.returncode == 0, granted.stderr
        copy_shared_keys(var_a / "keys", var_b / "keys")
        # node b's object store does not answer: its images wait at put, their copies on b
        env_b = gateway_env(
            var_b, GATEWAY_NODE_ID="gw-b", GATEWAY_CONTRACT_ADDRESS=address,
            GATEWAY_ORTHANC_URL=env_a["GATEWAY_ORTHANC_URL"],
            **{**shared, "GATEWAY_STORE_URL": f"s3://127.0.0.1:{free_port()}/xray-unreachable"},
            GATEWAY_S3_ACCESS_KEY="unreachable-access", GATEWAY_S3_SECRET_KEY="unreachable-secret",
        )  # fmt: skip
        ups.append(Up(env_b))
        yield Cluster(
            a=ups[0], b=ups[1], index_url=index_url, store_url=shared["GATEWAY_STORE_URL"],
            orthanc=orthanc, ledger=XrayLedger.at(anvil.url, address), release=release,
            tmp=tmp, recorder_b=recorder_b.address, ups=ups,
        )  # fmt: skip
    finally:
        try:
            for up in reversed(ups):
                if up.proc.poll() is None:
                    assert up.stop() == 0
        finally:
            orthanc.stop()
            anvil.stop()


def study(tmp: Path, uid: str) -> list[Path]:
    return dicom_fixtures.ct_series(
        tmp / uid, COUNT, rows=32, cols=32, study_uid=uid, prefix=f"{uid[:-2]}.1.",
    )  # fmt: skip


def api(up: Up) -> httpx.Client:
    token = (up.data_dir / "api-token").read_text().strip()
    return httpx.Client(base_url=f"http://127.0.0.1:{up.api_port}",
                        headers={"Authorization": f"Bearer {token}"}, timeout=180)  # fmt: skip


def plan(client: httpx.Client, uid: str) -> dict[str, Any]:
    planned = client.post("/v1/erasures", json={"study_instance_uid": uid, "reason": "gdpr_art17"})
    assert planned.status_code == 200, planned.text
    return dict(planned.json())


def trail_of(client: httpx.Client) -> list[dict[str, Any]]:
    """The access trail's entries about the study erased in flight (API reads)."""
    found = client.get("/v1/access", params={"study": HELD_ON_A, "limit": 1000})
    assert found.status_code == 200, found.text
    return [e for e in found.json()["items"] if e["route"].startswith("api")]


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


def local_copies(up: Up, entries: list[str]) -> list[str]:
    """The files ``up``'s node holds of these spool entries (spool and sealed dir)."""
    return sorted(
        path.name
        for folder in (up.data_dir / "spool" / "ready", up.data_dir / "sealed")
        for path in folder.glob("*")
        if path.name.split(".")[0] in entries
    )


def test_an_erasure_confirmed_on_one_node_is_shed_by_every_node(cluster: Cluster) -> None:
    files = study(cluster.tmp, ON_B)
    sent = storescu(cluster.b.dicom_port, files)
    assert sent.returncode == 0, sent.stdout[-2000:]
    wait_for(
        "node b's images sealed and waiting for its object store",
        lambda: (
            [(r["stage"], r["last_error"] is not None) for r in rows(cluster.index_url, ON_B)]
            == [("put", True)] * COUNT
        ),
        timeout=300,
    )
    entries = [str(r["entry_id"]) for r in rows(cluster.index_url, ON_B)]
    assert {str(r["received_by"]) for r in rows(cluster.index_url, ON_B)} == {"gw-b"}
    assert len(local_copies(cluster.b, entries)) == 2 * COUNT  # spool and sealed, on b only
    assert local_copies(cluster.a, entries) == []

    with api(cluster.a) as via_a:  # confirmed on node a, which cannot reach b's disk
        planned = plan(via_a, ON_B)
        assert planned["counts"]["instances"] == COUNT
        done = via_a.post(f"/v1/erasures/{planned['hash']}/confirm", json={"reason": "gdpr_art17"})
        assert done.status_code == 200, done.text
        assert all(r["stage"] == "erased" for r in rows(cluster.index_url, ON_B))

        def shed_everywhere() -> bool:
            status = via_a.get(f"/v1/erasures/{planned['hash']}")
            assert status.status_code == 200, status.text
            return bool(status.json()["nodes_not_shed"] == [])

        wait_for("both nodes shed their copies", shed_everywhere, timeout=60)
        status = via_a.get(f"/v1/erasures/{planned['hash']}").json()
    assert status["state"] == "done" and sorted(status["nodes"]) == ["gw-a", "gw-b"]
    assert local_copies(cluster.b, entries) == []
    for row in rows(cluster.index_url, ON_B):  # never anchored, and never will be
        assert (
            row["tx_hash"] is None
            and cluster.ledger.retirement_of(bytes(row["record_key"])) is None
        )
    # the CLI on node b says the same
    shown = run(cluster.b.env, "erase", "--status", planned["hash"])
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["nodes_not_shed"] == []


def test_records_another_node_anchored_are_retired_by_that_nodes_worker(cluster: Cluster) -> None:
    # node b gets the object store; node a is down while b anchors, so b owns every record
    assert cluster.b.stop() == 0 and cluster.a.stop() == 0
    cluster.b = Up({**cluster.b.env, "GATEWAY_STORE_URL": cluster.store_url})
    cluster.ups.append(cluster.b)
    files = study(cluster.tmp, ANCHORED_BY_B)
    sent = storescu(cluster.b.dicom_port, files)
    assert sent.returncode == 0, sent.stdout[-2000:]
    wait_for(
        "node b's study committed",
        lambda: (
            [r["stage"] for r in rows(cluster.index_url, ANCHORED_BY_B)] == ["committed"] * COUNT
        ),
        timeout=300,
    )
    committed = rows(cluster.index_url, ANCHORED_BY_B)
    keys = [bytes(r["record_key"]) for r in committed]
    owners = {cluster.ledger.owner_of(k) for k in keys}
    batched = [r["batch_id"] for r in committed]
    assert owners == {cluster.recorder_b} or (
        owners == {None}
        and {cluster.ledger.batch_of(b).recorder for b in batched} == {cluster.recorder_b}
    )
    cluster.a = Up(cluster.a.env)  # node a back: the erasure is confirmed there
    cluster.ups.append(cluster.a)
    with api(cluster.a) as via_a:
        planned = plan(via_a, ANCHORED_BY_B)
        done = via_a.post(f"/v1/erasures/{planned['hash']}/confirm", json={"reason": "gdpr_art17"})
        assert done.status_code == 200, done.text
    for key in keys:  # retired on chain by node b's recorder, asked for on node a
        retired = cluster.ledger.retirement_of(key)
        assert retired is not None and (retired.by, retired.reason) == (
            cluster.recorder_b,
            "erased",
        )
    with psycopg.connect(cluster.index_url) as pg:
        sent_by = pg.execute(
            "SELECT DISTINCT node, recorder, state FROM chain_requests WHERE kind LIKE 'retire%%'"
            " AND recorder = %s",
            (cluster.recorder_b.lower(),),
        ).fetchall()
    assert sent_by == [("gw-a", cluster.recorder_b.lower(), "done")]
    assert [r["stage"] for r in rows(cluster.index_url, ANCHORED_BY_B)] == ["erased"] * COUNT


def test_images_still_in_the_pipeline_are_erased_not_anchored(cluster: Cluster) -> None:
    # node a alone from here: its recorder anchors (and so owns, and may retire) its images
    assert cluster.b.stop() == 0
    files = study(cluster.tmp, HELD_ON_A)
    uids = uids_of(files)
    sent = storescu(cluster.a.dicom_port, files)
    assert sent.returncode == 0, sent.stdout[-2000:]

    def one_held() -> bool:  # the failpoint holds node a's first put; the others commit
        stages = sorted(str(r["stage"]) for r in rows(cluster.index_url, HELD_ON_A))
        return stages == ["committed"] * (COUNT - 1) + ["put"]

    wait_for("one image held before the object store", one_held, timeout=300)
    (held,) = [r for r in rows(cluster.index_url, HELD_ON_A) if r["stage"] == "put"]
    assert held["tx_hash"] is None and held["claimed_by"] is not None  # a worker is on it

    with api(cluster.a) as via_a:
        # the study is read (the access trail keeps who read it), and the reads anchored
        read = via_a.get(f"/v1/studies/{HELD_ON_A}/verify")
        assert read.status_code == 200, read.text
        wait_for("the study's reads anchored in the access trail",
                 lambda: bool(trail_of(via_a)) and all(e["anchored"] for e in trail_of(via_a)),
                 timeout=120)  # fmt: skip
        reads = trail_of(via_a)
        planned = plan(via_a, HELD_ON_A)
        assert planned["counts"]["instances"] == COUNT
        answer: dict[str, httpx.Response] = {}
        confirming = threading.Thread(target=lambda: answer.update(done=via_a.post(
            f"/v1/erasures/{planned['hash']}/confirm", json={"reason": "gdpr_art17"}
        )))  # fmt: skip
        confirming.start()
        wait_for(
            "the confirmation named the set",
            lambda: all(r["erase_plan"] for r in rows(cluster.index_url, HELD_ON_A)),
            timeout=60,
        )
        time.sleep(1)  # (not a timing assertion) the confirmation is waiting on the held row
        assert confirming.is_alive() and "done" not in answer
        cluster.release.touch()  # the held put goes on
        confirming.join(180)
        assert answer["done"].status_code == 200, answer["done"].text

    after = rows(cluster.index_url, HELD_ON_A)
    assert [r["stage"] for r in after] == ["erased"] * COUNT
    (was_held,) = [r for r in after if r["id"] == held["id"]]
    # never anchored: no transaction, in no batch, no record of it on chain
    assert was_held["tx_hash"] is None and was_held["batch_id"] is None
    with psycopg.connect(cluster.index_url) as pg:
        assert not pg.execute("SELECT 1 FROM batch_members WHERE row_id = %s",
                              (held["id"],)).fetchall()  # fmt: skip
    assert not cluster.ledger.events("ImageRecorded",
                                     filters={"recordKey": bytes(was_held["record_key"])})  # fmt: skip
    for row in after:
        if row["id"] != held["id"]:  # the committed ones: retired with reason erased
            retired = cluster.ledger.retirement_of(bytes(row["record_key"]))
            assert retired is not None and retired.reason == "erased"
    # no object, no Orthanc instance, no local copy
    store = open_store(cluster.store_url, access_key=None, secret_key=None)
    assert not [r for r in after if store.exists(str(r["object_name"]))]
    user, password = cluster.orthanc.orthanc.credentials
    for uid in uids:
        found = httpx.post(
            f"{cluster.orthanc.orthanc.url}/tools/lookup", content=uid, auth=(user, password)
        )
        assert found.status_code == 200 and found.json() == [], found.text
    assert local_copies(cluster.a, [str(r["entry_id"]) for r in after]) == []

    # the trail: its plaintext UIDs of the study are gone, its proofs and roots still hold
    with psycopg.connect(cluster.index_url) as pg:
        named = pg.execute(
            "SELECT COUNT(*) FROM access_log WHERE study_instance_uid = %s"
            " OR sop_instance_uid = ANY(%s)",
            (HELD_ON_A, uids),
        ).fetchone()
    assert named == (0,)
    with api(cluster.a) as via_a:
        kept = {e["id"]: e for e in trail_of(via_a)}  # found by the study's keyed value
        assert set(kept) == {e["id"] for e in reads} and len(kept) >= COUNT - 1
        for entry in kept.values():
            assert entry["study_instance_uid"] is None and entry["anchored"]
            proof = entry["proof"]
            assert verify_inclusion(
                leaf=bytes.fromhex(entry["leaf"]),
                proof=InclusionProof(proof["index"], proof["size"],
                                     tuple(bytes.fromhex(p) for p in proof["path"])),
                root=cluster.ledger.batch_of(entry["batch_id"]).root,
            )  # fmt: skip
        audit = wait_audit(via_a)
    assert audit["report"]["summary"]["trail_batches_checked"] >= 1
    assert [f for f in audit["report"]["findings"] if f["status"] == "trail_tampered"] == []
    # the sweep meets erased images through their chain records: the two anchored ones and
    # node b's study (the held image and node b's first study were never anchored)
    assert audit["report"]["summary"]["erased"] == COUNT - 1 + COUNT
    assert audit["report"]["summary"]["missing"] == 0
