"""Child processes the gateway starts (anvil, Orthanc): start, wait ready, stop by pid.

A child never outlives the gateway. Two mechanisms, because either alone has a hole:

- On Linux each child asks the kernel (``prctl(PR_SET_PDEATHSIG, SIGTERM)``, set between
  fork and exec) for SIGTERM when the gateway dies, however it dies, SIGKILL included.
  SIGTERM, not SIGKILL: anvil dumps its ``--state`` on the way out and Orthanc closes its
  database cleanly.
- Each child's pid (and its start time, so that a recycled pid is never mistaken for
  it) is kept in ``<name>.pid`` beside its log, with its parent's. The next start finds
  a child of an earlier run that is still alive (still dumping its state, or started
  where the parent-death signal does not exist) and stops it by that pid before
  starting anew, but only when the gateway that started it is gone: a second gateway
  on the same data dir is refused instead of stopping the first one's children.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.errors import ChildFailed, ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

log = logging.getLogger(__name__)


class DirLock:
    """One ``up`` per data dir: an exclusive ``flock`` on ``path`` held for the process's life.

    The kernel drops the lock when its holder dies, however it dies, so a crashed gateway
    never leaves a stale lock behind; the file keeps the holder's pid for the message.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`ConfigError` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"another xray-gateway up (pid {holder}) runs on the data dir {self.path.parent.parent}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def port_in_use(host: str, port: int) -> bool:
    """True when something already accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux only).

    The kernel sends it when the *thread* that forked the child exits, so children are
    started from the thread that lives as long as the gateway (the main one). If the
    parent died between fork and ``prctl``, the child sees another parent and stops.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: nothing to load after
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _started_at(pid: int) -> int | None:
    """The start time of a live process (clock ticks since boot), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # exited, waiting to be reaped
        return None
    return int(fields[19])


def _wait_gone(pid: int, started: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _started_at(pid) != started:
            return True
        time.sleep(0.1)
    return _started_at(pid) != started


class Child:
    """One child process with a log file, a readiness probe, a pid file and a clean stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        ready: Callable[[], bool],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        inherit_output: bool = False,
    ) -> None:
        # inherit_output: the child's stderr is ours (a gateway's own worker processes: one
        # log), its stdout discarded; log_path then only places the pid file
        self.name = name
        self.inherit_output = inherit_output
        self.argv = list(argv)
        self.log_path = log_path
        self._ready = ready
        self.env = env
        self._cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.pid_path = log_path.with_name(f"{name}.pid")

    def stop_stale(self, *, timeout: float = 30.0) -> bool:
        """Stop this child's process from an earlier run, if it is still alive.

        Only the pid in the pid file, and only if that process started when the file
        says (a pid the kernel gave to another process since is left alone). SIGTERM
        first, so that it can save its state; SIGKILL if it does not exit in ``timeout``.
        Returns True when there was one to stop.
        """
        try:
            recorded = json.loads(self.pid_path.read_text())
            pid, started = int(recorded["pid"]), int(recorded["started"])
            parent, parent_started = int(recorded["parent"]), int(recorded["parent_started"])
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable pid file %s", self.pid_path)
            self.pid_path.unlink(missing_ok=True)
            return False
        stale = _started_at(pid) == started
        if stale and parent != os.getpid() and _started_at(parent) == parent_started:
            raise ChildFailed(
                f"{self.name} (pid {pid}) belongs to a running process (pid {parent}) that "
                f"uses the same data dir ({self.pid_path}); stop that one first"
            )
        if stale:
            log.warning(
                "%s from an earlier run is still alive (pid %d): stopping it", self.name, pid
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, started, timeout):
                log.warning(
                    "%s (pid %d) ignored SIGTERM for %.0f s: killing it", self.name, pid, timeout
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, started, 10.0)
        self.pid_path.unlink(missing_ok=True)
        return stale

    def start(self, *, timeout: float = 30.0) -> None:
        """Start the process and wait until its probe says it is ready."""
        self.stop_stale()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(os.devnull if self.inherit_output else self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.argv,
                stdout=subprocess.DEVNULL if self.inherit_output else log_file,
                stderr=None if self.inherit_output else subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
                cwd=self._cwd,
                start_new_session=True,  # Ctrl-C goes to us; we stop children in order
                preexec_fn=_die_with_parent(),  # prctl must run in the child, after fork
            )
        started, parent_started = _started_at(self.process.pid), _started_at(os.getpid())
        if started is not None and parent_started is not None:
            tmp = self.pid_path.with_suffix(".pid.tmp")
            tmp.write_text(
                json.dumps({"pid": self.process.pid, "started": started,
                            "parent": os.getpid(), "parent_started": parent_started})
            )  # fmt: skip
            tmp.replace(self.pid_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ChildFailed(
                    f"{self.name} exited with code {self.process.returncode}; see {self.log_path}"
                )
            try:
                if self._ready():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise ChildFailed(f"{self.name} was not ready after {timeout:.0f} s; see {self.log_path}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, *, timeout: float = 20.0) -> None:
        """SIGTERM, wait, then SIGKILL: only this pid, never by name."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is not None:
            self.pid_path.unlink(missing_ok=True)
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self.pid_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL at once, as a crash would (the pid file stays, as after a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
