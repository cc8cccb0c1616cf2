"""`xray-gateway up` with its index on PostgreSQL: instances sent with DCMTK end up intact,
`status` reads the same database, and the URL's password shows nowhere."""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from pydicom import dcmread

import dicom_fixtures
from gateway.index import schema
from gateway.index.db import Index
from gateway.ingest.wakeup import CHANNEL
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env, run
from tests.integration.postgres import PostgresCluster
from tests.unit.index.test_db import set_version

pytestmark = pytest.mark.integration

COUNT = 6


@dataclass
class Stack:
    up: Up
    series: list[Path]
    postgres: PostgresCluster
    url: str  # the index's database, as the superuser


@pytest.fixture(scope="module")
def stack(postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`up` on a fresh PostgreSQL database, the series sent with storescu and committed."""
    root = tmp_path_factory.mktemp("up-postgres")
    series = dicom_fixtures.ct_series(
        root / "series", COUNT, rows=32, cols=32, study_uid="1.2.826.0.1.3680043.10.1138.14.1",
        prefix="1.2.826.0.1.3680043.10.1138.14.2.",
    )  # fmt: skip
    url = postgres.create_database()
    reader = f"xray_evidence_{secrets.token_hex(4)}"  # the plugin's read-only role
    postgres.create_role(reader)
    env = gateway_env(
        root / "var",
        GATEWAY_INDEX_URL=url,
        GATEWAY_PLUGIN_INDEX_URL=postgres.url(url.rsplit("/", 1)[1], user=reader),
    )
    up = Up(env)
    try:
        sent = storescu(up.dicom_port, series)
        assert sent.returncode == 0, sent.stdout[-2000:]
        rows = up.wait_done(COUNT)
        assert sorted(r["stage"] for r in rows) == ["committed"] * COUNT
        yield Stack(up, series, postgres, url)
    finally:
        assert up.stop() == 0
    assert postgres.password not in (root / "up.log").read_text()
    assert not (up.data_dir / "index.sqlite").exists()  # no second index beside PostgreSQL


def test_up_on_postgres_commits_what_it_acked_and_verifies_it_intact(stack: Stack) -> None:
    up, password = stack.up, stack.postgres.password
    token = (up.data_dir / "api-token").read_text().strip()
    with httpx.Client(
        base_url=f"http://127.0.0.1:{up.api_port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    ) as api:
        for path in stack.series:
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            verdict = api.get(f"/v1/instances/{uid}/verify").json()
            assert verdict["status"] == "intact", verdict

    status = run(up.env, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["stages"]["committed"] == COUNT and report["pending"] == 0
    assert report["index"].startswith("postgresql://127.0.0.1:")
    assert password not in status.stdout + status.stderr
    assert password not in "".join(up.banner)


def test_the_embedded_orthanc_plugin_checks_reads_against_the_postgres_index(
    stack: Stack,
) -> None:
    db = sqlite3.connect(f"file:{stack.up.data_dir / 'alerts.sqlite'}?mode=ro", uri=True)
    try:
        said = [
            d for (d,) in db.execute("SELECT detail FROM alerts WHERE source = 'orthanc-plugin'")
        ]
    finally:
        db.close()
    assert not [d for d in said if "could not be checked" in d], said


def test_up_on_postgres_rings_its_workers_with_notify(stack: Stack) -> None:
    """The listener's doorbell sent NOTIFY on the index's database and the worker LISTENs
    there (what wakes workers on other hosts), with no wake-up socket beside them."""
    run_dir = stack.up.data_dir / "run"
    assert (run_dir / "worker-up-1.listening").exists()
    assert not list(run_dir.glob("*.sock"))
    with psycopg.connect(stack.url, autocommit=True) as db:
        sessions = db.execute(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database()"
            " AND query IN (%s, %s) ORDER BY query",
            (f"LISTEN {CHANNEL}", f"NOTIFY {CHANNEL}"),
        ).fetchall()
    assert [q for (q,) in sessions] == [f"LISTEN {CHANNEL}", f"NOTIFY {CHANNEL}"]


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_up_refuses_an_index_written_by_a_newer_gateway_before_starting_anything(
    postgres: PostgresCluster, tmp_path: Path, engine: str
) -> None:
    data_dir = tmp_path / "var"
    location: Path | str = data_dir / "index.sqlite"
    if engine == "postgresql":
        location = postgres.create_database()
    data_dir.mkdir()
    Index(location).close()
    set_version(location, schema.LATEST + 1)
    env = gateway_env(data_dir)
    if isinstance(location, str):
        env["GATEWAY_INDEX_URL"] = location
    refused = run(env, "up")
    assert refused.returncode == 1
    assert f"schema version {schema.LATEST + 1}" in refused.stderr
    assert "upgrade the gateway" in refused.stderr and postgres.password not in refused.stderr
    assert not (data_dir / "chain").exists() and not (data_dir / "orthanc").exists()
