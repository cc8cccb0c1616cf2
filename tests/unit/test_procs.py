"""Children never outlive the gateway: the parent-death signal, and the pid file's stale stop.

Real processes (``sleep``, a Python parent), no mocks; each is stopped by its own pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.errors import ChildFailed, ConfigError
from gateway.procs import Child, DirLock, _started_at

PARENT = """
import sys, time
from pathlib import Path
from gateway.procs import Child
child = Child("sleeper", ["sleep", "600"], log_path=Path(sys.argv[1]), ready=lambda: True)
child.start()
print(child.process.pid, flush=True)
time.sleep(600)
"""


def gone(pid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _started_at(pid) is None:
            return True
        time.sleep(0.05)
    return False


def test_a_child_gets_sigterm_when_its_parent_is_sigkilled(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "sleeper.log")],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert _started_at(child) is not None
        recorded = json.loads((tmp_path / "sleeper.pid").read_text())
        assert recorded["pid"] == child and recorded["started"] == _started_at(child)
        assert recorded["parent"] == parent.pid
        # while its gateway lives, another start on the same dir refuses to touch it
        other = Child("sleeper", ["sleep", "1"], log_path=tmp_path / "sleeper.log",
                      ready=lambda: True)  # fmt: skip
        with pytest.raises(ChildFailed, match="belongs to a running process"):
            other.start()
        assert _started_at(child) is not None
        parent.kill()
        parent.wait(30)
        assert gone(child), "the child outlived its SIGKILLed parent"
    finally:
        parent.stdout.close()
        if _started_at(child) is not None:
            os.kill(child, signal.SIGKILL)


def test_a_stale_child_from_the_pid_file_is_stopped_before_a_new_start(tmp_path: Path) -> None:
    # what a crashed gateway can leave: its child, in its own session, still running
    stale = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        pid_file = tmp_path / "sleeper.pid"
        pid_file.write_text(json.dumps({
            "pid": stale.pid, "started": _started_at(stale.pid),
            "parent": 1, "parent_started": -1,  # whoever pid 1 is, it did not start then
        }))  # fmt: skip
        child = Child("sleeper", ["sleep", "600"], log_path=tmp_path / "sleeper.log",
                      ready=lambda: True)  # fmt: skip
        child.start()
        try:
            assert stale.wait(30) == -signal.SIGTERM  # SIGTERM first: it may save its state
            assert child.process is not None
            assert json.loads(pid_file.read_text())["pid"] == child.process.pid
        finally:
            child.stop()
        assert not pid_file.exists()  # a clean stop leaves nothing to find
    finally:
        if stale.poll() is None:
            stale.kill()


def test_a_recycled_pid_is_left_alone(tmp_path: Path) -> None:
    # the pid file names a live process that started at another time: not ours
    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        started = _started_at(bystander.pid)
        assert started is not None
        (tmp_path / "sleeper.pid").write_text(
            json.dumps({"pid": bystander.pid, "started": started - 1,
                        "parent": 1, "parent_started": -1})
        )  # fmt: skip
        child = Child("sleeper", ["sleep", "1"], log_path=tmp_path / "sleeper.log",
                      ready=lambda: True)  # fmt: skip
        assert child.stop_stale() is False
        assert bystander.poll() is None
        assert not (tmp_path / "sleeper.pid").exists()
    finally:
        bystander.kill()
        bystander.wait(10)


def test_a_second_up_on_one_data_dir_is_refused_before_it_touches_the_first_ones_files(
    tmp_path: Path,
) -> None:
    # the first `up` holds the data dir's lock (here: this test process) and has counters
    # in the shared metrics directory, which a second `up` used to empty on its way to
    # being refused by the taken DICOM port
    first = DirLock(tmp_path / "run" / "up.lock")
    first.acquire()
    counters = tmp_path / "run" / "metrics" / "counter_123.db"
    counters.parent.mkdir(parents=True)
    counters.write_bytes(b"the first up's counts")
    env = {**os.environ, "GATEWAY_DATA_DIR": str(tmp_path)}
    second = subprocess.run(
        [sys.executable, "-m", "gateway", "up"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert second.returncode != 0
    assert f"another xray-gateway up (pid {os.getpid()}) runs on the data dir" in second.stderr
    assert counters.read_bytes() == b"the first up's counts"

    # the lock dies with its holder: nothing stale is left for the next start
    first.release()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "run" / "up.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            DirLock(tmp_path / "run" / "up.lock").acquire()
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    again = DirLock(tmp_path / "run" / "up.lock")
    again.acquire()
    again.release()


def test_retiring_the_old_keks_is_refused_while_up_runs_on_the_data_dir(tmp_path: Path) -> None:
    # a running `up` keeps the KEK it loaded: the old KEKs must not be destroyed under it
    running = DirLock(tmp_path / "run" / "up.lock")
    running.acquire()
    (tmp_path / "keys" / "kek").mkdir(parents=True)
    kept = tmp_path / "keys" / "kek" / "kek-old.key"
    kept.write_bytes(b"an old KEK")
    env = {**os.environ, "GATEWAY_DATA_DIR": str(tmp_path)}
    try:
        refused = subprocess.run(
            [sys.executable, "-m", "gateway", "keys", "rotate", "--retire-old"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        running.release()
    assert refused.returncode != 0
    assert f"up (pid {os.getpid()}) runs on the data dir" in refused.stderr
    assert "before --retire-old" in refused.stderr and "Traceback" not in refused.stderr
    assert kept.read_bytes() == b"an old KEK"


HOLDER = """
import sys, time
from pathlib import Path
from gateway.procs import DirLock
DirLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(600)
"""
