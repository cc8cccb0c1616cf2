"""The listener with DCMTK and raw pynetdicom peers: durable acks, clear refusals, still serving."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

import dicom_fixtures
from gateway.index.db import Index
from gateway.ingest.receive import CANNOT_UNDERSTAND, DATASET_MISMATCH, OUT_OF_RESOURCES, Receiver
from gateway.ingest.spool import Spool
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
