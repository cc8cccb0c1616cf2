"""Integrity alerts (SQLite): written by the Orthanc plugin, the pipeline and audits, listed by the API.

An alert names an instance by its SOP Instance UID and Orthanc id only; it never holds
patient data, so the API may show it to any authenticated role.

The gateway writes ``<data dir>/alerts.sqlite``. The Orthanc plugin writes its own
``alerts.sqlite`` in ``XrayGateway.AlertsDir``: on the embedded stack that is the data
dir (one file, shared), in docker a volume of its own that the gateway mounts read-only
(``GATEWAY_PLUGIN_ALERTS_DIR``), so that Orthanc cannot write the gateway's files. The
gateway's :class:`Alerts` then lists both, merged newest first.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import AlertsUnavailable
from gateway.trust.verdicts import ALERT_KINDS

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

#: What an alert may be about: a status that alerts (gateway/trust/verdicts.py), and
#: ``pending_too_long`` (an instance not committed after ``GATEWAY_PENDING_ALERT_S``) and
#: ``foreign_claim`` (a version written under a key by someone other than its owner), and
#: ``spool_swapped`` (a spool file that changed between the ack and the fingerprint stage),
#: and ``trail_tampered`` (an access-trail entry deleted or edited after it was anchored).
KINDS = (*ALERT_KINDS, "pending_too_long", "foreign_claim", "spool_swapped", "trail_tampered")


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


_SELECT = "SELECT id, at, kind, source, sop_instance_uid, orthanc_id, detail FROM alerts"


def _filter(
    *, limit: int, sop_instance_uid: str | None, kind: str | None
) -> tuple[str, tuple[object, ...]]:
    """The WHERE/ORDER/LIMIT clause of :meth:`Alerts.recent` and its parameters."""
    where: list[str] = []
    params: list[object] = []
    if sop_instance_uid is not None:
        where.append("sop_instance_uid = ?")
        params.append(sop_instance_uid)
    if kind is not None:
        where.append("kind = ?")
        params.append(kind)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    return f"{clause} ORDER BY id DESC LIMIT ?", (*params, limit)


class Alerts:
    """Append-only alert log, safe to share between threads and processes (Orthanc and the gateway).

    ``plugin_alerts``: the Orthanc plugin's own ``alerts.sqlite`` when it is not ``path``
    (docker: another volume, mounted read-only here); :meth:`recent` lists it too.
    """

    def __init__(self, path: Path, *, plugin_alerts: Path | None = None) -> None:
        self.path = path
        self.plugin_alerts = plugin_alerts if plugin_alerts != path else None
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
        """Newest first, optionally for one instance or one kind (the plugin's merged in).

        Raises
        ------
        AlertsUnavailable
            The plugin's alerts file exists but cannot be read.
        """
        clause, params = _filter(limit=limit, sop_instance_uid=sop_instance_uid, kind=kind)
        with self._lock:
            cursor = self._db.execute(f"{_SELECT} {clause}", params)
            found = [Alert(*values) for values in cursor.fetchall()]
        if self.plugin_alerts is not None:
            found += read_only_alerts(self.plugin_alerts, clause, params)
            found.sort(key=lambda alert: alert.at, reverse=True)
        return found[:limit]


def read_only_alerts(path: Path, clause: str, params: tuple[object, ...]) -> list[Alert]:
    """Alerts from another writer's file (the plugin's), opened read-only for this one query.

    None yet (no file) is an empty list. SQLite opens a WAL database read-only only when
    its ``-wal`` and ``-shm`` exist (the writer is running) or can be created; on a
    read-only mount with the writer stopped they are gone, and the file is then complete,
    so it is read as immutable.
    """
    if not path.is_file():
        return []
    uri = path.resolve().as_uri()
    try:
        try:
            with _connection(f"{uri}?mode=ro") as db:
                rows = db.execute(f"{_SELECT} {clause}", params).fetchall()
        except sqlite3.OperationalError:
            if path.with_name(path.name + "-wal").exists():
                raise
            with _connection(f"{uri}?mode=ro&immutable=1") as db:
                rows = db.execute(f"{_SELECT} {clause}", params).fetchall()
    except sqlite3.Error as exc:
        raise AlertsUnavailable(f"the Orthanc plugin's alerts cannot be read: {exc}") from exc
    return [Alert(*values) for values in rows]


@contextlib.contextmanager
def _connection(uri: str) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(uri, uri=True, timeout=10)
    try:
        yield db
    finally:
        db.close()
