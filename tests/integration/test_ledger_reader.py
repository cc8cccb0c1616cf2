"""One contract for the ledger interface, run on the xray contract (anvil) and on the stand-in.

:class:`~gateway.ledger.memory.MemoryLedger` stands in for the chain in the trust/ unit
tests; these tests make the same writes on a freshly deployed contract and on the
stand-in, and hold both to the same answers, method by method of
:class:`~gateway.ledger.base.LedgerReader`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import pytest
from eth_account import Account

from gateway.errors import XrayUnknownBatch
from gateway.ledger.base import LedgerReader
from gateway.ledger.client import XrayLedger
from gateway.ledger.memory import MemoryLedger
from gateway.ledger.types import RetireReason, retire_reason_name
from tests.conftest import Cast

pytestmark = pytest.mark.integration

RECORDER_NAME = "xray-gateway"


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


class Writer(Protocol):
    """The writes of the scenario, as the recorder makes them."""

    recorder: str

    def record(self, label: str) -> None: ...
    def supersede(self, label: str) -> None: ...
    def batch(self, root: bytes, count: int) -> None: ...
    def access_batch(self, root: bytes, count: int) -> None: ...
    def retire(self, label: str, reason: str) -> None: ...


@dataclass
class ChainWriter:
    ledger: XrayLedger  # signing as the recorder
    recorder: str

    def record(self, label: str) -> None:
        self.ledger.record_image(
            record_key=h(label), patient_key=h("patient"), digest=h(label + ":1"),
            pixel_digest=h(label + ":px1"), body_part="CHEST", modality="DX",
        )  # fmt: skip

    def supersede(self, label: str) -> None:
        self.ledger.supersede_image(
            record_key=h(label), patient_key=h("patient"), digest=h(label + ":2"),
            pixel_digest=h(label + ":px2"), body_part="CHEST", modality="DX",
        )  # fmt: skip

    def batch(self, root: bytes, count: int) -> None:
        self.ledger.record_batch(root=root, count=count)

    def access_batch(self, root: bytes, count: int) -> None:
        self.ledger.record_access_batch(root=root, count=count)

    def retire(self, label: str, reason: str) -> None:
        self.ledger.retire_image(record_key=h(label), reason=reason)


@dataclass
class MemoryWriter:
    ledger: MemoryLedger
    recorder: str

    def record(self, label: str) -> None:
        self.ledger.record_image(
            recorder=self.recorder, record_key=h(label), patient_key=h("patient"),
            digest=h(label + ":1"), pixel_digest=h(label + ":px1"), body_part="CHEST",
            modality="DX",
        )  # fmt: skip

    def supersede(self, label: str) -> None:
        self.ledger.supersede_image(
            recorder=self.recorder, record_key=h(label), patient_key=h("patient"),
            digest=h(label + ":2"), pixel_digest=h(label + ":px2"),
        )  # fmt: skip

    def batch(self, root: bytes, count: int) -> None:
        self.ledger.record_batch(recorder=self.recorder, root=root, count=count)

    def access_batch(self, root: bytes, count: int) -> None:
        self.ledger.record_access_batch(recorder=self.recorder, root=root, count=count)

    def retire(self, label: str, reason: str) -> None:
        self.ledger.retire_image(by=self.recorder, record_key=h(label), reason=reason)


@pytest.fixture(params=["anvil", "memory"])
def chain(request: pytest.FixtureRequest) -> tuple[LedgerReader, Writer]:
    """The reader and the recorder's writer, on a fresh contract or a fresh stand-in."""
    if request.param == "memory":
        memory = MemoryLedger()
        recorder = Account.create().address
        memory.grant_role("recorder", recorder, name=RECORDER_NAME)
        return memory, MemoryWriter(memory, recorder)
    xray: XrayLedger = request.getfixturevalue("xray")  # recorder named RECORDER_NAME
    cast: Cast = request.getfixturevalue("cast")
    return xray, ChainWriter(xray.as_account(cast.recorder), cast.recorder.address)


def scenario(writer: Writer) -> None:
    writer.record("a")
    writer.supersede("a")
    writer.record("b")
    writer.batch(h("root"), 3)
    writer.retire("a", "duplicate")


def test_versions_come_oldest_first_with_their_fields(chain: tuple[LedgerReader, Writer]) -> None:
    reader, writer = chain
    scenario(writer)
    recorded, superseded = reader.version_events(h("a"))
    assert (recorded.name, superseded.name) == ("ImageRecorded", "ImageSuperseded")
    assert recorded.block_number < superseded.block_number
    assert (recorded.args["digest"], superseded.args["digest"]) == (h("a:1"), h("a:2"))
    assert (superseded.args["pixelDigest"], superseded.args["version"]) == (h("a:px2"), 2)
    assert superseded.args["previousDigest"] == h("a:1")
    assert recorded.args["patientKey"] == h("patient")
    assert str(recorded.args["recorder"]).lower() == writer.recorder.lower()
    assert [e.args["digest"] for e in reader.version_events(h("b"))] == [h("b:1")]
    assert reader.version_events(h("nobody")) == []


def test_a_retirement_is_read_with_its_reason(chain: tuple[LedgerReader, Writer]) -> None:
    reader, writer = chain
    scenario(writer)
    (retired,) = reader.retirement_events(h("a"))
    assert str(retired.args["by"]).lower() == writer.recorder.lower()
    assert retired.args["reason"] == int(RetireReason.DUPLICATE)
    assert retire_reason_name(retired.args["reason"]) == "duplicate"
    assert reader.retirement_events(h("b")) == []  # recorded, never retired
    assert reader.retirement_events(h("nobody")) == []


def test_batches_blocks_and_transactions(chain: tuple[LedgerReader, Writer]) -> None:
    reader, writer = chain
    scenario(writer)
    (anchored,) = reader.events("BatchAnchored", filters={"batchId": 1})
    batch = reader.batch_of(1)
    assert (batch.root, batch.count, batch.block_number) == (h("root"), 3, anchored.block_number)
    assert batch.recorder.lower() == writer.recorder.lower()
    assert batch.anchored_at == reader.block_time(batch.block_number)
    with pytest.raises(XrayUnknownBatch):
        reader.batch_of(2)
    same_block = reader.events(
        "BatchAnchored", from_block=batch.block_number, to_block=batch.block_number
    )
    assert same_block == [anchored]
    assert reader.events("BatchAnchored", to_block=batch.block_number - 1) == []
    assert reader.head_block() >= batch.block_number
    assert reader.block_time(batch.block_number) >= reader.block_time(batch.block_number - 1)
    assert reader.has_transaction(anchored.tx_hash)
    assert not reader.has_transaction("0x" + "ee" * 32)


def test_access_batches_take_the_next_id_with_their_kind(
    chain: tuple[LedgerReader, Writer],
) -> None:
    reader, writer = chain
    scenario(writer)
    writer.access_batch(h("access-root"), 5)
    writer.batch(h("root-2"), 2)
    assert [reader.batch_kind_of(i) for i in (1, 2, 3)] == ["image", "access", "image"]
    (anchored,) = reader.events("AccessBatchAnchored")
    assert (anchored.args["batchId"], anchored.args["count"]) == (2, 5)
    assert reader.batch_of(2).root == h("access-root")
    assert [e.args["batchId"] for e in reader.events("BatchAnchored")] == [1, 3]
    with pytest.raises(XrayUnknownBatch):
        reader.batch_kind_of(4)


def test_roles_and_names(chain: tuple[LedgerReader, Writer]) -> None:
    reader, writer = chain
    granted = reader.events("RoleGranted", filters={"account": writer.recorder})
    assert reader.role_id("recorder") in [bytes(e.args["role"]) for e in granted]  # type: ignore[call-overload]
    assert reader.role_id("admin") == b"\x00" * 32
    assert reader.name_of(writer.recorder) == RECORDER_NAME
    assert reader.name_of(Account.create().address) == ""
