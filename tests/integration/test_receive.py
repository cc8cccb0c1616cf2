"""The listener with DCMTK and raw pynetdicom peers: durable acks, clear refusals, still serving."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt

import dicom_fixtures
from gateway.index.db import Index
from gateway.ingest.receive import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    OUT_OF_RESOURCES,
    SUCCESS,
    Receiver,
)
from gateway.ingest.spool import IncomingFile, Spool
from gateway.procs import free_port
from tests.integration.dicom import dcmsend_status, echo, send_raw, storescu

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return dicom_fixtures.generate(tmp_path_factory.mktemp("fixtures"))


def test_storescu_sends_every_fixture_and_each_is_durable(
    receiver: Receiver, fixtures: list[Path]
) -> None:
    result = storescu(receiver.port, fixtures)
    assert result.returncode == 0, result.stderr
    rows = receiver.index.all()
    assert sorted(r.sop_instance_uid for r in rows) == sorted(
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in fixtures
    )
    for row in rows:
        spooled = receiver.spool.path_of(row.entry_id)
        original = next(
            p
            for p in fixtures
            if dcmread(p, stop_before_pixels=True).SOPInstanceUID == row.sop_instance_uid
        )
        # the dataset bytes after the meta are exactly what was sent
        a, b = dcmread(spooled), dcmread(original)
        assert a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID
        assert spooled.read_bytes().endswith(original.read_bytes()[-4096:])
    assert list(receiver.spool.incoming.iterdir()) == []


def _write_with_meta(tmp_path: Path, name: str, *, meta_uid: str, dataset: bytes) -> Path:
    """A Part-10 file whose meta names ``meta_uid`` followed by arbitrary dataset bytes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the hostile cases are invalid UIs on purpose
        meta.MediaStorageSOPInstanceUID = meta_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.3.4"
    path = tmp_path / name
    with path.open("wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_file_meta_info(f, meta, enforce_standard=False)  # type: ignore[arg-type]
        f.write(dataset)
    _ = Dataset
    return path


def _dataset_bytes(original: Path) -> bytes:
    data = original.read_bytes()
    from gateway.core.fingerprint import fingerprint_bytes

    return data[fingerprint_bytes(data).dataset_offset :]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("truncated", CANNOT_UNDERSTAND),
        ("uid-mismatch", DATASET_MISMATCH),
        ("hostile-dotdot", CANNOT_UNDERSTAND),
        ("hostile-long", CANNOT_UNDERSTAND),
        ("unparsable", CANNOT_UNDERSTAND),
        ("no-study-uid", DATASET_MISMATCH),
    ],
)
def test_bad_input_gets_its_status_and_nothing_is_recorded(
    receiver: Receiver, fixtures: list[Path], tmp_path: Path, case: str, expected: int
) -> None:
    ct = next(p for p in fixtures if p.name == "ct_chest_1.dcm")
    uid = str(dcmread(ct, stop_before_pixels=True).SOPInstanceUID)
    body = _dataset_bytes(ct)
    if case == "truncated":
        path = _write_with_meta(tmp_path, "t.dcm", meta_uid=uid, dataset=body[: len(body) // 2])
    elif case == "uid-mismatch":
        path = _write_with_meta(tmp_path, "m.dcm", meta_uid=uid + ".9", dataset=body)
    elif case == "hostile-dotdot":
        path = _write_with_meta(tmp_path, "h.dcm", meta_uid="../x", dataset=body)
    elif case == "hostile-long":
        # pynetdicom refuses to send a UID over 64 characters, DCMTK sends one (truncated in
        # the command, whole in the dataset)
        ds = dcmread(ct)
        path = tmp_path / "long.dcm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1." + "2" * 70
            ds.save_as(path)
        assert dcmsend_status(receiver.port, path) == expected
        assert receiver.index.all() == []
        assert echo(receiver.port)
        return
    elif case == "no-study-uid":
        ds = dcmread(ct)
        del ds.StudyInstanceUID
        path = tmp_path / "nostudy.dcm"
        ds.save_as(path)
        assert dcmsend_status(receiver.port, path) == expected
        assert receiver.index.all() == []
        assert echo(receiver.port)
        return
    else:
        path = _write_with_meta(
            tmp_path, "u.dcm", meta_uid=uid, dataset=b"\xff\xfe\x00\x10garbage" * 50
        )
    result = send_raw(receiver.port, path, sop_class=CT, transfer_syntax=ExplicitVRLittleEndian)
    assert result is not None
    assert result.Status == expected, (case, hex(result.Status))
    assert result.ErrorComment
    assert receiver.index.all() == []
    assert list(receiver.spool.ready.iterdir()) == []
    assert echo(receiver.port)  # still serving


def test_a_full_spool_answers_a700_and_acks_nothing(tmp_path: Path, fixtures: list[Path]) -> None:
    spool = Spool(tmp_path / "spool", reserve_bytes=1 << 60)  # never enough room
    index = Index(tmp_path / "index.sqlite")
    rx = Receiver(spool=spool, index=index)
    rx.start(port=free_port())
    try:
        ct = next(p for p in fixtures if p.name == "ct_chest_1.dcm")
        result = send_raw(rx.port, ct, sop_class=CT, transfer_syntax=ExplicitVRLittleEndian)
        assert result is not None and result.Status == OUT_OF_RESOURCES
        assert index.all() == []
        assert echo(rx.port)
    finally:
        rx.stop()
        index.close()


def test_wrong_called_ae_title_is_rejected(receiver: Receiver, fixtures: list[Path]) -> None:
    result = storescu(receiver.port, fixtures[:1], called="NOTME")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr + result.stdout
    assert receiver.index.all() == []


class TallySpool(Spool):
    """A spool that keeps the incoming files it made, to show whose files pynetdicom used."""

    def __init__(self, root: Path, *, reserve_bytes: int) -> None:
        super().__init__(root, reserve_bytes=reserve_bytes)
        self.made: list[str] = []

    def incoming_file(self) -> IncomingFile:
        incoming = super().incoming_file()
        self.made.append(incoming.name)
        return incoming


StartReceivers = Callable[[list[int]], list[Receiver]]


@pytest.fixture
def start_receivers(tmp_path: Path) -> Iterator[StartReceivers]:
    """Start one receiver per reserve, in order, each on its own spool, index and port."""
    started: list[Receiver] = []

    def start(reserves: list[int]) -> list[Receiver]:
        for reserve in reserves:
            n = len(started)
            spool = TallySpool(tmp_path / f"spool{n}", reserve_bytes=reserve)
            rx = Receiver(spool=spool, index=Index(tmp_path / f"index{n}.sqlite"))
            rx.start(port=free_port())
            started.append(rx)
        return started[-len(reserves) :]

    yield start
    for rx in started:
        rx.stop()
        rx.index.close()


def _send_interleaved(receivers: list[Receiver], batches: list[list[Path]]) -> list[list[int]]:
    """Open one association to each receiver, both at once, and alternate their C-STOREs."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    assocs = [ae.associate("127.0.0.1", rx.port, ae_title="XRAYGW") for rx in receivers]
    assert all(a.is_established for a in assocs)
    statuses: list[list[int]] = [[] for _ in receivers]
    try:
        for files in zip(*batches, strict=True):
            for n, (assoc, path) in enumerate(zip(assocs, files, strict=True)):
                statuses[n].append(int(assoc.send_c_store(path).Status))
    finally:
        for assoc in assocs:
            assoc.release()
    return statuses


def _uids(paths: list[Path]) -> list[str]:
    return sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths)


def test_two_receivers_in_one_process_keep_their_files_apart(
    tmp_path: Path, start_receivers: StartReceivers
) -> None:
    slices = dicom_fixtures.ct_series(tmp_path / "series", 6, rows=32, cols=32)
    batches = [slices[0::2], slices[1::2]]
    receivers = start_receivers([0, 0])

    statuses = _send_interleaved(receivers, batches)

    assert statuses == [[SUCCESS] * 3, [SUCCESS] * 3]
    for rx, sent in zip(receivers, batches, strict=True):
        spool = rx.spool
        assert isinstance(spool, TallySpool)
        # every dataset this receiver acked arrived in a file of its own spool, none elsewhere
        assert len(spool.made) == 3
        assert all(Path(name).parent == spool.incoming for name in spool.made)
        rows = rx.index.all()
        assert sorted(r.sop_instance_uid for r in rows) == _uids(sent)
        assert sorted(p.name for p in spool.ready.iterdir()) == sorted(
            f"{r.entry_id}.dcm" for r in rows
        )
        assert list(spool.incoming.iterdir()) == []


@pytest.mark.parametrize("full_first", [True, False], ids=["full-first", "full-last"])
def test_a_full_spool_refuses_only_its_own_receivers_instances(
    tmp_path: Path, start_receivers: StartReceivers, full_first: bool
) -> None:
    slices = dicom_fixtures.ct_series(tmp_path / "series", 4, rows=32, cols=32)
    never_room = 1 << 60
    receivers = start_receivers([never_room, 0] if full_first else [0, never_room])

    statuses = _send_interleaved(receivers, [slices[0::2], slices[1::2]])

    full, roomy = (0, 1) if full_first else (1, 0)
    assert statuses[full] == [OUT_OF_RESOURCES] * 2
    assert statuses[roomy] == [SUCCESS] * 2
    assert receivers[full].index.all() == []
    assert len(receivers[roomy].index.all()) == 2


def test_another_scp_in_the_process_keeps_pynetdicoms_own_files(
    tmp_path: Path, start_receivers: StartReceivers
) -> None:
    (rx,) = start_receivers([0])  # the routing of received datasets is installed
    (path,) = dicom_fixtures.ct_series(tmp_path / "series", 1, rows=32, cols=32)
    received: list[tuple[str, Path]] = []

    def handle_store(event: Any) -> int:
        received.append((str(event.dataset.SOPInstanceUID), Path(event.dataset_path)))
        return SUCCESS

    scp = AE(ae_title="OTHERSCP")
    scp.add_supported_context(CT, ExplicitVRLittleEndian)
    port = free_port()
    server = scp.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)]
    )
    try:
        scu = AE(ae_title="MODALITY")
        scu.add_requested_context(CT, ExplicitVRLittleEndian)
        assoc = scu.associate("127.0.0.1", port, ae_title="OTHERSCP")
        assert assoc.is_established
        try:
            assert assoc.send_c_store(path).Status == SUCCESS
        finally:
            assoc.release()
    finally:
        server.shutdown()

    ((uid, written),) = received
    assert uid == _uids([path])[0]
    assert (
        rx.spool.incoming not in written.parents and not written.exists()
    )  # removed by pynetdicom
    assert rx.index.all() == [] and list(rx.spool.ready.iterdir()) == []


def test_eight_associations_at_once_each_ack_has_its_own_durable_file_and_row(
    receiver: Receiver, tmp_path: Path
) -> None:
    """8 DCMTK associations of 5 CT slices at once (ack part of #14): the index rows and the
    spool's directory fsyncs are group-committed, each file's File Meta is written by the
    direct encoder; every ack has its row, and its file in ready/ with the hash the row
    recorded and a File Meta pydicom reads as the request's."""
    import hashlib

    from gateway.bench.parallel import storescu_parallel

    slices = dicom_fixtures.ct_series(tmp_path / "ct", count=40)
    storescu_parallel(receiver.port, slices, called="XRAYGW", ways=8)  # raises unless all acked

    rows = receiver.index.all()
    sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in slices}
    assert sorted(r.sop_instance_uid for r in rows) == sorted(sent)
    for row in rows:
        spooled = receiver.spool.path_of(row.entry_id)
        assert hashlib.sha256(spooled.read_bytes()).digest() == row.spool_sha256
        meta = dcmread(spooled, stop_before_pixels=True).file_meta
        assert meta.MediaStorageSOPInstanceUID == row.sop_instance_uid
        assert meta.MediaStorageSOPClassUID == row.sop_class_uid
    # every row and every rename went through exactly one group commit
    commits, renames = receiver.index._acks, receiver.spool._ready_syncs
    assert commits.items == renames.items == 40
    print(f"40 acks: {commits.writes} index commits, {renames.writes} directory fsyncs")
