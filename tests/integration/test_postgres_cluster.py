"""The tests' PostgreSQL cluster: a real server on a free port, databases and roles."""

from __future__ import annotations

import psycopg
import pytest

from tests.integration.postgres import PostgresCluster


def test_the_cluster_serves_its_own_databases_on_its_own_port(postgres: PostgresCluster) -> None:
    assert postgres.port != 5432
    url = postgres.create_database()
    with psycopg.connect(url) as db:
        db.execute("CREATE TABLE t (x int)")
        db.execute("INSERT INTO t VALUES (1)")
        assert db.execute("SELECT count(*) FROM t").fetchone() == (1,)
        assert db.execute("SHOW fsync").fetchone() == ("on",)


def test_a_role_made_for_a_reader_logs_in_and_has_no_rights(postgres: PostgresCluster) -> None:
    url = postgres.create_database()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE secret (x int)")
    postgres.create_role("reader_one")
    reader = postgres.url(url.rsplit("/", 1)[1], user="reader_one")
    with psycopg.connect(reader) as db, pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("SELECT * FROM secret")
