"""The chain-request queue: the API's and CLI's writes, sent in order by the anchoring
process's loop, settled once; a caller waits, bounded (index on SQLite; a stand-in chain)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.errors import ChainRequestFailed, ChainRequestPending, ChainUnavailable, XrayNotOwner
from gateway.index import chain_requests as queue
from gateway.index.db import Index
from gateway.ingest.chain_requests import ChainRequestLoop, QueuedChain
from gateway.ledger.client import XrayLedger
from gateway.ledger.types import Anchor, RetireReason
from gateway.trust.grants import Grants

KEY_A, KEY_B, KEY_C = b"a" * 32, b"b" * 32, b"c" * 32


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
