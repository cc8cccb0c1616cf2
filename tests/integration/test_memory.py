"""A 1 GB multi-frame instance goes through the gateway with bounded memory (a measurement)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dicom_fixtures
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env

LIMIT_MB = 300


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set since it started."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def test_a_1gb_instance_is_received_and_sealed_in_bounded_memory(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    big = dicom_fixtures.large_multiframe(tmp_path / "large.dcm", target_bytes=1_000_000_000)
    up = Up(gateway_env(tmp_path / "var"))
    try:
        before = peak_rss_mb(up.pid)
        result = storescu(up.dicom_port, [big])
        assert result.returncode == 0, result.stdout[-2000:]
        rows = up.wait_done(1, timeout=900)
        assert rows[0]["stage"] == "committed"
        assert rows[0]["size"] > 1_000_000_000 * 0.99
        peak = peak_rss_mb(up.pid)
    finally:
        assert up.stop() == 0
    record_property("peak_rss_mb", round(peak, 1))
    (tmp_path.parent / "rss_1gb.json").write_text(
        json.dumps({"before_mb": before, "peak_mb": peak})
    )
    print(
        f"gateway peak RSS while receiving and sealing 1 GB: {peak:.0f} MB (at start {before:.0f} MB)"
    )
    assert peak < LIMIT_MB, f"peak RSS {peak:.0f} MB"
