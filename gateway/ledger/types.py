"""Domain values of the ledger: keys, digests, records (pure)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NewType

from gateway.core.merkle import InclusionProof

RecordKey = NewType("RecordKey", bytes)
"""HMAC-SHA256(pseudonym key, "sop:" + SOPInstanceUID): names an image without PHI."""
PatientKey = NewType("PatientKey", bytes)
"""HMAC-SHA256(pseudonym key, "patient:" + issuer + "|" + PatientID)."""
Digest = NewType("Digest", bytes)
"""A 32-byte SHA-256 value."""


class UserType(enum.IntEnum):
    """The contract's ``UserType``; ``DOCTOR`` is 1 as in the seed paper."""

    NONE = 0
    DOCTOR = 1
    HOSPITAL = 2
    RECORDER = 3
    AUDITOR = 4


class RetireReason(enum.IntEnum):
    """The contract's ``RetireReason``: why an image was retired (a fixed set, never free text).

    Clients name a reason by its lowercase name (``"wrong_patient"``); ``NONE`` is no reason
    and the contract refuses it.
    """

    NONE = 0
    WITHDRAWN = 1
    WRONG_PATIENT = 2
    DUPLICATE = 3
    CORRUPT = 4
    ERASED = 5

    @property
    def label(self) -> str:
        """The reason's lowercase name, ``""`` for ``NONE``."""
        return "" if self is RetireReason.NONE else self.name.lower()

    @classmethod
    def parse(cls, value: RetireReason | str) -> RetireReason:
        """The reason named ``value`` (``"duplicate"``); raises ValueError for any other name."""
        if isinstance(value, RetireReason):
            return value
        try:
            reason = cls[value.strip().upper()]
        except KeyError:
            reason = cls.NONE
        if reason is cls.NONE:
            names = ", ".join(r.label for r in cls if r is not cls.NONE)
            raise ValueError(f"unknown retirement reason {value!r}: use one of {names}")
        return reason


def retire_reason_name(value: object) -> str:
    """The lowercase name of the contract's ``RetireReason`` value ``value`` (an event's arg)."""
    if isinstance(value, int) and value in RetireReason._value2member_map_:
        return RetireReason(value).label
    return f"unknown reason {value!r}"


@dataclass(frozen=True)
class BatchedLeaf:
    """An image as one leaf of an anchored batch, with the proof that puts it there."""

    patient_key: bytes
    digest: bytes
    pixel_digest: bytes
    batch_id: int
    proof: InclusionProof


@dataclass(frozen=True)
class Anchor:
    """Where a transaction landed."""

    tx_hash: str
    block_number: int
    block_time: int
    gas_used: int


@dataclass(frozen=True)
class ImageVersion:
    """One recorded version of an image."""

    digest: bytes
    pixel_digest: bytes
    patient_key: bytes
    recorder: str
    recorded_at: int
    block_number: int
    body_part: str
    modality: str


@dataclass(frozen=True)
class Image:
    """An image on the ledger: its newest version, history length and retirement."""

    record_key: bytes
    current: ImageVersion
    versions: int
    retired: bool
    retired_by: str | None
    retired_at: int | None
    retire_reason: str
    """The reason's lowercase name (:class:`RetireReason`), ``""`` if not retired."""


@dataclass(frozen=True)
class Retirement:
    """Who retired a record, when (block time) and why (a :class:`RetireReason` name)."""

    by: str
    at: int
    reason: str


#: The contract's ``BatchKind``, by value: what a batch anchors (images, or access-trail entries).
BATCH_KINDS = ("image", "access")


@dataclass(frozen=True)
class Batch:
    """A Merkle root anchored with ``recordBatch``."""

    batch_id: int
    root: bytes
    count: int
    recorder: str
    anchored_at: int
    block_number: int


@dataclass(frozen=True)
class LedgerEvent:
    """One event from the contract's log, with where it was mined."""

    name: str
    args: dict[str, object]
    tx_hash: str
    block_number: int
    log_index: int


ZERO_KEY = bytes(32)


@dataclass(frozen=True)
class Grant:
    """A grant of read access as the contract holds it (``grantOf``): keys only, no names."""

    grant_id: int
    grantee: bytes
    patient_key: bytes
    #: ``None``: every study of the patient.
    study_key: bytes | None
    granter: str
    expires_at: int
    granted_at: int
    #: ``None`` while the grant stands.
    revoked_by: str | None
    revoked_at: int | None
