"""The committed browser assets are the pinned npm packages' files, and the docs pages use only them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from gateway.api.app import Health, create_app
from gateway.api.assets import STATIC, VENDORED, vendored_path
from tests.serve import serve

REPO = Path(__file__).resolve().parents[3]
NODE_MODULES = REPO / "node_modules"


@pytest.mark.parametrize(
    ("package", "file"), [(package, file) for package, files in VENDORED.items() for file in files]
)
def test_each_vendored_file_is_the_pinned_packages_own(package: str, file: str) -> None:
    pinned = json.loads((REPO / "package.json").read_text())["dependencies"][package]
    installed = json.loads((NODE_MODULES / package / "package.json").read_text())["version"]
    assert installed == pinned, f"node_modules holds {package} {installed}; run make npm"
    assert (
        vendored_path(package, file).read_bytes() == (NODE_MODULES / package / file).read_bytes()
    ), f"static/vendor/{package}/{Path(file).name} differs from the pinned package: run make vendor"


def test_the_vendor_folder_holds_nothing_unlisted() -> None:
    listed = {vendored_path(package, file) for package, files in VENDORED.items() for file in files}
    present = {path for path in (STATIC / "vendor").rglob("*") if path.is_file()}
    assert present == listed


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_every_script_and_stylesheet_from_the_gateway(page: str) -> None:
    with serve(create_app(health=Health())) as base, httpx.Client(base_url=base) as client:
        answer = client.get(page)
        html = answer.text
        assert "default-src 'self'" in answer.headers["content-security-policy"]
        urls = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert urls, html
        for url in urls:
            assert url.startswith("/static/vendor/"), url
            assert client.get(url).status_code == 200, url
    assert "fonts.googleapis" not in html
    assert "cdn" not in html.lower()
