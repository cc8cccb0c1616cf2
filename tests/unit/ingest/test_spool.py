"""The spool binds each file to what was acked: hashed as written, checked at the fingerprint."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path
from typing import Any, cast

import pytest

import dicom_fixtures
from gateway.core.keys import Kek, Keyring
from gateway.errors import SpoolUnavailable
from gateway.index.db import Index, Row
from gateway.ingest.pipeline import MustWait, Pipeline
from gateway.ingest.spool import CHECK_EVERY, Spool
from gateway.trust.alerts import Alerts
from tests.unit.index.test_db import legacy_index

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def two_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two CT slices of one series: the acked one and the one swapped in for it."""
    return dicom_fixtures.ct_series(tmp_path_factory.mktemp("swap"), 2, rows=32, cols=32)


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


class UpToSeal(Pipeline):
    """The real fingerprint stage (and failure handling); the test stops at seal."""

    def __init__(self, index: Index, spool: Spool, alerts: Alerts, tmp: Path) -> None:
        unused = cast(Any, None)
        super().__init__(
            index=index, spool=spool, store=unused, keyring=unused, pseudonym_key=b"k" * 32,
            anchorer=unused, forwarder=unused, sealed_dir=tmp / "sealed", workers=1,
            alerts=alerts,
        )  # fmt: skip
        self.sealed: list[int] = []

    def _stage_seal(self, row: Row) -> None:
        self.sealed.append(row.id)
        raise MustWait("the test stops here")


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Index, Spool, Alerts, UpToSeal]:
    index = Index(tmp_path / "index.sqlite")
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    alerts = Alerts(tmp_path / "alerts.sqlite")
    return index, spool, alerts, UpToSeal(index, spool, alerts, tmp_path)


def acked(index: Index, spool: Spool, image: Path) -> tuple[int, Path]:
    """Receive ``image`` and file its row as the listener does at the ack."""
    entry = spool.accept(receive(spool, image.read_bytes()))
    row_id = index.add_received(
        entry_id=entry.entry_id, sop_instance_uid=f"1.2.3.{entry.entry_id[:6]}",
        sop_class_uid=CT, calling_aet="CT1", size=entry.size, spool_sha256=entry.sha256,
    )  # fmt: skip
    return row_id, entry.path


def test_a_spool_file_swapped_after_the_ack_is_refused_never_sealed(
    parts: tuple[Index, Spool, Alerts, UpToSeal], two_images: list[Path]
) -> None:
    index, spool, alerts, pipeline = parts
    row_id, path = acked(index, spool, two_images[0])
    path.write_bytes(two_images[1].read_bytes())  # a valid image, just not the acked one

    pipeline.process(row_id)

    row = index.get(row_id)
    assert (row.stage, row.parked_stage) == ("failed", "fingerprint")  # at once, no retries
    assert row.last_error is not None and "changed after the ack" in row.last_error
    assert row.digest is None and pipeline.sealed == []
    assert path.read_bytes() == two_images[1].read_bytes()  # kept as evidence
    (alert,) = alerts.recent()
    assert (alert.kind, alert.source, alert.sop_instance_uid) == (
        "spool_swapped", "pipeline", row.sop_instance_uid,
    )  # fmt: skip
    # re-queued by an operator, it is refused again
    assert index.requeue([row_id]) == [row_id]
    pipeline.process(row_id)
    assert index.get(row_id).stage == "failed" and pipeline.sealed == []


def test_a_swapped_file_that_no_longer_parses_is_refused_too(
    parts: tuple[Index, Spool, Alerts, UpToSeal], two_images: list[Path]
) -> None:
    index, spool, alerts, pipeline = parts
    row_id, path = acked(index, spool, two_images[0])
    path.write_bytes(b"not DICOM at all")

    pipeline.process(row_id)

    assert index.get(row_id).stage == "failed"
    assert [a.kind for a in alerts.recent()] == ["spool_swapped"]


def test_an_unchanged_spool_file_goes_on_to_be_sealed(
    parts: tuple[Index, Spool, Alerts, UpToSeal], two_images: list[Path]
) -> None:
    index, spool, alerts, pipeline = parts
    row_id, _ = acked(index, spool, two_images[0])

    pipeline.process(row_id)

    assert index.get(row_id).stage == "seal" and pipeline.sealed == [row_id]
    assert alerts.recent() == []


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


class SwapBeforeSeal(Pipeline):
    """The real fingerprint and seal stages; between them the spool file is swapped."""

    def __init__(self, index: Index, spool: Spool, alerts: Alerts, tmp: Path, swap: bytes) -> None:
        unused = cast(Any, None)
        super().__init__(
            index=index, spool=spool, store=unused, keyring=Keyring.of(Kek("kek-20261205-aaaaaaaa", bytes(range(32)))),
            pseudonym_key=b"k" * 32, anchorer=unused, forwarder=unused,
            sealed_dir=tmp / "sealed", workers=1, alerts=alerts,
        )  # fmt: skip
        self.swap = swap

    def _stage_seal(self, row: Row) -> None:
        self.spool.path_of(row.entry_id).write_bytes(self.swap)
        super()._stage_seal(row)

    def _stage_put(self, row: Row) -> None:
        raise MustWait("the test stops here")


def test_a_spool_file_swapped_between_fingerprint_and_seal_is_never_sealed(
    tmp_path: Path, two_images: list[Path]
) -> None:
    index, spool = Index(tmp_path / "index.sqlite"), Spool(tmp_path / "spool", reserve_bytes=0)
    alerts = Alerts(tmp_path / "alerts.sqlite")
    pipeline = SwapBeforeSeal(index, spool, alerts, tmp_path, two_images[1].read_bytes())
    row_id, _ = acked(index, spool, two_images[0])

    pipeline.process(row_id)  # fingerprint: the acked bytes
    pipeline.process(row_id)  # seal: someone else's

    row = index.get(row_id)
    assert (row.stage, row.parked_stage) == ("failed", "seal")
    assert row.last_error is not None and "changed before sealing" in row.last_error
    assert list((tmp_path / "sealed").iterdir()) == []  # neither the object nor its temporary
    assert [a.kind for a in alerts.recent()] == ["spool_swapped"]
