"""The index's two engines behind one small seam: SQLite (embedded default) and PostgreSQL.

The index's SQL is written once, in SQLite's spelling with ``?`` placeholders; the
PostgreSQL connection translates what differs (placeholders, column types) and supplies
what each engine does its own way: the write transaction (``BEGIN IMMEDIATE`` vs a plain
``BEGIN`` with row locks), the row-lock clause of a claim's ``SELECT`` (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, nothing on SQLite, whose one writer already excludes the others),
the columns of a table, an advisory lock for decisions that must not race across
processes, and the errors an engine raises.

Why thin backends on :mod:`sqlite3` and :mod:`psycopg` rather than SQLAlchemy Core: the
ack waits for ``add_received``, one statement, and a thin backend adds nothing to it
(docs/architecture.md, "The index on two engines", has the numbers).
"""

from __future__ import annotations

import functools
import re
import sqlite3
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import psycopg

from gateway.errors import IndexUnavailable
from gateway.redact import redact_text, redact_url

#: Every error an engine raises for a statement (what callers that read may catch).
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)
#: A row lock asked for with ``NOWAIT`` is held by another transaction (PostgreSQL only:
#: SQLite's one writer never meets another's row lock).
LOCK_BUSY_ERRORS: tuple[type[Exception], ...] = (psycopg.errors.LockNotAvailable,)
#: A constraint refused a write (a second row for one spool entry, say).
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, psycopg.IntegrityError)

_SCHEMES = ("postgresql://", "postgres://")

RowLock = Literal["skip", "nowait"]
"""How a claim's ``SELECT`` locks what it reads: ``skip`` passes over rows another
transaction has locked (they are being claimed), ``nowait`` fails at once on one
(:data:`LOCK_BUSY_ERRORS`) instead of queueing behind it."""


def is_postgres(location: Path | str) -> bool:
    """Whether ``location`` names a PostgreSQL database (a ``postgresql://`` URL)."""
    return isinstance(location, str) and location.startswith(_SCHEMES)


def describe(location: Path | str) -> str:
    """``location`` as messages may show it: a URL without its password."""
    return redact_url(str(location)) if is_postgres(location) else str(location)


class Cursor(Protocol):
    """What a statement gives back on either engine."""

    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> list[Any]: ...

    def fetchone(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """One connection to the index database, used under the index's lock."""

    engine: str  # "sqlite" or "postgresql"

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None: ...

    def begin(self) -> None:
        """Start a write transaction."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def serialize(self, key: bytes) -> None:
        """Inside a transaction: wait for any other writer deciding on ``key`` to commit."""
        ...

    def row_lock(self, how: RowLock) -> str:
        """The clause ending a ``SELECT`` that locks the rows it returns ("" where the
        transaction itself already excludes every other writer)."""
        ...

    def ddl(self, sql: str) -> str:
        """A ``CREATE``/``ALTER`` statement in this engine's spelling."""
        ...

    def columns(self, table: str) -> set[str]:
        """The column names of ``table`` (empty if there is no such table)."""
        ...

    def close(self) -> None: ...


class SqliteConnection:
    """SQLite in WAL mode with ``synchronous=FULL``: a committed row survives power loss."""

    engine = "sqlite"

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        if readonly:
            if not path.is_file():
                raise FileNotFoundError(f"no index at {path}")
            self._db = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False,
                isolation_level=None,
            )  # fmt: skip
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        # several processes write (listener, workers): wait for the write lock, never fail fast
        self._db.execute("PRAGMA busy_timeout = 60000")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self._db.execute(sql, tuple(params))

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, params)

    def begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")  # the one writer: decisions cannot race

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        self._db.execute("ROLLBACK")

    def serialize(self, key: bytes) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already holds the database's one write lock."""

    def row_lock(self, how: RowLock) -> str:
        return ""  # SQLite has no row locks: ``BEGIN IMMEDIATE`` makes the claimer the one writer

    def ddl(self, sql: str) -> str:
        return sql

    def columns(self, table: str) -> set[str]:
        return {str(r[1]) for r in self._db.execute(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        self._db.close()


# SQLite's spelling -> PostgreSQL's, for the schema's statements only.
_PG_TYPES = (
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),  # SQLite's integers are 64-bit
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),  # PostgreSQL's REAL is 32-bit: no
    (re.compile(r"\bBLOB\b"), "BYTEA"),
)


@functools.lru_cache(maxsize=1024)
def pg_placeholders(sql: str) -> str:
    """``sql`` with psycopg's ``%s`` for each ``?`` (the index's SQL holds no literal ``?``)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _is_read(sql: str) -> bool:
    return sql.lstrip()[:6].upper() == "SELECT"


class PostgresConnection:
    """PostgreSQL through psycopg 3, in autocommit mode: one statement is one transaction,
    and :meth:`begin` opens a longer one explicitly.

    ``readonly=True`` makes every transaction of the session read-only. The password in
    the URL never reaches a message: errors carry the URL without it.
    """

    engine = "postgresql"

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self._url = url
        self._readonly = readonly
        self._in_transaction = False
        self._db = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            db = psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise IndexUnavailable(
                f"cannot connect to the index at {redact_url(self._url)}: {self._redacted(exc)}"
            ) from None  # the cause may quote the URL
        if self._readonly:
            db.execute("SET default_transaction_read_only = on")
        return db

    def _redacted(self, exc: BaseException) -> str:
        text = redact_text(str(exc).strip())
        password = psycopg.conninfo.conninfo_to_dict(self._url).get("password")
        return text.replace(str(password), "***") if password else text

    def _live(self) -> psycopg.Connection[Any]:
        if self._db.closed or self._db.broken:  # the server restarted: a new session
            self._db = self._connect()
        return self._db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        try:
            return self._live().execute(pg_placeholders(sql), tuple(params))
        except psycopg.OperationalError:
            # A read outside a transaction on a session the server dropped (a restart) is
            # run once more on a new one; a write is not: whether it ran is unknown, and
            # its caller decides (the C-STORE is refused, a stage is retried).
            if self._in_transaction or not self._db.broken or not _is_read(sql):
                raise
            return self._live().execute(pg_placeholders(sql), tuple(params))

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        with self._live().cursor() as cursor:
            cursor.executemany(pg_placeholders(sql), list(params))

    def begin(self) -> None:
        try:
            self._live().execute("BEGIN")
        except psycopg.OperationalError:
            if not self._db.broken:
                raise
            self._live().execute("BEGIN")  # nothing ran on the dropped session: a new one
        self._in_transaction = True

    def commit(self) -> None:
        self._in_transaction = False
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        self._in_transaction = False
        if not (self._db.closed or self._db.broken):
            self._db.execute("ROLLBACK")

    def serialize(self, key: bytes) -> None:
        # A transaction-scoped advisory lock: another process deciding on the same key
        # (the same record, the same batch table) waits until this transaction ends.
        self._db.execute("SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(key),))

    def row_lock(self, how: RowLock) -> str:
        return {"skip": " FOR UPDATE SKIP LOCKED", "nowait": " FOR UPDATE NOWAIT"}[how]

    def ddl(self, sql: str) -> str:
        for pattern, replacement in _PG_TYPES:
            sql = pattern.sub(replacement, sql)
        return sql

    def columns(self, table: str) -> set[str]:
        rows = self._live().execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        )
        return {str(name) for (name,) in rows.fetchall()}

    def close(self) -> None:
        self._db.close()


def connect(location: Path | str, *, readonly: bool = False) -> Connection:
    """A connection to the index at ``location``: a SQLite file, or a ``postgresql://`` URL."""
    if is_postgres(location):
        return PostgresConnection(str(location), readonly=readonly)
    return SqliteConnection(Path(location), readonly=readonly)
