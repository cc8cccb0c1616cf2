"""Group commit: what several threads hand in together is made durable in one write.

The ack path's durable steps (the spool directory's ``fsync``, the index row's commit)
cost a disk flush each. When C-STOREs arrive on several associations at once, their
threads would queue one behind the other for a flush each. With :class:`GroupCommit`
the first thread to arrive writes at once (one association alone waits for nothing
more than before); threads arriving while it writes line up, and the next of them
writes everything that lined up in one go. Each caller returns only once the write
that holds its own item has finished, so the rule "never ack before durable" holds item
by item. No thread of its own: a caller is the writer (leader/follower).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Slot(Generic[Item, Result]):
    """One caller's item and, once written, its result or error."""

    item: Item
    done: bool = False
    result: Result | None = None
    error: BaseException | None = None


class GroupCommit(Generic[Item, Result]):
    """Writes items handed in by concurrent callers in batches, one write per batch.

    Parameters
    ----------
    write:
        Makes a batch durable and returns one result per item, in order (called by one
        caller at a time). If it raises for a batch of several, each item of that batch
        is written again on its own, so that an error is only ever the caller's own.
    """

    def __init__(self, write: Callable[[Sequence[Item]], Sequence[Result]]) -> None:
        self._write = write
        self._cond = threading.Condition()
        self._waiting: list[_Slot[Item, Result]] = []
        self._writing = False
        #: How many writes and how many items so far (the batches' mean size).
        self.writes = 0
        self.items = 0

    @property
    def writing(self) -> bool:
        """Whether a caller is writing a batch now."""
        with self._cond:
            return self._writing

    @property
    def waiting(self) -> int:
        """How many items are lined up for the next write."""
        with self._cond:
            return len(self._waiting)

    def submit(self, item: Item) -> Result:
        """Hand in ``item``; returns its result once the write that holds it is done.

        Raises
        ------
        BaseException
            Whatever ``write`` raised for this item, written on its own.
        """
        slot: _Slot[Item, Result] = _Slot(item)
        with self._cond:
            self._waiting.append(slot)
            while not slot.done:
                if self._writing:
                    self._cond.wait()
                    continue
                batch, self._waiting = self._waiting, []
                self._writing = True
                self._cond.release()
                try:
                    self._write_batch(batch)
                finally:
                    self._cond.acquire()
                    self._writing = False
                    self._cond.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]  # set with done (a Result)

    def _write_batch(self, batch: list[_Slot[Item, Result]]) -> None:
        """Write ``batch`` at once, or item by item if that fails; marks every slot done."""
        self.writes += 1
        self.items += len(batch)
        try:  # zip's strict check: a write owes one result per item
            written = list(zip(batch, self._write([slot.item for slot in batch]), strict=True))
        except BaseException as exc:
            if len(batch) == 1:
                batch[0].error, batch[0].done = exc, True
                return
            for slot in batch:  # one bad item must not fail the others
                self._write_batch([slot])
            return
        for slot, result in written:
            slot.result, slot.done = result, True
