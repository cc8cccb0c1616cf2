"""The one status table, and what the plugin and the verifier derive from it."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import get_args

import pytest

import dicom_fixtures
from gateway.core.fingerprint import fingerprint_bytes, read_header
from gateway.index.db import Index
from gateway.orthanc_plugin import verdict as plugin
from gateway.orthanc_plugin.catalog import Catalog
from gateway.orthanc_plugin.evidence import RecordBook
from gateway.orthanc_plugin.guard import DICOM, Guard
from gateway.orthanc_plugin.storage import FileArea
from gateway.orthanc_plugin.verdict import LedgerFacts, Version, judge
from gateway.procs import PROJECT_ROOT
from gateway.trust import verdicts as statuses
from gateway.trust import verify
from gateway.trust.alerts import KINDS, Alerts
from gateway.trust.audit import PendingWatch, overdue

UID = "1.2.3.4.5"
A = b"\xaa" * 32
SYNTAX = "1.2.840.10008.1.2.1"


def version(*, block: int | None = 10, batch: int | None = None, anchored: bool = True) -> Version:
    return Version(
        version=1,
        digest=A,
        pixel_digest=b"\x01" * 32,
        record_key=b"\x02" * 32,
        tx_hash=("0x" + A.hex()) if anchored and batch is None else None,
        block_number=block if anchored else None,
        block_time=None,
        recorder=None,
        batch_id=batch if anchored else None,
        leaf_index=0 if batch is not None else None,
        transfer_syntax=SYNTAX,
    )


# --- the table -----------------------------------------------------------------------------


def test_every_status_is_in_the_one_table_and_everyone_uses_it() -> None:
    names = set(get_args(statuses.Status))
    assert names == {
        "intact", "tampered", "missing", "unregistered", "pending", "unconfirmed", "retired",
        "store_corrupt", "unverifiable",
    }  # fmt: skip
    assert set(statuses.TABLE) == names
    assert [statuses.TABLE[s].rank for s in statuses.SEVERITY] == list(range(len(names)))
    # the verifier, the plugin and the alert log take theirs from it: no second list
    assert verify.STATUSES is statuses.STATUSES and verify.EXPLANATIONS is statuses.EXPLANATIONS
    assert plugin.SERVED is statuses.SERVED and plugin.SEVERITY is statuses.SEVERITY
    assert {info.alert for info in statuses.TABLE.values() if info.alert} <= set(KINDS)
    assert "pending_too_long" in KINDS
    assert not statuses.SERVED["tampered"] and statuses.SERVED["unconfirmed"]
    assert statuses.worst(["intact", "unconfirmed", "pending"]) == "unconfirmed"


def test_the_architecture_document_lists_every_status_once() -> None:
    text = (PROJECT_ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("| status | served") :].split("\n\n")[0]
    listed = re.findall(r"^\| `(\w+)` \|", table, flags=re.M)
    assert listed == list(statuses.SEVERITY)


# --- the plugin never says intact for an anchor it cannot confirm ---------------------------


def test_the_plugin_calls_an_anchor_above_the_mirrors_head_unconfirmed_never_intact() -> None:
    verdict = judge(
        sop_instance_uid=UID, digest_now=A, versions=(version(block=30),), syntax_now=SYNTAX,
        ledger={A: LedgerFacts(on_chain=None, synced_block=20)},
    )  # fmt: skip
    assert (verdict.status, verdict.served) == ("unconfirmed", True)
    assert "not synced past block 30" in verdict.explanation
    assert "at block 20" in verdict.ledger


def test_the_plugin_calls_a_batch_unknown_to_its_mirror_unconfirmed() -> None:
    verdict = judge(
        sop_instance_uid=UID, digest_now=A, versions=(version(block=None, batch=7),),
        ledger={A: LedgerFacts(on_chain=None, synced_block=20)},
    )  # fmt: skip
    assert verdict.status == "unconfirmed"
    assert "batch 7 is unknown to the ledger mirror" in verdict.explanation


def test_the_plugin_calls_a_version_a_running_mirror_has_no_facts_for_unconfirmed() -> None:
    verdict = judge(sop_instance_uid=UID, digest_now=A, versions=(version(),), ledger={})
    assert verdict.status == "unconfirmed"
    assert "has not synced yet" in verdict.explanation


def test_a_version_pending_longer_than_the_limit_becomes_unconfirmed() -> None:
    received = replace(version(anchored=False), received_at=1_000.0)
    fresh = judge(
        sop_instance_uid=UID, digest_now=A, versions=(received,), now=1_100.0, pending_alert_s=900
    )
    assert fresh.status == "pending"
    stale = judge(
        sop_instance_uid=UID, digest_now=A, versions=(received,), now=2_000.0, pending_alert_s=900
    )
    assert (stale.status, stale.served) == ("unconfirmed", True)
    assert "not anchored after 900 s" in stale.ledger


class Unsynced:
    """A ledger mirror that has not reached any recorded block."""

    def facts(self, version: Version, others: Sequence[Version] = ()) -> LedgerFacts:
        return LedgerFacts(on_chain=None, synced_block=2)


def test_the_guard_serves_an_unconfirmed_copy_with_a_warning_and_an_alert(tmp_path: Path) -> None:
    (path,) = dicom_fixtures.ct_series(tmp_path / "in", count=1, rows=8, cols=8)
    data = path.read_bytes()
    index, alerts = Index(tmp_path / "index.sqlite"), Alerts(tmp_path / "alerts.sqlite")
    fp, header = fingerprint_bytes(data), read_header(io.BytesIO(data))
    row = index.add_received(
        entry_id=str(uuid.uuid4()), sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid, calling_aet="T", size=len(data),
    )  # fmt: skip
    index.update(
        row, stage="committed", digest=fp.digest, pixel_digest=fp.pixel_digest, version=1,
        tx_hash="0x" + fp.digest.hex(), block_number=3, transfer_syntax=fp.transfer_syntax,
        received_at=1_000.0,  # long ago: past PendingAlertSeconds, so alerted
    )  # fmt: skip
    guard = Guard(
        area=FileArea(tmp_path / "storage", sync=False), catalog=Catalog(tmp_path / "c.sqlite"),
        records=RecordBook(tmp_path / "index.sqlite"), alerts=alerts, ledger=Unsynced(),
    )  # fmt: skip
    name = str(uuid.uuid4())
    guard.create(name, DICOM, data)
    assert guard.read(name, DICOM) == data  # served (FailClosed is the plugin part's)
    assert guard.check(name, data).status == "unconfirmed"
    assert [a.kind for a in alerts.recent()][:1] == ["unconfirmed"]


# --- the gateway's pending watch -------------------------------------------------------------


def test_a_row_not_committed_after_the_limit_is_alerted_once(tmp_path: Path) -> None:
    index, alerts = Index(tmp_path / "index.sqlite"), Alerts(tmp_path / "alerts.sqlite")
    rows = []
    for stage in ("forward", "committed", "failed"):
        row = index.add_received(
            entry_id=str(uuid.uuid4()), sop_instance_uid=f"1.2.3.{len(rows)}",
            sop_class_uid="1.2", calling_aet="T", size=1,
        )  # fmt: skip
        index.update(row, stage=stage, record_key=bytes([len(rows)]) * 32, last_error=None)
        rows.append(row)
    received = index.get(rows[0]).received_at
    assert overdue(index, older_than=60, now=received + 10) == []
    watch = PendingWatch(index=index, alerts=alerts, after_s=60)
    late = watch.check(now=received + 61)
    assert [r.row_id for r in late] == [rows[0], rows[2]]  # forward and parked, not committed
    assert watch.check(now=received + 120) == []  # once per row
    found = alerts.recent(kind="pending_too_long")
    assert len(found) == 2 and all(a.sop_instance_uid is None for a in found)
    assert any("at stage forward" in a.detail and "record 000000000000" in a.detail for a in found)
    assert "1.2.3.0" not in " ".join(a.detail for a in found)  # no UID, no patient data
    # a restarted gateway does not alert them again
    assert PendingWatch(index=index, alerts=alerts, after_s=60).check(now=received + 200) == []


def test_a_parked_row_is_pending_with_its_error() -> None:
    assert "forward" in verify.PENDING_STAGES and "failed" in verify.PENDING_STAGES
    assert "committed" not in verify.PENDING_STAGES


@pytest.mark.parametrize("status", statuses.STATUSES)
def test_every_status_has_an_explanation_for_auditors(status: statuses.Status) -> None:
    assert len(statuses.EXPLANATIONS[status]) > 40


def test_a_fresh_anchor_the_mirror_lags_behind_warns_without_an_alert() -> None:
    fresh = replace(version(block=30), received_at=1_000.0)
    facts = {A: LedgerFacts(on_chain=None, synced_block=20)}
    soon = judge(sop_instance_uid=UID, digest_now=A, versions=(fresh,), ledger=facts, now=1_002.0)
    assert (soon.status, soon.alert) == ("unconfirmed", False)
    late = judge(sop_instance_uid=UID, digest_now=A, versions=(fresh,), ledger=facts, now=2_000.0)
    assert (late.status, late.alert) == ("unconfirmed", True)
