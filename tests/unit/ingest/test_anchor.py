"""The batching logic: when a batch is cut (size, latency limit, quiet end), and what the index keeps."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import pytest

from gateway.core.keys import Kek, Keyring
from gateway.core.merkle import MerkleTree
from gateway.index.db import Index, PendingBatch
from gateway.ingest.anchor import Gatherer, leaf_of
from gateway.ingest.pipeline import Pipeline
from gateway.ingest.stages import AnchorItem, AnchorResult
from gateway.store.memory import MemoryStore
from tests.unit.ingest.conftest import Line


def test_a_batch_is_cut_at_max_size_before_any_time_runs_out() -> None:
    gather = Gatherer(max_size=3, quiet_s=10.0, max_delay_s=10.0)
    gather.offer([1, 2], now=0.0)
    assert gather.take(now=0.1) is None  # two of three, nothing has run out
    gather.offer([1, 2, 3, 4, 5, 6, 7], now=0.2, streaming=True)
    assert gather.take(now=0.2) == [1, 2, 3]
    assert gather.take(now=0.2) == [4, 5, 6]
    assert gather.take(now=0.2) is None  # 7 waits for company or for its time
    assert len(gather) == 1


def test_a_batch_keeps_filling_while_images_are_on_their_way() -> None:
    """The seed workload's shape: rows reach the anchor stage one by one, 50 ms apart,
    for 1.5 s; a fixed 200 ms window would cut eight batches, the adaptive one cuts one."""
    gather = Gatherer(max_size=256, quiet_s=0.2, max_delay_s=2.0)
    arrived: list[int] = []
    for i in range(30):
        now = 10.0 + 0.05 * i
        arrived.append(i)
        gather.offer(arrived, now, streaming=i < 29)  # the 30th is the last on its way
        assert gather.take(now) is None  # none has waited 2 s, more are coming
        if i == 28:  # between two arrivals, with more on the way: no quiet end
            assert gather.wait_s(now) == pytest.approx(2.0 - 0.05 * 28)
    last = 10.0 + 0.05 * 29
    assert gather.wait_s(last) == pytest.approx(0.2)  # stream over: the quiet window
    assert gather.take(last + 0.19) is None
    assert gather.take(last + 0.21) == list(range(30))  # one batch of all thirty
    assert gather.take(last + 5.0) is None and gather.wait_s(last + 5.0) is None


def test_the_latency_limit_cuts_a_batch_while_images_still_stream_in() -> None:
    gather = Gatherer(max_size=256, quiet_s=0.2, max_delay_s=2.0)
    gather.offer([1], now=0.0, streaming=True)
    gather.offer([1, 2, 3], now=1.5, streaming=True)  # later arrivals do not restart it
    assert gather.take(now=1.99) is None
    assert gather.wait_s(now=1.99) == pytest.approx(0.01)
    assert gather.take(now=2.0) == [1, 2, 3]  # the oldest has waited the limit
    gather.offer([4], now=2.1, streaming=True)  # the next batch is timed from its own oldest
    assert gather.take(now=4.09) is None
    assert gather.take(now=4.1) == [4]


def test_a_quiet_end_waits_for_the_last_arrival_not_the_first() -> None:
    gather = Gatherer(max_size=256, quiet_s=0.2, max_delay_s=2.0)
    gather.offer([1], now=0.0)  # nothing on its way: cut 0.2 s on, unless another joins
    gather.offer([1, 2], now=0.15)  # one more joined: quiet again from here
    assert gather.take(now=0.3) is None
    assert gather.take(now=0.36) == [1, 2]


def test_rows_no_longer_offered_are_forgotten_and_order_is_kept() -> None:
    gather = Gatherer(max_size=10, quiet_s=1.0, max_delay_s=1.0)
    gather.offer([3, 1, 2], now=0.0)
    gather.offer([3, 2], now=0.5)  # row 1 left the anchor stage (e.g. taken elsewhere)
    assert gather.take(now=1.0) == [3, 2]


def test_a_limit_at_or_below_the_quiet_window_is_a_fixed_window() -> None:
    fixed = Gatherer(max_size=256, quiet_s=0.2, max_delay_s=0.2)
    fixed.offer([1], now=0.0, streaming=True)
    fixed.offer([1, 2], now=0.15, streaming=True)
    assert fixed.take(now=0.19) is None
    assert fixed.take(now=0.2) == [1, 2]  # streaming or not: 0.2 s after the oldest
    fixed.offer([3], now=0.3)
    fixed.offer([3, 4], now=0.45)
    assert fixed.take(now=0.5) == [3, 4]  # not 0.2 s after the newest


def test_no_wait_cuts_at_once_and_max_one_is_one_by_one() -> None:
    assert Gatherer(max_size=50, quiet_s=0.0, max_delay_s=0.0).take(now=0.0) is None
    at_once = Gatherer(max_size=50, quiet_s=0.2, max_delay_s=0.0)
    at_once.offer([1, 2], now=0.0, streaming=True)
    assert at_once.take(now=0.0) == [1, 2]
    single = Gatherer(max_size=1, quiet_s=60.0, max_delay_s=60.0)
    single.offer([1, 2], now=0.0)
    assert (single.take(now=0.0), single.take(now=0.0)) == ([1], [2])
    with pytest.raises(ValueError):
        Gatherer(max_size=0, quiet_s=1.0, max_delay_s=1.0)


def _item(i: int) -> AnchorItem:
    return AnchorItem(
        record_key=bytes([i]) * 32, patient_key=b"p" * 32, digest=bytes([i + 1]) * 32,
        pixel_digest=bytes([i + 2]) * 32, body_part="CHEST", modality="CT",
    )  # fmt: skip


def _rows(index: Index, n: int) -> list[int]:
    ids = []
    for i in range(n):
        row_id = index.add_received(
            entry_id=f"e{i}", sop_instance_uid=f"1.2.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            calling_aet="CT", size=1,
        )  # fmt: skip
        index.update(row_id, stage="anchor", version=1)
        ids.append(row_id)
    return ids


def test_an_open_batch_survives_a_restart_and_holds_its_rows(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    ids = _rows(index, 5)
    root = MerkleTree([leaf_of(_item(i)) for i in range(3)]).root
    batch = index.open_batch(root=root, members=ids[:3])
    assert [r.id for r in index.due_unbatched("anchor", limit=10)] == ids[3:]
    with pytest.raises(ValueError, match="already in an open batch"):
        index.open_batch(root=b"x" * 32, members=[ids[2], ids[3]])
    index.fail_batch(batch.id, "anchor: chain down", retry_in=60)
    assert index.open_batches() == []  # not due before its retry time
    index.close()

    reopened = Index(tmp_path / "index.sqlite")
    (again,) = reopened.open_batches(due_only=False)
    assert (again.root, again.count, again.members, again.attempts) == (root, 3, tuple(ids[:3]), 1)
    assert reopened.get(ids[0]).last_error == "anchor: chain down"
    reopened.close_batch(
        again.id, batch_id=7, tx_hash="0xab", block_number=9,
        rows={row_id: {"stage": "forward", "batch_id": 7, "leaf_index": i}
              for i, row_id in enumerate(ids[:3])},
    )  # fmt: skip
    assert reopened.open_batches(due_only=False) == []
    assert [(r.stage, r.batch_id, r.leaf_index) for r in map(reopened.get, ids[:3])] == [
        ("forward", 7, 0), ("forward", 7, 1), ("forward", 7, 2),
    ]  # fmt: skip
    # rows of a landed batch are free again only in the sense of no longer being at anchor
    assert [r.id for r in reopened.due_unbatched("anchor", limit=10)] == ids[3:]


# -- the batch thread's side: is anything on its way? ------------------------------------


class _HeldStore(MemoryStore):
    """A store whose puts wait until the test lets them through."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def put(self, name: str, source: BinaryIO, *, length: int, replace: bool = False) -> None:
        self.entered.set()
        self.release.wait(60)
        super().put(name, source, length=length, replace=replace)


class _Watched(Gatherer):
    """The real cutting rule, with every decision kept: (rows offered, streaming, cut)."""

    def __init__(self) -> None:
        super().__init__(max_size=256, quiet_s=0.0, max_delay_s=600.0)
        self.decisions: list[tuple[list[int], bool, list[int] | None]] = []
        self.decided = threading.Condition()
        self._offered: tuple[list[int], bool] = ([], False)

    def offer(self, row_ids: Sequence[int], now: float, *, streaming: bool = False) -> None:
        super().offer(row_ids, now, streaming=streaming)
        self._offered = (list(row_ids), streaming)

    def take(self, now: float) -> list[int] | None:
        cut = super().take(now)
        with self.decided:
            self.decisions.append((*self._offered, cut))
            self.decided.notify_all()
        return cut


class _MemoryBatcher:
    """Batches persisted in the real index, landed on a made-up chain."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.gather = _Watched()
        self.landed: list[tuple[int, ...]] = []

    def gatherer(self) -> Gatherer:
        return self.gather

    def open(self, members: Sequence[tuple[int, AnchorItem]]) -> PendingBatch:
        tree = MerkleTree([leaf_of(item) for _, item in members])
        return self.index.open_batch(root=tree.root, members=[row_id for row_id, _ in members])

    def land(self, batch: PendingBatch, items: Sequence[AnchorItem]) -> list[AnchorResult]:
        self.landed.append(batch.members)
        n = len(self.landed)
        return [
            AnchorResult(tx_hash=f"0x{n:064x}", block_number=n, block_time=n, recorder="0x1",
                         batch_id=n, leaf_index=i, proof=b"")
            for i in range(len(items))
        ]  # fmt: skip


def test_the_batch_thread_waits_for_an_image_still_on_its_way(
    line: Line, two_images: list[bytes], tmp_path: Path
) -> None:
    """Three rows wait at the anchor stage while a fourth is held in ``put``: with no quiet
    window, a batch thread blind to the fourth would cut three and then one."""
    waiting = [line.at_anchor(n) for n in (1, 2, 3)]
    on_its_way = line.acked(two_images[0])
    store = _HeldStore()
    batcher = _MemoryBatcher(line.index)
    pipeline = Pipeline(
        index=line.index, spool=line.spool, store=store,
        keyring=Keyring.of(Kek("kek-20261205-aaaaaaaa", bytes(range(32)))),
        pseudonym_key=b"k" * 32, anchorer=line.anchorer, forwarder=line.forwarder,
        sealed_dir=tmp_path / "sealed-batch", workers=1, batcher=batcher,
    )  # fmt: skip
    pipeline.start()
    try:
        assert store.entered.wait(60)  # the fourth row is in put, and stays there
        with batcher.gather.decided:
            assert batcher.gather.decided.wait_for(
                lambda: any(offered == waiting for offered, _, _ in batcher.gather.decisions), 60
            )
            first = next(d for d in batcher.gather.decisions if d[0] == waiting)
        assert first == (waiting, True, None)  # streaming: no cut
        store.release.set()
        deadline = time.monotonic() + 60
        while not pipeline.idle() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        store.release.set()
        pipeline.stop()
    assert batcher.landed == [(*waiting, on_its_way)]  # one batch of four
    assert [line.index.get(i).stage for i in (*waiting, on_its_way)] == ["committed"] * 4
