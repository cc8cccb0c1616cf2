"""Wake-ups: the listener tells the worker processes there is new work, without them polling.

One Unix datagram socket per worker in the run dir (``worker-<id>.sock``). The listener
rings every worker's socket after each ack (a one-byte datagram, never blocking: a full
socket buffer already means a wake-up is waiting); a worker's :class:`Bell` thread turns
what arrives into a call. A worker still looks for due rows at a bounded interval (retry
times come due with no ring), so a lost datagram delays work, never loses it.

:class:`Doorbell` is the seam: on PostgreSQL the same two sides are ``NOTIFY`` after the
row's commit and ``LISTEN`` in each worker (not built yet: ``LISTEN/NOTIFY`` when the
index is PostgreSQL, see docs/scale-out.md).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from gateway.ingest.receive import MAX_YIELD_S, STREAMING_S

log = logging.getLogger(__name__)

PREFIX, SUFFIX = "worker-", ".sock"
RESCAN_S = 1.0
"""How long the listener trusts its list of worker sockets (workers come and go)."""


class Doorbell(Protocol):
    """The listener's side: there is new work (called after each ack)."""

    def ring(self) -> None: ...


def socket_path(run_dir: Path, worker: str) -> Path:
    return run_dir / f"{PREFIX}{worker}{SUFFIX}"


class SocketDoorbell:
    """Rings every worker socket in ``run_dir``; never blocks, never raises."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._targets: list[str] = []
        self._scanned = 0.0
        self._lock = threading.Lock()

    def _current(self) -> list[str]:
        now = time.monotonic()
        if now - self._scanned >= RESCAN_S:
            self._targets = [str(p) for p in self.run_dir.glob(f"{PREFIX}*{SUFFIX}")]
            self._scanned = now
        return self._targets

    def ring(self) -> None:
        with self._lock:
            for target in self._current():
                # full buffer: a ring already waits; refused/missing: that worker is gone
                with contextlib.suppress(OSError):
                    self._sock.sendto(b"!", target)

    def close(self) -> None:
        self._sock.close()


class Bell:
    """A worker's side: a socket in ``run_dir`` and a thread calling ``on_ring`` per wake-up."""

    def __init__(self, run_dir: Path, worker: str, on_ring: Callable[[], None]) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = socket_path(run_dir, worker)
        self.path.unlink(missing_ok=True)  # the same worker id, started again
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.5)
        self._on_ring = on_ring
        self.last_ring = 0.0  # time.monotonic() of the latest wake-up (one per ack)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wakeup", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sock.recv(64)
            except TimeoutError:
                continue
            except OSError:
                return
            self._sock.setblocking(False)  # many acks, one wake-up: drain what waits
            with contextlib.suppress(OSError):
                while self._sock.recv(64):
                    pass
            self._sock.settimeout(0.5)
            self.last_ring = time.monotonic()
            self._on_ring()

    def yield_to_acks(self) -> None:
        """Hold the caller (a pipeline stage) back while the listener acks back to back, at
        most ``MAX_YIELD_S``: a ring came less than ``STREAMING_S`` ago. The same rule as
        the listener's own ``Receiver.yield_to_acks``, across processes: on few cores
        the worker's CPU and its index writes slow the acks."""
        deadline = time.monotonic() + MAX_YIELD_S
        while True:
            now = time.monotonic()
            quiet = self.last_ring + STREAMING_S
            if now >= quiet or now >= deadline:
                return
            time.sleep(min(quiet, deadline) - now)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        self.path.unlink(missing_ok=True)
