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

from gateway.errors import ChildFailed
from gateway.procs import Child, _started_at

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
