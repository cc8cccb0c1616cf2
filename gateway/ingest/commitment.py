"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION in, N-EVENT-REPORT out.

A modality asks, with an N-ACTION (action type 1, *Request Storage Commitment*), whether
the gateway has taken responsibility for a list of instances. The gateway writes the
request to the index database, answers the N-ACTION with success, and reports later
with an N-EVENT-REPORT:

=============  ==============================================================
event type 1   every instance is committed: sealed and stored, anchored, in Orthanc
event type 2   some failed; each in FailedSOPSequence with a FailureReason
=============  ==============================================================

Failure reasons: ``0x0112`` the gateway never received that SOP Instance UID; ``0x0119``
it did, under another SOP Class; ``0x0110`` it did not commit it (conflict in the PACS,
parked at stage ``failed`` after repeated permanent failures, or still not committed when ``commitment_timeout_s`` ran out). Instances still on their
way through the pipeline are waited for until that timeout.

The report goes on the association the request came on while it is open, otherwise on a
new association to the modality's address from ``GATEWAY_COMMITMENT_PEERS`` (PS3.4 J.3.3:
the gateway then proposes the SCP role). A report that cannot be delivered (unknown
peer, peer down) stays in the table and is retried with backoff; a restart keeps every
open request.

A request that came over DICOM TLS is reported over TLS too: a new association then
presents the gateway's certificate (``GATEWAY_TLS_CERT``) and verifies the modality's
against ``GATEWAY_TLS_CA``, or the system CAs without it. Whether a request came over TLS
is kept with it, so a report delivered after a restart still goes over TLS.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt

from gateway.core.nodes import SEPARATOR
from gateway.index.db import DONE_STAGES, Index, Row
from gateway.ingest.listener import nodelay
from gateway.ingest.retry import backoff
from gateway.ingest.tls import is_tls

log = logging.getLogger(__name__)

STORAGE_COMMITMENT = UID("1.2.840.10008.1.20.1")
WELL_KNOWN_INSTANCE = UID("1.2.840.10008.1.20.1.1")
REQUEST_STORAGE_COMMITMENT = 1
ALL_COMMITTED = 1
SOME_FAILED = 2

# A report goes on the request's own association once our N-ACTION response has been out
# this long without the modality releasing (most release at once; a report that crosses
# their A-RELEASE is ignored), and waits this long there for the answer before falling
# back to a new association.
SAME_ASSOCIATION_GRACE_S = 0.5
SAME_ASSOCIATION_WAIT_S = 10.0

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
INVALID_ARGUMENT_VALUE = 0x0115
CLASS_INSTANCE_CONFLICT = 0x0119
MISSING_ATTRIBUTE = 0x0120
NO_SUCH_ACTION = 0x0123

# The ``commitments`` table is part of the index's schema (gateway/index/schema.py).
# state: 'open' (waiting for its instances), 'ready' (report decided, not yet delivered),
# 'reported' (the modality answered the N-EVENT-REPORT)


@dataclass(frozen=True)
class Reference:
    """One instance a modality asks about."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Report:
    """What one N-EVENT-REPORT says."""

    transaction_uid: str
    committed: tuple[Reference, ...]
    failed: tuple[tuple[Reference, int], ...]

    @property
    def event_type(self) -> int:
        return SOME_FAILED if self.failed else ALL_COMMITTED

    def dataset(self) -> Dataset:
        """The Event Information (PS3.4 Table J.3-2)."""
        ds = Dataset()
        ds.TransactionUID = self.transaction_uid
        if self.committed:
            ds.ReferencedSOPSequence = [_item(ref) for ref in self.committed]
        if self.failed:
            items = []
            for ref, reason in self.failed:
                item = _item(ref)
                item.FailureReason = reason
                items.append(item)
            ds.FailedSOPSequence = items
        return ds

    def to_json(self) -> str:
        return json.dumps(
            {
                "committed": [[r.sop_class_uid, r.sop_instance_uid] for r in self.committed],
                "failed": [[r.sop_class_uid, r.sop_instance_uid, why] for r, why in self.failed],
            }
        )

    @classmethod
    def from_json(cls, transaction_uid: str, text: str) -> Report:
        data = json.loads(text)
        return cls(
            transaction_uid=transaction_uid,
            committed=tuple(Reference(c, i) for c, i in data["committed"]),
            failed=tuple((Reference(c, i), int(why)) for c, i, why in data["failed"]),
        )


def _item(ref: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


def instance_result(ref: Reference, rows: list[Row]) -> int | None:
    """Where one instance stands: ``SUCCESS``, a failure reason, or None (still on its way).

    ``rows`` are the index rows with the reference's SOP Instance UID. Success needs a
    row of that SOP Class whose latest version reached ``committed``; a duplicate row
    stands for the row it duplicates.
    """
    if not rows:
        return NO_SUCH_OBJECT_INSTANCE
    mine = [row for row in rows if row.sop_class_uid == ref.sop_class_uid]
    if not mine:
        return CLASS_INSTANCE_CONFLICT
    if any(row.stage not in DONE_STAGES for row in mine):
        return None
    versions = [row for row in mine if row.stage != "duplicate"]
    if versions and versions[-1].stage == "committed":
        return SUCCESS
    return PROCESSING_FAILURE  # conflict in the PACS, rejected, or parked at stage failed


def decide(
    transaction_uid: str, refs: list[Reference], index: Index, *, final: bool
) -> Report | None:
    """The report for a request, or None while some instance is on its way and not ``final``.

    When ``final`` (the timeout ran out), instances still on their way fail with
    ``PROCESSING_FAILURE``.
    """
    committed: list[Reference] = []
    failed: list[tuple[Reference, int]] = []
    for ref in refs:
        verdict = instance_result(ref, index.by_uid(ref.sop_instance_uid))
        if verdict is None:
            if not final:
                return None
            verdict = PROCESSING_FAILURE
        if verdict == SUCCESS:
            committed.append(ref)
        else:
            failed.append((ref, verdict))
    return Report(transaction_uid=transaction_uid, committed=tuple(committed), failed=tuple(failed))


@dataclass(frozen=True)
class Request:
    """One stored commitment request (a row of the ``commitments`` table)."""

    id: int
    transaction_uid: str
    calling_aet: str
    refs: tuple[Reference, ...]
    received_at: float
    deadline: float
    state: str
    event_type: int | None
    report: str | None
    attempts: int
    next_attempt_at: float
    last_error: str | None
    tls: bool = False  # the request came over DICOM TLS: so must its report


_REQUEST_COLUMNS = (
    "id, transaction_uid, calling_aet, refs, received_at, deadline, state, event_type,"
    " report, attempts, next_attempt_at, last_error, tls"
)


def _request(values: tuple[Any, ...]) -> Request:
    refs = tuple(Reference(c, i) for c, i in json.loads(values[3]))
    request = Request(values[0], values[1], values[2], refs, *values[4:12])
    return replace(request, tls=bool(values[12]))


class Undelivered(NamedTuple):
    """A decided request whose report could not be delivered yet (``xray-gateway status``)."""

    request: int
    calling_aet: str
    attempts: int
    last_error: str | None


class CommitmentLog:
    """The ``commitments`` table in the index database: requests survive a restart.

    The table is made by the index's schema steps when the index is opened.
    ``readonly=True`` reads an index opened read-only (``xray-gateway status``): on an
    index from before Storage Commitment the queries raise one of
    :data:`~gateway.index.engine.DATABASE_ERRORS`.
    """

    def __init__(self, index: Index, *, node: str = "", readonly: bool = False) -> None:
        self.index = index
        self.node = node  # the gateway node whose requests these are (``GATEWAY_NODE_ID``)
        self.readonly = readonly

    def add(self, *, transaction_uid: str, calling_aet: str, refs: list[Reference],
            deadline: float, tls: bool = False) -> int:  # fmt: skip
        with self.index.transaction() as db:
            (request_id,) = db.execute(
                "INSERT INTO commitments (transaction_uid, calling_aet, refs, received_at,"
                " deadline, state, tls, node) VALUES (?, ?, ?, ?, ?, 'open', ?, ?) RETURNING id",
                (
                    transaction_uid,
                    calling_aet,
                    json.dumps([[r.sop_class_uid, r.sop_instance_uid] for r in refs]),
                    time.time(),
                    deadline,
                    int(tls),
                    self.node,
                ),
            ).fetchone()
            return int(request_id)

    def get(self, request_id: int) -> Request:
        (values,) = self.index.query(
            f"SELECT {_REQUEST_COLUMNS} FROM commitments WHERE id = ?", (request_id,)
        )
        return _request(values)

    def due(self, now: float) -> list[Request]:
        """This node's open requests and undelivered reports whose next try has come,
        oldest first. A request is the node's that received the N-ACTION, so one
        N-EVENT-REPORT goes out whichever node received the images."""
        rows = self.index.query(
            f"SELECT {_REQUEST_COLUMNS} FROM commitments WHERE state IN ('open', 'ready')"
            " AND node = ? AND next_attempt_at <= ? ORDER BY id",
            (self.node, now),
        )
        return [_request(values) for values in rows]

    def adopt_unowned(self) -> int:
        """Make this node the owner of requests from before node ids (one UPDATE: the
        first node to start after the upgrade takes them all); returns how many."""
        with self.index.transaction() as db:
            cursor = db.execute(
                "UPDATE commitments SET node = ? WHERE node IS NULL AND state != 'reported'",
                (self.node,),
            )
            return max(int(cursor.rowcount), 0)

    def hand_over(self, owners: Sequence[str] = (), *, prefix: str | None = None) -> int:
        """Make this owner (a node, or one listener process of it) deliver the requests not
        yet reported that ``owners`` hold, or any owner whose id starts with ``prefix``:
        ``up`` calls it before its listeners start, when their number changed. Returns
        how many."""
        tests = [f"node IN ({', '.join('?' for _ in owners)})"] if owners else []
        values: list[Any] = [*owners]
        if prefix:
            tests.append("substr(node, 1, ?) = ?")
            values += [len(prefix), prefix]
        if not tests:
            return 0
        with self.index.transaction() as db:
            cursor = db.execute(
                "UPDATE commitments SET node = ? WHERE state != 'reported' AND node != ?"
                f" AND ({' OR '.join(tests)})",
                (self.node, self.node, *values),
            )
            return max(int(cursor.rowcount), 0)

    def decided(self, request_id: int, report: Report) -> None:
        self._set(request_id, state="ready", event_type=report.event_type,
                  report=report.to_json())  # fmt: skip

    def delivered(self, request_id: int) -> None:
        self._set(request_id, state="reported", reported_at=time.time(), last_error=None)

    def failed_delivery(self, request_id: int, error: str, *, retry_in: float) -> None:
        with self.index.transaction() as db:
            db.execute(
                "UPDATE commitments SET attempts = attempts + 1, last_error = ?,"
                " next_attempt_at = ? WHERE id = ?",
                (error[:500], time.time() + retry_in, request_id),
            )

    def counts(self) -> dict[str, int]:
        """Requests per state: open, ready (undelivered), reported (every node's)."""
        rows = self.index.query("SELECT state, COUNT(*) FROM commitments GROUP BY state")
        return {str(state): int(count) for state, count in rows}

    def counts_per_node(self) -> dict[str, dict[str, int]]:
        """Requests per owning node, then per state (``""``: not yet adopted by a node); a
        request one of a node's listener processes owns (``<node>/listen-N``) is the node's."""
        rows = self.index.query(
            "SELECT COALESCE(node, ''), state, COUNT(*) FROM commitments GROUP BY node, state"
        )
        found: dict[str, dict[str, int]] = {}
        for owner, state, count in rows:
            states = found.setdefault(str(owner).partition(SEPARATOR)[0], {})
            states[str(state)] = states.get(str(state), 0) + int(count)
        return found

    def undelivered(self, limit: int) -> list[Undelivered]:
        """Decided requests whose report has failed to go out at least once, oldest first."""
        rows = self.index.query(
            "SELECT id, calling_aet, attempts, last_error FROM commitments"
            " WHERE state = 'ready' AND attempts > 0 ORDER BY id LIMIT ?",
            (limit,),
        )
        return [Undelivered(*values) for values in rows]

    def _set(self, request_id: int, **values: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self.index.transaction() as db:
            db.execute(
                f"UPDATE commitments SET {assignments} WHERE id = ?",
                (*values.values(), request_id),
            )


class CommitmentSCP:
    """Answers N-ACTION on the listener's AE and delivers the reports from a worker thread.

    Parameters
    ----------
    index:
        The index: where instances stand, and where requests are kept.
    ae_title:
        Our AE title, used when we open an association to deliver a report.
    peers:
        Calling AE title -> (host, port) of the modality's own SCP.
    timeout_s:
        How long to wait for received instances to be committed before failing them.
    poll_s:
        How often open requests are looked at again.
    node:
        This gateway node's id: it reports the requests it received, and only those.
    ssl_context:
        The client context (:func:`gateway.ingest.tls.client_context`) for reports to requests
        that came over TLS; None when the gateway has no DICOM TLS.
    on_count:
        Called with the name of each counter bumped (accepted, refused,
        reported_event_type_N, delivery_failures): ``up`` adds them up over its listener
        processes in ``/metrics``.
    """

    def __init__(
        self,
        *,
        index: Index,
        ae_title: str,
        peers: Mapping[str, tuple[str, int]],
        timeout_s: float = 600.0,
        poll_s: float = 0.5,
        network_timeout_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        node: str = "",
        on_count: Callable[[str], None] | None = None,
    ) -> None:
        self.index = index
        self.on_count = on_count
        self.log = CommitmentLog(index, node=node)
        self.ae_title = ae_title
        self.peers = dict(peers)
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.network_timeout_s = network_timeout_s
        self.ssl_context = ssl_context
        self.counters: Counter[str] = Counter()  # for /metrics
        self._lock = threading.Lock()
        # request id -> the association it came on; (id(assoc), message id) -> request id
        # for N-ACTION responses not yet sent, and when each went out
        self._assocs: dict[int, Any] = {}
        self._answered: dict[tuple[int, int], float] = {}  # -> when the response went out
        self._pending_answer: dict[tuple[int, int], int] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the listener's side ---------------------------------------------------------------

    def add_contexts(self, ae: AE) -> None:
        """Accept Storage Commitment Push Model on the listener's AE."""
        ae.add_supported_context(
            STORAGE_COMMITMENT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )

    def handle_action(self, event: Any) -> tuple[int, Dataset | None]:
        """EVT_N_ACTION: keep the request, answer at once; the report follows later."""
        request = event.request
        calling = str(event.assoc.requestor.ae_title).strip()
        if request.RequestedSOPInstanceUID != WELL_KNOWN_INSTANCE:
            return self._refuse(calling, NO_SUCH_OBJECT_INSTANCE, "not the well-known instance")
        if event.action_type != REQUEST_STORAGE_COMMITMENT:
            return self._refuse(calling, NO_SUCH_ACTION, f"action type {event.action_type}")
        try:
            info = event.action_information
            transaction_uid = str(info.get("TransactionUID", ""))
            items = info.get("ReferencedSOPSequence")
            refs = [
                Reference(
                    str(item.get("ReferencedSOPClassUID", "")),
                    str(item.get("ReferencedSOPInstanceUID", "")),
                )
                for item in (items or [])
            ]
        except Exception as exc:  # pydicom parses lazily: a bad dataset raises here
            return self._refuse(calling, PROCESSING_FAILURE, f"unreadable: {type(exc).__name__}")
        if not transaction_uid or not items:
            return self._refuse(calling, MISSING_ATTRIBUTE, "no Transaction UID or references")
        uids = [transaction_uid] + [u for r in refs for u in (r.sop_class_uid, r.sop_instance_uid)]
        if not all(UID(uid).is_valid for uid in uids):
            return self._refuse(calling, INVALID_ARGUMENT_VALUE, "invalid UID")
        try:
            request_id = self.log.add(
                transaction_uid=transaction_uid,
                calling_aet=calling,
                refs=refs,
                deadline=time.time() + self.timeout_s,
                tls=is_tls(event.assoc),
            )
        except Exception:
            log.exception("commitment request from %s: cannot store it", calling)
            return self._refuse(calling, PROCESSING_FAILURE, "index unavailable")
        assoc = event.assoc
        key = (id(assoc), int(request.MessageID))
        with self._lock:
            self._assocs[request_id] = assoc
            self._pending_answer[key] = request_id
        # The report must not overtake the N-ACTION response on this association.
        assoc.bind(evt.EVT_DIMSE_SENT, self._on_sent)
        self._count("accepted")
        log.info(
            "commitment request %d from %s: %d instances (transaction %s)",
            request_id, calling, len(refs), transaction_uid,
        )  # fmt: skip
        self._wake.set()
        return SUCCESS, None

    def _count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1
        if self.on_count is not None:
            self.on_count(name)

    def counts(self) -> dict[str, int]:
        """A snapshot of the counters (accepted, refused, reported_event_type_N, …)."""
        with self._lock:
            return dict(self.counters)

    def _refuse(self, calling: str, code: int, why: str) -> tuple[int, None]:
        self._count("refused")
        log.warning("refused commitment request from %s: 0x%04X %s", calling, code, why)
        return code, None

    def _on_sent(self, event: Any) -> None:
        """EVT_DIMSE_SENT on an association that asked: note our N-ACTION responses."""
        message = event.message
        if type(message).__name__ != "N_ACTION_RSP":
            return
        key = (id(event.assoc), int(message.command_set.MessageIDBeingRespondedTo))
        with self._lock:
            if key in self._pending_answer:
                self._answered[key] = time.monotonic()
        self._wake.set()

    # -- the worker ------------------------------------------------------------------------

    def start(self) -> None:
        self.log.adopt_unowned()
        self._thread = threading.Thread(target=self._run, name="commitment", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.network_timeout_s + 10)

    def wake(self, row_id: int | None = None) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once()
            except Exception:  # the worker must outlive a bad round (e.g. index busy)
                log.exception("commitment worker round failed")
            self._wake.wait(self.poll_s)

    def run_once(self, *, now: float | None = None) -> None:
        """Decide every open request that can be decided; deliver every decided report."""
        now = time.time() if now is None else now
        for request in self.log.due(now):
            if self._stop.is_set():
                return
            if request.state == "open":
                final = now >= request.deadline
                report = decide(request.transaction_uid, list(request.refs), self.index,
                                final=final)  # fmt: skip
                if report is None:
                    continue
                self.log.decided(request.id, report)
                log.info(
                    "commitment request %d: %d committed, %d failed%s",
                    request.id, len(report.committed), len(report.failed),
                    " (timed out)" if final else "",
                )  # fmt: skip
            else:
                assert request.report is not None
                report = Report.from_json(request.transaction_uid, request.report)
            self._deliver(request, report)

    def _deliver(self, request: Request, report: Report) -> None:
        with self._lock:
            assoc = self._assocs.get(request.id)
            keys = [k for k, rid in self._pending_answer.items() if rid == request.id]
            answered = [self._answered.get(k) for k in keys]
        if assoc is not None and not assoc.is_established:
            self._forget(request.id)
            assoc = None
        if assoc is not None:
            if None in answered:
                return  # our N-ACTION response has not gone out yet; the report must follow it
            last = max((t for t in answered if t is not None), default=0.0)
            if time.monotonic() - last < SAME_ASSOCIATION_GRACE_S:
                return  # give a modality that releases at once the time to do so
        errors: list[str] = []
        if assoc is not None:
            # A modality that releases right after the N-ACTION ignores a report that
            # crosses its A-RELEASE: wait for the answer briefly, then use a new association.
            assoc.dimse_timeout = min(self.network_timeout_s, SAME_ASSOCIATION_WAIT_S)
            try:
                if self._send(assoc, report):
                    self._done(request, report, "on the same association")
                    return
                errors.append("same association: no success status")
            except Exception as exc:  # it may be closing under us: try a new one
                errors.append(f"same association: {type(exc).__name__}: {exc}")
            self._forget(request.id)
        peer = self.peers.get(request.calling_aet)
        if peer is None:
            errors.append(
                f"no address for AE {request.calling_aet!r}: add it to GATEWAY_COMMITMENT_PEERS"
            )
        elif request.tls and self.ssl_context is None:
            errors.append("the request came over TLS: set GATEWAY_TLS_CERT and GATEWAY_TLS_KEY")
        else:
            address = f"{peer[0]}:{peer[1]}" + (" (TLS)" if request.tls else "")
            try:
                if self._send_new(request.calling_aet, peer, report, tls=request.tls):
                    self._done(request, report, f"on a new association to {address}")
                    return
                errors.append(f"{address}: association refused or report not accepted")
            except Exception as exc:
                errors.append(f"{address}: {type(exc).__name__}: {exc}")
        retry_in = backoff(request.attempts, base=1.0)  # 1, 2, 4, … capped at five minutes
        self._count("delivery_failures")
        log.error(
            "commitment report %d for %s not delivered (%s); kept, retry in %.0f s",
            request.id, request.calling_aet, "; ".join(errors), retry_in,
        )  # fmt: skip
        self.log.failed_delivery(request.id, "; ".join(errors), retry_in=retry_in)

    def _forget(self, request_id: int) -> None:
        with self._lock:
            self._assocs.pop(request_id, None)
            for key in [k for k, rid in self._pending_answer.items() if rid == request_id]:
                del self._pending_answer[key]
                self._answered.pop(key, None)

    def _done(self, request: Request, report: Report, how: str) -> None:
        self.log.delivered(request.id)
        self._forget(request.id)
        self._count(f"reported_event_type_{report.event_type}")
        log.info(
            "commitment report %d delivered to %s %s: event type %d",
            request.id, request.calling_aet, how, report.event_type,
        )  # fmt: skip

    def _send(self, assoc: Any, report: Report) -> bool:
        status, _ = assoc.send_n_event_report(
            report.dataset(), report.event_type, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE
        )
        return getattr(status, "Status", None) == SUCCESS

    def _send_new(
        self, calling_aet: str, peer: tuple[str, int], report: Report, *, tls: bool = False
    ) -> bool:
        """Open an association to the modality as the SCP (role selection), send, release.

        With ``tls``, over TLS: the modality's certificate must name ``peer``'s host.
        """
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.network_timeout_s
        ae.add_requested_context(
            STORAGE_COMMITMENT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        role = build_role(STORAGE_COMMITMENT, scu_role=False, scp_role=True)
        assoc = ae.associate(
            peer[0],
            peer[1],
            ae_title=calling_aet,
            ext_neg=[role],
            evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)],
            tls_args=(self.ssl_context, peer[0]) if tls and self.ssl_context else None,
        )
        if not assoc.is_established:
            return False
        try:
            return self._send(assoc, report)
        finally:
            if assoc.is_established:
                assoc.release()
