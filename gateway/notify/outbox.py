"""The alerts' outbox in the index: events wait there until each target took them.

One row per (event, target), unique, so enqueueing is idempotent. States:

``pending``
    not yet taken by the target; due at ``next_attempt_at``. A node sending it holds a
    claim (``claimed_by``, ``claim_until``): other nodes pass it over until the claim is
    dropped or runs out (its holder died).
``delivered``
    the target took it: a 2xx from a webhook, a syslog message written. Marked only
    after that, so a gateway that dies mid-delivery sends it again (at least once); the
    event's stable id lets the receiver drop the second copy.

Events are enqueued from the alert logs (the gateway's and the Orthanc plugin's), each
read past its high-water mark (``notify_marks``, keyed by the log's name
:func:`~gateway.notify.events.source_of`, so that every node reading one log shares its
mark), the mark moved in the same index transaction as the rows are inserted: an alert
is enqueued once, or again with the same id after a crash, which the unique key absorbs.

A log with no mark yet starts at its end (events are for alerts recorded once
notifications are on, not for an archive's history), unless this process saw it empty
or absent before: then its first alerts are new, and it starts at its beginning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from gateway.index.db import Index
from gateway.notify.events import Event, event_of, source_of
from gateway.trust.alerts import alerts_after, last_alert_id, log_identity

PENDING = "pending"
DELIVERED = "delivered"


@dataclass(frozen=True)
class Claimed:
    """An outbox row this node now sends."""

    row_id: int
    event: Event
    attempts: int


class Outbox:
    """Enqueue, claim and settle events for ``targets`` (sender ids), on one index."""

    def __init__(self, index: Index, *, targets: tuple[str, ...]) -> None:
        self.index = index
        self.targets = targets
        self._seen_empty: set[str] = set()  # logs this process saw with no alert yet

    def enqueue(self, log: str, path: Path, *, limit: int = 500) -> int:
        """Enqueue the alerts of ``log`` (at ``path``) past its mark; returns how many."""
        identity = log_identity(path)
        if identity is None:
            self._seen_empty.add(log)
            return 0
        source = source_of(log, identity)
        marked = self.index.query("SELECT last_id FROM notify_marks WHERE source = ?", (source,))
        if marked and not alerts_after(path, int(marked[0][0]), limit=1):
            return 0  # nothing new: no write transaction (the ack's inserts share the lock)
        with self.index.transaction() as db:
            db.serialize(f"notify_marks:{source}".encode())
            found = db.execute(
                "SELECT last_id FROM notify_marks WHERE source = ?", (source,)
            ).fetchone()
            if found is None and log not in self._seen_empty:
                mark, alerts = last_alert_id(path), []
            else:
                after = int(found[0]) if found is not None else 0
                alerts = alerts_after(path, after, limit=limit)
                mark = max((alert.id for alert in alerts), default=after)
            now = time.time()
            for alert in alerts:
                event = event_of(alert, log=log, identity=identity)
                for target in self.targets:
                    db.execute(
                        "INSERT INTO notify_outbox (event_id, target, kind, body, created_at)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (event_id, target) DO NOTHING",
                        (event.id, target, event.kind, event.body.decode(), now),
                    )
            db.execute(
                "INSERT INTO notify_marks (source, last_id) VALUES (?, ?)"
                " ON CONFLICT (source) DO UPDATE SET last_id = excluded.last_id",
                (source, mark),
            )
        return len(alerts)

    def claim(self, target: str, worker: str, *, limit: int, lease_s: float) -> list[Claimed]:
        """Claim up to ``limit`` due events for ``target`` that no live claim holds, oldest
        first (PostgreSQL: ``SKIP LOCKED``, so two nodes never take the same row)."""
        now = time.time()
        due = (
            "SELECT id FROM notify_outbox WHERE target = ? AND state = ?"
            " AND next_attempt_at <= ? AND (claimed_by IS NULL OR claim_until <= ?)"
            " ORDER BY id LIMIT ?"
        )
        if not self.index.query(due, (target, PENDING, now, now, 1)):
            return []  # nothing due: no write transaction
        with self.index.transaction() as db:
            ids = [int(r[0]) for r in db.execute(
                f"{due}{db.row_lock('skip')}", (target, PENDING, now, now, limit)
            )]  # fmt: skip
            if not ids:
                return []
            marks = ", ".join("?" for _ in ids)
            db.execute(
                f"UPDATE notify_outbox SET claimed_by = ?, claim_until = ? WHERE id IN ({marks})",
                (worker, now + lease_s, *ids),
            )
            rows = db.execute(
                "SELECT id, event_id, kind, body, attempts FROM notify_outbox"
                f" WHERE id IN ({marks}) ORDER BY id",
                tuple(ids),
            ).fetchall()
        return [
            Claimed(
                int(r[0]), Event(id=str(r[1]), kind=str(r[2]), body=str(r[3]).encode()), int(r[4])
            )
            for r in rows
        ]

    def delivered(self, row_id: int, worker: str) -> None:
        """The target took the event: never sent again."""
        with self.index.transaction() as db:
            db.execute(
                "UPDATE notify_outbox SET state = ?, delivered_at = ?, last_error = NULL,"
                " claimed_by = NULL, claim_until = 0 WHERE id = ? AND claimed_by = ?",
                (DELIVERED, time.time(), row_id, worker),
            )

    def failed(self, row_id: int, worker: str, error: str, *, retry_in: float) -> None:
        """The target did not take it: due again in ``retry_in`` seconds."""
        with self.index.transaction() as db:
            db.execute(
                "UPDATE notify_outbox SET attempts = attempts + 1, next_attempt_at = ?,"
                " last_error = ?, claimed_by = NULL, claim_until = 0"
                " WHERE id = ? AND claimed_by = ?",
                (time.time() + retry_in, error[:500], row_id, worker),
            )

    def release_claims(self, worker: str) -> int:
        """Drop every claim of ``worker`` (it starts again: what it held is due at once)."""
        with self.index.transaction() as db:
            cursor = db.execute(
                "UPDATE notify_outbox SET claimed_by = NULL, claim_until = 0 WHERE claimed_by = ?",
                (worker,),
            )
            return int(cursor.rowcount)

    def counts(self) -> dict[tuple[str, str], int]:
        """Outbox rows per (target, state)."""
        rows = self.index.query(
            "SELECT target, state, COUNT(*) FROM notify_outbox GROUP BY target, state"
        )
        return {(str(target), str(state)): int(n) for target, state, n in rows}
