"""The Orthanc plugin's access journal (SQLite): every image read it served or refused.

The plugin must not write the gateway's index, so it appends here, to its own
``access.sqlite`` beside its ``alerts.sqlite`` (``XrayGateway.AlertsDir``), exactly as
alerts are kept (:mod:`gateway.trust.alerts`). The gateway reads the file read-only and
imports entries past its high-water mark into its index (:mod:`gateway.trust.trail`),
where they are batched and anchored. Until imported, an entry is only as safe as this
file: that is the trail's trust window.

An entry names the image by SOP Instance UID (and Orthanc id), the reader by name; it
holds no patient data.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import AccessJournalUnavailable

FILE_NAME = "access.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS access (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    who TEXT NOT NULL,
    who_kind TEXT NOT NULL,
    route TEXT NOT NULL,
    sop_instance_uid TEXT,
    study_instance_uid TEXT,
    orthanc_id TEXT,
    verdict TEXT NOT NULL,
    served INTEGER NOT NULL
);
"""

#: How a reader is named: an Orthanc user (HTTP basic auth), an API token's name, a DICOM
#: calling AE title, a remote address (HTTP without a user), or nobody the plugin could see.
WHO_KINDS = ("orthanc-user", "token", "aet", "address", "unattributed")


@dataclass(frozen=True)
class JournalEntry:
    """One read as the plugin saw it."""

    id: int
    at: float
    who: str
    who_kind: str
    route: str
    sop_instance_uid: str | None
    study_instance_uid: str | None
    orthanc_id: str | None
    verdict: str
    served: bool


_COLUMNS = (
    "id, at, who, who_kind, route, sop_instance_uid, study_instance_uid, orthanc_id,"
    " verdict, served"
)


class AccessJournal:
    """Append-only journal of reads, written by the plugin (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # no fsync per read (a read must not wait for the disk): a power cut may drop
            # the reads appended since the last checkpoint, which widens the trust window
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(
        self,
        *,
        who: str,
        who_kind: str,
        route: str,
        verdict: str,
        served: bool,
        sop_instance_uid: str | None = None,
        study_instance_uid: str | None = None,
        orthanc_id: str | None = None,
    ) -> int:
        """Append one read; returns its id (the import's high-water mark counts these)."""
        if who_kind not in WHO_KINDS:
            raise ValueError(f"unknown reader kind {who_kind!r}")
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO access (at, who, who_kind, route, sop_instance_uid,"
                " study_instance_uid, orthanc_id, verdict, served)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), who[:200], who_kind, route, sop_instance_uid,
                 study_instance_uid, orthanc_id, verdict, int(served)),
            )  # fmt: skip
            return int(cursor.lastrowid or 0)


def read_after(path: Path, after: int, *, limit: int = 5000) -> list[JournalEntry]:
    """Entries with an id above ``after``, oldest first, read-only (the gateway's side).

    No file yet is no entries. As :func:`gateway.trust.alerts.read_only_alerts`: a WAL
    file on a read-only mount with the writer stopped is read as immutable.

    Raises
    ------
    AccessJournalUnavailable
        The file exists but cannot be read.
    """
    if not path.is_file():
        return []
    uri = path.resolve().as_uri()
    query = f"SELECT {_COLUMNS} FROM access WHERE id > ? ORDER BY id LIMIT ?"
    try:
        try:
            rows = _read(f"{uri}?mode=ro", query, (after, limit))
        except sqlite3.OperationalError:
            if path.with_name(path.name + "-wal").exists():
                raise
            rows = _read(f"{uri}?mode=ro&immutable=1", query, (after, limit))
    except sqlite3.Error as exc:
        raise AccessJournalUnavailable(
            f"the Orthanc plugin's access journal cannot be read: {exc}"
        ) from exc
    return [
        JournalEntry(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8], bool(r[9]))
        for r in rows
    ]


def _read(uri: str, query: str, params: tuple[int, int]) -> list[Any]:
    db = sqlite3.connect(uri, uri=True, timeout=10)
    try:
        return list(db.execute(query, params).fetchall())
    finally:
        db.close()
