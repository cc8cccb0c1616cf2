"""Every problem the API can answer has a documented type URI that resolves to a page."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gateway
from gateway.api import problems
from gateway.api.auth import Tokens
from gateway.api.problems import PROBLEM, PROBLEM_TYPES, ProblemType
from gateway.trust.alerts import Alerts
from tests.unit.api.test_limits import StandInVerifier, build, serve

API = Path(gateway.__file__).parent / "api"
REGISTERED = {name for name, value in vars(problems).items() if isinstance(value, ProblemType)}


@pytest.fixture
def verifier() -> Iterator[StandInVerifier]:
    stand_in = StandInVerifier()
    yield stand_in
    stand_in.release.set()


def calls(name: str) -> Iterator[tuple[Path, ast.Call]]:
    for path in sorted(API.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == name:
                yield path, node


def test_every_problem_raised_names_a_registered_type() -> None:
    raised = list(calls("Problem"))
    assert len(raised) > 10
    for path, call in raised:
        first = call.args[0]
        assert isinstance(first, ast.Name), f"{path.name}:{call.lineno}"
        # a type constant of problems.py, or the ``kind`` a helper was handed one as
        assert first.id in REGISTERED or first.id == "kind", f"{path.name}:{call.lineno}"
    for _, call in calls("_busy"):
        first = call.args[0]
        assert isinstance(first, ast.Name) and first.id in REGISTERED, call.lineno


def test_every_type_is_defined_once_and_registered() -> None:
    defined = [path for path, _ in calls("ProblemType")]
    assert set(defined) == {API / "problems.py"}
    assert len(defined) == len(PROBLEM_TYPES) == len(REGISTERED)
    assert {getattr(problems, name) for name in REGISTERED} == set(PROBLEM_TYPES.values())


def test_the_openapi_schema_lists_every_type_and_each_resolves_to_a_page(
    tmp_path: Path, verifier: StandInVerifier
) -> None:
    app, _ = build(tmp_path, verifier)
    schema = app.openapi()
    declared = schema["components"]["schemas"]["ProblemDetails"]["properties"]["type"]
    assert declared["enum"] == [kind.uri for kind in PROBLEM_TYPES.values()]
    listed = {entry["type"]: entry for entry in declared["x-problem-types"]}
    assert "/problems/{slug}" in schema["paths"]
    with serve(app) as client:
        for kind in PROBLEM_TYPES.values():
            assert listed[kind.uri]["status"] == kind.status
            assert listed[kind.uri]["meaning"] == kind.meaning
            page = client.get(kind.uri)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert kind.title in page.text and str(kind.status) in page.text
        unknown = client.get("/problems/no-such-thing")
    assert unknown.status_code == 404 and unknown.json()["type"] == "/problems/not-found"


def test_errors_of_every_layer_carry_their_documented_type(
    tmp_path: Path, verifier: StandInVerifier
) -> None:
    app, admin = build(tmp_path, verifier)
    clinician = Tokens(
        admin_token_file=tmp_path / "api-token", issued_file=tmp_path / "t.json"
    ).issue(name="dr", role="clinician")
    Alerts(tmp_path / "alerts.sqlite")
    answers: dict[str, Any] = {}
    with serve(app) as client:
        bearer = {"Authorization": f"Bearer {admin}"}
        answers["unauthorized"] = client.get("/v1/alerts")
        answers["forbidden"] = client.get(
            "/v1/audits", headers={"Authorization": f"Bearer {clinician}"}
        )
        answers["not-found"] = client.post("/v1/alerts/plugin-9/ack", headers=bearer)
        answers["method-not-allowed"] = client.delete("/v1/alerts", headers=bearer)
        answers["invalid-request"] = client.get("/v1/alerts?limit=0", headers=bearer)
        answers["invalid-cursor"] = client.get("/v1/alerts?cursor=abc", headers=bearer)
        answers["unavailable"] = client.get("/v1/instances/1.2.3/verify", headers=bearer)
        answers["gateway-error"] = client.post(
            "/v1/patients/key", json={"patient_id": "x"}, headers=bearer
        )
    for slug, answer in answers.items():
        kind = PROBLEM_TYPES[slug]
        assert answer.headers["content-type"] == PROBLEM, slug
        body = answer.json()
        assert (answer.status_code, body["type"], body["title"]) == (
            kind.status, kind.uri, kind.title,
        ), slug  # fmt: skip
    with serve(app) as client:
        unrouted = client.get("/no/such/route")
        options = client.options("/v1/audits")
    assert unrouted.json()["type"] == "/problems/not-found"
    # two routes share the path: 405 names the methods of both
    assert options.status_code == 405 and options.headers["allow"] == "GET, POST"
