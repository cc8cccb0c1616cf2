"""What the plugin decides about one stored instance, and how it says it to a radiologist (pure).

The plugin compares the dataset digest of Orthanc's copy with the versions the gateway
recorded for that SOP Instance UID (its index) and, when a ledger mirror runs, with what
the chain holds. The statuses, and whether the bytes are served, are the table of
:mod:`gateway.trust.verdicts`; here is why the plugin gives each:

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
from dataclasses import dataclass
from typing import Any

from gateway.trust.verdicts import SERVED, SEVERITY, Status, worst

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
class Retirement:
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
    retired: Retirement | None = None
    #: Accounts whose writes under the record key were ignored: not its owner (trust.py).
    foreign: tuple[str, ...] = ()


UNKNOWN_LEDGER = LedgerFacts(on_chain=None, synced_block=None)


@dataclass(frozen=True)
class Verdict:
    """The plugin's decision for one instance, with a radiologist's explanation."""

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
) -> Verdict:
    """Decide about Orthanc's copy of ``sop_instance_uid`` whose dataset digest is ``digest_now``.

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
    checked_at = time.time() if now is None else now
    if not versions and arrival_digest is not None and arrival_digest != digest_now:
        return Verdict(
            status="tampered",
            sop_instance_uid=sop_instance_uid,
            digest_now=digest_now,
            recorded=None,
            headline="Refused: this image was altered after it was stored.",
            explanation=(
                "This image did not pass through the xray gateway, and its stored copy has "
                "changed since it arrived in the PACS. Do not use it for diagnosis; the PACS "
                "administrator has been alerted."
            ),
            ledger="no record",
            checked_at=checked_at,
        )
    if not versions:
        return Verdict(
            status="unregistered",
            sop_instance_uid=sop_instance_uid,
            digest_now=digest_now,
            recorded=None,
            headline="Warning: this image did not pass through the xray gateway.",
            explanation=(
                "It has no record in the gateway or on the ledger, so its integrity cannot be "
                "verified. It is shown so that clinical access is not lost; the PACS "
                "administrator has been alerted."
            ),
            ledger="no record",
            checked_at=checked_at,
        )
    anchored = [v for v in versions if v.anchored]
    newest = anchored[-1] if anchored else versions[-1]
    match = next((v for v in reversed(anchored) if v.digest == digest_now), None)
    if match is None:
        received = next((v for v in reversed(versions) if v.digest == digest_now), None)
        if received is not None and _waited_too_long(received, checked_at, pending_alert_s):
            return _not_anchored(
                sop_instance_uid, digest_now, received, pending_alert_s, checked_at
            )
        if received is not None:
            return Verdict(
                status="pending",
                sop_instance_uid=sop_instance_uid,
                digest_now=digest_now,
                recorded=received,
                headline="Received by the xray gateway; its ledger record is not written yet.",
                explanation=(
                    "This copy is identical to what the gateway received. The ledger record "
                    "is still being written; the check will then be against the ledger."
                ),
                ledger="not anchored yet",
                checked_at=checked_at,
            )
        what = {
            "pixels": "The pixel data was changed.",
            "header": "The header (patient or study information) was changed; the pixels are unchanged.",
        }.get(changed or "", "")
        return Verdict(
            status="tampered",
            sop_instance_uid=sop_instance_uid,
            digest_now=digest_now,
            recorded=newest,
            headline="Refused: this image was altered after it was recorded.",
            explanation=(
                f"The copy stored in the PACS does not match the version the xray gateway "
                f"recorded (version {newest.version}, {_where(newest)}). {what} "
                "Do not use it for diagnosis. The PACS administrator has been alerted and "
                "can restore the recorded original."
            ).replace("  ", " "),
            ledger=_ledger_note(newest, None if ledger is None else ledger.get(newest.digest)),
            changed=changed,
            checked_at=checked_at,
        )
    facts = None if ledger is None else ledger.get(match.digest, UNKNOWN_LEDGER)
    note = _ledger_note(match, facts)
    if match.transfer_syntax and syntax_now and syntax_now != match.transfer_syntax:
        return Verdict(
            status="tampered",
            sop_instance_uid=sop_instance_uid,
            digest_now=digest_now,
            recorded=match,
            headline="Refused: this image's stored encoding was changed.",
            explanation=(
                f"The stored file declares transfer syntax {syntax_now}, the recorded version "
                f"{match.transfer_syntax}: its bytes would be read differently. Do not use it; "
                "the PACS administrator has been alerted."
            ),
            ledger=note,
            checked_at=checked_at,
        )
    if facts is not None and facts.on_chain is False:
        return Verdict(
            status="tampered",
            sop_instance_uid=sop_instance_uid,
            digest_now=digest_now,
            recorded=match,
            headline="Refused: this image's record is not on the ledger.",
            explanation=(
                "The gateway's index lists this exact copy, but the ledger holds no such "
                "record: the copy and the index may both have been changed. Do not use it "
                "for diagnosis. The PACS administrator has been alerted."
            ),
            ledger=note,
            checked_at=checked_at,
        )
    if facts is not None and facts.on_chain is None:
        overdue = match.received_at is None or _waited_too_long(match, checked_at, pending_alert_s)
        return Verdict(
            status="unconfirmed",
            sop_instance_uid=sop_instance_uid,
            digest_now=digest_now,
            recorded=match,
            headline="Warning: this image's ledger record cannot be confirmed yet.",
            explanation=(
                f"Identical to version {match.version} as the xray gateway's records list it "
                f"({_where(match)}), but {_unconfirmed_reason(match, facts)}: its integrity "
                "is not vouched for until the ledger confirms it."
                + (" The PACS administrator has been alerted." if overdue else "")
            ),
            ledger=note,
            checked_at=checked_at,
            alert=overdue,
        )
    if facts is not None and facts.retired is not None:
        when = (
            time.strftime("%Y-%m-%d", time.gmtime(facts.retired.block_time))
            if facts.retired.block_time
            else f"block {facts.retired.block_number}"
        )
        return Verdict(
            status="retired",
            sop_instance_uid=sop_instance_uid,
            digest_now=digest_now,
            recorded=match,
            headline="Warning: this image's record was retired on the ledger.",
            explanation=(
                f"Retired on {when} by {facts.retired.by}: {facts.retired.reason or 'no reason given'}. "
                "The image is unaltered but was withdrawn; check before using it."
            ),
            ledger=note,
            checked_at=checked_at,
        )
    explanation = (
        f"Identical to version {match.version} recorded by the xray gateway ({_where(match)})."
    )
    if match is not anchored[-1]:
        explanation += (
            f" A newer version ({anchored[-1].version}) was recorded since; the PACS still "
            "holds this one."
        )
    return Verdict(
        status="intact",
        sop_instance_uid=sop_instance_uid,
        digest_now=digest_now,
        recorded=match,
        headline="Verified: unaltered since it was recorded.",
        explanation=explanation,
        ledger=note,
        checked_at=checked_at,
    )


def _waited_too_long(version: Version, now: float, limit: float) -> bool:
    return version.received_at is not None and now - version.received_at > limit


def _not_anchored(
    sop_instance_uid: str, digest_now: bytes, received: Version, limit: float, now: float
) -> Verdict:
    """Received exactly so, but still not anchored after ``limit`` seconds."""
    return Verdict(
        status="unconfirmed",
        sop_instance_uid=sop_instance_uid,
        digest_now=digest_now,
        recorded=received,
        headline="Warning: this image's ledger record was never written.",
        explanation=(
            f"This copy is identical to what the gateway received, but it is not anchored "
            f"after {limit:.0f} s: its integrity is not vouched for. The PACS administrator "
            "has been alerted."
        ),
        ledger=f"not anchored after {limit:.0f} s",
        checked_at=now,
    )


def unverifiable(sop_instance_uid: str, reason: str, *, now: float | None = None) -> Verdict:
    """The check could not run; the bytes are served with a warning."""
    return Verdict(
        status="unverifiable",
        sop_instance_uid=sop_instance_uid,
        digest_now=None,
        recorded=None,
        headline="Warning: the integrity of this image could not be checked.",
        explanation=f"{reason}. It is shown so that clinical access is not lost; the PACS administrator has been alerted.",
        ledger="not consulted",
        checked_at=time.time() if now is None else now,
    )


def missing(sop_instance_uid: str, *, now: float | None = None) -> Verdict:
    """Orthanc lists the instance but the file is gone from its storage."""
    return Verdict(
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
    "Retirement",
    "Status",
    "Verdict",
    "Version",
    "judge",
    "missing",
    "unverifiable",
    "worst",
]
