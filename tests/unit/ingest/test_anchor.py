"""The batching logic: when a batch is cut (size, window), and what the index keeps of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.merkle import MerkleTree
from gateway.index.db import Index
from gateway.ingest.anchor import Gatherer, leaf_of
from gateway.ingest.stages import AnchorItem


def test_a_batch_is_cut_at_max_size_before_the_window_ends() -> None:
    gather = Gatherer(max_size=3, window_s=10.0)
    gather.offer([1, 2], now=0.0)
    assert gather.take(now=0.1) is None  # two of three, window not over
    gather.offer([1, 2, 3, 4, 5, 6, 7], now=0.2)
    assert gather.take(now=0.2) == [1, 2, 3]
    assert gather.take(now=0.2) == [4, 5, 6]
    assert gather.take(now=0.2) is None  # 7 waits for company or for its window
    assert len(gather) == 1


def test_a_partial_batch_is_cut_when_its_oldest_member_has_waited_the_window() -> None:
    gather = Gatherer(max_size=256, window_s=0.2)
    gather.offer([10], now=5.0)
    gather.offer([10, 11, 12], now=5.15)  # later arrivals do not restart the window
    assert gather.take(now=5.19) is None
    assert gather.wait_s(now=5.19) == pytest.approx(0.01)
    assert gather.take(now=5.2) == [10, 11, 12]
    assert gather.wait_s(now=5.2) is None and gather.take(now=9.0) is None


def test_rows_no_longer_offered_are_forgotten_and_order_is_kept() -> None:
    gather = Gatherer(max_size=10, window_s=1.0)
    gather.offer([3, 1, 2], now=0.0)
    gather.offer([3, 2], now=0.5)  # row 1 left the anchor stage (e.g. taken elsewhere)
    assert gather.take(now=1.0) == [3, 2]


def test_window_zero_cuts_at_once_and_max_one_is_one_by_one() -> None:
    assert Gatherer(max_size=50, window_s=0.0).take(now=0.0) is None
    at_once = Gatherer(max_size=50, window_s=0.0)
    at_once.offer([1, 2], now=0.0)
    assert at_once.take(now=0.0) == [1, 2]
    single = Gatherer(max_size=1, window_s=60.0)
    single.offer([1, 2], now=0.0)
    assert (single.take(now=0.0), single.take(now=0.0)) == ([1], [2])
    with pytest.raises(ValueError):
        Gatherer(max_size=0, window_s=1.0)


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
