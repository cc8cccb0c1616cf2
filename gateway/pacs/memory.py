"""An in-memory PACS for unit tests: instances by id, their files as stored, no Orthanc.

:class:`MemoryPacs` meets :class:`~gateway.pacs.base.PacsArchive` the way Orthanc does
through :class:`~gateway.pacs.client.Pacs`: a stored SOP Instance UID keeps its first
copy (a second store answers ``AlreadyStored``, a conflict when the digests differ), a
missing id raises :class:`~gateway.errors.InstanceMissing`, and while ``reachable`` is
false every call raises :class:`~gateway.errors.PacsUnavailable`. :meth:`overwrite`
changes a stored file behind the gateway's back, as an intruder with access to Orthanc's
storage area would.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from gateway.core.fingerprint import fingerprint_and_header, fingerprint_bytes
from gateway.errors import DatasetUnreadable, InstanceMissing, PacsUnavailable
from gateway.pacs.client import ForwardResult

#: The DICOM keywords :meth:`MemoryPacs.find_instances` can match on.
QUERY_KEYWORDS = frozenset({"SOPInstanceUID", "StudyInstanceUID"})


@dataclass
class _Instance:
    sop_instance_uid: str
    study_instance_uid: str
    data: bytes


class MemoryPacs:
    """Instances by id, each its file as stored and the two UIDs the checks look up."""

    def __init__(self) -> None:
        self._instances: dict[str, _Instance] = {}
        self.reachable = True

    def store(self, path: Path, *, digest: bytes) -> ForwardResult:
        """Store a Part-10 file; a SOP Instance UID already held keeps its first copy."""
        self._check_reachable()
        data = path.read_bytes()
        with path.open("rb") as stream:
            _, header = fingerprint_and_header(stream)
        orthanc_id = instance_id(header.sop_instance_uid)
        held = self._instances.get(orthanc_id)
        if held is None:
            self._instances[orthanc_id] = _Instance(
                header.sop_instance_uid, header.study_instance_uid, data
            )
            return ForwardResult(orthanc_id, "Success", False, digest, None)
        try:
            theirs: bytes | None = fingerprint_bytes(held.data).digest
        except DatasetUnreadable:
            theirs = None
        return ForwardResult(orthanc_id, "AlreadyStored", theirs != digest, digest, theirs)

    def overwrite(self, orthanc_id: str, data: bytes) -> None:
        """Replace a stored file's bytes, its UIDs unchanged (tampering with the storage)."""
        self._get(orthanc_id).data = data

    def find(self, sop_instance_uid: str) -> str | None:
        self._check_reachable()
        orthanc_id = instance_id(sop_instance_uid)
        return orthanc_id if orthanc_id in self._instances else None

    def fetch_stored(self, orthanc_id: str, sink: IO[bytes]) -> int:
        self._check_reachable()
        data = self._get(orthanc_id).data
        sink.write(data)
        return len(data)

    def study_instance_uids(self, study_instance_uid: str) -> list[str]:
        return [uid for _, uid in self.find_instances({"StudyInstanceUID": study_instance_uid})]

    def find_instances(self, query: dict[str, str], *, page: int = 1000) -> list[tuple[str, str]]:
        """Exact matches on :data:`QUERY_KEYWORDS` (``page`` is Orthanc's paging: ignored)."""
        self._check_reachable()
        unknown = set(query) - QUERY_KEYWORDS
        if unknown:
            raise ValueError(f"MemoryPacs matches only {sorted(QUERY_KEYWORDS)}, not {unknown}")
        return [
            (orthanc_id, held.sop_instance_uid)
            for orthanc_id, held in self._instances.items()
            if query.get("SOPInstanceUID", held.sop_instance_uid) == held.sop_instance_uid
            and query.get("StudyInstanceUID", held.study_instance_uid) == held.study_instance_uid
        ]

    def delete(self, orthanc_id: str) -> None:
        self._check_reachable()
        self._get(orthanc_id)
        del self._instances[orthanc_id]

    def _get(self, orthanc_id: str) -> _Instance:
        try:
            return self._instances[orthanc_id]
        except KeyError:
            raise InstanceMissing(f"no instance {orthanc_id}", status=404) from None

    def _check_reachable(self) -> None:
        if not self.reachable:
            raise PacsUnavailable("the in-memory PACS is set unreachable")


def instance_id(sop_instance_uid: str) -> str:
    """An Orthanc-like id (SHA-1, five dash-separated groups) for a SOP Instance UID."""
    digest = hashlib.sha1(sop_instance_uid.encode()).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


if TYPE_CHECKING:
    from gateway.pacs.base import PacsArchive
    from gateway.pacs.client import Pacs

    def _both_meet_the_interface(real: Pacs, memory: MemoryPacs) -> list[PacsArchive]:
        return [real, memory]  # mypy --strict holds Orthanc's client and the stand-in to it


__all__ = ["MemoryPacs", "instance_id"]
