"""The CPU budget's ``/proc`` and ``RUSAGE_CHILDREN`` accounting, on real processes.

A busy process burns a fixed number of SHA-256 rounds between two snapshots; an idle one
waits on its stdin beside it. Both run under a shell (the meter must find them below
their root), so the walk of the process tree is exercised too. No timings are asserted:
the busy one's counted CPU must be above zero and below what the window's wall time on
every core allows, and the idle one's a small fraction of it.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from gateway.bench.cpu import CpuMeter, cores, window

pytestmark = pytest.mark.integration

ROUNDS = 400_000
#: Prints "ready", burns ROUNDS hashes on the first line of stdin, prints "done", waits for EOF.
BUSY = f"""
import hashlib, sys
print("ready", flush=True)
sys.stdin.readline()
h = b"x"
for _ in range({ROUNDS}):
    h = hashlib.sha256(h).digest()
print("done", flush=True)
sys.stdin.read()
"""
IDLE = 'import sys; print("ready", flush=True); sys.stdin.read()'


def under_a_shell(code: str) -> subprocess.Popen[str]:
    """``sh`` running Python as its child (``; :`` keeps the shell from exec'ing it)."""
    proc = subprocess.Popen(
        ["/bin/sh", "-c", f'"{sys.executable}" -c "$0"; :', code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_a_busy_child_below_its_root_is_counted_and_an_idle_one_is_near_zero() -> None:
    busy, idle = under_a_shell(BUSY), under_a_shell(IDLE)
    try:
        meter = CpuMeter({busy.pid: "other", idle.pid: "other"})
        before = meter.snapshot()
        assert len(before.processes) == 4  # two shells, each with its Python
        started = time.perf_counter()
        assert busy.stdin is not None and busy.stdout is not None
        busy.stdin.write("go\n")
        busy.stdin.flush()
        assert busy.stdout.readline() == "done\n"
        after = meter.snapshot()
        wall = time.perf_counter() - started
    finally:
        for proc in (busy, idle):
            proc.communicate(timeout=60)  # stdin closed: both exit
    spent = {(p.pid, p.name): p.cpu_s - before.processes[key].cpu_s
             for key, p in after.processes.items()}  # fmt: skip
    shells = {busy.pid, idle.pid}
    busy_cpu = max(cpu for (pid, _), cpu in spent.items() if pid not in shells)
    idle_cpu = min(cpu for (pid, _), cpu in spent.items() if pid not in shells)
    assert busy_cpu > 0
    assert busy_cpu <= (wall + 0.02) * cores()  # a tick of rounding at most
    assert idle_cpu <= 0.1 * busy_cpu
    w = window(before, after)
    assert w["cpu_s"]["other"] == pytest.approx(sum(spent.values()), abs=0.002)
    assert w["cpu_s"]["client"] < busy_cpu  # nothing the bench waited for ran meanwhile
    assert w["largest_single_gil"]["cpu_s"] == 0.0  # no gateway process: none is single-GIL
    assert w["machine"]["busy_s"] >= busy_cpu - 0.02  # the machine's busy time holds the child's


def test_a_waited_for_child_is_counted_as_the_client() -> None:
    meter = CpuMeter()  # no tree: only what the bench itself runs and waits for
    before = meter.snapshot()
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", BUSY.replace("sys.stdin.readline()", "")],
        input="",
        capture_output=True,
        check=True,
        timeout=120,
    )
    w = window(before, meter.snapshot())
    wall = time.perf_counter() - started
    assert 0 < w["cpu_s"]["client"] <= (wall + 0.02) * cores()
    assert w["cpu_s"]["total"] == w["cpu_s"]["client"]
