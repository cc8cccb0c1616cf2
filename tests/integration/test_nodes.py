"""Two gateway nodes and two Orthanc nodes on PostgreSQL, one S3 (moto) and one chain (anvil).

Each node is `xray-gateway up` with a data dir, DICOM port and recorder key of its own
(granted the Recorder role by the admin); the pseudonym key and the KEKs are copied from
the first node, as docs/scale-out.md says. Half the instances go to each node at once
with storescu; one node is SIGKILLed by pid mid-stream and started again, and what its
modality had not seen acked is sent again. Every acked instance must end `intact` through
either node's API, with one row, one sealed object and one ledger record; a Storage
Commitment request to one node commits what the other received, and is reported once.

Behind them, two Orthanc nodes share one PostgreSQL index (Debian's ``orthanc-postgresql``)
and one storage directory, each with the integrity plugin reading the gateway's evidence
as the read-only role of the view made for it; gateway node a forwards to Orthanc a,
node b to Orthanc b. Every acked instance must be served ``intact`` by both Orthanc nodes'
REST, and a tampered file refused by both.
"""

from __future__ import annotations

import json
import os
import shutil
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
from gateway.core.merkle import decode_proof, leaf_hash
from gateway.index.db import Index
from gateway.ledger import XrayLedger
from gateway.ledger.accounts import load_or_create_account
from gateway.ledger.anvil import Anvil
from gateway.orthanc_plugin import plugin_section
from gateway.procs import free_port
from gateway.store import open_store
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env, run
from tests.integration.modality import Modality
from tests.integration.orthanc_nodes import OrthancNodes
from tests.integration.pg_evidence import evidence_reader
from tests.integration.plugin_helpers import flip_pixel_byte, integrity
from tests.integration.postgres import PostgresCluster
from tests.integration.s3 import MotoServer
from tests.integration.test_outage import Sender, uids_of, wait_for

pytestmark = pytest.mark.integration

ACCESS, SECRET = "xray-nodes-access", "xray-nodes-secret-0123456789"
BUCKET = "xray-originals"
# 2 x 40 by default; the 2 x 200: XRAY_NODES_PER_NODE=200 (a longer run, same test)
PER_NODE = int(os.environ.get("XRAY_NODES_PER_NODE", "40"))
KILL_AFTER = max(3, PER_NODE // 10)  # rows of the killed node's series before the SIGKILL
UID_PREFIX = "1.2.826.0.1.3680043.10.1414."
CT = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Cluster:
    a: Up
    b: Up
    env_b: dict[str, str]
    index_url: str
    anvil: Anvil
    moto: MotoServer
    orthancs: OrthancNodes
    modality: Modality
    ledger: XrayLedger
    recorders: dict[str, str]  # node -> recorder address
    tmp: Path


def rows(index_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(index_url, row_factory=dict_row) as pg:
        return pg.execute("SELECT * FROM instances ORDER BY id").fetchall()


def copy_shared_keys(source: Path, dest: Path) -> None:
    """What an operator does before a node's first start: the pseudonym key and the KEKs
    are the cluster's; the recorder (and admin) keys stay each node's own."""
    dest.mkdir(parents=True, mode=0o700, exist_ok=True)
    shutil.copy2(source / "pseudonym.key", dest / "pseudonym.key")
    shutil.copytree(source / "kek", dest / "kek")


@pytest.fixture(scope="module")
def cluster(
    postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("nodes")
    anvil = Anvil(state_dir=tmp / "anvil", port=free_port())
    moto = MotoServer(log_dir=tmp / "moto")
    modality = Modality("CT1")
    index_url = postgres.create_database()
    ups: list[Up] = []
    orthancs: OrthancNodes | None = None
    made: Cluster | None = None
    try:
        anvil.start()
        moto.start()
        modality.start_scp()
        # the gateway's tables first (its schema steps, as `up` runs them), then the view
        # and the read-only role the plugins read the evidence as
        Index(index_url).close()
        reader = evidence_reader(postgres, index_url)
        orthancs = OrthancNodes.start(
            tmp / "orthanc",
            orthanc_index=postgres.create_database(),
            plugin_configs={
                node: plugin_section(data_dir=tmp / "orthanc" / node, index_url=reader)
                for node in ("a", "b")
            },
        )

        def pacs(node: str) -> dict[str, str]:
            """What a gateway node needs of its Orthanc: the URL, and the secret of the
            plugin's stored-file route, which the gateway's own reads present."""
            user, password = orthancs.auth(node)
            return dict(
                GATEWAY_ORTHANC_URL=orthancs.url(node).replace(
                    "http://", f"http://{user}:{password}@"
                ),
                GATEWAY_ORTHANC_STORED_FILE_TOKEN=orthancs.nodes[node].orthanc.stored_file_token,
            )

        shared = dict(
            GATEWAY_INDEX_URL=index_url,
            GATEWAY_CHAIN_URL=anvil.url,
            GATEWAY_STORE_URL=f"s3://{moto.endpoint}/{BUCKET}",
            GATEWAY_S3_ACCESS_KEY=ACCESS,
            GATEWAY_S3_SECRET_KEY=SECRET,
            GATEWAY_COMMITMENT_PEERS=f"CT1=127.0.0.1:{modality.scp_port}",
        )
        var_a, var_b = tmp / "a" / "var", tmp / "b" / "var"
        # node a: the admin deploys once; its recorder gets the role with the deployment
        admin = load_or_create_account(var_a / "keys" / "admin.key")
        recorder_a = load_or_create_account(var_a / "keys" / "recorder.key")
        recorder_b = load_or_create_account(var_b / "keys" / "recorder.key")
        for account in (admin, recorder_a, recorder_b):
            anvil.fund(account.address)
        env_a = gateway_env(var_a, GATEWAY_NODE_ID="gw-a", **pacs("a"),
                            **shared)  # fmt: skip
        deployed = run(env_a, "contract", "deploy")
        assert deployed.returncode == 0, deployed.stderr
        ups.append(Up(env_a))
        address = ups[0].value("xray contract")
        # node b: its own recorder, granted by the admin; the cluster's keys copied from a;
        # its node id derived (host and data dir), which must survive its restart
        granted = run(env_a, "contract", "grant", recorder_b.address, "--role", "recorder",
                      "--name", "xray-gateway-b")  # fmt: skip
        assert granted.returncode == 0, granted.stderr
        copy_shared_keys(var_a / "keys", var_b / "keys")
        env_b = gateway_env(var_b, GATEWAY_CONTRACT_ADDRESS=address,
                            **pacs("b"), **shared)  # fmt: skip
        ups.append(Up(env_b))
        made = Cluster(
            a=ups[0], b=ups[1], env_b=env_b, index_url=index_url, anvil=anvil, moto=moto,
            orthancs=orthancs, modality=modality, ledger=XrayLedger.at(anvil.url, address),
            recorders={"a": recorder_a.address.lower(), "b": recorder_b.address.lower()},
            tmp=tmp,
        )  # fmt: skip
        yield made
    finally:
        try:
            running = ups if made is None else [made.a, made.b]  # b as last started
            for up in running:
                if up.proc.poll() is None:
                    assert up.stop() == 0
        finally:
            modality.stop_scp()
            if orthancs is not None:
                orthancs.stop()
            moto.stop()
            anvil.stop()


def series(tmp: Path, name: str, number: int, *, size: int = 32) -> list[Path]:
    return dicom_fixtures.ct_series(
        tmp / name, PER_NODE, rows=size, cols=size, study_uid=f"{UID_PREFIX}{number}.0",
        prefix=f"{UID_PREFIX}{number}.1.",
    )  # fmt: skip


def kill_mid_stream(up: Up, index_url: str, uids: list[str]) -> float:
    """SIGKILL ``up`` by pid once ``KILL_AFTER`` of ``uids`` have rows (a tight poll on one
    connection: the stream must still be going); returns when (monotonic)."""
    wanted = set(uids)
    deadline = time.monotonic() + 300
    with psycopg.connect(index_url, autocommit=True) as pg:
        while time.monotonic() < deadline:
            found = pg.execute("SELECT sop_instance_uid FROM instances").fetchall()
            if sum(uid in wanted for (uid,) in found) >= KILL_AFTER:
                up.proc.kill()  # its workers die with it (parent-death signal)
                return time.monotonic()
            time.sleep(0.005)
    raise AssertionError("the stream to the node to kill never started")


def ledger_records(cluster: Cluster, uid: str, record_key: bytes) -> int:
    """Single records for ``record_key`` plus every batch on chain proven to hold the UID."""
    events = sum(
        len(cluster.ledger.events(name, filters={"recordKey": record_key}))
        for name in ("ImageRecorded", "ImageSuperseded")
    )
    with psycopg.connect(cluster.index_url) as pg:
        found = pg.execute(
            "SELECT DISTINCT b.root, i.patient_key, i.digest, i.pixel_digest, i.batch_id, i.proof"
            " FROM batch_members m JOIN batches b ON b.id = m.batch"
            " JOIN instances i ON i.id = m.row_id WHERE i.sop_instance_uid = %s",
            (uid,),
        ).fetchall()
    batches = 0
    for root, patient_key, digest, pixel_digest, batch_id, proof in found:
        on_chain = cluster.ledger.batch_id_of(bytes(root))
        if not on_chain:
            continue
        if on_chain == batch_id and proof is not None:
            leaf = leaf_hash(record_key=record_key, patient_key=bytes(patient_key),
                             digest=bytes(digest), pixel_digest=bytes(pixel_digest))  # fmt: skip
            assert cluster.ledger.verify_batch_member(
                leaf=leaf, proof=decode_proof(bytes(proof)), batch_id=on_chain
            )
        batches += 1
    return events + batches


def api(up: Up) -> httpx.Client:
    token = (up.data_dir / "api-token").read_text().strip()
    return httpx.Client(base_url=f"http://127.0.0.1:{up.api_port}",
                        headers={"Authorization": f"Bearer {token}"}, timeout=120)  # fmt: skip


def orthanc_id(orthancs: OrthancNodes, node: str, uid: str) -> str:
    """Orthanc's id of the instance with SOP Instance UID ``uid``, as ``node`` finds it."""
    found = httpx.post(f"{orthancs.url(node)}/tools/lookup", content=uid,
                       auth=orthancs.auth(node), timeout=60).json()  # fmt: skip
    (instance,) = [item["ID"] for item in found if item["Type"] == "Instance"]
    return str(instance)


def served_intact_by_both(orthancs: OrthancNodes, uids: list[str]) -> dict[str, int]:
    """How many of ``uids`` each Orthanc node's REST serves, its plugin saying ``intact``."""
    served = {"a": 0, "b": 0}
    for uid in uids:
        for node in served:
            instance = orthanc_id(orthancs, node, uid)  # one index: both nodes know it
            answer = integrity(orthancs.url(node), orthancs.auth(node), "instances", instance)
            assert answer["status"] == "intact", (node, uid, answer)
            reply = httpx.get(f"{orthancs.url(node)}/instances/{instance}/file",
                              auth=orthancs.auth(node), timeout=60)  # fmt: skip
            served[node] += reply.status_code == 200
    return served


def test_two_nodes_one_killed_mid_stream_lose_and_duplicate_nothing(cluster: Cluster) -> None:
    files_a = series(cluster.tmp, "to-a", 1)
    files_b = series(cluster.tmp, "to-b", 2, size=512)  # 512 kB slices: a longer stream
    uids_a, uids_b = uids_of(files_a), uids_of(files_b)
    node_b = cluster.b.value("node")
    started = time.monotonic()
    to_a = Sender(cluster.a.dicom_port, files_a)
    to_b = Sender(cluster.b.dicom_port, files_b)

    killed_at = kill_mid_stream(cluster.b, cluster.index_url, uids_b)
    cluster.b.proc.wait(60)
    cluster.b.stop()  # closes its pipes and log; the exit code is the kill's
    to_b.join(300)
    acked_b_first = to_b.acked
    assert 0 < acked_b_first < PER_NODE, to_b.output[-2000:]

    cluster.b = Up(cluster.env_b)  # started again: same data dir, ports and keys
    assert cluster.b.value("node") == node_b  # the derived node id is stable
    # the modality sends again what it never saw acked (a row may exist for some: acked
    # durably but the answer lost with the process; the resend is then a duplicate row)
    resend = Sender(cluster.b.dicom_port, files_b[acked_b_first:])
    to_a.join(600)
    resend.join(600)
    assert to_a.code == 0 and to_a.acked == PER_NODE, to_a.output[-2000:]
    assert resend.code == 0 and resend.acked == PER_NODE - acked_b_first, resend.output[-2000:]

    everything = set(uids_a + uids_b)

    def drained() -> bool:
        mine = [r for r in rows(cluster.index_url) if r["sop_instance_uid"] in everything]
        assert not [r for r in mine if r["stage"] == "failed"], "a row was parked"
        done = {r["sop_instance_uid"] for r in mine if r["stage"] == "committed"}
        return done == everything and all(r["stage"] in ("committed", "duplicate") for r in mine)

    wait_for("every instance committed", drained, timeout=900)
    drained_at = time.monotonic()

    # one row, one object, one ledger record per instance; anchored by a granted recorder
    store = open_store(f"s3://{cluster.moto.endpoint}/{BUCKET}", access_key=ACCESS,
                       secret_key=SECRET)  # fmt: skip
    found = [r for r in rows(cluster.index_url) if r["sop_instance_uid"] in everything]
    versions: dict[str, list[dict[str, Any]]] = {}
    for row in found:
        if row["stage"] != "duplicate":
            versions.setdefault(row["sop_instance_uid"], []).append(row)
    lost = len(everything - set(versions))
    duplicated = 0
    recorders: set[str] = set()
    for uid, mine in versions.items():
        (row,) = mine  # one version row per instance
        key, digest = bytes(row["record_key"]), bytes(row["digest"])
        objects = list(store.names(key.hex() + "/"))
        records = ledger_records(cluster, uid, key)
        assert records >= 1 and objects == [f"{key.hex()}/{digest.hex()}"], (uid, objects)
        duplicated += records > 1 or len(mine) > 1
        recorders.add(str(row["recorder"]).lower())
    assert (lost, duplicated) == (0, 0)
    assert recorders <= set(cluster.recorders.values())  # each node signs as itself

    # every instance intact through either node's API, whichever node received it
    with api(cluster.a) as via_a, api(cluster.b) as via_b:
        for n, uid in enumerate(uids_a + uids_b):
            verdict = (via_a if n % 2 else via_b).get(f"/v1/instances/{uid}/verify").json()
            assert verdict["status"] == "intact", verdict

    # and through both Orthanc nodes, whichever gateway node forwarded it
    served = served_intact_by_both(cluster.orthancs, uids_a + uids_b)
    assert served == {"a": 2 * PER_NODE, "b": 2 * PER_NODE}

    # Storage Commitment asked of node a for what node b received: reported once, by a
    code, report = cluster.modality.request(
        cluster.a.dicom_port,
        [(CT, uid) for uid in uids_b],
        transaction_uid="1.2.826.0.1.3680043.10.1414.9",
    )
    assert code == 0x0000 and report is not None
    assert report.event_type == 1 and report.committed == set(uids_b)

    def owners() -> list[tuple[str, str]]:
        with psycopg.connect(cluster.index_url) as pg:
            return pg.execute(
                "SELECT node, state FROM commitments WHERE transaction_uid = %s",
                ("1.2.826.0.1.3680043.10.1414.9",),
            ).fetchall()

    # node a marks it reported once the modality has answered the N-EVENT-REPORT, which is
    # just after the modality handed the report to us: wait for that write (bounded)
    wait_for("the request marked reported", lambda: owners() != [("gw-a", "ready")], timeout=60)
    assert owners() == [("gw-a", "reported")]

    # status: the cluster and each node
    shown = run(cluster.a.env, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    report_json = json.loads(shown.stdout)
    assert report_json["nodes"]["gw-a"]["commitment_requests"]["reported"] == 1
    assert all(node["waiting"] == 0 for node in report_json["nodes"].values())  # drained
    assert report_json["stages"]["committed"] >= 2 * PER_NODE

    figures = {
        "sent": 2 * PER_NODE,
        "acked_first_try": to_a.acked + acked_b_first,
        "acked": to_a.acked + acked_b_first + resend.acked,
        "committed": len(versions),
        "duplicate_rows_from_resend": sum(r["stage"] == "duplicate" for r in found),
        "lost": lost,
        "duplicated": duplicated,
        "anchored_by_node": {
            name: sum(str(r["recorder"]).lower() == addr for m in versions.values() for r in m)
            for name, addr in cluster.recorders.items()
        },
        "served_intact_by_orthanc": served,
        "drain_after_kill_s": round(drained_at - killed_at, 1),
        "whole_run_s": round(drained_at - started, 1),
    }
    print(f"\nnodes figures: {json.dumps(figures)}")

    # a file tampered in the shared storage is refused by both Orthanc nodes
    victim = orthanc_id(cluster.orthancs, "a", uids_a[0])
    flip_pixel_byte(cluster.orthancs.stored_path(victim))
    for node in ("a", "b"):
        url, auth = cluster.orthancs.url(node), cluster.orthancs.auth(node)
        answer = integrity(url, auth, "instances", victim)
        assert answer["status"] == "tampered" and answer["served"] is False, (node, answer)
        refused = httpx.get(f"{url}/instances/{victim}/file", auth=auth, timeout=60)
        assert refused.status_code != 200, node


def test_a_node_with_other_keys_is_refused_before_starting(cluster: Cluster) -> None:
    """A third node whose keys dir was not copied: its own fresh pseudonym key would name
    images apart from the others', so `up` refuses it before starting anything."""
    var_c = cluster.tmp / "c" / "var"
    env_c = gateway_env(var_c, GATEWAY_INDEX_URL=cluster.index_url,
                        GATEWAY_CHAIN_URL=cluster.anvil.url,
                        GATEWAY_CONTRACT_ADDRESS=cluster.ledger.address)  # fmt: skip
    if not rows(cluster.index_url):  # run alone: give the index one image written by a
        (one,) = dicom_fixtures.ct_series(cluster.tmp / "one", 1, rows=16, cols=16,
                                          study_uid=f"{UID_PREFIX}3.0", prefix=f"{UID_PREFIX}3.1.")  # fmt: skip
        assert storescu(cluster.a.dicom_port, [one], aet="CT1").returncode == 0
        wait_for("one image fingerprinted", lambda: any(
            r["record_key"] is not None for r in rows(cluster.index_url)), timeout=300)  # fmt: skip
    refused = run(env_c, "up")
    assert refused.returncode == 1
    assert "pseudonym key" in refused.stderr and "copy" in refused.stderr
