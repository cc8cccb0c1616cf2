"""Headless Chromium from Debian, as a radiologist's or an auditor's browser.

Two ways to drive it: the command line (:func:`dump_dom`, :func:`screenshot`), and
Playwright for Python (:class:`OfflineBrowser`) for pages to click through with the
network cut: only the gateway's own origin answers, every other request is aborted and
recorded. Playwright launches Debian's ``chromium`` (``executable_path``); it never
downloads a browser of its own.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from playwright.sync_api import Browser, Page, Playwright, Route, sync_playwright

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


def origin_of(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of an http(s) URL, the default port made explicit."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, parts.hostname or "", parts.port or default


@dataclass
class CutOff:
    """A page whose requests reach ``origin`` only; ``left`` lists every other one it tried."""

    page: Page
    origin: str
    left: list[str] = field(default_factory=list)

    def _route(self, route: Route) -> None:
        url = route.request.url
        if origin_of(url) == origin_of(self.origin):
            route.continue_()
        else:
            self.left.append(url)
            route.abort("internetdisconnected")


class OfflineBrowser:
    """Debian's Chromium under Playwright, as a machine on a hospital network with no internet.

    Two cuts: every request the page makes to another origin is aborted by a route (and
    recorded in :attr:`CutOff.left`), and Chromium's own resolver knows no host but the
    loopback (``--host-resolver-rules``), so that nothing a route cannot see (a
    prefetch, a WebSocket) leaves the machine either.
    """

    ARGS = (
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-domain-reliability",
        "--no-pings",
    )

    def __init__(self) -> None:
        self._playwright: Playwright = sync_playwright().start()
        try:
            self.browser: Browser = self._playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=list(self.ARGS)
            )
        except BaseException:
            self._playwright.stop()
            raise

    def close(self) -> None:
        self.browser.close()
        self._playwright.stop()

    @contextlib.contextmanager
    def page(
        self, origin: str, *, token: str | None = None, size: tuple[int, int] = (1280, 900)
    ) -> Iterator[CutOff]:
        """A fresh context (no cookies, no cache) whose one page may reach ``origin`` only.

        ``token``: sent as ``Authorization: Bearer`` on every request, as the API wants it.
        """
        headers = {"Authorization": f"Bearer {token}"} if token else None
        context = self.browser.new_context(
            base_url=origin,
            extra_http_headers=headers,
            service_workers="block",
            viewport={"width": size[0], "height": size[1]},
        )
        try:
            cut = CutOff(page=context.new_page(), origin=origin)
            context.route("**/*", cut._route)
            yield cut
        finally:
            context.close()
