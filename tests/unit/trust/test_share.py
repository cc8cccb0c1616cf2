"""The study zip: written as a stream, intact files only, the rest named in its manifest."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from gateway.errors import InstanceMissing
from gateway.trust.share import DICOMDIR, MANIFEST, discard, study_zip
from gateway.trust.verify import Verifier


def _dicom(uid: str, *, series: str, number: int, tampered: bool = False) -> bytes:
    """A small CT instance as Part 10 bytes (the 'tampered' one differs in a value)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
    ds.PatientID, ds.PatientName = "P-1", "TAMPERED" if tampered else "Doe^Jane"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.9", series, "CT"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.SeriesNumber = "20260101", "120000", "", 1
    if number:  # the third file has no InstanceNumber, and an empty StudyID as the rest
        ds.InstanceNumber = number
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


FILES = {
    "1.1": _dicom("1.1", series="1.9.1", number=1),
    "1.2": _dicom("1.2", series="1.9.1", number=2, tampered=True),
    "1.3": _dicom("1.3", series="1.9.2", number=0),
}


@dataclass
class _Judged:
    sop_instance_uid: str
    status: str
    explanation: str


class _Pacs:
    """Orthanc as the zip reads it: 1.4 was deleted between listing and reading."""

    def find(self, uid: str) -> str | None:
        return f"id-{uid}" if uid in FILES or uid == "1.4" else None

    def fetch_stored(self, orthanc_id: str, sink: IO[bytes]) -> int:
        uid = orthanc_id.removeprefix("id-")
        if uid not in FILES:
            raise InstanceMissing(f"no {orthanc_id}")
        sink.write(FILES[uid])
        return len(FILES[uid])


class _Verifier:
    """Judges the bytes it is given, as ``Verifier.file`` does: by what they are."""

    pacs = _Pacs()

    def file(self, path: Path) -> _Judged:
        data = path.read_bytes()
        uid = next(uid for uid, content in FILES.items() if content == data)
        status = "tampered" if b"TAMPERED" in data else "intact"
        return _Judged(uid, status, "the PACS copy differs" if status == "tampered" else "ok")


def test_only_intact_files_go_in_and_the_manifest_names_every_other_one(tmp_path: Path) -> None:
    told: list[tuple[str, bool]] = []
    chunks = list(
        study_zip(
            cast(Verifier, _Verifier()), ["1.1", "1.2", "1.3", "1.4", "1.5"],
            on_file=lambda entry: told.append((entry.sop_instance_uid, entry.included)),
        )
    )  # fmt: skip
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert archive.testzip() is None
    manifest = json.loads(archive.read(MANIFEST))
    assert manifest["included"] == ["1.1", "1.3"]
    paths = manifest["files"]
    assert sorted(archive.namelist()) == sorted([DICOMDIR, MANIFEST, *paths.values()])
    assert paths == {
        "1.1": "PT000000/ST000000/SE000000/IM000000",  # PS3.10 File IDs
        "1.3": "PT000000/ST000000/SE000001/IM000000",
    }
    assert archive.read(paths["1.1"]) == FILES["1.1"]  # the checked bytes, unchanged
    # the DICOMDIR lists exactly the included files, each at the path it was zipped under
    archive.extractall(tmp_path)
    fileset = FileSet(dcmread(tmp_path / DICOMDIR))
    listed = {i.SOPInstanceUID: Path(i.path).relative_to(tmp_path).as_posix() for i in fileset}
    discard(fileset)
    assert listed == paths
    assert (tmp_path / paths["1.3"]).read_bytes() == FILES["1.3"]  # invented only in the record
    assert [(e["sop_instance_uid"], e["status"]) for e in manifest["left_out"]] == [
        ("1.2", "tampered"), ("1.4", "missing"), ("1.5", "missing"),
    ]  # fmt: skip
    assert told == [("1.1", True), ("1.2", False), ("1.3", True), ("1.4", False), ("1.5", False)]
    assert len(chunks) > 3  # streamed as it is written, not built whole first


def test_a_study_with_nothing_intact_has_no_dicomdir() -> None:
    archive = zipfile.ZipFile(
        io.BytesIO(b"".join(study_zip(cast(Verifier, _Verifier()), ["1.2", "1.4"])))
    )
    assert archive.namelist() == [MANIFEST]
    manifest = json.loads(archive.read(MANIFEST))
    assert (manifest["dicomdir"], manifest["files"]) == (None, {})


def test_an_intact_file_no_record_can_be_made_for_goes_in_outside_the_file_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(FILES, "1.5", b"intact bytes, but not DICOM")
    archive = zipfile.ZipFile(
        io.BytesIO(b"".join(study_zip(cast(Verifier, _Verifier()), ["1.1", "1.5"])))
    )
    manifest = json.loads(archive.read(MANIFEST))
    assert manifest["files"]["1.5"] == "UNFILED/1.5.dcm"
    assert archive.read("UNFILED/1.5.dcm") == FILES["1.5"]
    assert DICOMDIR in archive.namelist() and manifest["dicomdir"] == DICOMDIR
