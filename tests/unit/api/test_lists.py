"""Every list answers one shape (items, next_cursor, Link), and alerts are acknowledged by name."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.api.pages import Pager
from gateway.api.problems import PROBLEM, Problem
from gateway.trust.alerts import Alerts
from tests.unit.api.test_limits import StandInVerifier, build, serve


@pytest.fixture
def verifier() -> Iterator[StandInVerifier]:
    stand_in = StandInVerifier()
    yield stand_in
    stand_in.release.set()


def walk(client: httpx.Client, url: str, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Every item of a list, following each answer's Link header; and how many pages."""
    items, pages = [], 0
    response = client.get(url, params=params)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        pages += 1
        link = response.headers.get("link")
        if body["next_cursor"] is None:
            assert link is None
            return items, pages
        assert link.startswith(f"<{url}?")
        assert link.endswith('>; rel="next"') and f"cursor={body['next_cursor']}" in link
        response = client.get(link[1 : link.index(">")])


def test_the_alerts_list_pages_by_link_and_keeps_its_filters(
    tmp_path: Path, verifier: StandInVerifier
) -> None:
    app, token = build(tmp_path, verifier)
    alerts = Alerts(tmp_path / "alerts.sqlite")
    for n in range(5):
        alerts.record(kind="tampered" if n % 2 else "missing", source="audit", detail=str(n))
    with serve(app) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        everything, pages = walk(client, "/v1/alerts", limit=2)
        tampered, _ = walk(client, "/v1/alerts", limit=1, kind="tampered")

    assert [a["detail"] for a in everything] == ["4", "3", "2", "1", "0"] and pages == 3
    assert [a["detail"] for a in tampered] == ["3", "1"]
    assert everything[0]["id"] == "gateway-5" and everything[0]["acknowledged_by"] is None


def test_an_alert_is_acknowledged_by_the_tokens_name(
    tmp_path: Path, verifier: StandInVerifier
) -> None:
    app, token = build(tmp_path, verifier)
    Alerts(tmp_path / "alerts.sqlite").record(kind="tampered", source="plugin", detail="x")
    with serve(app) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        acked = client.post("/v1/alerts/gateway-1/ack")
        listed = client.get("/v1/alerts").json()["items"]
        unknown = client.post("/v1/alerts/plugin-1/ack")
        malformed = client.post("/v1/alerts/1/ack")

    assert acked.status_code == 200
    assert acked.json()["acknowledged_by"] == "admin" and acked.json()["acknowledged_at"] > 0
    assert listed[0]["acknowledged_by"] == "admin"
    assert unknown.status_code == 404 and unknown.headers["content-type"] == PROBLEM
    assert malformed.status_code == 422


def test_past_audits_are_a_paged_list(tmp_path: Path, verifier: StandInVerifier) -> None:
    verifier.release.set()  # sweeps of an empty PACS finish at once
    app, token = build(tmp_path, verifier)
    with serve(app) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        for _ in range(3):
            audit_id = client.post("/v1/audits").json()["id"]
            while client.get(f"/v1/audits/{audit_id}").json()["state"] == "running":
                time.sleep(0.01)
        audits, pages = walk(client, "/v1/audits", limit=2)
        findings = client.get(f"/v1/audits/{audit_id}/findings")
        none = client.get("/v1/audits/nope/findings")

    assert len(audits) == 3 and pages == 2
    assert audits[0]["id"] == audit_id and audits[0]["state"] == "done"
    assert findings.json() == {"items": [], "next_cursor": None}
    assert none.status_code == 404


def cursor_of(raw: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "not-base64-json",
        cursor_of({"l": "audits", "k": [1.0, "gateway", 1]}),  # another list's
        cursor_of({"l": "alerts", "k": [1.0, "orthanc", 1]}),  # no such file
        cursor_of({"l": "alerts", "k": [1.0, "gateway", -1]}),
        cursor_of({"l": "alerts", "k": "1; DROP TABLE alerts"}),
        cursor_of(["alerts"]),
    ],
)
def test_a_cursor_not_given_out_by_the_list_is_a_422_problem(
    tmp_path: Path, verifier: StandInVerifier, cursor: str
) -> None:
    app, token = build(tmp_path, verifier)
    with serve(app) as client:
        response = client.get(
            "/v1/alerts", params={"cursor": cursor}, headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["title"] == "Invalid cursor"


def test_a_cursor_round_trips_its_key_exactly() -> None:
    pager: Pager[tuple[float, str, int]] = Pager("alerts", tuple[float, str, int])
    key = (1733412345.123456789, "plugin", 42)
    assert pager.decode(pager.encode(key)) == key
    with pytest.raises(Problem):
        Pager("audits", tuple[float, str]).decode(pager.encode(key))


def test_the_retention_list_pages_by_link_oldest_due_first(
    tmp_path: Path, verifier: StandInVerifier
) -> None:
    from types import SimpleNamespace

    from gateway.index.db import Index
    from gateway.trust.retention import list_due

    app, token = build(tmp_path, verifier)
    index = Index(tmp_path / "index.sqlite")
    for n, years in enumerate((12, 15, 11)):
        row = index.add_received(
            entry_id=f"e{n}", sop_instance_uid=f"1.2.{n}.1", sop_class_uid="1.2",
            calling_aet="CT", size=1,
        )  # fmt: skip
        index.update(
            row, stage="committed", modality="CT", study_instance_uid=f"1.2.{n}",
            received_at=time.time() - years * 365.25 * 86400,
        )  # fmt: skip
    list_due(index, {"CT": 10 * 365.25})
    # the route reads only the eraser's index (erasure itself is tested in trust/)
    app.state.services.eraser = SimpleNamespace(index=index)
    with serve(app) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        listed, pages = walk(client, "/v1/retention", limit=2)
        stale = client.get("/v1/retention", params={"cursor": Pager("alerts", int).encode(3)})
    index.close()

    assert [item["study_instance_uid"] for item in listed] == ["1.2.1", "1.2.0", "1.2.2"]
    assert pages == 2 and stale.status_code == 422
