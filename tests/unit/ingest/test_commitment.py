"""Storage Commitment decisions on a real index, the report dataset, the peers setting."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.index.db import Index
from gateway.ingest.commitment import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    PROCESSING_FAILURE,
    SUCCESS,
    CommitmentLog,
    Reference,
    Report,
    decide,
    instance_result,
)
from tests.unit.index.test_db import legacy_index

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture
def index(tmp_path: Path) -> Index:
    return Index(tmp_path / "index.sqlite")


def received(index: Index, uid: str, stage: str, *, sop_class: str = CT) -> int:
    row_id = index.add_received(
        entry_id=f"e{uid.replace('.', '')}{len(index.all())}",
        sop_instance_uid=uid,
        sop_class_uid=sop_class,
        calling_aet="CT1",
        size=10,
    )
    index.update(row_id, stage=stage)
    return row_id


def verdict(index: Index, uid: str, sop_class: str = CT) -> int | None:
    return instance_result(Reference(sop_class, uid), index.by_uid(uid))


def test_only_a_committed_latest_version_is_success(index: Index) -> None:
    received(index, "1.1", "committed")
    received(index, "1.2", "forward")
    received(index, "1.3", "committed")
    received(index, "1.3", "duplicate")  # the same bytes again: stands for the first
    received(index, "1.4", "committed")
    received(index, "1.4", "conflict")  # a new version the PACS holds other bytes for
    received(index, "1.5", "committed")
    received(index, "1.5", "seal")  # a new version on its way
    received(index, "1.6", "rejected")
    assert verdict(index, "1.1") == SUCCESS
    assert verdict(index, "1.2") is None
    assert verdict(index, "1.3") == SUCCESS
    assert verdict(index, "1.4") == PROCESSING_FAILURE
    assert verdict(index, "1.5") is None
    assert verdict(index, "1.6") == PROCESSING_FAILURE
    assert verdict(index, "9.9") == NO_SUCH_OBJECT_INSTANCE
    assert verdict(index, "1.1", MR) == CLASS_INSTANCE_CONFLICT


def test_decide_waits_for_pending_instances_until_final(index: Index) -> None:
    received(index, "2.1", "committed")
    row = received(index, "2.2", "anchor")
    refs = [Reference(CT, "2.1"), Reference(CT, "2.2"), Reference(CT, "2.3")]
    assert decide("9.8.7", refs, index, final=False) is None
    timed_out = decide("9.8.7", refs, index, final=True)
    assert timed_out is not None and timed_out.event_type == 2
    assert timed_out.committed == (Reference(CT, "2.1"),)
    assert dict(timed_out.failed) == {
        Reference(CT, "2.2"): PROCESSING_FAILURE,
        Reference(CT, "2.3"): NO_SUCH_OBJECT_INSTANCE,
    }
    index.update(row, stage="committed")
    report = decide("9.8.7", refs[:2], index, final=False)
    assert report is not None and report.event_type == 1 and not report.failed


def test_report_dataset_and_its_stored_form() -> None:
    report = Report(
        transaction_uid="1.2.3",
        committed=(Reference(CT, "4.5"),),
        failed=((Reference(MR, "4.6"), NO_SUCH_OBJECT_INSTANCE),),
    )
    ds = report.dataset()
    assert ds.TransactionUID == "1.2.3"
    assert [i.ReferencedSOPInstanceUID for i in ds.ReferencedSOPSequence] == ["4.5"]
    (failed,) = ds.FailedSOPSequence
    assert (failed.ReferencedSOPClassUID, failed.FailureReason) == (MR, 0x0112)
    assert Report.from_json("1.2.3", report.to_json()) == report
    only_ok = Report("1.2.3", (Reference(CT, "4.5"),), ())
    assert only_ok.event_type == 1 and "FailedSOPSequence" not in only_ok.dataset()


def test_requests_survive_reopening_the_index(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    log = CommitmentLog(index)
    request_id = log.add(
        transaction_uid="1.2.3", calling_aet="CT1", refs=[Reference(CT, "5.1")], deadline=1e12
    )
    log.failed_delivery(request_id, "peer down", retry_in=0)
    index.close()
    again = CommitmentLog(Index(tmp_path / "index.sqlite"))
    (request,) = again.due(now=2e12)
    assert (request.id, request.state, request.attempts) == (request_id, "open", 1)
    assert request.refs == (Reference(CT, "5.1"),)
    assert again.counts() == {"open": 1}


def test_commitment_peers_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_COMMITMENT_PEERS", "CT1=10.0.0.5:104, MR_2=mr.example:11112")
    assert Settings().commitment_peers == {"CT1": ("10.0.0.5", 104), "MR_2": ("mr.example", 11112)}
    monkeypatch.setenv("GATEWAY_COMMITMENT_PEERS", '{"CT1": "[::1]:4242"}')
    assert Settings().commitment_peers == {"CT1": ("::1", 4242)}
    for bad in ("CT1", "CT1=host", "CT1=host:0", "CT1=host:http"):
        monkeypatch.setenv("GATEWAY_COMMITMENT_PEERS", bad)
        with pytest.raises((ValueError, ConfigError)):
            Settings()
    monkeypatch.delenv("GATEWAY_COMMITMENT_PEERS")
    assert Settings().commitment_peers == {}


def test_whether_a_request_came_over_tls_is_kept_and_old_indexes_gain_the_column(
    tmp_path: Path,
) -> None:
    """A report after a restart must still go over TLS; rows from before TLS stay plain."""
    path = tmp_path / "index.sqlite"
    legacy_index(path, 5)  # the commitments table as it was before DICOM TLS
    db = sqlite3.connect(path)
    assert "tls" not in {r[1] for r in db.execute("PRAGMA table_info(commitments)")}
    db.execute(
        "INSERT INTO commitments (transaction_uid, calling_aet, refs, received_at, deadline,"
        " state) VALUES ('1.2.3', 'CT1', '[]', 0, 0, 'open')"
    )
    db.commit()
    db.close()
    index = Index(path)
    log = CommitmentLog(index)
    assert log.get(1).tls is False
    later = log.add(transaction_uid="1.2.4", calling_aet="CT1", refs=[], deadline=0, tls=True)
    assert log.get(later).tls is True
    index.close()
    assert CommitmentLog(Index(tmp_path / "index.sqlite")).get(later).tls is True


def test_each_node_reports_only_the_requests_it_received(index: Index) -> None:
    """One index, two nodes: each request is due at the node that received its N-ACTION,
    while the instances it names count as committed whichever node received them."""
    received(index, "7.1", "committed")  # say, received and worked by the other node
    east, west = CommitmentLog(index, node="east"), CommitmentLog(index, node="west")
    mine = east.add(transaction_uid="1.2.7", calling_aet="CT1",
                    refs=[Reference(CT, "7.1")], deadline=1e12)  # fmt: skip
    theirs = west.add(transaction_uid="1.2.8", calling_aet="CT1", refs=[], deadline=1e12)
    assert [r.id for r in east.due(now=1.0)] == [mine]
    assert [r.id for r in west.due(now=1.0)] == [theirs]
    (request,) = east.due(now=1.0)
    report = decide(request.transaction_uid, list(request.refs), index, final=False)
    assert report is not None and report.committed == (Reference(CT, "7.1"),)


def test_requests_from_before_nodes_are_adopted_by_one_node(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    legacy_index(path, 9)  # commitments without an owner
    db = sqlite3.connect(path)
    db.executemany(
        "INSERT INTO commitments (transaction_uid, calling_aet, refs, received_at, deadline,"
        " state) VALUES (?, 'CT1', '[]', 0, 0, ?)",
        [("1.2.1", "open"), ("1.2.2", "ready"), ("1.2.3", "reported")],
    )
    db.commit()
    db.close()
    index = Index(path)
    east, west = CommitmentLog(index, node="east"), CommitmentLog(index, node="west")
    assert east.adopt_unowned() == 2  # the first to start takes the ones not yet reported
    assert west.adopt_unowned() == 0
    assert [r.transaction_uid for r in east.due(now=1.0)] == ["1.2.1", "1.2.2"]
    assert west.due(now=1.0) == []
    index.close()


def _request(log: CommitmentLog, transaction: str) -> int:
    return log.add(
        transaction_uid=transaction, calling_aet="CT1", refs=[Reference(CT, "1.1")],
        deadline=0.0,
    )  # fmt: skip


def test_requests_go_to_the_listener_that_will_run_and_count_as_their_nodes(
    index: Index,
) -> None:
    """`up` hands a request to a listener process that runs (when their number changed);
    status still counts a listener's requests as its node's."""
    own = _request(CommitmentLog(index, node="node-a"), "2.1")
    third = _request(CommitmentLog(index, node="node-a/listen-3"), "2.2")
    other_node = _request(CommitmentLog(index, node="node-b"), "2.3")
    reported = _request(CommitmentLog(index, node="node-a/listen-4"), "2.4")
    CommitmentLog(index).delivered(reported)

    first = CommitmentLog(index, node="node-a/listen-1")
    assert first.hand_over(["node-a", "node-a/listen-3", "node-a/listen-4"]) == 2
    assert [r.id for r in first.due(now=1e12)] == [own, third]
    assert [r.id for r in CommitmentLog(index, node="node-b").due(now=1e12)] == [other_node]

    back = CommitmentLog(index, node="node-a")  # one listener again: `up`'s own takes all
    assert back.hand_over(prefix="node-a/listen-") == 2
    assert [r.id for r in back.due(now=1e12)] == [own, third]
    assert back.hand_over(prefix="node-a/listen-") == 0
    assert back.counts_per_node() == {"node-a": {"open": 2, "reported": 1}, "node-b": {"open": 1}}
