"""The audit sweep: every instance the PACS or the gateway knows, verified; every ledger record accounted for.

A sweep takes the union of

* every instance Orthanc holds (``/tools/find``),
* every instance in the gateway's index (duplicates aside),

builds the verdict of each, and then looks the other way round: every record the
ledger holds (``ImageRecorded`` events, batch members in the index) must belong to an
instance the gateway knows. Findings are every verdict that is not ``intact``, plus
ledger records with no instance. Each finding is also written to the alert log.

Audits are kept in ``<data>/audits.sqlite`` with their progress, so ``GET /v1/audits/{id}``
answers while one runs and after a restart.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.alerts import Alerts
from gateway.errors import GatewayError
from gateway.index import Index
from gateway.verify import STATUSES, NotFound, Verdict, Verifier

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

SCHEMA = """
CREATE TABLE IF NOT EXISTS audits (
    id TEXT PRIMARY KEY,
    requested_by TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    total INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    report TEXT,
    error TEXT
);
"""


@dataclass(frozen=True)
class Finding:
    """One problem the sweep found."""

    status: str
    sop_instance_uid: str | None
    orthanc_id: str | None
    tamper: str | None
    explanation: str
    notes: list[str] = field(default_factory=list)
    record_key: str | None = None


@dataclass(frozen=True)
class AuditReport:
    """What a finished sweep found."""

    summary: dict[str, int]
    findings: list[Finding]
    ledger_records_without_instance: int


@dataclass(frozen=True)
class AuditState:
    """An audit as the API shows it: progress while it runs, the report once done."""

    id: str
    requested_by: str
    state: str
    started_at: float
    finished_at: float | None
    total: int
    done: int
    report: AuditReport | None
    error: str | None


def sweep(
    verifier: Verifier,
    *,
    index: Index | None,
    alerts: Alerts | None = None,
    progress: Progress | None = None,
    workers: int = 4,
) -> AuditReport:
    """Verify everything; ``progress(done, total)`` is called as instances are checked."""
    uids: dict[str, None] = {}
    if verifier.pacs is not None:
        for _, uid in verifier.pacs.find_instances({}):
            if uid:
                uids[uid] = None
    known_keys: set[bytes] = set()
    if index is not None:
        for row in index.all():
            if row.stage in ("duplicate", "rejected"):
                continue
            uids[row.sop_instance_uid] = None
            if row.record_key:
                known_keys.add(row.record_key)
    total = len(uids)
    if progress is not None:
        progress(0, total)
    verdicts: list[Verdict] = []
    findings: list[Finding] = []
    lock = threading.Lock()

    def check(uid: str) -> None:
        try:
            verdict = verifier.instance(uid)
        except NotFound:
            return  # vanished from both the PACS and the index while we swept
        with lock:
            verdicts.append(verdict)
            if progress is not None:
                progress(len(verdicts), total)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="audit") as pool:
        for future in [pool.submit(check, uid) for uid in uids]:
            future.result()
    for verdict in sorted(verdicts, key=lambda v: v.sop_instance_uid):
        if verdict.status == "intact":
            continue
        findings.append(
            Finding(
                status=verdict.status,
                sop_instance_uid=verdict.sop_instance_uid,
                orthanc_id=verdict.orthanc_id,
                tamper=verdict.tamper,
                explanation=verdict.explanation,
                notes=list(verdict.notes),
                record_key=verdict.evidence.record_key,
            )
        )
    orphans = 0
    if index is not None:
        # Records the ledger holds that no instance the gateway knows accounts for.
        for name in ("ImageRecorded", "ImageSuperseded"):
            for event in verifier.ledger.events(name):
                key = event.args.get("recordKey")
                if isinstance(key, bytes) and key not in known_keys:
                    known_keys.add(key)
                    orphans += 1
                    findings.append(
                        Finding(
                            status="missing",
                            sop_instance_uid=None,
                            orthanc_id=None,
                            tamper=None,
                            explanation="The ledger holds a record no instance known to this "
                            "gateway accounts for (recorded elsewhere, or the index was lost).",
                            notes=[f"transaction {event.tx_hash}"],
                            record_key=key.hex(),
                        )
                    )
    summary: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for verdict in verdicts:
        summary[verdict.status] += 1
    summary["total"] = len(verdicts)
    if alerts is not None:
        for finding in findings:
            if finding.status in ("pending",):
                continue
            alerts.record(
                kind=finding.status,
                source="audit",
                sop_instance_uid=finding.sop_instance_uid,
                orthanc_id=finding.orthanc_id,
                detail=finding.explanation + (f" ({finding.tamper})" if finding.tamper else ""),
            )
    return AuditReport(summary=summary, findings=findings, ledger_records_without_instance=orphans)


class AuditRunning(GatewayError):
    """A sweep is in progress already; ``audit_id`` is its id."""

    def __init__(self, audit_id: str) -> None:
        super().__init__(f"audit {audit_id} is running")
        self.audit_id = audit_id


class Audits:
    """Runs sweeps in the background and keeps their state.

    Parameters
    ----------
    path:
        ``<data>/audits.sqlite``.
    verifier, index, alerts:
        What a sweep needs.
    """

    def __init__(
        self, path: Path, *, verifier: Verifier, index: Index | None, alerts: Alerts | None
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
            # A sweep that was running when the process stopped will never finish.
            self._db.execute(
                "UPDATE audits SET state = 'failed', error = 'interrupted by a restart'"
                " WHERE state = 'running'"
            )
        self.verifier = verifier
        self.index = index
        self.alerts = alerts
        self._threads: dict[str, threading.Thread] = {}

    def close(self) -> None:
        for thread in list(self._threads.values()):
            thread.join(30)
        with self._lock:
            self._db.close()

    def start(self, *, requested_by: str) -> str:
        """Begin a sweep in the background; returns its id.

        Raises
        ------
        AuditRunning
            A sweep is running already (one at a time: each reads the whole archive).
        """
        audit_id = uuid.uuid4().hex
        thread = threading.Thread(
            target=self._run, args=(audit_id,), name=f"audit-{audit_id[:8]}", daemon=True
        )
        with self._lock:
            running = self.running()
            if running is not None:
                raise AuditRunning(running)
            self._db.execute(
                "INSERT INTO audits (id, requested_by, state, started_at) VALUES (?, ?, 'running', ?)",
                (audit_id, requested_by, time.time()),
            )
            self._threads[audit_id] = thread
        thread.start()
        return audit_id

    def running(self) -> str | None:
        """The id of the sweep in progress, or ``None``."""
        return next(iter(self._threads), None)

    def _set(self, audit_id: str, **values: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._lock:
            self._db.execute(
                f"UPDATE audits SET {assignments} WHERE id = ?", (*values.values(), audit_id)
            )

    def _run(self, audit_id: str) -> None:
        last = 0.0

        def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= 0.5 or done == total:
                last = now
                self._set(audit_id, done=done, total=total)

        try:
            report = sweep(self.verifier, index=self.index, alerts=self.alerts, progress=progress)
        except (GatewayError, OSError) as exc:
            log.error("audit %s failed: %s", audit_id, exc)
            self._set(audit_id, state="failed", finished_at=time.time(), error=str(exc)[:500])
            return
        except Exception as exc:
            log.exception("audit %s failed", audit_id)
            self._set(audit_id, state="failed", finished_at=time.time(), error=repr(exc)[:500])
            return
        else:
            self._set(
                audit_id, state="done", finished_at=time.time(), report=json.dumps(asdict(report))
            )
            log.info(
                "audit %s done: %d instances, %d findings",
                audit_id, report.summary["total"], len(report.findings),
            )  # fmt: skip
        finally:
            with self._lock:
                self._threads.pop(audit_id, None)

    def get(self, audit_id: str) -> AuditState | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, requested_by, state, started_at, finished_at, total, done, report, error"
                " FROM audits WHERE id = ?",
                (audit_id,),
            ).fetchone()
        if row is None:
            return None
        report = None
        if row[7]:
            raw = json.loads(row[7])
            report = AuditReport(
                summary=raw["summary"],
                findings=[Finding(**finding) for finding in raw["findings"]],
                ledger_records_without_instance=raw["ledger_records_without_instance"],
            )
        return AuditState(*row[:7], report=report, error=row[8])  # type: ignore[misc]

    def wait(self, audit_id: str, timeout: float) -> AuditState | None:
        """Block until the audit finishes (tests and the CLI); returns its state."""
        thread = self._threads.get(audit_id)
        if thread is not None:
            thread.join(timeout)
        return self.get(audit_id)
