"""Alerts that reach people, on a real `xray-gateway up` (anvil, Orthanc with the plugin,
DCMTK) and real receivers started here on free ports.

- A webhook receiver that dedupes by ``webhook-id`` gets the signed events of a parked
  row (a spool file swapped after the ack: ``spool_swapped``, then ``parked``) and of a
  tampered read through Orthanc's REST (``tampered``, from the plugin's own alerts file).
  It holds the first delivery open; the gateway is SIGKILLed then and started again.
  Each event id is processed exactly once, every signature verifies, and the raw
  deliveries outnumber the distinct ids (the held one came again).
- A syslog receiver over TLS (CA from ``GATEWAY_SYSLOG_CA_FILE``) gets the same events as
  RFC 5424 messages holding IHE ATNA AuditMessages; UDP and TCP receivers get them from
  the notifier on an index of its own.
- The outbox's claims on PostgreSQL: two nodes never take the same event.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
from pydicom import dcmread

import dicom_fixtures
from gateway.index.db import Index
from gateway.keyfiles import write_secret
from gateway.notify import atna, signing
from gateway.notify.notifier import Notifier
from gateway.notify.outbox import Outbox
from gateway.notify.senders import SyslogSender
from gateway.trust.alerts import Alerts, log_identity
from tests.integration.certs import authority
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env
from tests.integration.notify_receivers import (
    SyslogServer,
    WebhookReceiver,
    server_tls,
    wait_until,
)
from tests.integration.plugin_helpers import flip_pixel_byte, stored_file
from tests.integration.postgres import PostgresCluster
from tests.integration.test_crash import child_pids, wait_gone

pytestmark = pytest.mark.integration

STUDY = "1.2.826.0.1.3680043.10.1138.15.3.1"
SECRET = b"whsec_" + b"QWxlcnRzIHRoYXQgcmVhY2ggcGVvcGxlLCBzaWduZWQ="
HEADER = re.compile(
    rb"^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) \[xray@32473 event=\"([^\"]+)\" kind=\"([a-z_]+)\"\] "
)


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def row_of(up: Up, uid: str) -> sqlite3.Row | None:
    return next((r for r in up.rows() if r["sop_instance_uid"] == uid), None)


def wait_stage(up: Up, uid: str, stage: str) -> sqlite3.Row:
    found: list[sqlite3.Row] = []

    def reached() -> bool:
        row = row_of(up, uid)
        found[:] = [row] if row is not None else []
        return row is not None and row["stage"] == stage

    wait_until(f"{uid} at {stage}", reached, timeout=300)
    return found[0]


def outbox(up: Up) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{up.data_dir / 'index.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM notify_outbox ORDER BY id").fetchall()
    finally:
        db.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver(secret=signing.secret_from(SECRET), hold_first=True)
    yield hook
    hook.stop()


@pytest.fixture
def tls_syslog(tmp_path: Path) -> Iterator[tuple[SyslogServer, Path]]:
    ca = authority(tmp_path / "pki", "syslog-ca")
    leaf = ca.issue(tmp_path / "pki", "syslog", client=False)
    server = SyslogServer("tls", tls=server_tls(str(leaf.cert), str(leaf.key)))
    yield server, ca.cert
    server.stop()


def test_webhook_events_are_processed_exactly_once_across_a_sigkill(
    tmp_path: Path, receiver: WebhookReceiver, tls_syslog: tuple[SyslogServer, Path]
) -> None:
    syslog, ca_file = tls_syslog
    slices = dicom_fixtures.ct_series(
        tmp_path / "series", 3, rows=64, cols=64, study_uid=STUDY,
        prefix="1.2.826.0.1.3680043.10.1138.15.3.2.",
    )  # fmt: skip
    secret_file = tmp_path / "secrets" / "webhook-secret"
    write_secret(secret_file, SECRET)
    release = tmp_path / "release"
    plugin_alerts = tmp_path / "plugin-alerts"
    env = gateway_env(
        tmp_path / "var",
        GATEWAY_WEBHOOK_URLS=receiver.url,
        GATEWAY_WEBHOOK_SECRET_FILE=str(secret_file),
        GATEWAY_SYSLOG_URL=syslog.url,
        GATEWAY_SYSLOG_CA_FILE=str(ca_file),
        GATEWAY_PLUGIN_ALERTS_DIR=str(plugin_alerts),
        # the held delivery must still be open when the kill comes, however slow the machine
        GATEWAY_WEBHOOK_TIMEOUT_S="60",
    )
    held = {
        "GATEWAY_FAILPOINT": "pipeline.before_fingerprint",
        "GATEWAY_FAILPOINT_RELEASE": str(release),
    }
    up = Up({**env, **held})
    try:
        # A parked row: the acked spool file swapped before the pipeline reads it.
        swapped = uid_of(slices[0])
        assert storescu(up.dicom_port, [slices[0]], aet="CT1").returncode == 0
        row = wait_stage(up, swapped, "fingerprint")
        (up.data_dir / "spool" / "ready" / f"{row['entry_id']}.dcm").write_bytes(
            slices[1].read_bytes()
        )
        release.touch()
        wait_stage(up, swapped, "failed")
        # The receiver holds the first delivery open: the gateway dies in the middle of it.
        wait_until("the first delivery arrived", receiver.holding.is_set)
        children = {**child_pids(up.data_dir), "worker": up.worker_pid()}
        os.kill(up.pid, signal.SIGKILL)
    finally:
        release.touch()
        stopped = up.stop()
    assert stopped == -signal.SIGKILL
    wait_gone(children)
    first_life = list(receiver.deliveries)
    assert [json.loads(d.body)["type"] for d in first_life] == ["alert.spool_swapped"]
    receiver.release()  # its answer goes to a dead connection

    up = Up(env)
    try:
        # A tampered read: a committed instance altered in Orthanc's storage, read through REST.
        victim = uid_of(slices[2])
        assert storescu(up.dicom_port, [slices[2]], aet="CT1").returncode == 0
        committed = wait_stage(up, victim, "committed")
        creds = json.loads((up.data_dir / "keys" / "orthanc-http.json").read_text())
        auth = (creds["user"], creds["password"])
        orthanc = f"http://127.0.0.1:{env['GATEWAY_ORTHANC_HTTP_PORT']}"
        flip_pixel_byte(stored_file(up.data_dir, orthanc, auth, committed["orthanc_id"]))
        read = requests.get(
            f"{orthanc}/instances/{committed['orthanc_id']}/file", auth=auth, timeout=60
        )
        assert read.status_code == 500  # refused by the plugin

        expected = {"spool_swapped", "parked", "tampered"}
        wait_until(
            "every event processed and the outbox drained",
            lambda: (
                {p["data"]["kind"] for p in receiver.processed.values()} == expected
                and all(r["state"] == "delivered" for r in outbox(up))
                and len({m for m in syslog.received()}) >= 3
            ),
        )
        metrics = httpx.get(f"http://127.0.0.1:{up.api_port}/metrics", timeout=30).text
    finally:
        assert up.stop() == 0

    # Exactly once at the receiver, at least once on the wire, every signature good.
    deliveries = receiver.deliveries
    ids = [d.headers["webhook-id"] for d in deliveries]
    assert all(d.signed for d in deliveries), [d.headers for d in deliveries if not d.signed]
    assert set(receiver.times_processed.values()) == {1}
    held_id = first_life[0].headers["webhook-id"]
    assert ids.count(held_id) >= 2, "the delivery cut by the kill was never made again"
    assert all(
        d.body == first_life[0].body for d in deliveries if d.headers["webhook-id"] == held_id
    )
    by_kind = {p["data"]["kind"]: (msg_id, p) for msg_id, p in receiver.processed.items()}
    gateway_log = log_identity(tmp_path / "var" / "alerts.sqlite")
    plugin_log = log_identity(plugin_alerts / "alerts.sqlite")  # the plugin's own file
    assert by_kind["spool_swapped"][0].startswith(f"xray_gateway-{gateway_log}_")
    assert by_kind["parked"][0].startswith(f"xray_gateway-{gateway_log}_")
    assert by_kind["tampered"][0].startswith(f"xray_plugin-{plugin_log}_")
    assert by_kind["parked"][1]["data"]["sop_instance_uid"] == swapped
    assert by_kind["tampered"][1]["data"]["sop_instance_uid"] == victim
    patient = str(dcmread(slices[2], stop_before_pixels=True).PatientName)
    assert all(patient.encode() not in d.body for d in deliveries)
    print(f"\nwebhook: {len(deliveries)} raw deliveries, {len(set(ids))} distinct ids, "
          f"{len(receiver.processed)} processed once each")  # fmt: skip

    # Syslog over TLS: RFC 5424 headers and an ATNA AuditMessage per event.
    seen: dict[str, ET.Element] = {}
    for message in syslog.received():
        header = HEADER.match(message)
        assert header is not None, message[:200]
        pri, _, _, app, _, msgid, event, kind = header.groups()
        assert (app, msgid) == (b"xray-gateway", b"IHE+RFC-3881")
        assert int(pri) == 80 + atna.severity(kind.decode())
        xml = message[header.end() :]
        assert xml.startswith(atna.BOM) and patient.encode() not in xml
        seen[event.decode()] = ET.fromstring(xml[len(atna.BOM) :])
    assert set(receiver.processed) <= set(seen)
    tampered = seen[by_kind["tampered"][0]]
    assert tampered.find("EventIdentification/EventID").get("csd-code") == "110113"  # type: ignore[union-attr]
    assert tampered.find("ParticipantObjectIdentification").get("ParticipantObjectID") == victim  # type: ignore[union-attr]
    print(f"syslog over TLS: {len(syslog.received())} messages, {len(seen)} distinct events")

    # /metrics: the alerts by kind (both logs), ack and commit latency, the outbox.
    for kind in expected:
        assert f'xray_gateway_alerts_total{{kind="{kind}"}} 1.0' in metrics, kind
    assert re.search(r"^xray_gateway_ack_latency_seconds_count 1\.0$", metrics, re.M)
    assert re.search(r"^xray_gateway_commit_latency_seconds_count [1-9]", metrics, re.M)
    outbox_lines = [line for line in metrics.splitlines() if line.startswith("xray_gateway_notify")]
    assert 'xray_gateway_notify_events{state="delivered",target="syslog"} 3.0' in outbox_lines, (
        outbox_lines
    )


@pytest.mark.parametrize(
    ("scheme", "one_per_connection"), [("udp", False), ("tcp", False), ("tcp", True)]
)
def test_syslog_over_udp_and_tcp_gets_each_alert(
    tmp_path: Path, scheme: str, one_per_connection: bool
) -> None:
    """Over TCP also when the receiver closes the connection after each message: the
    sender sees the close before it writes again, and loses nothing."""
    server = SyslogServer(scheme, one_per_connection=one_per_connection)
    index = Index(tmp_path / "index.sqlite")
    alerts = Alerts(tmp_path / "alerts.sqlite")
    sender = SyslogSender(server.url, node="node-a", timeout_s=5)
    notifier = Notifier(
        index=index, senders=[sender], logs={"gateway": alerts.path}, node="node-a", poll_s=0.1
    )
    try:
        notifier.enqueue_once()
        notifier.start()
        for n, kind in enumerate(("unregistered", "missing", "pending_too_long")):
            alerts.record(kind=kind, source="audit", detail="d", sop_instance_uid=f"1.2.3.{n}")
            wait_until(f"message {n + 1}", lambda n=n: len(server.received()) > n, timeout=60)
    finally:
        notifier.stop()
        server.stop()
        index.close()
    kinds = []
    for message in server.received():
        header = HEADER.match(message)
        assert header is not None, message[:200]
        kinds.append(header.group(8).decode())
        ET.fromstring(message[header.end() + len(atna.BOM) :])
    assert kinds == ["unregistered", "missing", "pending_too_long"]


def test_two_nodes_never_claim_the_same_event_on_postgresql(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    url = postgres.create_database()
    alerts = Alerts(tmp_path / "alerts.sqlite")
    first, second = Index(url), Index(url)  # two nodes' connections to one index
    try:
        a = Outbox(first, targets=("syslog",))
        b = Outbox(second, targets=("syslog",))
        a.enqueue("gateway", alerts.path)
        for n in range(20):
            alerts.record(kind="missing", source="audit", detail="d", sop_instance_uid=f"1.{n}")
        assert a.enqueue("gateway", alerts.path) == 20
        assert b.enqueue("gateway", alerts.path) == 0  # the log's mark is shared: enqueued once
        taken_a = {c.event.id for c in a.claim("syslog", "node-a/notify", limit=12, lease_s=30)}
        taken_b = {c.event.id for c in b.claim("syslog", "node-b/notify", limit=12, lease_s=30)}
        assert len(taken_a) == 12 and len(taken_b) == 8 and not taken_a & taken_b
        assert b.claim("syslog", "node-b/notify", limit=12, lease_s=30) == []
    finally:
        first.close()
        second.close()
