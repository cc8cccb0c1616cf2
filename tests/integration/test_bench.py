"""`xray-gateway bench --quick` runs every part and writes every key and the chart (no timings asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.bench.chart import TARGETS
from gateway.bench.run import KEYS

pytestmark = pytest.mark.integration

EXE = str(Path(sys.executable).with_name("xray-gateway"))


def test_quick_bench_writes_every_key_and_the_chart(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = subprocess.run(
        [EXE, "bench", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for key in KEYS:
        assert key in results, key
    for target in TARGETS:
        assert isinstance(results[target.key], int | float), target.key
        assert isinstance(results["targets"][target.key]["met"], bool)
    assert results["machine"]["cores"] >= 1 and results["machine"]["cpu_model"]
    assert results["quick"] is True
    raw = results["raw"]
    assert set(raw) == {
        "orthanc_direct",
        "gateway",
        "gateway_postgres",
        "seed_anchoring",
        "retrieval",
        "retrieval_postgres",
        "memory",
        "limits",
        "cpu_budget",
    }
    # the CPU budget: every timed ingest workload, each group, and a bound per ratio
    budget = raw["cpu_budget"]
    assert budget["cores"] >= 1
    assert set(budget["orthanc_direct"]) == {"ct", "dx", "parallel"}
    assert set(budget["gateway"]) == {"ct", "dx", "parallel", "seed"}
    assert set(budget["gateway_postgres"]) == {"ct"}
    for name, direct in budget["orthanc_direct"].items():
        # metered (a quick workload's few small files may take Orthanc under one clock tick)
        assert "Orthanc" in direct["processes"] and direct["cpu_s"]["client"] > 0, name
        assert direct["cpu_s"]["gateway_listener"] == 0 == direct["cpu_s"]["gateway_workers"]
    assert sum(direct["cpu_s"]["orthanc"] for direct in budget["orthanc_direct"].values()) > 0
    for part in ("gateway", "gateway_postgres"):
        for name, windows in budget[part].items():
            ack, commit = windows["ack"], windows["commit"]
            assert ack["cpu_s"]["gateway_listener"] > 0 and ack["cpu_s"]["client"] > 0, name
            assert commit["cpu_s"]["orthanc"] > 0, name  # the gateway forwarded every image
            assert commit["cpu_s"]["gateway_workers"] > 0, name  # a worker process sealed them
            assert commit["cpu_s"]["total"] >= ack["cpu_s"]["total"], name
            assert commit["wall_s"] >= ack["wall_s"], name
            assert commit["floor_wall_s"] > 0, name
    assert budget["gateway_postgres"]["ct"]["commit"]["cpu_s"]["postgres"] > 0
    bounds = budget["bounds"]
    assert set(bounds) == {
        "ingest_ack_ratio", "commit_ratio", "ingest_ack_ratio_dx", "commit_ratio_dx",
        "parallel_ingest_ratio",
    }  # fmt: skip
    assert bounds["commit_ratio"]["measured"] == results["commit_ratio"]
    assert bounds["parallel_ingest_ratio"]["measured"] == results["parallel_ingest_ratio"]
    assert all(bound["best"] > 0 for bound in bounds.values())
    # every seed image anchored both ways, and every batch proof checks out on chain
    seed = raw["seed_anchoring"]
    assert seed["images"] == results["workload"]["seed_images"]
    assert seed["batch_proofs_verified"] == seed["images"]
    assert raw["gateway"]["seed_anchoring"]["images"] == seed["images"]
    assert raw["gateway"]["ct_anchoring"]["images"] == results["workload"]["ct_slices"]
    # the pipeline's own anchoring of the seed: every image in a batch, from real receipts,
    # each anchored after its ack
    piped = raw["gateway"]["seed_anchoring"]
    assert piped["anchor_mode"] == "batched"
    assert 1 <= piped["transactions"] <= piped["images"]
    assert results["gas_per_image_pipeline"] == piped["gas_per_image"]
    # a recordBatch costs the same whatever its count: the pipeline's batches cost at
    # least the bench's one batch of every seed image, per image
    assert results["gas_per_image_pipeline"] >= seed["gas_per_image_batched"] * 0.99
    assert 0 < piped["latency_p50_s"] <= results["anchor_latency_p95_s"] <= piped["latency_max_s"]
    # the timeline: each transaction once, in landing order, every image after its ack
    timeline = piped["timeline"]
    assert len(timeline) == piped["transactions"]
    assert sum(batch["images"] for batch in timeline) == piped["images"]
    assert [b["receipt_s"] for b in timeline] == sorted(b["receipt_s"] for b in timeline)
    assert all(0 <= b["first_ack_s"] <= b["last_ack_s"] < b["receipt_s"] for b in timeline)
    # the CT copy over 8 associations: every slice acked and committed on both sides
    parallel = raw["gateway"]["parallel_anchoring"]
    assert parallel["images"] == results["workload"]["parallel_slices"]
    assert raw["orthanc_direct"]["parallel_s"] > 0 and raw["gateway"]["parallel_ack_s"] > 0
    assert results["parallel_ingest_ratio"] > 0
    png = (out / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    # the printed summary is the headline keys
    printed = json.loads(done.stdout)
    assert set(printed) == set(KEYS)
