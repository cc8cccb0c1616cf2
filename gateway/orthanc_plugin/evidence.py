"""The gateway's index as the plugin reads it: read-only, from SQLite or PostgreSQL.

Two engines: the SQLite file in the gateway's data dir (:class:`RecordBook`), or the
gateway's PostgreSQL index through the view made for the plugin, as a role that may only
read that view (:class:`PostgresRecordBook`, ``XrayGateway.IndexUrl``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import IndexUnavailable
from gateway.index import evidence_view
from gateway.index.queries import IS_FINGERPRINTED_VERSION
from gateway.orthanc_plugin.verdict import Version
from gateway.redact import redact_text, redact_url

# The versions a copy may legitimately be: the instance's fingerprinted versions (the
# index's rule, not restated here), oldest first.
VERSIONS_SQL = (
    "SELECT version, digest, pixel_digest, record_key, tx_hash, block_number, block_time,"
    " recorder, batch_id, leaf_index, transfer_syntax, patient_key, proof, received_at,"
    " erased FROM (SELECT *, stage = 'erased' AS erased FROM instances)"
    f" WHERE sop_instance_uid = ? AND {IS_FINGERPRINTED_VERSION} ORDER BY id"
)


class Records(Protocol):
    """The recorded versions of a SOP Instance UID, whatever engine holds them."""

    def versions(self, sop_instance_uid: str) -> tuple[Version, ...]:
        """Every recorded version of ``sop_instance_uid``, oldest first; empty if none.

        Raises :class:`~gateway.errors.IndexUnavailable` when the records cannot be read.
        """
        ...


class RecordBook:
    """Looks up the recorded versions of a SOP Instance UID in ``<data>/index.sqlite``.

    The index is opened read-only (``mode=ro``): the plugin never writes the gateway's
    records. A look-up borrows an open connection from a small set of idle ones and hands
    it back (at most ``keep`` stay open; more concurrent reads open more, closed after
    use), so a read costs one indexed query, not a connection. Not a
    ``threading.local``: Orthanc's Python plugin gives each callback a fresh Python thread
    state, which drops thread-local data, so a connection kept there was opened again on
    every read (0.6 ms each, measured: the schema is parsed anew). WAL lets these readers
    run beside the gateway's writer. Nothing is cached but open connections: every
    look-up queries the file.

    In docker the gateway's volume is mounted read-only and its files are not writable by
    Orthanc: SQLite then reads a WAL index only while the gateway has it open (its
    ``-wal`` and ``-shm`` exist). With the gateway stopped they are gone and the file is
    complete: it is read as immutable, one query at a time, never cached.
    """

    def __init__(self, path: Path, *, timeout: float = 5.0, keep: int = 8) -> None:
        self.path = path
        self.timeout = timeout
        self.keep = keep
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        """An open read-only connection: an idle one, else a new one (give it back after)."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        if not self.path.exists():
            raise IndexUnavailable(f"the gateway's index {self.path} does not exist")
        try:
            return sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=self.timeout,
                check_same_thread=False,  # used by one thread at a time, handed between them
            )  # fmt: skip
        except sqlite3.Error as exc:
            raise IndexUnavailable(f"the gateway's index cannot be opened: {exc}") from exc

    def _give_back(self, db: sqlite3.Connection) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(db)
                return
        db.close()

    def _rows(self, sop_instance_uid: str) -> list[tuple[Any, ...]]:
        db = self._connection()
        try:
            rows = list(db.execute(VERSIONS_SQL, (sop_instance_uid,)))
        except sqlite3.OperationalError:
            db.close()  # never handed out again
            if self.path.with_name(self.path.name + "-wal").exists():
                raise
        except BaseException:
            db.close()
            raise
        else:
            self._give_back(db)
            return rows
        # no writer (no -wal): the file is complete; read it as immutable, this once
        once = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, timeout=self.timeout
        )
        try:
            return list(once.execute(VERSIONS_SQL, (sop_instance_uid,)))
        finally:
            once.close()

    def versions(self, sop_instance_uid: str) -> tuple[Version, ...]:
        """Every recorded version of ``sop_instance_uid``, oldest first; empty if none."""
        try:
            rows = self._rows(sop_instance_uid)
        except sqlite3.Error as exc:
            raise IndexUnavailable(f"the gateway's index cannot be read: {exc}") from exc
        return _versions(rows)

    def close(self) -> None:
        """Close the idle connections (Orthanc stopping; tests)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()


class PostgresRecordBook:
    """Looks up the recorded versions in the gateway's PostgreSQL index, through the view.

    ``url`` names a role that may only ``SELECT`` from
    :data:`~gateway.index.evidence_view.VIEW` (see :mod:`gateway.index.evidence_view`).
    One query per look-up, on the index of ``sop_instance_uid``, prepared once per
    connection. Orthanc's threads share a small pool of autocommit, read-only connections
    (``psycopg_pool``; a connection per thread would log in again on each of Orthanc's
    many HTTP threads, a SCRAM handshake each). When the server cut them (a restart, a
    failover), the broken one is closed, the idle ones are checked, and the look-up is
    tried once more. The password never appears in a message:
    only the redacted URL does.
    """

    def __init__(self, url: str, *, timeout: float = 5.0, size: int = 4) -> None:
        self.url = url
        self.timeout = timeout
        self.size = size
        self._pool: Any = None
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        """The URL without its user, password or query (libpq takes a password there too)."""
        return redact_url(self.url).split("?", 1)[0]

    def _opened(self) -> Any:
        from psycopg_pool import ConnectionPool  # only with IndexUrl

        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self.size,
                    open=True,
                    timeout=self.timeout,
                    name="xray-evidence",
                    kwargs={
                        "autocommit": True,
                        "prepare_threshold": 0,
                        "connect_timeout": max(1, int(self.timeout)),
                        "options": "-c default_transaction_read_only=on",
                    },
                )
            return self._pool

    def versions(self, sop_instance_uid: str) -> tuple[Version, ...]:
        """Every recorded version of ``sop_instance_uid``, oldest first; empty if none."""
        import psycopg
        from psycopg_pool import PoolTimeout

        for attempt in (1, 2):
            try:
                with self._opened().connection() as db:
                    try:
                        rows = db.execute(
                            evidence_view.VERSIONS_SQL, (sop_instance_uid,)
                        ).fetchall()
                    except psycopg.OperationalError:
                        # cut by the server (restart, failover): libpq may still call it
                        # idle, and the pool would hand it out again; closed, it is replaced
                        db.close()
                        raise
                return _versions(rows)
            except PoolTimeout as exc:  # no connection could be made in time
                raise IndexUnavailable(
                    f"the gateway's index at {self.where} cannot be opened: {_first_line(exc)}"
                ) from None
            except psycopg.OperationalError as exc:
                if attempt == 1:
                    # the server cut every connection, idle ones too: test them all (one
                    # round trip each, on this error path only) before the second try
                    self._opened().check()
                    continue
                raise IndexUnavailable(
                    f"the gateway's index at {self.where} cannot be read: {_first_line(exc)}"
                ) from None
            except psycopg.Error as exc:  # no right on the view, no view: not retried
                raise IndexUnavailable(
                    f"the gateway's index at {self.where} cannot be read: {_first_line(exc)}"
                ) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the pool's connections (Orthanc stopping; tests)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def _first_line(exc: Exception) -> str:
    """The first line of a driver error (libpq adds the server's detail lines), redacted."""
    text = str(exc).strip()
    return redact_text(text.splitlines()[0]) if text else type(exc).__name__


def _versions(rows: Iterable[Any]) -> tuple[Version, ...]:
    """Rows of :data:`VERSIONS_SQL` (either engine's) as :class:`Version` s."""
    return tuple(
        Version(
            version=version,
            digest=bytes(digest),
            pixel_digest=bytes(pixel_digest) if pixel_digest is not None else None,
            record_key=bytes(record_key) if record_key is not None else None,
            tx_hash=tx_hash,
            block_number=block_number,
            block_time=block_time,
            recorder=recorder,
            batch_id=batch_id,
            leaf_index=leaf_index,
            transfer_syntax=transfer_syntax,
            patient_key=bytes(patient_key) if patient_key is not None else None,
            proof=bytes(proof) if proof is not None else None,
            received_at=received_at,
            erased=bool(erased),
        )
        for (version, digest, pixel_digest, record_key, tx_hash, block_number, block_time,
             recorder, batch_id, leaf_index, transfer_syntax, patient_key, proof,
             received_at, erased) in rows
    )  # fmt: skip
