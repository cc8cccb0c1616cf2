"""The integrity statuses and the rules that give them: one verdict model for the verify API, the CLI, audits and the plugin (pure).

Every verdict the gateway or its Orthanc plugin gives has one of these statuses. The
table says what each means (for an auditor), whether the plugin serves the bytes of a
copy with that status, how bad it is (a study shows its worst instance's status) and
which alert it raises. :func:`decide` says which status a copy has: each caller gathers
its :class:`Facts` (the verifier from the ledger, the object store and the PACS; the
plugin from the gateway's index and its ledger mirror) and words the :class:`Reason`
it gets back for its own readers.

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
``erased``        no      7      ``erased``        erased on request (crypto-shredded); the
                                                   ledger keeps its pseudonymous record
``pending``       yes     8      (none)            received, not yet committed
``intact``        yes     9      (none)            the copy is the recorded, anchored version
================  ======  =====  ================  ============================================

``served`` is the plugin's default; under ``XrayGateway.FailClosed`` the plugin also
refuses what it cannot vouch for.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal, get_args

Status = Literal[
    "tampered",
    "missing",
    "store_corrupt",
    "unconfirmed",
    "unverifiable",
    "unregistered",
    "retired",
    "erased",
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
        "erased",
        "The image was erased on request: its sealed original was crypto-shredded and its "
        "copies deleted, and its record was retired on the ledger with reason erased. The "
        "ledger keeps only its pseudonymous key and digest. A copy found anyway must not be used.",
        served=False,
        rank=7,
        alert="erased",
    ),
    StatusInfo(
        "pending",
        "The image was received and is safely spooled; the gateway has not finished sealing, "
        "anchoring and forwarding it to the PACS yet.",
        served=True,
        rank=8,
        alert=None,
    ),
    StatusInfo(
        "intact",
        "The image in the PACS is exactly the image the modality sent, as recorded on the ledger.",
        served=True,
        rank=9,
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


# -- the decision rules ----------------------------------------------------------------------


class AnchorState(Enum):
    """What the ledger says of the recorded version a copy is judged against."""

    CONFIRMED = "confirmed"
    """The ledger holds it, written by the record's owner."""
    UNCHECKED = "unchecked"
    """No ledger is consulted: the index's evidence stands alone (the plugin without a mirror)."""
    UNCONFIRMED = "unconfirmed"
    """Claimed, but the ledger cannot confirm it yet (a block above its head, a batch or a
    transaction it does not know)."""
    REFUTED = "refuted"
    """Claimed, but the ledger, synced past it, holds no such record by the owner."""
    NONE = "none"
    """Nothing anchored and nothing claimed that counts: no record to judge against."""


class CopyState(Enum):
    """The PACS copy against the recorded version."""

    ABSENT = "absent"
    """There is no copy."""
    UNCOMPARED = "uncompared"
    """A copy, but no recorded version to compare it with (goes with AnchorState NONE or UNCONFIRMED)."""
    SAME = "same"
    """The recorded version's dataset bytes, read the recorded way."""
    REENCODED = "reencoded"
    """The recorded dataset bytes under another declared transfer syntax: read differently."""
    DIFFERS = "differs"
    """Another dataset than the recorded version's."""


class Original(Enum):
    """The sealed original in the object store."""

    OK = "ok"
    UNCHECKED = "unchecked"
    """Not opened: no store (the plugin, the CLI on files) or the store could not be read."""
    UNUSABLE = "unusable"
    """Gone, does not open, or opens to another digest."""


class Reason(Enum):
    """Why :func:`decide` gave its status; each caller words it for its readers.

    Each reason belongs to one status (:attr:`status`). ``unverifiable`` has none: it is
    given when the facts cannot be gathered, before the rules are asked.
    """

    IN_PROGRESS = ("in_progress", "pending")
    """The gateway has not finished with the version (not anchored, or not forwarded, yet)."""
    NEVER_ANCHORED = ("never_anchored", "unconfirmed")
    """Received exactly so, but still not anchored after the plugin's limit."""
    ANCHOR_UNCONFIRMED = ("anchor_unconfirmed", "unconfirmed")
    """The records claim an anchor the ledger cannot confirm yet."""
    ANCHOR_REFUTED = ("anchor_refuted", "tampered")
    """The records claim an anchor the ledger refutes: the records were changed too."""
    HEADER_CHANGED = ("header_changed", "tampered")
    """Another dataset, with the recorded pixel data: header attributes were edited."""
    PIXELS_CHANGED = ("pixels_changed", "tampered")
    """Another dataset, with other pixel data."""
    ALTERED = ("altered", "tampered")
    """Another dataset; whether its pixels changed is not known."""
    REENCODED = ("reencoded", "tampered")
    """The recorded dataset bytes declared under another transfer syntax."""
    CHANGED_SINCE_ARRIVAL = ("changed_since_arrival", "tampered")
    """No record, and the copy changed since the PACS stored it."""
    NO_RECORD = ("no_record", "unregistered")
    """A copy with no record: it reached the PACS around the gateway."""
    RETIRED = ("retired", "retired")
    """The record was retired on the ledger."""
    ERASED = ("erased", "erased")
    """The record was retired with reason erased, and no copy is left: as it should be."""
    ERASED_COPY = ("erased_copy", "erased")
    """The record was retired with reason erased, yet a copy is there: it reappeared."""
    GONE = ("gone", "missing")
    """Recorded, but the PACS holds no copy."""
    ORIGINAL_UNUSABLE = ("original_unusable", "store_corrupt")
    """The copy is the recorded version, but its sealed original is unusable."""
    VERIFIED = ("verified", "intact")
    """The copy is the recorded, anchored version."""

    @property
    def code(self) -> str:
        """The reason as logs and tests spell it."""
        return self.value[0]

    @property
    def status(self) -> Status:
        """The status this reason gives."""
        return self.value[1]


@dataclass(frozen=True)
class Facts:
    """What a caller found about one instance, reduced to what decides its status.

    Attributes
    ----------
    anchor:
        What the ledger says of the recorded version the copy is judged against.
    copy:
        The PACS copy against that version.
    pending:
        The gateway has not finished with the version (the verifier: an index row before
        ``committed``, or parked; the plugin: the copy is a version received, not anchored).
    overdue:
        Pending longer than the plugin's ``PendingAlertSeconds``: then ``unconfirmed``.
        The verifier leaves it false: its pending watch alerts a late row instead.
    retired:
        The record was retired on the ledger (by its owner or the admin).
    erased:
        The record was retired with reason ``erased``: an erasure crypto-shredded it.
    original:
        The sealed original; the plugin has none to open and leaves it ``UNCHECKED``.
    same_pixels:
        For a copy that ``DIFFERS``: whether its pixel data is the recorded one (``None``:
        not known).
    changed_since_arrival:
        The copy's digest is not the one the PACS stored it with (the plugin; the verifier
        has no arrival digest).
    bytes_first:
        Judge what is wrong with the bytes before the record's standing. The plugin, which
        decides whether the bytes are served, refuses an altered copy of a retired record
        (``tampered``); the verifier, reporting the ledger's standing, calls a retired
        record ``retired`` whatever its copy holds.
    """

    anchor: AnchorState
    copy: CopyState
    pending: bool = False
    overdue: bool = False
    retired: bool = False
    erased: bool = False
    original: Original = Original.UNCHECKED
    same_pixels: bool | None = None
    changed_since_arrival: bool = False
    bytes_first: bool = False


def decide(facts: Facts) -> Reason | None:
    """The status of one copy, and why (``reason.status``); ``None`` when nothing knows it.

    In order of precedence:

    1. pending: ``pending`` (``unconfirmed`` once overdue), whatever else holds;
    2. an erased record: ``erased``, whatever its copy holds (a copy that is there at all
       reappeared and is not served, altered or not);
    3. with ``bytes_first``, a copy that differs: ``tampered``;
    4. a copy under another transfer syntax, or an anchor the ledger refutes: ``tampered``;
    5. an anchor the ledger cannot confirm: ``unconfirmed``, never ``intact``;
    6. no record: ``tampered`` if the copy changed since it arrived, else ``unregistered``
       (``None`` without a copy);
    7. a retired record: ``retired``;
    8. no copy: ``missing``; another dataset: ``tampered``;
    9. an unusable sealed original: ``store_corrupt``; else ``intact``.
    """
    if facts.pending:
        return Reason.NEVER_ANCHORED if facts.overdue else Reason.IN_PROGRESS
    if facts.erased:
        return Reason.ERASED if facts.copy is CopyState.ABSENT else Reason.ERASED_COPY
    if facts.bytes_first and facts.copy is CopyState.DIFFERS:
        return _altered(facts.same_pixels)
    if facts.copy is CopyState.REENCODED:
        return Reason.REENCODED
    if facts.anchor is AnchorState.REFUTED:
        return Reason.ANCHOR_REFUTED
    if facts.anchor is AnchorState.UNCONFIRMED:
        return Reason.ANCHOR_UNCONFIRMED
    if facts.anchor is AnchorState.NONE:
        return _unrecorded(facts)
    if facts.retired:
        return Reason.RETIRED
    if facts.copy is CopyState.ABSENT:
        return Reason.GONE
    if facts.copy is CopyState.DIFFERS:
        return _altered(facts.same_pixels)
    if facts.original is Original.UNUSABLE:
        return Reason.ORIGINAL_UNUSABLE
    return Reason.VERIFIED


def _altered(same_pixels: bool | None) -> Reason:
    if same_pixels is None:
        return Reason.ALTERED
    return Reason.HEADER_CHANGED if same_pixels else Reason.PIXELS_CHANGED


def _unrecorded(facts: Facts) -> Reason | None:
    """No record to judge against: the copy reached the PACS around the gateway, if at all."""
    if facts.copy is CopyState.ABSENT:
        return None
    if facts.changed_since_arrival:
        return Reason.CHANGED_SINCE_ARRIVAL
    return Reason.NO_RECORD


__all__ = [
    "ALERT_KINDS",
    "EXPLANATIONS",
    "SERVED",
    "SEVERITY",
    "STATUSES",
    "TABLE",
    "AnchorState",
    "CopyState",
    "Facts",
    "Original",
    "Reason",
    "Status",
    "StatusInfo",
    "decide",
    "worst",
]
