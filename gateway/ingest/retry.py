"""How long to wait before trying again: one exponential backoff for the pipeline and the SCP."""

from __future__ import annotations


def backoff(attempts: int, *, base: float = 0.5, cap: float = 300.0) -> float:
    """Seconds before the next try: ``base``, then doubling with each attempt, at most ``cap``.

    Parameters
    ----------
    attempts:
        Tries that failed so far (0 before the first retry).
    base:
        The first wait: 0.5 s for a pipeline stage, 1 s for a commitment report.
    cap:
        The longest wait (five minutes unless told otherwise).
    """
    return float(min(cap, base * 2.0 ** min(attempts, 64)))
