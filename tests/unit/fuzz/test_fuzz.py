"""The fuzz harness itself: a reproducible stream, true length fields, no false findings."""

from __future__ import annotations

import random
import struct
from pathlib import Path

from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from gateway.fuzz import pdus
from gateway.fuzz.campaign import Inputs
from gateway.fuzz.datasets import StoreInput, corpus
from gateway.fuzz.mutate import mutate
from gateway.fuzz.target import Ledger, leftover_count, leftovers
from gateway.fuzz.wire import Outcome, _Reader
from gateway.index.db import Index


def _raw(kind_item: tuple[str, object]) -> bytes:
    _kind, item = kind_item
    if isinstance(item, pdus.RawInput):
        return item.before + item.associate + b"".join(item.after) + bytes([item.release])
    assert isinstance(item, StoreInput)
    return item.part10


def test_the_same_seed_gives_the_same_inputs_and_another_seed_others(tmp_path: Path) -> None:
    sources = corpus(tmp_path)
    first = Inputs(seed=7, called="XRAYGW", sources=sources)
    again = Inputs(seed=7, called="XRAYGW", sources=corpus(tmp_path))
    other = Inputs(seed=8, called="XRAYGW", sources=sources)
    a = [_raw(first.make(i)) for i in range(200)]
    assert {first.make(i)[0] for i in range(200)} == {
        "random_bytes",
        "association",
        "p_data",
        "c_store",
    }
    assert a == [_raw(again.make(i)) for i in range(200)]
    assert a != [_raw(other.make(i)) for i in range(200)]
    assert _raw(first.make(150)) == a[150]  # one input replays alone (--only)


def test_length_fields_are_where_the_lengths_are() -> None:
    rq = pdus.associate_rq(calling="FUZZSCU", called="XRAYGW", requested=pdus.valid_contexts())
    fields = pdus.length_fields(rq)
    (pdu_length,) = struct.unpack(">L", rq[2:6])
    assert pdu_length == len(rq) - 6
    items = fields[1:]
    assert len(items) >= 1 + 3 * 3 + 3  # app context, 3 contexts with 2-3 sub-items, user info
    for field in items:
        (length,) = struct.unpack(">H", rq[field.offset : field.offset + 2])
        assert field.offset + 2 + length <= len(rq)
        assert rq[field.offset - 2] in (0x10, 0x20, 0x30, 0x40, 0x50, 0x51, 0x52)
    for pdu in pdus.store_message(3, sop_class=pdus.CT_IMAGE_STORAGE, sop_instance="2.25.1",
                                  dataset=b"\0" * 1000, max_pdu=256):  # fmt: skip
        pdv = pdus.length_fields(pdu)[1]
        (length,) = struct.unpack(">L", pdu[pdv.offset : pdv.offset + 4])
        assert pdv.offset + 4 + length == len(pdu)


def test_mutations_are_seeded_and_change_the_bytes() -> None:
    data = bytes(range(256)) * 8
    one = mutate(data, random.Random("s:1"))
    assert one == mutate(data, random.Random("s:1"))
    assert sum(mutate(data, random.Random(f"s:{i}"))[0] != data for i in range(50)) >= 45


def _response(uid: str, status: int) -> bytes:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 1
    primitive.AffectedSOPClassUID = pdus.CT_IMAGE_STORAGE
    primitive.AffectedSOPInstanceUID = uid
    primitive.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    out = b""
    for p in message.encode_msg(1, 32):  # split into several command fragments
        pdu = P_DATA_TF()
        pdu.from_primitive(p)
        out += pdu.encode()
    return out


def test_the_reader_tells_acked_from_refused_across_fragments() -> None:
    outcome = Outcome()
    reader = _Reader(outcome)
    stream = _response("2.25.1", 0x0000) + _response("2.25.2", 0xC000) + pdus.abort(2, 1)
    for i in range(0, len(stream), 7):  # bytes arrive in odd pieces
        reader.feed(stream[i : i + 7])
    assert outcome.acked == {"2.25.1"}
    assert outcome.refused == {"2.25.2"}
    assert outcome.events == ["dimse:0x0000", "dimse:0xC000", "A-ABORT(2,1)"]
    assert reader.conclusive


def _gateway_dir(tmp_path: Path) -> tuple[Path, Index]:
    for sub in ("spool/incoming", "spool/ready", "sealed", "objects"):
        (tmp_path / sub).mkdir(parents=True)
    return tmp_path, Index(tmp_path / "index.sqlite")


def _row(index: Index, data_dir: Path, uid: str, entry: str, *, stage: str) -> int:
    row = index.add_received(entry_id=entry, sop_instance_uid=uid, sop_class_uid="1.2",
                             calling_aet="FUZZSCU", size=1)  # fmt: skip
    if stage == "failed":
        index.park(row, "fingerprint: DatasetUnreadable: spooled instance no longer parses")
    else:
        index.update(row, stage=stage, object_name=f"{entry}/{entry}")
    if stage != "committed":
        (data_dir / "spool" / "ready" / f"{entry}.dcm").write_bytes(b"x")
    else:
        (data_dir / "objects" / entry[:2] / entry).mkdir(parents=True)
        (data_dir / "objects" / entry[:2] / entry / entry).write_bytes(b"sealed")
    return row


def test_a_clean_run_has_no_leftovers_and_in_flight_rows_are_not_counted_as_leftovers(
    tmp_path: Path,
) -> None:
    data_dir, index = _gateway_dir(tmp_path)
    ledger = Ledger(sent={"2.25.1": 0, "2.25.2": 1, "2.25.3": 2}, acked={"2.25.1"},
                    refused={"2.25.3"})  # fmt: skip
    before = _row(index, data_dir, "1.2.3", "ff66", stage="committed")  # not the campaign's
    _row(index, data_dir, "2.25.1", "aa11", stage="committed")
    found = leftovers(data_dir, ledger, after_row=before)
    assert leftover_count(found) == 0, found
    assert leftovers(data_dir, ledger)["unknown_rows"] == 1  # were it held against the ledger
    ledger.acked.add("2.25.2")
    _row(index, data_dir, "2.25.2", "bb22", stage="anchor")  # acked, still in the pipeline
    found = leftovers(data_dir, ledger, after_row=before)
    assert found["unsettled"] == 1 and found["orphan_spool_files"] == 0
    index.close()


def test_every_kind_of_leftover_is_found(tmp_path: Path) -> None:
    data_dir, index = _gateway_dir(tmp_path)
    ledger = Ledger(sent={"2.25.1": 0, "2.25.2": 1, "2.25.4": 3}, acked={"2.25.1", "2.25.4"},
                    refused={"2.25.2"})  # fmt: skip
    _row(index, data_dir, "2.25.1", "aa11", stage="failed")  # acked, parked at fingerprint
    _row(index, data_dir, "2.25.2", "bb22", stage="committed")  # refused, yet recorded
    _row(index, data_dir, "2.25.9", "cc33", stage="committed")  # never sent
    (data_dir / "spool" / "incoming" / "tmp1.dcm").write_bytes(b"partial")
    (data_dir / "spool" / "ready" / "dd44.dcm").write_bytes(b"no row")
    (data_dir / "sealed" / "ee55.seal").write_bytes(b"no row")
    found = leftovers(data_dir, ledger)
    assert found["acked_then_parked"] == 1
    assert found["acked_then_parked_examples"][0]["input"] == 0
    assert found["refused_but_recorded"] == 1
    assert found["unknown_rows"] == 1
    assert found["acked_but_missing"] == [3]
    assert found["incoming_files"] == 1
    assert found["orphan_spool_files"] == 1
    assert found["orphan_sealed"] == 1
    assert leftover_count(found) == 7
    index.close()
