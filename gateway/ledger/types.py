"""Domain values of the ledger: keys, digests, records (pure)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NewType

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


@dataclass(frozen=True)
class Retirement:
    """Who retired a record, when (block time) and why."""

    by: str
    at: int
    reason: str


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
