"""Headless Chromium from Debian, as a radiologist's browser: DOM dumps and screenshots."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--hide-scrollbars",
    # Explorer and the viewer load data with XHRs after the page: let them finish
    "--virtual-time-budget=15000",
)


def with_login(url: str, user: str, password: str) -> str:
    """``http://user:password@host:port/...``: Chromium sends it as HTTP basic auth."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{rest}"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    # a fresh profile per run: no cache, no stored credentials between runs
    with tempfile.TemporaryDirectory(prefix="xray-chromium-") as profile:
        return subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip


def dump_dom(url: str) -> str:
    """The page's DOM after its scripts ran."""
    result = _run("--dump-dom", url)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def screenshot(url: str, path: Path, *, size: tuple[int, int] = (1280, 900)) -> Path:
    """A PNG of the page as the radiologist sees it."""
    result = _run(f"--window-size={size[0]},{size[1]}", f"--screenshot={path}", url)
    assert result.returncode == 0, result.stderr[-2000:]
    assert path.exists(), result.stderr[-2000:]
    return path
