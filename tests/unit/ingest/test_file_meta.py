"""The File Meta of a received dataset: the same bytes as pynetdicom's pydicom-built one."""

from __future__ import annotations

import io
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import config
from pydicom.filewriter import write_file_meta_info as pydicom_write
from pydicom.uid import UID as PydicomUID
from pynetdicom import dimse_messages
from pynetdicom.dsutils import create_file_meta as pynetdicom_create

from gateway.ingest import file_meta
from gateway.ingest.receive import route_received_datasets

CT = "1.2.840.10008.5.1.4.1.1.2"


def UID(value: str) -> PydicomUID:
    """A UID as pynetdicom passes it, a peer's invalid one included."""
    return PydicomUID(value, validation_mode=config.IGNORE)


SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.201")  # fmt: skip


def pynetdicoms(sop_class: str, instance: str, syntax: str) -> bytes:
    """What pynetdicom 3.0's decode_msg writes after the preamble, with pydicom."""
    out = io.BytesIO()
    with warnings.catch_warnings():  # pydicom warns of invalid UIDs, and writes them
        warnings.simplefilter("ignore")
        meta = pynetdicom_create(
            sop_class_uid=UID(sop_class),
            sop_instance_uid=UID(instance),
            transfer_syntax=UID(syntax),
        )
        pydicom_write(out, meta)
    return out.getvalue()


def ours(sop_class: str, instance: str, syntax: str) -> bytes:
    """The same call through the stand-ins route_received_datasets installs."""
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = file_meta.create_file_meta(
            sop_class_uid=UID(sop_class),
            sop_instance_uid=UID(instance),
            transfer_syntax=UID(syntax),
        )
        file_meta.write_file_meta_info(out, meta)
    return out.getvalue()


@given(
    instance=st.text("0123456789.", min_size=1, max_size=64),
    sop_class=st.sampled_from([CT, "1.2.840.10008.5.1.4.1.1.1.1", "1.2.3"]),
    syntax=st.sampled_from(SYNTAXES),
)
def test_plain_uids_are_encoded_as_pydicom_writes_them(
    instance: str, sop_class: str, syntax: str
) -> None:
    encoded = file_meta.encode_file_meta(
        file_meta.ReceivedFileMeta(UID(sop_class), UID(instance), UID(syntax))
    )
    assert encoded is not None
    assert encoded == pynetdicoms(sop_class, instance, syntax)
    assert ours(sop_class, instance, syntax) == encoded


@pytest.mark.parametrize(
    "instance",
    ["1.2.3 4", "1.2.abc", "9" * 65, "1.2.3\u00e9", "1.2.3\\4"],
    ids=["space", "letters", "too-long", "non-ascii", "backslash"],
)
def test_a_hostile_uid_is_written_by_pydicom_as_before(instance: str) -> None:
    meta = file_meta.ReceivedFileMeta(UID(CT), UID(instance), UID(SYNTAXES[1]))
    assert file_meta.encode_file_meta(meta) is None
    assert ours(CT, instance, SYNTAXES[1]) == pynetdicoms(CT, instance, SYNTAXES[1])


def test_the_receiver_routes_pynetdicoms_file_meta_through_the_encoder() -> None:
    route_received_datasets()
    assert dimse_messages.create_file_meta is file_meta.create_file_meta  # type: ignore[attr-defined]
    assert dimse_messages.write_file_meta_info is file_meta.write_file_meta_info  # type: ignore[attr-defined]
    instance = "1.2.826.0.1.3680043.8.498.1"
    assert ours(CT, instance, SYNTAXES[0]) == pynetdicoms(CT, instance, SYNTAXES[0])
