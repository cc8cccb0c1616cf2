"""Wake-ups: the listener tells the worker processes there is new work, without them polling.

:class:`Doorbell` (the listener's side, rung after each ack) and a worker's bell (a
thread turning what arrives into a call) come in two kinds, picked by the index's engine:

- SQLite (one machine): one Unix datagram socket per worker in the run dir
  (``worker-<id>.sock``). :class:`SocketDoorbell` sends every worker's socket a one-byte
  datagram, never blocking (a full socket buffer already means a wake-up is waiting);
  :class:`Bell` receives them.
- PostgreSQL (workers on any machine): ``NOTIFY`` on the index's database.
  :class:`NotifyDoorbell` sends it from a thread of its own after the row's commit (the
  ack never waits for it; rings that come while one is sent make one more, not many);
  :class:`NotifyBell` holds its own session, listening on :data:`CHANNEL`.

Either way a worker still looks for due rows at a bounded interval (retry times come due
with no ring, a session to the server may be down), so a lost ring delays work, never
loses it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import psycopg

from gateway.ingest.receive import wait_while_streaming
from gateway.redact import redact_text

log = logging.getLogger(__name__)

PREFIX, SUFFIX = "worker-", ".sock"
LISTENING = ".listening"
"""A :class:`NotifyBell`'s sign in the run dir that it listens (what ``up`` waits for)."""
CHANNEL = "xray_gateway_work"
"""The ``NOTIFY`` channel: new rows in the index (one index, one queue, one channel)."""
RECONNECT_S = 1.0
"""How long a bell or doorbell whose session to PostgreSQL broke waits to open another."""
RESCAN_S = 1.0
"""How long the listener trusts its list of worker sockets (workers come and go)."""


class Doorbell(Protocol):
    """The listener's side: there is new work (called after each ack)."""

    def ring(self) -> None: ...

    def close(self) -> None: ...


def socket_path(run_dir: Path, worker: str) -> Path:
    return run_dir / f"{PREFIX}{worker}{SUFFIX}"


def ready_path(run_dir: Path, worker: str, *, notify: bool) -> Path:
    """The file that shows ``worker``'s bell is up: its socket, or a :class:`NotifyBell`'s
    sign once it listens."""
    return run_dir / f"{PREFIX}{worker}{LISTENING}" if notify else socket_path(run_dir, worker)


def _through_dir(fd: int, name: str) -> str:
    """``name`` in the directory open as ``fd``, as a short path: a socket address holds at
    most 107 bytes, and a data dir (a test's temp dir) may be deeper than that."""
    return f"/proc/self/fd/{fd}/{name}"


def _open_dir(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_PATH | os.O_DIRECTORY)


class SocketDoorbell:
    """Rings every worker socket in ``run_dir``; never blocks, never raises."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._dir = _open_dir(run_dir)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._targets: list[str] = []
        self._scanned = 0.0
        self._lock = threading.Lock()

    def _current(self) -> list[str]:
        now = time.monotonic()
        if now - self._scanned >= RESCAN_S:
            self._targets = [
                _through_dir(self._dir, p.name) for p in self.run_dir.glob(f"{PREFIX}*{SUFFIX}")
            ]
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
        os.close(self._dir)


class _Bell:
    """What both kinds of worker bell share: the call per wake-up and yielding to acks."""

    def __init__(self, on_ring: Callable[[], None]) -> None:
        self._on_ring = on_ring
        self.last_ring = 0.0  # time.monotonic() of the latest wake-up (one per ack)
        self._stop = threading.Event()

    def _rang(self) -> None:
        self.last_ring = time.monotonic()
        self._on_ring()

    def last_ack(self) -> float:
        """When the latest wake-up came (time.monotonic(); one per ack)."""
        return self.last_ring

    def yield_to_acks(self) -> None:
        """Hold the caller (a pipeline stage) back while the listener acks back to back, at
        most ``MAX_YIELD_S``: a ring came less than ``STREAMING_S`` ago. The same rule as
        the listener's own ``Receiver.yield_to_acks``, across processes: on few cores
        the worker's CPU and its index writes slow the acks."""
        wait_while_streaming(lambda: self.last_ring)


class Bell(_Bell):
    """A worker's side on one machine: a socket in ``run_dir`` and a thread calling
    ``on_ring`` per wake-up."""

    def __init__(self, run_dir: Path, worker: str, on_ring: Callable[[], None]) -> None:
        super().__init__(on_ring)
        self.path = socket_path(run_dir, worker)
        self.path.unlink(missing_ok=True)  # the same worker id, started again
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        directory = _open_dir(run_dir)
        try:
            self._sock.bind(_through_dir(directory, self.path.name))
        finally:
            os.close(directory)
        self._sock.settimeout(0.5)
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
            self._rang()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        self.path.unlink(missing_ok=True)


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def _why(exc: BaseException) -> str:
    """An error from the server as a log line may show it: no password, no URL."""
    return f"{type(exc).__name__}: {redact_text(str(exc).strip())}"


class NotifyDoorbell:
    """Rings every worker listening on the PostgreSQL index at ``url``: ``NOTIFY``, sent by
    a thread of its own on a session of its own. :meth:`ring` never blocks, never raises."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._rung = threading.Event()
        self._stop = threading.Event()
        self.sent = 0  # NOTIFYs sent (fewer than rings: rings while one is sent coalesce)
        self._thread = threading.Thread(target=self._run, name="doorbell", daemon=True)
        self._thread.start()

    def ring(self) -> None:
        self._rung.set()

    def _run(self) -> None:
        db: psycopg.Connection[Any] | None = None
        failing = False
        while True:
            self._rung.wait()
            if self._stop.is_set():
                break
            self._rung.clear()
            try:
                if db is None or db.closed or db.broken:
                    db = _connect(self._url)
                db.execute(f"NOTIFY {CHANNEL}")
                self.sent += 1
                failing = False
            except psycopg.Error as exc:  # the workers' own polling finds the rows
                if not failing:
                    log.warning("cannot wake the workers over PostgreSQL: %s", _why(exc))
                failing = True
                if db is not None:
                    db.close()
                db = None
                self._stop.wait(RECONNECT_S)
                self._rung.set()  # the ring is sent again on a new session, not dropped
        if db is not None:
            db.close()

    def close(self) -> None:
        self._stop.set()
        self._rung.set()
        self._thread.join(15)


class NotifyBell(_Bell):
    """A worker's side on a PostgreSQL index: ``LISTEN`` on a session of its own, and a
    thread calling ``on_ring`` per wake-up (many notifications waiting: one call).

    Once it listens it creates ``ready`` (if given). A broken session is opened again
    after :data:`RECONNECT_S`, and ``on_ring`` is called once it listens again: what was
    notified meanwhile was not heard.
    """

    def __init__(self, url: str, on_ring: Callable[[], None], *, ready: Path | None = None) -> None:
        super().__init__(on_ring)
        self._url = url
        self.ready = ready
        if ready is not None:
            ready.parent.mkdir(parents=True, exist_ok=True)
            ready.unlink(missing_ok=True)
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wakeup", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        heard_before = False
        while not self._stop.is_set():
            try:
                with _connect(self._url) as db:
                    db.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    if self.ready is not None:
                        self.ready.touch()
                    if heard_before:
                        self._rang()  # rings while the session was down went unheard
                    heard_before = True
                    self._listen(db)
            except psycopg.Error as exc:
                self.listening.clear()
                log.warning("not listening for wake-ups: %s", _why(exc))
                self._stop.wait(RECONNECT_S)

    def _listen(self, db: psycopg.Connection[Any]) -> None:
        while not self._stop.is_set():
            heard = False
            for _ in db.notifies(timeout=0.5, stop_after=1):
                heard = True
            if not heard:
                continue
            for _ in db.notifies(timeout=0):  # many acks, one wake-up: drain what waits
                pass
            self._rang()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.ready is not None:
            self.ready.unlink(missing_ok=True)
