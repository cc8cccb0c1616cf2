"""A study as a DICOM zip, every file checked against the ledger on its way out.

Each instance of the study is read from the PACS *as stored* into a temporary file, its
digest taken from exactly those bytes and judged by :meth:`Verifier.file` (the ledger's
record, by its owner); only an ``intact`` file goes into the zip, from the same temporary
file, so that what was checked is what is sent. Every other one is left out and named in
``MANIFEST.json`` inside the zip with its verdict. The zip is written as a stream (data
descriptors, no seeking): memory holds one chunk, the disk one instance at a time.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import DatasetUnreadable, GatewayError, InstanceMissing, UnknownInstance
from gateway.index.queries import is_version
from gateway.trust.verify import Verifier

MANIFEST = "MANIFEST.json"
CHUNK = 1 << 20


@dataclass(frozen=True)
class ZipEntry:
    """One instance of the zip: in it (``intact``) or left out, and why."""

    sop_instance_uid: str
    status: str
    included: bool
    explanation: str


class _Pipe(io.RawIOBase):
    """A write-only, unseekable sink whose bytes the generator hands on as they come."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        return len(data)

    def drain(self) -> Iterator[bytes]:
        parts, self._parts = self._parts, []
        yield from parts


def study_uids(verifier: Verifier, study_instance_uid: str) -> list[str]:
    """The SOP Instance UIDs of a study, as the PACS and the index know them, sorted (so
    that a study's zip lists its files in one order)."""
    uids: dict[str, None] = {}
    if verifier.pacs is not None:
        uids.update(dict.fromkeys(verifier.pacs.study_instance_uids(study_instance_uid)))
    if verifier.index is not None:
        for row in verifier.index.by_study(study_instance_uid):
            if is_version(row.stage):
                uids[row.sop_instance_uid] = None
    if not uids:
        raise UnknownInstance("no such study in the PACS or the gateway's index")
    return sorted(uids)


def study_zip(
    verifier: Verifier,
    uids: list[str],
    *,
    scratch: Path | None = None,
    on_file: Callable[[ZipEntry], None] = lambda outcome: None,
) -> Iterator[bytes]:
    """The zip of the instances ``uids``: the intact ones as ``<SOP Instance UID>.dcm``
    and ``MANIFEST.json`` (every instance, included or left out, with its verdict).

    ``on_file`` is told each outcome as it is decided (the access trail writes it).
    """
    pipe = _Pipe()
    outcomes: list[ZipEntry] = []
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_STORED) as archive:
        for uid in uids:
            with tempfile.NamedTemporaryFile(prefix="xray-zip-", dir=scratch) as copy:
                outcome = _check(verifier, uid, copy)
                outcomes.append(outcome)
                on_file(outcome)
                if outcome.included:
                    copy.seek(0)
                    with archive.open(f"{uid}.dcm", "w", force_zip64=True) as member:
                        while chunk := copy.read(CHUNK):
                            member.write(chunk)
                            yield from pipe.drain()
            yield from pipe.drain()
        archive.writestr(MANIFEST, manifest(outcomes))
    yield from pipe.drain()


def _check(verifier: Verifier, uid: str, copy: tempfile._TemporaryFileWrapper[bytes]) -> ZipEntry:
    """Read the PACS's stored copy into ``copy`` and judge exactly those bytes."""
    pacs = verifier.pacs
    try:
        orthanc_id = pacs.find(uid) if pacs is not None else None
        if pacs is None or orthanc_id is None:
            return ZipEntry(uid, "missing", False, "not in the PACS")
        pacs.fetch_stored(orthanc_id, copy)
        copy.flush()
        verdict = verifier.file(Path(copy.name))
    except InstanceMissing:
        return ZipEntry(uid, "missing", False, "not in the PACS")
    except DatasetUnreadable:
        return ZipEntry(uid, "tampered", False, "the PACS copy is not readable DICOM")
    except GatewayError as exc:
        return ZipEntry(uid, "unchecked", False, f"could not be checked: {type(exc).__name__}")
    if verdict.sop_instance_uid != uid:
        return ZipEntry(uid, "tampered", False, "the PACS copy names another instance")
    return ZipEntry(uid, verdict.status, verdict.status == "intact", verdict.explanation)


def manifest(outcomes: list[ZipEntry]) -> str:
    """``MANIFEST.json``: the instances in the zip, and those left out with their verdict."""
    return json.dumps(
        {
            "format": "xray-study-zip/1",
            "included": [o.sop_instance_uid for o in outcomes if o.included],
            "left_out": [
                {"sop_instance_uid": o.sop_instance_uid, "status": o.status,
                 "explanation": o.explanation}
                for o in outcomes if not o.included
            ],
        },
        indent=2,
    )  # fmt: skip
