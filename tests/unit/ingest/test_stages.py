"""Each stage's step, one at a time (``Pipeline.advance``), on the stand-ins.

The spool binds each file to what was acked: the fingerprint and seal steps refuse bytes
that changed since, and never seal them.
"""

from __future__ import annotations

from pathlib import Path

from gateway.ingest.pipeline import STAGE
from gateway.ingest.stages import object_name
from gateway.store.fs import FilesystemStore
from tests.unit.ingest.conftest import Line


def advance(line: Line, row_id: int) -> str:
    """Run the row's stage once; the stage it is at afterwards."""
    line.pipeline.advance(line.index.get(row_id))
    return line.index.get(row_id).stage


def test_an_unchanged_spool_file_goes_on_to_be_sealed(line: Line, two_images: list[bytes]) -> None:
    row_id = line.acked(two_images[0])

    assert advance(line, row_id) == STAGE["fingerprint"].next == "seal"

    row = line.index.get(row_id)
    assert row.record_key is not None and row.digest is not None
    assert row.object_name == object_name(row.record_key, row.digest)
    assert line.alerts.recent() == []


def test_a_spool_file_swapped_after_the_ack_is_refused_never_sealed(
    line: Line, two_images: list[bytes]
) -> None:
    row_id = line.acked(two_images[0])
    path = line.spool.path_of(line.index.get(row_id).entry_id)
    path.write_bytes(two_images[1])  # a valid image, just not the acked one

    assert advance(line, row_id) == "failed"

    row = line.index.get(row_id)
    assert row.parked_stage == "fingerprint"  # at once, no retries
    assert row.last_error is not None and "changed after the ack" in row.last_error
    assert row.digest is None and list(line.sealed_dir.iterdir()) == []
    assert path.read_bytes() == two_images[1]  # kept as evidence
    parked, alert = line.alerts.recent()  # newest first: the row parked, then why
    assert (alert.kind, alert.source, alert.sop_instance_uid) == (
        "spool_swapped", "pipeline", row.sop_instance_uid,
    )  # fmt: skip
    assert (parked.kind, parked.sop_instance_uid) == ("parked", row.sop_instance_uid)
    assert f"row {row_id}: fingerprint: SpoolSwapped" in parked.detail
    # re-queued by an operator, it is refused again
    assert line.index.requeue([row_id]) == [row_id]
    assert line.pipeline.process(row_id) == "fingerprint"
    assert line.index.get(row_id).stage == "failed" and list(line.store.names()) == []


def test_a_swapped_file_that_no_longer_parses_is_refused_too(
    line: Line, two_images: list[bytes]
) -> None:
    row_id = line.acked(two_images[0])
    line.spool.path_of(line.index.get(row_id).entry_id).write_bytes(b"not DICOM at all")

    assert advance(line, row_id) == "failed"
    assert [a.kind for a in line.alerts.recent()] == ["parked", "spool_swapped"]


def test_a_spool_file_swapped_between_fingerprint_and_seal_is_never_sealed(
    line: Line, two_images: list[bytes]
) -> None:
    row_id = line.acked(two_images[0])
    assert advance(line, row_id) == "seal"  # fingerprint: the acked bytes
    line.spool.path_of(line.index.get(row_id).entry_id).write_bytes(two_images[1])

    assert advance(line, row_id) == "failed"  # seal: someone else's

    row = line.index.get(row_id)
    assert row.parked_stage == "seal"
    assert row.last_error is not None and "changed before sealing" in row.last_error
    assert list(line.sealed_dir.iterdir()) == []  # neither the object nor its temporary
    assert [a.kind for a in line.alerts.recent()] == ["parked", "spool_swapped"]


def test_the_same_bytes_under_the_same_uid_are_set_aside_as_a_duplicate(
    line: Line, two_images: list[bytes]
) -> None:
    first = line.acked(two_images[0], uid="1.2.3.9")
    assert line.pipeline.process(first) == "committed"
    again = line.acked(two_images[0], uid="1.2.3.9")

    assert advance(line, again) == STAGE["fingerprint"].aside == "duplicate"

    assert not line.spool.path_of(line.index.get(again).entry_id).exists()
    assert len(line.forwarder.stored) == 1


def test_other_bytes_under_the_same_uid_are_a_new_version(
    line: Line, two_images: list[bytes]
) -> None:
    first = line.acked(two_images[0], uid="1.2.3.9")
    newer = line.acked(two_images[1], uid="1.2.3.9")

    assert line.pipeline.process(first) == line.pipeline.process(newer) == "committed"

    assert (line.index.get(first).version, line.index.get(newer).version) == (1, 2)
    record_key = line.index.get(first).record_key
    assert record_key is not None and len(line.anchorer.records[record_key]) == 2


def test_a_sealed_copy_lost_before_the_put_is_sealed_again(
    line: Line, two_images: list[bytes]
) -> None:
    row_id = line.acked(two_images[0])
    assert advance(line, row_id) == "seal"
    assert advance(line, row_id) == "put"
    for sealed in line.sealed_dir.iterdir():
        sealed.unlink()  # e.g. a data dir restored without sealed/

    assert advance(line, row_id) == STAGE["put"].back == "seal"
    assert line.pipeline.process(row_id) == "committed"
    row = line.index.get(row_id)
    assert row.object_name is not None and line.store.exists(row.object_name)


def test_a_put_done_before_a_crash_is_not_done_again(line: Line, two_images: list[bytes]) -> None:
    row_id = line.acked(two_images[0])
    assert advance(line, row_id) == "seal"
    assert advance(line, row_id) == "put"
    row = line.index.get(row_id)
    assert row.object_name is not None
    (sealed,) = line.sealed_dir.iterdir()
    with sealed.open("rb") as source:  # the put happened; the advance did not
        line.store.put(row.object_name, source, length=sealed.stat().st_size)
    sealed.unlink()

    assert advance(line, row_id) == "anchor"


def test_a_conflict_in_the_pacs_sets_the_row_aside(line: Line) -> None:
    row_id = line.at_anchor(1)
    line.forwarder.conflict = "Orthanc 1234 holds other bytes under this UID"

    assert line.pipeline.process(row_id) == STAGE["forward"].aside == "conflict"

    row = line.index.get(row_id)
    assert row.conflict == line.forwarder.conflict and row.orthanc_id is not None
    assert not line.spool.path_of(row.entry_id).exists()


def test_a_filesystem_store_takes_the_sealed_file_itself(
    line: Line, two_images: list[bytes], tmp_path: Path
) -> None:
    store = FilesystemStore(tmp_path / "objects")  # same device as the sealed dir
    line.pipeline.steps.store = store
    row_id = line.acked(two_images[0])
    assert advance(line, row_id) == "seal"
    assert advance(line, row_id) == "put"
    (sealed,) = line.sealed_dir.iterdir()
    inode, data = sealed.stat().st_ino, sealed.read_bytes()

    assert advance(line, row_id) == "anchor"

    row = line.index.get(row_id)
    assert row.object_name is not None
    stored = store.path_of(row.object_name)
    assert stored.stat().st_ino == inode and stored.read_bytes() == data  # moved, not copied
    assert list(line.sealed_dir.iterdir()) == []
    # a crash after the rename, before the round's commit: the put is not done again
    line.index.update(row_id, stage="put")
    assert advance(line, row_id) == "anchor" and stored.stat().st_ino == inode
