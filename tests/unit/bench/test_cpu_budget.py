"""The CPU budget's arithmetic: a window's groups and floors, and each ratio's bound."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.bench.cpu import GROUPS, CpuSnapshot, ProcessCpu, floor_wall_s, ratio_bounds, window
from gateway.bench.run import budget_table


def test_the_floor_is_the_work_spread_over_the_cores_or_the_busiest_gil_whichever_is_longer() -> (
    None
):
    assert floor_wall_s(3.0, 1.0, 2) == 1.5  # spread: 3 CPU s on 2 cores
    assert floor_wall_s(3.0, 2.5, 2) == 2.5  # one Python process alone needs 2.5 s
    assert floor_wall_s(3.0, 2.5, 1) == 3.0
    assert floor_wall_s(0.0, 0.0, 4) == 0.0
    with pytest.raises(ValueError):
        floor_wall_s(1.0, 0.5, 0)


def proc(pid: int, group: str, name: str, cpu: float, *, gil: bool = False) -> ProcessCpu:
    return ProcessCpu(pid=pid, started=1000 + pid, group=group, name=name, gil=gil, cpu_s=cpu)


def snap(
    procs: list[ProcessCpu],
    *,
    children: float,
    wall: float,
    machine: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> CpuSnapshot:
    return CpuSnapshot(
        processes={(p.pid, p.started): p for p in procs},
        children_cpu_s=children,
        self_cpu_s=0.0,
        wall=wall,
        machine=machine,
    )


def test_a_window_sums_each_group_counts_new_processes_from_zero_and_lists_the_exited() -> None:
    before = snap(
        [
            proc(1, "gateway_listener", "up", 10.0, gil=True),
            proc(2, "gateway_workers", "worker-1", 5.0, gil=True),
            proc(3, "orthanc", "Orthanc", 7.0),
            proc(4, "anvil", "anvil", 1.0),
            proc(9, "other", "gone", 0.5),
        ],
        children=2.0,
        wall=100.0,
        machine=(500.0, 20.0, 300.0),
    )
    after = snap(
        [
            proc(1, "gateway_listener", "up", 11.5, gil=True),  # +1.5
            proc(2, "gateway_workers", "worker-1", 7.5, gil=True),  # +2.5
            proc(5, "gateway_workers", "worker-2", 0.5, gil=True),  # new: all of it
            proc(3, "orthanc", "Orthanc", 8.0),  # +1.0
            proc(4, "anvil", "anvil", 1.25),  # +0.25
        ],
        children=2.25,  # storescu: +0.25
        wall=102.0,
        machine=(507.0, 20.5, 300.5),  # 4 core-seconds: 3.5 busy, 0.5 iowait, 0.5 idle
    )
    w = window(before, after, n_cores=2)
    assert w["wall_s"] == 2.0
    assert w["cpu_s"]["gateway_listener"] == 1.5
    assert w["cpu_s"]["gateway_workers"] == 3.0
    assert w["cpu_s"]["orthanc"] == 1.0
    assert w["cpu_s"]["anvil"] == 0.25
    assert w["cpu_s"]["client"] == 0.25
    assert w["cpu_s"]["total"] == 6.0
    assert w["processes"]["worker-1"] == 2.5 and w["processes"]["worker-2"] == 0.5
    assert w["largest_single_gil"] == {"name": "worker-1", "cpu_s": 2.5}
    assert w["floor_wall_s"] == 3.0  # 6 CPU s on 2 cores beats worker-1's 2.5 s
    assert w["ack_floor_wall_s"] == 1.5  # up's 1.5 s alone: listener + client is 1.75 / 2
    assert w["exited"] == ["gone"]
    # 7 busy seconds on the machine, 6 of them in the budget: 1 s spent by others
    assert w["machine"] == {"busy_s": 7.0, "outside_s": 1.0, "iowait_s": 0.5, "idle_s": 0.5}


def test_a_recycled_pid_is_another_process_and_same_named_processes_are_summed() -> None:
    before = snap([proc(7, "postgres", "postgres", 3.0)], children=0.0, wall=0.0)
    recycled = ProcessCpu(pid=7, started=5, group="postgres", name="postgres", gil=False, cpu_s=1.0)
    after = snap([recycled, proc(8, "postgres", "postgres", 0.5)], children=0.0, wall=1.0)
    w = window(before, after, n_cores=2)
    assert w["cpu_s"]["postgres"] == 1.5  # the new pid 7 counts from zero, not from 3.0
    assert w["processes"] == {"postgres x2": 1.5}
    assert w["exited"] == ["postgres"]


def budget_window(total: float, gil: float, ack: float) -> dict[str, Any]:
    return {
        "floor_wall_s": floor_wall_s(total, gil, 2),
        "ack_floor_wall_s": ack,
        "cpu_s": {"total": total},
    }


def test_each_ratio_is_bounded_by_its_floor_over_orthanc_direct() -> None:
    def pair(ack: dict[str, Any], commit: dict[str, Any]) -> dict[str, Any]:
        return {"ack": ack, "commit": commit}

    raw = {
        "orthanc_direct": {"ct_s": 2.0, "dx_s": 4.0, "parallel_s": 1.0},
        "gateway": {
            "ct_ack_s": 3.0,
            "ct_commit_s": 6.0,
            "dx_ack_s": 4.0,
            "dx_commit_s": 8.0,
            "parallel_ack_s": 2.5,
        },
        "cpu_budget": {
            "orthanc_direct": {
                name: {"cpu_s": {"total": 2.0}} for name in ("ct", "dx", "parallel")
            },
            "gateway": {
                "ct": pair(budget_window(4.0, 1.0, 1.0), budget_window(8.0, 3.0, 1.0)),
                "dx": pair(budget_window(4.0, 1.0, 2.0), budget_window(6.0, 1.0, 2.0)),
                "parallel": pair(budget_window(4.0, 1.0, 0.8), budget_window(5.0, 1.0, 0.8)),
            },
        },
    }
    bounds = ratio_bounds(raw)
    ct_ack = bounds["ingest_ack_ratio"]
    assert ct_ack["measured"] == 1.5
    assert ct_ack["best"] == 0.5  # 1.0 s of listener and client work ÷ 2.0 s direct
    assert ct_ack["best_as_run"] == 1.0  # everything in the ack window: 4 CPU s on 2 cores
    assert ct_ack["cpu_ratio"] == 2.0
    assert bounds["commit_ratio"] == {
        "measured": 3.0, "best": 2.0, "floor_wall_s": 4.0, "direct_s": 2.0,
        "cpu_ratio": 4.0,  # 8 CPU s through the gateway ÷ Orthanc direct's 2
    }  # fmt: skip
    assert bounds["commit_ratio_dx"]["best"] == 0.75
    parallel = bounds["parallel_ingest_ratio"]
    assert parallel["measured"] == 0.4  # a rate: direct ÷ gateway
    assert parallel["best"] == 1.25  # an upper bound: 1.0 ÷ 0.8
    assert parallel["best_as_run"] == 0.5
    assert parallel["best_with_commit"] == 0.4


def test_the_printed_budget_has_a_row_per_window_and_no_empty_column() -> None:
    def w(listener: float, orthanc: float) -> dict[str, Any]:
        cpu = dict.fromkeys(GROUPS, 0.0) | {"gateway_listener": listener, "orthanc": orthanc}
        return {
            "cpu_s": cpu | {"total": listener + orthanc},
            "machine": {"outside_s": 0.5, "idle_s": 0.25},
            "wall_s": 2.0,
            "floor_wall_s": 1.0,
        }

    budget = {
        "cores": 2,
        "orthanc_direct": {"ct": w(0.0, 0.75)},
        "gateway": {"ct": {"ack": w(0.5, 0.0), "commit": w(0.5, 1.5)}},
        "gateway_postgres": {},
    }
    title, header, _rule, *rows = budget_table(budget).splitlines()
    assert title == "CPU budget, CPU s (2 cores)"
    assert header.split() == [
        "workload", "listener", "orthanc", "total", "others", "idle", "wall", "floor",
    ]  # fmt: skip
    assert [row.split("  ")[0] for row in rows] == ["direct ct", "gw ct ack", "gw ct commit"]
    assert rows[2].split()[-7:] == ["0.50", "1.50", "2.00", "0.50", "0.25", "2.00", "1.00"]
