"""`status` reads the ingest queue and the commitment requests through their own modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError, IndexSchemaTooNew
from gateway.index import schema
from gateway.index.db import Index
from gateway.ingest.commitment import CommitmentLog, Reference, Report
from gateway.ingest.status import status_report
from tests.unit.index.test_db import legacy_index, set_version

CT = "1.2.840.10008.5.1.4.1.1.2"


def request(log: CommitmentLog, n: int) -> int:
    return log.add(transaction_uid=f"1.2.9.{n}", calling_aet=f"CT{n}",
                   refs=[Reference(CT, f"1.2.3.{n}")], deadline=0.0)  # fmt: skip


def test_commitment_requests_are_counted_and_undelivered_reports_listed(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    log = CommitmentLog(index)
    ids = [request(log, n) for n in range(5)]
    report = Report(transaction_uid="1.2.9.1", committed=(), failed=())
    for request_id in ids[1:]:
        log.decided(request_id, report)
    log.delivered(ids[1])
    log.failed_delivery(ids[2], "peer CT2 unknown", retry_in=60)
    log.failed_delivery(ids[3], "connection refused", retry_in=60)
    log.failed_delivery(ids[3], "connection refused again", retry_in=60)  # ids[4]: not yet tried

    shown = status_report(tmp_path / "index.sqlite", limit=10)

    assert shown["commitment_requests"] == {"open": 1, "ready": 3, "reported": 1}
    assert shown["commitment_undelivered"] == [
        {"request": ids[2], "calling_aet": "CT2", "attempts": 1, "last_error": "peer CT2 unknown"},
        {"request": ids[3], "calling_aet": "CT3", "attempts": 2,
         "last_error": "connection refused again"},
    ]  # fmt: skip
    assert len(status_report(tmp_path / "index.sqlite", limit=1)["commitment_undelivered"]) == 1
    index.close()


def test_an_index_from_before_storage_commitment_shows_no_requests(tmp_path: Path) -> None:
    legacy_index(tmp_path / "index.sqlite", 4)  # no commitments table, one row at anchor

    shown = status_report(tmp_path / "index.sqlite")

    assert shown["commitment_requests"] == {"open": 0, "ready": 0, "reported": 0}
    assert shown["commitment_undelivered"] == []
    assert shown["pending"] == 1 and shown["stages"]["anchor"] == 1


def test_ages_and_retry_delays_count_from_now(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    row = index.add_received(entry_id="ab" * 16, sop_instance_uid="1.2.3", sop_class_uid=CT,
                             calling_aet="CT1", size=1)  # fmt: skip
    index.update(row, received_at=1000.0)
    index.fail(row, "fingerprint: OSError: disk", retry_in=0)
    index.update(row, next_attempt_at=1100.0)

    shown = status_report(tmp_path / "index.sqlite", now=1060.0)

    assert shown["oldest_pending"]["age_s"] == 60.0
    assert shown["oldest_pending"]["record"] == "entry abababab"  # not fingerprinted yet
    (failing,) = shown["failing"]
    assert failing["next_attempt_in_s"] == 40.0 and failing["attempts"] == 1
    index.close()


def test_a_missing_index_is_a_config_error_and_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the index"):
        status_report(tmp_path / "index.sqlite")
    assert not (tmp_path / "index.sqlite").exists()


def test_an_index_written_by_a_newer_gateway_is_refused_not_read(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    Index(path).close()
    set_version(path, schema.LATEST + 1)
    with pytest.raises(IndexSchemaTooNew, match="upgrade the gateway"):
        status_report(path)


def test_the_rows_each_worker_holds_are_shown(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    for n in range(3):
        index.add_received(
            entry_id=f"e{n}", sop_instance_uid=f"1.2.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            calling_aet="CT1", size=1,
        )  # fmt: skip
    index.claim_due("up-1", stages=("fingerprint",), limit=2, lease_s=60)
    index.claim_due("gone", stages=("fingerprint",), limit=1, lease_s=-1)  # lease run out
    assert status_report(tmp_path / "index.sqlite")["claims"] == {"up-1": 2}
    index.close()


def test_status_shows_each_node_its_workers_claims_and_commitment_requests(
    tmp_path: Path,
) -> None:
    index = Index(tmp_path / "index.sqlite")
    for n in range(3):
        index.add_received(
            entry_id=f"e{n}", sop_instance_uid=f"1.2.{n}", sop_class_uid=CT, calling_aet="CT1",
            size=1, received_by="east" if n < 2 else "west",
        )  # fmt: skip
    index.claim_due("east/up-1", stages=("fingerprint",), limit=2, lease_s=60)
    index.claim_due("west/up-1", stages=("fingerprint",), limit=1, lease_s=60)
    request(CommitmentLog(index, node="west"), 1)
    delivered = request(CommitmentLog(index, node="east"), 2)
    CommitmentLog(index, node="east").decided(delivered, Report("1.2.9.2", (), ()))
    CommitmentLog(index, node="east").delivered(delivered)

    shown = status_report(tmp_path / "index.sqlite")

    assert shown["claims"] == {"east/up-1": 2, "west/up-1": 1}
    assert shown["nodes"] == {
        "east": {"waiting": 2, "claims": 2, "workers": {"up-1": 2},
                 "commitment_requests": {"open": 0, "ready": 0, "reported": 1}},
        "west": {"waiting": 1, "claims": 1, "workers": {"up-1": 1},
                 "commitment_requests": {"open": 1, "ready": 0, "reported": 0}},
    }  # fmt: skip
    assert shown["commitment_requests"] == {"open": 1, "ready": 0, "reported": 1}  # cluster
    index.close()
