"""``/metrics``: the gateway's state in Prometheus text format, read at scrape time.

Queue depth and failures come from the index; C-STORE responses and commitment counts
from the listener and the commitment SCP. No label carries patient data: stages, error
class names, DICOM status codes.

=============================================  =========================================
xray_gateway_instances{stage}                  index rows per stage, terminal ones too
xray_gateway_queue_depth{stage}                rows with work left, per stage
xray_gateway_oldest_pending_age_seconds        age of the oldest row with work left
xray_gateway_pending_too_long_instances        rows not committed ``GATEWAY_PENDING_ALERT_S``
                                               after they were received (each alerted once)
xray_gateway_failing_instances{stage,error}    rows with work left whose last attempt failed
xray_gateway_parked_instances{stage,error}     rows parked at stage ``failed`` (a permanent
                                               reason), by the stage they stopped at
xray_gateway_batches{state}                    Merkle batches: open (not landed), landed
xray_gateway_cstore_responses_total{status}    C-STORE responses sent, by status
xray_gateway_spool_free_bytes                  free bytes on the spool's filesystem
xray_gateway_spool_reserve_bytes               below this, C-STOREs get 0xA700
xray_gateway_commitment_requests_total{result} N-ACTIONs accepted / refused
xray_gateway_commitment_reports_total{event_type}  N-EVENT-REPORTs delivered
xray_gateway_commitment_delivery_failures_total    failed delivery attempts
xray_gateway_commitment_requests_stored{state}  stored: open, ready, reported
xray_gateway_alerts_total{kind}                alerts recorded, by kind (the gateway's and
                                               the Orthanc plugin's logs, read at scrape)
xray_gateway_ack_latency_seconds               histogram: a dataset's first bytes -> its
                                               C-STORE success response (every listener)
xray_gateway_commit_latency_seconds            histogram: received (acked) -> anchored on the
                                               chain, from the index (every node's rows)
xray_gateway_notify_events{target,state}       the alerts' outbox: events per webhook/syslog
                                               target, pending or delivered
=============================================  =========================================

Two kinds of metric. Gauges read at scrape time (the index's rows, the spool's room) come
from :class:`GatewayCollector` in the process that answers ``/metrics``. Counts kept as
events happen (C-STORE responses, commitment requests and reports) are prometheus_client
*instruments* on :data:`INSTRUMENTS`, and may happen in any of ``up``'s processes: its
listener processes (``GATEWAY_LISTENERS``), its workers, itself. ``up`` sets
``PROMETHEUS_MULTIPROC_DIR`` (``<data dir>/run/metrics``, emptied on start) before
prometheus_client is imported and its children inherit it, so every process writes its
instruments there and :func:`registry_for` adds them up over processes
(prometheus_client's multiprocess mode). A new instrument declared on
:data:`INSTRUMENTS` is summed the same way with nothing more to do; a gauge instrument
needs a ``multiprocess_mode`` (``livesum``: the live processes' sum), and ``up`` marks a
dead child's live gauges gone (:func:`forget_process`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from gateway.core.latency import ACK_BOUNDS, COMMIT_BOUNDS, cumulative
from gateway.core.latency import Histogram as Buckets
from gateway.core.nodes import node_of
from gateway.errors import AlertsUnavailable
from gateway.index.db import DONE_STAGES, STAGES, Index
from gateway.trust.alerts import KINDS

if TYPE_CHECKING:
    from gateway.ingest.commitment import CommitmentLog, CommitmentSCP
    from gateway.ingest.receive import Receiver
    from gateway.ingest.spool import Spool

PREFIX = "xray_gateway"

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""The environment variable that puts prometheus_client in multiprocess mode; it must be
set before prometheus_client is first imported (``xray-gateway up`` sets it)."""

INSTRUMENTS = CollectorRegistry(auto_describe=True)
"""The counters, histograms and gauges updated as events happen, in whichever process."""

CSTORE_RESPONSES = Counter(
    f"{PREFIX}_cstore_responses", "C-STORE responses sent, by status", ["status"],
    registry=INSTRUMENTS,
)  # fmt: skip
COMMITMENT_REQUESTS = Counter(
    f"{PREFIX}_commitment_requests", "Storage Commitment N-ACTIONs", ["result"],
    registry=INSTRUMENTS,
)  # fmt: skip
COMMITMENT_REPORTS = Counter(
    f"{PREFIX}_commitment_reports",
    "N-EVENT-REPORTs delivered (1: all committed, 2: some failed)", ["event_type"],
    registry=INSTRUMENTS,
)  # fmt: skip
COMMITMENT_DELIVERY_FAILURES = Counter(
    f"{PREFIX}_commitment_delivery_failures",
    "Failed N-EVENT-REPORT delivery attempts (each is retried)",
    registry=INSTRUMENTS,
)
ACK_LATENCY = Histogram(
    f"{PREFIX}_ack_latency_seconds",
    "C-STORE ack latency: a dataset's first bytes to its success response",
    buckets=ACK_BOUNDS, registry=INSTRUMENTS,
)  # fmt: skip


def observe_ack(seconds: float) -> None:
    """One C-STORE acked ``seconds`` after its first bytes (``Receiver`` ``on_ack``)."""
    ACK_LATENCY.observe(seconds)


def count_cstore_response(status: int) -> None:
    """One C-STORE response sent (:class:`~gateway.ingest.receive.Receiver` ``on_response``)."""
    CSTORE_RESPONSES.labels(f"0x{status:04X}").inc()


def count_commitment(name: str) -> None:
    """One commitment counter bumped (:class:`~gateway.ingest.commitment.CommitmentSCP`
    ``on_count``): accepted, refused, reported_event_type_N, delivery_failures."""
    if name in ("accepted", "refused"):
        COMMITMENT_REQUESTS.labels(name).inc()
    elif name.startswith("reported_event_type_"):
        COMMITMENT_REPORTS.labels(name.removeprefix("reported_event_type_")).inc()
    elif name == "delivery_failures":
        COMMITMENT_DELIVERY_FAILURES.inc()


def forget_process(pid: int) -> None:
    """A child process of ``up`` died: its live gauges stop counting (its counters stay)."""
    directory = os.environ.get(MULTIPROCESS_DIR)
    if directory:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


class GatewayCollector(Collector):
    """Collects from the parts it is given; any part may be absent (None)."""

    def __init__(
        self,
        *,
        index: Index,
        receiver: Receiver | None = None,
        spool: Spool | None = None,
        commitment: CommitmentSCP | None = None,
        commitment_log: CommitmentLog | None = None,
        alerts: Callable[[], dict[str, int]] | None = None,
        outbox: Callable[[], dict[tuple[str, str], int]] | None = None,
        overdue: Callable[[], int] | None = None,
        node: str | None = None,
    ) -> None:
        # receiver, commitment: their own counts, read here (one process); without them
        # the counts are the instruments (registry_for), and commitment_log the stored
        # requests alone
        self.index = index
        self.commitment_log = commitment_log
        self.alerts = alerts
        self.outbox = outbox
        self.node = node
        self.overdue = overdue
        self.receiver = receiver
        self.spool = spool
        self.commitment = commitment

    def collect(self) -> Iterator[Metric]:
        if self.node is not None:
            info = GaugeMetricFamily(
                f"{PREFIX}_node",
                "The gateway node answering (1); its own counters (C-STORE responses, "
                "spool, commitment reports) are this node's, the index's gauges every node's",
                labels=["node"],
            )
            info.add_metric([self.node], 1)
            yield info
        yield from self._index()
        if self.receiver is not None:
            responses = CounterMetricFamily(
                f"{PREFIX}_cstore_responses", "C-STORE responses sent, by status", labels=["status"]
            )
            for code, count in sorted(self.receiver.response_counts().items()):
                responses.add_metric([f"0x{code:04X}"], count)
            yield responses
        if self.alerts is not None:
            yield from self._alerts(self.alerts)
        if self.outbox is not None:
            events = GaugeMetricFamily(
                f"{PREFIX}_notify_events",
                "The alerts' outbox: events per target (webhook:<id>, syslog) and state",
                labels=["target", "state"],
            )
            for (target, state), count in sorted(self.outbox().items()):
                events.add_metric([target, state], count)
            yield events
        if self.spool is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_spool_free_bytes",
                "Free bytes on the spool's filesystem",
                value=self.spool.free_bytes(),
            )
            yield GaugeMetricFamily(
                f"{PREFIX}_spool_reserve_bytes",
                "Free bytes the spool keeps; below them C-STOREs get 0xA700",
                value=self.spool.reserve_bytes,
            )
        if self.commitment is not None:
            yield from self._commitment(self.commitment)
        elif self.commitment_log is not None:
            yield self._stored_requests(self.commitment_log)

    def _index(self) -> Iterator[Metric]:
        counts = self.index.stage_counts()
        instances = GaugeMetricFamily(
            f"{PREFIX}_instances", "Index rows per stage (terminal stages too)", labels=["stage"]
        )
        queue = GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Rows with work left, per stage", labels=["stage"]
        )
        for stage in sorted(set(STAGES) | set(DONE_STAGES) | set(counts)):
            instances.add_metric([stage], counts.get(stage, 0))
            if stage not in DONE_STAGES:
                queue.add_metric([stage], counts.get(stage, 0))
        yield instances
        yield queue
        batches = GaugeMetricFamily(
            f"{PREFIX}_batches",
            "Merkle batches: open (not yet landed) and landed",
            labels=["state"],
        )
        batch_counts = self.index.batch_counts()
        for state in ("open", "landed"):
            batches.add_metric([state], batch_counts.get(state, 0))
        yield batches
        oldest = self.index.oldest_pending()
        yield GaugeMetricFamily(
            f"{PREFIX}_oldest_pending_age_seconds",
            "Age of the oldest row with work left (0 when none)",
            value=max(0.0, time.time() - oldest.received_at) if oldest else 0.0,
        )
        if self.overdue is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_pending_too_long_instances",
                "Rows not committed GATEWAY_PENDING_ALERT_S after they were received",
                value=self.overdue(),
            )
        failing = GaugeMetricFamily(
            f"{PREFIX}_failing_instances",
            "Rows with work left whose last attempt failed, by stage and error class",
            labels=["stage", "error"],
        )
        for (stage, error), count in sorted(self.index.failure_counts().items()):
            failing.add_metric([stage, error], count)
        yield failing
        parked = GaugeMetricFamily(
            f"{PREFIX}_parked_instances",
            "Rows parked at stage failed after repeated permanent failures (`xray-gateway "
            "retry` re-queues them), by the stage they stopped at and error class",
            labels=["stage", "error"],
        )
        for (stage, error), count in sorted(self.index.parked_counts().items()):
            parked.add_metric([stage, error], count)
        yield parked
        claims = GaugeMetricFamily(
            f"{PREFIX}_claimed_instances",
            "Rows a worker process holds now (a live lease), by gateway node and worker id "
            "(every node's: the index is shared)",
            labels=["node", "worker"],
        )
        for worker, count in sorted(self.index.claim_counts().items()):
            claims.add_metric([node_of(worker), worker], count)
        yield claims
        yield histogram(
            f"{PREFIX}_commit_latency_seconds",
            "Commit latency: received (acked) to anchored on the chain, every anchored row",
            self._commit_latency(),
        )

    def _alerts(self, counts: Callable[[], dict[str, int]]) -> Iterator[Metric]:
        alerts = CounterMetricFamily(
            f"{PREFIX}_alerts",
            "Integrity alerts recorded, by kind (the gateway's and the Orthanc plugin's)",
            labels=["kind"],
        )
        try:
            found = counts()
        except AlertsUnavailable:  # the plugin's file unreadable: the rest is still scraped
            return
        for kind in sorted(set(KINDS) | set(found)):
            alerts.add_metric([kind], found.get(kind, 0))
        yield alerts

    def _commit_latency(self) -> Buckets:
        """Received -> anchored, over every anchored row: one pass over the index, so that
        the histogram is every worker's and node's and survives restarts."""
        spans = ", ".join(
            "SUM(CASE WHEN anchored_at - received_at <= ? THEN 1 ELSE 0 END)" for _ in COMMIT_BOUNDS
        )
        (row,) = self.index.query(
            f"SELECT {spans}, COUNT(*), SUM(anchored_at - received_at) FROM instances"
            " WHERE anchored_at IS NOT NULL",
            COMMIT_BOUNDS,
        )
        below = [int(n or 0) for n in row[: len(COMMIT_BOUNDS)]]
        count, total = int(row[-2] or 0), float(row[-1] or 0.0)
        per_bucket = [b - a for a, b in zip([0, *below], [*below, count], strict=True)]
        return cumulative(COMMIT_BOUNDS, per_bucket, total)

    def _commitment(self, scp: CommitmentSCP) -> Iterator[Metric]:
        counters = scp.counts()
        requests = CounterMetricFamily(
            f"{PREFIX}_commitment_requests", "Storage Commitment N-ACTIONs", labels=["result"]
        )
        for result in ("accepted", "refused"):
            requests.add_metric([result], counters.get(result, 0))
        yield requests
        reports = CounterMetricFamily(
            f"{PREFIX}_commitment_reports",
            "N-EVENT-REPORTs delivered (1: all committed, 2: some failed)",
            labels=["event_type"],
        )
        for event_type in (1, 2):
            reports.add_metric(
                [str(event_type)], counters.get(f"reported_event_type_{event_type}", 0)
            )
        yield reports
        yield CounterMetricFamily(
            f"{PREFIX}_commitment_delivery_failures",
            "Failed N-EVENT-REPORT delivery attempts (each is retried)",
            value=counters.get("delivery_failures", 0),
        )
        yield self._stored_requests(scp.log)

    def _stored_requests(self, log: CommitmentLog) -> Metric:
        stored = GaugeMetricFamily(
            f"{PREFIX}_commitment_requests_stored",
            "Stored commitment requests: open (waiting), ready (undelivered), reported",
            labels=["state"],
        )
        states = log.counts()
        for state in ("open", "ready", "reported"):
            stored.add_metric([state], states.get(state, 0))
        return stored


def histogram(name: str, documentation: str, snapshot: Buckets) -> HistogramMetricFamily:
    """A Prometheus histogram from a :class:`~gateway.core.latency.Histogram`."""
    return HistogramMetricFamily(
        name,
        documentation,
        buckets=[("+Inf" if le == float("inf") else repr(le), n) for le, n in snapshot.buckets],
        sum_value=snapshot.total,
    )


class _Instruments(Collector):
    """This process's :data:`INSTRUMENTS` (no multiprocess directory: one process)."""

    def collect(self) -> Iterator[Metric]:
        yield from INSTRUMENTS.collect()


def registry_for(collector: Collector, *, instruments: bool = False) -> CollectorRegistry:
    """A registry of its own (not the process-wide default) holding ``collector`` and, with
    ``instruments``, the instruments: added up over every process that wrote them to
    ``PROMETHEUS_MULTIPROC_DIR`` when it is set, this process's own otherwise."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if instruments:
        directory = os.environ.get(MULTIPROCESS_DIR)
        if directory:
            multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        else:
            registry.register(_Instruments())
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition and its content type."""
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
