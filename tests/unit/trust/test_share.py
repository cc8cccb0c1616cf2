"""The study zip: written as a stream, intact files only, the rest named in its manifest."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from gateway.errors import InstanceMissing
from gateway.trust.share import MANIFEST, study_zip
from gateway.trust.verify import Verifier

FILES = {"1.1": b"first file", "1.2": b"tampered file", "1.3": b"third file"}


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
        status = "tampered" if data.startswith(b"tampered") else "intact"
        return _Judged(uid, status, "the PACS copy differs" if status == "tampered" else "ok")


def test_only_intact_files_go_in_and_the_manifest_names_every_other_one() -> None:
    told: list[tuple[str, bool]] = []
    chunks = list(
        study_zip(
            cast(Verifier, _Verifier()), ["1.1", "1.2", "1.3", "1.4", "1.5"],
            on_file=lambda entry: told.append((entry.sop_instance_uid, entry.included)),
        )
    )  # fmt: skip
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert archive.testzip() is None
    assert sorted(archive.namelist()) == ["1.1.dcm", "1.3.dcm", MANIFEST]
    assert archive.read("1.1.dcm") == FILES["1.1"]
    manifest = json.loads(archive.read(MANIFEST))
    assert manifest["included"] == ["1.1", "1.3"]
    assert [(e["sop_instance_uid"], e["status"]) for e in manifest["left_out"]] == [
        ("1.2", "tampered"), ("1.4", "missing"), ("1.5", "missing"),
    ]  # fmt: skip
    assert told == [("1.1", True), ("1.2", False), ("1.3", True), ("1.4", False), ("1.5", False)]
    assert len(chunks) > 3  # streamed as it is written, not built whole first
