"""The object store interface, object-name rules, and the URL that picks a backend."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from gateway.errors import StoreError

# `<hex record_key>/<hex digest>`: both SHA-256 sized, lowercase only, so that one object
# has exactly one spelling and nothing but hex (no PHI, no `..`, no `/` tricks) ever
# reaches a file path or an S3 key.
NAME_RE = re.compile(r"[0-9a-f]{64}/[0-9a-f]{64}")
_PREFIX_RE = re.compile(r"[0-9a-f]{0,64}|[0-9a-f]{64}/[0-9a-f]{0,64}")

CHUNK_SIZE = 1024 * 1024


@runtime_checkable
class ObjectStore(Protocol):
    """Immutable, content-addressed objects named ``<hex record_key>/<hex digest>``."""

    def put(self, name: str, source: BinaryIO, *, length: int, replace: bool = False) -> None:
        """Store exactly ``length`` bytes read from ``source`` under ``name``.

        Durable when it returns. Idempotent: if ``name`` already holds ``length`` bytes,
        nothing is read and nothing is written. Objects are never overwritten, except by
        ``replace=True``, which only KEK rotation uses: it swaps an object's header for
        one that wraps the same data key under the new KEK (same plaintext, same name).

        Raises
        ------
        ValueError
            ``name`` is not a valid object name.
        StoreUnavailable
            The backend is down or too slow; nothing is known to be stored, retry later.
        StoreError
            ``source`` held fewer or more than ``length`` bytes, or ``name`` already holds
            an object of another length.
        OSError
            Whatever ``source.read`` raised, unchanged: the source's failure is not the
            store's.
        """
        ...

    def open(self, name: str) -> BinaryIO:
        """A streaming reader for the object; the caller closes it.

        Raises
        ------
        ObjectNotFound
            Nothing is stored under ``name``.
        """
        ...

    def exists(self, name: str) -> bool:
        """True when an object is stored under ``name``."""
        ...

    def size(self, name: str) -> int | None:
        """The object's length in bytes, or None when nothing is stored under ``name``."""
        ...

    def delete(self, name: str) -> None:
        """Remove the object if present (tests and repair only; the pipeline never deletes)."""
        ...

    def names(self, prefix: str = "") -> Iterator[str]:
        """Every stored object name that starts with ``prefix``, in lexicographic order."""
        ...

    def check(self) -> None:
        """Return when the backend can serve requests (for readiness probes).

        Raises
        ------
        StoreUnavailable
            The backend cannot be reached or did not answer in time.
        StoreError
            The backend answers but refuses us (credentials, permissions).
        """
        ...


@runtime_checkable
class AdoptingStore(Protocol):
    """A store that can take a finished file by renaming it (the filesystem store)."""

    def adopt(self, name: str, path: Path, *, length: int) -> bool:
        """Store the file ``path`` (``length`` bytes) under ``name`` by moving it; False,
        with ``path`` untouched, when it cannot be moved there (put a copy instead)."""
        ...


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid object name, else raise.

    Parameters
    ----------
    name:
        ``<64 lowercase hex>/<64 lowercase hex>``: the record key, then the digest.

    Raises
    ------
    ValueError
        Anything else. A bad name is a bug in the caller, not a store condition, so it is
        not a :class:`~gateway.errors.StoreError`. The message never echoes the name, which
        could hold PHI.
    """
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise ValueError("object names are <64 lowercase hex>/<64 lowercase hex>")
    return name


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if some valid object name could start with it, else raise ValueError."""
    if not isinstance(prefix, str) or _PREFIX_RE.fullmatch(prefix) is None:
        raise ValueError("a name prefix is lowercase hex, optionally <64 hex>/ and more hex")
    return prefix


class ExactSource:
    """Reads exactly ``length`` bytes from the caller's stream, until revoked.

    Both backends read through it so that a source that is shorter or longer than
    announced fails the put before the object becomes visible: names are addressed by
    the plaintext digest, so the store cannot tell a truncated ciphertext by its name.
    ``revoke`` lets a put that gave up on its deadline hand the stream back to the caller:
    once it returns, an abandoned upload thread can no longer read from it.
    """

    def __init__(self, source: BinaryIO, length: int) -> None:
        if length < 0:
            raise ValueError("length must be >= 0")
        self._source = source
        self._remaining = length
        self._lock = threading.Lock()
        self._revoked = False
        self._at_end = False
        self.source_error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that remain if negative); ``b""`` once all are read."""
        with self._lock:
            self._check_revoked()
            want = self._remaining if size < 0 else min(size, self._remaining)
            if want == 0:
                return b""
            data = self._read(want)
            if not data:
                raise StoreError(f"the source ended {self._remaining} bytes short of its length")
            self._remaining -= len(data)
            if self._remaining == 0:
                # Probe while the stream is still ours: a backend stops reading at
                # `length`, so this is the last chance to refuse a longer source.
                self._probe_end()
            return data

    def finish(self) -> None:
        """Raise unless exactly ``length`` bytes were read and the source is at its end."""
        with self._lock:
            self._check_revoked()
            if self._remaining:
                raise StoreError(f"the source ended {self._remaining} bytes short of its length")
            self._probe_end()

    def revoke(self) -> None:
        """Refuse every later read; waits for a read in progress to finish."""
        with self._lock:
            self._revoked = True

    def _check_revoked(self) -> None:
        if self._revoked:
            raise StoreError("the put was abandoned; its source is no longer read")

    def _read(self, size: int) -> bytes:
        try:
            return self._source.read(size)
        except BaseException as exc:
            # Kept so that a backend re-raises it as is instead of blaming the store.
            self.source_error = exc
            raise

    def _probe_end(self) -> None:
        if not self._at_end:
            if self._read(1):
                raise StoreError("the source holds more bytes than its length")
            self._at_end = True
