"""Group commit: concurrent callers share one write, and each gets its own result or error."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest

from gateway.core.group_commit import GroupCommit


def until(condition: Callable[[], bool]) -> None:
    """Wait (at most 10 s) until ``condition()`` holds."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.001)


class HeldWrites:
    """A ``write`` that records its batches and waits at ``gate`` while it is closed."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[list[str]] = []

    def __call__(self, items: Sequence[str]) -> list[str]:
        self.gate.wait(10)
        if "bad" in items:
            raise ValueError("bad item")
        self.batches.append(list(items))
        return [f"done {item}" for item in items]


def run_together(
    group: GroupCommit[str, str], writes: HeldWrites, items: list[str]
) -> dict[str, object]:
    """Submit ``items`` on threads of their own while the first write is held: the first
    is written alone, the rest line up and share the next write."""
    results: dict[str, object] = {}

    def submit(item: str) -> None:
        try:
            results[item] = group.submit(item)
        except ValueError as exc:
            results[item] = exc

    writes.gate.clear()
    threads = [threading.Thread(target=submit, args=(item,)) for item in items]
    threads[0].start()
    until(lambda: group.writing)
    for thread in threads[1:]:
        thread.start()
    until(lambda: group.waiting == len(items) - 1)
    writes.gate.set()
    for thread in threads:
        thread.join(10)
    return results


def test_one_caller_alone_is_written_at_once() -> None:
    writes = HeldWrites()
    group = GroupCommit(writes)
    assert group.submit("a") == "done a"
    assert group.submit("b") == "done b"
    assert writes.batches == [["a"], ["b"]]
    assert (group.writes, group.items) == (2, 2)


def test_callers_arriving_during_a_write_share_the_next_one() -> None:
    writes = HeldWrites()
    group = GroupCommit(writes)
    results = run_together(group, writes, ["a", "b", "c", "d", "e"])
    assert results == {item: f"done {item}" for item in "abcde"}
    assert writes.batches[0] == ["a"]
    assert sorted(writes.batches[1]) == ["b", "c", "d", "e"]
    assert group.writes == 2


def test_a_failing_item_fails_only_its_own_caller() -> None:
    writes = HeldWrites()
    group = GroupCommit(writes)
    results = run_together(group, writes, ["a", "b", "bad", "c"])
    assert isinstance(results.pop("bad"), ValueError)
    assert results == {"a": "done a", "b": "done b", "c": "done c"}
    # the shared write failed, so its items were written again one by one
    assert sorted(map(tuple, writes.batches[1:])) == [("b",), ("c",)]


def test_no_caller_returns_before_the_write_that_holds_its_item() -> None:
    written: list[str] = []

    def write(items: Sequence[str]) -> list[None]:
        time.sleep(0.01)
        written.extend(items)
        return [None] * len(items)

    group: GroupCommit[str, None] = GroupCommit(write)
    early: list[str] = []

    def submit(item: str) -> None:
        group.submit(item)
        if item not in written:  # its own write must have finished before it returned
            early.append(item)

    threads = [threading.Thread(target=submit, args=(str(n),)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert early == []
    assert sorted(written, key=int) == [str(n) for n in range(16)]


def test_a_write_returning_the_wrong_number_of_results_is_an_error() -> None:
    group: GroupCommit[str, str] = GroupCommit(lambda items: [])
    with pytest.raises(ValueError, match="zip"):
        group.submit("a")
