"""The loop ``up`` starts: alert logs -> outbox -> every target, with retries and backoff.

One thread enqueues (:meth:`Outbox.enqueue`, every ``poll_s``) from each alert log; one
thread per target claims its due events and sends them in order. A target that refuses
or hangs (each send is bounded by its timeout) delays only its own thread; a failed
event is due again after :func:`gateway.ingest.retry.backoff` (1 s, doubling, at most
10 minutes), for as long as it takes. Claims run under this node's worker id
``<node>/notify``; starting again under it drops what the last life held.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.core.nodes import worker_id
from gateway.errors import DeliveryFailed, GatewayError
from gateway.index.db import Index
from gateway.index.engine import DATABASE_ERRORS
from gateway.ingest.retry import backoff
from gateway.notify.outbox import Outbox
from gateway.notify.senders import AlertTarget

log = logging.getLogger(__name__)

#: The first wait after a failed delivery, and the longest.
RETRY_BASE_S = 1.0
RETRY_CAP_S = 600.0
#: Errors a loop logs and outlives (the index or an alerts file out for a moment).
_LOOP_ERRORS: tuple[type[Exception], ...] = (GatewayError, OSError, *DATABASE_ERRORS)


class Notifier:
    """Delivers every alert of ``logs`` (name -> alerts.sqlite) to every sender."""

    def __init__(
        self, *, index: Index, senders: Sequence[AlertTarget], logs: dict[str, Path], node: str,
        poll_s: float = 1.0, batch: int = 8, timeout_s: float = 5.0,
    ) -> None:  # fmt: skip
        self.senders = list(senders)
        self.logs = logs
        self.worker = worker_id(node, "notify")
        self.outbox = Outbox(index, targets=tuple(s.target for s in self.senders))
        self.poll_s = poll_s
        self.batch = batch
        # a claim outlives the slowest round of sends it covers
        self.lease_s = 30.0 + batch * timeout_s * 2
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        released = self.outbox.release_claims(self.worker)
        if released:
            log.info("notify: %d events this node was sending are due again", released)
        try:  # the logs' marks now, before anything else starts recording alerts
            self.enqueue_once()
        except _LOOP_ERRORS as exc:
            log.warning("notify: alerts not enqueued at start: %s", _safe(exc))
        self._spawn("notify-enqueue", self._enqueue_loop)
        for sender in self.senders:
            self._spawn(f"notify-{sender.target}", functools.partial(self._send_loop, sender))

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(30)
        for sender in self.senders:
            sender.close()

    def enqueue_once(self) -> int:
        """Enqueue what every log recorded since its mark; returns how many alerts."""
        return sum(self.outbox.enqueue(name, path) for name, path in self.logs.items())

    def _enqueue_loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.enqueue_once():
                    self._wake.set()
            except _LOOP_ERRORS as exc:
                log.warning("notify: alerts not enqueued this round: %s", _safe(exc))
            self._stop.wait(self.poll_s)

    def _send_loop(self, sender: AlertTarget) -> None:
        while not self._stop.is_set():
            try:
                sent = self.send_due(sender)
            except _LOOP_ERRORS as exc:
                log.warning(
                    "notify: %s: outbox unavailable this round: %s", sender.shown, _safe(exc)
                )
                sent = 0
            if not sent:
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def send_due(self, sender: AlertTarget) -> int:
        """Claim and send ``sender``'s due events once; returns how many were claimed."""
        claimed = self.outbox.claim(
            sender.target, self.worker, limit=self.batch, lease_s=self.lease_s
        )
        for item in claimed:
            if self._stop.is_set():
                break  # the claims left are dropped at the next start, or run out
            try:
                sender.send(item.event)
            except DeliveryFailed as exc:
                retry_in = backoff(item.attempts, base=RETRY_BASE_S, cap=RETRY_CAP_S)
                log.warning(
                    "notify: event %s not taken (%s); attempt %d, retry in %.0f s",
                    item.event.id, exc, item.attempts + 1, retry_in,
                )  # fmt: skip
                self.outbox.failed(item.row_id, self.worker, str(exc), retry_in=retry_in)
            else:
                self.outbox.delivered(item.row_id, self.worker)
        return len(claimed)


def _safe(exc: BaseException) -> str:
    """An exception as a log line: its class and first line (no URL secrets pass through
    here: the index's errors are redacted at the engine, the senders' name no secret)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:300]
