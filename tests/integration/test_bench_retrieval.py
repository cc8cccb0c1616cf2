"""The retrieval benchmark runs end to end on a few slices (its numbers are for `bench`, not asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.bench.retrieval import retrieval_overhead, retrieval_overhead_on_postgres

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


def test_the_viewer_path_alone_with_the_floor_reports_each_orthancs_cpu(tmp_path: Path) -> None:
    """``--viewer --floor``: the viewer path of three Orthancs (plugin, none, do-nothing
    Python storage area), no raw passes; each one's CPU per slice is measured."""
    result = retrieval_overhead(
        workdir=tmp_path, slices=2, repetitions=2, floor=True, raw_files=False
    )
    for key in ("retrieval_overhead_pct", "viewer_floor_overhead_pct"):
        assert isinstance(result[key], float)
    for mode in ("with", "without", "floor"):
        assert result[f"viewer_cpu_ms_per_slice_{mode}"] > 0
        assert len(result["runs_s"][f"viewer_{mode}"]) == 2
    assert result["viewer_floor_s"] > 0
    assert not [key for key in result if key.startswith("raw_")]
    assert not [key for key in result["runs_s"] if key.startswith("raw_")]


def test_retrieval_overhead_with_the_plugin_reading_postgresql_through_its_view(
    tmp_path: Path,
) -> None:
    """The plugin judged every read with evidence it looked up in PostgreSQL through its
    read-only role, or kept from such a look-up while the index's notifications were heard:
    every slice looked up, and every raw read (3 slices, 4 passes) a hit or a look-up."""
    messages: list[str] = []
    result = retrieval_overhead_on_postgres(
        workdir=tmp_path, slices=3, progress=messages.append, repetitions=1
    )
    assert isinstance(result["raw_retrieval_overhead_pct"], float)
    assert result["raw_with_plugin_s"] > 0 and result["raw_without_plugin_s"] > 0
    assert result["index"].startswith("postgresql")
    assert result["evidence_lookups"] >= 3, result["evidence_lookups"]
    answered = sum(result[f"evidence_cache_{key}"] for key in ("hits", "misses", "bypassed"))
    assert answered >= 3 * 4 and result["evidence_lookups"] >= (
        result["evidence_cache_misses"] + result["evidence_cache_bypassed"]
    )
    assert any("PostgreSQL" in message for message in messages)
    assert not (tmp_path / "retrieval").exists()
