"""The spool binds each file to what was acked: hashed as written (checked: test_stages.py)."""

from __future__ import annotations

import errno
import hashlib
import threading
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.errors import SpoolUnavailable
from gateway.index.db import Index
from gateway.ingest import spool as spool_module
from gateway.ingest.spool import CHECK_EVERY, Spool
from tests.unit.index.test_db import legacy_index, until

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


def test_accepting_moves_the_file_into_ready_under_a_random_id(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reserve_bytes=0)

    first = spool.accept(receive(spool, b"one"))
    second = spool.accept(receive(spool, b"two"))

    assert first.path == spool.path_of(first.entry_id) == spool.ready / f"{first.entry_id}.dcm"
    assert first.entry_id != second.entry_id and first.entry_id.isalnum()
    assert sorted(spool.ready.iterdir()) == sorted([first.path, second.path])
    assert list(spool.incoming.iterdir()) == []
    spool.discard(first.entry_id)  # committed: gone from ready/
    assert list(spool.ready.iterdir()) == [second.path]


def test_a_file_that_cannot_be_made_durable_is_spool_unavailable(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reserve_bytes=0)

    with pytest.raises(SpoolUnavailable, match="cannot make the received instance durable"):
        spool.accept(spool.incoming / "never-written.dcm")


def test_an_entry_id_never_becomes_another_path(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    for hostile in ("../index", "a/b", ""):
        with pytest.raises(ValueError, match="not a spool entry id"):
            spool.path_of(hostile)


def test_room_is_checked_before_the_first_byte(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reserve_bytes=1 << 60)  # never room
    incoming = spool.incoming_file()

    assert incoming.write(b"x" * 100) == 100  # read off the wire, then dropped
    incoming.close()

    assert incoming.overflow is not None and "reserve" in incoming.overflow
    assert not Path(incoming.name).exists() and incoming.written == 0
    assert spool.overflowed(incoming.name) == incoming.overflow
    assert spool.overflowed(incoming.name) is None  # asked once


def test_room_running_out_mid_dataset_drops_the_rest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    incoming = spool.incoming_file()
    incoming.write(b"a" * 1000)
    spool.reserve_bytes = 1 << 60  # the disk fills up while the dataset arrives

    incoming.write(b"b" * (CHECK_EVERY - 1001))  # not yet a MiB since the last check
    assert incoming.overflow is None and incoming.written == CHECK_EVERY - 1
    incoming.write(b"c")  # a MiB since the last check: checked again, no room

    assert incoming.overflow is not None and incoming.written == CHECK_EVERY - 1
    assert not Path(incoming.name).exists()
    incoming.write(b"d" * 10)
    incoming.file.flush()
    incoming.close()
    assert incoming.written == CHECK_EVERY - 1 and list(spool.incoming.iterdir()) == []
    assert spool.overflowed(incoming.name) is not None


class FullDisk:
    """A file whose writes fail as on a full disk."""

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_failed_write_gives_the_dataset_up_instead_of_raising(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    incoming = spool.incoming_file()
    incoming._file.close()
    incoming._file = cast(Any, FullDisk())

    assert incoming.write(b"x" * 10) == 10

    assert incoming.overflow == "write failed: No space left on device"
    assert not Path(incoming.name).exists()
    assert spool.overflowed(incoming.name) == incoming.overflow


def test_a_discarded_reception_drops_later_chunks(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    incoming = spool.incoming_file()
    incoming.write(b"partial")

    incoming.discard()
    incoming.write(b"more")

    assert not Path(incoming.name).exists() and incoming.written == len(b"partial")
    assert spool.overflowed(incoming.name) is None  # ended by its association, not the disk


def test_leftovers_of_a_crash_are_cleared_and_ready_entries_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    kept = spool.accept(receive(spool, b"acked"))
    left = spool.incoming_file()
    left.write(b"never acked")
    left.close()
    (spool.incoming / "other.dcm").write_bytes(b"older leftover")

    assert Spool(tmp_path / "spool", reserve_bytes=0).clear_incoming() == 2  # after a restart

    assert list(spool.incoming.iterdir()) == []
    assert kept.path.read_bytes() == b"acked"


def test_an_index_from_before_spool_binding_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    legacy_index(path, 3)  # before spool_sha256

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


def test_files_accepted_together_share_one_directory_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each accept returns only after an fsync of ready/ that began after its rename; the
    renames that land while one runs share the next (ack part of #14)."""
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    gate, synced = threading.Event(), []
    real_fsync_dir = spool_module.fsync_dir

    def held_fsync_dir(path: Path) -> None:
        synced.append(sorted(p.name for p in path.iterdir()))  # what this fsync covers
        gate.wait(10)
        real_fsync_dir(path)

    monkeypatch.setattr(spool_module, "fsync_dir", held_fsync_dir)
    files = [receive(spool, bytes([n]) * 100) for n in range(5)]
    entries: list[str] = []
    threads = [
        threading.Thread(target=lambda f=f: entries.append(spool.accept(f).entry_id)) for f in files
    ]
    threads[0].start()
    until(lambda: spool._ready_syncs.writing)
    for thread in threads[1:]:
        thread.start()
    until(lambda: spool._ready_syncs.waiting == 4)
    gate.set()
    for thread in threads:
        thread.join(10)

    assert len(entries) == 5 and spool._ready_syncs.writes == 2
    # the second fsync began after all five renames: it covers every entry
    assert synced[1] == sorted(f"{entry}.dcm" for entry in entries)
