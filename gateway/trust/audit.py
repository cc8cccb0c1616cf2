"""The audit sweep: every instance the PACS or the gateway knows, verified; every ledger record accounted for.

A sweep takes the union of

* every instance Orthanc holds (``/tools/find``),
* every instance in the gateway's index (duplicates aside),

builds the verdict of each, and then looks the other way round: every record the
ledger holds (``ImageRecorded`` events, batch members in the index) must belong to an
instance the gateway knows. Findings are every verdict that is not ``intact``, plus
ledger records with no instance. Each finding is also written to the alert log.
The access trail is swept too (:func:`gateway.trust.trail.check_trail`): every anchored
trail batch is recomputed from the entries the index holds; a deleted or edited entry is a
``trail_tampered`` finding and alert.

Audits are kept in ``<data>/audits.sqlite`` with their progress, so ``GET /v1/audits/{id}``
answers while one runs and after a restart. :meth:`Audits.page` lists past audits newest
first (``GET /v1/audits``), :meth:`Audits.findings` one audit's findings a page at a time.

Beside the sweeps, :class:`PendingWatch` looks at the index every few seconds and raises
one ``pending_too_long`` alert per instance still not committed ``GATEWAY_PENDING_ALERT_S``
after it was received (named by row and record-key prefix, with its stage and age).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway import failpoints
from gateway.errors import AuditRunning, GatewayError, UnknownInstance
from gateway.index.db import Index, error_class
from gateway.index.engine import DATABASE_ERRORS
from gateway.index.queries import is_version
from gateway.trust.alerts import Alerts
from gateway.trust.trail import Trail, check_trail
from gateway.trust.verdicts import STATUSES, TABLE
from gateway.trust.verify import PENDING_STAGES, Verdict, Verifier

# What a pending check may fail with and try again on its next tick (either index engine).
_RETRIED: tuple[type[Exception], ...] = (GatewayError, *DATABASE_ERRORS)

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


#: Where a page of audits stops: ``(started_at, id)`` of its last audit.
AuditKey = tuple[float, str]


@dataclass(frozen=True)
class PastAudit:
    """An audit as the list shows it: its state and counts, without the findings."""

    id: str
    requested_by: str
    state: str
    started_at: float
    finished_at: float | None
    total: int
    done: int
    summary: dict[str, int] | None
    findings: int | None
    error: str | None


@dataclass(frozen=True)
class AuditsPage:
    """One page of audits, newest first; ``next`` is where the following page starts."""

    items: list[PastAudit]
    next: AuditKey | None


@dataclass(frozen=True)
class FindingsPage:
    """One page of an audit's findings (in the report's order: by SOP Instance UID).

    ``next``: how many findings come before the following page, or ``None``.
    """

    audit_id: str
    state: str
    total: int
    items: list[Finding]
    next: int | None


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
            if not is_version(row.stage):
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
        failpoints.hit("audit.before_verdict")
        try:
            verdict = verifier.instance(uid)
        except UnknownInstance:
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
        if verdict.status == "erased" and verdict.copies.pacs == "absent":
            continue  # erased and gone, as it should be: counted in the summary, no finding
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
        # Records the ledger holds that no instance the gateway knows accounts for. The
        # index was read before the instances were checked: a key not in that read is
        # looked up again, since an image received while the sweep ran is on its way, not
        # an orphan.
        for name in ("ImageRecorded", "ImageSuperseded"):
            for event in verifier.ledger.events(name):
                key = event.args.get("recordKey")
                if isinstance(key, bytes) and key not in known_keys:
                    known_keys.add(key)
                    if index.versions_of(key):
                        continue
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
    trail_batches = 0
    if index is not None:
        trail_batches, trail_findings = check_trail(
            Trail(index, pseudonym_key=verifier.pseudonym_key), verifier.ledger
        )
        findings.extend(
            Finding(
                status="trail_tampered",
                sop_instance_uid=None,
                orthanc_id=None,
                tamper=None,
                explanation=found.explanation,
                notes=[f"access batch {found.batch_id}: {found.problem}"],
            )
            for found in trail_findings
        )
    summary: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for verdict in verdicts:
        summary[verdict.status] += 1
    summary["total"] = len(verdicts)
    summary["trail_batches_checked"] = trail_batches
    if alerts is not None:
        for finding in findings:
            kind = TABLE[finding.status].alert if finding.status in TABLE else finding.status
            if kind is None:
                continue
            alerts.record(
                kind=kind,
                source="audit",
                sop_instance_uid=finding.sop_instance_uid,
                orthanc_id=finding.orthanc_id,
                detail=finding.explanation + (f" ({finding.tamper})" if finding.tamper else ""),
            )
    return AuditReport(summary=summary, findings=findings, ledger_records_without_instance=orphans)


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

    def page(self, *, limit: int = 50, after: AuditKey | None = None) -> AuditsPage:
        """Up to ``limit`` audits started before ``after``, newest first."""
        where = "WHERE started_at < ? OR (started_at = ? AND id < ?)" if after else ""
        params: tuple[object, ...] = (after[0], after[0], after[1]) if after else ()
        with self._lock:
            rows = self._db.execute(
                "SELECT id, requested_by, state, started_at, finished_at, total, done,"
                " json_extract(report, '$.summary'), json_array_length(report, '$.findings'),"
                f" error FROM audits {where} ORDER BY started_at DESC, id DESC LIMIT ?",
                (*params, limit + 1),
            ).fetchall()
        items = [
            PastAudit(
                id=row[0],
                requested_by=row[1],
                state=row[2],
                started_at=row[3],
                finished_at=row[4],
                total=row[5],
                done=row[6],
                summary=json.loads(row[7]) if row[7] is not None else None,
                findings=row[8],
                error=row[9],
            )
            for row in rows[:limit]
        ]
        more = len(rows) > limit
        return AuditsPage(items=items, next=(items[-1].started_at, items[-1].id) if more else None)

    def findings(self, audit_id: str, *, limit: int = 100, after: int = 0) -> FindingsPage | None:
        """Findings ``after`` .. ``after + limit`` of a finished audit; ``None``: no such audit.

        While the audit runs (or when it failed) the page is empty.
        """
        state = self.get(audit_id)
        if state is None:
            return None
        found = state.report.findings if state.report is not None else []
        end = after + limit
        return FindingsPage(
            audit_id=audit_id,
            state=state.state,
            total=len(found),
            items=found[after:end],
            next=end if end < len(found) else None,
        )

    def wait(self, audit_id: str, timeout: float) -> AuditState | None:
        """Block until the audit finishes (tests and the CLI); returns its state."""
        thread = self._threads.get(audit_id)
        if thread is not None:
            thread.join(timeout)
        return self.get(audit_id)


@dataclass(frozen=True)
class Overdue:
    """An index row still not committed long after it was received (no patient data)."""

    row_id: int
    record: str  # a record-key prefix, or the spool entry before fingerprinting
    stage: str
    age_s: float
    error: str | None  # the class of its last error, if it failed

    def detail(self) -> str:
        said = f"row {self.row_id} ({self.record}) not committed after {self.age_s:.0f} s"
        said += f", at stage {self.stage}"
        return said + (f", last error {self.error}" if self.error else "")


def overdue(index: Index, *, older_than: float, now: float | None = None) -> list[Overdue]:
    """Rows the gateway has not finished with (verify.PENDING_STAGES) received before
    ``now - older_than``, oldest first."""
    now = time.time() if now is None else now
    marks = ", ".join("?" for _ in PENDING_STAGES)
    rows = index.query(
        "SELECT id, record_key, entry_id, stage, parked_stage, received_at, last_error"
        f" FROM instances WHERE stage IN ({marks}) AND received_at < ? ORDER BY id",
        (*PENDING_STAGES, now - older_than),
    )
    return [
        Overdue(
            row_id=int(row_id),
            record=f"record {bytes(key).hex()[:12]}" if key else f"entry {str(entry)[:8]}",
            stage=f"failed (parked at {parked})" if stage == "failed" else str(stage),
            age_s=round(now - float(received_at), 1),
            error=error_class(error) if error else None,
        )
        for row_id, key, entry, stage, parked, received_at, error in rows
    ]


class PendingWatch:
    """Raises one ``pending_too_long`` alert per row not committed after ``after_s`` seconds.

    A thread checks the index every ``interval`` seconds (a quarter of ``after_s``, at
    most 30 s). Rows alerted before a restart are read back from the alert log, so each
    row is alerted once.
    """

    KIND = "pending_too_long"

    def __init__(
        self, *, index: Index, alerts: Alerts, after_s: float, interval: float | None = None
    ) -> None:
        self.index = index
        self.alerts = alerts
        self.after_s = after_s
        self.interval = interval if interval is not None else min(30.0, max(0.5, after_s / 4))
        self._alerted = {
            int(match.group(1))
            for alert in alerts.recent(kind=self.KIND, limit=100_000)
            if (match := re.match(r"row (\d+) ", alert.detail))
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self, now: float | None = None) -> list[Overdue]:
        """Alert the rows overdue now and not alerted yet; returns them."""
        fresh = [
            row
            for row in overdue(self.index, older_than=self.after_s, now=now)
            if row.row_id not in self._alerted
        ]
        for row in fresh:
            self.alerts.record(kind=self.KIND, source="gateway", detail=row.detail())
            self._alerted.add(row.row_id)
            log.warning("pending too long: %s", row.detail())
        return fresh

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pending-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except _RETRIED as exc:  # retried on the next tick
                log.error("the pending check failed: %s", exc)
