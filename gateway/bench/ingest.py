"""Modality-side ingest: storescu straight into Orthanc, then the same files through the gateway.

Reference: a freshly started plain Orthanc (``TCP_NODELAY=1``), one storescu association
per workload (CT series, then DX images). Orthanc answers a C-STORE once it has stored
the instance, so its storescu time is both its ack and its commit time.

Gateway: a fresh ``xray-gateway up`` (its own anvil, contract, keys and Orthanc with the
integrity plugin) over a fresh data dir. ``ack`` is storescu's wall time (every C-STORE
answered); ``commit`` runs from storescu's start until the last instance's row is
``committed`` (sealed and stored, anchored, in Orthanc), from the rows' ``committed_at``.
The seed paper's 100 chest images then go through the same gateway end to end.

``postgres_ack_ratio``: the same CT series into one more fresh gateway whose index is on
PostgreSQL (a throwaway cluster, :mod:`gateway.bench.postgres`), its ack time ÷ the
SQLite gateway's.

How the pipeline anchored each workload (``*_anchoring``): the distinct transactions of
its rows and the sum of their receipts' ``gasUsed`` per image (``gas_per_image_pipeline``
is the seed workload's), and the latency from each row's ack (``received_at``) to the
gateway having its anchor's receipt (``anchored_at``, the same wall clock; block times
are whole seconds): 50th and 95th percentile by nearest rank, and the longest
(``anchor_latency_p95_s`` is the seed workload's).

Concurrent associations (:mod:`gateway.bench.parallel`): a copy of the CT series with
its own UIDs over 8 storescu at once, into Orthanc direct and into the gateway.

The CPU budget (:mod:`gateway.bench.cpu`): every workload also returns, under ``cpu``,
what each process spent during it: Orthanc direct's per workload, the gateway's in
two windows per workload (``ack``: storescu's start to its exit; ``commit``: to the
last row committed, as seen by the bench's poll).

Every timed workload's window opens on a settled disk (:func:`opened`): the dirty pages earlier
work left behind (the data just generated, an earlier workload's spool, seals and
Orthanc's storage) are written back first, so that they are not flushed inside a later
workload's window, behind its fsyncs. Orthanc direct and the gateway get the same.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import dcmread

from gateway.bench.cpu import CpuMeter, CpuSnapshot, pids_running, window
from gateway.bench.parallel import WAYS, storescu_parallel
from gateway.bench.peers import Gateway, direct_orthanc, storescu
from gateway.bench.postgres import PostgresCluster
from gateway.ledger.anvil import rpc

Progress = Callable[[str], None]


def sop_uids(files: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` by nearest rank (a value that was measured)."""
    ranked = sorted(values)
    return ranked[max(0, math.ceil(q / 100 * len(ranked)) - 1)]


def opened(meter: CpuMeter) -> CpuSnapshot:
    """The start of a timed workload's window: every dirty page on the machine written
    back (``sync``), then the meter's snapshot. So the bench's 2 GB of freshly generated
    data, or an earlier workload's files, are not flushed inside the window, behind its
    own fsyncs. (The seed's acks taking 6-8 s in the bench instead of 3.5 s had another
    cause: forwards beside the stream, docs/performance.md, "Session 10".)"""
    os.sync()
    return meter.snapshot()


def orthanc_direct(
    *, workdir: Path, workloads: dict[str, list[Path]], parallel: list[Path], say: Progress
) -> dict[str, Any]:
    """storescu of each workload into one freshly started plain Orthanc, then ``parallel``
    over concurrent associations."""
    data_dir = workdir / "orthanc-direct"
    shutil.rmtree(data_dir, ignore_errors=True)
    orthanc = direct_orthanc(data_dir)
    orthanc.start(timeout=120)
    assert orthanc.process is not None
    meter = CpuMeter({orthanc.process.pid: "orthanc"})
    try:
        out: dict[str, Any] = {}
        cpu: dict[str, Any] = {}
        for name, files in workloads.items():
            say(f"storescu → Orthanc: {len(files)} {name} files")
            before = opened(meter)
            out[f"{name}_s"] = round(storescu(orthanc.dicom_port, files, called=orthanc.aet), 4)
            cpu[name] = window(before, meter.snapshot())
        say(f"storescu → Orthanc: {len(parallel)} CT files over {WAYS} associations at once")
        before = opened(meter)
        out["parallel_s"] = round(
            storescu_parallel(orthanc.dicom_port, parallel, called=orthanc.aet), 4
        )
        cpu["parallel"] = window(before, meter.snapshot())
        out["cpu"] = cpu
        return out
    finally:
        orthanc.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _batch_timeline(rows: list[dict[str, Any]], started: float) -> list[dict[str, Any]]:
    """Each transaction's images in the order they landed: how many, the first and last
    ack among them and the receipt, in seconds from ``started`` (storescu's start)."""
    by_tx: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["tx_hash"] and row["anchored_at"]:
            by_tx.setdefault(str(row["tx_hash"]), []).append(row)
    landed = sorted(by_tx.values(), key=lambda members: min(r["anchored_at"] for r in members))
    return [
        {
            "images": len(members),
            "first_ack_s": round(min(r["received_at"] for r in members) - started, 3),
            "last_ack_s": round(max(r["received_at"] for r in members) - started, 3),
            "receipt_s": round(max(r["anchored_at"] for r in members) - started, 3),
        }
        for members in landed
    ]


def _anchor_summary(
    gateway: Gateway, rows: list[dict[str, Any]], started: float | None = None
) -> dict[str, Any]:
    """How the pipeline's anchor stage recorded ``rows``: mode, transactions, gas per image,
    and (given when the workload ``started``) each transaction's place in time."""
    committed = [r for r in rows if r["stage"] == "committed"]
    txs = sorted({str(r["tx_hash"]) for r in committed if r["tx_hash"]})
    gas = 0
    for tx in txs:
        receipt = rpc(gateway.chain_url, "eth_getTransactionReceipt", [tx])
        assert isinstance(receipt, dict)
        gas += int(receipt["gasUsed"], 16)
    batched = sum(1 for r in committed if r["batch_id"] is not None)
    latency = [r["anchored_at"] - r["received_at"] for r in committed if r["anchored_at"]]
    return {
        "anchor_mode": "batched" if batched else "single",
        "images": len(committed),
        "transactions": len(txs),
        "gas_per_image": round(gas / len(committed), 1) if committed else None,
        "latency_p50_s": round(percentile(latency, 50), 3) if latency else None,
        "latency_p95_s": round(percentile(latency, 95), 3) if latency else None,
        "latency_max_s": round(max(latency), 3) if latency else None,
        **({"timeline": _batch_timeline(committed, started)} if started is not None else {}),
    }


def _meter(gateway: Gateway, *, postgres_data: Path | None = None) -> CpuMeter:
    """A meter of ``up``'s process tree, and of the PostgreSQL cluster's if given."""
    roots = {gateway.pid: "gateway_listener"}
    if postgres_data is not None:
        roots.update(dict.fromkeys(pids_running(str(postgres_data)), "postgres"))
    return CpuMeter(roots)


def _send(gateway: Gateway, files: list[Path], *, meter: CpuMeter, ways: int = 1) -> dict[str, Any]:
    uids = sop_uids(files)
    before = opened(meter)
    started = time.time()
    if ways == 1:
        ack = storescu(gateway.dicom_port, files, called=gateway.ae_title)
    else:
        ack = storescu_parallel(gateway.dicom_port, files, called=gateway.ae_title, ways=ways)
    acked = meter.snapshot()
    rows = gateway.wait_done(uids)
    cpu = {"ack": window(before, acked), "commit": window(before, meter.snapshot())}
    committed = [r["committed_at"] for r in rows if r["committed_at"] is not None]
    stages = sorted({r["stage"] for r in rows})
    if stages != ["committed"]:
        raise RuntimeError(f"rows ended in stages {stages}, not all committed")
    return {
        "ack_s": round(ack, 4),
        "commit_s": round(max(committed) - started, 4),
        "rows": rows,
        "started": started,
        "cpu": cpu,
    }


def through_gateway(
    *,
    workdir: Path,
    workloads: dict[str, list[Path]],
    parallel: list[Path],
    seed: list[Path],
    say: Progress,
) -> dict[str, Any]:
    """The same workloads, ``parallel`` over concurrent associations, then the seed
    workload, through one fresh gateway."""
    data_dir = workdir / "gateway-ingest"
    shutil.rmtree(data_dir, ignore_errors=True)
    say("starting xray-gateway up (anvil, contract, Orthanc with the plugin)")
    gateway = Gateway(data_dir)
    gateway.start()
    try:
        meter = _meter(gateway)
        out: dict[str, Any] = {"cpu": {}}
        for name, files in workloads.items():
            say(f"storescu → gateway: {len(files)} {name} files, then waiting for commit")
            sent = _send(gateway, files, meter=meter)
            out["cpu"][name] = sent["cpu"]
            out[f"{name}_ack_s"] = sent["ack_s"]
            out[f"{name}_commit_s"] = sent["commit_s"]
            out[f"{name}_anchoring"] = _anchor_summary(gateway, sent["rows"], sent["started"])
        say(f"storescu → gateway: {len(parallel)} CT files over {WAYS} associations, then waiting")
        sent = _send(gateway, parallel, meter=meter, ways=WAYS)
        out["cpu"]["parallel"] = sent["cpu"]
        out["parallel_ack_s"] = sent["ack_s"]
        out["parallel_commit_s"] = sent["commit_s"]
        out["parallel_anchoring"] = _anchor_summary(gateway, sent["rows"], sent["started"])
        say(f"seed workload: {len(seed)} chest images end to end through the gateway")
        sent = _send(gateway, seed, meter=meter)
        out["cpu"]["seed"] = sent["cpu"]
        out["seed_ack_s"] = sent["ack_s"]
        out["seed_workload_s"] = sent["commit_s"]
        out["seed_anchoring"] = _anchor_summary(gateway, sent["rows"], sent["started"])
        return out
    finally:
        code = gateway.stop()
        if code not in (0, None):
            say(f"the gateway exited with code {code}")
        shutil.rmtree(data_dir, ignore_errors=True)


def through_gateway_on_postgres(
    *, workdir: Path, files: list[Path], say: Progress
) -> dict[str, Any]:
    """The CT series through a fresh gateway whose index is on a fresh PostgreSQL cluster."""
    data_dir = workdir / "gateway-postgres"
    shutil.rmtree(data_dir, ignore_errors=True)
    say("starting PostgreSQL (a throwaway cluster on a free port)")
    # Not under workdir: the server runs as the postgres user, which needs its own dir.
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="xray-bench-pg-"))).start()
    try:
        say("starting xray-gateway up with its index on PostgreSQL")
        gateway = Gateway(data_dir, index_url=cluster.create_database())
        gateway.start()
        try:
            say(f"storescu → gateway on PostgreSQL: {len(files)} CT files, then waiting for commit")
            sent = _send(gateway, files, meter=_meter(gateway, postgres_data=cluster.data))
            return {
                "ct_ack_s": sent["ack_s"],
                "ct_commit_s": sent["commit_s"],
                "cpu": {"ct": sent["cpu"]},
            }
        finally:
            code = gateway.stop()
            if code not in (0, None):
                say(f"the gateway exited with code {code}")
            shutil.rmtree(data_dir, ignore_errors=True)
    finally:
        cluster.stop()
