"""`xray-gateway up` as a user runs it, on free ports, stopped with Ctrl-C by pid."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway.procs import free_port

EXE = str(Path(sys.executable).with_name("xray-gateway"))


def gateway_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for a gateway whose every port is free and whose data is in ``data_dir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_DATA_DIR=str(data_dir),
        GATEWAY_ANVIL_PORT=str(free_port()),
        GATEWAY_DICOM_PORT=str(free_port()),
        GATEWAY_API_PORT=str(free_port()),
        GATEWAY_ORTHANC_HTTP_PORT=str(free_port()),
        GATEWAY_ORTHANC_DICOM_PORT=str(free_port()),
        TCP_NODELAY="1",
    )
    env.update(extra)
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], env=env, capture_output=True, text=True, timeout=300)


class Up:
    """`xray-gateway up` in the background; ``banner`` holds what it printed."""

    def __init__(
        self, env: dict[str, str], *, timeout: float = 180, sigint_ignored: bool = False
    ) -> None:
        self.env = env
        self.data_dir = Path(env["GATEWAY_DATA_DIR"])
        self.dicom_port = int(env["GATEWAY_DICOM_PORT"])
        self.api_port = int(env["GATEWAY_API_PORT"])
        log = self.data_dir.parent / "up.log"
        self.log = log.open("a")
        # sigint_ignored: started as a shell's background job is (SIGINT set to SIG_IGN)
        self.proc = subprocess.Popen(
            [EXE, "up"], env=env, stdout=subprocess.PIPE, stderr=self.log, text=True,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None,
        )  # fmt: skip
        self.banner: list[str] = []
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                self.log.flush()
                raise AssertionError(
                    "up exited early:\n" + "".join(self.banner) + log.read_text()[-3000:]
                )
            self.banner.append(line)
            if line.startswith("Press Ctrl-C"):
                return
        raise AssertionError("up never printed its banner")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int:
        """Ctrl-C, as a user would; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            try:
                return self.proc.wait(90)
            except subprocess.TimeoutExpired:  # Ctrl-C ignored: stop it anyway, then say so
                self.proc.terminate()
                self.proc.wait(90)
                raise AssertionError("up ignored Ctrl-C for 90 s; stopped with SIGTERM") from None
        finally:
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            self.log.close()

    def value(self, label: str) -> str:
        for line in self.banner:
            if line.strip().startswith(label):
                return line.strip()[len(label) :].split()[0]
        raise KeyError(label)

    def rows(self) -> list[sqlite3.Row]:
        """The gateway's index, read-only (PostgreSQL's rows read by column name alike)."""
        if "GATEWAY_INDEX_URL" in self.env:
            import psycopg
            from psycopg.rows import dict_row

            with psycopg.connect(self.env["GATEWAY_INDEX_URL"], row_factory=dict_row) as pg:
                found: list[Any] = pg.execute("SELECT * FROM instances ORDER BY id").fetchall()
                return found
        db = sqlite3.connect(f"file:{self.data_dir / 'index.sqlite'}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        try:
            return db.execute("SELECT * FROM instances ORDER BY id").fetchall()
        finally:
            db.close()

    def wait_done(self, count: int, *, timeout: float = 600) -> list[sqlite3.Row]:
        """Wait until ``count`` rows exist and none has work left; returns the rows."""
        deadline = time.monotonic() + timeout
        rows: list[sqlite3.Row] = []
        while time.monotonic() < deadline:
            rows = self.rows()
            pending = [r for r in rows if r["stage"] not in ("committed", "duplicate", "conflict")]
            if len(rows) >= count and not pending:
                return rows
            time.sleep(0.2)
        pending = [
            (r["id"], r["stage"], r["last_error"]) for r in rows if r["stage"] != "committed"
        ]
        raise AssertionError(f"{len(rows)}/{count} rows, still pending: {pending[:10]}")

    @property
    def log_path(self) -> Path:
        """Where ``up`` and its worker processes log (stderr)."""
        return self.data_dir.parent / "up.log"

    def wait_logged(self, text: str, *, timeout: float = 300) -> None:
        """Wait until ``up`` (or one of its worker processes) logged ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.log.flush()
            if text in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise AssertionError(f"never logged: {text!r}")

    def worker_pid(self, worker: str = "up-1") -> int:
        """The pid of one of ``up``'s worker processes (its pid file)."""
        return self.child_pid(f"worker-{worker}")

    def child_pid(self, child: str) -> int:
        """The pid of one of ``up``'s child processes (``worker-up-1``, ``listener-listen-1``)."""
        path = self.data_dir / "run" / f"{child}.pid"
        return int(json.loads(path.read_text())["pid"])

    def wait_restarted(self, child: str, dead: int, *, timeout: float = 120) -> int:
        """The pid of ``child`` started again after ``dead`` died: `up` logs "starting it
        again", drops the dead one's pid file, then starts the new process, which writes its
        own; wait for that file to name another pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid = self.child_pid(child)
            except FileNotFoundError:  # between the dead one's file and the new one's
                pid = dead
            if pid != dead:
                return pid
            time.sleep(0.1)
        raise AssertionError(f"{child} was not started again after pid {dead} died")
