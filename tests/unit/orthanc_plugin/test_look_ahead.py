"""The storage area's read, made cheaper, still checks every read against the evidence.

The look-ahead (the evidence look-up started on a helper thread before the file is read,
for a PostgreSQL index) and the File Meta memo must not turn into a cached verdict: an
edit that keeps the file's size and modification time is refused on the very next read.
"""

from __future__ import annotations

import io
import os
import threading
import uuid
from pathlib import Path

import pytest

import dicom_fixtures
from gateway.core.fingerprint import fingerprint_bytes, read_header
from gateway.errors import IndexUnavailable, ReadRefused
from gateway.index.db import Index
from gateway.orthanc_plugin.catalog import Catalog
from gateway.orthanc_plugin.evidence import RecordBook
from gateway.orthanc_plugin.guard import DICOM, Guard
from gateway.orthanc_plugin.storage import FileArea
from gateway.orthanc_plugin.verdict import Version
from gateway.trust.alerts import Alerts


class WatchedRecords:
    """The SQLite record book, noting which thread each look-up ran on; can be broken."""

    def __init__(self, book: RecordBook) -> None:
        self.book = book
        self.threads: list[str] = []
        self.broken = False

    def versions(self, sop_instance_uid: str) -> tuple[Version, ...]:
        self.threads.append(threading.current_thread().name)
        if self.broken:
            raise IndexUnavailable("the gateway's index cannot be read: test")
        return self.book.versions(sop_instance_uid)


def recorded_file(tmp: Path) -> tuple[bytes, Path]:
    """One CT slice, recorded in a gateway index as anchored."""
    (path,) = dicom_fixtures.ct_series(tmp / "in", count=1, rows=16, cols=16)
    data = path.read_bytes()
    fp, header = fingerprint_bytes(data), read_header(io.BytesIO(data))
    index = Index(tmp / "index.sqlite")
    row = index.add_received(
        entry_id="e1", sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid, calling_aet="T", size=len(data),
    )  # fmt: skip
    index.update(
        row, stage="committed", digest=fp.digest, pixel_digest=fp.pixel_digest, version=1,
        tx_hash="0x" + fp.digest.hex(), block_number=3, transfer_syntax=fp.transfer_syntax,
    )  # fmt: skip
    index.close()
    return data, tmp / "index.sqlite"


def guard(
    tmp: Path, records: WatchedRecords, *, look_ahead: bool, fail_closed: bool = False
) -> Guard:
    return Guard(
        area=FileArea(tmp / "storage", sync=False),
        catalog=Catalog(tmp / "catalog.sqlite"),
        records=records,
        alerts=Alerts(tmp / "alerts.sqlite"),
        look_ahead=look_ahead,
        fail_closed=fail_closed,
    )


def test_the_look_ahead_reads_the_evidence_on_a_helper_thread_on_every_read(
    tmp_path: Path,
) -> None:
    data, index = recorded_file(tmp_path)
    records = WatchedRecords(RecordBook(index))
    checker = guard(tmp_path, records, look_ahead=True)
    name = str(uuid.uuid4())
    checker.create(name, DICOM, data)
    records.threads.clear()
    for _ in range(3):
        assert checker.read(name, DICOM) == data
    assert len(records.threads) == 3  # one look-up per read: no verdict is kept
    assert all(thread.startswith("xray-evidence") for thread in records.threads)
    checker.close()


@pytest.mark.parametrize("look_ahead", [False, True], ids=["sqlite-inline", "look-ahead"])
def test_an_edit_that_keeps_size_and_mtime_is_refused_on_the_next_read(
    tmp_path: Path, look_ahead: bool
) -> None:
    data, index = recorded_file(tmp_path)
    checker = guard(tmp_path, WatchedRecords(RecordBook(index)), look_ahead=look_ahead)
    name = str(uuid.uuid4())
    checker.create(name, DICOM, data)
    assert checker.read(name, DICOM) == data  # served, and its File Meta remembered
    path = checker.area.path(name)
    before = path.stat()
    edited = bytearray(data)
    edited[-3] ^= 0x01  # one pixel bit
    path.write_bytes(bytes(edited))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with pytest.raises(ReadRefused) as refused:
        checker.read(name, DICOM)
    assert refused.value.verdict.status == "tampered"
    checker.close()


def test_an_index_the_look_ahead_cannot_read_gives_the_same_verdicts_as_without(
    tmp_path: Path,
) -> None:
    data, index = recorded_file(tmp_path)
    records = WatchedRecords(RecordBook(index))
    served_with_warning = guard(tmp_path / "open", records, look_ahead=True)
    refusing = guard(tmp_path / "closed", records, look_ahead=True, fail_closed=True)
    names = {}
    for checker in (served_with_warning, refusing):
        names[id(checker)] = str(uuid.uuid4())
        checker.create(names[id(checker)], DICOM, data)
    records.broken = True
    assert served_with_warning.read(names[id(served_with_warning)], DICOM) == data
    with pytest.raises(ReadRefused) as refused:
        refusing.read(names[id(refusing)], DICOM)
    assert refused.value.verdict.status == "unverifiable"
    for checker in (served_with_warning, refusing):
        checker.close()
