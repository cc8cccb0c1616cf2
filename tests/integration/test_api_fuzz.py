"""A short seeded schemathesis run against a real `up`, as admin, auditor, clinician and nobody.

The full campaign is ``make fuzz-api`` (tests/integration/fuzz_api.py); this slice keeps
the schema truthful in ``make test``: no 5xx, every 4xx a problem+json document, and
schemathesis's conformance checks (status code, content type, headers, response schema)
passing for every operation.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.fuzz_api import IDENTITIES, Stack, fuzz, start_stack, stop_stack

MAX_EXAMPLES = 10
SEED = 11


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    fuzzed = start_stack(tmp_path_factory.mktemp("fuzz-api") / "var")
    try:
        yield fuzzed
    finally:
        assert stop_stack(fuzzed.up) == 0


def test_schemathesis_finds_no_5xx_and_the_schema_holds_for_every_role(
    stack: Stack, tmp_path: Path
) -> None:
    report = fuzz(stack, max_examples=MAX_EXAMPLES, seed=SEED, work=tmp_path)
    outputs = {who: (tmp_path / f"{who}.out").read_text()[-3000:] for who in IDENTITIES}
    assert report["server_errors"] == 0, json.dumps(report["runs"], indent=1)
    assert report["client_errors_not_problem_json"] == 0, report["runs"]
    for run in report["runs"]:
        assert run["exit_code"] == 0, outputs[run["identity"]]
        assert run["failures"] == [] and run["errors"] == [], outputs[run["identity"]]
        assert run["operations"] >= 13, "every operation of the schema was tested"
    assert report["requests"] > 1000
    admin = next(run for run in report["runs"] if run["identity"] == "admin")
    assert admin["statuses"].get("200", 0) > 0
    db = sqlite3.connect(f"file:{stack.up.data_dir / 'audits.sqlite'}?mode=ro", uri=True)
    with contextlib.closing(db):
        spans = db.execute(
            "SELECT started_at, finished_at FROM audits ORDER BY started_at"
        ).fetchall()
    assert spans, "the admin and auditor runs reached the audit route"
    for (_, finished), (started, _) in itertools.pairwise(spans):
        assert finished is not None and finished <= started, "two sweeps never overlap"
