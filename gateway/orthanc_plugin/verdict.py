"""What the plugin decides about one stored instance, and how it says it to a radiologist (pure).

The plugin compares the dataset digest of Orthanc's copy with the versions the gateway
recorded for that SOP Instance UID (its index) and, when a ledger mirror runs, with what
the chain holds. The statuses, whether the bytes are served, and the rules that decide
between them are :mod:`gateway.trust.verdicts`' (:func:`~gateway.trust.verdicts.decide`,
the verifier's too): :func:`judge` gathers the facts (which version the copy is, what the
mirror says of it) with ``bytes_first`` (an altered copy is refused before a retirement
is told), asks the rules, and words their reason for a radiologist. Here is why the
plugin gives each status:

============== ================================================================
status         why
============== ================================================================
intact         the digest is a recorded version whose anchor the mirror confirms
               (without a mirror configured: one the index records as anchored)
pending        the gateway received exactly these bytes; not anchored yet
unconfirmed    the index records an anchor the mirror cannot confirm yet (it has
               not synced past its block, or the batch is unknown to it), or the
               bytes were received but not anchored after ``PendingAlertSeconds``:
               served with a warning, alerted
unregistered   no record: sent around the gateway. Clinical access must not be
               lost; the radiologist sees a warning and an alert is recorded
               (refused, as tampered, if it changed since it arrived in Orthanc)
retired        the record was retired on the ledger (withdrawn, not altered):
               shown with the reason, and alerted
tampered       the digest matches no version the gateway received, or the index
               claims an anchor the ledger does not hold
missing        Orthanc lists the instance but its file is gone from the storage
unverifiable   the check itself could not run (index unreadable, dataset
               unparsable): served with a warning, alerted as ``error``
============== ================================================================
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.trust.verdicts import (
    SERVED,
    SEVERITY,
    AnchorState,
    CopyState,
    Facts,
    Reason,
    Status,
    decide,
    worst,
)

#: Without ``PendingAlertSeconds``: how long a received version may wait for its anchor.
PENDING_ALERT_S = 900.0


@dataclass(frozen=True)
class Version:
    """One version of an instance as the gateway's index records it (no PHI)."""

    version: int | None
    digest: bytes
    pixel_digest: bytes | None
    record_key: bytes | None
    tx_hash: str | None
    block_number: int | None
    block_time: int | None
    recorder: str | None
    batch_id: int | None
    leaf_index: int | None
    transfer_syntax: str | None = None
    patient_key: bytes | None = None
    proof: bytes | None = None  # a batched version's encoded inclusion proof (merkle.py)
    received_at: float | None = None  # when the gateway acked it (epoch seconds)
    erased: bool = False  # erased on request (the index's stage): known before the mirror

    @property
    def anchored(self) -> bool:
        """True when the index holds anchor evidence: a transaction or a batch membership."""
        return self.tx_hash is not None or self.batch_id is not None

    def evidence(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "digest": self.digest.hex(),
            "tx_hash": self.tx_hash,
            "block_number": self.block_number,
            "block_time": self.block_time,
            "recorder": self.recorder,
            "batch_id": self.batch_id,
            "leaf_index": self.leaf_index,
        }


@dataclass(frozen=True)
class RetirementFacts:
    """An ``ImageRetired`` event seen on the chain."""

    by: str
    reason: str
    block_number: int
    block_time: int | None


@dataclass(frozen=True)
class LedgerFacts:
    """What the ledger mirror knows about one recorded version.

    ``on_chain`` is ``None`` while the mirror has not synced past the version's block (or
    runs without a chain): the index's anchor evidence is then all there is.
    """

    on_chain: bool | None
    synced_block: int | None
    retired: RetirementFacts | None = None
    #: Accounts whose writes under the record key were ignored: not its owner (trust.py).
    foreign: tuple[str, ...] = ()


UNKNOWN_LEDGER = LedgerFacts(on_chain=None, synced_block=None)


@dataclass(frozen=True)
class ReadVerdict:
    """The plugin's decision about serving one stored instance, with a radiologist's explanation.

    ``reason`` is why the shared rules (:func:`gateway.trust.verdicts.decide`) gave the
    status; ``None`` for the guard's own refusals, made before they are asked.
    """

    status: Status
    sop_instance_uid: str
    digest_now: bytes | None
    recorded: Version | None
    headline: str
    explanation: str
    ledger: str
    changed: str | None = None  # "pixels", "header" or None when unknown / not tampered
    checked_at: float = 0.0
    #: False for a warning expected to clear by itself: an anchor the mirror has not
    #: confirmed within ``PendingAlertSeconds`` of its reception (the mirror follows the
    #: chain a few seconds behind, and the gateway forwards right after anchoring).
    alert: bool = True
    reason: Reason | None = None

    @property
    def served(self) -> bool:
        return SERVED[self.status]

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "served": self.served,
            "sop_instance_uid": self.sop_instance_uid,
            "digest_now": self.digest_now.hex() if self.digest_now is not None else None,
            "recorded": self.recorded.evidence() if self.recorded is not None else None,
            "changed": self.changed,
            "headline": self.headline,
            "explanation": self.explanation,
            "ledger": self.ledger,
            "checked_at": self.checked_at,
        }


def _short(value: str | bytes | None, n: int = 12) -> str:
    if value is None:
        return "?"
    text = value.hex() if isinstance(value, bytes) else value
    return text[:n] + "…" if len(text) > n else text


def _where(version: Version) -> str:
    if version.batch_id is not None:
        return f"batch {version.batch_id}, leaf {version.leaf_index}"
    return f"transaction {_short(version.tx_hash, 14)}, block {version.block_number}"


def _ledger_note(version: Version, facts: LedgerFacts | None) -> str:
    if facts is None:
        return f"the gateway's index records {_where(version)}; no ledger mirror configured"
    if facts.on_chain:
        return f"confirmed on the ledger ({_where(version)}; mirror at block {facts.synced_block})"
    if facts.on_chain is None:
        return (
            f"the gateway's index records {_where(version)}; {_unconfirmed_reason(version, facts)}"
        )
    return f"the ledger holds no record of this version ({_where(version)} claimed by the index)"


def _unconfirmed_reason(version: Version, facts: LedgerFacts) -> str:
    """Why the mirror cannot confirm ``version`` yet (``facts.on_chain`` is None)."""
    if facts.synced_block is None:
        return "the ledger mirror has not synced yet"
    if version.block_number is not None and version.block_number > facts.synced_block:
        return (
            f"the ledger mirror has not synced past block {version.block_number} "
            f"(it is at block {facts.synced_block})"
        )
    if version.batch_id is not None:
        return (
            f"batch {version.batch_id} is unknown to the ledger mirror "
            f"(synced to block {facts.synced_block})"
        )
    return f"the ledger mirror (at block {facts.synced_block}) cannot confirm it"


def judge(
    *,
    sop_instance_uid: str,
    digest_now: bytes,
    versions: tuple[Version, ...],
    ledger: dict[bytes, LedgerFacts] | None = None,
    changed: str | None = None,
    arrival_digest: bytes | None = None,
    syntax_now: str | None = None,
    now: float | None = None,
    pending_alert_s: float = PENDING_ALERT_S,
) -> ReadVerdict:
    """Decide about Orthanc's copy of ``sop_instance_uid`` whose dataset digest is ``digest_now``.

    The decision is :func:`gateway.trust.verdicts.decide`'s, on the facts gathered here
    (:func:`read_facts`); the words are the plugin's own.

    Parameters
    ----------
    sop_instance_uid:
        The instance, as Orthanc filed it.
    digest_now:
        SHA-256 of the dataset bytes of Orthanc's copy (File Meta excluded).
    versions:
        The gateway's recorded versions of that UID, oldest first (empty: unregistered).
    ledger:
        The mirror's facts per anchored digest when a mirror runs (a version it has no
        facts for is unconfirmed), or ``None`` without one: the index's evidence only.
    changed:
        For a copy that matches no version: ``"pixels"`` or ``"header"`` when the caller
        compared pixel digests, else ``None``.
    arrival_digest:
        The digest the plugin took when Orthanc stored the file, if known: an unregistered
        copy that changed since it arrived is refused too.
    syntax_now:
        The Transfer Syntax UID the stored file's File Meta declares. The digest leaves the
        File Meta out (every hop rewrites it), but the transfer syntax says how the dataset
        bytes are read: a copy declaring another one than recorded is refused.
    now:
        The time of the check (epoch seconds); by default the clock's.
    pending_alert_s:
        A received version not anchored after this many seconds is ``unconfirmed``.
    """
    reading = _Reading.of(
        sop_instance_uid=sop_instance_uid, digest_now=digest_now, versions=versions,
        ledger=ledger, syntax_now=syntax_now,
        checked_at=time.time() if now is None else now, pending_alert_s=pending_alert_s,
    )  # fmt: skip
    facts = reading.facts(changed=changed, arrival_digest=arrival_digest)
    reason = decide(facts)
    assert reason is not None  # only a copy nobody holds is unknown; the plugin holds one
    return _WORDS[reason](reading, reason)


def read_facts(
    *,
    digest_now: bytes,
    versions: tuple[Version, ...],
    ledger: dict[bytes, LedgerFacts] | None = None,
    changed: str | None = None,
    arrival_digest: bytes | None = None,
    syntax_now: str | None = None,
    now: float = 0.0,
    pending_alert_s: float = PENDING_ALERT_S,
) -> Facts:
    """The facts :func:`judge` asks the shared rules about (its parameters, without the UID)."""
    reading = _Reading.of(
        sop_instance_uid="", digest_now=digest_now, versions=versions, ledger=ledger,
        syntax_now=syntax_now, checked_at=now, pending_alert_s=pending_alert_s,
    )  # fmt: skip
    return reading.facts(changed=changed, arrival_digest=arrival_digest)


@dataclass(frozen=True)
class _Reading:
    """Which recorded version Orthanc's copy is, and what the mirror says of it."""

    sop_instance_uid: str
    digest_now: bytes
    versions: tuple[Version, ...]
    ledger: dict[bytes, LedgerFacts] | None
    syntax_now: str | None
    checked_at: float
    pending_alert_s: float
    #: The newest anchored version the copy is, if any.
    match: Version | None
    #: Else the newest received version the copy is (not anchored yet).
    received: Version | None
    #: The version a copy that is none of them is compared with: the newest anchored one
    #: (the newest received one when none is anchored).
    newest: Version | None

    @classmethod
    def of(
        cls,
        *,
        sop_instance_uid: str,
        digest_now: bytes,
        versions: tuple[Version, ...],
        ledger: dict[bytes, LedgerFacts] | None,
        syntax_now: str | None,
        checked_at: float,
        pending_alert_s: float,
    ) -> _Reading:
        anchored = [v for v in versions if v.anchored]
        match = next((v for v in reversed(anchored) if v.digest == digest_now), None)
        received = None
        if match is None:
            received = next((v for v in reversed(versions) if v.digest == digest_now), None)
        newest = anchored[-1] if anchored else (versions[-1] if versions else None)
        return cls(
            sop_instance_uid=sop_instance_uid, digest_now=digest_now, versions=versions,
            ledger=ledger, syntax_now=syntax_now, checked_at=checked_at,
            pending_alert_s=pending_alert_s, match=match, received=received, newest=newest,
        )  # fmt: skip

    @property
    def mirror(self) -> LedgerFacts | None:
        """The mirror's facts about the matched version (None: no mirror configured)."""
        if self.ledger is None or self.match is None:
            return None
        return self.ledger.get(self.match.digest, UNKNOWN_LEDGER)

    def facts(self, *, changed: str | None, arrival_digest: bytes | None) -> Facts:
        arrived_otherwise = arrival_digest is not None and arrival_digest != self.digest_now
        if self.newest is None:  # no version at all
            return Facts(
                anchor=AnchorState.NONE, copy=CopyState.UNCOMPARED,
                changed_since_arrival=arrived_otherwise, bytes_first=True,
            )  # fmt: skip
        if self.match is not None:
            mirror = self.mirror
            return Facts(
                anchor=_anchor(mirror),
                copy=CopyState.REENCODED if self._reencoded(self.match) else CopyState.SAME,
                retired=mirror is not None and mirror.retired is not None,
                erased=self.match.erased or _erased(mirror),
                changed_since_arrival=arrived_otherwise,
                bytes_first=True,
            )
        if self.received is not None:
            return Facts(
                anchor=AnchorState.NONE, copy=CopyState.SAME, pending=True,
                overdue=_waited_too_long(self.received, self.checked_at, self.pending_alert_s),
                changed_since_arrival=arrived_otherwise, bytes_first=True,
            )  # fmt: skip
        newest = (
            None if self.ledger is None else self.ledger.get(self.newest.digest, UNKNOWN_LEDGER)
        )
        return Facts(
            anchor=_anchor(newest) if self.newest.anchored else AnchorState.NONE,
            copy=CopyState.DIFFERS,
            retired=newest is not None and newest.retired is not None,
            erased=self.newest.erased or _erased(newest),
            same_pixels={"header": True, "pixels": False}.get(changed or ""),
            changed_since_arrival=arrived_otherwise,
            bytes_first=True,
        )

    def _reencoded(self, version: Version) -> bool:
        syntax = version.transfer_syntax
        return bool(syntax and self.syntax_now and self.syntax_now != syntax)


def _anchor(facts: LedgerFacts | None) -> AnchorState:
    """What the mirror's facts say of a version's anchor (no mirror: the index's evidence)."""
    if facts is None:
        return AnchorState.UNCHECKED
    if facts.on_chain is None:
        return AnchorState.UNCONFIRMED
    return AnchorState.CONFIRMED if facts.on_chain else AnchorState.REFUTED


# -- the words for each decision ---------------------------------------------------------------


def _verdict(reading: _Reading, reason: Reason, **said: Any) -> ReadVerdict:
    """The verdict with the rules' status and reason, and the plugin's words ``said``."""
    return ReadVerdict(
        status=reason.status, sop_instance_uid=reading.sop_instance_uid,
        digest_now=reading.digest_now, checked_at=reading.checked_at, reason=reason, **said,
    )  # fmt: skip


def _changed_since_arrival(reading: _Reading, reason: Reason) -> ReadVerdict:
    return _verdict(
        reading, reason, recorded=None,
        headline="Refused: this image was altered after it was stored.",
        explanation=(
            "This image did not pass through the xray gateway, and its stored copy has "
            "changed since it arrived in the PACS. Do not use it for diagnosis; the PACS "
            "administrator has been alerted."
        ),
        ledger="no record",
    )  # fmt: skip


def _no_record(reading: _Reading, reason: Reason) -> ReadVerdict:
    return _verdict(
        reading, reason, recorded=None,
        headline="Warning: this image did not pass through the xray gateway.",
        explanation=(
            "It has no record in the gateway or on the ledger, so its integrity cannot be "
            "verified. It is shown so that clinical access is not lost; the PACS "
            "administrator has been alerted."
        ),
        ledger="no record",
    )  # fmt: skip


def _in_progress(reading: _Reading, reason: Reason) -> ReadVerdict:
    return _verdict(
        reading, reason, recorded=reading.received,
        headline="Received by the xray gateway; its ledger record is not written yet.",
        explanation=(
            "This copy is identical to what the gateway received. The ledger record "
            "is still being written; the check will then be against the ledger."
        ),
        ledger="not anchored yet",
    )  # fmt: skip


def _never_anchored(reading: _Reading, reason: Reason) -> ReadVerdict:
    """Received exactly so, but still not anchored after ``pending_alert_s`` seconds."""
    limit = reading.pending_alert_s
    return _verdict(
        reading, reason, recorded=reading.received,
        headline="Warning: this image's ledger record was never written.",
        explanation=(
            f"This copy is identical to what the gateway received, but it is not anchored "
            f"after {limit:.0f} s: its integrity is not vouched for. The PACS administrator "
            "has been alerted."
        ),
        ledger=f"not anchored after {limit:.0f} s",
    )  # fmt: skip


_WHAT_CHANGED = {
    Reason.PIXELS_CHANGED: ("pixels", "The pixel data was changed."),
    Reason.HEADER_CHANGED: (
        "header",
        "The header (patient or study information) was changed; the pixels are unchanged.",
    ),
}


def _altered(reading: _Reading, reason: Reason) -> ReadVerdict:
    newest = reading.newest
    assert newest is not None  # a copy differs from a recorded version
    changed, what = _WHAT_CHANGED.get(reason, (None, ""))
    mirror = None if reading.ledger is None else reading.ledger.get(newest.digest)
    return _verdict(
        reading, reason, recorded=newest,
        headline="Refused: this image was altered after it was recorded.",
        explanation=(
            f"The copy stored in the PACS does not match the version the xray gateway "
            f"recorded (version {newest.version}, {_where(newest)}). {what} "
            "Do not use it for diagnosis. The PACS administrator has been alerted and "
            "can restore the recorded original."
        ).replace("  ", " "),
        ledger=_ledger_note(newest, mirror),
        changed=changed,
    )  # fmt: skip


def _matched(reading: _Reading) -> tuple[Version, LedgerFacts | None, str]:
    """The version the copy is, the mirror's facts about it, and the ledger line."""
    match = reading.match
    assert match is not None  # every rule below REENCODED judges a matched version
    mirror = reading.mirror
    return match, mirror, _ledger_note(match, mirror)


def _reencoded(reading: _Reading, reason: Reason) -> ReadVerdict:
    match, _, note = _matched(reading)
    return _verdict(
        reading, reason, recorded=match,
        headline="Refused: this image's stored encoding was changed.",
        explanation=(
            f"The stored file declares transfer syntax {reading.syntax_now}, the recorded "
            f"version {match.transfer_syntax}: its bytes would be read differently. Do not "
            "use it; the PACS administrator has been alerted."
        ),
        ledger=note,
    )  # fmt: skip


def _anchor_refuted(reading: _Reading, reason: Reason) -> ReadVerdict:
    match, _, note = _matched(reading)
    return _verdict(
        reading, reason, recorded=match,
        headline="Refused: this image's record is not on the ledger.",
        explanation=(
            "The gateway's index lists this exact copy, but the ledger holds no such "
            "record: the copy and the index may both have been changed. Do not use it "
            "for diagnosis. The PACS administrator has been alerted."
        ),
        ledger=note,
    )  # fmt: skip


def _anchor_unconfirmed(reading: _Reading, reason: Reason) -> ReadVerdict:
    match, mirror, note = _matched(reading)
    assert mirror is not None  # unconfirmed is the mirror's word
    overdue = match.received_at is None or _waited_too_long(
        match, reading.checked_at, reading.pending_alert_s
    )
    return _verdict(
        reading, reason, recorded=match,
        headline="Warning: this image's ledger record cannot be confirmed yet.",
        explanation=(
            f"Identical to version {match.version} as the xray gateway's records list it "
            f"({_where(match)}), but {_unconfirmed_reason(match, mirror)}: its integrity "
            "is not vouched for until the ledger confirms it."
            + (" The PACS administrator has been alerted." if overdue else "")
        ),
        ledger=note,
        alert=overdue,
    )  # fmt: skip


def _retired(reading: _Reading, reason: Reason) -> ReadVerdict:
    match, mirror, note = _matched(reading)
    retired = mirror.retired if mirror is not None else None
    assert retired is not None  # retired is the mirror's word
    when = (
        time.strftime("%Y-%m-%d", time.gmtime(retired.block_time))
        if retired.block_time
        else f"block {retired.block_number}"
    )
    return _verdict(
        reading, reason, recorded=match,
        headline="Warning: this image's record was retired on the ledger.",
        explanation=(
            f"Retired on {when} by {retired.by}: {retired.reason or 'no reason given'}. "
            "The image is unaltered but was withdrawn; check before using it."
        ),
        ledger=note,
    )  # fmt: skip


def _erased(facts: LedgerFacts | None) -> bool:
    """Whether the mirror saw the version's record retired with reason ``erased``."""
    return facts is not None and facts.retired is not None and facts.retired.reason == "erased"


def _erased_copy(reading: _Reading, reason: Reason) -> ReadVerdict:
    return _verdict(
        reading, reason, recorded=reading.match,
        headline="Refused: this image was erased on request.",
        explanation=(
            "Its record was retired on the ledger with reason erased and its sealed original "
            "crypto-shredded; this copy reappeared and must not be used. The PACS "
            "administrator has been alerted."
        ),
        ledger="retired: erased",
    )  # fmt: skip


def _verified(reading: _Reading, reason: Reason) -> ReadVerdict:
    match, _, note = _matched(reading)
    newest = reading.newest
    explanation = (
        f"Identical to version {match.version} recorded by the xray gateway ({_where(match)})."
    )
    if newest is not None and match is not newest:
        explanation += (
            f" A newer version ({newest.version}) was recorded since; the PACS still "
            "holds this one."
        )
    return _verdict(
        reading, reason, recorded=match,
        headline="Verified: unaltered since it was recorded.",
        explanation=explanation,
        ledger=note,
    )  # fmt: skip


#: The plugin's words for each reason the rules give on its facts. Its facts never hold a
#: sealed original (``store_corrupt``) or an absent copy: a file gone from Orthanc's
#: storage is :func:`missing`, decided by the guard before the rules are asked.
_WORDS: dict[Reason, Callable[[_Reading, Reason], ReadVerdict]] = {
    Reason.CHANGED_SINCE_ARRIVAL: _changed_since_arrival,
    Reason.NO_RECORD: _no_record,
    Reason.IN_PROGRESS: _in_progress,
    Reason.NEVER_ANCHORED: _never_anchored,
    Reason.ALTERED: _altered,
    Reason.HEADER_CHANGED: _altered,
    Reason.PIXELS_CHANGED: _altered,
    Reason.REENCODED: _reencoded,
    Reason.ANCHOR_REFUTED: _anchor_refuted,
    Reason.ANCHOR_UNCONFIRMED: _anchor_unconfirmed,
    Reason.RETIRED: _retired,
    Reason.ERASED_COPY: _erased_copy,
    Reason.VERIFIED: _verified,
}


def _waited_too_long(version: Version, now: float, limit: float) -> bool:
    return version.received_at is not None and now - version.received_at > limit


def unverifiable(sop_instance_uid: str, reason: str, *, now: float | None = None) -> ReadVerdict:
    """The check could not run; the bytes are served with a warning."""
    return ReadVerdict(
        status="unverifiable",
        sop_instance_uid=sop_instance_uid,
        digest_now=None,
        recorded=None,
        headline="Warning: the integrity of this image could not be checked.",
        explanation=f"{reason}. It is shown so that clinical access is not lost; the PACS administrator has been alerted.",
        ledger="not consulted",
        checked_at=time.time() if now is None else now,
    )


def missing(sop_instance_uid: str, *, now: float | None = None) -> ReadVerdict:
    """Orthanc lists the instance but the file is gone from its storage."""
    return ReadVerdict(
        status="missing",
        sop_instance_uid=sop_instance_uid,
        digest_now=None,
        recorded=None,
        headline="Refused: the stored file of this image is missing.",
        explanation=(
            "Orthanc lists this image but its file is gone from the PACS storage. The PACS "
            "administrator can restore the recorded original."
        ),
        ledger="not consulted",
        checked_at=time.time() if now is None else now,
    )


__all__ = [
    "PENDING_ALERT_S",
    "SERVED",
    "SEVERITY",
    "UNKNOWN_LEDGER",
    "LedgerFacts",
    "ReadVerdict",
    "RetirementFacts",
    "Status",
    "Version",
    "judge",
    "missing",
    "read_facts",
    "unverifiable",
    "worst",
]
