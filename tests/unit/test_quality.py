"""The house rules that tools can check: ruff on everything, mypy --strict on gateway/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.procs import PROJECT_ROOT

BIN = Path(sys.executable).parent


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [str(BIN / "ruff"), "check", "gateway", "tests", "dicom_fixtures", "docker"],
        cwd=PROJECT_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = subprocess.run(
        [str(BIN / "mypy")], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
