"""Storage Commitment on the stack `up` starts: storescu sends, a pynetdicom SCU asks.

The modality is ``CT1``: it sends with DCMTK's storescu, asks with N-ACTION and runs its
own SCP for reports on a new association (``GATEWAY_COMMITMENT_PEERS``). ``CT9`` asks
too, but the gateway has no address for it until a restart adds one.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread

import dicom_fixtures
from gateway.index.db import Index
from gateway.ingest.commitment import (
    CLASS_INSTANCE_CONFLICT,
    INVALID_ARGUMENT_VALUE,
    MISSING_ATTRIBUTE,
    NO_SUCH_OBJECT_INSTANCE,
    PROCESSING_FAILURE,
    CommitmentSCP,
)
from gateway.ingest.receive import Receiver
from gateway.ingest.spool import Spool
from gateway.procs import free_port
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env, run
from tests.integration.modality import Modality

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


@dataclass
class Site:
    up: Up
    ct1: Modality
    ct9: Modality
    tmp: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("commitment")
    with Modality("CT1") as ct1, Modality("CT9") as ct9:
        env = gateway_env(
            tmp / "var",
            GATEWAY_COMMITMENT_PEERS=f"CT1=127.0.0.1:{ct1.scp_port}",
            GATEWAY_COMMITMENT_TIMEOUT_S="300",
        )
        state = Site(up=Up(env), ct1=ct1, ct9=ct9, tmp=tmp)
        try:
            yield state
        finally:
            assert state.up.stop() == 0


def series(
    tmp: Path, name: str, count: int, prefix: str
) -> tuple[list[Path], list[tuple[str, str]]]:
    files = dicom_fixtures.ct_series(tmp / name, count, rows=128, cols=128, prefix=prefix)
    refs = []
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        refs.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return files, refs


def send(up: Up, files: list[Path], *, aet: str = "CT1") -> None:
    result = storescu(up.dicom_port, files, aet=aet)
    assert result.returncode == 0, result.stdout[-2000:]


def commitments(up: Up) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{up.data_dir / 'index.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM commitments ORDER BY id").fetchall()
    finally:
        db.close()


def test_a_committed_set_is_reported_committed_on_the_same_association(site: Site) -> None:
    files, refs = series(site.tmp, "committed", 6, "1.2.826.0.1.3680043.10.1031.1.")
    send(site.up, files)
    rows = site.up.wait_done(len(files))
    assert all(r["stage"] == "committed" for r in rows)

    status, report = site.ct1.request(site.up.dicom_port, refs)
    assert status == 0x0000
    assert report is not None, "no N-EVENT-REPORT on the association"
    assert report.how == "same"
    assert report.event_type == 1
    assert report.committed == {uid for _, uid in refs}
    assert report.failed == {}


def test_a_uid_never_sent_fails_with_no_such_object_instance(site: Site) -> None:
    files, refs = series(site.tmp, "partial", 4, "1.2.826.0.1.3680043.10.1031.2.")
    send(site.up, files[:3])  # the fourth is never sent
    site.up.wait_done(len(site.up.rows()))
    never_sent = refs[3][1]
    wrong_class = (MR, refs[2][1])  # received as CT, asked about as MR

    status, report = site.ct1.request(site.up.dicom_port, [*refs[:2], wrong_class, refs[3]])
    assert status == 0x0000
    assert report is not None
    assert report.event_type == 2
    assert report.committed == {refs[0][1], refs[1][1]}
    assert report.failed == {
        never_sent: NO_SUCH_OBJECT_INSTANCE,
        refs[2][1]: CLASS_INSTANCE_CONFLICT,
    }


def test_the_report_waits_until_every_instance_is_committed(site: Site) -> None:
    files, refs = series(site.tmp, "early", 8, "1.2.826.0.1.3680043.10.1031.3.")
    send(site.up, files)
    # asked at once: the pipeline is still sealing, anchoring and forwarding some of them
    status, report = site.ct1.request(site.up.dicom_port, refs)
    reported_at = time.time()
    assert status == 0x0000 and report is not None
    assert report.event_type == 1 and report.committed == {uid for _, uid in refs}
    mine = [r for r in site.up.rows() if r["sop_instance_uid"] in report.committed]
    assert len(mine) == len(refs)
    assert all(r["stage"] == "committed" for r in mine)
    assert max(r["committed_at"] for r in mine) <= reported_at


def test_a_report_is_delivered_on_a_new_association_after_release(site: Site) -> None:
    files, refs = series(site.tmp, "released", 3, "1.2.826.0.1.3680043.10.1031.4.")
    send(site.up, files)
    site.up.wait_done(len(site.up.rows()))

    status, same = site.ct1.request(site.up.dicom_port, refs, release_at_once=True)
    assert status == 0x0000 and same is None
    report = site.ct1.next_report(timeout=120)
    assert report.how == "new", "the report came on the N-ACTION's association"
    assert report.calling_aet == "XRAYGW"
    assert report.event_type == 1 and report.committed == {uid for _, uid in refs}


def _metrics(up: Up) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{up.api_port}/metrics", timeout=30) as rsp:
        assert rsp.status == 200
        text = rsp.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_an_unknown_peer_keeps_its_report_until_a_restart_gives_its_address(site: Site) -> None:
    files, refs = series(site.tmp, "unknown", 2, "1.2.826.0.1.3680043.10.1031.5.")
    send(site.up, files, aet="CT9")
    site.up.wait_done(len(site.up.rows()))
    status, _ = site.ct9.request(site.up.dicom_port, refs, release_at_once=True)
    assert status == 0x0000

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        kept = [c for c in commitments(site.up) if c["calling_aet"] == "CT9"]
        if kept and kept[0]["last_error"]:
            break
        time.sleep(0.5)
    assert kept and kept[0]["state"] == "ready", [dict(c) for c in kept]
    assert "GATEWAY_COMMITMENT_PEERS" in kept[0]["last_error"]
    assert site.ct9.reports.empty()

    # visible in /metrics and in `status`
    metrics = _metrics(site.up)
    assert metrics[("xray_gateway_commitment_requests_stored", (("state", "ready"),))] == 1
    assert metrics[("xray_gateway_commitment_delivery_failures_total", ())] >= 1
    assert metrics[("xray_gateway_commitment_reports_total", (("event_type", "1"),))] >= 3
    assert metrics[("xray_gateway_commitment_requests_total", (("result", "accepted"),))] == 5
    acked = len(site.up.rows())  # every acked instance has its row, and only those
    assert acked == 6 + 3 + 8 + 3 + 2
    assert metrics[("xray_gateway_cstore_responses_total", (("status", "0x0000"),))] == acked
    assert metrics[("xray_gateway_queue_depth", (("stage", "anchor"),))] == 0
    status_json = run(site.up.env, "status", "--json")
    assert status_json.returncode == 0, status_json.stderr
    shown = json.loads(status_json.stdout)
    assert shown["commitment_requests"]["ready"] == 1
    (undelivered,) = shown["commitment_undelivered"]
    assert undelivered["calling_aet"] == "CT9" and undelivered["attempts"] >= 1

    # a restart that knows CT9's address delivers the kept report
    assert site.up.stop() == 0
    env = {
        **site.up.env,
        "GATEWAY_COMMITMENT_PEERS": f"CT1=127.0.0.1:{site.ct1.scp_port},"
        f"CT9=127.0.0.1:{site.ct9.scp_port}",
    }
    site.up = Up(env)
    report = site.ct9.next_report(timeout=120)
    assert report.how == "new" and report.event_type == 1
    assert report.committed == {uid for _, uid in refs}
    # the gateway marks the request reported once CT9 has answered the N-EVENT-REPORT,
    # which is just after CT9 queued it for us: wait for that write (bounded)
    deadline = time.monotonic() + 60
    states: list[str] = []
    while time.monotonic() < deadline:
        states = [c["state"] for c in commitments(site.up) if c["calling_aet"] == "CT9"]
        if states == ["reported"]:
            break
        time.sleep(0.2)
    assert states == ["reported"]


def test_instances_not_committed_in_time_fail_with_processing_failure(tmp_path: Path) -> None:
    """The listener and the SCP alone (no pipeline): received rows never reach committed."""
    index = Index(tmp_path / "index.sqlite")
    scp = CommitmentSCP(index=index, ae_title="XRAYGW", peers={}, timeout_s=3.0, poll_s=0.2)
    receiver = Receiver(spool=Spool(tmp_path / "spool", reserve_bytes=0), index=index,
                        commitment=scp)  # fmt: skip
    scp.start()
    receiver.start(port=free_port())
    try:
        files, refs = series(tmp_path, "stuck", 3, "1.2.826.0.1.3680043.10.1031.6.")
        assert storescu(receiver.port, files, aet="CT1").returncode == 0
        first = index.by_uid(refs[0][1])[0]
        index.update(first.id, stage="committed")  # as if the pipeline had finished it
        asked = time.time()
        with Modality("CT1") as ct1:
            status, report = ct1.request(receiver.port, refs, wait=60)
        assert status == 0x0000 and report is not None
        assert time.time() - asked >= 3.0, "reported before the timeout ran out"
        assert report.event_type == 2
        assert report.committed == {refs[0][1]}
        assert report.failed == {refs[1][1]: PROCESSING_FAILURE, refs[2][1]: PROCESSING_FAILURE}
    finally:
        receiver.stop()
        scp.stop()
        index.close()


def test_malformed_requests_are_refused(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    scp = CommitmentSCP(index=index, ae_title="XRAYGW", peers={})
    receiver = Receiver(spool=Spool(tmp_path / "spool", reserve_bytes=0), index=index,
                        commitment=scp)  # fmt: skip
    receiver.start(port=free_port())
    try:
        with Modality("CT1") as ct1, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the invalid UID is on purpose
            status, _ = ct1.request(receiver.port, [(CT, "1.02.3")], release_at_once=True)
            assert status == INVALID_ARGUMENT_VALUE
            status, _ = ct1.request(receiver.port, [], release_at_once=True)
            assert status == MISSING_ATTRIBUTE
        assert scp.counters["refused"] == 2 and scp.log.counts() == {}
    finally:
        receiver.stop()
        index.close()
