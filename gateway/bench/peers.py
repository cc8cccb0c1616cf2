"""The parts a benchmark drives: DCMTK's storescu, a fresh Orthanc, a fresh ``xray-gateway up``.

Everything runs on loopback on free ports, with ``TCP_NODELAY=1`` for DCMTK and Orthanc,
and is stopped by its own pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from gateway.index.db import Index
from gateway.pacs.embedded import EmbeddedOrthanc
from gateway.procs import free_port

STORESCU = "/usr/bin/storescu"  # by path: the venv's pynetdicom apps shadow DCMTK's
MAX_SEND_PDU = 131072
SCU_AET = "BENCHSCU"
DONE_STAGES = ("committed", "duplicate", "conflict")


class BenchError(RuntimeError):
    """A part of the benchmark could not run (a peer failed, a deadline passed)."""


def storescu(port: int, files: list[Path], *, called: str) -> float:
    """Send ``files`` on one association with DCMTK's storescu; returns the wall seconds."""
    argv = [STORESCU, "--max-send-pdu", str(MAX_SEND_PDU), "-aet", SCU_AET, "-aec", called,
            "127.0.0.1", str(port), *map(str, files)]  # fmt: skip
    env = {**os.environ, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"storescu exited {done.returncode}: {(done.stdout + done.stderr)[-800:]}")
    return seconds


def direct_orthanc(data_dir: Path) -> EmbeddedOrthanc:
    """A plain Orthanc (no plugin) that accepts C-STOREs from :data:`SCU_AET`."""
    return EmbeddedOrthanc(
        data_dir=data_dir,
        http_port=free_port(),
        dicom_port=free_port(),
        aet="BENCHPACS",
        extra_config={"DicomModalities": {"bench": [SCU_AET, "127.0.0.1", 104]}},
    )


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set since it started, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmHWM for pid {pid}")


@dataclass
class Gateway:
    """``xray-gateway up`` in a child process, on free ports, over a fresh data dir.

    ``GATEWAY_BATCH_MAX``, ``GATEWAY_BATCH_WINDOW_MS`` and ``GATEWAY_ANCHOR_MAX_DELAY_MS``
    pass through from the environment, so that the anchor stage runs as the deployment
    configures it, and ``GATEWAY_WORKERS``, ``GATEWAY_INPROCESS_PIPELINE`` (worker
    processes or threads) and ``GATEWAY_LISTENERS`` (listener processes on the DICOM port). ``index_url`` puts the index on PostgreSQL
    (``GATEWAY_INDEX_URL``); unset, SQLite.
    """

    data_dir: Path
    startup_timeout: float = 300.0
    index_url: str | None = None

    def __post_init__(self) -> None:
        keep = (
            "GATEWAY_BATCH_MAX", "GATEWAY_BATCH_WINDOW_MS", "GATEWAY_ANCHOR_MAX_DELAY_MS",
            "GATEWAY_WORKERS", "GATEWAY_INPROCESS_PIPELINE", "GATEWAY_LISTENERS",
        )  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") or k in keep}
        self.dicom_port = free_port()
        self.anvil_port = free_port()
        env.update(
            GATEWAY_DATA_DIR=str(self.data_dir),
            GATEWAY_ANVIL_PORT=str(self.anvil_port),
            GATEWAY_DICOM_PORT=str(self.dicom_port),
            GATEWAY_API_PORT=str(free_port()),
            GATEWAY_ORTHANC_HTTP_PORT=str(free_port()),
            GATEWAY_ORTHANC_DICOM_PORT=str(free_port()),
            TCP_NODELAY="1",
        )
        if self.index_url is not None:
            env["GATEWAY_INDEX_URL"] = self.index_url
        self.env = env
        self.ae_title = "XRAYGW"
        self.proc: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None

    @property
    def chain_url(self) -> str:
        return f"http://127.0.0.1:{self.anvil_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir.parent / f"{self.data_dir.name}-up.log"
        self._log = log_path.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "up"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                self.stop()
                raise BenchError(f"xray-gateway up exited early; see {log_path}")
            if line.startswith("Press Ctrl-C"):
                return
        self.stop()
        raise BenchError(f"xray-gateway up printed no banner in {self.startup_timeout:.0f} s")

    def stop(self) -> int | None:
        """Ctrl-C (SIGINT to our child's pid), as a user would; returns its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        if self._log is not None:
            self._log.close()
        self.proc = None
        return code

    def rows(self) -> list[dict[str, Any]]:
        """The index's rows (read-only, while the gateway runs), on either engine."""
        index = Index(self.index_url or self.data_dir / "index.sqlite", readonly=True)
        try:
            return [asdict(row) for row in index.all()]
        finally:
            index.close()

    def wait_done(
        self, sop_uids: set[str], *, timeout: float = 3600.0, poll: float = 0.25
    ) -> list[dict[str, Any]]:
        """Wait until every instance in ``sop_uids`` has a row with no work left; its rows."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [r for r in self.rows() if r["sop_instance_uid"] in sop_uids]
            done = {r["sop_instance_uid"] for r in rows if r["stage"] in DONE_STAGES}
            if done >= sop_uids and all(r["stage"] in DONE_STAGES for r in rows):
                return rows
            if time.monotonic() > deadline:
                pending = [
                    (r["stage"], r["last_error"]) for r in rows if r["stage"] not in DONE_STAGES
                ]
                raise BenchError(
                    f"{len(done)}/{len(sop_uids)} instances done after {timeout:.0f} s; "
                    f"pending: {pending[:5]}"
                )
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError("the gateway exited while instances were pending")
            time.sleep(poll)
