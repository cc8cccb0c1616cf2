"""The one status table, the rules that give its statuses, and what the plugin and the verifier derive from them."""

from __future__ import annotations

import io
import itertools
import re
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import get_args

import pytest

import dicom_fixtures
from gateway.core import ownership
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
        "store_corrupt", "unverifiable", "erased",
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


# --- the rules: one row per status ----------------------------------------------------------

V = statuses  # the rules live beside the table
CONFIRMED, SAME = V.AnchorState.CONFIRMED, V.CopyState.SAME
ROWS: list[tuple[V.Facts, V.Reason | None]] = [
    (V.Facts(CONFIRMED, SAME, original=V.Original.OK), V.Reason.VERIFIED),
    (V.Facts(V.AnchorState.UNCHECKED, SAME), V.Reason.VERIFIED),  # the plugin without a mirror
    (V.Facts(CONFIRMED, V.CopyState.DIFFERS, same_pixels=True), V.Reason.HEADER_CHANGED),
    (V.Facts(CONFIRMED, V.CopyState.DIFFERS, same_pixels=False), V.Reason.PIXELS_CHANGED),
    (V.Facts(CONFIRMED, V.CopyState.DIFFERS), V.Reason.ALTERED),
    (V.Facts(CONFIRMED, V.CopyState.REENCODED), V.Reason.REENCODED),
    (V.Facts(V.AnchorState.REFUTED, SAME), V.Reason.ANCHOR_REFUTED),
    (
        V.Facts(V.AnchorState.NONE, V.CopyState.UNCOMPARED, changed_since_arrival=True),
        V.Reason.CHANGED_SINCE_ARRIVAL,
    ),
    (V.Facts(CONFIRMED, V.CopyState.ABSENT), V.Reason.GONE),
    (V.Facts(CONFIRMED, SAME, original=V.Original.UNUSABLE), V.Reason.ORIGINAL_UNUSABLE),
    (V.Facts(V.AnchorState.UNCONFIRMED, V.CopyState.UNCOMPARED), V.Reason.ANCHOR_UNCONFIRMED),
    (V.Facts(V.AnchorState.NONE, SAME, pending=True, overdue=True), V.Reason.NEVER_ANCHORED),
    (V.Facts(V.AnchorState.NONE, V.CopyState.UNCOMPARED), V.Reason.NO_RECORD),
    (V.Facts(CONFIRMED, SAME, retired=True), V.Reason.RETIRED),
    (V.Facts(CONFIRMED, V.CopyState.ABSENT, retired=True, erased=True), V.Reason.ERASED),
    (V.Facts(CONFIRMED, SAME, retired=True, erased=True), V.Reason.ERASED_COPY),
    (V.Facts(V.AnchorState.NONE, SAME, pending=True), V.Reason.IN_PROGRESS),
    (V.Facts(V.AnchorState.NONE, V.CopyState.ABSENT), None),  # nothing knows the instance
]


@pytest.mark.parametrize(("facts", "reason"), ROWS)
def test_each_status_row_follows_from_its_facts(
    facts: statuses.Facts, reason: statuses.Reason | None
) -> None:
    assert statuses.decide(facts) is reason


def test_every_reason_and_every_status_but_unverifiable_is_reached() -> None:
    reached = {reason for _, reason in ROWS if reason is not None}
    assert reached == set(statuses.Reason)
    assert {reason.status for reason in reached} == set(statuses.STATUSES) - {"unverifiable"}
    assert len({reason.code for reason in statuses.Reason}) == len(statuses.Reason)


def every_facts(**fixed: object) -> list[statuses.Facts]:
    """Every combination of facts (about 7,000), with the ``fixed`` ones held."""
    choices: dict[str, Sequence[object]] = {
        "anchor": list(V.AnchorState), "copy": list(V.CopyState), "pending": (False, True),
        "overdue": (False, True), "retired": (False, True), "erased": (False, True),
        "original": list(V.Original),
        "same_pixels": (None, False, True), "changed_since_arrival": (False, True),
        "bytes_first": (False, True),
    }  # fmt: skip
    choices.update({name: (value,) for name, value in fixed.items()})
    return [
        V.Facts(**dict(zip(choices, values, strict=True)))  # type: ignore[arg-type]
        for values in itertools.product(*choices.values())
    ]


# --- the rules: precedence ------------------------------------------------------------------


def test_pending_beats_every_other_fact() -> None:
    # what lets the verifier skip the ledger and the PACS for a pending row
    for facts in every_facts(pending=True):
        expected = V.Reason.NEVER_ANCHORED if facts.overdue else V.Reason.IN_PROGRESS
        assert V.decide(facts) is expected, facts


def test_pending_beats_missing_and_unknown() -> None:
    # the verifier: a row on its way to the PACS is not yet in it
    assert V.decide(V.Facts(CONFIRMED, V.CopyState.ABSENT, pending=True)) is V.Reason.IN_PROGRESS
    assert V.decide(V.Facts(V.AnchorState.NONE, V.CopyState.ABSENT, pending=True)) is (
        V.Reason.IN_PROGRESS
    )


def test_retired_beats_tampered_and_missing_for_the_verifier_not_for_the_plugin() -> None:
    for copy in (V.CopyState.DIFFERS, V.CopyState.ABSENT):
        assert V.decide(V.Facts(CONFIRMED, copy, retired=True)) is V.Reason.RETIRED
    altered = V.Facts(CONFIRMED, V.CopyState.DIFFERS, retired=True, same_pixels=False)
    assert V.decide(replace(altered, bytes_first=True)) is V.Reason.PIXELS_CHANGED
    assert V.decide(V.Facts(CONFIRMED, SAME, retired=True, bytes_first=True)) is V.Reason.RETIRED


def test_erased_beats_every_fact_but_pending() -> None:
    # an erased record is never called missing (no copy is what erasure leaves) nor
    # tampered, retired or intact: a copy that is there at all reappeared
    for facts in every_facts(erased=True, pending=False):
        expected = V.Reason.ERASED if facts.copy is V.CopyState.ABSENT else V.Reason.ERASED_COPY
        assert V.decide(facts) is expected, facts
    for facts in every_facts(erased=True, pending=True):
        assert V.decide(facts) in (V.Reason.IN_PROGRESS, V.Reason.NEVER_ANCHORED), facts


def test_an_erased_copy_is_never_served() -> None:
    assert not statuses.SERVED["erased"]
    assert statuses.TABLE["erased"].alert == "erased"


def test_an_unconfirmed_or_refuted_anchor_is_never_intact() -> None:
    for anchor in (V.AnchorState.UNCONFIRMED, V.AnchorState.REFUTED):
        reasons = {V.decide(facts) for facts in every_facts(anchor=anchor)}
        assert V.Reason.VERIFIED not in reasons
        assert None not in reasons  # an unconfirmed claim is never "unknown" either
    for bytes_first in (False, True):
        best = V.Facts(
            V.AnchorState.UNCONFIRMED, SAME, original=V.Original.OK, bytes_first=bytes_first
        )
        assert V.decide(best) is V.Reason.ANCHOR_UNCONFIRMED


def test_an_unconfirmed_claim_beats_unregistered_and_retired() -> None:
    assert V.decide(V.Facts(V.AnchorState.UNCONFIRMED, V.CopyState.ABSENT)) is (
        V.Reason.ANCHOR_UNCONFIRMED
    )
    assert V.decide(V.Facts(V.AnchorState.UNCONFIRMED, SAME, retired=True, bytes_first=True)) is (
        V.Reason.ANCHOR_UNCONFIRMED
    )


def test_store_corrupt_only_for_a_copy_that_is_the_recorded_version() -> None:
    unusable = V.Original.UNUSABLE
    assert V.decide(V.Facts(CONFIRMED, SAME, original=unusable)) is V.Reason.ORIGINAL_UNUSABLE
    assert V.decide(V.Facts(CONFIRMED, V.CopyState.ABSENT, original=unusable)) is V.Reason.GONE
    differs = V.Facts(CONFIRMED, V.CopyState.DIFFERS, original=unusable, same_pixels=True)
    assert V.decide(differs) is V.Reason.HEADER_CHANGED
    assert V.decide(V.Facts(CONFIRMED, SAME, original=unusable, retired=True)) is V.Reason.RETIRED
    # an original that was not opened says nothing against the copy
    assert V.decide(V.Facts(CONFIRMED, SAME, original=V.Original.UNCHECKED)) is V.Reason.VERIFIED


def test_another_transfer_syntax_beats_the_ledgers_word() -> None:
    for anchor, retired in ((V.AnchorState.REFUTED, False), (V.AnchorState.UNCONFIRMED, False),
                            (CONFIRMED, True)):  # fmt: skip
        facts = V.Facts(anchor, V.CopyState.REENCODED, retired=retired, bytes_first=True)
        assert V.decide(facts) is V.Reason.REENCODED


def test_a_change_since_arrival_counts_only_without_a_record() -> None:
    for anchor in (CONFIRMED, V.AnchorState.UNCHECKED):
        assert V.decide(V.Facts(anchor, SAME, changed_since_arrival=True)) is V.Reason.VERIFIED


def test_foreign_versions_and_retirements_are_ignored() -> None:
    owner, rogue = "0x" + "11" * 20, "0x" + "66" * 20
    ruling = ownership.rule(
        [
            ownership.Anchoring(owner, ownership.Position(1), A, batched=False, item=None),
            ownership.Anchoring(rogue, ownership.Position(2), B, batched=False, item=None),
        ],
        [ownership.Retiring(rogue, ownership.Position(3), "wrong patient")],
        ownership.Trust(configured=frozenset({owner})),
    )
    assert ruling.newest is not None and ruling.newest.digest == A and ruling.retirement is None
    # the rogue's version is no record: a copy of it differs from the owner's version
    gathered = V.Facts(CONFIRMED, V.CopyState.DIFFERS, retired=ruling.retirement is not None)
    assert V.decide(gathered) is V.Reason.ALTERED
    # and the plugin: a mirror that saw a foreign write still confirms the owner's version
    facts = {A: LedgerFacts(on_chain=True, synced_block=20, foreign=(rogue,))}
    verdict = judge(sop_instance_uid=UID, digest_now=A, versions=(version(),), ledger=facts)
    assert (verdict.status, verdict.reason) == ("intact", V.Reason.VERIFIED)


# --- the plugin and the verifier agree ------------------------------------------------------

B = b"\xbb" * 32
MIRROR = {A: LedgerFacts(on_chain=True, synced_block=20)}
RETIRED = {A: LedgerFacts(True, 20, plugin.RetirementFacts("0xAdmin", "wrong patient", 15, None))}
#: A case both see: what the plugin is given, and the facts the Verifier gathers for it
#: (a ledger record, the PACS copy, a sealed original that opens).
ERASED = {A: LedgerFacts(True, 20, plugin.RetirementFacts("0xAdmin", "erased", 15, None))}
SHARED: dict[str, tuple[dict[str, object], statuses.Facts]] = {
    "an erased image's copy reappears": (
        {"digest_now": A, "versions": (version(),), "ledger": ERASED},
        V.Facts(CONFIRMED, SAME, retired=True, erased=True, original=V.Original.OK),
    ),
    "intact": (
        {"digest_now": A, "versions": (version(),), "ledger": MIRROR},
        V.Facts(CONFIRMED, SAME, original=V.Original.OK),
    ),
    "header edited": (
        {"digest_now": B, "versions": (version(),), "ledger": MIRROR, "changed": "header"},
        V.Facts(CONFIRMED, V.CopyState.DIFFERS, original=V.Original.OK, same_pixels=True),
    ),
    "pixels edited": (
        {"digest_now": B, "versions": (version(),), "ledger": MIRROR, "changed": "pixels"},
        V.Facts(CONFIRMED, V.CopyState.DIFFERS, original=V.Original.OK, same_pixels=False),
    ),
    "retired, unaltered": (
        {"digest_now": A, "versions": (version(),), "ledger": RETIRED},
        V.Facts(CONFIRMED, SAME, retired=True, original=V.Original.OK),
    ),
    "no record": (
        {"digest_now": A, "versions": ()},
        V.Facts(V.AnchorState.NONE, V.CopyState.UNCOMPARED),
    ),
    "received, not anchored": (
        {"digest_now": A, "versions": (version(anchored=False),)},
        V.Facts(V.AnchorState.NONE, SAME, pending=True),
    ),
    "anchor the ledger cannot confirm": (
        {
            "digest_now": A,
            "versions": (version(block=30),),
            "ledger": {A: LedgerFacts(on_chain=None, synced_block=20)},
        },
        V.Facts(V.AnchorState.UNCONFIRMED, V.CopyState.UNCOMPARED),
    ),
}


@pytest.mark.parametrize("case", SHARED)
def test_the_plugins_judge_and_the_verifiers_rules_agree(case: str) -> None:
    given, verifier = SHARED[case]
    verdict = judge(sop_instance_uid=UID, now=1_000.0, **given)  # type: ignore[arg-type]
    assert verdict.reason is V.decide(verifier)
    assert verdict.reason is not None and verdict.status == verdict.reason.status
    assert verdict.served == statuses.SERVED[verdict.status]


def test_where_they_differ_on_purpose_a_fact_says_so() -> None:
    # an altered copy of a retired record: refused by the plugin, "retired" for an auditor
    given = {"digest_now": B, "versions": (version(),), "ledger": RETIRED, "changed": "pixels"}
    facts = plugin.read_facts(**given)  # type: ignore[arg-type]
    assert facts.bytes_first and facts.retired
    assert judge(sop_instance_uid=UID, **given).status == "tampered"  # type: ignore[arg-type]
    assert V.decide(replace(facts, bytes_first=False)) is V.Reason.RETIRED
    # the plugin opens no sealed original: store_corrupt is the verifier's alone
    assert facts.original is V.Original.UNCHECKED


def test_the_plugin_words_every_reason_its_facts_lead_to() -> None:
    reachable = {
        V.decide(facts)
        for facts in every_facts(bytes_first=True, original=V.Original.UNCHECKED)
        if facts.copy is not V.CopyState.ABSENT  # a file gone is the guard's `missing`
    }
    assert reachable == set(plugin._WORDS)


def test_the_plugin_knows_an_erasure_from_the_index_before_its_mirror() -> None:
    # the mirror has not read the retirement yet; the index's row says erased already
    erased = replace(version(), erased=True)
    verdict = judge(sop_instance_uid=UID, digest_now=A, versions=(erased,), ledger=MIRROR, now=1.0)
    assert verdict.status == "erased" and not verdict.served
    assert judge(
        sop_instance_uid=UID, digest_now=A, versions=(version(),), ledger=MIRROR
    ).status == ("intact")
