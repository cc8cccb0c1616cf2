"""Erasure across gateway nodes and in flight: two nodes (`xray-gateway up` each) on one
PostgreSQL index, one filesystem object store and one chain (anvil), fed by storescu.

- Node b's object store is unreachable, so its images wait at ``put`` with their spool
  and sealed copies on b (never anchored: node a's recorder could not retire a record
  node b's wrote). The erasure is confirmed on node a, which cannot reach b's disk: b's
  own sweep deletes its copies, and the erasure's status says both nodes have shed.
- Node a holds one image of a study before the object store (a failpoint held by a release
  file) while the erasure is confirmed: the confirmation waits for it, the pipeline erases
  it instead of anchoring it, and nothing of the study is left or anchored afterwards.
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
ON_B, HELD_ON_A = f"{UID_PREFIX}1.0", f"{UID_PREFIX}2.0"  # the two studies erased
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
            **shared,
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
            tmp=tmp,
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
