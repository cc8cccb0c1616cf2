"""Fault injection for the crash tests: die with SIGKILL at a named point of the ingest path.

``GATEWAY_FAILPOINT=<point>[:<n>]`` makes the ``n``-th time (default: the first) the
process passes ``<point>`` kill it with SIGKILL, as a power cut or the OOM killer would:
no ``finally``, no atexit, no flush. It is read once at import; unset (the only
production setting) every :func:`hit` is a single comparison.

With ``GATEWAY_FAILPOINT_RELEASE=<file>`` as well, the ``n``-th pass is held instead of
killed: that thread waits until ``<file>`` exists, then goes on (the rest of the process
keeps running). A test uses it to act at that exact point, e.g. to change a spool file
after the ack and before the pipeline reads it.

Points (the code that passes them says where they sit):

``receive.chunk``
    a C-STORE's bytes are arriving: a chunk was written to the spool's incoming file.
``receive.before_ack``
    the instance is fsynced in the spool and its index row committed; the C-STORE
    response has not been sent.
``pipeline.before_fingerprint``
    acked; the pipeline has not read the spool file yet.
``pipeline.before_put``
    acked; the sealed object is not yet in the object store.
``pipeline.after_put``
    the object is in the store; the ledger has not been asked.
``ledger.after_send``
    the anchoring transaction was sent; its receipt has not been seen.
``pipeline.after_anchor``
    the record (or the Merkle batch) is on the ledger; its rows have not moved on to
    ``forward``, so a restart finds the batch open and asks ``batchIdOf(root)``.
``audit.before_verdict``
    an audit sweep is about to verify one instance (held with a release file, it keeps
    an audit running: the console's browser test shows its live progress).
``erasure.after_shred``, ``erasure.after_delete``, ``erasure.after_retire``
    an erasure's confirmation destroyed the study keys; deleted the copies (objects,
    spool, Orthanc); retired the records on chain. Confirming again finishes it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

POINTS = (
    "receive.chunk",
    "receive.before_ack",
    "pipeline.before_fingerprint",
    "pipeline.before_put",
    "pipeline.after_put",
    "ledger.after_send",
    "pipeline.after_anchor",
    "audit.before_verdict",
    "erasure.after_shred",
    "erasure.after_delete",
    "erasure.after_retire",
)


def _parse(spec: str) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, count = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"GATEWAY_FAILPOINT names no known point: {name!r} (known: {POINTS})")
    times = int(count) if count else 1
    if times < 1:
        raise ValueError("GATEWAY_FAILPOINT's count is 1 or more")
    return name, times


_ARMED = _parse(os.environ.get("GATEWAY_FAILPOINT", "").strip())
_RELEASE = os.environ.get("GATEWAY_FAILPOINT_RELEASE", "").strip()
_lock = threading.Lock()
_hits = 0


def hit(point: str) -> None:
    """Pass ``point``; if it is the armed one and its count is reached, SIGKILL this process
    (or hold this thread until the release file exists)."""
    global _hits
    if _ARMED is None or point != _ARMED[0]:
        return
    with _lock:
        _hits += 1
        reached = _hits == _ARMED[1]
        if reached and not _RELEASE:
            os.kill(os.getpid(), signal.SIGKILL)
    if reached:
        while not Path(_RELEASE).exists():
            time.sleep(0.05)
