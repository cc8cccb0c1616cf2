"""The C-STORE handler's decisions, in their order, on a real spool and index.

The event is a small stand-in for pynetdicom's (the request's UIDs, the calling AE title
and the file the dataset arrived in); the dataset is written through the spool's
:class:`IncomingFile` as pynetdicom writes it. tests/integration/test_receive.py sends
the same refusals over real associations.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from gateway.core.fingerprint import dataset_offset
from gateway.errors import DatasetUnreadable
from gateway.index.db import Index
from gateway.ingest.receive import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    OUT_OF_RESOURCES,
    SUCCESS,
    Receiver,
    valid_uid,
)
from gateway.ingest.spool import Spool

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
UID = "1.2.826.0.1.3680043.8.498.1"


def part10(*, uid: str = UID, sop_class: str = CT, drop: tuple[str, ...] = (),
           syntax: str = ExplicitVRLittleEndian, filler: bytes = b"") -> bytes:  # fmt: skip
    """A small instance as pynetdicom files it: preamble, File Meta, the dataset."""
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some cases carry an invalid UID on purpose
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "PID-1", "CT"
    if filler:
        ds.add_new(0x7FE00010, "OB", filler)  # Pixel Data
    for keyword in drop:
        delattr(ds, keyword)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def arrived(spool: Spool, data: bytes) -> Path:
    """Write ``data`` through an incoming file, as pynetdicom does while a dataset arrives."""
    incoming = spool.incoming_file()
    incoming.write(data)
    incoming.file.flush()
    incoming.close()
    return Path(incoming.name)


def event(path: Path, *, uid: str = UID, sop_class: str = CT) -> Any:
    """The parts of pynetdicom's EVT_C_STORE event the handler reads."""
    return SimpleNamespace(
        request=SimpleNamespace(AffectedSOPInstanceUID=uid, AffectedSOPClassUID=sop_class),
        assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title="CT1             ")),
        dataset_path=path,
    )


@pytest.fixture
def receiver(tmp_path: Path) -> Receiver:
    return Receiver(spool=Spool(tmp_path / "spool", reserve_bytes=0),
                    index=Index(tmp_path / "index.sqlite"))  # fmt: skip


def store(receiver: Receiver, data: bytes, **request: str) -> Dataset:
    return receiver.handle_store(event(arrived(receiver.spool, data), **request))


def nothing_kept(receiver: Receiver) -> bool:
    return receiver.index.all() == [] and list(receiver.spool.ready.iterdir()) == []


def test_a_whole_valid_instance_is_acked_once_its_row_is_committed(receiver: Receiver) -> None:
    seen: list[tuple[int, str]] = []
    receiver.on_stored = lambda row_id: seen.append(
        (row_id, receiver.index.get(row_id).sop_instance_uid)  # the row is there to read
    )
    data = part10()

    response = store(receiver, data)

    assert response.Status == SUCCESS and "ErrorComment" not in response
    (row,) = receiver.index.all()
    assert seen == [(row.id, UID)]
    assert (row.sop_class_uid, row.calling_aet, row.size) == (CT, "CT1", len(data))
    assert receiver.spool.path_of(row.entry_id).read_bytes() == data
    assert list(receiver.spool.incoming.iterdir()) == []
    assert receiver.response_counts() == {SUCCESS: 1}


@pytest.mark.parametrize(
    ("request_uid", "request_class"),
    [("../etc/passwd", CT), ("1." + "2" * 70, CT), (UID, "not a UID"), ("", CT)],
    ids=["dotdot", "too-long", "bad-class", "empty"],
)
def test_an_invalid_uid_in_the_request_cannot_be_understood(
    receiver: Receiver, request_uid: str, request_class: str
) -> None:
    response = store(receiver, part10(), uid=request_uid, sop_class=request_class)

    assert response.Status == CANNOT_UNDERSTAND
    assert response.ErrorComment == "invalid SOP Instance or Class UID in request"
    assert nothing_kept(receiver)


def test_the_request_is_checked_before_the_dataset(receiver: Receiver) -> None:
    # an invalid request UID over an unreadable dataset: the request is what is refused
    response = store(receiver, b"\x00" * 128 + b"DICM garbage", uid="../x")

    assert response.Status == CANNOT_UNDERSTAND
    assert "in request" in response.ErrorComment


def test_an_unreadable_dataset_cannot_be_understood(receiver: Receiver) -> None:
    data = part10()
    response = store(receiver, data[: len(data) - 20])  # truncated inside an element

    assert response.Status == CANNOT_UNDERSTAND
    assert response.ErrorComment.startswith("dataset cannot be understood")
    assert nothing_kept(receiver)


@pytest.mark.parametrize("left", [8, 9, 10, 11])
def test_a_dataset_shorter_than_its_first_long_element_header_cannot_be_understood(
    receiver: Receiver, left: int
) -> None:
    """8-11 bytes after the File Meta, starting with a 4-byte-length VR's header: pydicom's
    File Meta read raised struct.error there, which reached pynetdicom as a handler
    exception (0xC211, no comment) instead of the gateway's 0xC000."""
    data = part10()
    offset, _ = dataset_offset(io.BytesIO(data))
    head = struct.pack("<HH2sHL", 0x0008, 0x0016, b"OB", 0, 2) + b"\0\0"
    short = data[:offset] + head[:left]
    with pytest.raises(DatasetUnreadable):
        dataset_offset(io.BytesIO(short))

    response = store(receiver, short)

    assert response.Status == CANNOT_UNDERSTAND
    assert response.ErrorComment.startswith("dataset cannot be understood")
    assert nothing_kept(receiver)


# pydicom warns as it reads the value; the gateway runs with warnings as warnings
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_an_invalid_uid_in_the_dataset_cannot_be_understood(receiver: Receiver) -> None:
    response = store(receiver, part10(uid="1.2.3.abc"))

    assert response.Status == CANNOT_UNDERSTAND
    assert response.ErrorComment == "invalid SOP Instance or Class UID in dataset"
    assert nothing_kept(receiver)


@pytest.mark.parametrize(
    ("dataset", "comment"),
    [
        ({"uid": UID + ".9"}, "SOP Instance UID differs from the request"),
        ({"sop_class": MR}, "SOP Class UID differs from the request"),
        ({"uid": UID + ".9", "drop": ("StudyInstanceUID",)},
         "SOP Instance UID differs from the request"),  # the UIDs are judged first
        ({"drop": ("StudyInstanceUID",)}, "missing or invalid Study/Series Instance UID"),
        ({"drop": ("SeriesInstanceUID",)}, "missing or invalid Study/Series Instance UID"),
    ],
    ids=["instance", "class", "instance-before-study", "no-study", "no-series"],
)  # fmt: skip
def test_a_dataset_that_differs_from_its_request_is_a_mismatch(
    receiver: Receiver, dataset: dict[str, Any], comment: str
) -> None:
    response = store(receiver, part10(**dataset))

    assert response.Status == DATASET_MISMATCH
    assert response.ErrorComment == comment
    assert nothing_kept(receiver)


def test_no_room_left_is_out_of_resources_and_nothing_is_kept(receiver: Receiver) -> None:
    path = arrived(receiver.spool, part10())
    receiver.spool.reserve_bytes = 1 << 60  # the disk filled up while the dataset arrived

    response = receiver.handle_store(event(path))

    assert response.Status == OUT_OF_RESOURCES
    assert response.ErrorComment == "gateway spool is full"
    assert nothing_kept(receiver)


def test_a_dataset_the_spool_gave_up_on_is_out_of_resources_before_anything_else(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool", reserve_bytes=1 << 60)  # never room for a byte
    rx = Receiver(spool=spool, index=Index(tmp_path / "index.sqlite"))

    response = store(rx, part10(), uid="../x")  # an invalid request too: the spool comes first

    assert response.Status == OUT_OF_RESOURCES
    assert response.ErrorComment == "gateway spool is full"
    assert list(spool.incoming.iterdir()) == [] and nothing_kept(rx)


def test_content_is_judged_before_room(receiver: Receiver) -> None:
    path = arrived(receiver.spool, part10(drop=("StudyInstanceUID",)))
    receiver.spool.reserve_bytes = 1 << 60

    assert receiver.handle_store(event(path)).Status == DATASET_MISMATCH


def test_a_deflated_dataset_inflating_past_the_cap_is_refused(tmp_path: Path) -> None:
    rx = Receiver(spool=Spool(tmp_path / "spool", reserve_bytes=0),
                  index=Index(tmp_path / "index.sqlite"), max_instance_bytes=4096)  # fmt: skip
    data = part10(syntax=DeflatedExplicitVRLittleEndian, filler=b"A" * 20_000)
    assert len(data) < 4096  # small on the wire, large once inflated

    response = store(rx, data)

    assert response.Status == OUT_OF_RESOURCES
    assert response.ErrorComment.startswith("refused: ")
    assert nothing_kept(rx)


class BrokenIndex(Index):
    """An index whose write fails, as a full or locked database would."""

    def add_received(self, **_: Any) -> int:
        raise OSError("disk I/O error")


def test_no_index_row_no_ack_and_the_spooled_file_is_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    stored: list[int] = []
    rx = Receiver(spool=spool, index=BrokenIndex(tmp_path / "index.sqlite"),
                  on_stored=stored.append)  # fmt: skip

    response = store(rx, part10())

    assert response.Status == OUT_OF_RESOURCES
    assert response.ErrorComment == "gateway index unavailable: OSError"
    assert list(spool.ready.iterdir()) == [] and stored == []


def test_valid_uid() -> None:
    assert valid_uid(UID) and valid_uid("1.2")
    assert not valid_uid("1.2.") and not valid_uid("1..2") and not valid_uid("1.a")
    assert not valid_uid("1." + "2" * 63) and not valid_uid(None) and not valid_uid(1.2)
