"""The spool binds each file to what was acked: hashed as written (checked: test_stages.py)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from gateway.index.db import SCHEMA, Index
from gateway.ingest.spool import Spool

CT = "1.2.840.10008.5.1.4.1.1.2"


def receive(spool: Spool, data: bytes, *, chunk: int = 1000) -> Path:
    """Write ``data`` as pynetdicom does: an incoming file, chunk after chunk, flushed."""
    incoming = spool.incoming_file()
    for at in range(0, len(data), chunk):
        incoming.write(data[at : at + chunk])
        incoming.file.flush()
    incoming.close()
    return Path(incoming.name)


def test_an_incoming_file_is_hashed_as_it_is_written(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    data = bytes(range(256)) * 40

    entry = spool.accept(receive(spool, data))

    assert entry.sha256 == hashlib.sha256(data).digest()
    assert entry.path.read_bytes() == data and entry.size == len(data)


def test_a_file_that_did_not_arrive_through_the_spool_is_hashed_when_accepted(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    elsewhere = spool.incoming / "copied.dcm"
    elsewhere.write_bytes(b"DICM" * 100)

    assert spool.accept(elsewhere).sha256 == hashlib.sha256(b"DICM" * 100).digest()


def test_a_discarded_reception_is_forgotten(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    incoming = spool.incoming_file()
    incoming.write(b"partial")
    incoming.discard()

    assert spool._forget(incoming.name) is None


def test_an_index_from_before_spool_binding_is_upgraded(tmp_path: Path) -> None:
    old = SCHEMA.replace(",\n    spool_sha256 BLOB", "")
    assert "spool_sha256" not in old
    path = tmp_path / "index.sqlite"
    db = sqlite3.connect(path)
    db.executescript(old)
    db.execute(
        "INSERT INTO instances (entry_id, sop_instance_uid, sop_class_uid, received_at, size,"
        " stage) VALUES ('e1', '1.2.3', ?, 0, 1, 'fingerprint')",
        (CT,),
    )
    db.commit()
    db.close()

    readonly = Index(path, readonly=True)  # `status` on an index not yet upgraded
    assert readonly.all()[0].spool_sha256 is None
    readonly.close()
    index = Index(path)
    assert index.all()[0].spool_sha256 is None  # acked before binding: not checked
    new = index.add_received(
        entry_id="e2", sop_instance_uid="1.2.4", sop_class_uid=CT, calling_aet="CT1", size=1,
        spool_sha256=b"\x01" * 32,
    )  # fmt: skip
    assert index.get(new).spool_sha256 == b"\x01" * 32
