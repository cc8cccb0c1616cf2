"""Digests are taken over the bytes as received, meta excluded, pixels never decoded."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from pydicom import dcmread

import dicom_fixtures
from gateway.errors import DatasetUnreadable
from gateway.fingerprint import EMPTY_SHA256, fingerprint, fingerprint_bytes, read_header


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return dicom_fixtures.generate(tmp_path_factory.mktemp("fixtures"))


def test_digests_match_an_independent_computation(catalogue: list[Path]) -> None:
    for path in catalogue:
        data = path.read_bytes()
        with path.open("rb") as stream:
            fp = fingerprint(stream)
        assert fp.digest == hashlib.sha256(data[fp.dataset_offset :]).digest(), path.name
        ds = dcmread(path)
        assert fp.transfer_syntax == ds.file_meta.TransferSyntaxUID
        # pydicom's PixelData is the value as stored (items without the delimiter when encapsulated)
        assert fp.pixel_digest == hashlib.sha256(ds.PixelData).digest(), path.name


def test_rewriting_the_file_meta_keeps_the_digest(catalogue: list[Path], tmp_path: Path) -> None:
    path = catalogue[0]
    ds = dcmread(path)
    ds.file_meta.ImplementationVersionName = "OTHER_HOP"
    ds.file_meta.SourceApplicationEntityTitle = "SOMEWHERE"
    out = tmp_path / "rewritten.dcm"
    ds.save_as(out, enforce_file_format=True)
    with path.open("rb") as a, out.open("rb") as b:
        first, second = fingerprint(a), fingerprint(b)
    assert first.dataset_offset != second.dataset_offset
    assert first.digest == second.digest
    assert first.pixel_digest == second.pixel_digest


def test_a_header_edit_changes_the_digest_but_not_the_pixel_digest(
    catalogue: list[Path], tmp_path: Path
) -> None:
    path = next(p for p in catalogue if p.name == "mr_head.dcm")
    ds = dcmread(path)
    ds.PatientName = "EDITED^NAME"
    out = tmp_path / "edited.dcm"
    ds.save_as(out, enforce_file_format=True)
    before, after = fingerprint_bytes(path.read_bytes()), fingerprint_bytes(out.read_bytes())
    assert before.digest != after.digest
    assert before.pixel_digest == after.pixel_digest


def test_no_pixel_data_hashes_to_empty(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = "2.25.1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert fingerprint_bytes(buffer.getvalue()).pixel_digest == EMPTY_SHA256


def test_header_attributes(catalogue: list[Path]) -> None:
    path = next(p for p in catalogue if p.name == "dx_chest.dcm")
    with path.open("rb") as stream:
        header = read_header(stream)
    assert (header.modality, header.body_part) == ("DX", "CHEST")
    assert header.sop_instance_uid == dcmread(path, stop_before_pixels=True).SOPInstanceUID


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 132,
        b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff",
        b"not dicom at all" * 20,
    ],
)
def test_garbage_is_unreadable(data: bytes) -> None:
    with pytest.raises(DatasetUnreadable):
        fingerprint_bytes(data)
    with pytest.raises(DatasetUnreadable):
        read_header(io.BytesIO(data))


def test_large_pixel_data_hashed_on_two_threads_gives_the_same_digests(tmp_path: Path) -> None:
    # above PARALLEL_PIXELS the pixel digest runs beside the dataset digest, chunk by chunk
    path = dicom_fixtures.large_multiframe(tmp_path / "big.dcm", target_bytes=20 << 20)
    data = path.read_bytes()
    with path.open("rb") as stream:
        fp = fingerprint(stream)
    assert fp.digest == hashlib.sha256(data[fp.dataset_offset :]).digest()
    assert fp.pixel_digest == hashlib.sha256(dcmread(path).PixelData).digest()
    assert fp.dataset_length == len(data) - fp.dataset_offset
