"""Retrieval overhead of the integrity plugin: the same study from Orthanc with and without it.

200 CT slices (512x512, 16-bit, ``dicom_fixtures.ct_series``) are stored through the
plugin and recorded in a gateway index the plugin trusts (anchor evidence in the index;
no chain, so the ledger mirror is off and the read path is exactly the check: read,
SHA-256 of the dataset, index lookup, compare). The data dir is then copied, and two
Orthancs run side by side on the two copies: one with the plugin, one with Orthanc's own
filesystem storage (same ``ab/cd/uuid`` files). Requests alternate between them slice by
slice (which one goes first alternates too), so the machine's load hits both alike:

- viewer path: for every slice ``/instances/{id}/preview`` then
  ``/instances/{id}/frames/0/rendered``, right after both Orthancs start, so that every
  first decode reads through the storage area (Orthanc then keeps decoded instances in
  memory and later renders never reach the storage area);
- raw files: ``/instances/{id}/file`` for every slice, several passes (Orthanc's storage
  cache is off: every read reaches the storage area).

Both Orthancs are restarted for each repetition; medians over repetitions (raw: over every
pass); overhead = with / without - 1.
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

import dicom_fixtures
from gateway.core.fingerprint import fingerprint_and_header
from gateway.index.db import Index
from gateway.orthanc_plugin import ENTRY_SCRIPT, plugin_section
from gateway.pacs.embedded import EmbeddedOrthanc
from gateway.procs import free_port

Progress = Callable[[str], None]


def _record(index_path: Path, files: list[Path]) -> None:
    """Index rows as the gateway writes them once an instance is anchored."""
    index = Index(index_path)
    try:
        for n, path in enumerate(files):
            with path.open("rb") as stream:
                fp, header = fingerprint_and_header(stream)
            row = index.add_received(
                entry_id=f"bench-{n}",
                sop_instance_uid=header.sop_instance_uid,
                sop_class_uid=header.sop_class_uid,
                calling_aet="BENCH",
                size=path.stat().st_size,
            )
            index.update(
                row,
                stage="committed",
                digest=fp.digest,
                pixel_digest=fp.pixel_digest,
                version=1,
                tx_hash="0x" + hashlib.sha256(fp.digest).hexdigest(),
                block_number=1,
                study_instance_uid=header.study_instance_uid,
                series_instance_uid=header.series_instance_uid,
            )
    finally:
        index.close()


def _orthanc(data_dir: Path, *, plugin: bool) -> EmbeddedOrthanc:
    return EmbeddedOrthanc(
        data_dir=data_dir,
        http_port=free_port(),
        dicom_port=free_port(),
        aet="BENCHPACS",
        plugin=ENTRY_SCRIPT if plugin else None,
        plugin_config=plugin_section(data_dir=data_dir) if plugin else None,
    )


def _session(orthanc: EmbeddedOrthanc) -> requests.Session:
    session = requests.Session()
    session.auth = orthanc.credentials
    session.headers["Accept-Encoding"] = "identity"
    return session


def _timed(session: requests.Session, urls: list[str]) -> float:
    start = time.perf_counter()
    for url in urls:
        reply = session.get(url, timeout=120)
        if reply.status_code != 200:
            raise RuntimeError(f"{url} answered {reply.status_code}: {reply.text[:200]}")
    return time.perf_counter() - start


def _pct(with_plugin: float, without: float) -> float:
    return round((with_plugin / without - 1.0) * 100.0, 2)


def retrieval_overhead(
    *, workdir: Path, slices: int = 200, progress: Progress | None = None, repetitions: int = 3
) -> dict[str, Any]:
    """Measure the plugin's added latency on the viewer path and on raw files.

    Parameters
    ----------
    workdir:
        Scratch directory (a ``retrieval/`` subdirectory is made and removed).
    slices:
        CT slices in the study (512x512, 16-bit).
    progress:
        Called with a one-line message as the benchmark advances.
    repetitions:
        Restarts of the pair of Orthancs; medians are reported.

    Returns
    -------
    dict
        ``retrieval_overhead_pct`` (viewer path), ``raw_retrieval_overhead_pct``, the median
        seconds of each path with and without the plugin, every run's seconds, and the
        time SHA-256 takes over the study's files, for reference.
    """
    say = progress or (lambda message: None)
    root = workdir / "retrieval"
    shutil.rmtree(root, ignore_errors=True)
    data_dir = root / "var"
    data_dir.mkdir(parents=True)
    try:
        say(f"writing {slices} CT slices")
        files = dicom_fixtures.ct_series(root / "slices", count=slices)
        _record(data_dir / "index.sqlite", files)
        start = time.perf_counter()
        for path in files:
            hashlib.sha256(path.read_bytes()).digest()
        sha256_s = time.perf_counter() - start

        say("storing the study through the plugin")
        orthanc = _orthanc(data_dir, plugin=True)
        orthanc.start()
        try:
            session = _session(orthanc)
            ids = []
            for path in files:
                reply = session.post(
                    f"{orthanc.url}/instances", data=path.read_bytes(), timeout=120
                )
                reply.raise_for_status()
                ids.append(str(reply.json()["ID"]))
        finally:
            orthanc.stop()

        twin = root / "var-without-plugin"
        shutil.copytree(data_dir, twin)
        viewer: dict[str, list[float]] = {"with": [], "without": []}
        raw: dict[str, list[float]] = {"with": [], "without": []}
        for rep in range(repetitions):
            say(f"repetition {rep + 1}/{repetitions}: both Orthancs (re)started")
            servers = {
                "with": _orthanc(data_dir, plugin=True),
                "without": _orthanc(twin, plugin=False),
            }
            try:
                for server in servers.values():
                    server.start()
                sessions = {mode: _session(server) for mode, server in servers.items()}
                bases = {mode: f"{server.url}/instances/" for mode, server in servers.items()}
                spent = {"with": 0.0, "without": 0.0}
                for n, orthanc_id in enumerate(ids):
                    for mode in ("with", "without") if (n + rep) % 2 == 0 else ("without", "with"):
                        base = bases[mode] + orthanc_id
                        spent[mode] += _timed(
                            sessions[mode], [f"{base}/preview", f"{base}/frames/0/rendered"]
                        )
                for mode, seconds in spent.items():
                    viewer[mode].append(seconds)
                for mode in servers:  # one untimed pass: connections and OS caches warm
                    _timed(sessions[mode], [bases[mode] + i + "/file" for i in ids])
                for rep_pass in range(3):
                    spent = {"with": 0.0, "without": 0.0}
                    for n, orthanc_id in enumerate(ids):
                        order = (
                            ("with", "without") if (n + rep_pass) % 2 == 0 else ("without", "with")
                        )
                        for mode in order:
                            spent[mode] += _timed(
                                sessions[mode], [f"{bases[mode]}{orthanc_id}/file"]
                            )
                    for mode, seconds in spent.items():
                        raw[mode].append(seconds)
            finally:
                for server in servers.values():
                    server.stop()
        v_with, v_without = statistics.median(viewer["with"]), statistics.median(viewer["without"])
        r_with, r_without = statistics.median(raw["with"]), statistics.median(raw["without"])
        return {
            "slices": slices,
            "repetitions": repetitions,
            "retrieval_overhead_pct": _pct(v_with, v_without),
            "raw_retrieval_overhead_pct": _pct(r_with, r_without),
            "viewer_with_plugin_s": round(v_with, 4),
            "viewer_without_plugin_s": round(v_without, 4),
            "raw_with_plugin_s": round(r_with, 4),
            "raw_without_plugin_s": round(r_without, 4),
            "sha256_of_study_s": round(sha256_s, 4),
            "runs_s": {
                "viewer_with": [round(v, 4) for v in viewer["with"]],
                "viewer_without": [round(v, 4) for v in viewer["without"]],
                "raw_with": [round(v, 4) for v in raw["with"]],
                "raw_without": [round(v, 4) for v in raw["without"]],
            },
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="xray-bench-") as tmp:
        result = retrieval_overhead(
            workdir=Path(tmp),
            slices=int(sys.argv[1]) if len(sys.argv) > 1 else 200,
            progress=lambda message: print(message, file=sys.stderr),
        )
    print(json.dumps(result, indent=2))
