"""An in-memory ledger for unit tests: the xray contract's events, batches and blocks, no chain.

:class:`MemoryLedger` answers the reads of :class:`~gateway.ledger.base.LedgerReader` from
events it keeps in a list, the way :class:`~gateway.ledger.client.XrayLedger` answers them
from a node's logs. Its writes are plain methods that append the event the contract would
emit, each in a block of its own. It enforces none of the contract's rules (who may
record, retire or grant): those are the contract's, tested against anvil. Like a chain that
holds a stranger's writes, it records whatever it is told, and leaves it to the reader's
rule (:mod:`gateway.core.ownership`) to decide what counts.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from gateway.errors import XrayUnknownBatch
from gateway.ledger.client import role_id
from gateway.ledger.types import Batch, LedgerEvent, RetireReason

#: The timestamp of block 0; every block is mined 12 seconds after the one before.
GENESIS_TIME = 1_700_000_000
BLOCK_SECONDS = 12


class MemoryLedger:
    """The xray contract's reads, from events kept in memory; writes append events."""

    def __init__(self) -> None:
        self._log: list[LedgerEvent] = []
        self._batches: dict[int, Batch] = {}
        self._access_batches: set[int] = set()
        self._names: dict[str, str] = {}
        self._head = 0

    # -- writes (each mines one block) --------------------------------------------------------

    def grant_role(self, role: str, account: str, *, name: str = "") -> LedgerEvent:
        """``RoleGranted`` (and the name the account's permission gives it)."""
        if name:
            self._names[account.lower()] = name
        return self._emit("RoleGranted", role=role_id(role), account=account, sender=account)

    def revoke_role(self, role: str, account: str) -> LedgerEvent:
        """``RoleRevoked``."""
        return self._emit("RoleRevoked", role=role_id(role), account=account, sender=account)

    def record_image(
        self,
        *,
        recorder: str,
        record_key: bytes,
        patient_key: bytes,
        digest: bytes,
        pixel_digest: bytes,
        body_part: str = "",
        modality: str = "",
    ) -> LedgerEvent:
        """``ImageRecorded``: the first version of an image, by ``recorder``."""
        return self._emit(
            "ImageRecorded", recordKey=record_key, patientKey=patient_key, recorder=recorder,
            digest=digest, pixelDigest=pixel_digest, bodyPart=body_part, modality=modality,
        )  # fmt: skip

    def supersede_image(
        self,
        *,
        recorder: str,
        record_key: bytes,
        patient_key: bytes,
        digest: bytes,
        pixel_digest: bytes,
    ) -> LedgerEvent:
        """``ImageSuperseded``: the next version under ``record_key``."""
        earlier = self.version_events(record_key)
        previous = bytes(earlier[-1].args["digest"]) if earlier else b"\x00" * 32  # type: ignore[call-overload]
        return self._emit(
            "ImageSuperseded", recordKey=record_key, patientKey=patient_key, recorder=recorder,
            version=len(earlier) + 1, previousDigest=previous, digest=digest,
            pixelDigest=pixel_digest,
        )  # fmt: skip

    def record_batch(self, *, recorder: str, root: bytes, count: int) -> Batch:
        """``BatchAnchored``: a Merkle root of ``count`` leaves, the next batch id."""
        batch_id = len(self._batches) + 1
        event = self._emit(
            "BatchAnchored", batchId=batch_id, root=root, recorder=recorder, count=count
        )
        self._batches[batch_id] = Batch(
            batch_id=batch_id, root=root, count=count, recorder=recorder,
            anchored_at=self.block_time(event.block_number), block_number=event.block_number,
        )  # fmt: skip
        return self._batches[batch_id]

    def record_access_batch(self, *, recorder: str, root: bytes, count: int) -> Batch:
        """``AccessBatchAnchored``: a root of ``count`` access-trail entries, the next batch id."""
        batch_id = len(self._batches) + 1
        event = self._emit(
            "AccessBatchAnchored", batchId=batch_id, root=root, recorder=recorder, count=count
        )
        self._batches[batch_id] = Batch(
            batch_id=batch_id, root=root, count=count, recorder=recorder,
            anchored_at=self.block_time(event.block_number), block_number=event.block_number,
        )  # fmt: skip
        self._access_batches.add(batch_id)
        return self._batches[batch_id]

    def retire_image(self, *, by: str, record_key: bytes, reason: str) -> LedgerEvent:
        """``ImageRetired`` with the reason's lowercase name (``"wrong_patient"``)."""
        code = int(RetireReason[reason.upper()])
        return self._emit("ImageRetired", recordKey=record_key, by=by, reason=code)

    def mine(self, blocks: int = 1) -> int:
        """Mine empty blocks; returns the new head."""
        self._head += blocks
        return self._head

    # -- LedgerReader ----------------------------------------------------------------------

    def events(
        self,
        name: str,
        *,
        from_block: int = 0,
        to_block: int | None = None,
        filters: dict[str, Any] | None = None,
    ) -> list[LedgerEvent]:
        last = self._head if to_block is None else to_block
        return [
            event
            for event in self._log
            if event.name == name
            and from_block <= event.block_number <= last
            and all(_same(event.args.get(key), value) for key, value in (filters or {}).items())
        ]

    def version_events(self, record_key: bytes) -> list[LedgerEvent]:
        return [
            event
            for event in self._log
            if event.name in ("ImageRecorded", "ImageSuperseded")
            and event.args["recordKey"] == record_key
        ]

    def retirement_events(self, record_key: bytes) -> list[LedgerEvent]:
        """Every ``ImageRetired`` event of the key (the client reads only those that may
        stand, a saving of chain calls; the ownership rule ignores the others anyway)."""
        return self.events("ImageRetired", filters={"recordKey": record_key})

    def batch_of(self, batch_id: int) -> Batch:
        try:
            return self._batches[batch_id]
        except KeyError:
            raise XrayUnknownBatch((batch_id,)) from None

    def batch_kind_of(self, batch_id: int) -> str:
        self.batch_of(batch_id)
        return "access" if batch_id in self._access_batches else "image"

    def name_of(self, account: str) -> str:
        return self._names.get(account.lower(), "")

    def role_id(self, role: str) -> bytes:
        return role_id(role)

    def head_block(self) -> int:
        return self._head

    def block_time(self, block_number: int) -> int:
        return GENESIS_TIME + BLOCK_SECONDS * block_number

    def has_transaction(self, tx_hash: str) -> bool:
        return any(event.tx_hash == tx_hash for event in self._log)

    # -- inside -------------------------------------------------------------------------------

    def _emit(self, name: str, **args: object) -> LedgerEvent:
        self._head += 1
        tx_hash = "0x" + hashlib.sha256(f"{self._head}:{name}".encode()).hexdigest()
        event = LedgerEvent(
            name=name, args=args, tx_hash=tx_hash, block_number=self._head, log_index=0
        )
        self._log.append(event)
        return event


def _same(value: object, wanted: object) -> bool:
    """An indexed argument matches a filter value (addresses in any letter case)."""
    if isinstance(value, str) and isinstance(wanted, str):
        return value.lower() == wanted.lower()
    return value == wanted


if TYPE_CHECKING:
    from gateway.ledger.base import LedgerReader
    from gateway.ledger.client import XrayLedger

    def _both_meet_the_interface(real: XrayLedger, memory: MemoryLedger) -> list[LedgerReader]:
        return [real, memory]  # mypy --strict holds the contract's client and the stand-in to it


__all__ = ["MemoryLedger"]
