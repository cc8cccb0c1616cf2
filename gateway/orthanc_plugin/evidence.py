"""The gateway's index as the plugin reads it: read-only, one connection per Orthanc thread."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from gateway.errors import IndexUnavailable
from gateway.index.queries import IS_FINGERPRINTED_VERSION
from gateway.orthanc_plugin.verdict import Version

# The versions a copy may legitimately be: the instance's fingerprinted versions (the
# index's rule, not restated here), oldest first.
VERSIONS_SQL = (
    "SELECT version, digest, pixel_digest, record_key, tx_hash, block_number, block_time,"
    " recorder, batch_id, leaf_index, transfer_syntax, patient_key, proof, received_at"
    " FROM instances"
    f" WHERE sop_instance_uid = ? AND {IS_FINGERPRINTED_VERSION} ORDER BY id"
)


class RecordBook:
    """Looks up the recorded versions of a SOP Instance UID in ``<data>/index.sqlite``.

    The index is opened read-only (``mode=ro``): the plugin never writes the gateway's
    records. Each Orthanc thread gets its own connection (sqlite3 connections are not
    shared across threads); WAL lets these readers run beside the gateway's writer.

    In docker the gateway's volume is mounted read-only and its files are not writable by
    Orthanc: SQLite then reads a WAL index only while the gateway has it open (its
    ``-wal`` and ``-shm`` exist). With the gateway stopped they are gone and the file is
    complete: it is read as immutable, one query at a time, never cached.
    """

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            if not self.path.exists():
                raise IndexUnavailable(f"the gateway's index {self.path} does not exist")
            try:
                db = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=self.timeout,
                    check_same_thread=True,
                )  # fmt: skip
            except sqlite3.Error as exc:
                raise IndexUnavailable(f"the gateway's index cannot be opened: {exc}") from exc
            self._local.db = db
        return db

    def _rows(self, sop_instance_uid: str) -> list[tuple[Any, ...]]:
        try:
            return list(self._connection().execute(VERSIONS_SQL, (sop_instance_uid,)))
        except sqlite3.OperationalError:
            self._local.db = None
            if self.path.with_name(self.path.name + "-wal").exists():
                raise
        # no writer (no -wal): the file is complete; read it as immutable, this once
        db = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, timeout=self.timeout
        )
        try:
            return list(db.execute(VERSIONS_SQL, (sop_instance_uid,)))
        finally:
            db.close()

    def versions(self, sop_instance_uid: str) -> tuple[Version, ...]:
        """Every recorded version of ``sop_instance_uid``, oldest first; empty if none."""
        try:
            rows = self._rows(sop_instance_uid)
        except sqlite3.Error as exc:
            self._local.db = None
            raise IndexUnavailable(f"the gateway's index cannot be read: {exc}") from exc
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
            )
            for (version, digest, pixel_digest, record_key, tx_hash, block_number, block_time,
                 recorder, batch_id, leaf_index, transfer_syntax, patient_key, proof,
                 received_at) in rows
        )  # fmt: skip
