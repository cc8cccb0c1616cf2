"""A study as a DICOM zip, every file checked against the ledger on its way out.

Each instance of the study is read from the PACS *as stored* into a temporary file, its
digest taken from exactly those bytes and judged by :meth:`Verifier.file` (the ledger's
record, by its owner); only an ``intact`` file goes into the zip, from the same temporary
file, so that what was checked is what is sent. Every other one is left out and named in
``MANIFEST.json`` inside the zip with its verdict. The zip is written as a stream (data
descriptors, no seeking): memory holds one chunk, the disk one instance at a time.

The zip is a DICOM File-set a CD-viewer style workstation opens: a ``DICOMDIR`` at its
root, built with pydicom's :class:`~pydicom.fileset.FileSet` from the headers of the
included files only, and each included file under its PS3.10 File ID
(``PT000000/ST000000/SE000000/IM000000``: upper-case components of at most 8 characters).
pydicom gives an instance its File ID when it is added (its place in the patient, study,
series tree, in order of addition, never renumbered), so each file is streamed under its
File ID at once; the DICOMDIR is written last, and checked to name exactly those paths.
A header that lacks what a directory record needs (PS3.3 F.5) gets the value
``dcmmkdir --invent`` would give, in the record only (:data:`INVENTED`); the file itself
is never changed.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet

from gateway.errors import (
    DatasetUnreadable,
    DicomdirMismatch,
    GatewayError,
    InstanceMissing,
    UnknownInstance,
)
from gateway.index.queries import is_version
from gateway.trust.verify import Verifier

MANIFEST = "MANIFEST.json"
DICOMDIR = "DICOMDIR"
UNFILED = "UNFILED"  # intact files no DICOMDIR record can be made for
CHUNK = 1 << 20
#: What a directory record needs and a header may lack (type 2 in the image, type 1 in
#: the DICOMDIR), as ``dcmmkdir --invent`` fills it; ``InstanceNumber`` is the file's order.
INVENTED = {
    "PatientID": "UNKNOWN", "StudyDate": "19000101", "StudyTime": "000000", "StudyID": "1",
    "SeriesNumber": 1,
}  # fmt: skip


@dataclass(frozen=True)
class ZipEntry:
    """One instance of the zip: in it (``intact``) or left out, and why."""

    sop_instance_uid: str
    status: str
    included: bool
    explanation: str
    #: Its path in the zip (its File ID in the DICOMDIR); empty when left out.
    path: str = ""


class _Directory:
    """The zip's DICOMDIR: a pydicom File-set of the included files' headers."""

    def __init__(self) -> None:
        self.fileset = FileSet()
        self.fileset.ID = "XRAY_STUDY"
        self.paths: dict[str, str] = {}

    def place(self, copy: Path) -> str:
        """Add the instance in ``copy`` and return its File ID as a zip path."""
        header = dcmread(copy, stop_before_pixels=True)
        _invent(header, number=len(self.paths) + 1)
        instance = self.fileset.add(header)
        path = instance.FileID.replace(os.sep, "/")
        self.paths[str(header.SOPInstanceUID)] = path
        return path

    def written(self, scratch: Path | None) -> bytes | None:
        """The DICOMDIR's bytes (None: no file was included); each record must name the
        path its file was streamed under."""
        if not self.paths:
            return None
        with tempfile.TemporaryDirectory(prefix="xray-dicomdir-", dir=scratch) as root:
            self.fileset.write(root)
            named = {i.SOPInstanceUID: i.FileID.replace(os.sep, "/") for i in self.fileset}
            if named != self.paths:
                raise DicomdirMismatch("the DICOMDIR names other paths than the zip's files")
            return (Path(root) / DICOMDIR).read_bytes()


def discard(fileset: FileSet) -> None:
    """Remove the staging directory every pydicom ``FileSet`` makes (headers of added
    instances); pydicom leaves it to the garbage collector, with a ResourceWarning."""
    fileset._stage["t"].cleanup()


def _invent(header: Dataset, *, number: int) -> None:
    """Fill what a directory record needs and the header lacks (module docstring)."""
    for keyword, value in {**INVENTED, "InstanceNumber": number}.items():
        if keyword not in header or header[keyword].VM == 0:
            setattr(header, keyword, value)


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
    """The zip of the instances ``uids``: the intact ones under their File IDs, the
    ``DICOMDIR`` that lists them, and ``MANIFEST.json`` (every instance, included with its
    path or left out with its verdict).

    ``on_file`` is told each outcome as it is decided (the access trail writes it).
    """
    pipe = _Pipe()
    directory = _Directory()
    try:
        yield from _stream(verifier, uids, pipe, directory, scratch=scratch, on_file=on_file)
    finally:
        discard(directory.fileset)


def _stream(
    verifier: Verifier, uids: list[str], pipe: _Pipe, directory: _Directory, *,
    scratch: Path | None, on_file: Callable[[ZipEntry], None],
) -> Iterator[bytes]:  # fmt: skip
    outcomes: list[ZipEntry] = []
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_STORED) as archive:
        for uid in uids:
            with tempfile.NamedTemporaryFile(prefix="xray-zip-", dir=scratch) as copy:
                outcome = _placed(_check(verifier, uid, copy), directory, Path(copy.name))
                outcomes.append(outcome)
                on_file(outcome)
                if outcome.included:
                    copy.seek(0)
                    with archive.open(outcome.path, "w", force_zip64=True) as member:
                        while chunk := copy.read(CHUNK):
                            member.write(chunk)
                            yield from pipe.drain()
            yield from pipe.drain()
        dicomdir = directory.written(scratch)
        if dicomdir is not None:
            archive.writestr(DICOMDIR, dicomdir)
        archive.writestr(MANIFEST, manifest(outcomes, dicomdir=dicomdir is not None))
    yield from pipe.drain()


def _placed(outcome: ZipEntry, directory: _Directory, copy: Path) -> ZipEntry:
    """An intact file with its File ID. One pydicom cannot file under a directory record
    still goes in, outside the File-set (``UNFILED/``), and the manifest says so."""
    if not outcome.included:
        return outcome
    uid = outcome.sop_instance_uid
    try:
        path = directory.place(copy)
    except (InvalidDicomError, ValueError, KeyError, AttributeError) as unfiled:
        return ZipEntry(
            uid, outcome.status, True,
            f"{outcome.explanation}; not in the DICOMDIR (no record can be made: {unfiled})",
            f"{UNFILED}/{uid}.dcm",
        )  # fmt: skip
    return ZipEntry(uid, outcome.status, True, outcome.explanation, path)


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


def manifest(outcomes: list[ZipEntry], *, dicomdir: bool = False) -> str:
    """``MANIFEST.json``: the instances in the zip, and those left out with their verdict."""
    return json.dumps(
        {
            "format": "xray-study-zip/2",
            "included": [o.sop_instance_uid for o in outcomes if o.included],
            "files": {o.sop_instance_uid: o.path for o in outcomes if o.included},
            "dicomdir": DICOMDIR if dicomdir else None,
            "left_out": [
                {"sop_instance_uid": o.sop_instance_uid, "status": o.status,
                 "explanation": o.explanation}
                for o in outcomes if not o.included
            ],
        },
        indent=2,
    )  # fmt: skip
