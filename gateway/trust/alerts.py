"""Integrity alerts (SQLite): written by the Orthanc plugin, the pipeline and audits, listed by the API.

An alert names an instance by its SOP Instance UID and Orthanc id only; it never holds
patient data, so the API may show it to any authenticated role.

The gateway writes ``<data dir>/alerts.sqlite``. The Orthanc plugin writes its own
``alerts.sqlite`` in ``XrayGateway.AlertsDir``: on the embedded stack that is the data
dir (one file, shared), in docker a volume of its own that the gateway mounts read-only
(``GATEWAY_PLUGIN_ALERTS_DIR``), so that Orthanc cannot write the gateway's files. The
gateway's :class:`Alerts` then lists both, merged newest first.

An alert is acknowledged (who, when) in the gateway's own file, table ``alert_acks``,
never in the plugin's, which the gateway only reads. The two files number their alerts
independently, so an alert listed by the gateway is named by the file it came from and
its row: ``gateway-12``, ``plugin-4`` (:class:`ListedAlert`). Pages are cut by keyset:
newest first by ``(at, origin, id)``, the last key of a page starting the next one.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

from gateway.errors import AlertsUnavailable, UnknownAlert
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
CREATE TABLE IF NOT EXISTS alert_acks (
    alert TEXT PRIMARY KEY,
    acknowledged_by TEXT NOT NULL,
    acknowledged_at REAL NOT NULL
);
"""

#: Which file an alert was read from: the gateway's own (on the embedded stack the plugin
#: writes there too), or the plugin's own file (docker: another volume, read-only here).
Origin = Literal["gateway", "plugin"]
ORIGINS: tuple[Origin, ...] = get_args(Origin)
ALERT_ID_PATTERN = r"^(gateway|plugin)-[0-9]{1,18}$"

#: Where a page of alerts stops: ``(at, origin, row id)`` of its last alert.
AlertKey = tuple[float, Origin, int]

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


@dataclass(frozen=True)
class ListedAlert:
    """An alert as the API and the console list it: named across both files, with its ack."""

    id: str  # "<origin>-<row id>": "gateway-12", "plugin-4"
    at: float
    kind: str
    source: str
    sop_instance_uid: str | None
    orthanc_id: str | None
    detail: str
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None

    @property
    def key(self) -> AlertKey:
        origin, row = split_alert_id(self.id)
        return (self.at, origin, row)


@dataclass(frozen=True)
class AlertPage:
    """One page of alerts, newest first; ``next`` is where the following page starts."""

    items: list[ListedAlert]
    next: AlertKey | None


def alert_id(origin: str, row: int) -> str:
    """The id the API names an alert by: its file and its row there."""
    return f"{origin}-{row}"


def split_alert_id(value: str) -> tuple[Origin, int]:
    """``("gateway", 12)`` from ``"gateway-12"``.

    Raises
    ------
    UnknownAlert
        ``value`` is not the id of an alert of either file.
    """
    origin, _, row = value.partition("-")
    for known in ORIGINS:
        if origin == known and row.isdigit() and len(row) <= 18:
            return known, int(row)
    raise UnknownAlert(f"no alert {value!r}")


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


def _page_filter(
    origin: str, *, after: AlertKey | None, sop_instance_uid: str | None, kind: str | None
) -> tuple[str, tuple[object, ...]]:
    """WHERE and ORDER of one file's part of a page: the rows after ``after`` in the
    ``(at, origin, id)`` descending order, this file's origin fixed."""
    where: list[str] = []
    params: list[object] = []
    if after is not None:
        at, after_origin, row = after
        if origin < after_origin:  # this file sorts after the cursor's at the same time
            where.append("at <= ?")
            params.append(at)
        elif origin > after_origin:
            where.append("at < ?")
            params.append(at)
        else:
            where.append("(at < ? OR (at = ? AND id < ?))")
            params += [at, at, row]
    if sop_instance_uid is not None:
        where.append("sop_instance_uid = ?")
        params.append(sop_instance_uid)
    if kind is not None:
        where.append("kind = ?")
        params.append(kind)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    return f"{clause} ORDER BY at DESC, id DESC LIMIT ?", tuple(params)


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

    def page(
        self,
        *,
        limit: int = 100,
        after: AlertKey | None = None,
        sop_instance_uid: str | None = None,
        kind: str | None = None,
    ) -> AlertPage:
        """Up to ``limit`` alerts after ``after``, newest first, each with its ack.

        Raises
        ------
        AlertsUnavailable
            The plugin's alerts file exists but cannot be read.
        """
        found: list[ListedAlert] = []
        sources = [("gateway", None)] + (
            [("plugin", self.plugin_alerts)] if self.plugin_alerts is not None else []
        )
        for origin, path in sources:
            clause, params = _page_filter(
                origin, after=after, sop_instance_uid=sop_instance_uid, kind=kind
            )
            # one more than asked: whether a next page exists
            params = (*params, limit + 1)
            if path is None:
                with self._lock:
                    alerts = [Alert(*v) for v in self._db.execute(f"{_SELECT} {clause}", params)]
            else:
                alerts = read_only_alerts(path, clause, params)
            found += [_listed(origin, alert) for alert in alerts]
        found.sort(key=lambda alert: alert.key, reverse=True)
        more = len(found) > limit
        items = self._with_acks(found[:limit])
        return AlertPage(items=items, next=items[-1].key if more and items else None)

    def get(self, alert: str) -> ListedAlert:
        """The alert named ``alert`` (``gateway-12``), with its ack.

        Raises
        ------
        UnknownAlert
            No such alert in either file.
        AlertsUnavailable
            The plugin's alerts file exists but cannot be read.
        """
        origin, row = split_alert_id(alert)
        clause, params = "WHERE id = ?", (row,)
        if origin == "gateway":
            with self._lock:
                rows = [Alert(*v) for v in self._db.execute(f"{_SELECT} {clause}", params)]
        elif self.plugin_alerts is not None:
            rows = read_only_alerts(self.plugin_alerts, clause, params)
        else:
            rows = []
        if not rows:
            raise UnknownAlert(f"no alert {alert}")
        return self._with_acks([_listed(origin, rows[0])])[0]

    def acknowledge(self, alert: str, *, by: str) -> ListedAlert:
        """Record that ``by`` has seen ``alert``; the first acknowledgement stands.

        Raises
        ------
        UnknownAlert
            No such alert in either file.
        """
        self.get(alert)
        with self._lock:
            self._db.execute(
                "INSERT INTO alert_acks (alert, acknowledged_by, acknowledged_at)"
                " VALUES (?, ?, ?) ON CONFLICT (alert) DO NOTHING",
                (alert, by, time.time()),
            )
        return self.get(alert)

    def _with_acks(self, alerts: list[ListedAlert]) -> list[ListedAlert]:
        if not alerts:
            return alerts
        marks = ", ".join("?" for _ in alerts)
        with self._lock:
            acks = {
                alert: (by, at)
                for alert, by, at in self._db.execute(
                    "SELECT alert, acknowledged_by, acknowledged_at FROM alert_acks"
                    f" WHERE alert IN ({marks})",
                    [alert.id for alert in alerts],
                )
            }
        return [
            replace(alert, acknowledged_by=acks[alert.id][0], acknowledged_at=acks[alert.id][1])
            if alert.id in acks
            else alert
            for alert in alerts
        ]


def _listed(origin: str, alert: Alert) -> ListedAlert:
    return ListedAlert(
        id=alert_id(origin, alert.id),
        at=alert.at,
        kind=alert.kind,
        source=alert.source,
        sop_instance_uid=alert.sop_instance_uid,
        orthanc_id=alert.orthanc_id,
        detail=alert.detail,
    )


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
