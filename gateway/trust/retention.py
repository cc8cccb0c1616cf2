"""Retention: the studies past their modality's retention period, listed off-hours for an admin.

``GATEWAY_RETENTION`` gives a period per modality (``CT=10y,MR=10y,CR=5y``); a study's age
counts from its newest image's arrival. :class:`RetentionJob` (a thread of ``up``) lists
the studies past their period into the index once a day, inside the off-hours window
``GATEWAY_RETENTION_WINDOW``. Nothing is erased automatically: an admin reads the list
(``xray-gateway retention``, ``GET /v1/retention``) and runs the two-step erasure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from gateway.index.db import Index
from gateway.index.erasure import RetentionDue, replace_retention_due, studies_received

log = logging.getLogger(__name__)

DAY_S = 86_400.0


def list_due(
    index: Index, periods: Mapping[str, float], *, now: float | None = None
) -> list[RetentionDue]:
    """List (and keep in the index) every committed study past its modality's period.

    Parameters
    ----------
    index:
        Where the studies are read from and the list is kept.
    periods:
        Days of retention per modality (``Settings.retention``); other modalities are kept.
    now:
        The time to judge against (epoch seconds; default: now).
    """
    at = time.time() if now is None else now
    due = [
        RetentionDue(uid, modality, received, received + periods[modality] * DAY_S, at)
        for uid, modality, received in studies_received(index)
        if modality in periods and received + periods[modality] * DAY_S <= at
    ]
    replace_retention_due(index, due)
    return due


def in_window(window: tuple[int, int], now: float) -> bool:
    """Whether ``now`` (epoch seconds) is inside ``window`` (minutes after midnight UTC;
    a window whose end is before its start wraps midnight)."""
    start, end = window
    minute = int(now % DAY_S // 60)
    return start <= minute < end if start < end else minute >= start or minute < end


class RetentionJob:
    """Lists the studies past retention once a day, inside the off-hours window.

    Parameters
    ----------
    index, periods, window:
        As :func:`list_due` and :func:`in_window`.
    check_s:
        How often the thread looks at the clock.
    """

    def __init__(
        self,
        index: Index,
        *,
        periods: Mapping[str, float],
        window: tuple[int, int],
        check_s: float = 60.0,
    ) -> None:
        self.index = index
        self.periods = dict(periods)
        self.window = window
        self.check_s = check_s
        self.last_run: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def tick(self, now: float) -> bool:
        """List now if inside the window and not listed in the last 20 hours; say if it did."""
        if not self.periods or not in_window(self.window, now):
            return False
        if self.last_run is not None and now - self.last_run < 20 * 3600:
            return False
        due = list_due(self.index, self.periods, now=now)
        self.last_run = now
        log.info("retention: %d studies are past their modality's retention period", len(due))
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.check_s):
            try:
                self.tick(time.time())
            except Exception:  # the next window tries again; `up` keeps running
                log.exception("retention: listing failed")
