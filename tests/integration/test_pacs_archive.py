"""One contract for the PACS interface, run on Orthanc's client and on the in-memory stand-in.

:class:`~gateway.pacs.memory.MemoryPacs` stands in for Orthanc in the trust/ unit tests;
these tests hold it to what the real Orthanc does through
:class:`~gateway.pacs.client.Pacs`, method by method of
:class:`~gateway.pacs.base.PacsArchive`, so a unit test through the stand-in says
something true about the real part.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

import dicom_fixtures
from gateway.core.fingerprint import fingerprint, fingerprint_bytes
from gateway.errors import InstanceMissing
from gateway.pacs.base import PacsArchive
from gateway.pacs.memory import MemoryPacs
from tests.integration.pacs import TestOrthanc

pytestmark = pytest.mark.integration

STUDY = "1.2.826.0.1.3680043.10.1000.77"
OTHER_STUDY = "1.2.826.0.1.3680043.10.1000.78"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestOrthanc]:
    with TestOrthanc(data_dir=tmp_path_factory.mktemp("orthanc")) as running:
        yield running


@pytest.fixture(params=["orthanc", "memory"])
def archive(request: pytest.FixtureRequest) -> Iterator[PacsArchive]:
    """Orthanc's client (emptied after each test) or a fresh in-memory stand-in."""
    if request.param == "memory":
        yield MemoryPacs()
        return
    server: TestOrthanc = request.getfixturevalue("orthanc")
    yield server.pacs
    for orthanc_id in server.pacs.instances():
        server.pacs.delete(orthanc_id)


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    two = dicom_fixtures.ct_series(folder / "a", 2, rows=8, cols=8, study_uid=STUDY,
                                   prefix=f"{STUDY}.1.")  # fmt: skip
    one = dicom_fixtures.ct_series(folder / "b", 1, rows=8, cols=8, study_uid=OTHER_STUDY,
                                   prefix=f"{OTHER_STUDY}.1.")  # fmt: skip
    return [*two, *one]


def digest_of(path: Path) -> bytes:
    with path.open("rb") as stream:
        return fingerprint(stream).digest


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_a_stored_file_is_found_and_read_back_as_stored(
    archive: PacsArchive, series: list[Path]
) -> None:
    path = series[0]
    stored = archive.store(path, digest=digest_of(path))
    assert (stored.status, stored.conflict) == ("Success", False)
    assert archive.find(uid_of(path)) == stored.orthanc_id
    sink = io.BytesIO()
    size = archive.fetch_stored(stored.orthanc_id, sink)
    assert size == len(sink.getvalue())
    assert fingerprint_bytes(sink.getvalue()).digest == digest_of(path)


def test_a_second_store_keeps_the_first_copy_and_tells_a_conflict(
    archive: PacsArchive, series: list[Path], tmp_path: Path
) -> None:
    path = series[0]
    first = archive.store(path, digest=digest_of(path))
    again = archive.store(path, digest=digest_of(path))
    assert (again.status, again.conflict, again.orthanc_id) == (
        "AlreadyStored", False, first.orthanc_id,
    )  # fmt: skip
    ds = dcmread(path)
    ds.PatientName = "Edited^Somebody"
    edited = tmp_path / "edited.dcm"
    ds.save_as(edited)
    other = archive.store(edited, digest=digest_of(edited))
    assert (other.status, other.conflict) == ("AlreadyStored", True)
    assert other.orthanc_digest == digest_of(path)
    sink = io.BytesIO()
    archive.fetch_stored(first.orthanc_id, sink)
    assert fingerprint_bytes(sink.getvalue()).digest == digest_of(path)


def test_studies_and_everything_are_listed(archive: PacsArchive, series: list[Path]) -> None:
    ids = {archive.store(path, digest=digest_of(path)).orthanc_id: uid_of(path) for path in series}
    assert sorted(archive.study_instance_uids(STUDY)) == sorted(map(uid_of, series[:2]))
    assert archive.study_instance_uids("1.2.3.404") == []
    assert sorted(archive.find_instances({})) == sorted(ids.items())
    assert archive.find_instances({"SOPInstanceUID": uid_of(series[2])}) == [
        (archive.find(uid_of(series[2])), uid_of(series[2]))
    ]


def test_a_deleted_or_unknown_instance_is_missing(archive: PacsArchive, series: list[Path]) -> None:
    path = series[0]
    stored = archive.store(path, digest=digest_of(path))
    archive.delete(stored.orthanc_id)
    assert archive.find(uid_of(path)) is None
    with pytest.raises(InstanceMissing):
        archive.fetch_stored(stored.orthanc_id, io.BytesIO())
    with pytest.raises(InstanceMissing):
        archive.delete(stored.orthanc_id)
    assert archive.find("1.2.3.404") is None
