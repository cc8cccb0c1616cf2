"""Read a regular file's rest through read-only memory maps, window by window (no copies).

Reading into Python buffers copies every byte out of the page cache; for SHA-256 and
AES-GCM that copy costs about as much as the work itself (AES-GCM runs faster than it).
Views of a mapping hand the page cache's pages straight to hashlib and cryptography.

Windows are mapped one after the other and unmapped once no view of them is left, so
the resident set stays at a window or two however large the file (mapped file pages
count in RSS while mapped).
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

#: Bytes mapped at a time (rounded to a multiple of the chunk size).
WINDOW = 8 << 20


def chunks(stream: BinaryIO, size: int) -> Iterator[memoryview] | None:
    """Views of at most ``size`` bytes over the rest of ``stream``, or None if it cannot be mapped.

    Only a regular file with a ``fileno`` is mapped (not sockets, pipes, in-memory
    streams or S3 bodies) and only a non-empty rest. The stream is left at its end, as
    reading it would. Views stay valid as long as they are referenced; the file must not
    be truncated meanwhile (the gateway's spool and sealed files never are).
    """
    try:
        fd = stream.fileno()
        info = os.fstat(fd)
        position = stream.tell()
    except (AttributeError, OSError, ValueError):
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size <= position:
        return None
    stream.seek(info.st_size)
    return _windows(fd, position, info.st_size, size)


def _windows(fd: int, start: int, end: int, size: int) -> Iterator[memoryview]:
    window = max(size, WINDOW // size * size)
    while start < end:
        base = start - start % mmap.ALLOCATIONGRANULARITY
        length = min(end, start + window) - base
        view = memoryview(mmap.mmap(fd, length, offset=base, access=mmap.ACCESS_READ))
        for at in range(start - base, length, size):
            yield view[at : at + size]
        del view  # unmapped once the consumer lets go of its last view too
        start = base + length
