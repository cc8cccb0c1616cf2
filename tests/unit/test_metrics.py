"""``/metrics`` adds up the instruments of every process of ``up`` (multiprocess mode).

Each process is a real interpreter here: prometheus_client chooses where its values live
when it is first imported, so the only honest test of the sum is several processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

COUNT = """
import sys
from prometheus_client import Histogram
from gateway import metrics
for status in sys.argv[1:]:
    metrics.count_cstore_response(int(status, 16))
metrics.count_commitment("accepted")
metrics.observe_ack(0.02)  # one ack latency per process, in the 0.025 bucket
# an instrument another part declares on INSTRUMENTS is summed the same way
Histogram("xray_gateway_test_seconds", "a test histogram", registry=metrics.INSTRUMENTS).observe(0.2)
"""

RENDER = """
import sys
from gateway import metrics
from gateway.index.db import Index
registry = metrics.registry_for(
    metrics.GatewayCollector(index=Index(sys.argv[1])), instruments=True
)
sys.stdout.write(metrics.render(registry)[0].decode())
"""


def python(code: str, *args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counts_from_several_processes_add_up(tmp_path: Path) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    python(COUNT, "0x0000", "0x0000", "0xA700", env=env)  # one listener process
    python(COUNT, "0x0000", env=env)  # another, since exited
    found = samples(python(RENDER, str(tmp_path / "index.sqlite"), env=env))
    assert found[("xray_gateway_cstore_responses_total", (("status", "0x0000"),))] == 3
    assert found[("xray_gateway_cstore_responses_total", (("status", "0xA700"),))] == 1
    assert found[("xray_gateway_commitment_requests_total", (("result", "accepted"),))] == 2
    assert found[("xray_gateway_test_seconds_count", ())] == 2
    assert found[("xray_gateway_ack_latency_seconds_count", ())] == 2
    assert found[("xray_gateway_ack_latency_seconds_bucket", (("le", "0.01"),))] == 0
    assert found[("xray_gateway_ack_latency_seconds_bucket", (("le", "0.025"),))] == 2
    assert found[("xray_gateway_instances", (("stage", "committed"),))] == 0  # the collector


def test_without_the_directory_a_process_shows_its_own_counts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    code = COUNT + RENDER.replace("sys.argv[1]", repr(str(tmp_path / "index.sqlite")))
    found = samples(python(code, "0x0000", env=env))
    assert found[("xray_gateway_cstore_responses_total", (("status", "0x0000"),))] == 1


def test_the_command_line_does_not_import_prometheus_client_before_up_sets_its_directory() -> None:
    code = "import sys, gateway.cli; print('prometheus_client' in sys.modules)"
    assert python(code, env=dict(os.environ)).strip() == "False"
