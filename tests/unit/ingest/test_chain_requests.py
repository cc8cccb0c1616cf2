"""The chain-request queue: the API's and CLI's writes, sent in order by the anchoring
process's loop, settled once; a caller waits, bounded (index on SQLite; a stand-in chain)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.core.merkle import InclusionProof
from gateway.errors import ChainRequestFailed, ChainRequestPending, ChainUnavailable, XrayNotOwner
from gateway.index import chain_requests as queue
from gateway.index.db import Index
from gateway.ingest.chain_requests import ChainRequestLoop, QueuedChain
from gateway.ledger.client import XrayLedger
from gateway.ledger.types import Anchor, RetireReason
from gateway.trust.grants import Grants

KEY_A, KEY_B, KEY_C, KEY_D = b"a" * 32, b"b" * 32, b"c" * 32, b"d" * 32


class _Chain:
    """The contract as the loop sends to it: retirements in the order they come; the
    first send of ``KEY_B`` finds the node down, ``KEY_C`` is not ours."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, str]] = []
        self.down_once = True

    def retire_image(self, *, record_key: bytes, reason: RetireReason | str) -> Anchor:
        if record_key == KEY_B and self.down_once:
            self.down_once = False
            raise ChainUnavailable("the node does not answer")
        if record_key == KEY_C:
            raise XrayNotOwner(())
        self.sent.append((record_key, str(reason)))
        return Anchor(f"0x{len(self.sent):064x}", 10 + len(self.sent), 0, 0)

    def retire_batched_image(self, *, record_key: bytes, batch_id: int, **_: Any) -> Anchor:
        return self.retire_image(record_key=record_key, reason=f"batch {batch_id}")


@pytest.fixture
def index(tmp_path: Path) -> Index:
    return Index(tmp_path / "index.sqlite")


def _loop(index: Index, chain: _Chain, node: str = "n1") -> ChainRequestLoop:
    grants = Grants(index=index, ledger=None, pseudonym_key=bytes(32))
    return ChainRequestLoop(
        index=index, ledger=cast(XrayLedger, chain), grants=grants, node=node, worker="w",
        poll_s=0.01,
    )  # fmt: skip


def _retire(key: bytes) -> dict[str, Any]:
    return {"record_key": key.hex(), "reason": "erased"}


def test_requests_are_sent_in_order_once_each_and_settled(index: Index) -> None:
    chain = _Chain()
    ids = [
        queue.enqueue(index, node="n1", kind="retire", payload=_retire(k), asked_by="api")
        for k in (KEY_A, KEY_B, KEY_C)
    ]
    other = queue.enqueue(index, node="n2", kind="retire", payload=_retire(KEY_A), asked_by="x")
    loop = _loop(index, chain)
    assert loop.step()  # KEY_A sent
    assert not loop.step()  # KEY_B: the node is down, put back, nothing sent
    assert queue.get(index, ids[1]).state == queue.QUEUED  # type: ignore[union-attr]
    assert loop.step() and loop.step()  # KEY_B sent now, KEY_C refused
    assert not loop.step()  # n2's request is n2's anchoring worker's
    assert chain.sent == [(KEY_A, "erased"), (KEY_B, "erased")]
    done = [queue.get(index, i) for i in ids]
    assert [(r.state, r.tx_hash, r.block_number) for r in done if r] == [
        ("done", f"0x{1:064x}", 11), ("done", f"0x{2:064x}", 12), ("failed", None, None),
    ]  # fmt: skip
    assert done[2] is not None and done[2].error_type == "XrayNotOwner"
    assert queue.get(index, other).state == queue.QUEUED  # type: ignore[union-attr]
    assert (loop.sent, loop.failed) == (2, 1)


def test_a_request_left_in_flight_by_a_dead_worker_fails_and_is_never_sent_again(
    index: Index,
) -> None:
    first = queue.enqueue(index, node="n1", kind="retire", payload=_retire(KEY_A), asked_by="a")
    assert queue.claim(index, node="n1", worker="w") is not None  # then the worker died
    assert queue.interrupted(index, node="n1") == 1
    found = queue.get(index, first)
    assert found is not None and (found.state, found.error_type) == ("failed", "Interrupted")
    chain = _Chain()
    assert not _loop(index, chain).step() and chain.sent == []


def test_a_caller_waits_for_the_outcome_and_is_told_a_refusal(index: Index) -> None:
    chain = _Chain()
    loop = _loop(index, chain)
    rung = threading.Event()
    caller = QueuedChain(index=index, node="n1", ring=rung.set, wait_s=30)

    def worker() -> None:  # the anchoring process: woken by the ring
        for _ in range(2):
            rung.wait(30)
            rung.clear()
            while loop.step():
                pass

    thread = threading.Thread(target=worker)
    thread.start()
    anchor = caller.retire_image(record_key=KEY_A, reason=RetireReason.ERASED)
    assert (anchor.tx_hash, anchor.block_number) == (f"0x{1:064x}", 11)
    with pytest.raises(ChainRequestFailed) as refused:
        caller.retire_image(record_key=KEY_C, reason="erased")
    thread.join(30)
    assert refused.value.error_type == "XrayNotOwner"


def test_a_caller_stops_waiting_at_its_bound_and_the_request_stays_queued(index: Index) -> None:
    caller = QueuedChain(index=index, node="n1", ring=lambda: None, wait_s=0.2)
    with pytest.raises(ChainRequestPending) as pending:
        caller.retire_image(record_key=KEY_A, reason="erased")
    request = queue.get(index, pending.value.request_id)
    assert request is not None and request.state == queue.QUEUED
    assert request.payload == _retire(KEY_A) and request.asked_by == "erasure"
    assert _loop(index, _Chain()).step()  # the worker, back, still sends it
    assert queue.get(index, request.id).state == queue.DONE  # type: ignore[union-attr]


OWNER_B, OWNER_C = "0x" + "B0" * 20, "0x" + "C0" * 20


class _Reader:
    """The contract as read for routing: ``KEY_A`` is owned by ``OWNER_B``; ``KEY_B`` was
    batched in batch 7 by ``OWNER_C`` and its proof never shown (``ownerOf`` is zero)."""

    def owner_of(self, record_key: bytes) -> str | None:
        return OWNER_B if record_key == KEY_A else None

    def batch_of(self, batch_id: int) -> Any:
        assert batch_id == 7
        return type("Batch", (), {"recorder": OWNER_C})()


def test_a_retirement_is_sent_by_the_worker_holding_the_records_owner_key(index: Index) -> None:
    """An erasure confirmed on n1 retires records n2 and n3 anchored: each retirement waits
    for the worker that sends with its owner's account, never n1's; n1's own request stays
    n1's."""
    reader = cast(XrayLedger, _Reader())
    caller = QueuedChain(index=index, node="n1", ring=lambda: None, reader=reader, wait_s=0.1)
    with pytest.raises(ChainRequestPending) as single:
        caller.retire_image(record_key=KEY_A, reason="erased")
    assert f"recorder {OWNER_B}'s node" in str(single.value)
    with pytest.raises(ChainRequestPending) as batched:
        caller.retire_batched_image(
            record_key=KEY_B, patient_key=KEY_C, digest=KEY_C, pixel_digest=KEY_C, batch_id=7,
            proof=InclusionProof(index=0, size=1, path=()), reason="erased",
        )  # fmt: skip
    own = queue.enqueue(index, node="n1", kind="retire", payload=_retire(KEY_D), asked_by="a")
    ids = [single.value.request_id, batched.value.request_id, own]
    assert [queue.get(index, i).recorder for i in ids] == [  # type: ignore[union-attr]
        OWNER_B.lower(), OWNER_C.lower(), None,
    ]  # fmt: skip

    chains = {node: _Chain() for node in ("n1", "n2", "n3")}
    chains["n3"].down_once = False  # KEY_B's first send goes through here
    loops = {
        node: ChainRequestLoop(
            index=index,
            ledger=cast(XrayLedger, chains[node]),
            grants=Grants(index=index, ledger=None, pseudonym_key=bytes(32)),
            node=node,
            worker=f"{node}/chain",
            recorder="0x" + account * 20,
            poll_s=0.01,
        )
        for node, account in (("n1", "A0"), ("n2", "b0"), ("n3", "C0"))
    }
    for node in ("n3", "n2", "n1"):
        assert loops[node].step() and not loops[node].step()  # one request each
    assert [queue.get(index, i).state for i in ids] == [queue.DONE] * 3  # type: ignore[union-attr]
    assert chains["n2"].sent == [(KEY_A, "erased")]
    assert chains["n3"].sent == [(KEY_B, "batch 7")]
    assert chains["n1"].sent == [(KEY_D, "erased")]


def test_a_restarted_worker_fails_only_its_own_requests_left_in_flight(index: Index) -> None:
    mine = queue.enqueue(index, node="n1", kind="retire", payload=_retire(KEY_A), asked_by="a")
    routed = queue.enqueue(index, node="n1", kind="retire", payload=_retire(KEY_B), asked_by="a",
                           recorder=OWNER_B)  # fmt: skip
    assert queue.claim(index, node="n1", worker="n1/chain", recorder="0x" + "A0" * 20)
    assert queue.claim(index, node="n2", worker="n2/chain", recorder=OWNER_B)
    assert queue.interrupted(index, node="n1", recorder="0x" + "A0" * 20) == 1
    assert [queue.get(index, i).state for i in (mine, routed)] == [  # type: ignore[union-attr]
        queue.FAILED, queue.SENDING,
    ]  # fmt: skip
