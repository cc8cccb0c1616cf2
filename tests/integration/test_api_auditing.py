"""What an auditor's tools lean on, against a real ``up``: the API docs with the network
cut, alerts acknowledged by name, past audits and their findings a page at a time, patient
records by pseudonymous key, and problem types that resolve."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

import dicom_fixtures
from tests.integration.browser import OfflineBrowser
from tests.integration.gateway_proc import Up, gateway_env, run


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = Up(gateway_env(tmp_path_factory.mktemp("api-auditing") / "var"))
    try:
        yield up
    finally:
        assert up.stop() == 0


def origin(up: Up) -> str:
    return f"http://127.0.0.1:{up.api_port}"


def test_swagger_ui_renders_with_the_network_cut(
    stack: Up, offline_browser: OfflineBrowser
) -> None:
    with offline_browser.page(origin(stack)) as cut:
        cut.page.goto("/docs")
        cut.page.wait_for_selector(".opblock-summary-path")
        paths = cut.page.locator(".opblock-summary-path").all_inner_texts()
        assert "/v1/audits" in [path.replace("\u200b", "") for path in paths]
        cut.page.locator(".models").scroll_into_view_if_needed()
        assert "ProblemDetails" in cut.page.locator(".models").inner_text()
    assert cut.left == []


def test_redoc_renders_with_the_network_cut(stack: Up, offline_browser: OfflineBrowser) -> None:
    with offline_browser.page(origin(stack)) as cut:
        cut.page.goto("/redoc")
        cut.page.wait_for_selector("h2:has-text('Start Audit')")
        menu = cut.page.locator(".menu-content").inner_text().split()
        assert {"verify", "audits", "records", "alerts", "health"} <= set(menu)
        # the response sample Redoc builds from the AuditState schema
        samples = cut.page.locator("h3:has-text('Response samples')").first
        assert samples.count() == 1
        assert '"requested_by"' in cut.page.inner_text("body")
    assert cut.left == []


def token(up: Up, name: str, role: str) -> str:
    result = run(up.env, "token", "create", "--role", role, "--name", name)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def api(up: Up, bearer: str) -> httpx.Client:
    return httpx.Client(
        base_url=origin(up), headers={"Authorization": f"Bearer {bearer}"}, timeout=120
    )


def admin(up: Up) -> str:
    return (up.data_dir / "api-token").read_text().strip()


def wait_for(what: str, found: Callable[[], Any], *, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture(scope="module")
def outsider(stack: Up, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An instance posted straight to Orthanc, past the gateway: the plugin alerts on it
    (``unregistered``) and every audit finds it. Its SOP Instance UID."""
    [path] = dicom_fixtures.ct_series(
        tmp_path_factory.mktemp("outsider"), 1, rows=16, cols=16,
        prefix="1.2.826.0.1.3680043.10.1138.15.4.",
    )  # fmt: skip
    creds = json.loads((stack.data_dir / "keys" / "orthanc-http.json").read_text())
    posted = httpx.post(
        f"http://127.0.0.1:{stack.env['GATEWAY_ORTHANC_HTTP_PORT']}/instances",
        content=path.read_bytes(), auth=(creds["user"], creds["password"]), timeout=60,
    )  # fmt: skip
    assert posted.status_code == 200, posted.text
    return uid_of(path)


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_an_alert_is_acknowledged_by_name_and_the_first_ack_stands(
    stack: Up, outsider: str
) -> None:
    auditor, clinician = token(stack, "ann-audit", "auditor"), token(stack, "dr-bo", "clinician")
    with api(stack, auditor) as ann, api(stack, clinician) as bo:
        query = {"sop_instance_uid": outsider, "kind": "unregistered"}
        [alert] = wait_for(
            "the plugin's alert", lambda: ann.get("/v1/alerts", params=query).json()["items"]
        )
        assert alert["acknowledged_by"] is None
        before = time.time()
        acked = ann.post(f"/v1/alerts/{alert['id']}/ack")
        after = time.time()
        again = bo.post(f"/v1/alerts/{alert['id']}/ack")
        [listed] = bo.get("/v1/alerts", params=query).json()["items"]
        unknown = ann.post("/v1/alerts/plugin-999999/ack")

    assert acked.status_code == 200, acked.text
    assert acked.json()["acknowledged_by"] == "ann-audit"
    assert before <= acked.json()["acknowledged_at"] <= after
    assert again.json() == acked.json() == listed
    assert unknown.status_code == 404 and unknown.json()["type"] == "/problems/not-found"
    assert httpx.get(origin(stack) + unknown.json()["type"]).status_code == 200


def test_past_audits_and_their_findings_are_read_a_page_at_a_time(stack: Up, outsider: str) -> None:
    with api(stack, admin(stack)) as client:
        started = []
        for _ in range(2):
            reply = client.post("/v1/audits")
            assert reply.status_code == 202, reply.text
            started.append(reply.json()["id"])
            wait_for("the audit to finish", lambda: client.get(f"/v1/audits/{started[-1]}").json()["state"] != "running", timeout=300)  # fmt: skip
        first = client.get("/v1/audits", params={"limit": 1})
        second = client.get(first.headers["link"].split(">")[0].lstrip("<"))
        pages = [client.get(f"/v1/audits/{started[-1]}/findings", params={"limit": 1}).json()]
        while pages[-1]["next_cursor"] is not None:
            url = f"/v1/audits/{started[-1]}/findings"
            pages.append(
                client.get(url, params={"limit": 1, "cursor": pages[-1]["next_cursor"]}).json()
            )
        stale = client.get("/v1/audits", params={"cursor": first.json()["next_cursor"][:-2]})

    assert [a["id"] for a in first.json()["items"] + second.json()["items"]] == started[::-1]
    assert first.headers["link"].endswith('>; rel="next"')
    latest = first.json()["items"][0]
    assert latest["state"] == "done" and latest["findings"] >= 1
    assert latest["summary"]["unregistered"] >= 1
    assert [len(page["items"]) for page in pages] == [1] * latest["findings"]
    assert outsider in {f["sop_instance_uid"] for page in pages for f in page["items"]}
    assert stale.status_code == 422 and stale.json()["type"] == "/problems/invalid-cursor"


def test_patient_records_are_read_by_key_and_only_phi_roles_make_one(stack: Up) -> None:
    identity = {"patient_id": "NOBODY-15", "issuer": "HOSP"}
    auditor = token(stack, "cy-audit", "auditor")
    with api(stack, admin(stack)) as boss, api(stack, auditor) as cy:
        key = boss.post("/v1/patients/key", json=identity)
        refused = cy.post("/v1/patients/key", json=identity)
        records = cy.get("/v1/patients/records", params=key.json())
        old_route = boss.get("/v1/patients/NOBODY-15/records")

    assert key.status_code == 200 and len(key.json()["patient_key"]) == 64
    assert refused.status_code == 403 and refused.json()["type"] == "/problems/forbidden"
    assert records.json() == {
        "items": [], "next_cursor": None, "patient_key": key.json()["patient_key"],
        "xrayhash_count": 0,
    }  # fmt: skip
    assert old_route.status_code == 404
    assert "NOBODY-15" not in stack.log_path.read_text(errors="replace")
