"""The plugin's view of the gateway's index: read-only, with or without the gateway running."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.index.db import Index
from gateway.orthanc_plugin.evidence import RecordBook

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_the_plugin_cannot_write_the_index(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    index.add_received(
        entry_id="e1", sop_instance_uid="1.2.3", sop_class_uid=CT, calling_aet="CT1", size=1
    )
    book = RecordBook(tmp_path / "index.sqlite")
    assert book.versions("1.2.3") == ()  # not fingerprinted yet: no version

    db = book._connection()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute("UPDATE instances SET digest = x'00' WHERE sop_instance_uid = '1.2.3'")
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute(
            "INSERT INTO instances (entry_id, sop_instance_uid, sop_class_uid, received_at,"
            " size, stage) VALUES ('forged', '1.2.4', '1.2', 0, 1, 'committed')"
        )
    index.close()


def test_the_index_is_read_with_the_gateway_stopped(tmp_path: Path) -> None:
    """Gateway stopped: no -wal, which a read-only mount could not create; still read."""
    index = Index(tmp_path / "index.sqlite")
    row = index.add_received(
        entry_id="e1", sop_instance_uid="1.2.3", sop_class_uid=CT, calling_aet="CT1", size=1
    )
    index.update(row, stage="committed", digest=b"\x01" * 32, version=1)
    index.close()
    assert not (tmp_path / "index.sqlite-wal").exists()

    (version,) = RecordBook(tmp_path / "index.sqlite").versions("1.2.3")

    assert version.digest == b"\x01" * 32
