"""An object store in memory: the ``ObjectStore`` contract without a disk, for unit tests."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import BinaryIO

from gateway.errors import ObjectNotFound, StoreError
from gateway.store.base import CHUNK_SIZE, ExactSource, validate_name, validate_prefix


class MemoryStore:
    """Objects held whole in a dict, with the filesystem and S3 stores' rules.

    Names are checked, a put reads exactly ``length`` bytes or stores nothing, and an
    object is never overwritten (except by ``replace=True``), as ``ObjectStore`` says.

    Attributes
    ----------
    outage:
        Set it to an exception (a ``StoreUnavailable``) and every call raises it: the
        backend is down until it is set back to None.
    """

    def __init__(self) -> None:
        self.outage: Exception | None = None
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._objects)} objects)"

    def put(self, name: str, source: BinaryIO, *, length: int, replace: bool = False) -> None:
        """Store ``length`` bytes of ``source`` under ``name`` (see ``ObjectStore``)."""
        validate_name(name)
        self._up()
        if not replace and self._idempotent_hit(name, length):
            return
        reader = ExactSource(source, length)
        data = bytearray()
        while chunk := reader.read(CHUNK_SIZE):
            data += chunk
        reader.finish()
        with self._lock:
            self._objects[name] = bytes(data)

    def open(self, name: str) -> BinaryIO:
        """A reader of the object; the caller closes it."""
        validate_name(name)
        self._up()
        with self._lock:
            data = self._objects.get(name)
        if data is None:
            raise ObjectNotFound(f"no object {name}")
        return io.BytesIO(data)

    def exists(self, name: str) -> bool:
        """True when an object is stored under ``name``."""
        return self.size(name) is not None

    def size(self, name: str) -> int | None:
        """The object's length, or None when absent."""
        validate_name(name)
        self._up()
        with self._lock:
            data = self._objects.get(name)
        return None if data is None else len(data)

    def delete(self, name: str) -> None:
        """Remove the object if present."""
        validate_name(name)
        self._up()
        with self._lock:
            self._objects.pop(name, None)

    def names(self, prefix: str = "") -> Iterator[str]:
        """Stored names starting with ``prefix``, sorted."""
        validate_prefix(prefix)
        self._up()
        with self._lock:
            names = sorted(name for name in self._objects if name.startswith(prefix))
        yield from names

    def check(self) -> None:
        """Raise the outage, if one is set."""
        self._up()

    def _up(self) -> None:
        if self.outage is not None:
            raise self.outage

    def _idempotent_hit(self, name: str, length: int) -> bool:
        with self._lock:
            existing = self._objects.get(name)
        if existing is None:
            return False
        if len(existing) != length:
            raise StoreError(
                f"{name} already holds {len(existing)} bytes, not {length}: objects are never "
                "overwritten"
            )
        return True
