"""The gateway's index in PostgreSQL for the plugin tests: its tables, rows copied from an
SQLite index the tests recorded, the plugin's view and its read-only role.

The tables are the gateway's own: opening :class:`gateway.index.db.Index` on the URL runs
the schema's steps on PostgreSQL. Rows keep their ids, so the order of versions is the
same on both engines.
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import psycopg
from psycopg import sql

from gateway.index.db import Index
from gateway.index.evidence_view import prepare_evidence_reader
from tests.integration.postgres import PostgresCluster


def copy_index(sqlite_path: Path, url: str) -> int:
    """Create the tables in ``url`` (if absent) and copy the ``instances`` rows it lacks
    (by id: the same rows with the same ids on both engines); the count copied."""
    Index(url).close()  # the gateway's schema steps, on PostgreSQL
    source = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        cursor = source.execute("SELECT * FROM instances ORDER BY id")
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    finally:
        source.close()
    insert = sql.SQL("INSERT INTO instances ({}) VALUES ({}) ON CONFLICT (id) DO NOTHING").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )
    with psycopg.connect(url) as db, db.cursor() as cur:
        cur.executemany(insert, rows)
    return len(rows)


def evidence_reader(cluster: PostgresCluster, url: str) -> str:
    """Make the plugin's view in ``url``'s database and a role that may read only it;
    that role's URL."""
    role = f"xray_evidence_{secrets.token_hex(4)}"
    cluster.create_role(role)
    prepare_evidence_reader(url, role)
    database = url.rsplit("/", 1)[1]
    return cluster.url(database, user=role)


def reader_connection(url: str) -> psycopg.Connection[tuple[object, ...]]:
    """A connection as the reader, its session turned read-write (to test its rights alone)."""
    db = psycopg.connect(url, autocommit=True)
    db.execute("SET default_transaction_read_only = off")
    return db
