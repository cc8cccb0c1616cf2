"""The CPU budget: what each process spent during a workload, and the wall time it allows.

Every timed workload (Orthanc direct, the gateway, the gateway on PostgreSQL) is wrapped
in a :class:`CpuMeter` window. Before and after it, the meter reads user + system CPU
(``utime + stime`` of ``/proc/<pid>/stat``, in clock ticks of ``SC_CLK_TCK``; all
threads) of every process in the trees it watches: ``xray-gateway up`` and its children
(worker and listener processes, anvil, Orthanc with the plugin), or the direct Orthanc.
storescu runs as the bench's own child and is waited for, so its CPU is the bench's
``RUSAGE_CHILDREN`` delta around the window.

The processes fall into groups: ``gateway_listener`` (``up``, which hosts the listener
and API, and any ``listener`` process), ``gateway_workers``, ``orthanc``, ``anvil``,
``postgres`` (the throwaway cluster of the PostgreSQL variant), ``client`` (storescu),
``other`` (anything else in a watched tree), and ``total``.

From a window's work, the shortest wall time this machine could give it:
``floor_wall_s = max(total_cpu_s / cores, the largest single-GIL process's cpu_s)``, with
``cores`` the CPUs this process may run on (``sched_getaffinity``). A Python process runs
its Python on one core at a time, so its CPU is a wall time no parallelism shortens;
Orthanc and anvil are native and multi-threaded, so only the first term binds them. The
floor is a bound, not a prediction: it assumes perfect overlap and no waiting (fsync,
block times, round trips), so the real wall time is above it.

Beside the watched processes, each window reads the whole machine's CPU lines of
``/proc/stat``: ``machine.busy_s`` (every process's, this machine's other users'
included), ``outside_s`` (busy but not in the budget: other users, the bench itself, the
kernel's threads; at least 0, since the machine's ticks and storescu's microseconds
round differently), ``iowait_s`` and ``idle_s``. Idle cores during a window say its wall
time was not bound by CPU there.

A process that starts during a window counts from zero; one that exits during it is
listed under ``exited`` and its CPU since the window opened is lost (no bench workload
restarts a child, so none is expected).
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The groups, in the order tables print them.
GROUPS = (
    "gateway_listener", "gateway_workers", "orthanc", "anvil", "postgres", "client", "other",
)  # fmt: skip
#: The groups whose work must be done before a C-STORE is acked: the listener and storescu.
ACK_GROUPS = ("gateway_listener", "client")


def cores() -> int:
    """The CPUs this process (and the children it starts) may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def floor_wall_s(total_cpu_s: float, largest_gil_cpu_s: float, n_cores: int) -> float:
    """The shortest wall time ``total_cpu_s`` of work can take on ``n_cores`` when one
    single-GIL process's share of it (``largest_gil_cpu_s``) runs on one core at a time."""
    if n_cores < 1:
        raise ValueError("at least one core")
    return max(total_cpu_s / n_cores, largest_gil_cpu_s)


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (which may hold spaces and parentheses):
    field 4 (ppid) is index 1, utime 11, stime 12, starttime 19. None if the pid is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _all_parents() -> dict[int, int]:
    """Every live pid's parent pid."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for pid, parent in _all_parents().items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def pids_running(text: str) -> list[int]:
    """The live processes whose command line holds ``text`` (a data directory's path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if text in argv:
                found.append(int(entry.name))
    return found


def classify(pid: int, root_group: str) -> tuple[str, str, bool]:
    """A process's group, a readable name (no paths or arguments beyond the gateway's
    sub-command and id) and whether it is a single-GIL Python process."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "other", "gone", False
    if "gateway" in argv and "-m" in argv:
        command = argv[argv.index("gateway") + 1 :]
        sub = command[0] if command else "?"
        ident = command[command.index("--id") + 1] if "--id" in command[:-1] else ""
        name = f"{sub}-{ident}" if ident else sub
        group = "gateway_workers" if sub == "worker" else "gateway_listener"
        return group, name, True
    if comm.lower().startswith("orthanc"):
        return "orthanc", "Orthanc", False
    if comm == "anvil":
        return "anvil", "anvil", False
    if comm == "postgres" or root_group == "postgres":
        return "postgres", "postgres", False
    return (root_group, comm, False) if root_group == "orthanc" else ("other", comm, False)


@dataclass(frozen=True)
class ProcessCpu:
    """One process's CPU so far, and who it is."""

    pid: int
    started: int  # clock ticks after boot: a recycled pid is another process
    group: str
    name: str
    gil: bool
    cpu_s: float


@dataclass(frozen=True)
class CpuSnapshot:
    """Every watched process's CPU, the bench's waited-for children's, the machine's
    (busy, iowait, idle), and the clock."""

    processes: dict[tuple[int, int], ProcessCpu]
    children_cpu_s: float
    self_cpu_s: float
    wall: float
    machine: tuple[float, float, float] = (0.0, 0.0, 0.0)


def machine_cpu_s() -> tuple[float, float, float]:
    """All CPUs' busy, iowait and idle seconds since boot (``/proc/stat``'s ``cpu`` line:
    user nice system idle iowait irq softirq steal; guest time is inside user)."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    busy = user + nice + system + irq + softirq + steal
    return busy / ticks, iowait / ticks, idle / ticks


def _rusage_cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuMeter:
    """Reads the CPU of the process trees under ``roots`` (pid → the group of a process in
    that tree it cannot name) and of the bench's waited-for children."""

    roots: dict[int, str] = field(default_factory=dict)

    def snapshot(self) -> CpuSnapshot:
        ticks = os.sysconf("SC_CLK_TCK")
        processes = {}
        for root, root_group in self.roots.items():
            for pid in descendants(root):
                fields = _stat_fields(pid)
                if fields is None:
                    continue
                group, name, gil = classify(pid, root_group)
                cpu = (int(fields[11]) + int(fields[12])) / ticks
                started = int(fields[19])
                processes[(pid, started)] = ProcessCpu(pid, started, group, name, gil, cpu)
        return CpuSnapshot(
            processes=processes,
            children_cpu_s=_rusage_cpu_s(resource.RUSAGE_CHILDREN),
            self_cpu_s=_rusage_cpu_s(resource.RUSAGE_SELF),
            wall=time.perf_counter(),
            machine=machine_cpu_s(),
        )


def _by_name(spent: list[tuple[ProcessCpu, float]]) -> dict[str, float]:
    """Each process's CPU by its name, the busiest first; several processes of one name
    (PostgreSQL's backends) are summed, with their count."""
    named: dict[str, list[float]] = {}
    for proc, cpu in spent:
        named.setdefault(proc.name, []).append(cpu)
    return {
        (name if len(cpus) == 1 else f"{name} x{len(cpus)}"): round(sum(cpus), 3)
        for name, cpus in sorted(named.items(), key=lambda item: -sum(item[1]))
    }


def _machine(before: CpuSnapshot, after: CpuSnapshot, budgeted: float) -> dict[str, float]:
    """The whole machine's CPU in the window: busy, outside the budget, iowait, idle."""
    busy, iowait, idle = (
        round(a - b, 3) for a, b in zip(after.machine, before.machine, strict=True)
    )
    return {
        "busy_s": busy,
        "outside_s": round(max(busy - budgeted, 0.0), 3),
        "iowait_s": iowait,
        "idle_s": idle,
    }


def window(
    before: CpuSnapshot, after: CpuSnapshot, *, n_cores: int | None = None
) -> dict[str, Any]:
    """What each process and group spent between two snapshots, and the floor it sets."""
    n_cores = n_cores or cores()
    spent = []
    for key, proc in after.processes.items():
        was = before.processes.get(key)
        spent.append((proc, proc.cpu_s - (was.cpu_s if was else 0.0)))
    groups = dict.fromkeys(GROUPS, 0.0)
    for proc, cpu in spent:
        groups[proc.group] += cpu
    groups["client"] += after.children_cpu_s - before.children_cpu_s
    total = sum(groups.values())
    gil = [(proc.name, cpu) for proc, cpu in spent if proc.gil]
    largest = max(gil, key=lambda item: item[1], default=("none", 0.0))
    ack_total = sum(groups[g] for g in ACK_GROUPS)
    ack_gil = max(
        (cpu for proc, cpu in spent if proc.gil and proc.group in ACK_GROUPS), default=0.0
    )
    return {
        "wall_s": round(after.wall - before.wall, 4),
        "cores": n_cores,
        "cpu_s": {**{g: round(s, 3) for g, s in groups.items()}, "total": round(total, 3)},
        "processes": _by_name(spent),
        "largest_single_gil": {"name": largest[0], "cpu_s": round(largest[1], 3)},
        "floor_wall_s": round(floor_wall_s(total, largest[1], n_cores), 4),
        # only the work an ack must wait for: the listener's and storescu's
        "ack_floor_wall_s": round(floor_wall_s(ack_total, ack_gil, n_cores), 4),
        "machine": _machine(before, after, total),
        "exited": sorted(p.name for k, p in before.processes.items() if k not in after.processes),
        "bench_self_cpu_s": round(after.self_cpu_s - before.self_cpu_s, 3),
    }


def _bound(
    measured: float, direct_s: float, floor_s: float, cpu_ratio: float, *, rate: bool
) -> dict[str, Any]:
    """A ratio as measured and the best this run's work allows: ``floor_s ÷ direct_s``
    for a time ratio (lower is better), ``direct_s ÷ floor_s`` for a rate ratio."""
    best = direct_s / floor_s if rate else floor_s / direct_s
    return {"measured": measured, "best": round(best, 3), "floor_wall_s": floor_s,
            "direct_s": direct_s, "cpu_ratio": round(cpu_ratio, 3)}  # fmt: skip


def ratio_bounds(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For each ingest ratio, the best this machine could do with the work this run measured.

    Ack ratios: only the work an ack waits for (``best``: the listener's and storescu's in
    the ack window) and everything that ran beside it (``best_as_run``: the workers,
    Orthanc and anvil too). Commit ratios: everything from storescu's start to the last
    row committed. ``parallel_ingest_ratio`` is a rate, so its best is an upper bound.
    ``cpu_ratio``: all the CPU the gateway's window spent ÷ all Orthanc direct spent on
    the same images (a time ratio could not be lower if both were bound by CPU alone).
    """
    direct, gateway = raw["orthanc_direct"], raw["gateway"]
    budget, direct_budget = raw["cpu_budget"]["gateway"], raw["cpu_budget"]["orthanc_direct"]

    def cpu_ratio(window: dict[str, Any], name: str) -> float:
        return float(window["cpu_s"]["total"]) / float(direct_budget[name]["cpu_s"]["total"])

    bounds: dict[str, dict[str, Any]] = {}
    for name, suffix in (("ct", ""), ("dx", "_dx")):
        ack, commit, base = budget[name]["ack"], budget[name]["commit"], direct[f"{name}_s"]
        measured_ack = round(gateway[f"{name}_ack_s"] / base, 3)
        bounds[f"ingest_ack_ratio{suffix}"] = {
            **_bound(measured_ack, base, ack["ack_floor_wall_s"], cpu_ratio(ack, name), rate=False),
            "best_as_run": round(ack["floor_wall_s"] / base, 3),
        }
        measured_commit = round(gateway[f"{name}_commit_s"] / base, 3)
        bounds[f"commit_ratio{suffix}"] = _bound(
            measured_commit, base, commit["floor_wall_s"], cpu_ratio(commit, name), rate=False
        )
    ack, commit = budget["parallel"]["ack"], budget["parallel"]["commit"]
    base = direct["parallel_s"]
    measured = round(base / gateway["parallel_ack_s"], 3)
    bounds["parallel_ingest_ratio"] = {
        **_bound(measured, base, ack["ack_floor_wall_s"], cpu_ratio(ack, "parallel"), rate=True),
        "best_as_run": round(base / ack["floor_wall_s"], 3),
        "best_with_commit": round(base / commit["floor_wall_s"], 3),
    }
    return bounds
