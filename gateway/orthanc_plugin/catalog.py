"""The plugin's own SQLite beside Orthanc's storage: which instance each attachment is.

Orthanc names attachments by random UUIDs and its storage callbacks pass only that UUID,
so ``create`` records, for each attachment, the SOP Instance UID it holds, Orthanc's id
for it, the SHA-256 of the whole attachment and (for the DICOM file) its dataset digest
at creation. Restarts keep the mapping. The mapping can always be rebuilt by parsing a
file, so the database runs with ``synchronous=NORMAL``. For a DICOM file it also keeps
where its dataset starts (a :class:`~gateway.orthanc_plugin.meta_memo.MetaMark`), so that
the first read after Orthanc starts does not parse the File Meta again.

It also remembers which warnings were already raised as alerts (``notices``), so that
an unregistered image opened a hundred times is one alert, not a hundred.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.orthanc_plugin.meta_memo import MetaMark

SCHEMA = """
CREATE TABLE IF NOT EXISTS attachments (
    uuid TEXT PRIMARY KEY,
    content_type INTEGER NOT NULL,
    sop_instance_uid TEXT,
    orthanc_id TEXT,
    sha256 BLOB,
    digest BLOB,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS attachments_orthanc ON attachments (orthanc_id, content_type);
CREATE TABLE IF NOT EXISTS notices (
    kind TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    digest BLOB NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (kind, sop_instance_uid, digest)
);
CREATE TABLE IF NOT EXISTS verdicts (
    sop_instance_uid TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    digest_now BLOB,
    at REAL NOT NULL
);
"""

# Added after the first release: each is added to an older catalogue when it opens.
MARK_COLUMNS = (("meta_end", "INTEGER"), ("meta_sha256", "BLOB"), ("meta_syntax", "TEXT"))
_SELECT = (
    "SELECT uuid, content_type, sop_instance_uid, orthanc_id, sha256, digest, meta_end,"
    " meta_sha256, meta_syntax FROM attachments"
)

CACHE_LIMIT = 200_000


@dataclass(frozen=True)
class Attachment:
    """One attachment Orthanc stored through the plugin."""

    uuid: str
    content_type: int
    sop_instance_uid: str | None
    orthanc_id: str | None
    sha256: bytes | None
    digest: bytes | None
    #: Where its dataset starts (DICOM files; None: not known, parsed on read).
    meta: MetaMark | None = None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Attachment:
        """An attachment from a row of ``_SELECT``."""
        uuid, content_type, sop, orthanc_id, sha256, digest, end, mark_sha256, syntax = row
        meta = MetaMark(end, mark_sha256, syntax) if end is not None else None
        return cls(uuid, content_type, sop, orthanc_id, sha256, digest, meta)


class Catalog:
    """Thread-safe store of :class:`Attachment` rows, notices and last verdicts."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._lock = threading.Lock()
        self._cache: dict[str, Attachment] = {}
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._add_mark_columns()

    def _add_mark_columns(self) -> None:
        """Add the File Meta mark's columns to a catalogue made before them (idempotent;
        another Orthanc node sharing the catalogue may add them at the same moment)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(attachments)")}
        for name, kind in MARK_COLUMNS:
            if name in have:
                continue
            try:
                self._db.execute(f"ALTER TABLE attachments ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, attachment: Attachment) -> None:
        with self._lock:
            meta = attachment.meta
            self._db.execute(
                "INSERT OR REPLACE INTO attachments (uuid, content_type, sop_instance_uid,"
                " orthanc_id, sha256, digest, created_at, meta_end, meta_sha256, meta_syntax)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (attachment.uuid, attachment.content_type, attachment.sop_instance_uid,
                 attachment.orthanc_id, attachment.sha256, attachment.digest, time.time(),
                 meta.end if meta else None, meta.sha256 if meta else None,
                 meta.syntax if meta else None),
            )  # fmt: skip
            self._remember(attachment)

    def _remember(self, attachment: Attachment) -> None:
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()  # bounded memory; misses fall back to SQLite
        self._cache[attachment.uuid] = attachment

    def get(self, uuid: str) -> Attachment | None:
        cached = self._cache.get(uuid)
        if cached is not None:
            return cached
        with self._lock:
            row = self._db.execute(f"{_SELECT} WHERE uuid = ?", (uuid,)).fetchone()
            if row is None:
                return None
            attachment = Attachment.from_row(row)
            self._remember(attachment)
            return attachment

    def by_orthanc_id(self, orthanc_id: str, content_type: int) -> Attachment | None:
        with self._lock:
            row = self._db.execute(
                f"{_SELECT} WHERE orthanc_id = ? AND content_type = ?"
                " ORDER BY created_at DESC LIMIT 1",
                (orthanc_id, content_type),
            ).fetchone()
        return Attachment.from_row(row) if row is not None else None

    def remove(self, uuid: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM attachments WHERE uuid = ?", (uuid,))
            self._cache.pop(uuid, None)

    def first_notice(self, kind: str, sop_instance_uid: str, digest: bytes) -> bool:
        """Note that ``kind`` was raised for this copy; True only the first time."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO notices (kind, sop_instance_uid, digest, at)"
                " VALUES (?, ?, ?, ?)",
                (kind, sop_instance_uid, digest, time.time()),
            )
            return cursor.rowcount == 1

    def set_verdict(self, sop_instance_uid: str, status: str, digest_now: bytes | None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO verdicts (sop_instance_uid, status, digest_now, at)"
                " VALUES (?, ?, ?, ?)",
                (sop_instance_uid, status, digest_now, time.time()),
            )

    def last_verdict(self, sop_instance_uid: str) -> tuple[str, bytes | None] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT status, digest_now FROM verdicts WHERE sop_instance_uid = ?",
                (sop_instance_uid,),
            ).fetchone()
        return (str(row[0]), row[1]) if row is not None else None
