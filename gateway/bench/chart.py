"""``bench/results.png``: every headline number against its target, on one chart.

An ingest ratio with a CPU bound (``raw.cpu_budget.bounds``, :mod:`gateway.bench.cpu`)
gets a black diamond on its row: the best that ratio could be with the CPU this run
measured on this machine's cores. A diamond right of the dashed line means the target
cannot be met on this machine with that much work, however the work is scheduled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Goal:
    """A target from DESIGN.md's performance table: ``value <= limit`` or ``value >= limit``."""

    key: str
    label: str
    limit: float
    at_most: bool

    def met(self, value: float) -> bool:
        return value <= self.limit if self.at_most else value >= self.limit

    def budget_used(self, value: float) -> float:
        """1.0 is exactly on target, below 1.0 is better than the target."""
        if self.at_most:
            return value / self.limit
        return self.limit / value if value > 0 else float("inf")


TARGETS = (
    Goal("ingest_ack_ratio", "ack time ÷ Orthanc direct (CT)", 1.0, at_most=True),
    Goal("commit_ratio", "commit time ÷ Orthanc direct (CT)", 1.5, at_most=True),
    Goal("anchor_images_per_s", "anchoring, images/s (batched)", 100.0, at_most=False),
    Goal("gas_per_image_batched", "gas per image (batched)", 1000.0, at_most=True),
    Goal("gas_per_image_pipeline", "gas per image, seed workload through up", 2500.0, at_most=True),
    Goal("anchor_latency_p95_s", "ack → anchor receipt, p95, s (seed)", 3.0, at_most=True),
    Goal("parallel_ingest_ratio", "8 associations: images/s ÷ Orthanc direct", 1.0, at_most=False),
    Goal("seed_workload_s", "seed workload end to end, s (seed: 56.8)", 56.8, at_most=True),
    Goal("retrieval_overhead_pct", "retrieval overhead, viewer path, %", 3.0, at_most=True),
    Goal("raw_retrieval_overhead_pct", "retrieval overhead, raw files, %", 50.0, at_most=True),
    Goal(
        "raw_retrieval_overhead_pct_postgres",
        "retrieval overhead, raw files, plugin on PostgreSQL (read-only view), %",
        50.0,
        at_most=True,
    ),
    Goal("rss_mb_1gb_instance", "peak RSS receiving 1 GB, MB", 300.0, at_most=True),
    Goal("sha256_fraction_of_limit", "hashing ÷ single-core SHA-256", 0.5, at_most=False),
    Goal("seal_fraction_of_limit", "sealing ÷ single-core AES-GCM", 0.5, at_most=False),
)


def _floor_markers(ax: Any, results: dict[str, Any], clip: float) -> None:
    """A diamond per ratio that has a CPU bound, at the share of its budget that bound uses."""
    bounds = results.get("raw", {}).get("cpu_budget", {}).get("bounds", {})
    rows = [(i, t) for i, t in enumerate(reversed(TARGETS)) if t.key in bounds]
    if not rows:
        return
    shares = [min(max(t.budget_used(float(bounds[t.key]["best"])), 0.0), clip) for _, t in rows]
    ax.scatter(shares, [i for i, _ in rows], marker="D", color="black", zorder=3, s=28,
               label="best this machine's cores allow with the CPU measured")  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)


def write_chart(results: dict[str, Any], path: Path) -> None:
    """A horizontal bar per target: the share of its budget used (≤ 1 meets it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clip = 3.0
    labels, used, colours, notes = [], [], [], []
    for target in reversed(TARGETS):
        value = float(results[target.key])
        share = target.budget_used(value)
        labels.append(target.label)
        used.append(min(max(share, 0.0), clip))
        colours.append("#2e7d32" if target.met(value) else "#c62828")
        sign = "≤" if target.at_most else "≥"
        notes.append(f"{value:g}  (target {sign} {target.limit:g})")
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(labels) + 1.6))
    bars = ax.barh(labels, used, color=colours)
    _floor_markers(ax, results, clip)
    for bar, note in zip(bars, notes, strict=True):
        ax.text(bar.get_width() + 0.03, bar.get_y() + bar.get_height() / 2, note,
                va="center", fontsize=8)  # fmt: skip
    ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_xlim(0, clip + 1.2)
    ax.set_xlabel(
        f"share of the target's budget used (1 = on target, < 1 better; clipped at {clip:g})"
    )
    machine = results.get("machine", {})
    ax.set_title(
        f"xray-gateway bench{' (quick workload)' if results.get('quick') else ''}: "
        f"{machine.get('cores', '?')} cores, {machine.get('cpu_model', '?')}, "
        f"load {machine.get('load_average_start', '?')}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the long labels push the title right
    plt.close(fig)
