"""Helpers for the plugin tests: studies recorded as the gateway records them, real tampering."""

from __future__ import annotations

import itertools
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import requests
from pydicom import dcmread

import dicom_fixtures
from gateway.core.fingerprint import dataset_offset, fingerprint, pixel_range, read_header
from gateway.index.db import Index

_numbers = itertools.count(1)


@dataclass(frozen=True)
class Study:
    """A CT study written to disk; ``ids`` are Orthanc's ids once stored."""

    files: list[Path]
    study_uid: str
    sop_uids: list[str]


def make_study(out_dir: Path, *, count: int, tag: int | None = None) -> Study:
    """A CT series of ``count`` slices with UIDs no other test uses."""
    k = tag if tag is not None else next(_numbers) + 5000
    study_uid = f"{dicom_fixtures.UID_ROOT}77.{k}"
    prefix = f"{dicom_fixtures.UID_ROOT}78.{k}."
    files = dicom_fixtures.ct_series(
        out_dir / f"study{k}", count=count, rows=128, cols=128, study_uid=study_uid, prefix=prefix
    )
    return Study(
        files=files, study_uid=study_uid, sop_uids=[prefix + str(i + 1) for i in range(count)]
    )


def record(
    index_path: Path, files: list[Path], *, block: int = 7, with_syntax: bool = False
) -> dict[str, bytes]:
    """Write index rows for ``files`` as the gateway does once anchored; SOP UID -> digest.

    ``with_syntax``: also record each file's transfer syntax, as the gateway's fingerprint
    stage does (a copy declaring another one is then refused).
    """
    index = Index(index_path)
    digests = {}
    try:
        for path in files:
            with path.open("rb") as stream:
                fp = fingerprint(stream)
                header = read_header(stream)
            row = index.add_received(
                entry_id=f"test-{header.sop_instance_uid}-{fp.digest.hex()[:8]}",
                sop_instance_uid=header.sop_instance_uid,
                sop_class_uid=header.sop_class_uid,
                calling_aet="TEST",
                size=path.stat().st_size,
            )
            index.update(
                row,
                stage="committed",
                digest=fp.digest,
                pixel_digest=fp.pixel_digest,
                record_key=fp.digest[:16] + b"k" * 16,
                version=1,
                tx_hash="0x" + fp.digest.hex(),
                block_number=block,
                block_time=1_700_000_000,
                recorder="0x" + "11" * 20,
                study_instance_uid=header.study_instance_uid,
                series_instance_uid=header.series_instance_uid,
                transfer_syntax=fp.transfer_syntax if with_syntax else None,
            )
            digests[header.sop_instance_uid] = fp.digest
    finally:
        index.close()
    return digests


def store(url: str, auth: tuple[str, str], files: list[Path]) -> list[str]:
    """POST each file to Orthanc's REST API; returns Orthanc's ids in file order."""
    ids = []
    for path in files:
        reply = requests.post(f"{url}/instances", data=path.read_bytes(), auth=auth, timeout=30)
        reply.raise_for_status()
        ids.append(str(reply.json()["ID"]))
    return ids


def stored_file(data_dir: Path, url: str, auth: tuple[str, str], orthanc_id: str) -> Path:
    """Where Orthanc keeps the DICOM file of ``orthanc_id`` (its usual ``ab/cd/uuid`` layout)."""
    info = requests.get(
        f"{url}/instances/{orthanc_id}/attachments/dicom/info", auth=auth, timeout=30
    ).json()
    uuid = info["Uuid"]
    path = data_dir / "orthanc" / "storage" / uuid[:2] / uuid[2:4] / uuid
    assert path.is_file(), path
    return path


def flip_pixel_byte(path: Path) -> None:
    """Flip one byte in the middle of the Pixel Data value of a stored file, in place."""
    with path.open("r+b") as stream:
        offset, syntax = dataset_offset(stream)
        found = pixel_range(stream, offset, syntax)
        assert found is not None
        start, end = found
        middle = (start + end) // 2
        stream.seek(middle)
        byte = stream.read(1)
        stream.seek(middle)
        stream.write(bytes([byte[0] ^ 0xFF]))


def edit_patient_name(path: Path, name: str) -> None:
    """Edit PatientName with pydicom and replace the stored file with the result."""
    ds = dcmread(path)
    ds.PatientName = name
    edited = path.with_name(path.name + ".edited")
    ds.save_as(edited)
    edited.replace(path)


def alerts(data_dir: Path, *, sop_instance_uid: str | None = None) -> list[sqlite3.Row]:
    """The alerts log, newest first."""
    db = sqlite3.connect(f"file:{data_dir / 'alerts.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        if sop_instance_uid is None:
            return db.execute("SELECT * FROM alerts ORDER BY id DESC").fetchall()
        return db.execute(
            "SELECT * FROM alerts WHERE sop_instance_uid = ? ORDER BY id DESC",
            (sop_instance_uid,),
        ).fetchall()
    finally:
        db.close()


def integrity(url: str, auth: tuple[str, str], level: str, orthanc_id: str) -> dict[str, object]:
    reply = requests.get(f"{url}/xray/{level}/{orthanc_id}/integrity", auth=auth, timeout=60)
    reply.raise_for_status()
    answer: dict[str, object] = json.loads(reply.text)
    return answer
