"""What an auditor's tools lean on, against a real ``up``: the API docs offline, ..."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.browser import OfflineBrowser
from tests.integration.gateway_proc import Up, gateway_env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = Up(gateway_env(tmp_path_factory.mktemp("api-auditing") / "var"))
    try:
        yield up
    finally:
        assert up.stop() == 0


def origin(up: Up) -> str:
    return f"http://127.0.0.1:{up.api_port}"


def test_swagger_ui_renders_with_the_network_cut(
    stack: Up, offline_browser: OfflineBrowser
) -> None:
    with offline_browser.page(origin(stack)) as cut:
        cut.page.goto("/docs")
        cut.page.wait_for_selector(".opblock-summary-path")
        paths = cut.page.locator(".opblock-summary-path").all_inner_texts()
        assert "/v1/audits" in [path.replace("\u200b", "") for path in paths]
        cut.page.locator(".models").scroll_into_view_if_needed()
        assert "ProblemDetails" in cut.page.locator(".models").inner_text()
    assert cut.left == []


def test_redoc_renders_with_the_network_cut(stack: Up, offline_browser: OfflineBrowser) -> None:
    with offline_browser.page(origin(stack)) as cut:
        cut.page.goto("/redoc")
        cut.page.wait_for_selector("h2:has-text('Start Audit')")
        menu = cut.page.locator(".menu-content").inner_text().split()
        assert {"verify", "audits", "records", "alerts", "health"} <= set(menu)
        # the response sample Redoc builds from the AuditState schema
        samples = cut.page.locator("h3:has-text('Response samples')").first
        assert samples.count() == 1
        assert '"requested_by"' in cut.page.inner_text("body")
    assert cut.left == []
