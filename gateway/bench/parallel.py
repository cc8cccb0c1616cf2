"""Several modalities at once: one series split over concurrent storescu associations.

``parallel_ingest_ratio`` sends the 200-slice CT series (a copy with its own UIDs, so
that neither Orthanc nor the gateway has seen it) as 8 associations of 25 slices, all
started together; the wall time runs from the first start to the last exit (every
C-STORE answered). The ratio is the gateway's images per second ÷ Orthanc direct's,
which is Orthanc's wall time ÷ the gateway's.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from gateway.bench.peers import MAX_SEND_PDU, SCU_AET, STORESCU, BenchError

WAYS = 8


def split(files: list[Path], ways: int) -> list[list[Path]]:
    """``files`` in ``ways`` contiguous parts whose sizes differ by at most one."""
    if ways < 1:
        raise ValueError("at least one association")
    size, extra = divmod(len(files), ways)
    parts, start = [], 0
    for i in range(ways):
        end = start + size + (1 if i < extra else 0)
        parts.append(files[start:end])
        start = end
    return [part for part in parts if part]


def storescu_parallel(port: int, files: list[Path], *, called: str, ways: int = WAYS) -> float:
    """Send ``files`` over ``ways`` concurrent storescu associations; the wall seconds."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    procs = []
    start = time.perf_counter()
    for part in split(files, ways):
        argv = [STORESCU, "--max-send-pdu", str(MAX_SEND_PDU), "-aet", SCU_AET, "-aec", called,
                "127.0.0.1", str(port), *map(str, part)]  # fmt: skip
        procs.append(
            subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
            )
        )
    outputs = [proc.communicate(timeout=3600)[0] for proc in procs]
    seconds = time.perf_counter() - start
    failed = [
        (proc.returncode, out) for proc, out in zip(procs, outputs, strict=True) if proc.returncode
    ]
    if failed:
        code, out = failed[0]
        raise BenchError(
            f"{len(failed)} of {len(procs)} storescu exited non-zero; one ({code}): {out[-800:]}"
        )
    return seconds
