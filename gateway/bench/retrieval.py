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
pass); overhead = with / without - 1. Each Orthanc's CPU time (user + system, from
``/proc/<pid>/stat``) over each path, divided by its slices or reads, says what the check
costs whatever the machine's load: ``viewer_cpu_ms_per_slice_with`` and ``_without``
(a preview and a rendered frame), ``raw_cpu_ms_per_read_with`` and ``_without``.
``raw_files=False`` (``--viewer``) measures the viewer path alone.

With ``floor=True`` a third Orthanc joins both paths: Orthanc's Python plugin with a
storage area and a request filter that check nothing
(:mod:`gateway.bench.passthrough_plugin`), on a third copy of the files. Its overheads
(``viewer_floor_overhead_pct``, ``raw_floor_overhead_pct``) are what calling Python at
all costs on this Orthanc: the part of the plugin's overhead no cut to the check can
remove.

:func:`retrieval_overhead_on_postgres` runs the same with the gateway's index on a
throwaway PostgreSQL cluster: the plugin then reads the evidence as a role that may only
``SELECT`` the view made for it (:mod:`gateway.index.evidence_view`), the read-only path
of several Orthanc nodes, and no ``index.sqlite`` is in the plugin's data dir.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

import dicom_fixtures
from gateway.bench.postgres import PostgresCluster
from gateway.core.fingerprint import fingerprint_and_header
from gateway.index.db import Index
from gateway.index.evidence_view import prepare_evidence_reader
from gateway.orthanc_plugin import ENTRY_SCRIPT, plugin_section
from gateway.pacs.embedded import EmbeddedOrthanc
from gateway.procs import free_port

Progress = Callable[[str], None]

#: The do-nothing Python storage area of the ``floor`` measurement.
PASSTHROUGH_SCRIPT = Path(__file__).resolve().with_name("passthrough_plugin.py")


#: The plugin's read-only role on the bench's PostgreSQL index.
READER_ROLE = "xray_bench_evidence"


def _record(index_location: Path | str, files: list[Path]) -> None:
    """Index rows as the gateway writes them once an instance is anchored."""
    index = Index(index_location)
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


def _orthanc(
    data_dir: Path, *, plugin: bool, reader_url: str | None = None, script: Path | None = None
) -> EmbeddedOrthanc:
    """Orthanc on ``data_dir``: with the integrity plugin, without any, or running ``script``
    (the floor's do-nothing storage area) in its Python plugin."""
    return EmbeddedOrthanc(
        data_dir=data_dir,
        http_port=free_port(),
        dicom_port=free_port(),
        aet="BENCHPACS",
        plugin=ENTRY_SCRIPT if plugin else script,
        plugin_config=plugin_section(data_dir=data_dir, index_url=reader_url) if plugin else None,
    )


def _cpu_s(orthanc: EmbeddedOrthanc) -> float:
    """User + system CPU seconds Orthanc's process has used so far (``/proc/<pid>/stat``)."""
    assert orthanc.process is not None
    stat = Path(f"/proc/{orthanc.process.pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _session(orthanc: EmbeddedOrthanc) -> requests.Session:
    """A keep-alive session to ``orthanc``. A GET whose kept connection Orthanc closed as it
    was sent (its keep-alive timeout, 1 s, passes between two requests on a loaded machine)
    is sent once more, on a new connection; an Orthanc that is gone still fails the run."""
    session = requests.Session()
    retry = Retry(total=1, connect=0, read=1, status=0, allowed_methods=["GET"])
    session.mount("http://", HTTPAdapter(max_retries=retry))
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


#: What the plugin's evidence cache reports per Orthanc run (``/xray/evidence-cache``).
CACHE_COUNTS = ("hits", "misses", "bypassed")


def _cache_counts(session: requests.Session, orthanc: EmbeddedOrthanc) -> dict[str, int]:
    """The evidence cache's hits, misses and bypassed look-ups in this Orthanc run."""
    reply = session.get(f"{orthanc.url}/xray/evidence-cache", timeout=30)
    reply.raise_for_status()
    counts = reply.json()
    return {key: int(counts[key]) for key in CACHE_COUNTS}


def _pct(with_plugin: float, without: float) -> float:
    return round((with_plugin / without - 1.0) * 100.0, 2)


#: Timed passes over every slice's raw file per repetition.
RAW_PASSES = 3
#: What each path's keys call an Orthanc (``mode``): ``viewer_with_plugin_s``, …
_KEY_NAMES = {"with": "with_plugin", "without": "without_plugin", "floor": "floor"}


def _viewer_pass(
    sessions: dict[str, requests.Session], bases: dict[str, str], ids: list[str], *, first: int
) -> dict[str, float]:
    """Seconds each Orthanc took for the viewer path: every slice's preview then rendered
    frame, the Orthancs taking turns slice by slice (which goes first rotates, from
    ``first``)."""
    modes = list(sessions)
    spent = dict.fromkeys(modes, 0.0)
    for n, orthanc_id in enumerate(ids):
        shift = (n + first) % len(modes)
        for mode in modes[shift:] + modes[:shift]:
            base = bases[mode] + orthanc_id
            spent[mode] += _timed(sessions[mode], [f"{base}/preview", f"{base}/frames/0/rendered"])
    return spent


def _raw_passes(
    sessions: dict[str, requests.Session], bases: dict[str, str], ids: list[str]
) -> dict[str, list[float]]:
    """Seconds of each of :data:`RAW_PASSES` passes over every raw ``/file``, per Orthanc,
    after one untimed pass (connections and OS caches warm); turns taken as above."""
    modes = list(sessions)
    for mode in modes:
        _timed(sessions[mode], [bases[mode] + i + "/file" for i in ids])
    passes: dict[str, list[float]] = {mode: [] for mode in modes}
    for rep_pass in range(RAW_PASSES):
        spent = dict.fromkeys(modes, 0.0)
        for n, orthanc_id in enumerate(ids):
            shift = (n + rep_pass) % len(modes)  # each goes first in turn
            for mode in modes[shift:] + modes[:shift]:
                spent[mode] += _timed(sessions[mode], [f"{bases[mode]}{orthanc_id}/file"])
        for mode, seconds in spent.items():
            passes[mode].append(seconds)
    return passes


def _path_keys(
    path: str, runs: dict[str, list[float]], *, per_ms: dict[str, float], per: int
) -> dict[str, Any]:
    """One path's result keys: the overheads against Orthanc without a plugin (median
    seconds), each Orthanc's median seconds and its CPU milliseconds per request pair
    (viewer) or per read (raw). The viewer path's overhead keeps its historical name,
    ``retrieval_overhead_pct``."""
    median = {mode: statistics.median(seconds) for mode, seconds in runs.items()}
    prefix = "retrieval" if path == "viewer" else "raw_retrieval"
    keys: dict[str, Any] = {f"{prefix}_overhead_pct": _pct(median["with"], median["without"])}
    if "floor" in median:
        keys[f"{path}_floor_overhead_pct"] = _pct(median["floor"], median["without"])
    unit = "slice" if path == "viewer" else "read"
    for mode, seconds in median.items():
        keys[f"{path}_{_KEY_NAMES[mode]}_s"] = round(seconds, 4)
        keys[f"{path}_cpu_ms_per_{unit}_{mode}"] = round(1000 * per_ms[mode] / per, 3)
    return keys


def retrieval_overhead(
    *,
    workdir: Path,
    slices: int = 200,
    progress: Progress | None = None,
    repetitions: int = 3,
    index_url: str | None = None,
    reader_url: str | None = None,
    floor: bool = False,
    raw_files: bool = True,
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
    index_url, reader_url:
        The gateway's index on PostgreSQL (its owner's URL, where the rows are written)
        and the plugin's read-only role on its evidence view; None: ``index.sqlite`` in
        the plugin's data dir.
    floor:
        Also run both paths through a do-nothing Python storage area (see the module).
    raw_files:
        False: the viewer path alone (``python -m gateway.bench.retrieval --viewer``).

    Returns
    -------
    dict
        ``retrieval_overhead_pct`` (viewer path), ``raw_retrieval_overhead_pct``, the median
        seconds of each path with and without the plugin, every run's seconds, each
        Orthanc's CPU milliseconds per slice of the viewer path and per raw read, and the
        time SHA-256 takes over the study's files, for reference (with ``floor``: the
        floor's too, and ``viewer_floor_overhead_pct``, ``raw_floor_overhead_pct``). On PostgreSQL,
        ``evidence_cache_hits``, ``_misses`` and ``_bypassed``: the plugin's evidence
        look-ups answered from memory, from the index while listening, and from the
        index while not (every run, the viewer path included).
    """
    say = progress or (lambda message: None)
    root = workdir / "retrieval"
    shutil.rmtree(root, ignore_errors=True)
    data_dir = root / "var"
    data_dir.mkdir(parents=True)
    try:
        say(f"writing {slices} CT slices")
        files = dicom_fixtures.ct_series(root / "slices", count=slices)
        _record(index_url or data_dir / "index.sqlite", files)
        start = time.perf_counter()
        for path in files:
            hashlib.sha256(path.read_bytes()).digest()
        sha256_s = time.perf_counter() - start

        say("storing the study through the plugin")
        orthanc = _orthanc(data_dir, plugin=True, reader_url=reader_url)
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
        modes = ["with", "without"]
        if floor:
            shutil.copytree(data_dir, root / "var-floor")
            modes.append("floor")
        viewer: dict[str, list[float]] = {mode: [] for mode in modes}
        viewer_cpu: dict[str, float] = dict.fromkeys(modes, 0.0)
        raw: dict[str, list[float]] = {mode: [] for mode in modes}
        cpu: dict[str, float] = dict.fromkeys(modes, 0.0)
        reads = 0
        cache = dict.fromkeys(CACHE_COUNTS, 0)  # the plugin's evidence cache (PostgreSQL)
        for rep in range(repetitions):
            say(f"repetition {rep + 1}/{repetitions}: the Orthancs (re)started")
            servers = {
                "with": _orthanc(data_dir, plugin=True, reader_url=reader_url),
                "without": _orthanc(twin, plugin=False),
            }
            if floor:
                servers["floor"] = _orthanc(
                    root / "var-floor", plugin=False, script=PASSTHROUGH_SCRIPT
                )
            try:
                for server in servers.values():
                    server.start()
                sessions = {mode: _session(server) for mode, server in servers.items()}
                bases = {mode: f"{server.url}/instances/" for mode, server in servers.items()}
                viewer_cpu_before = {mode: _cpu_s(server) for mode, server in servers.items()}
                spent = _viewer_pass(sessions, bases, ids, first=rep)
                for mode, seconds in spent.items():
                    viewer[mode].append(seconds)
                    viewer_cpu[mode] += _cpu_s(servers[mode]) - viewer_cpu_before[mode]
                if raw_files:
                    cpu_before = {mode: _cpu_s(server) for mode, server in servers.items()}
                    for mode, passes in _raw_passes(sessions, bases, ids).items():
                        raw[mode].extend(passes)
                    reads += RAW_PASSES * len(ids)
                    for mode, server in servers.items():
                        cpu[mode] += _cpu_s(server) - cpu_before[mode]
                if reader_url is not None:
                    for key, count in _cache_counts(sessions["with"], servers["with"]).items():
                        cache[key] += count
            finally:
                for server in servers.values():
                    server.stop()
        viewer_slices = repetitions * len(ids)
        keys = {
            "slices": slices,
            "repetitions": repetitions,
            **_path_keys("viewer", viewer, per_ms=viewer_cpu, per=viewer_slices),
            **(_path_keys("raw", raw, per_ms=cpu, per=reads) if raw_files else {}),
            **({f"evidence_cache_{key}": n for key, n in cache.items()} if reader_url else {}),
            "sha256_of_study_s": round(sha256_s, 4),
        }
        keys["runs_s"] = {
            f"{path}_{mode}": [round(v, 4) for v in runs[mode]]
            for path, runs in (("viewer", viewer), ("raw", raw))
            for mode in modes
            if runs[mode]
        }
        return keys
    finally:
        shutil.rmtree(root, ignore_errors=True)


def retrieval_overhead_on_postgres(
    *,
    workdir: Path,
    slices: int = 200,
    progress: Progress | None = None,
    repetitions: int = 3,
    floor: bool = False,
    raw_files: bool = True,
) -> dict[str, Any]:
    """:func:`retrieval_overhead` with the plugin reading a PostgreSQL index through its
    read-only role and view; a throwaway cluster on a free port, stopped at the end."""
    say = progress or (lambda message: None)
    say("starting PostgreSQL (a throwaway cluster on a free port)")
    # Not under workdir: the server runs as the postgres user, which needs its own dir.
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="xray-bench-pg-"))).start()
    try:
        index_url = cluster.create_database()
        Index(index_url).close()  # the gateway's tables, then the plugin's view over them
        cluster.create_role(READER_ROLE)
        prepare_evidence_reader(index_url, READER_ROLE)
        database = index_url.rsplit("/", 1)[1]
        result = retrieval_overhead(
            workdir=workdir, slices=slices, progress=progress, repetitions=repetitions,
            index_url=index_url, reader_url=cluster.url(database, user=READER_ROLE), floor=floor,
            raw_files=raw_files,
        )  # fmt: skip
        return {
            **result,
            "index": "postgresql, read through the plugin's view",
            "evidence_lookups": _uid_lookups(index_url),
        }
    finally:
        cluster.stop()


def _uid_lookups(url: str, *, wait_s: float = 10.0) -> int:
    """How many look-ups by SOP Instance UID the index served (PostgreSQL's statistics):
    the plugin's reads through its view, since recording the rows looks up none. A
    server process flushes its counts when its client (Orthanc, stopped) goes: wait for
    them a little."""
    import psycopg

    deadline = time.monotonic() + wait_s
    while True:
        with psycopg.connect(url) as db:
            row = db.execute(
                "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'instances_uid'"
            ).fetchone()
        count = int(row[0]) if row and row[0] is not None else 0
        if count or time.monotonic() >= deadline:
            return count
        time.sleep(0.2)


if __name__ == "__main__":
    # python -m gateway.bench.retrieval [SLICES] [--viewer] [--floor] [--postgres]
    #                                   [--repetitions=N]
    import json
    import sys

    measure = retrieval_overhead_on_postgres if "--postgres" in sys.argv else retrieval_overhead
    counts = [arg for arg in sys.argv[1:] if not arg.startswith("--")]
    reps = [int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--repetitions=")]
    with tempfile.TemporaryDirectory(prefix="xray-bench-") as tmp:
        result = measure(
            workdir=Path(tmp),
            slices=int(counts[0]) if counts else 200,
            progress=lambda message: print(message, file=sys.stderr),
            repetitions=reps[0] if reps else 3,
            floor="--floor" in sys.argv,
            raw_files="--viewer" not in sys.argv,
        )
    print(json.dumps(result, indent=2))
