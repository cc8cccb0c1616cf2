"""The File Meta of a received dataset: the same bytes as pynetdicom's pydicom-built one,
and where the dataset after it starts, known without parsing it again."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import config
from pydicom.filewriter import write_file_meta_info as pydicom_write
from pydicom.uid import UID as PydicomUID
from pynetdicom import dimse_messages
from pynetdicom.dsutils import create_file_meta as pynetdicom_create

from gateway.core.fingerprint import WrittenMeta, dataset_offset
from gateway.ingest import file_meta
from gateway.ingest.receive import route_received_datasets
from gateway.ingest.spool import PREAMBLE, Spool

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


#: What may follow the File Meta: nothing, a few bytes, an element of group 0002 (pydicom
#: reads on), the Item Delimitation Item (pydicom stops after it), any other element.
TAILS = st.one_of(
    st.binary(max_size=20),
    st.tuples(
        st.sampled_from([(0x0002, 0x0010), (0x0002, 0x0100), (0xFFFE, 0xE00D), (0xFFFE, 0xE000),
                         (0x0008, 0x0005), (0x0008, 0x0016), (0x0001, 0x0000)]),
        st.sampled_from([b"UI", b"OB", b"UN", b"SQ", b"ES", b"\x00\x00"]),
        st.binary(max_size=24),
    ).map(lambda t: struct.pack("<HH2sH", *t[0], t[1], len(t[2])) + t[2]),
)  # fmt: skip


def _offset(data: bytes, written: WrittenMeta | None) -> object:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dataset_offset(io.BytesIO(data), written=written)
    except Exception as exc:  # the parse's refusal (or what escapes it) must be the same
        return type(exc), str(exc)


@given(
    instance=st.text("0123456789.", min_size=1, max_size=64),
    syntax=st.sampled_from(SYNTAXES),
    tail=TAILS,
    flip=st.none() | st.tuples(st.integers(0, 400), st.integers(0, 255)),
)
def test_the_dataset_starts_where_pydicom_finds_it_without_parsing_the_meta_we_wrote(
    instance: str, syntax: str, tail: bytes, flip: tuple[int, int] | None
) -> None:
    """dataset_offset given the File Meta the listener wrote answers as pydicom's parse,
    whatever follows it and whichever byte a writer changed since."""
    encoded = file_meta.encode_file_meta(
        file_meta.ReceivedFileMeta(UID(CT), UID(instance), UID(syntax))
    )
    assert encoded is not None
    written = WrittenMeta(prefix=PREAMBLE + encoded, syntax=syntax)
    data = PREAMBLE + encoded + tail
    if flip is not None and flip[0] < len(data):
        data = data[: flip[0]] + bytes([flip[1]]) + data[flip[0] + 1 :]
    assert _offset(data, written) == _offset(data, None)


def test_an_incoming_file_notes_the_file_meta_written_at_its_head(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    plain, hostile = spool.incoming_file(), spool.incoming_file()
    for incoming, instance in ((plain, "1.2.3.4"), (hostile, "1.2.3 4")):
        incoming.write(PREAMBLE[:128])
        incoming.write(PREAMBLE[128:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = file_meta.create_file_meta(
                sop_class_uid=UID(CT), sop_instance_uid=UID(instance),
                transfer_syntax=UID(SYNTAXES[1]),
            )  # fmt: skip
            file_meta.write_file_meta_info(incoming, meta)
        incoming.write(b"\x08\x00\x16\x00UI\x02\x001\x00")
        incoming.close()
    assert plain.written_meta is not None and plain.written_meta.syntax == SYNTAXES[1]
    assert Path(plain.name).read_bytes().startswith(plain.written_meta.prefix)
    with Path(plain.name).open("rb") as stream:
        found = dataset_offset(stream, written=plain.written_meta)
    assert found == (len(plain.written_meta.prefix), SYNTAXES[1])
    assert hostile.written_meta is None  # pydicom wrote it: parsed as ever
    assert spool.arriving(plain.name) is plain
