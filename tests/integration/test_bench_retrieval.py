"""The retrieval benchmark runs end to end on a few slices (its numbers are for `bench`, not asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.bench.retrieval import retrieval_overhead

pytestmark = pytest.mark.integration


def test_retrieval_overhead_reports_both_paths(tmp_path: Path) -> None:
    messages: list[str] = []
    result = retrieval_overhead(workdir=tmp_path, slices=3, progress=messages.append, repetitions=1)
    for key in ("retrieval_overhead_pct", "raw_retrieval_overhead_pct"):
        assert isinstance(result[key], float)
    for key in (
        "viewer_with_plugin_s",
        "viewer_without_plugin_s",
        "raw_with_plugin_s",
        "raw_without_plugin_s",
    ):
        assert result[key] > 0
    assert len(result["runs_s"]["raw_with"]) == 3 and len(result["runs_s"]["viewer_without"]) == 1
    assert result["slices"] == 3 and messages
    assert not (tmp_path / "retrieval").exists()  # it cleans up after itself
