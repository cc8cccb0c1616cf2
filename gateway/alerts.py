"""Integrity alerts (SQLite in the data dir): written by the Orthanc plugin and audits, listed by the API.

An alert names an instance by its SOP Instance UID and Orthanc id only; it never holds
patient data, so the API may show it to any authenticated role.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.statuses import ALERT_KINDS

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    sop_instance_uid TEXT,
    orthanc_id TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_uid ON alerts (sop_instance_uid);
"""

#: What an alert may be about: a status that alerts (gateway/statuses.py), and
#: ``pending_too_long`` (an instance not committed after ``GATEWAY_PENDING_ALERT_S``) and
#: ``foreign_claim`` (a version written under a key by someone other than its owner).
KINDS = (*ALERT_KINDS, "pending_too_long", "foreign_claim")


@dataclass(frozen=True)
class Alert:
    """One recorded integrity alert."""

    id: int
    at: float
    kind: str
    source: str
    sop_instance_uid: str | None
    orthanc_id: str | None
    detail: str


class Alerts:
    """Append-only alert log, safe to share between threads and processes (Orthanc and the gateway)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(
        self,
        *,
        kind: str,
        source: str,
        detail: str,
        sop_instance_uid: str | None = None,
        orthanc_id: str | None = None,
    ) -> int:
        """Append an alert; ``kind`` is one of :data:`KINDS`."""
        if kind not in KINDS:
            raise ValueError(f"unknown alert kind {kind!r}")
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO alerts (at, kind, source, sop_instance_uid, orthanc_id, detail)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), kind, source, sop_instance_uid, orthanc_id, detail[:2000]),
            )
            return int(cursor.lastrowid or 0)

    def recent(
        self, *, limit: int = 100, sop_instance_uid: str | None = None, kind: str | None = None
    ) -> list[Alert]:
        """Newest first, optionally for one instance or one kind."""
        where, params = [], []
        if sop_instance_uid is not None:
            where.append("sop_instance_uid = ?")
            params.append(sop_instance_uid)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            cursor = self._db.execute(
                "SELECT id, at, kind, source, sop_instance_uid, orthanc_id, detail FROM alerts"
                f" {clause} ORDER BY id DESC LIMIT ?",
                (*params, limit),
            )
            return [Alert(*values) for values in cursor.fetchall()]
