"""The web console on a real uvicorn (tests/serve.py): login and logout, the CSRF check, what each
role sees on each page (no attribute values and no accession search for an auditor), the
empty and error states, the findings' CSV, the activity chart's buckets.

The parts behind it are the trust tests' world (:mod:`tests.unit.trust.world`): the real
index and store, the stand-ins of the PACS and the ledger. The browser walk against a real
``up`` is tests/integration/test_console_browser.py.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from pydicom import dcmread

from gateway.api.app import Health, create_app
from gateway.api.auth import Role, Tokens, ensure_token
from gateway.api.console import (
    CHART_BUCKET_S,
    Console,
    activity_chart,
    finding_statuses,
    findings_csv,
)
from gateway.api.deps import Services
from gateway.api.limits import Limits, RateLimiter, UploadArea
from gateway.api.sessions import SESSION_COOKIE, Sessions, ensure_session_key
from gateway.trust.audit import AuditReport, Audits, AuditState, Finding
from gateway.trust.trail import Trail
from tests.serve import serve
from tests.unit.trust.world import Image, World


@dataclass
class Site:
    world: World
    url: str
    tokens: dict[str, str]
    audits: Audits
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def origin(self) -> dict[str, str]:
        return {"Origin": self.url}

    def client(self, role: str | None = None, **options: Any) -> httpx.Client:
        client = httpx.Client(base_url=self.url, follow_redirects=False, timeout=30, **options)
        self.clients.append(client)
        if role is not None:
            answer = client.post(
                "/console/login", data={"token": self.tokens[role]}, headers=self.origin
            )
            assert answer.status_code == 303, answer.text
        return client


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    world = World(tmp_path)
    tokens = Tokens(admin_token_file=tmp_path / "api-token", issued_file=tmp_path / "t.json")
    issued = {"admin": ensure_token(tokens.admin_token_file)}
    for role in cast(list[Role], ["auditor", "clinician"]):
        issued[role] = tokens.issue(name=f"{role}-1", role=role)
    verifier = world.verifier()
    trail = Trail(world.index, pseudonym_key=world.pseudonym_key)
    audits = Audits(tmp_path / "audits.sqlite", verifier=verifier, index=world.index,
                    alerts=world.alerts)  # fmt: skip
    services = Services(
        verifier=verifier, tokens=tokens, audits=audits, alerts=world.alerts,
        records=cast(Any, None), trail=trail,
        limits=Limits(
            uploads=UploadArea(tmp_path / "up", max_concurrent=1, quota_bytes=1 << 20,
                               reserve_bytes=0),
            rate=RateLimiter(per_minute=600, burst=50), max_upload_bytes=1000,
        ),
    )  # fmt: skip
    sessions = Sessions(
        key=ensure_session_key(tmp_path / "keys" / "console-session.key"),
        lifetime_s=3600, still_valid=tokens.still_valid,
    )  # fmt: skip
    console = Console(sessions=sessions, index=world.index, viewer_url="http://pacs:8042")
    app = create_app(health=Health(), services=services, console=console)
    with serve(app) as url:
        made = Site(world, url, issued, audits)
        yield made
        for client in made.clients:
            client.close()
    audits.close()
    world.close()


def tampered(site: Site, tmp_path: Path) -> Image:
    """A committed image whose PACS copy had its PatientName edited."""
    (image,) = site.world.images(1)
    row = site.world.commit(image)
    dataset = dcmread(image.path)
    dataset.PatientName = "Other^Body"
    out = io.BytesIO()
    dataset.save_as(out)
    site.world.pacs.overwrite(row.orthanc_id or "", out.getvalue())
    return image


# -- login ----------------------------------------------------------------------------------


def test_pages_send_a_visitor_to_the_login_form(site: Site) -> None:
    answer = site.client().get("/console/audits")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/login?next=%2Fconsole%2Faudits"
    form = site.client().get(answer.headers["location"])
    assert form.status_code == 200 and 'name="token"' in form.text
    assert 'href="#main"' in form.text  # the skip link


def test_login_sets_a_strict_httponly_cookie_and_never_keeps_the_token(site: Site) -> None:
    client = site.client()
    answer = client.post(
        "/console/login",
        data={"token": site.tokens["auditor"], "next": "/console/audits"},
        headers=site.origin,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/console/audits"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here; over TLS the cookie is Secure
    assert site.tokens["auditor"] not in cookie
    page = client.get("/console/audits")
    assert page.status_code == 200 and "auditor-1 (auditor)" in page.text


def test_over_tls_the_cookie_is_secure(site: Site) -> None:
    # behind a TLS proxy on loopback (uvicorn trusts its X-Forwarded-Proto)
    answer = site.client().post(
        "/console/login", data={"token": site.tokens["admin"]},
        headers={"Origin": site.url.replace("http:", "https:"), "X-Forwarded-Proto": "https"},
    )  # fmt: skip
    assert "Secure" in answer.headers["set-cookie"]


def test_a_wrong_token_is_refused_and_said_so(site: Site) -> None:
    answer = site.client().post("/console/login", data={"token": "nope"}, headers=site.origin)
    assert answer.status_code == 401 and "That token is not valid." in answer.text
    assert "set-cookie" not in answer.headers


def test_login_goes_back_only_into_the_console(site: Site) -> None:
    answer = site.client().post(
        "/console/login", data={"token": site.tokens["admin"], "next": "https://evil.example/"},
        headers=site.origin,
    )  # fmt: skip
    assert answer.headers["location"] == "/console"


def test_a_cross_site_post_is_refused(site: Site) -> None:
    client = site.client("auditor")
    evil = {"Origin": "http://evil.example"}
    assert client.post("/console/audits", headers=evil).status_code == 403
    assert client.post("/console/logout", headers=evil).status_code == 403
    assert client.post("/console/login", data={"token": site.tokens["admin"]},
                       headers=evil).status_code == 403  # fmt: skip
    assert client.get("/console").status_code == 200  # still logged in
    assert client.post("/console/audits").status_code == 403  # no Origin, no HX-Request


def test_logout_ends_the_session(site: Site) -> None:
    client = site.client("clinician")
    cookie = client.cookies[SESSION_COOKIE]
    answer = client.post("/console/logout", headers=site.origin)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/login"
    replay = site.client(cookies={SESSION_COOKIE: cookie})
    assert replay.get("/console").status_code == 303  # the old cookie opens nothing


def test_a_revoked_token_logs_its_browser_out(site: Site, tmp_path: Path) -> None:
    client = site.client("auditor")
    Tokens(admin_token_file=tmp_path / "api-token", issued_file=tmp_path / "t.json").revoke(
        "auditor-1"
    )
    assert client.get("/console").status_code == 303


# -- roles ----------------------------------------------------------------------------------


def test_each_role_sees_the_links_it_may_follow(site: Site) -> None:
    links = {
        role: set(re.findall(r'<a href="(/console[^"?]*)"', site.client(role).get("/console").text))
        for role in ("admin", "auditor", "clinician")
    }
    assert {"/console/audits", "/console/alerts", "/console/search"} <= links["admin"]
    assert {"/console/audits", "/console/alerts", "/console/search"} <= links["auditor"]
    assert "/console/audits" not in links["clinician"]
    assert site.client("clinician").get("/console/audits").status_code == 403


def test_the_auditor_sees_which_attributes_changed_but_not_their_values(
    site: Site, tmp_path: Path
) -> None:
    image = tampered(site, tmp_path)
    auditor = site.client("auditor").get(f"/console/instances/{image.uid}")
    assert auditor.status_code == 200
    assert 'id="verdict">tampered<' in auditor.text and "header changed" in auditor.text
    assert 'data-keyword="PatientName"' in auditor.text
    assert "Other^Body" not in auditor.text and "Values are hidden" in auditor.text
    clinician = site.client("clinician").get(f"/console/instances/{image.uid}")
    assert "Other^Body" in clinician.text and "Values are hidden" not in clinician.text


def test_an_instance_page_shows_its_evidence_and_the_viewer_link(site: Site) -> None:
    images = site.world.images(3)
    rows = site.world.commit_batch(images)
    page = site.client("auditor").get(f"/console/instances/{images[1].uid}").text
    assert 'id="verdict">intact<' in page
    assert rows[1].tx_hash is not None and rows[1].tx_hash in page
    assert f"{rows[1].batch_id}: leaf 1 of 3" in page
    assert len(re.findall(r'<li class="hex">[0-9a-f]{64}</li>', page)) == 2  # proof of 3 leaves
    assert f"http://pacs:8042/app/explorer.html#instance?uuid={rows[1].orthanc_id}" in page
    study = site.client("auditor").get(f"/console/studies/{images[0].header.study_instance_uid}")
    assert study.text.count('data-status="intact"') == 4  # the summary row and three instances


def test_accession_search_is_only_for_roles_allowed_phi(site: Site) -> None:
    auditor = site.client("auditor")
    assert 'value="accession"' not in auditor.get("/console/search").text
    refused = auditor.get("/console/search", params={"kind": "accession", "q": "A1"})
    assert refused.status_code == 403
    clinician = site.client("clinician")
    assert 'value="accession"' in clinician.get("/console/search").text
    wildcard = clinician.get("/console/search", params={"kind": "accession", "q": "A*"})
    assert wildcard.status_code == 422 and "without * or ?" in wildcard.text
    # the search itself runs against Orthanc: tests/integration/test_console_browser.py


def test_search_by_uid_goes_to_the_page_and_a_bad_uid_is_explained(site: Site) -> None:
    client = site.client("auditor")
    found = client.get("/console/search", params={"kind": "instance", "q": "1.2.3"})
    assert found.status_code == 303 and found.headers["location"] == "/console/instances/1.2.3"
    bad = client.get("/console/search", params={"kind": "study", "q": "1.2.x"})
    assert bad.status_code == 422 and 'role="alert"' in bad.text
    unknown = client.get("/console/instances/1.2.3")
    assert unknown.status_code == 404 and "Not found" in unknown.text


# -- overview, audits -----------------------------------------------------------------------


def test_the_overview_counts_the_queue_and_the_last_audit(site: Site, tmp_path: Path) -> None:
    client = site.client("auditor")
    first = client.get("/console").text
    assert "No audit has finished yet." in first and 'id="no-parked"' in first
    image = tampered(site, tmp_path)
    site.world.receive(site.world.images(1)[0])  # one row waiting at fingerprint
    started = client.post("/console/audits", headers=site.origin)
    audit_id = started.headers["location"].rsplit("/", 1)[1]
    site.audits.wait(audit_id, 60)
    page = client.get("/console").text
    counts = dict(re.findall(r'data-stage="(\w+)"><th scope="row">[^<]*</th><td>(\d+)</td>', page))
    assert counts["committed"] == "1" and counts["fingerprint"] == "1"
    verdicts = dict(re.findall(r'data-status="(\w+)">.*?<td>(\d+)</td>', page))
    assert verdicts["tampered"] == "1" and verdicts["pending"] == "1"
    assert audit_id[:8] in page
    findings = client.get(f"/console/audits/{audit_id}", params={"status": "tampered"}).text
    table = findings.split('id="findings"', 1)[1]
    assert re.findall(r'<tr data-status="(\w+)">', table) == ["tampered"]
    assert image.uid in table


def test_findings_export_as_csv_a_spreadsheet_cannot_run() -> None:
    findings = [
        Finding("tampered", "1.2.3", "abc", "header_changed", "changed"),
        Finding("missing", None, None, None, '=HYPERLINK("x")', record_key="ab" * 32),
    ]
    rows = list(csv.reader(io.StringIO(findings_csv(findings))))
    assert rows[0][:2] == ["status", "sop_instance_uid"]
    assert rows[1][:4] == ["tampered", "1.2.3", "abc", "header_changed"]
    assert rows[2][-1].startswith("'=")


def test_the_findings_filter_offers_every_status_found() -> None:
    trail = Finding("trail_tampered", None, None, None, "an access entry was deleted")
    report = AuditReport(summary={}, findings=[trail], ledger_records_without_instance=0)
    state = AuditState("a", "me", "done", 0.0, 1.0, 1, 1, report, None)
    offered = finding_statuses(state)
    assert offered[-1] == "trail_tampered" and "tampered" in offered and "intact" not in offered


def test_the_chart_has_every_bucket_of_the_day(site: Site) -> None:
    image = site.world.images(1)[0]
    row_id = site.world.receive(image)
    received_at = site.world.index.get(row_id).received_at
    chart = activity_chart(site.world.index, now=received_at)
    assert len(chart["labels"]) == 24 * 3600 // CHART_BUCKET_S + 1
    assert sum(chart["received"]) == 1 and chart["received"][-1] == 1
    assert sum(chart["anchored"]) == 0


def test_an_alert_is_acknowledged_by_the_session_s_principal(site: Site) -> None:
    client = site.client("auditor")
    assert 'id="no-alerts"' in client.get("/console/alerts").text
    site.world.alerts.record(kind="tampered", source="verifier", detail="a test alert",
                             sop_instance_uid="1.2.3")  # fmt: skip
    page = client.get("/console/alerts").text
    (alert_id,) = re.findall(r'action="/console/alerts/([\w-]+)/ack"', page)
    refused = client.post(f"/console/alerts/{alert_id}/ack", headers={"Origin": "http://x.example"})
    assert refused.status_code == 403
    done = client.post(f"/console/alerts/{alert_id}/ack", headers=site.origin)
    assert done.status_code == 303 and done.headers["location"] == "/console/alerts"
    after = client.get("/console/alerts").text
    assert "by auditor-1, " in after and "/ack" not in after
    unknown = client.post("/console/alerts/gateway-999/ack", headers=site.origin)
    assert unknown.status_code == 404
    bad_cursor = client.get("/console/alerts", params={"cursor": "bm90LWEtY3Vyc29y"})
    assert bad_cursor.status_code == 422 and 'role="alert"' in bad_cursor.text


def test_past_audits_come_a_page_at_a_time(site: Site) -> None:
    client = site.client("admin")
    assert 'id="no-audits"' in client.get("/console/audits").text
    for _ in range(2):
        audit_id = client.post("/console/audits", headers=site.origin).headers["location"]
        site.audits.wait(audit_id.rsplit("/", 1)[1], 60)
    listed = client.get("/console/audits").text
    assert listed.count('data-state="done"') == 2 and 'id="next-page"' not in listed
    progress = client.get(f"{audit_id}/progress")
    assert progress.headers.get("hx-refresh") == "true"  # done: the page reloads with findings
    assert "hx-trigger" not in progress.text


# -- access trail ---------------------------------------------------------------------------


def test_what_the_console_shows_is_a_read_in_the_access_trail(site: Site) -> None:
    images = site.world.images(2)
    site.world.commit_batch(images)
    clinician = site.client("clinician")
    clinician.get(f"/console/instances/{images[0].uid}")
    clinician.get(f"/console/studies/{images[0].header.study_instance_uid}")
    assert 'href="/console/trail"' not in clinician.get("/console").text
    assert clinician.get("/console/trail").status_code == 403
    auditor = site.client("auditor")
    assert 'href="/console/trail"' in auditor.get("/console").text
    by_user = auditor.get("/console/trail", params={"by": "user", "q": "clinician-1"}).text
    routes = re.findall(r"<td>(console:\w+)</td>", by_user)
    assert routes == ["console:instance", "console:study", "console:study"]
    assert by_user.count('data-anchored="no"') == 3  # not yet batched: no proof to show
    study = images[0].header.study_instance_uid
    by_study = auditor.get("/console/trail", params={"by": "study", "q": study}).text
    assert by_study.count("<tr data-entry=") == 3  # every read of an instance of the study
    empty = auditor.get("/console/trail", params={"by": "user", "q": "nobody"}).text
    assert 'id="no-entries"' in empty
    bad = auditor.get("/console/trail", params={"by": "study", "q": "not-a-uid"})
    assert bad.status_code == 422 and 'role="alert"' in bad.text
