"""Fixtures shared by the integration tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.index.db import Index
from gateway.ingest.receive import Receiver
from gateway.ingest.spool import Spool
from gateway.procs import free_port
from tests.integration.browser import OfflineBrowser
from tests.integration.postgres import PostgresCluster


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    """The listener alone, default limits, on a free port, over a spool and index in tmp."""
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    index = Index(tmp_path / "index.sqlite")
    rx = Receiver(spool=spool, index=index)
    rx.start(port=free_port())
    yield rx
    rx.stop()
    index.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One PostgreSQL cluster for the session (Debian's server, a temp dir, a free port).

    Not under pytest's tmp dir: that is private to root, and the server runs as postgres.
    Each test takes its own database with ``postgres.create_database()``.
    """
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="xray-pg-"))).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def offline_browser() -> Iterator[OfflineBrowser]:
    """Debian's headless Chromium under Playwright, one for the session; each test takes
    ``offline_browser.page(origin)``: a fresh context that reaches only ``origin``."""
    browser = OfflineBrowser()
    yield browser
    browser.close()
