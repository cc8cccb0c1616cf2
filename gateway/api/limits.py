"""What the API lets one caller take: requests per token, uploads at once, bytes on disk.

* :class:`RateLimiter`: a token bucket per (API token, route group) on the expensive
  routes (verify upload, audits, restore); an empty bucket is a 429 with ``Retry-After``.
* :class:`UploadArea`: uploads land in ``<data>/uploads`` (never ``/tmp``), at most
  ``max_concurrent`` at once, holding at most ``quota_bytes`` together, and never
  eating into the free space the spool keeps in reserve.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gateway.errors import UploadAreaFull, UploadsBusy

Clock = Callable[[], float]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by (who, group): ``burst`` requests at once, refilled at ``rate``.

    Parameters
    ----------
    per_minute:
        Requests each key may make per minute, on average.
    burst:
        Requests a key may make at once after being idle.
    clock:
        Monotonic seconds (tests pass their own).
    """

    def __init__(self, *, per_minute: float, burst: int, clock: Clock = time.monotonic) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("a rate limit needs per_minute > 0 and burst >= 1")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, who: str, group: str) -> float:
        """Spend one request of ``who`` on ``group``: 0 when allowed, else seconds to wait."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.setdefault((who, group), _Bucket(self.burst, now))
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class UploadArea:
    """Temporary files for uploads, counted: slots, a byte quota and the disk reserve.

    Parameters
    ----------
    root:
        ``<data>/uploads``; emptied on start (files left by a crash).
    max_concurrent:
        Uploads held at once.
    quota_bytes:
        Bytes all uploads in progress may hold together.
    reserve_bytes:
        Free space on the disk that uploads must leave (the spool's reserve).
    """

    def __init__(
        self, root: Path, *, max_concurrent: int, quota_bytes: int, reserve_bytes: int
    ) -> None:
        self.root = root
        self.max_concurrent = max_concurrent
        self.quota_bytes = quota_bytes
        self.reserve_bytes = reserve_bytes
        self._lock = threading.Lock()
        self._active = 0
        self._held = 0
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("upload-*"):
            stale.unlink(missing_ok=True)

    @property
    def held_bytes(self) -> int:
        """Bytes the uploads in progress hold now."""
        return self._held

    @contextlib.contextmanager
    def upload(self) -> Iterator[Upload]:
        """A slot and a temp file for one upload; both given back, the file deleted, on exit.

        Raises
        ------
        UploadsBusy
            ``max_concurrent`` uploads are in progress.
        """
        with self._lock:
            if self._active >= self.max_concurrent:
                raise UploadsBusy(f"{self.max_concurrent} uploads are in progress")
            self._active += 1
        upload = Upload(self)
        try:
            with tempfile.NamedTemporaryFile(dir=self.root, prefix="upload-", suffix=".dcm") as f:
                upload.file = f
                yield upload
        finally:
            with self._lock:
                self._active -= 1
                self._held -= upload.reserved

    def room(self) -> int:
        """Bytes that could still be written now: within the quota and above the reserve.

        What a deflated upload may inflate to while it is checked (its inflated copy is
        written here too, never to the system's temp folder).
        """
        with self._lock:
            return max(0, min(self._left()))

    def _reserve(self, size: int) -> None:
        with self._lock:
            quota_left, disk_left = self._left()
            if size > quota_left:
                raise UploadAreaFull("the upload area's quota is used up")
            if size > disk_left:
                raise UploadAreaFull("the disk is down to the spool's reserve")
            self._held += size

    def _left(self) -> tuple[int, int]:
        """What the quota leaves, and what the disk has above the reserve (lock held)."""
        free = shutil.disk_usage(self.root).free - self.reserve_bytes
        return self.quota_bytes - self._held, free


class Upload:
    """One upload in progress: its temp file and the bytes it has reserved."""

    def __init__(self, area: UploadArea) -> None:
        self.area = area
        self.file: IO[bytes] | None = None
        self.reserved = 0
        self.size = 0

    @property
    def path(self) -> Path:
        assert self.file is not None
        return Path(self.file.name)

    def reserve(self, size: int) -> None:
        """Hold ``size`` more bytes of the area (e.g. a declared Content-Length).

        Raises
        ------
        UploadAreaFull
            The quota or the disk reserve would be passed.
        """
        self.area._reserve(size)
        self.reserved += size

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``, reserving what goes past what is already reserved."""
        assert self.file is not None
        extra = self.size + len(chunk) - self.reserved
        if extra > 0:
            self.reserve(extra)
        self.file.write(chunk)
        self.size += len(chunk)


@dataclass
class Limits:
    """Every bound the API holds callers to (built from the settings by the stack)."""

    uploads: UploadArea
    rate: RateLimiter
    max_upload_bytes: int
