"""A short seeded slice of the DICOM-port fuzz campaign (``make fuzz`` runs the full one).

300 inputs of seed 11 against a real ``xray-gateway up`` on free ports: random bytes,
mutated associations, mutated P-DATA after a valid association, and C-STOREs of mutated
fixtures and pydicom test files in every accepted transfer syntax. The gateway must
survive all of it with nothing left behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.fuzz.campaign import Plan, Target, run_campaign
from tests.integration.gateway_proc import Up, gateway_env

SEED = 11
INPUTS = 300


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    root = tmp_path_factory.mktemp("fuzz")
    gateway = Up(gateway_env(root / "var"))
    yield gateway
    gateway.stop()


def _target(up: Up) -> Target:
    return Target(
        host="127.0.0.1",
        port=up.dicom_port,
        ae_title="XRAYGW",
        pid=up.pid,
        data_dir=up.data_dir,
        log=up.data_dir.parent / "up.log",
    )


@pytest.fixture(scope="module")
def report(up: Up, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    target = _target(up)
    work = tmp_path_factory.mktemp("fuzz-work")
    found = run_campaign(target, Plan(seed=SEED, inputs=INPUTS), workdir=work)
    (work / "fuzz-report.json").write_text(json.dumps(found, indent=2, default=str))
    return found


def test_the_harness_finds_nothing_in_a_stream_of_valid_inputs(
    up: Up, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The control: the same kinds, unmutated. Any finding here would be the harness's own."""
    target = _target(up)
    found = run_campaign(
        target, Plan(seed=SEED, inputs=100, control=True), workdir=tmp_path_factory.mktemp("ctl")
    )
    problems = _findings(found)
    assert found["crashes"] == 0 and found["hangs"] == 0, problems
    assert found["echo_checks"] == {"passed": 1, "failed": 0, "no_answer": 0, "failures": []}
    assert found["leftover_count"] == 0, problems
    assert found["log"]["tracebacks"] == 0, problems
    assert found["acked"] > 20, problems  # valid C-STOREs were stored and seen acked
    assert found["leftovers"]["acked_rows"] == found["acked"]
    assert not [s for s in found["statuses"] if "ABORT" in s or "fin" in s or "hang" in s]


def _findings(report: dict[str, Any]) -> str:
    keys = ("crashes", "hangs", "hang_examples", "echo_checks", "leftover_count",
            "inputs_followed_by_tracebacks", "traceback_examples", "statuses")  # fmt: skip
    summary = {k: report[k] for k in keys}
    summary["leftovers"] = {k: v for k, v in report["leftovers"].items() if v}
    summary["log"] = report["log"]
    return json.dumps(summary, indent=1, default=str)[:6000]


def test_the_slice_ran_every_kind_of_input(report: dict[str, Any]) -> None:
    assert report["inputs"] == INPUTS
    assert set(report["kinds"]) == {"random_bytes", "association", "p_data", "c_store"}
    assert report["corpus"]["pairs"] > 100  # fixtures and pydicom files x transfer syntaxes


def test_fuzz_slice_no_crash_no_hang_echo_answers_nothing_left_behind(
    report: dict[str, Any], up: Up
) -> None:
    assert up.proc.poll() is None, "the gateway exited"
    problems = _findings(report)
    assert report["crashes"] == 0, problems
    assert report["hangs"] == 0, problems
    assert report["echo_checks"]["failed"] == 0, problems
    assert report["echo_checks"]["passed"] == INPUTS // 100, problems
    assert report["leftover_count"] == 0, problems
    assert report["log"]["tracebacks"] == 0, problems
    assert report["log"]["thread_deaths"] == 0, problems
