"""The bench's pure pieces: how a series is split over associations, the percentile, and
the order of a timed workload's steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.bench import ingest
from gateway.bench.ingest import percentile
from gateway.bench.parallel import split


def test_the_ct_series_is_split_into_eight_associations_of_25() -> None:
    files = [Path(f"{i:03}.dcm") for i in range(200)]
    parts = split(files, 8)
    assert [len(part) for part in parts] == [25] * 8
    assert [f for part in parts for f in part] == files  # each slice once, in order


def test_an_uneven_split_differs_by_one_and_sends_no_empty_association() -> None:
    files = [Path(f"{i}.dcm") for i in range(10)]
    assert [len(part) for part in split(files, 4)] == [3, 3, 2, 2]
    assert [len(part) for part in split(files[:3], 8)] == [1, 1, 1]
    with pytest.raises(ValueError):
        split(files, 0)


def test_the_percentile_is_a_measured_value_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1 … 100, given in reverse: order does not matter
    assert percentile(list(reversed(values)), 95) == 95.0
    assert percentile(values, 50) == 50.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == 4.0  # ceil(3.8) = 4th


def test_a_timed_workload_starts_after_the_dirty_pages_are_written_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps: list[str] = []

    class Meter:
        def snapshot(self) -> str:
            steps.append("snapshot")
            return "snapshot"

    monkeypatch.setattr("gateway.bench.ingest.os.sync", lambda: steps.append("sync"))
    assert ingest.opened(Meter()) == "snapshot"  # type: ignore[arg-type,comparison-overlap]
    assert steps == ["sync", "snapshot"]  # the window opens on a settled disk
