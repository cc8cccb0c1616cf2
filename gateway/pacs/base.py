"""What the gateway's checks ask of the PACS: one small interface, met by Orthanc's client
(:class:`gateway.pacs.client.Pacs`) and by the in-memory stand-in of unit tests
(:class:`gateway.pacs.memory.MemoryPacs`)."""

from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.pacs.client import ForwardResult


class PacsArchive(Protocol):
    """The PACS as verify, audit and restore see it: find a copy, read it as stored,
    list a study or everything, and (restore) put a sealed original back in its place.

    Every method raises :class:`~gateway.errors.PacsUnavailable` when the PACS cannot
    be reached.
    """

    def find(self, sop_instance_uid: str) -> str | None:
        """The PACS's id of the instance with this SOP Instance UID, or ``None``."""
        ...

    def fetch_stored(self, orthanc_id: str, sink: IO[bytes]) -> int:
        """Copy the instance's file *as stored* into ``sink``; returns the number of bytes.

        Raises :class:`~gateway.errors.InstanceMissing` when there is no such instance.
        """
        ...

    def study_instance_uids(self, study_instance_uid: str) -> list[str]:
        """SOP Instance UIDs of every instance the PACS holds in a study."""
        ...

    def find_instances(self, query: dict[str, str], *, page: int = 1000) -> list[tuple[str, str]]:
        """``(id, SOP Instance UID)`` of every instance matching ``query`` (``{}``: all)."""
        ...

    def delete(self, orthanc_id: str) -> None:
        """Delete an instance; :class:`~gateway.errors.InstanceMissing` if there is none."""
        ...

    def store(self, path: Path, *, digest: bytes) -> ForwardResult:
        """Store a Part-10 file whose dataset digest is ``digest``."""
        ...
