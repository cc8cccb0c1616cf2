"""The attribute diff: what a tampered copy changed, bounded against hostile files."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

import dicom_fixtures
from gateway.trust.diff import diff
from tests import bombs


@pytest.fixture
def ct(tmp_path: Path) -> Path:
    return dicom_fixtures.ct_series(tmp_path / "ct", 1, rows=16, cols=16)[0]


def test_diff_names_changed_added_and_removed_attributes(ct: Path, tmp_path: Path) -> None:
    ds = dcmread(ct)
    ds.PatientName = "Other^Person"
    del ds.PatientSex
    ds.ImageComments = "added later"
    copy = tmp_path / "copy.dcm"
    ds.save_as(copy)
    changes = {c.keyword: c for c in diff(ct, copy, show_phi=True)}
    assert set(changes) == {"PatientName", "PatientSex", "ImageComments"}
    assert changes["PatientName"].change == "changed"
    assert changes["PatientName"].after == "Other^Person"
    assert changes["PatientName"].tag == "(0010,0010)"
    assert changes["PatientSex"].change == "removed"
    assert changes["ImageComments"].change == "added"


def test_diff_redacts_values_for_roles_without_phi(ct: Path, tmp_path: Path) -> None:
    ds = dcmread(ct)
    ds.PatientName = "Other^Person"
    copy = tmp_path / "copy.dcm"
    ds.save_as(copy)
    (change,) = diff(ct, copy, show_phi=False)
    assert change.redacted and change.before is None and change.after is None


def test_diff_walks_into_sequences(ct: Path, tmp_path: Path) -> None:
    base = dcmread(ct)
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    base.ReferencedImageSequence = Sequence([item])
    original = tmp_path / "original.dcm"
    base.save_as(original)
    base.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.5"
    copy = tmp_path / "copy.dcm"
    base.save_as(copy)
    (change,) = diff(original, copy, show_phi=True)
    assert change.tag == "(0008,1140)[0](0008,1155)"
    assert (change.before, change.after) == ("1.2.3.4", "1.2.3.5")


def test_identical_files_have_no_diff(ct: Path) -> None:
    assert diff(ct, ct, show_phi=True) == []


def test_diff_against_a_deflate_bomb_stays_bounded(ct: Path, tmp_path: Path) -> None:
    # a tampered copy that inflates to 256 MiB: compared within the cap, never inflated whole
    copy = tmp_path / "bomb.dcm"
    bombs.deflate_bomb(copy, inflated=256 << 20)
    tracemalloc.start()
    try:
        (change,) = diff(ct, copy, show_phi=True, limit=64 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (change.change, change.after) == ("changed", "too large to compare")
    assert peak < 16 << 20


def test_diff_refuses_sequences_nested_past_the_cap(ct: Path, tmp_path: Path) -> None:
    _, data = bombs.instance(bombs.nested(40))
    copy = tmp_path / "nested.dcm"
    copy.write_bytes(data)
    (change,) = diff(ct, copy, show_phi=True)
    assert (change.change, change.after) == ("changed", "unreadable")
