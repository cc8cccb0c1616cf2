"""The web console in headless Chromium against a real ``up`` (Orthanc with the plugin, anvil).

An auditor, a clinician and the admin log in with tokens from ``xray-gateway token
create`` and walk every page; the tests read what the pages say (counts, verdicts, the
diff's rows, what each role is shown) and drive the login and the search by keyboard.
The browser reaches the gateway only (hp-api's ``offline_browser``: no CDN could help).

Screenshots are saved to ``test-artifacts/console/`` (git-ignored; the path is printed):
the overview, a tampered instance with its diff (as the auditor and as the clinician),
an audit in progress, its findings, the alerts, the access trail.

The audit "in progress" is held, not raced: ``up`` runs with the failpoint
``audit.before_verdict`` armed with a release file, so the first audit's first check
waits until the test has seen and photographed it running.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.integration.browser import OfflineBrowser
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env, run
from tests.integration.plugin_helpers import Study, edit_patient_name, make_study, stored_file

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
SLICES = 6
ACCESSION = "FXA0100"  # what dicom_fixtures.ct_series writes
EDITED_NAME = "Edited^Behind^Our^Back"


@dataclass
class ConsoleStack:
    up: Up
    origin: str
    tokens: dict[str, str]
    study: Study
    tampered_uid: str
    release: Path
    orthanc: str
    orthanc_auth: tuple[str, str]
    orthanc_ids: list[str]

    def orthanc_get(self, path: str) -> requests.Response:
        return requests.get(f"{self.orthanc}{path}", auth=self.orthanc_auth, timeout=60)


def shot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as a test artifact and say where it is."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    root = tmp_path_factory.mktemp("console")
    release = root / "release-audit"
    env = gateway_env(
        root / "var",
        GATEWAY_FAILPOINT="audit.before_verdict:1",
        GATEWAY_FAILPOINT_RELEASE=str(release),
        GATEWAY_TRAIL_WINDOW_S="0",  # access batches cut at once
    )
    up = Up(env)
    try:
        tokens = {"admin": (up.data_dir / "api-token").read_text().strip()}
        for role in ("auditor", "clinician"):
            issued = run(env, "token", "create", "--name", f"{role}-1", "--role", role)
            assert issued.returncode == 0, issued.stderr
            tokens[role] = issued.stdout.strip()
        study = make_study(root, count=SLICES)
        sent = storescu(up.dicom_port, study.files)
        assert sent.returncode == 0, sent.stdout[-2000:]
        rows = up.wait_done(SLICES)
        assert [row["stage"] for row in rows] == ["committed"] * SLICES
        victim = rows[0]
        creds = json.loads((up.data_dir / "keys" / "orthanc-http.json").read_text())
        orthanc = f"http://127.0.0.1:{env['GATEWAY_ORTHANC_HTTP_PORT']}"
        auth = (creds["user"], creds["password"])
        edit_patient_name(
            stored_file(up.data_dir, orthanc, auth, victim["orthanc_id"]), EDITED_NAME
        )
        yield ConsoleStack(
            up, f"http://127.0.0.1:{up.api_port}", tokens, study, victim["sop_instance_uid"],
            release, orthanc, auth, [row["orthanc_id"] for row in rows],
        )  # fmt: skip
    finally:
        release.touch()  # never leave an audit thread held
        assert up.stop() == 0


def log_in_by_keyboard(page: Page, token: str, *, then: str = "/console") -> None:
    """Open a page, land on the login form, and log in with the keyboard only."""
    page.goto(then)
    expect(page).to_have_url(re.compile(r"/console/login\?next="))
    # the token field has the focus on arrival; Enter submits the form
    assert page.evaluate("document.activeElement.id") == "token"
    page.keyboard.type(token)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(re.escape(then) + "$"))


def nav_links(page: Page) -> list[str]:
    return page.locator("header nav a").all_inner_texts()


# -- login, roles, keyboard -----------------------------------------------------------------


def test_each_role_logs_in_by_keyboard_and_sees_its_own_links(
    console: ConsoleStack, offline_browser: OfflineBrowser
) -> None:
    # a newcomer finds the console where `up`'s banner says it is
    assert f"{console.origin}/console  (log in" in "".join(console.up.banner)
    seen = {}
    for role in ("admin", "auditor", "clinician"):
        with offline_browser.page(console.origin) as cut:
            log_in_by_keyboard(cut.page, console.tokens[role])
            assert cut.page.get_by_test_id("who").inner_text().endswith(f"({role})")
            seen[role] = nav_links(cut.page)
            # the skip link is the first stop of Tab, visible when focused, and leads to main
            cut.page.keyboard.press("Tab")
            focused = cut.page.evaluate("document.activeElement.textContent")
            assert focused == "Skip to content"
            box = cut.page.locator(".skip-link").bounding_box()
            assert box is not None and box["x"] >= 0  # shown on screen, not parked off it
            cut.page.keyboard.press("Enter")
            assert cut.page.evaluate("document.activeElement.id") == "main"
            # logout ends the session: the overview asks for a login again
            cut.page.get_by_role("button", name="Log out").click()
            cut.page.wait_for_url(re.compile(r"/console/login$"))
            cut.page.goto("/console")
            expect(cut.page).to_have_url(re.compile(r"/console/login\?next="))
        assert cut.left == []
    full = ["Overview", "Studies and instances", "Audits", "Alerts"]
    assert seen["admin"][:4] == full and seen["auditor"][:4] == full
    assert seen["clinician"] == ["Overview", "Studies and instances", "Alerts"]


def test_a_wrong_token_is_told_and_the_clinician_is_kept_out_of_audits(
    console: ConsoleStack, offline_browser: OfflineBrowser
) -> None:
    with offline_browser.page(console.origin) as cut:
        cut.page.goto("/console/login")
        cut.page.keyboard.type("not-a-token")
        cut.page.keyboard.press("Enter")
        expect(cut.page.get_by_role("alert")).to_have_text("That token is not valid.")
        assert cut.page.evaluate("document.activeElement.id") in ("token", "")
        cut.page.fill("#token", console.tokens["clinician"])
        cut.page.keyboard.press("Enter")
        cut.page.wait_for_url(re.compile(r"/console$"))
        answer = cut.page.goto("/console/audits")
        assert answer is not None and answer.status == 403
        expect(cut.page.get_by_role("alert")).to_have_text("The clinician role may not audit.")


# -- studies and instances ------------------------------------------------------------------


def search_by_keyboard(page: Page, *, kind_label: str, text: str) -> None:
    """On the search page: pick the kind with arrow keys from the first radio, type, Enter."""
    page.goto("/console/search")
    page.locator("input[name=kind]").first.focus()
    labels = page.locator("fieldset label").all_inner_texts()
    for _ in range([label.strip() for label in labels].index(kind_label)):
        page.keyboard.press("ArrowDown")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def test_the_auditor_finds_the_tampered_instance_by_keyboard_and_sees_no_values(
    console: ConsoleStack, offline_browser: OfflineBrowser
) -> None:
    with offline_browser.page(console.origin) as cut:
        page = cut.page
        log_in_by_keyboard(page, console.tokens["auditor"])
        search_by_keyboard(page, kind_label="Study Instance UID", text=console.study.study_uid)
        page.wait_for_url(re.compile(r"/console/studies/"))
        summary = page.locator("#study-summary")
        expect(summary.locator('tr[data-status="tampered"] td')).to_have_text("1")
        expect(summary.locator('tr[data-status="intact"] td')).to_have_text(str(SLICES - 1))
        page.get_by_role("link", name=console.tampered_uid).press("Enter")  # keyboard too
        page.wait_for_url(re.compile(r"/console/instances/"))
        expect(page.locator("#verdict")).to_have_text("tampered")
        expect(page.locator("#tamper")).to_have_text("header changed")
        expect(page.locator('#diff tr[data-keyword="PatientName"]')).to_have_count(1)
        assert EDITED_NAME not in page.content()
        expect(page.locator("#redacted-note")).to_be_visible()
        assert re.fullmatch(r"0x[0-9a-f]{64}", page.locator("#tx").inner_text())
        assert page.locator("#block").inner_text().split()[0].isdigit()
        assert page.locator("#viewer-link").get_attribute("href", timeout=1000)
        shot(page, "tampered-instance-auditor")
        # no accession search for a role without patient data
        page.goto("/console/search")
        expect(page.locator("input[value=accession]")).to_have_count(0)
    assert cut.left == []


def test_the_clinician_sees_the_values_and_searches_by_accession_number(
    console: ConsoleStack, offline_browser: OfflineBrowser
) -> None:
    with offline_browser.page(console.origin) as cut:
        page = cut.page
        log_in_by_keyboard(page, console.tokens["clinician"])
        search_by_keyboard(page, kind_label="Accession number", text=ACCESSION)
        page.wait_for_url(re.compile(r"kind=accession"))
        hits = page.locator("ul.hits a").all_inner_texts()
        assert sorted(hits) == sorted(console.study.sop_uids)
        search_by_keyboard(page, kind_label="SOP Instance UID", text=console.tampered_uid)
        page.wait_for_url(re.compile(r"/console/instances/"))
        row = page.locator('#diff tr[data-keyword="PatientName"] td')
        assert row.nth(4).inner_text() == EDITED_NAME
        expect(page.locator("#redacted-note")).to_have_count(0)
        shot(page, "tampered-instance-clinician")
        # a bad UID is explained on the page, with the form kept
        search_by_keyboard(page, kind_label="SOP Instance UID", text="1.2.x")
        expect(page.get_by_role("alert")).to_contain_text("digits and dots")
    assert cut.left == []


# -- audits, overview, alerts ---------------------------------------------------------------


def test_an_audit_shows_live_progress_then_findings_to_filter_and_export(
    console: ConsoleStack, offline_browser: OfflineBrowser
) -> None:
    with offline_browser.page(console.origin) as cut:
        page = cut.page
        log_in_by_keyboard(page, console.tokens["auditor"], then="/console/audits")
        page.get_by_role("button", name="Start an audit").click()
        page.wait_for_url(re.compile(r"/console/audits/[0-9a-f]{32}$"))
        # held by the failpoint: running, and polled by htmx
        expect(page.locator("#audit-state")).to_have_text("running")
        assert page.locator("#audit-progress").get_attribute("hx-trigger") == "every 1s"
        shot(page, "audit-in-progress")
        console.release.touch()
        expect(page.locator("#audit-state")).to_have_text("done", timeout=60_000)
        findings = page.locator("#findings tbody tr")
        expect(findings).to_have_count(1)
        assert findings.first.get_attribute("data-status") == "tampered"
        assert console.tampered_uid in findings.first.inner_text()
        shot(page, "audit-findings")
        page.select_option("#status", "missing")
        page.get_by_role("button", name="Filter").click()
        expect(page.locator("#no-findings")).to_contain_text("No finding with status missing")
        page.select_option("#status", "tampered")
        page.get_by_role("button", name="Filter").click()
        with page.expect_download() as download:
            page.locator("#csv").click()
        text = Path(download.value.path()).read_text()
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [(r["status"], r["sop_instance_uid"]) for r in rows] == [
            ("tampered", console.tampered_uid)
        ]
        page.goto("/console/audits")
        listed = page.locator("#audit-list tbody tr")
        expect(listed).to_have_count(1)
        assert listed.first.get_attribute("data-state") == "done"
    assert cut.left == []


def test_the_overview_counts_verdicts_queue_and_alerts_and_charts_the_day(
    console: ConsoleStack, offline_browser: OfflineBrowser
) -> None:
    with offline_browser.page(console.origin) as cut:
        page = cut.page
        log_in_by_keyboard(page, console.tokens["admin"])
        verdicts = page.locator("#verdict-counts")
        expect(verdicts.locator('tr[data-status="tampered"] td')).to_have_text("1")
        expect(verdicts.locator('tr[data-status="intact"] td')).to_have_text(str(SLICES - 1))
        stages = page.locator("#stage-counts")
        expect(stages.locator('tr[data-stage="committed"] td')).to_have_text(str(SLICES))
        expect(stages.locator('tr[data-stage="failed"] td')).to_have_text("0")
        expect(page.locator("#no-parked")).to_be_visible()
        assert int(page.locator("#alerts-24h").inner_text()) >= 1  # the audit's finding
        # Chart.js drew the series the page carries: every image received and anchored
        drawn = page.evaluate(
            "() => Chart.getChart('activity-chart').data.datasets.map("
            "d => d.data.reduce((a, b) => a + b, 0))"
        )
        assert drawn == [SLICES, SLICES]
        shot(page, "overview")
    assert cut.left == []


def test_alerts_are_listed_and_acknowledged_with_who_and_when(
    console: ConsoleStack, offline_browser: OfflineBrowser
) -> None:
    with offline_browser.page(console.origin) as cut:
        page = cut.page
        log_in_by_keyboard(page, console.tokens["auditor"], then="/console/alerts")
        tampered = page.locator('#alerts tr[data-kind="tampered"]').first
        expect(tampered).to_contain_text(console.tampered_uid)
        row_id = tampered.get_attribute("id")
        tampered.get_by_role("button", name="Acknowledge").click()
        page.wait_for_url(re.compile(r"/console/alerts"))
        acked = page.locator(f"#{row_id} .acked")
        expect(acked).to_contain_text("by auditor-1")
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", acked.inner_text())
        shot(page, "alerts")
    assert cut.left == []


# -- access trail ---------------------------------------------------------------------------


def wait_confirmed(console: ConsoleStack, orthanc_id: str) -> None:
    """Until the plugin's ledger mirror has seen the instance's anchor (or its tamper)."""
    deadline = time.monotonic() + 60
    answer: dict[str, object] = {}
    while time.monotonic() < deadline:
        answer = console.orthanc_get(f"/xray/instances/{orthanc_id}/integrity").json()
        if answer["status"] != "unconfirmed" and "confirmed on the ledger" in str(answer["ledger"]):
            return
        time.sleep(0.5)
    raise AssertionError(f"never confirmed: {answer}")


def test_the_access_trail_shows_who_read_the_study_each_proof_checked_on_chain(
    console: ConsoleStack, offline_browser: OfflineBrowser
) -> None:
    for orthanc_id in console.orthanc_ids:
        wait_confirmed(console, orthanc_id)
        console.orthanc_get(f"/instances/{orthanc_id}/file")  # the tampered one is refused
    user = console.orthanc_auth[0]
    with offline_browser.page(console.origin) as cut:
        page = cut.page
        log_in_by_keyboard(page, console.tokens["auditor"], then="/console/trail")
        page.locator("#q").fill(console.study.study_uid)
        page.get_by_role("button", name="Search").click()
        page.wait_for_url(re.compile(r"/console/trail\?"))
        rows = page.locator("#trail tbody tr")
        deadline = time.monotonic() + 90  # the trail loop imports the journal and anchors
        while page.locator('#trail tr[data-anchored="no"]').count() or (
            page.locator("#trail td", has_text=re.compile(r"^rest$")).count() < SLICES
        ):
            assert time.monotonic() < deadline, page.locator("#trail").inner_text()[-2000:]
            time.sleep(1)
            page.reload()
        routes = [row.locator("td").nth(2).inner_text() for row in rows.all()]
        assert routes.count("rest") == SLICES
        assert "console:instance" in routes and "console:study" in routes
        # every entry anchored, and its proof leads to the access batch on the chain
        assert rows.count() == page.locator('#trail tr[data-on-chain="yes"]').count()
        refused = page.locator("#trail tbody tr", has_text="refused")
        expect(refused.filter(has_text="rest")).to_have_count(1)
        assert console.tampered_uid in refused.filter(has_text="rest").inner_text()
        page.locator("#trail details").first.locator("summary").click()
        expect(page.locator("#trail details").first).to_contain_text("checked on chain")
        shot(page, "access-trail")
        # what one reader read: the clinician's reads through the console
        page.goto("/console/trail?by=user&q=clinician-1")
        mine = page.locator("#trail tbody tr")
        assert mine.count() >= 1
        assert {row.locator("td").nth(2).inner_text() for row in mine.all()} <= {
            "console:instance",
            "console:study",
        }
        assert user not in page.locator("#trail").inner_text()
    assert cut.left == []
