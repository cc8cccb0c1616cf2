"""Retention: the studies past their modality's period are listed, inside the window only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.index.db import Index
from gateway.index.erasure import retention_due
from gateway.trust.retention import DAY_S, RetentionJob, in_window, list_due

NOW = 1_800_000_000.0  # a Tuesday, 2027-01-15 08:00 UTC


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    found = Index(tmp_path / "index.sqlite")
    yield found
    found.close()


def received(index: Index, *, study: str, modality: str, days_ago: float, stage: str) -> None:
    row_id = index.add_received(
        entry_id=f"e{study.replace('.', '')}{modality}", sop_instance_uid=f"{study}.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", calling_aet="CT1", size=10,
    )  # fmt: skip
    index.update(
        row_id, stage=stage, modality=modality, study_instance_uid=study,
        received_at=NOW - days_ago * DAY_S,
    )  # fmt: skip


def test_only_committed_studies_past_their_modality_s_period_are_listed(index: Index) -> None:
    received(index, study="1.1", modality="CT", days_ago=11 * 365.25, stage="committed")
    received(index, study="1.2", modality="CT", days_ago=9 * 365.25, stage="committed")
    received(index, study="1.3", modality="CR", days_ago=6 * 365.25, stage="committed")
    received(index, study="1.4", modality="US", days_ago=40 * 365.25, stage="committed")
    received(index, study="1.5", modality="CR", days_ago=6 * 365.25, stage="erased")
    due = list_due(index, {"CT": 10 * 365.25, "CR": 5 * 365.25}, now=NOW)
    assert sorted(item.study_instance_uid for item in due) == ["1.1", "1.3"]
    assert retention_due(index) == sorted(due, key=lambda item: item.due_at)
    # nothing was erased: the rows are as they were
    assert {stage for (stage,) in index.query("SELECT stage FROM instances")} == {
        "committed", "erased",
    }  # fmt: skip


def test_the_window_may_wrap_midnight() -> None:
    day = NOW - NOW % DAY_S
    assert in_window((120, 300), day + 150 * 60)
    assert not in_window((120, 300), day + 300 * 60)
    assert in_window((1380, 240), day + 23.5 * 3600) and in_window((1380, 240), day + 60)
    assert not in_window((1380, 240), day + 12 * 3600)


def test_the_job_lists_once_a_day_inside_the_window(index: Index) -> None:
    received(index, study="1.1", modality="CT", days_ago=11 * 365.25, stage="committed")
    job = RetentionJob(index, periods={"CT": 3652.5}, window=(120, 300))
    day = NOW - NOW % DAY_S
    assert not job.tick(day + 12 * 3600)  # outside the window
    assert retention_due(index) == []
    assert job.tick(day + 3 * 3600)
    assert not job.tick(day + 3.5 * 3600)  # listed today already
    assert job.tick(day + DAY_S + 3 * 3600)
    assert [item.study_instance_uid for item in retention_due(index)] == ["1.1"]
