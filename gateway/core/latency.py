"""Durations counted into fixed histogram buckets, thread-safe, for ``/metrics`` (pure).

The listener observes each C-STORE's ack latency here (from the dataset's first bytes
to the success response); the collector renders a snapshot as a Prometheus histogram.
"""

from __future__ import annotations

import bisect
import threading
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


class Latencies:
    """Observations counted per bucket of ``bounds`` (ascending upper bounds, seconds)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        slot = bisect.bisect_left(self.bounds, seconds)
        with self._lock:
            self._counts[slot] += 1
            self._sum += seconds

    def snapshot(self) -> Histogram:
        with self._lock:
            counts, total = list(self._counts), self._sum
        return cumulative(self.bounds, counts, total)


def cumulative(bounds: tuple[float, ...], counts: list[int], total: float) -> Histogram:
    """A histogram from per-bucket counts (``len(bounds) + 1`` of them, the last above all)."""
    running, buckets = 0, []
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        buckets.append((bound, running))
    return Histogram(buckets=tuple(buckets), count=running, total=total)
