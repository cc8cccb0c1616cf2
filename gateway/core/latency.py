"""Latency histogram buckets for ``/metrics`` (pure).

The bucket bounds of the ack latency (a prometheus_client histogram summed over the
listener processes, gateway/metrics.py) and of the commit latency, which the collector
counts from the index at scrape time into a :class:`Histogram`.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Upper bounds (seconds) for the ack: receive start -> C-STORE success sent.
ACK_BOUNDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
#: Upper bounds (seconds) for the commit: ack -> anchored on the chain.
COMMIT_BOUNDS: tuple[float, ...] = (
    0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts per upper bound (the last is ``+Inf``), their count and sum."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    total: float


def cumulative(bounds: tuple[float, ...], counts: list[int], total: float) -> Histogram:
    """A histogram from per-bucket counts (``len(bounds) + 1`` of them, the last above all)."""
    running, buckets = 0, []
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        buckets.append((bound, running))
    return Histogram(buckets=tuple(buckets), count=running, total=total)
