"""schemathesis against the live OpenAPI schema of a real `up`, as every role and with no token.

Every check schemathesis has runs (server errors, status code, content type, headers and
response schema conformance, negative and positive data, auth...), plus ours in
``schemathesis_hooks.py``: every 4xx is a problem+json document. Each identity's requests
are counted from a HAR report, so the figures are what went over the wire.

``make fuzz-api`` runs the full campaign and writes ``bench/fuzz-api.json``;
``tests/integration/test_api_fuzz.py`` runs a short seeded slice of it in ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread

import dicom_fixtures
from gateway.procs import PROJECT_ROOT
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env, run

IDENTITIES = ("admin", "auditor", "clinician", "anonymous")
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
HERE = Path(__file__).resolve().parent
# Rate limits have their own test; here they would only turn most expensive calls into 429s.
UNLIMITED = {"GATEWAY_API_RATE_PER_MINUTE": "1000000", "GATEWAY_API_RATE_BURST": "1000000"}


@dataclass
class IdentityRun:
    """One schemathesis run: its exit code and what came back."""

    identity: str
    exit_code: int
    operations: int
    requests: int
    statuses: dict[str, int]
    server_errors: int
    client_errors_not_problem_json: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Stack:
    """A fuzzed `up`: its tokens per identity, and the UIDs of the instances it holds."""

    up: Up
    tokens: dict[str, str | None]
    sop_instance_uids: list[str]
    study_instance_uids: list[str]


def start_stack(data_dir: Path, *, instances: int = 3) -> Stack:
    """A real `up` in ``data_dir`` holding a few committed CT slices, and a token per identity.

    The slices' UIDs are offered to schemathesis (half of the generated path values), so
    that verdicts, proofs and restores answer 200 and their response schemas are checked.
    """
    up = Up(gateway_env(data_dir, **UNLIMITED))
    try:
        files = dicom_fixtures.ct_series(data_dir.parent / "series", instances, rows=32, cols=32,
                                         prefix="1.2.826.0.1.3680043.10.1138.12.1.")  # fmt: skip
        sent = storescu(up.dicom_port, files)
        if sent.returncode != 0:
            raise RuntimeError(f"storescu failed: {sent.stdout[-2000:]}")
        up.wait_done(instances)
        tokens = _tokens(up)
    except BaseException:
        stop_stack(up)
        raise
    datasets = [dcmread(path, stop_before_pixels=True) for path in files]
    return Stack(
        up=up,
        tokens=tokens,
        sop_instance_uids=[str(ds.SOPInstanceUID) for ds in datasets],
        study_instance_uids=sorted({str(ds.StudyInstanceUID) for ds in datasets}),
    )


def _tokens(up: Up) -> dict[str, str | None]:
    """A bearer token per identity (None: no token)."""
    tokens: dict[str, str | None] = {
        "admin": (up.data_dir / "api-token").read_text().strip(),
        "anonymous": None,
    }
    for role in ("auditor", "clinician"):
        result = run(up.env, "token", "create", "--role", role, "--name", f"fuzz-{role}")
        if result.returncode != 0:
            raise RuntimeError(f"token create failed: {result.stderr}")
        tokens[role] = result.stdout.strip()
    return tokens


def write_config(stack: Stack, work: Path) -> Path:
    """``schemathesis.toml`` plus dictionaries of the stack's real UIDs for path parameters."""
    known = (
        f"[dictionaries.sop_instance_uids]\nvalues = {json.dumps(stack.sop_instance_uids)}\n"
        f"[dictionaries.study_instance_uids]\nvalues = {json.dumps(stack.study_instance_uids)}\n"
        "[parameters]\n"
        '"path.sop_instance_uid" = { dictionary = "sop_instance_uids", probability = 0.5 }\n'
        '"path.study_instance_uid" = { dictionary = "study_instance_uids", probability = 0.5 }\n'
    )
    config = work / "schemathesis.toml"
    config.write_text(known + "\n" + (HERE / "schemathesis.toml").read_text())
    return config


def stop_stack(up: Up) -> int:
    """SIGTERM rather than Ctrl-C: a background job may have SIGINT ignored."""
    if up.proc.poll() is None:
        up.proc.terminate()
        up.proc.wait(90)
    return up.stop()


def fuzz_identity(
    up: Up,
    identity: str,
    bearer: str | None,
    *,
    config: Path,
    max_examples: int,
    seed: int,
    work: Path,
) -> IdentityRun:
    """Run schemathesis as ``identity``; the figures come from its JSON and HAR reports."""
    report, har = work / f"{identity}.json", work / f"{identity}.har"
    command = [
        SCHEMATHESIS, "--config-file", str(config), "run",
        f"http://127.0.0.1:{up.api_port}/openapi.json", "--checks", "all",
        "--max-examples", str(max_examples), "--seed", str(seed), "--workers", "1",
        "--report", "json,har", "--report-json-path", str(report), "--report-har-path", str(har),
    ]  # fmt: skip
    if bearer is not None:
        command += ["--header", f"Authorization: Bearer {bearer}"]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks",
        "PYTHONPATH": str(PROJECT_ROOT),
        "NO_COLOR": "1",
    }
    result = subprocess.run(
        command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=3600
    )
    (work / f"{identity}.out").write_text(result.stdout + result.stderr)
    summary = json.loads(report.read_text())
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = Counter(int(entry["response"]["status"]) for entry in entries)
    not_problem = sum(
        1
        for entry in entries
        if 400 <= entry["response"]["status"] < 500
        and _content_type(entry["response"]) != "application/problem+json"
    )
    return IdentityRun(
        identity=identity,
        exit_code=result.returncode,
        operations=int(summary["operations"]["tested"]),
        requests=len(entries),
        statuses={str(code): n for code, n in sorted(statuses.items())},
        server_errors=sum(n for code, n in statuses.items() if code >= 500),
        client_errors_not_problem_json=not_problem,
        failures=list(summary["failures"]),
        errors=list(summary["errors"]),
    )


def _content_type(response: dict[str, Any]) -> str:
    for header in response["headers"]:
        if header["name"].lower() == "content-type":
            return str(header["value"]).split(";")[0].strip()
    return ""


def fuzz(stack: Stack, *, max_examples: int, seed: int, work: Path) -> dict[str, Any]:
    """Every identity in turn against the stack; the campaign's report."""
    started = time.monotonic()
    config = write_config(stack, work)
    runs = [
        fuzz_identity(  # each identity alone: their requests never race each other
            stack.up,
            who,
            stack.tokens[who],
            config=config,
            max_examples=max_examples,
            seed=seed,
            work=work,
        )
        for who in IDENTITIES
    ]
    return {
        "seed": seed,
        "max_examples": max_examples,
        "identities": list(IDENTITIES),
        "operations": max(r.operations for r in runs),
        "instances_held": len(stack.sop_instance_uids),
        "requests": sum(r.requests for r in runs),
        "server_errors": sum(r.server_errors for r in runs),
        "client_errors_not_problem_json": sum(r.client_errors_not_problem_json for r in runs),
        "failures": sum(len(r.failures) for r in runs),
        "passed": all(r.exit_code == 0 for r in runs),
        "duration_s": round(time.monotonic() - started, 1),
        "runs": [asdict(r) for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "fuzz-api.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="xray-fuzz-api-") as tmp:
        stack = start_stack(Path(tmp) / "var")
        try:
            report = fuzz(stack, max_examples=args.max_examples, seed=args.seed, work=Path(tmp))
        finally:
            stop_stack(stack.up)
        if not report["passed"]:
            for identity in IDENTITIES:
                print((Path(tmp) / f"{identity}.out").read_text()[-4000:], file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"fuzz-api: {report['operations']} operations, {report['requests']} requests, "
        f"{report['server_errors']} 5xx, {report['failures']} failures -> {args.out}"
    )
    return 0 if report["passed"] and report["server_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
