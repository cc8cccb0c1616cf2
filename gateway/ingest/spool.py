"""Durable received bytes: the only thing that must be on disk before a C-STORE is acked.

Layout under ``<data dir>/spool``::

    incoming/   pynetdicom writes each dataset here while it arrives (an IncomingFile)
    ready/      <entry id>.dcm — fsynced, renamed, directory fsynced: safe to ack

Entry ids are random; nothing from the request (UIDs, AE titles) ever becomes a path.

Each entry is bound to what was acknowledged: :class:`IncomingFile` hashes the bytes
(SHA-256 of the whole file) as they are written, so :meth:`Spool.accept` returns that
hash without reading the file again. The receiver stores it with the index row at the
ack, and the fingerprint stage compares it with the bytes it reads: a file changed
after the ack (by anyone who can write ``ready/``) is refused, never sealed.

A full disk is a refusal, never a partial file: :class:`IncomingFile` checks the room
left every MiB it writes and turns ``ENOSPC`` into "overflowed" (the partial file is
removed at once, the rest of the dataset is dropped as it arrives), and the listener
answers ``0xA700`` for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gateway import failpoints
from gateway.core.fingerprint import WrittenMeta
from gateway.core.group_commit import GroupCommit
from gateway.errors import SpoolUnavailable

log = logging.getLogger(__name__)

# How many bytes an incoming file may write between two checks of the room left.
CHECK_EVERY = 1 << 20
#: What pynetdicom writes before the File Meta of each received dataset (PS3.10 7.1).
PREAMBLE = b"\0" * 128 + b"DICM"


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename or create inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SpoolEntry:
    """One durable received instance."""

    entry_id: str
    path: Path
    size: int
    sha256: bytes  # of the whole file, as it was received


class Spool:
    """The received-instance spool.

    Parameters
    ----------
    root:
        The spool directory.
    reserve_bytes:
        Free space to keep on the spool's filesystem; below it new instances are refused
        (``0xA700``) rather than risking a partial write.
    incoming:
        The directory (under ``root``) datasets arrive in: one per listener process, so
        that a listener started again clears its own partial receptions and no other's.
    """

    def __init__(
        self, root: Path, *, reserve_bytes: int = 256 << 20, incoming: str = "incoming"
    ) -> None:
        self.root = root
        self.incoming = root / incoming
        self.ready = root / "ready"
        self.reserve_bytes = reserve_bytes
        self._overflowed: dict[str, str] = {}
        self._arriving: dict[str, IncomingFile] = {}
        self._lock = threading.Lock()
        # Renames into ready/ made together (C-STOREs on several associations) share one
        # directory fsync; each waits for an fsync that began after its own rename.
        self._ready_syncs: GroupCommit[str, None] = GroupCommit(self._sync_ready)
        for path in (self.incoming, self.ready):
            path.mkdir(parents=True, exist_ok=True)

    def free_bytes(self) -> int:
        """Free bytes on the spool's filesystem (0 when it cannot be read)."""
        try:
            return int(shutil.disk_usage(self.root).free)
        except OSError:
            return 0

    def has_room(self, needed: int = 0) -> bool:
        """True when ``needed`` more bytes fit while keeping the reserve free."""
        return self.free_bytes() - needed >= self.reserve_bytes

    def incoming_file(self) -> IncomingFile:
        """A new file in ``incoming/`` for a dataset that is arriving."""
        incoming = IncomingFile(self)
        with self._lock:
            self._arriving[incoming.name] = incoming
        return incoming

    def arriving(self, path: Path | str) -> IncomingFile | None:
        """The incoming file at ``path`` while it is received and not yet accepted."""
        with self._lock:
            return self._arriving.get(str(path))

    def _forget(self, name: str) -> IncomingFile | None:
        with self._lock:
            return self._arriving.pop(name, None)

    def overflowed(self, path: Path | str) -> str | None:
        """Why the incoming file at ``path`` was given up (full disk), or None; asks once."""
        with self._lock:
            return self._overflowed.pop(str(path), None)

    def _note_overflow(self, path: str, reason: str) -> None:
        with self._lock:
            self._overflowed[path] = reason

    def accept(self, received: Path) -> SpoolEntry:
        """Make a fully received file durable and move it into ``ready/``.

        The entry's ``sha256`` is the one its :class:`IncomingFile` took while the bytes
        were written; a file that did not arrive through one is read once to hash it.

        Raises
        ------
        SpoolUnavailable
            The file could not be made durable (disk full, I/O error, spool gone).
        """
        entry_id = uuid.uuid4().hex
        target = self.ready / f"{entry_id}.dcm"
        incoming = self._forget(str(received))
        try:
            fd = os.open(received, os.O_RDONLY)
            try:
                os.fsync(fd)
                size = os.fstat(fd).st_size
                if incoming is not None:
                    sha256 = incoming.sha256()
                else:
                    with open(fd, "rb", closefd=False) as stream:
                        sha256 = hashlib.file_digest(stream, "sha256").digest()
            finally:
                os.close(fd)
            os.rename(received, target)
            self._ready_syncs.submit(entry_id)
        except OSError as exc:
            raise SpoolUnavailable(f"cannot make the received instance durable: {exc}") from exc
        return SpoolEntry(entry_id=entry_id, path=target, size=size, sha256=sha256)

    def _sync_ready(self, entry_ids: Sequence[str]) -> list[None]:
        """One fsync of ``ready/`` for the entries renamed into it before it began."""
        fsync_dir(self.ready)
        return [None] * len(entry_ids)

    def path_of(self, entry_id: str) -> Path:
        """Where entry ``entry_id`` lives (ids are our own hex, checked anyway)."""
        if not entry_id.isalnum():
            raise ValueError("not a spool entry id")
        return self.ready / f"{entry_id}.dcm"

    def discard(self, entry_id: str) -> None:
        """Remove an entry once it is committed (or found to be a duplicate)."""
        self.path_of(entry_id).unlink(missing_ok=True)

    def clear_incoming(self) -> int:
        """Delete partial receptions left by a crash; they were never acked."""
        count = 0
        for path in self.incoming.iterdir():
            path.unlink(missing_ok=True)
            count += 1
        return count


class IncomingFile:
    """A dataset being received, written to ``incoming/`` by pynetdicom chunk after chunk.

    It has the part of the ``NamedTemporaryFile`` interface pynetdicom uses (``name``,
    ``write``, ``file.flush``, ``close``). Before every MiB it checks that the next MiB
    fits above the spool's reserve; when it does not, or a write fails (``ENOSPC``, I/O
    error), it gives up: the partial file is closed and removed at once, later chunks are
    dropped, and :meth:`Spool.overflowed` reports it so that the C-STORE is refused with
    ``0xA700``. Letting the error escape instead would abort the association and leave
    the partial file taking up the room.

    Every byte written also feeds a SHA-256 (:meth:`sha256`): the hash of what was
    received, taken while it was in memory anyway, with no second read before the ack.

    :attr:`written_meta` is the preamble and File Meta pynetdicom wrote first, when
    :mod:`gateway.ingest.file_meta` encoded it (:meth:`wrote_file_meta`): the check before
    the ack then finds the dataset's start without parsing them again.
    """

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        fd, name = tempfile.mkstemp(suffix=".dcm", dir=spool.incoming)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self.name = name
        self.file = self  # pynetdicom flushes through ``.file``
        self.overflow: str | None = None
        self._unchecked = CHECK_EVERY  # check before the first byte too
        self.written = 0
        self._sha = hashlib.sha256()
        self.written_meta: WrittenMeta | None = None

    def write(self, data: bytes) -> int:
        if self.overflow is None:
            self._unchecked += len(data)
            if self._unchecked >= CHECK_EVERY:
                self._unchecked = len(data) % CHECK_EVERY
                if not self._spool.has_room(max(CHECK_EVERY, len(data))):
                    self._give_up(
                        f"less than {self._spool.reserve_bytes >> 20} MiB reserve + 1 MiB free"
                    )
        if self.overflow is None:
            try:
                self._file.write(data)
                self._sha.update(data)
                self.written += len(data)
                failpoints.hit("receive.chunk")
            except OSError as exc:
                self._give_up(f"write failed: {exc.strerror or exc}")
        return len(data)  # a refused dataset is still read off the wire, then dropped

    def wrote_file_meta(self, encoded: bytes, syntax: str) -> None:
        """The File Meta ``encoded`` (naming ``syntax``) was just written after the
        preamble: noted as :attr:`written_meta` if nothing else was written before it."""
        if self.overflow is None and self.written == len(PREAMBLE) + len(encoded):
            self.written_meta = WrittenMeta(prefix=PREAMBLE + encoded, syntax=syntax)

    def sha256(self) -> bytes:
        """SHA-256 of every byte written so far: the whole file once it is received."""
        return self._sha.digest()

    def flush(self) -> None:
        if self.overflow is None:
            try:
                self._file.flush()
            except OSError as exc:
                self._give_up(f"write failed: {exc.strerror or exc}")

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as exc:  # the last buffered bytes did not fit
            if self.overflow is None:
                self._give_up(f"write failed: {exc.strerror or exc}")

    def discard(self) -> None:
        """Remove a reception that will never complete (its association ended mid-dataset)."""
        if self.overflow is None:
            self.overflow = "discarded"
            self._remove()

    def _give_up(self, reason: str) -> None:
        self.overflow = reason
        self._remove()
        self._spool._note_overflow(self.name, reason)
        log.error("spool full: dropping a dataset after %d bytes (%s)", self.written, reason)

    def _remove(self) -> None:
        with contextlib.suppress(OSError):  # its buffer is lost with the file
            self._file.close()
        Path(self.name).unlink(missing_ok=True)
        self._spool._forget(self.name)
