"""What the gateway's checks read from the ledger: one small interface, met by the
contract's client (:class:`gateway.ledger.client.XrayLedger`) and by the in-memory stand-in
of unit tests (:class:`gateway.ledger.memory.MemoryLedger`)."""

from __future__ import annotations

from typing import Any, Protocol

from gateway.ledger.types import Batch, LedgerEvent


class LedgerReader(Protocol):
    """The xray contract, read-only, as verdicts, audits and the role history read it.

    Every method raises :class:`~gateway.errors.ChainUnavailable` when the chain node
    does not answer.
    """

    def events(
        self,
        name: str,
        *,
        from_block: int = 0,
        to_block: int | None = None,
        filters: dict[str, Any] | None = None,
    ) -> list[LedgerEvent]:
        """The contract's ``name`` events, oldest first, optionally filtered on indexed args."""
        ...

    def version_events(self, record_key: bytes) -> list[LedgerEvent]:
        """``ImageRecorded``/``ImageSuperseded`` events under ``record_key``, oldest first."""
        ...

    def retirement_events(self, record_key: bytes) -> list[LedgerEvent]:
        """The ``ImageRetired`` events of ``record_key`` that may stand, oldest first."""
        ...

    def batch_of(self, batch_id: int) -> Batch:
        """The anchored batch ``batch_id``; :class:`~gateway.errors.XrayUnknownBatch` if none."""
        ...

    def batch_kind_of(self, batch_id: int) -> str:
        """What batch ``batch_id`` anchors: ``"image"`` or ``"access"`` (the access trail)."""
        ...

    def name_of(self, account: str) -> str:
        """The name the account was given with its permission (``""`` when none)."""
        ...

    def role_id(self, role: str) -> bytes:
        """The bytes32 id of a role, as the ``RoleGranted``/``RoleRevoked`` events name it."""
        ...

    def head_block(self) -> int:
        """The number of the chain's newest block."""
        ...

    def block_time(self, block_number: int) -> int:
        """The timestamp (epoch seconds) of a block."""
        ...

    def has_transaction(self, tx_hash: str) -> bool:
        """Whether the chain holds a mined transaction ``tx_hash``."""
        ...
