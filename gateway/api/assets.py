"""Browser assets served by the gateway itself (``/static/``): no page of it loads from a CDN.

Clinical networks rarely reach the internet, so ``/docs``, ``/redoc`` and the console take
their scripts and stylesheets from ``gateway/api/static/``. Third-party files come from
npm packages pinned in ``package.json``/``package-lock.json``; :data:`VENDORED` names the
files taken from each, and ``make vendor`` (:func:`main`) copies them
from ``node_modules`` into ``static/vendor/<package>/``. The copies are committed, so that
``pip install .`` and the Docker image (no Node there) carry them as package data; a unit
test checks they are byte for byte what the pinned packages hold.

To add a library: ``npm install --save-exact <package>@<version>``, add its files here,
``make vendor``, commit the copies, and link them as ``/static/vendor/<package>/<file>``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")
VENDOR = STATIC / "vendor"
URL = "/static"

#: The docs pages may load from the gateway only. Redoc shows a logo from its vendor's
#: CDN (no option turns it off); this policy stops the browser from asking for it.
#: FastAPI's pages start the viewers with an inline script; Redoc's search runs in a
#: ``blob:`` worker; both viewers draw icons as ``data:`` images.
DOCS_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    )
)

#: npm package -> the files (paths inside the package) served from ``/static/vendor/<package>/``.
#: Each package's licence travels with its files.
VENDORED: dict[str, tuple[str, ...]] = {
    "swagger-ui-dist": (
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "favicon-32x32.png",
        "LICENSE",
        "NOTICE",
    ),
    "redoc": ("bundles/redoc.standalone.js", "bundles/redoc.standalone.js.LICENSE.txt", "LICENSE"),
    # The console (gateway/api/console.py): htmx for its live parts, Chart.js for its chart.
    "htmx.org": ("dist/htmx.min.js", "LICENSE"),
    "chart.js": ("dist/chart.umd.min.js", "LICENSE.md"),
}


def vendored_path(package: str, file: str) -> Path:
    """Where the copy of ``file`` (a path inside npm ``package``) lives in the source tree."""
    return VENDOR / package / Path(file).name


def vendored_url(package: str, file: str) -> str:
    """The URL the gateway serves the copy of ``file`` of ``package`` at."""
    return f"{URL}/vendor/{package}/{Path(file).name}"


def copy_vendored(node_modules: Path) -> list[Path]:
    """Copy every file of :data:`VENDORED` from ``node_modules``; returns the copies.

    Raises
    ------
    FileNotFoundError
        A package is not installed (run ``npm ci``), or no longer ships a listed file.
    """
    copied = []
    for package, files in VENDORED.items():
        for file in files:
            target = vendored_path(package, file)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(node_modules / package / file, target)
            copied.append(target)
    return copied


def _offline(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_POLICY
    return page


def install(app: FastAPI, *, openapi_url: str) -> None:
    """Serve ``/static/`` and the two API documentation pages, both from local assets.

    ``app`` must be built with ``docs_url=None, redoc_url=None``, so that FastAPI's own
    pages (which load from a CDN) are not registered.
    """
    app.mount(URL, StaticFiles(directory=STATIC), name="static")
    title = f"{app.title} API"
    favicon = vendored_url("swagger-ui-dist", "favicon-32x32.png")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return _offline(
            get_swagger_ui_html(
                openapi_url=openapi_url,
                title=title,
                swagger_js_url=vendored_url("swagger-ui-dist", "swagger-ui-bundle.js"),
                swagger_css_url=vendored_url("swagger-ui-dist", "swagger-ui.css"),
                swagger_favicon_url=favicon,
                # Swagger UI would send the schema to its public validator for a badge.
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return _offline(
            get_redoc_html(
                openapi_url=openapi_url,
                title=title,
                redoc_js_url=vendored_url("redoc", "bundles/redoc.standalone.js"),
                redoc_favicon_url=favicon,
                with_google_fonts=False,
            )
        )


def main(argv: list[str]) -> None:
    """``make vendor``: copy from the ``node_modules`` given (default ``./node_modules``)."""
    for path in copy_vendored(Path(argv[0] if argv else "node_modules")):
        print(path)
