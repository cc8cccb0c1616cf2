"""`xray-gateway status` and /metrics read a real index: queue, oldest pending, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.app import Health, create_app
from gateway.cli import main
from gateway.index.db import Index, error_class
from gateway.ingest.commitment import CommitmentSCP
from gateway.ingest.receive import Receiver
from gateway.ingest.spool import Spool
from gateway.metrics import GatewayCollector, registry_for, render
from tests.serve import serve

CT = "1.2.840.10008.5.1.4.1.1.2"
PATIENT_ID = "PID-0042"  # stands for patient data that must never be shown


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "var"))
    return tmp_path / "var"


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, "", ""


def fill(index: Index) -> dict[str, int]:
    """Rows in every kind of state; returns their ids by name."""
    ids: dict[str, int] = {}
    for n, (name, stage) in enumerate(
        [("old", "anchor"), ("chain", "anchor"), ("pacs", "forward"), ("new", "fingerprint"),
         ("done", "committed"), ("dup", "duplicate"), ("odd", "conflict")]
    ):  # fmt: skip
        ids[name] = index.add_received(
            entry_id=f"{n:02d}" + "ab" * 15, sop_instance_uid=f"1.2.3.{n}", sop_class_uid=CT,
            calling_aet="CT1", size=100,
        )  # fmt: skip
        key = bytes([n]) * 32 if stage != "fingerprint" else None
        index.update(ids[name], stage=stage, record_key=key)
    index.update(ids["old"], received_at=time.time() - 3600)
    index.fail(ids["chain"], "anchor: ChainUnavailable: connection refused", retry_in=30)
    index.fail(ids["chain"], "anchor: ChainUnavailable: connection refused", retry_in=60)
    index.fail(ids["pacs"], "forward: PacsUnavailable: 503 from Orthanc", retry_in=10)
    index.fail(ids["done"], "forward: PacsUnavailable: old news", retry_in=0)  # not pending
    return ids


def test_index_queries(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    ids = fill(index)
    oldest = index.oldest_pending()
    assert oldest is not None and oldest.id == ids["old"]
    assert [r.id for r in index.failing(10)] == [ids["chain"], ids["pacs"]]
    assert [r.id for r in index.failing(1)] == [ids["chain"]]
    assert index.failure_counts() == {
        ("anchor", "ChainUnavailable"): 1,
        ("forward", "PacsUnavailable"): 1,
    }
    assert error_class("seal: OSError: [Errno 28] No space left") == "OSError"
    assert error_class("Timeout") == "Timeout" and error_class(None) == "unknown"


def test_status_json_and_table(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = Index(data_dir / "index.sqlite")
    ids = fill(index)
    assert main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stages"]["anchor"] == 2 and report["stages"]["committed"] == 1
    assert report["pending"] == 4
    oldest = report["oldest_pending"]
    assert oldest["stage"] == "anchor" and oldest["age_s"] >= 3600
    assert oldest["record"] == (bytes([0]) * 32).hex()[:12]
    failing = report["failing"]
    assert [(f["stage"], f["attempts"]) for f in failing] == [("anchor", 2), ("forward", 1)]
    assert failing[0]["last_error"] == "anchor: ChainUnavailable: connection refused"
    assert report["commitment_requests"] == {"open": 0, "ready": 0, "reported": 0}
    assert report["commitment_undelivered"] == []

    # while the gateway writes (the index is open here), in the human format
    index.update(ids["new"], stage="seal")
    assert main(["status"]) == 0
    table = capsys.readouterr().out
    assert "ChainUnavailable: connection refused" in table
    assert "oldest: record 000000000000 at stage anchor" in table
    assert "1.2.3." not in table and PATIENT_ID not in table
    index.close()


def test_status_without_an_index_is_a_clear_error(data_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "status"], capture_output=True, text=True,
        env={**os.environ, "GATEWAY_DATA_DIR": str(data_dir)}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot read the index" in result.stderr
    assert not (data_dir / "index.sqlite").exists()  # status never creates one


def test_status_reads_an_index_nobody_has_open(data_dir: Path) -> None:
    index = Index(data_dir / "index.sqlite")
    fill(index)
    index.close()
    for path in data_dir.glob("index.sqlite-*"):  # as after a clean stop
        path.unlink()
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "status", "--json"], capture_output=True, text=True,
        env={**os.environ, "GATEWAY_DATA_DIR": str(data_dir)}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pending"] == 4


def test_metrics_exposition(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    fill(index)
    index.claim_due("node-a/up-1", stages=("anchor",), limit=1, lease_s=60)
    spool = Spool(tmp_path / "spool", reserve_bytes=1 << 20)
    receiver = Receiver(spool=spool, index=index)
    receiver.responses.update({0x0000: 5, 0xA700: 2})
    scp = CommitmentSCP(index=index, ae_title="XRAYGW", peers={})
    scp.counters.update({"accepted": 3, "reported_event_type_2": 1, "delivery_failures": 4})
    registry = registry_for(
        GatewayCollector(index=index, receiver=receiver, spool=spool, commitment=scp, node="node-b")
    )
    with serve(create_app(health=Health(), metrics=lambda: render(registry))) as url:
        status, content_type, text = get(f"{url}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("xray_gateway_queue_depth", (("stage", "anchor"),))] == 2
    assert samples[("xray_gateway_queue_depth", (("stage", "put"),))] == 0
    assert ("xray_gateway_queue_depth", (("stage", "committed"),)) not in samples
    assert samples[("xray_gateway_instances", (("stage", "committed"),))] == 1
    assert samples[("xray_gateway_oldest_pending_age_seconds", ())] >= 3600
    assert (
        samples[
            ("xray_gateway_failing_instances", (("error", "ChainUnavailable"), ("stage", "anchor")))
        ]
        == 1
    )
    assert samples[("xray_gateway_cstore_responses_total", (("status", "0xA700"),))] == 2
    assert samples[("xray_gateway_cstore_responses_total", (("status", "0x0000"),))] == 5
    assert samples[("xray_gateway_commitment_requests_total", (("result", "accepted"),))] == 3
    assert samples[("xray_gateway_commitment_reports_total", (("event_type", "2"),))] == 1
    assert samples[("xray_gateway_commitment_delivery_failures_total", ())] == 4
    assert samples[("xray_gateway_spool_reserve_bytes", ())] == 1 << 20
    assert samples[("xray_gateway_spool_free_bytes", ())] > 0
    # every node's claims (the index is shared), labelled by node; the answering node apart
    claimed = ("xray_gateway_claimed_instances", (("node", "node-a"), ("worker", "node-a/up-1")))
    assert samples[claimed] == 1
    assert samples[("xray_gateway_node", (("node", "node-b"),))] == 1
    assert "1.2.3." not in text  # no UIDs, no patient data in labels
    with serve(create_app(health=Health())) as url:  # no metrics callable: no route
        assert get(f"{url}/metrics")[0] == 404
        assert get(f"{url}/healthz")[0] == 200


def test_parked_rows_in_status_metrics_and_retry(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = Index(data_dir / "index.sqlite")
    ids = fill(index)
    index.park(ids["pacs"], "forward: PacsRejected: Orthanc did not store the file")
    assert main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stages"]["failed"] == 1 and report["pending"] == 3
    assert report["parked"] == [
        {"row": ids["pacs"], "record": (bytes([2]) * 32).hex()[:12], "stage": "forward",
         "attempts": 2, "last_error": "forward: PacsRejected: Orthanc did not store the file"}
    ]  # fmt: skip
    assert [f["stage"] for f in report["failing"]] == ["anchor"]  # parked is not "failing"
    assert main(["status"]) == 0
    table = capsys.readouterr().out
    assert "parked at stage failed (1;" in table and "PacsRejected" in table

    registry = registry_for(GatewayCollector(index=index))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(render(registry)[0].decode())
        for s in family.samples
    }
    key = ("xray_gateway_parked_instances", (("error", "PacsRejected"), ("stage", "forward")))
    assert samples[key] == 1
    assert samples[("xray_gateway_instances", (("stage", "failed"),))] == 1
    assert ("xray_gateway_queue_depth", (("stage", "failed"),)) not in samples

    assert main(["retry"]) == 1  # neither rows nor --all
    capsys.readouterr()
    assert main(["retry", str(ids["chain"])]) == 1  # not parked: left alone
    assert index.get(ids["chain"]).stage == "anchor"
    capsys.readouterr()
    assert main(["retry", "--all"]) == 0
    assert capsys.readouterr().out.strip() == f"re-queued 1 row(s): {ids['pacs']}"
    row = index.get(ids["pacs"])
    assert (row.stage, row.attempts, row.next_attempt_at) == ("forward", 0, 0)
    index.close()
