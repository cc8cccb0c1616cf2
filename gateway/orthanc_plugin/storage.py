"""Orthanc's files on disk, in Orthanc's own layout: ``<storage>/ab/cd/<uuid>``.

The same layout as Orthanc's built-in filesystem storage, so an Orthanc started without
the plugin reads the same directory (and tampering is done, and detected, on the files
an administrator would find there).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class FileArea:
    """Create, read and remove attachments under ``root`` (Orthanc's ``StorageDirectory``).

    Parameters
    ----------
    root:
        The storage directory.
    sync:
        fsync each new file before ``create`` returns, as Orthanc's ``SyncStorageArea``
        (default true) does: Orthanc answers a store only after its file is durable.
    """

    def __init__(self, root: Path, *, sync: bool = True) -> None:
        self.root = root
        self.sync = sync

    def path(self, uuid: str) -> Path:
        """Where attachment ``uuid`` lives; refuses anything that is not an Orthanc UUID."""
        if not UUID.fullmatch(uuid):
            raise ValueError(f"not an Orthanc attachment UUID: {uuid!r}")
        return self.root / uuid[0:2] / uuid[2:4] / uuid

    def write(self, uuid: str, data: bytes) -> None:
        path = self.path(uuid)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, uuid: str) -> bytes:
        with open(self.path(uuid), "rb", buffering=0) as stream:
            return stream.read()

    def remove(self, uuid: str) -> None:
        path = self.path(uuid)
        path.unlink(missing_ok=True)
        # Orthanc prunes the two directory levels when they become empty
        for parent in (path.parent, path.parent.parent):
            try:
                parent.rmdir()
            except OSError:
                break
