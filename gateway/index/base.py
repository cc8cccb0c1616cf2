"""What the gateway's checks read from the index: one small interface, met by the index
(:class:`gateway.index.db.Index`, on SQLite or PostgreSQL) and by in-memory stand-ins."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from gateway.index.db import Row

if TYPE_CHECKING:
    from gateway.index.db import Index


class IndexRows(Protocol):
    """The index's rows as verify, claims and restore read them (and restore's one update)."""

    def by_uid(self, sop_instance_uid: str) -> list[Row]:
        """Every row of a SOP Instance UID, duplicates included, oldest first."""
        ...

    def by_study(self, study_instance_uid: str) -> list[Row]:
        """Every row of a study, duplicates included, oldest first."""
        ...

    def by_record(self, record_key: bytes, digest: bytes) -> list[Row]:
        """Rows that hold this version (record key and digest), duplicates included."""
        ...

    def update(self, row_id: int, **values: Any) -> None:
        """Set columns of one row."""
        ...


if TYPE_CHECKING:

    def _meets_the_interface(index: Index) -> IndexRows:
        return index  # mypy --strict holds the index to the interface
