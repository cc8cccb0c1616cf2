"""The integrity statuses: one table shared by the verify API, the CLI, audits and the plugin (pure).

Every verdict the gateway or its Orthanc plugin gives has one of these statuses. The
table says what each means (for an auditor), whether the plugin serves the bytes of a
copy with that status, how bad it is (a study shows its worst instance's status) and
which alert it raises.

================  ======  =====  ================  ============================================
status            served  rank   alert kind        meaning
================  ======  =====  ================  ============================================
``tampered``      no      0      ``tampered``      the copy differs from the recorded version
``missing``       no      1      ``missing``       recorded, but the copy is gone
``store_corrupt`` yes     2      ``store_corrupt`` the sealed original is unusable
``unconfirmed``   yes     3      ``unconfirmed``   the anchor cannot be confirmed on chain (yet)
``unverifiable``  yes     4      ``error``         the check itself could not run
``unregistered``  yes     5      ``unregistered``  no record: reached the PACS around the gateway
``retired``       yes     6      ``retired``       the record was retired on the ledger
``pending``       yes     7      (none)            received, not yet committed
``intact``        yes     8      (none)            the copy is the recorded, anchored version
================  ======  =====  ================  ============================================

``served`` is the plugin's default; under ``XrayGateway.FailClosed`` the plugin also
refuses what it cannot vouch for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Status = Literal[
    "tampered",
    "missing",
    "store_corrupt",
    "unconfirmed",
    "unverifiable",
    "unregistered",
    "retired",
    "pending",
    "intact",
]
"""Every status, worst first (the order of :data:`SEVERITY`)."""


@dataclass(frozen=True)
class StatusInfo:
    """What one status means and what follows from it.

    Attributes
    ----------
    name:
        The status as the API, the CLI and the plugin spell it.
    meaning:
        The explanation an auditor reads (the verify API's ``explanation``).
    served:
        Whether the Orthanc plugin serves the bytes of a copy with this status.
    rank:
        Severity, 0 the worst: a series or study takes its worst instance's status.
    alert:
        The alert kind recorded for it (:data:`gateway.trust.alerts.KINDS`), or ``None``.
    """

    name: Status
    meaning: str
    served: bool
    rank: int
    alert: str | None

    @property
    def alerts(self) -> bool:
        return self.alert is not None


_TABLE = (
    StatusInfo(
        "tampered",
        "The image in the PACS is not the image the modality sent: it was altered after it "
        "was recorded. Do not use it for diagnosis; an administrator can restore the original.",
        served=False,
        rank=0,
        alert="tampered",
    ),
    StatusInfo(
        "missing",
        "The image was recorded on the ledger but is no longer in the PACS. "
        "An administrator can restore it from the sealed original.",
        served=False,
        rank=1,
        alert="missing",
    ),
    StatusInfo(
        "store_corrupt",
        "The sealed original in the object store cannot be opened or does not match "
        "the ledger: the image can no longer be restored from it.",
        served=True,
        rank=2,
        alert="store_corrupt",
    ),
    StatusInfo(
        "unconfirmed",
        "The gateway's records say this image was anchored, but the anchor cannot be confirmed "
        "on the ledger (the transaction or batch is not found, or the ledger copy has not caught "
        "up): its integrity is not vouched for until it is.",
        served=True,
        rank=3,
        alert="unconfirmed",
    ),
    StatusInfo(
        "unverifiable",
        "The check itself could not run (the gateway's records or the stored file could not "
        "be read): nothing is vouched for.",
        served=True,
        rank=4,
        alert="error",
    ),
    StatusInfo(
        "unregistered",
        "The image is in the PACS but was never recorded by the gateway: it reached the "
        "PACS by another route, so its integrity cannot be vouched for.",
        served=True,
        rank=5,
        alert="unregistered",
    ),
    StatusInfo(
        "retired",
        "The record of this image was retired on the ledger; it should no longer be used.",
        served=True,
        rank=6,
        alert="retired",
    ),
    StatusInfo(
        "pending",
        "The image was received and is safely spooled; the gateway has not finished sealing, "
        "anchoring and forwarding it to the PACS yet.",
        served=True,
        rank=7,
        alert=None,
    ),
    StatusInfo(
        "intact",
        "The image in the PACS is exactly the image the modality sent, as recorded on the ledger.",
        served=True,
        rank=8,
        alert=None,
    ),
)

STATUSES: tuple[Status, ...] = get_args(Status)
"""Every status, worst first."""
TABLE: dict[Status, StatusInfo] = {info.name: info for info in _TABLE}
SEVERITY: tuple[Status, ...] = tuple(sorted(STATUSES, key=lambda name: TABLE[name].rank))
"""Worst first: a series or study takes the status of its worst instance."""
EXPLANATIONS: dict[Status, str] = {name: TABLE[name].meaning for name in STATUSES}
SERVED: dict[Status, bool] = {name: TABLE[name].served for name in STATUSES}
ALERT_KINDS: tuple[str, ...] = tuple(
    dict.fromkeys(info.alert for info in _TABLE if info.alert is not None)
)
"""The alert kinds statuses raise."""

if tuple(TABLE) != STATUSES or SEVERITY != STATUSES:  # one list: the Literal, in rank order
    raise RuntimeError("gateway.trust.verdicts: the table and the Status literal disagree")


def worst(statuses: list[Status]) -> Status:
    """The status a series or study shows: its worst instance's (``intact`` when empty)."""
    return min(statuses, key=lambda name: TABLE[name].rank, default="intact")


__all__ = [
    "ALERT_KINDS",
    "EXPLANATIONS",
    "SERVED",
    "SEVERITY",
    "STATUSES",
    "TABLE",
    "Status",
    "StatusInfo",
    "worst",
]
