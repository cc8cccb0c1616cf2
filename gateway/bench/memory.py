"""Peak memory of the gateway while it receives, seals, stores and forwards one huge instance."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.bench.ingest import sop_uids
from gateway.bench.peers import Gateway, peak_rss_mb, storescu

Progress = Callable[[str], None]


def large_instance_rss(*, workdir: Path, large: Path, say: Progress) -> dict[str, Any]:
    """VmHWM of a fresh ``xray-gateway up`` before and after ``large`` is committed."""
    data_dir = workdir / "gateway-memory"
    shutil.rmtree(data_dir, ignore_errors=True)
    say("starting a fresh gateway for the large instance")
    gateway = Gateway(data_dir)
    gateway.start()
    try:
        before = peak_rss_mb(gateway.pid)
        size = large.stat().st_size
        say(f"storescu → gateway: one {size / 1e9:.2f} GB multi-frame instance")
        ack = storescu(gateway.dicom_port, [large], called=gateway.ae_title)
        gateway.wait_done(sop_uids([large]))
        peak = peak_rss_mb(gateway.pid)
    finally:
        gateway.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "instance_bytes": size,
        "rss_mb_at_start": round(before, 1),
        "rss_mb_peak": round(peak, 1),
        "ack_s": round(ack, 3),
    }
