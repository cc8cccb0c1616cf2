"""``xray-gateway bench``: every part in one process tree, then ``results.json`` and ``results.png``.

Parts, in order: (1) storescu straight into Orthanc, (2) the same through the gateway,
with the seed workload end to end, (3) the seed workload's hashing and anchoring on the
ledger, batched and one by one, (4) retrieval with and without the plugin, (5) peak RSS
while a 1 GB instance goes through the gateway, (6) machine limits and the gateway's
hashing and sealing against them. Every headline key is computed from this run's
measurements; the raw timings are kept under ``raw``.

``raw.cpu_budget`` (:mod:`gateway.bench.cpu`): the CPU each process group spent in each
ingest workload of parts 1 and 2, and for each ingest ratio the best this machine's
cores allow with that much work; the run ends with a table of both, and the chart marks
each ratio's best beside its bar.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from gateway.bench.anchoring import seed_anchoring
from gateway.bench.chart import TARGETS, write_chart
from gateway.bench.cpu import GROUPS, cores, ratio_bounds
from gateway.bench.ingest import orthanc_direct, through_gateway, through_gateway_on_postgres
from gateway.bench.limits import machine_limits
from gateway.bench.memory import large_instance_rss
from gateway.bench.retrieval import retrieval_overhead, retrieval_overhead_on_postgres
from gateway.bench.workload import Workload, prepare

#: Every headline key of ``results.json``.
KEYS = (
    "ingest_ack_ratio",
    "commit_ratio",
    "postgres_ack_ratio",
    "anchor_images_per_s",
    "gas_per_image_batched",
    "gas_per_image_single",
    "gas_per_image_pipeline",
    "anchor_latency_p95_s",
    "parallel_ingest_ratio",
    "seed_workload_s",
    "retrieval_overhead_pct",
    "raw_retrieval_overhead_pct",
    "raw_retrieval_overhead_pct_postgres",
    "rss_mb_1gb_instance",
    "sha256_fraction_of_limit",
    "seal_fraction_of_limit",
    "machine",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def headline(raw: dict[str, Any]) -> dict[str, Any]:
    """The headline keys, each computed from the raw measurements of this run."""
    direct, gateway, seed = raw["orthanc_direct"], raw["gateway"], raw["seed_anchoring"]
    return {
        "ingest_ack_ratio": round(gateway["ct_ack_s"] / direct["ct_s"], 3),
        "commit_ratio": round(gateway["ct_commit_s"] / direct["ct_s"], 3),
        "ingest_ack_ratio_dx": round(gateway["dx_ack_s"] / direct["dx_s"], 3),
        "commit_ratio_dx": round(gateway["dx_commit_s"] / direct["dx_s"], 3),
        "postgres_ack_ratio": round(raw["gateway_postgres"]["ct_ack_s"] / gateway["ct_ack_s"], 3),
        "anchor_images_per_s": seed["anchor_images_per_s_batched"],
        "gas_per_image_batched": seed["gas_per_image_batched"],
        "gas_per_image_single": seed["gas_per_image_single"],
        "gas_per_image_pipeline": gateway["seed_anchoring"]["gas_per_image"],
        "anchor_latency_p95_s": gateway["seed_anchoring"]["latency_p95_s"],
        # images/s through the gateway ÷ Orthanc direct's, for the same images
        "parallel_ingest_ratio": round(direct["parallel_s"] / gateway["parallel_ack_s"], 3),
        "seed_workload_s": gateway["seed_workload_s"],
        "retrieval_overhead_pct": raw["retrieval"]["retrieval_overhead_pct"],
        "raw_retrieval_overhead_pct": raw["retrieval"]["raw_retrieval_overhead_pct"],
        "raw_retrieval_overhead_pct_postgres": raw["retrieval_postgres"][
            "raw_retrieval_overhead_pct"
        ],
        "rss_mb_1gb_instance": raw["memory"]["rss_mb_peak"],
        "sha256_fraction_of_limit": raw["limits"]["sha256_fraction_of_limit"],
        "seal_fraction_of_limit": raw["limits"]["seal_fraction_of_limit"],
    }


def cpu_budget(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw.cpu_budget``: each ingest part's CPU windows (taken out of that part's raw
    timings, so that each lives in one place) and each ingest ratio's bounds."""
    budget: dict[str, Any] = {"cores": cores(), "clock_ticks_per_s": os.sysconf("SC_CLK_TCK")}
    for part in ("orthanc_direct", "gateway", "gateway_postgres"):
        budget[part] = raw[part].pop("cpu")
    raw["cpu_budget"] = budget
    budget["bounds"] = ratio_bounds(raw)
    return budget


#: Short column names, so that the tables stay narrow.
SHORT = {"gateway_listener": "listener", "gateway_workers": "workers", "postgres": "pg"}


def text_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    """A plain table: the first column left-aligned, the others right-aligned. Printed with
    ``soft_wrap`` so that a narrow terminal or a pipe wraps lines rather than cutting cells."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    return "\n".join([title, line(header), "-" * len(line(header)), *map(line, rows)])


def budget_table(budget: dict[str, Any]) -> str:
    """CPU seconds per group in each window; the machine's busy seconds outside the budget
    (``others``: other users, the bench, the kernel) and idle core-seconds; the window's
    wall time and its floor. ``direct``: Orthanc direct; ``gw``: the gateway; ``pg``: the
    gateway on PostgreSQL."""
    windows: list[tuple[str, dict[str, Any]]] = [
        (f"direct {name}", w) for name, w in budget["orthanc_direct"].items()
    ]
    for part, label in (("gateway", "gw"), ("gateway_postgres", "pg")):
        for name, edges in budget[part].items():
            windows += [(f"{label} {name} {edge}", w) for edge, w in edges.items()]
    shown = [g for g in GROUPS if any(w["cpu_s"][g] for _, w in windows)]  # no empty columns
    header = ["workload", *(SHORT.get(g, g) for g in shown), "total", "others", "idle", "wall",
              "floor"]  # fmt: skip
    rows = [
        [label, *(f"{w['cpu_s'][g]:.2f}" for g in (*shown, "total")),
         f"{w['machine']['outside_s']:.2f}", f"{w['machine']['idle_s']:.2f}",
         f"{w['wall_s']:.2f}", f"{w['floor_wall_s']:.2f}"]
        for label, w in windows
    ]  # fmt: skip
    return text_table(f"CPU budget, CPU s ({budget['cores']} cores)", header, rows)


def bounds_table(bounds: dict[str, dict[str, Any]]) -> str:
    """Each ingest ratio as measured against the best the measured CPU allows, and how many
    times Orthanc direct's CPU the gateway spent on the same images."""
    targets = {t.key: t for t in TARGETS}
    rows = []
    for key, bound in bounds.items():
        target = targets.get(key)
        sign = "" if target is None else ("≤ " if target.at_most else "≥ ") + f"{target.limit:g}"
        rows.append([key, f"{bound['measured']:g}", f"{bound['best']:g}",
                     f"{bound.get('best_as_run', '')}", f"{bound['cpu_ratio']:g}", sign])  # fmt: skip
    header = ["ratio", "measured", "best", "best as run", "CPU ÷ direct's", "target"]
    return text_table("the best each ratio could be with this run's CPU", header, rows)


def run_bench(
    *, out_dir: Path, work: Path, workload: Workload, quick: bool, console: Console | None = None
) -> dict[str, Any]:
    """Run every part and write ``out_dir/results.json`` and ``out_dir/results.png``."""
    console = console or Console(stderr=True)
    work = work.resolve()  # children (Orthanc) run in their own directories
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    machine: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cores_usable": cores(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "load_average_start": _load(),
    }
    raw: dict[str, Any] = {}
    columns = (SpinnerColumn(), TextColumn("[bold]{task.fields[part]}[/] {task.description}"),
               BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("generating fixtures", total=9, part="data")

        def stage(part: str) -> Callable[[str], None]:
            def say(message: str) -> None:
                progress.update(task, description=message, part=part)

            return say

        def done(part: str, summary: str) -> None:
            progress.console.log(f"[green]✓[/] {part}: {summary}")
            progress.advance(task)

        files = prepare(work, workload)
        done("data", f"{len(files.ct)} CT, {len(files.dx)} DX, {len(files.seed)} seed images, "
             f"{files.large.stat().st_size / 1e6:.0f} MB multi-frame in {work / 'data'}")  # fmt: skip
        workloads = {"ct": files.ct, "dx": files.dx}

        raw["orthanc_direct"] = orthanc_direct(
            workdir=work, workloads=workloads, parallel=files.parallel, say=stage("1/6")
        )
        d = raw["orthanc_direct"]
        done("1/6 Orthanc direct", f"CT {d['ct_s']} s, DX {d['dx_s']} s, CT over 8 "
             f"associations {d['parallel_s']} s")  # fmt: skip

        raw["gateway"] = through_gateway(
            workdir=work, workloads=workloads, parallel=files.parallel, seed=files.seed,
            say=stage("2/6"),
        )  # fmt: skip
        g, a = raw["gateway"], raw["gateway"]["seed_anchoring"]
        done("2/6 gateway", f"CT ack {g['ct_ack_s']} s, commit {g['ct_commit_s']} s; DX ack "
             f"{g['dx_ack_s']} s, commit {g['dx_commit_s']} s; CT over 8 associations ack "
             f"{g['parallel_ack_s']} s; seed end to end {g['seed_workload_s']} s in "
             f"{a['transactions']} transactions, ack to anchor p95 {a['latency_p95_s']} s")  # fmt: skip

        raw["gateway_postgres"] = through_gateway_on_postgres(
            workdir=work, files=files.ct, say=stage("2/6")
        )
        p = raw["gateway_postgres"]
        done("2/6 gateway on PostgreSQL", f"CT ack {p['ct_ack_s']} s, commit {p['ct_commit_s']} s")

        raw["seed_anchoring"] = seed_anchoring(workdir=work, files=files.seed, say=stage("3/6"))
        s = raw["seed_anchoring"]
        done("3/6 seed workload", f"hash {s['hash_s']} s, batched {s['anchor_batched_s']} s, "
             f"one by one {s['anchor_single_s']} s")  # fmt: skip

        raw["retrieval"] = retrieval_overhead(
            workdir=work,
            slices=workload.retrieval_slices,
            repetitions=workload.retrieval_repetitions,
            progress=stage("4/6"),
        )
        r = raw["retrieval"]
        done("4/6 retrieval", f"viewer {r['retrieval_overhead_pct']} %, raw "
             f"{r['raw_retrieval_overhead_pct']} %")  # fmt: skip

        raw["retrieval_postgres"] = retrieval_overhead_on_postgres(
            workdir=work,
            slices=workload.retrieval_slices,
            repetitions=workload.retrieval_repetitions,
            progress=stage("4/6"),
        )
        r = raw["retrieval_postgres"]
        done("4/6 retrieval, plugin on PostgreSQL", f"viewer {r['retrieval_overhead_pct']} %, "
             f"raw {r['raw_retrieval_overhead_pct']} %, evidence cache "
             f"{r['evidence_cache_hits']} hits / {r['evidence_cache_misses']} misses")  # fmt: skip

        raw["memory"] = large_instance_rss(workdir=work, large=files.large, say=stage("5/6"))
        done("5/6 memory", f"peak RSS {raw['memory']['rss_mb_peak']} MB")

        stage("6/6")("SHA-256, AES-256-GCM, fingerprint and seal throughput")
        raw["limits"] = machine_limits(files=files.dx, mib=workload.limits_mib)
        lim = raw["limits"]
        done("6/6 limits", f"SHA-256 {lim['sha256_mb_s']} MB/s, AES-GCM {lim['aes256gcm_mb_s']} "
             f"MB/s, fingerprint {lim['fingerprint_mb_s']} MB/s, seal {lim['seal_mb_s']} MB/s")  # fmt: skip

    machine["load_average_end"] = _load()
    numbers = headline(raw)
    budget = cpu_budget(raw)
    for table in (budget_table(budget), bounds_table(budget["bounds"])):
        console.print(table, soft_wrap=True, markup=False, highlight=False)
    results: dict[str, Any] = {
        **numbers,
        "machine": machine,
        "quick": quick,
        "workload": workload.as_dict(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "targets": {
            t.key: {"limit": t.limit, "at_most": t.at_most, "met": t.met(float(numbers[t.key]))}
            for t in TARGETS
        },
        "raw": raw,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    write_chart(results, out_dir / "results.png")
    return results
