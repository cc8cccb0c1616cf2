"""Durable received bytes: the only thing that must be on disk before a C-STORE is acked.

Layout under ``<data dir>/spool``::

    incoming/   pynetdicom writes each dataset here while it arrives (tempfile.tempdir)
    ready/      <entry id>.dcm — fsynced, renamed, directory fsynced: safe to ack

Entry ids are random; nothing from the request (UIDs, AE titles) ever becomes a path.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import SpoolUnavailable


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


class Spool:
    """The received-instance spool.

    Parameters
    ----------
    root:
        The spool directory.
    reserve_bytes:
        Free space to keep on the spool's filesystem; below it new instances are refused
        (``0xA700``) rather than risking a partial write.
    """

    def __init__(self, root: Path, *, reserve_bytes: int = 256 << 20) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.ready = root / "ready"
        self.reserve_bytes = reserve_bytes
        for path in (self.incoming, self.ready):
            path.mkdir(parents=True, exist_ok=True)

    def has_room(self, needed: int = 0) -> bool:
        """True when ``needed`` more bytes fit while keeping the reserve free."""
        try:
            free = shutil.disk_usage(self.root).free
        except OSError:
            return False
        return free - needed >= self.reserve_bytes

    def accept(self, received: Path) -> SpoolEntry:
        """Make a fully received file durable and move it into ``ready/``.

        Raises
        ------
        SpoolUnavailable
            The file could not be made durable (disk full, I/O error, spool gone).
        """
        entry_id = uuid.uuid4().hex
        target = self.ready / f"{entry_id}.dcm"
        try:
            fd = os.open(received, os.O_RDONLY)
            try:
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            os.rename(received, target)
            fsync_dir(self.ready)
        except OSError as exc:
            raise SpoolUnavailable(f"cannot make the received instance durable: {exc}") from exc
        return SpoolEntry(entry_id=entry_id, path=target, size=size)

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
