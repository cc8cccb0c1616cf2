"""The local index (SQLite in the data dir): one row per received instance, its stage and evidence.

Every stage after the ack is a persisted task: a row's ``stage`` says what must happen
next, and a restart resumes from there. WAL with ``synchronous=FULL`` makes a committed
row survive power loss, which the ack relies on.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

STAGES = ("fingerprint", "seal", "put", "anchor", "forward", "committed")
DONE_STAGES = ("committed", "duplicate", "rejected", "conflict")

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    entry_id TEXT NOT NULL UNIQUE,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    calling_aet TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    size INTEGER NOT NULL,
    stage TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    study_instance_uid TEXT,
    series_instance_uid TEXT,
    record_key BLOB,
    patient_key BLOB,
    digest BLOB,
    pixel_digest BLOB,
    transfer_syntax TEXT,
    modality TEXT,
    body_part TEXT,
    version INTEGER,
    kek_id TEXT,
    object_name TEXT,
    tx_hash TEXT,
    block_number INTEGER,
    block_time INTEGER,
    recorder TEXT,
    batch_id INTEGER,
    leaf_index INTEGER,
    proof BLOB,
    orthanc_id TEXT,
    conflict TEXT,
    committed_at REAL
);
CREATE INDEX IF NOT EXISTS instances_due ON instances (stage, next_attempt_at);
CREATE INDEX IF NOT EXISTS instances_uid ON instances (sop_instance_uid);
CREATE INDEX IF NOT EXISTS instances_key ON instances (record_key, digest);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_instance_uid);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    root BLOB NOT NULL UNIQUE,
    count INTEGER NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'open',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    batch_id INTEGER,
    tx_hash TEXT,
    block_number INTEGER
);
CREATE TABLE IF NOT EXISTS batch_members (
    batch INTEGER NOT NULL REFERENCES batches (id),
    leaf_index INTEGER NOT NULL,
    row_id INTEGER NOT NULL REFERENCES instances (id),
    PRIMARY KEY (batch, leaf_index)
);
CREATE INDEX IF NOT EXISTS batch_members_row ON batch_members (row_id);
"""


@dataclass(frozen=True)
class Row:
    """One instance as the index knows it."""

    id: int
    entry_id: str
    sop_instance_uid: str
    sop_class_uid: str
    calling_aet: str
    received_at: float
    size: int
    stage: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    record_key: bytes | None
    patient_key: bytes | None
    digest: bytes | None
    pixel_digest: bytes | None
    transfer_syntax: str | None
    modality: str | None
    body_part: str | None
    version: int | None
    kek_id: str | None
    object_name: str | None
    tx_hash: str | None
    block_number: int | None
    block_time: int | None
    recorder: str | None
    batch_id: int | None
    leaf_index: int | None
    proof: bytes | None
    orthanc_id: str | None
    conflict: str | None
    committed_at: float | None


COLUMNS = tuple(f.name for f in fields(Row))


@dataclass(frozen=True)
class PendingBatch:
    """A Merkle batch persisted before its ``recordBatch`` was sent, not yet landed.

    ``members`` are row ids in leaf order: the tree, and so the root, is rebuilt from
    those rows' fields, and the same batch is re-sent whole after a failure or a crash.
    """

    id: int
    root: bytes
    count: int
    members: tuple[int, ...]
    attempts: int
    last_error: str | None


class Index:
    """Thread-safe access to the index database.

    ``readonly=True`` opens an existing index without writing to it (``xray-gateway
    status``), whether or not a gateway has it open at the same time.
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self._lock = threading.RLock()
        if readonly:
            if not path.is_file():
                raise FileNotFoundError(f"no index at {path}")
            self._db = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False,
                isolation_level=None,
            )  # fmt: skip
            self._db.execute("PRAGMA busy_timeout = 5000")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction under the index lock."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        with self._lock:
            cursor = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM instances {sql}", params)
            return [Row(*values) for values in cursor.fetchall()]

    def add_received(
        self,
        *,
        entry_id: str,
        sop_instance_uid: str,
        sop_class_uid: str,
        calling_aet: str,
        size: int,
    ) -> int:
        """Record a durable received instance; its first task is ``fingerprint``."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO instances (entry_id, sop_instance_uid, sop_class_uid, calling_aet,"
                " received_at, size, stage) VALUES (?, ?, ?, ?, ?, ?, 'fingerprint')",
                (entry_id, sop_instance_uid, sop_class_uid, calling_aet, time.time(), size),
            )
            return int(cursor.lastrowid or 0)

    def get(self, row_id: int) -> Row:
        (row,) = self._rows("WHERE id = ?", (row_id,))
        return row

    def has_entry(self, entry_id: str) -> bool:
        return bool(self._rows("WHERE entry_id = ?", (entry_id,)))

    def due(
        self, *, now: float | None = None, limit: int = 64, stages: tuple[str, ...] | None = None
    ) -> list[Row]:
        """Rows with work to do (at ``stages``, default all) whose retry time has come, oldest first."""
        stages = stages or STAGES[:-1]
        placeholders = ", ".join("?" for _ in stages)
        return self._rows(
            f"WHERE stage IN ({placeholders}) AND next_attempt_at <= ? ORDER BY id LIMIT ?",
            (*stages, time.time() if now is None else now, limit),
        )

    def update(self, row_id: int, **values: Any) -> None:
        """Set columns of one row (names are checked against the schema)."""
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise KeyError(f"no such index columns: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self.transaction() as db:
            db.execute(
                f"UPDATE instances SET {assignments} WHERE id = ?", (*values.values(), row_id)
            )

    def fail(self, row_id: int, error: str, *, retry_in: float) -> None:
        """Note a failed attempt and when to try again."""
        with self.transaction() as db:
            db.execute(
                "UPDATE instances SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
                " WHERE id = ?",
                (error, time.time() + retry_in, row_id),
            )

    def claim_fingerprint(self, row_id: int, values: dict[str, Any]) -> tuple[str, int, int | None]:
        """Atomically decide what a freshly fingerprinted row is: new, new version, or duplicate."""
        with self.transaction() as db:
            cursor = db.execute(
                "SELECT id, digest, version FROM instances WHERE record_key = ? AND id != ?"
                " AND stage NOT IN ('duplicate', 'rejected') AND digest IS NOT NULL ORDER BY id",
                (values["record_key"], row_id),
            )
            others = cursor.fetchall()
            same = [other_id for other_id, digest, _ in others if digest == values["digest"]]
            if same:
                stage, version, duplicate_of = "duplicate", 0, int(same[0])
            else:
                stage = "seal"
                version = 1 + max((int(v or 0) for _, _, v in others), default=0)
                duplicate_of = None
            values = {**values, "stage": stage, "version": version or None, "attempts": 0,
                      "last_error": None, "next_attempt_at": 0}  # fmt: skip
            assignments = ", ".join(f"{name} = ?" for name in values)
            db.execute(
                f"UPDATE instances SET {assignments} WHERE id = ?", (*values.values(), row_id)
            )
        return stage, version, duplicate_of

    def versions_of(self, record_key: bytes, *, exclude: int | None = None) -> list[Row]:
        """Every row of this record key that was not a duplicate, oldest first."""
        return self._rows(
            "WHERE record_key = ? AND stage NOT IN ('duplicate', 'rejected') AND id != ? ORDER BY id",
            (record_key, -1 if exclude is None else exclude),
        )

    def by_uid(self, sop_instance_uid: str) -> list[Row]:
        return self._rows("WHERE sop_instance_uid = ? ORDER BY id", (sop_instance_uid,))

    def by_record(self, record_key: bytes, digest: bytes) -> list[Row]:
        """Rows that hold this version (record key and digest), duplicates included."""
        return self._rows("WHERE record_key = ? AND digest = ? ORDER BY id", (record_key, digest))

    def by_record_key(self, record_key: bytes) -> list[Row]:
        """Every row of a record key, duplicates included, oldest first."""
        return self._rows("WHERE record_key = ? ORDER BY id", (record_key,))

    def batched(self) -> list[Row]:
        """Rows anchored through a batch (they carry a batch id and a proof)."""
        return self._rows(
            "WHERE batch_id IS NOT NULL AND proof IS NOT NULL AND stage NOT IN"
            " ('duplicate', 'rejected') ORDER BY id"
        )

    # -- Merkle batches -------------------------------------------------------------------

    def due_unbatched(self, stage: str, *, now: float | None = None, limit: int) -> list[Row]:
        """Due rows at ``stage`` that no open batch holds, oldest first."""
        return self._rows(
            "WHERE stage = ? AND next_attempt_at <= ? AND id NOT IN (SELECT m.row_id FROM"
            " batch_members m JOIN batches b ON b.id = m.batch WHERE b.state = 'open')"
            " ORDER BY id LIMIT ?",
            (stage, time.time() if now is None else now, limit),
        )

    def open_batch(self, *, root: bytes, members: list[int]) -> PendingBatch:
        """Persist a batch (root, count, members in leaf order) before it is sent.

        Raises
        ------
        ValueError
            A member already belongs to an open batch (it would be anchored twice).
        """
        with self.transaction() as db:
            marks = ", ".join("?" for _ in members)
            taken = db.execute(
                f"SELECT m.row_id FROM batch_members m JOIN batches b ON b.id = m.batch"
                f" WHERE b.state = 'open' AND m.row_id IN ({marks})",
                tuple(members),
            ).fetchall()
            if taken:
                raise ValueError(f"rows {[r for (r,) in taken]} are already in an open batch")
            cursor = db.execute(
                "INSERT INTO batches (root, count, created_at) VALUES (?, ?, ?)",
                (root, len(members), time.time()),
            )
            batch = int(cursor.lastrowid or 0)
            db.executemany(
                "INSERT INTO batch_members (batch, leaf_index, row_id) VALUES (?, ?, ?)",
                [(batch, i, row_id) for i, row_id in enumerate(members)],
            )
        return PendingBatch(batch, root, len(members), tuple(members), 0, None)

    def open_batches(
        self, *, now: float | None = None, due_only: bool = True
    ) -> list[PendingBatch]:
        """Persisted batches that have not landed (whose retry time has come), oldest first."""
        with self._lock:
            batches = self._db.execute(
                "SELECT id, root, count, attempts, last_error FROM batches WHERE state = 'open'"
                " AND (? = 0 OR next_attempt_at <= ?) ORDER BY id",
                (int(due_only), time.time() if now is None else now),
            ).fetchall()
            found = []
            for batch, root, count, attempts, last_error in batches:
                members = self._db.execute(
                    "SELECT row_id FROM batch_members WHERE batch = ? ORDER BY leaf_index", (batch,)
                ).fetchall()
                found.append(
                    PendingBatch(
                        int(batch),
                        bytes(root),
                        int(count),
                        tuple(int(m) for (m,) in members),
                        int(attempts),
                        last_error,
                    )
                )
            return found

    def fail_batch(self, batch: int, error: str, *, retry_in: float) -> None:
        """Note a failed send of a batch; it and each of its rows say why, and when it is retried."""
        with self.transaction() as db:
            db.execute(
                "UPDATE batches SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
                " WHERE id = ?",
                (error, time.time() + retry_in, batch),
            )
            db.execute(
                "UPDATE instances SET attempts = attempts + 1, last_error = ? WHERE id IN"
                " (SELECT row_id FROM batch_members WHERE batch = ?)",
                (error, batch),
            )

    def close_batch(
        self, batch: int, *, batch_id: int, tx_hash: str, block_number: int,
        rows: dict[int, dict[str, Any]],
    ) -> None:  # fmt: skip
        """The batch landed: mark it and set every member row's values, in one transaction."""
        with self.transaction() as db:
            db.execute(
                "UPDATE batches SET state = 'landed', batch_id = ?, tx_hash = ?, block_number = ?,"
                " last_error = NULL WHERE id = ?",
                (batch_id, tx_hash, block_number, batch),
            )
            for row_id, values in rows.items():
                unknown = set(values) - set(COLUMNS)
                if unknown:
                    raise KeyError(f"no such index columns: {sorted(unknown)}")
                assignments = ", ".join(f"{name} = ?" for name in values)
                db.execute(
                    f"UPDATE instances SET {assignments} WHERE id = ?", (*values.values(), row_id)
                )

    def batch_counts(self) -> dict[str, int]:
        """Merkle batches per state (``open``, ``landed``)."""
        with self._lock:
            cursor = self._db.execute("SELECT state, COUNT(*) FROM batches GROUP BY state")
            return {str(state): int(count) for state, count in cursor.fetchall()}

    def by_study(self, study_instance_uid: str) -> list[Row]:
        return self._rows("WHERE study_instance_uid = ? ORDER BY id", (study_instance_uid,))

    def all(self) -> list[Row]:
        return self._rows("ORDER BY id")

    def stage_counts(self) -> dict[str, int]:
        with self._lock:
            cursor = self._db.execute("SELECT stage, COUNT(*) FROM instances GROUP BY stage")
            return {str(stage): int(count) for stage, count in cursor.fetchall()}

    # -- what `status` and /metrics show ----------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only statement (for modules that keep their own table here)."""
        with self._lock:
            return [tuple(values) for values in self._db.execute(sql, params).fetchall()]

    def oldest_pending(self) -> Row | None:
        """The row with work left that was received first."""
        rows = self._rows(
            f"WHERE stage NOT IN ({', '.join('?' for _ in DONE_STAGES)}) ORDER BY id LIMIT 1",
            DONE_STAGES,
        )
        return rows[0] if rows else None

    def failing(self, limit: int = 20) -> list[Row]:
        """Rows with work left whose last attempt failed, most recently failed first."""
        return self._rows(
            f"WHERE stage NOT IN ({', '.join('?' for _ in DONE_STAGES)}) AND attempts > 0"
            " ORDER BY next_attempt_at DESC, id DESC LIMIT ?",
            (*DONE_STAGES, limit),
        )

    def failure_counts(self) -> dict[tuple[str, str], int]:
        """Failing rows (work left, attempts > 0) per (stage, error class)."""
        with self._lock:
            cursor = self._db.execute(
                f"SELECT stage, last_error, COUNT(*) FROM instances WHERE stage NOT IN"
                f" ({', '.join('?' for _ in DONE_STAGES)}) AND attempts > 0"
                " GROUP BY stage, last_error",
                DONE_STAGES,
            )
            counts: dict[tuple[str, str], int] = {}
            for stage, error, count in cursor.fetchall():
                key = (str(stage), error_class(error))
                counts[key] = counts.get(key, 0) + int(count)
            return counts


def error_class(last_error: str | None) -> str:
    """The exception class in a ``last_error`` (``"<stage>: <Class>: <message>"``)."""
    parts = (last_error or "").split(": ")
    for part in parts[1:2] or parts[:1]:
        name = part.strip()
        if name.isidentifier():
            return name
    return "unknown"
