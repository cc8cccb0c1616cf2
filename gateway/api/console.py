"""The web console (``/console``): server-rendered pages for auditors, clinicians and admins.

Jinja2 templates (``api/templates/console/``) and htmx, with the assets served by the
gateway itself (no CDN). A browser logs in with an API token and gets a session
(:mod:`gateway.api.sessions`); the token's role decides what each page shows, as in the
``/v1`` API: an auditor never sees attribute values nor searches by accession number
(``phi``), a clinician sees no audits. Every POST passes the CSRF check.

=====================  ============================================================
page                   what
=====================  ============================================================
``/console``           counts per verdict (last audit), queue per stage, failing and
                       parked rows, alerts in 24 h, ingest and anchor rate chart
``/console/search``    by Study or SOP Instance UID, or accession number (``phi``)
``/console/studies/…`` a study's verdicts; ``/console/instances/…`` one verdict with
                       its evidence, the viewer link and the attribute diff
``/console/audits``    start one, live progress, findings (filter, CSV), past audits
``/console/alerts``    alerts, newest first, paginated, acknowledgeable
``/console/trail``     the access trail: who read a study, what a reader read, each
                       entry with its inclusion proof, checked against the chain
``/console/studies/…/  the read-only viewer of a study (a grantee's, under a standing
view``                 grant): verdicts, images Orthanc renders fetched by the gateway
                       (never a link to Orthanc), and the checked DICOM zip
=====================  ============================================================

A grantee's overview lists the studies its standing grants cover, nothing else.

A verdict shown on a page is a read, written to the access trail as the ``/v1`` routes
write theirs (routes ``console:instance``, ``console:study``).
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates

from gateway.api.alerts import ALERTS
from gateway.api.assets import vendored_url
from gateway.api.audits import AUDITS
from gateway.api.auth import Permission, Principal
from gateway.api.deps import Services
from gateway.api.problems import DENIALS, Problem
from gateway.api.sessions import SESSION_COOKIE, Session, Sessions, same_origin
from gateway.errors import (
    AccessDenied,
    AuditRunning,
    GatewayError,
    SignInRefused,
    Unavailable,
    UnknownAlert,
    UnknownInstance,
)
from gateway.index.db import PARKED, STAGES, Index
from gateway.pacs.client import Pacs
from gateway.trust.alerts import Alerts
from gateway.trust.audit import AuditState, Finding, PastAudit
from gateway.trust.share import study_uids, study_zip
from gateway.trust.signin import Nonce
from gateway.trust.trail import ProvenEntry, proof_holds
from gateway.trust.verdicts import EXPLANATIONS, STATUSES
from gateway.trust.verify import Verdict

templates = Jinja2Templates(directory=Path(__file__).parent / "templates" / "console")
#: The console's pages load from the gateway only, and may not be framed.
POLICY = "; ".join(
    (
        "default-src 'self'",
        "img-src 'self' data:",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

router = APIRouter(prefix="/console", include_in_schema=False)

UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: Accession numbers are short strings (VR SH); Orthanc's wildcards are refused.
ACCESSION = re.compile(r"^[^*?\\]{1,16}$")
#: The chart: the last 24 hours in 30-minute buckets.
CHART_WINDOW_S = 24 * 3600
CHART_BUCKET_S = 1800
#: Rows per page of a list, and the most instances an accession search lists.
PAGE = 50
MAX_ACCESSION_HITS = 200


@dataclass
class Console:
    """What the console needs beside the ``/v1`` services."""

    sessions: Sessions
    index: Index | None = None
    #: Orthanc's address as a browser reaches it; ``None``: no viewer links.
    viewer_url: str | None = None


def mount(app: FastAPI, console: Console) -> None:
    """Serve the console's pages on ``app`` (its assets are under ``/static/``, api/assets.py)."""
    app.state.console = console
    app.include_router(router)


# -- sessions --------------------------------------------------------------------------------


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def _services(request: Request) -> Services | None:
    services: Services | None = getattr(request.app.state, "services", None)
    return services


def _session(request: Request) -> Session | None:
    return _console(request).sessions.find(request.cookies.get(SESSION_COOKIE))


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/console/login?{urlencode({'next': target})}", status_code=303)


#: Which navigation link each page is under.
NAV = {
    "overview.html": "overview",
    "search.html": "search",
    "study.html": "search",
    "instance.html": "search",
    "audits.html": "audits",
    "audit.html": "audits",
    "alerts.html": "alerts",
    "trail.html": "trail",
    "granted.html": "overview",
    "viewer.html": "overview",
}


def _page(
    request: Request,
    template: str,
    session: Session | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    principal = session.principal if session is not None else None
    return templates.TemplateResponse(
        request,
        template,
        {
            "who": principal,
            "may": (lambda p: principal is not None and principal.may(p)),
            "nav": NAV.get(template),
            "trail_enabled": getattr(_services(request), "trail", None) is not None,
        }
        | context,
        status_code=status_code,
        headers={"Cache-Control": "no-store", "Content-Security-Policy": POLICY},
    )


def _error(
    request: Request, session: Session | None, status_code: int, title: str, detail: str
) -> HTMLResponse:
    return _page(request, "error.html", session, status_code, title=title, detail=detail)


def _forbidden(request: Request, session: Session, permission: Permission) -> HTMLResponse:
    detail = f"The {session.principal.role} role may not {permission}."
    return _error(request, session, 403, "Not allowed", detail)


@dataclass(frozen=True)
class Visit:
    """Who is on a page, and what the pages work with."""

    session: Session
    services: Services


def _enter(request: Request, permission: Permission, *, posted: bool = False) -> Visit | Response:
    """The visit, or the page to answer instead: the login (no session), a refusal of a
    POST from elsewhere (``posted``), or of a role that may not (``permission``)."""
    session = _session(request)
    if session is None:
        return _to_login(request)
    if posted and not same_origin(request):
        return _error(request, session, 403, "Refused", "The request did not come from here.")
    services = _services(request)
    if services is None or not session.principal.may(permission):
        return _forbidden(request, session, permission)
    return Visit(session, services)


def _gateway_error(request: Request, session: Session, exc: GatewayError) -> HTMLResponse:
    """A page for an error of a part behind the console; a 5xx never quotes the exception."""
    if isinstance(exc, (UnknownInstance, UnknownAlert)):
        return _error(request, session, 404, "Not found", str(exc))
    if isinstance(exc, Unavailable):
        detail = "The chain, the object store or the PACS cannot be reached; try again later."
        return _error(request, session, 503, "A part is unavailable", detail)
    return _error(request, session, 500, "Gateway error", "See the gateway's log.")


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (one value per field)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {name: values[0] for name, values in parse_qs(body).items()}


def _safe_next(target: str | None) -> str:
    """Where to go after login: a path of the console only (never another site)."""
    if target and target.startswith("/console") and not target.startswith("//"):
        return target
    return "/console"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> Response:
    """The login form: the API token; and Sign-In with Ethereum for an account grantee."""
    return _login_page(request, next=_safe_next(next), error=None)


def _login_page(
    request: Request, *, next: str, error: str | None, siwe_error: str | None = None,
    status: int = 200,
) -> HTMLResponse:  # fmt: skip
    """The login page; when the gateway offers Sign-In with Ethereum, with a fresh nonce
    and the message to sign with it (the account's address left for the signer to fill)."""
    services = _services(request)
    siwe = services.signin.nonce() if services is not None and services.signin else None
    return _page(
        request, "login.html", None, status, next=next, error=error, siwe=siwe,
        siwe_error=siwe_error,
        siwe_message=siwe_template(siwe, issued_at=time.time()) if siwe is not None else None,
    )  # fmt: skip


def siwe_template(nonce: Nonce, *, issued_at: float) -> str:
    """The EIP-4361 message to sign with ``nonce``: ``<your address>`` stands for the
    account's checksummed address."""
    issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued_at))
    return (
        f"{nonce.domain} wants you to sign in with your Ethereum account:\n<your address>\n\n"
        f"{nonce.statement}\n\nURI: {nonce.uri}\nVersion: 1\nChain ID: {nonce.chain_id}\n"
        f"Nonce: {nonce.nonce}\nIssued At: {issued}"
    )


def _logged_in(request: Request, principal: Principal, target: str) -> Response:
    """A session for ``principal``: the cookie, and on to ``target``."""
    cookie = _console(request).sessions.open(principal)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(_console(request).sessions.lifetime_s),
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Trade a token for a session cookie; the token is not kept."""
    if not same_origin(request):
        return _error(request, None, 403, "Refused", "The request did not come from this console.")
    form = await _form(request)
    target = _safe_next(form.get("next"))
    services = _services(request)
    principal = services.authenticate(form.get("token", "").strip()) if services else None
    if principal is None:
        return _login_page(request, next=target, error="That token is not valid.", status=401)
    return _logged_in(request, principal, target)


@router.post("/login/siwe", response_class=HTMLResponse)
async def login_siwe(request: Request) -> Response:
    """Sign in with Ethereum: a pasted EIP-4361 message and its signature; the console's
    session lasts no longer than the account's (:meth:`Services.still_valid`)."""
    if not same_origin(request):
        return _error(request, None, 403, "Refused", "The request did not come from this console.")
    form = await _form(request)
    target = _safe_next(form.get("next"))
    services = _services(request)
    if services is None or services.signin is None:
        return _error(request, None, 503, "Not offered", "This gateway offers no Ethereum sign-in.")
    try:
        signed = services.signin.sign_in(form.get("message", ""), form.get("signature", ""))
    except SignInRefused as refused:
        return _login_page(request, next=target, error=None, siwe_error=str(refused), status=401)
    return _logged_in(request, Principal(signed.address, "grantee"), target)


@router.post("/logout")
def logout(request: Request) -> Response:
    """End the session and forget the cookie."""
    if not same_origin(request):
        return _error(request, None, 403, "Refused", "The request did not come from this console.")
    _console(request).sessions.close(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/console")
    return response


# -- overview --------------------------------------------------------------------------------


def activity_chart(index: Index, *, now: float) -> dict[str, list[Any]]:
    """The chart's series: images received and anchored per bucket over the window.

    Every bucket of the window is present (zero when empty), labelled in UTC.
    """
    first = int((now - CHART_WINDOW_S) // CHART_BUCKET_S) * CHART_BUCKET_S
    found = {start: (received, anchored) for start, received, anchored in
             index.activity(since=first, bucket_s=CHART_BUCKET_S)}  # fmt: skip
    starts = range(first, int(now) + 1, CHART_BUCKET_S)
    return {
        "labels": [time.strftime("%H:%M", time.gmtime(start)) for start in starts],
        "received": [found.get(start, (0, 0))[0] for start in starts],
        "anchored": [found.get(start, (0, 0))[1] for start in starts],
    }


@router.get("", response_class=HTMLResponse)
def overview(request: Request) -> Response:
    """Counts per verdict, queue per stage, failing and parked rows, alerts, the rate chart."""
    session = _session(request)
    if session is None:
        return _to_login(request)
    services, index, now = _services(request), _console(request).index, time.time()
    if not session.principal.may("verify") and session.principal.may("granted"):
        grants = services.grants if services is not None else None
        studies = grants.studies(session.principal.grantee_id) if grants is not None else []
        return _page(request, "granted.html", session, studies=studies)
    stages = index.stage_counts() if index is not None else {}
    alerts_24h = None
    if services is not None and session.principal.may("alerts"):
        alerts_24h = alerts_since(services.alerts, since=now - 86400)
    audit = _latest_audit(services) if session.principal.may("audit") else None
    return _page(
        request,
        "overview.html",
        session,
        stages=[(stage, stages.get(stage, 0)) for stage in (*STAGES, PARKED)],
        failing=index.failing(limit=PAGE) if index is not None else [],
        parked=index.parked(limit=PAGE) if index is not None else [],
        alerts_24h=alerts_24h,
        audit=audit,
        statuses=STATUSES,
        chart=activity_chart(index, now=now) if index is not None else None,
    )


#: The most alerts the overview counts; past it, it says "at least".
MAX_COUNTED_ALERTS = 1000


def alerts_since(alerts: Alerts, *, since: float) -> str:
    """How many alerts were raised since ``since``: a number, or ``"1000+"`` past the cap."""
    newest = alerts.page(limit=MAX_COUNTED_ALERTS).items
    count = sum(1 for alert in newest if alert.at >= since)
    return f"{count}+" if count == MAX_COUNTED_ALERTS else str(count)


def _latest_audit(services: Services | None) -> PastAudit | None:
    """The newest finished audit among the last page: its summary counts the verdicts."""
    if services is None:
        return None
    return next((a for a in services.audits.page(limit=PAGE).items if a.state == "done"), None)


# -- studies and instances -------------------------------------------------------------------


@router.get("/search", response_class=HTMLResponse)
def search(request: Request, q: str = "", kind: str = "study") -> Response:
    """Find a study, an instance, or (roles allowed PHI) the instances of an accession number."""
    session = _session(request)
    if session is None:
        return _to_login(request)
    q = q.strip()
    if not q:
        return _page(request, "search.html", session, q=q, kind=kind, error=None, hits=None)
    if kind == "accession":
        return _accession_search(request, session, q)
    if kind not in ("study", "instance") or not UID.match(q) or len(q) > 64:
        error = "A Study or SOP Instance UID is digits and dots, at most 64 characters."
        return _page(request, "search.html", session, 422, q=q, kind=kind, error=error, hits=None)
    target = "studies" if kind == "study" else "instances"
    return RedirectResponse(f"/console/{target}/{q}", status_code=303)


def _accession_search(request: Request, session: Session, q: str) -> Response:
    if not session.principal.may("phi"):
        return _forbidden(request, session, "phi")
    if not ACCESSION.match(q):
        error = "An accession number is at most 16 characters, without * or ?."
        return _page(
            request, "search.html", session, 422, q=q, kind="accession", error=error, hits=None
        )
    services = _services(request)
    pacs = services.verifier.pacs if services is not None else None
    if pacs is None:
        return _error(request, session, 503, "No PACS", "This gateway has no PACS to search.")
    try:
        found = pacs.find_instances({"AccessionNumber": q}, page=MAX_ACCESSION_HITS)
    except GatewayError as exc:
        return _gateway_error(request, session, exc)
    hits = sorted({uid for _, uid in found if uid})[:MAX_ACCESSION_HITS]
    return _page(request, "search.html", session, q=q, kind="accession", error=None, hits=hits)


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study(request: Request, study_uid: str) -> Response:
    """Every instance of a study with its verdict."""
    visit = _enter(request, "verify")
    if isinstance(visit, Response):
        return visit
    session, services = visit.session, visit.services
    if not UID.match(study_uid) or len(study_uid) > 64:
        return _error(request, session, 422, "Not a UID", "A Study UID is digits and dots.")
    try:
        found = services.verifier.study(study_uid, show_phi=session.principal.may("phi"))
    except GatewayError as exc:
        return _gateway_error(request, session, exc)
    for verdict in found.instances:
        services.read_by(
            session.principal, route="console:study", verdict=verdict.status,
            sop_instance_uid=verdict.sop_instance_uid, study_instance_uid=study_uid,
        )  # fmt: skip
    return _page(request, "study.html", session, study=found, statuses=STATUSES)


@router.get("/instances/{sop_uid}", response_class=HTMLResponse)
def instance(request: Request, sop_uid: str) -> Response:
    """One verdict with its evidence, the viewer link and, for a tampered copy, the diff."""
    visit = _enter(request, "verify")
    if isinstance(visit, Response):
        return visit
    session, services = visit.session, visit.services
    if not UID.match(sop_uid) or len(sop_uid) > 64:
        return _error(request, session, 422, "Not a UID", "A SOP Instance UID is digits and dots.")
    try:
        verdict = services.verifier.instance(sop_uid, show_phi=session.principal.may("phi"))
    except GatewayError as exc:
        return _gateway_error(request, session, exc)
    services.read_by(
        session.principal, route="console:instance", verdict=verdict.status,
        sop_instance_uid=sop_uid,
    )  # fmt: skip
    return _page(
        request,
        "instance.html",
        session,
        verdict=verdict,
        viewer=viewer_link(_console(request).viewer_url, verdict),
        explanations=EXPLANATIONS,
    )


def viewer_link(viewer_url: str | None, verdict: Verdict) -> str | None:
    """Orthanc Explorer's page of the instance, or ``None`` (no viewer, not in the PACS)."""
    if viewer_url is None or verdict.orthanc_id is None:
        return None
    return f"{viewer_url.rstrip('/')}/app/explorer.html#instance?uuid={verdict.orthanc_id}"


# -- the read-only viewer (grantees) ----------------------------------------------------------


def _study_reader(
    request: Request, study_uid: str, *, route: str
) -> tuple[Session, Services] | Response:
    """The session and services when the session may read the study (a grantee under a
    standing grant, or a role that verifies); else the page that says why not."""
    session = _session(request)
    if session is None:
        return _to_login(request)
    services = _services(request)
    principal = session.principal
    if services is None or not (principal.may("verify") or principal.may("granted")):
        return _forbidden(request, session, "verify")
    if not UID.match(study_uid) or len(study_uid) > 64:
        return _error(request, session, 422, "Not a UID", "A Study UID is digits and dots.")
    try:
        services.allow_study(principal, study_uid, route=route)
    except AccessDenied as denied:
        kind = DENIALS[denied.reason]
        page = _error(request, session, 403, kind.title, f"{denied}. {kind.meaning}")
        page.headers["X-Problem-Type"] = kind.uri
        return page
    return session, services


@router.get("/studies/{study_uid}/view", response_class=HTMLResponse)
def viewer(request: Request, study_uid: str) -> Response:
    """A study, read only: each instance's verdict and, when intact, its rendered image."""
    found = _study_reader(request, study_uid, route="console:view")
    if isinstance(found, Response):
        return found
    session, services = found
    try:
        verdicts = services.verifier.study(study_uid, show_phi=session.principal.may("phi"))
    except GatewayError as exc:
        return _gateway_error(request, session, exc)
    for verdict in verdicts.instances:
        services.read_by(
            session.principal, route="console:view", verdict=verdict.status,
            sop_instance_uid=verdict.sop_instance_uid, study_instance_uid=study_uid,
        )  # fmt: skip
    return _page(request, "viewer.html", session, study=verdicts)


@router.get("/studies/{study_uid}/instances/{sop_uid}/preview")
def preview(request: Request, study_uid: str, sop_uid: str) -> Response:
    """Orthanc's rendering of one intact instance of the study, fetched by the gateway."""
    found = _study_reader(request, study_uid, route="console:preview")
    if isinstance(found, Response):
        return found
    session, services = found
    pacs = services.verifier.pacs
    if not UID.match(sop_uid) or len(sop_uid) > 64 or not isinstance(pacs, Pacs):
        return _error(request, session, 404, "Not found", "No such image here.")
    try:
        if sop_uid not in study_uids(services.verifier, study_uid):
            return _error(request, session, 404, "Not found", "No such image in this study.")
        verdict = services.verifier.instance(sop_uid)
        orthanc_id = verdict.orthanc_id
        if verdict.status != "intact" or orthanc_id is None:
            services.read_by(
                session.principal, route="console:preview", verdict=verdict.status,
                served=False, sop_instance_uid=sop_uid, study_instance_uid=study_uid,
            )  # fmt: skip
            return _error(request, session, 409, "Not shown", verdict.explanation)
        png = pacs.preview(orthanc_id)
    except GatewayError as exc:
        return _gateway_error(request, session, exc)
    services.read_by(
        session.principal, route="console:preview", verdict=verdict.status,
        sop_instance_uid=sop_uid, study_instance_uid=study_uid,
    )  # fmt: skip
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/studies/{study_uid}/download")
def download(request: Request, study_uid: str) -> Response:
    """The study as a DICOM zip, checked file by file (as ``GET /v1/studies/…/download``)."""
    found = _study_reader(request, study_uid, route="console:download")
    if isinstance(found, Response):
        return found
    session, services = found
    try:
        uids = study_uids(services.verifier, study_uid)
    except GatewayError as exc:
        return _gateway_error(request, session, exc)
    return StreamingResponse(
        study_zip(
            services.verifier, uids,
            on_file=lambda o: services.read_by(
                session.principal, route="console:download", verdict=o.status,
                served=o.included, sop_instance_uid=o.sop_instance_uid,
                study_instance_uid=study_uid,
            ),
        ),
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="study.zip"', "Cache-Control": "no-store"},
    )  # fmt: skip


# -- audits ----------------------------------------------------------------------------------


@router.get("/audits", response_class=HTMLResponse)
def audits(request: Request, cursor: str | None = None) -> Response:
    """Start an audit; past audits, newest first, a page at a time."""
    visit = _enter(request, "audit")
    if isinstance(visit, Response):
        return visit
    session, services = visit.session, visit.services
    try:
        page = services.audits.page(limit=PAGE, after=AUDITS.decode(cursor))
    except Problem as invalid:
        return _error(request, session, invalid.kind.status, invalid.kind.title, invalid.detail)
    return _page(
        request,
        "audits.html",
        session,
        audits=page.items,
        next_cursor=AUDITS.encode(page.next) if page.next is not None else None,
        running=services.audits.running(),
    )


@router.post("/audits")
def start_audit(request: Request) -> Response:
    """Start a sweep and follow it."""
    visit = _enter(request, "audit", posted=True)
    if isinstance(visit, Response):
        return visit
    session, services = visit.session, visit.services
    try:
        audit_id = services.audits.start(requested_by=session.principal.name)
    except AuditRunning as running:
        audit_id = running.audit_id
    return RedirectResponse(f"/console/audits/{audit_id}", status_code=303)


def _audit_or_error(
    request: Request, audit_id: str
) -> tuple[Session, Services, AuditState] | Response:
    visit = _enter(request, "audit")
    if isinstance(visit, Response):
        return visit
    session, services = visit.session, visit.services
    state = services.audits.get(audit_id) if len(audit_id) <= 64 else None
    if state is None:
        return _error(request, session, 404, "Not found", f"There is no audit {audit_id}.")
    return session, services, state


def finding_statuses(state: AuditState) -> list[str]:
    """What the findings filter offers: every status but ``intact``, then any other kind a
    finding has (e.g. the access trail's ``trail_tampered``)."""
    offered = [status for status in STATUSES if status != "intact"]
    found = state.report.findings if state.report is not None else []
    return offered + sorted({f.status for f in found} - set(offered))


def filter_findings(state: AuditState, status: str | None) -> list[Finding]:
    """The findings of a finished audit, of one status or all."""
    findings = state.report.findings if state.report is not None else []
    return [f for f in findings if not status or f.status == status]


@router.get("/audits/{audit_id}", response_class=HTMLResponse)
def audit(request: Request, audit_id: str, status: str | None = None) -> Response:
    """An audit: its progress while it runs (polled), then its findings."""
    found = _audit_or_error(request, audit_id)
    if isinstance(found, Response):
        return found
    session, _, state = found
    return _page(
        request,
        "audit.html",
        session,
        audit=state,
        status=status or "",
        findings=filter_findings(state, status),
        statuses=finding_statuses(state),
    )


@router.get("/audits/{audit_id}/progress", response_class=HTMLResponse)
def audit_progress(request: Request, audit_id: str) -> Response:
    """The progress fragment htmx polls; once the audit ends, the page reloads with findings."""
    found = _audit_or_error(request, audit_id)
    if isinstance(found, Response):
        return found
    session, _, state = found
    response = _page(request, "audit_progress.html", session, audit=state)
    if state.state != "running":
        response.headers["HX-Refresh"] = "true"
    return response


@router.get("/audits/{audit_id}/findings.csv")
def audit_csv(request: Request, audit_id: str, status: str | None = None) -> Response:
    """The findings (filtered as on the page) as CSV."""
    found = _audit_or_error(request, audit_id)
    if isinstance(found, Response):
        return found
    _, _, state = found
    return Response(
        findings_csv(filter_findings(state, status)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="audit-{state.id}.csv"'},
    )


CSV_COLUMNS = ("status", "sop_instance_uid", "orthanc_id", "tamper", "record_key", "explanation")


def findings_csv(findings: list[Finding]) -> str:
    """Findings as CSV, one row each, with a header."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for finding in findings:
        writer.writerow([_cell(getattr(finding, column)) for column in CSV_COLUMNS])
    return out.getvalue()


def _cell(value: object) -> str:
    """A CSV cell a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return f"'{text}" if text[:1] in ("=", "+", "-", "@") else text


# -- alerts ----------------------------------------------------------------------------------


@router.get("/alerts", response_class=HTMLResponse)
def alerts(request: Request, cursor: str | None = None) -> Response:
    """Alerts, newest first, a page at a time, each with its acknowledgement."""
    visit = _enter(request, "alerts")
    if isinstance(visit, Response):
        return visit
    session, services = visit.session, visit.services
    try:
        page = services.alerts.page(limit=PAGE, after=ALERTS.decode(cursor))
    except Problem as invalid:
        return _error(request, session, invalid.kind.status, invalid.kind.title, invalid.detail)
    except GatewayError as exc:
        return _gateway_error(request, session, exc)
    return _page(
        request,
        "alerts.html",
        session,
        alerts=page.items,
        cursor=cursor,
        next_cursor=ALERTS.encode(page.next) if page.next is not None else None,
    )


@router.post("/alerts/{alert_id}/ack")
async def acknowledge(request: Request, alert_id: str) -> Response:
    """Acknowledge an alert in the name of the session's principal."""
    visit = _enter(request, "alerts", posted=True)
    if isinstance(visit, Response):
        return visit
    session, services = visit.session, visit.services
    form = await _form(request)
    try:
        services.alerts.acknowledge(alert_id, by=session.principal.name)
    except GatewayError as exc:  # UnknownAlert, or the plugin's file unreadable
        return _gateway_error(request, session, exc)
    cursor = form.get("cursor")
    return RedirectResponse(
        "/console/alerts" + (f"?{urlencode({'cursor': cursor})}" if cursor else ""),
        status_code=303,
    )


# -- access trail ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedEntry:
    """A trail entry and whether its inclusion proof leads to the access batch on chain."""

    proven: ProvenEntry
    on_chain: bool


@router.get("/trail", response_class=HTMLResponse)
def trail(request: Request, by: str = "study", q: str = "", after: int = 0) -> Response:
    """Who read a study, or what a reader read: oldest first, each entry with its proof."""
    visit = _enter(request, "audit")
    if isinstance(visit, Response):
        return visit
    session, services = visit.session, visit.services
    if services.trail is None:
        return _error(request, session, 503, "No access trail", "This gateway keeps none.")
    q = q.strip()
    context: dict[str, Any] = {"by": by, "q": q, "entries": None, "next_after": None}
    if not q:
        return _page(request, "trail.html", session, error=None, **context)
    error = _trail_query_error(by, q)
    if error is not None or after < 0:
        return _page(request, "trail.html", session, 422, error=error or "Bad page.", **context)
    found = services.trail.entries(
        study=q if by == "study" else None, who=q if by == "user" else None,
        after=after, limit=PAGE,
    )  # fmt: skip
    try:
        checked = [CheckedEntry(e, proof_holds(e, services.verifier.ledger)) for e in found]
    except GatewayError as exc:
        return _gateway_error(request, session, exc)
    context |= {
        "entries": checked,
        "next_after": found[-1].entry.id if len(found) == PAGE else None,
    }
    return _page(request, "trail.html", session, error=None, **context)


def _trail_query_error(by: str, q: str) -> str | None:
    if by == "study" and (not UID.match(q) or len(q) > 64):
        return "A Study Instance UID is digits and dots, at most 64 characters."
    if by == "user" and len(q) > 200:
        return "A reader's name is at most 200 characters."
    if by not in ("study", "user"):
        return "Search the trail by study or by reader."
    return None


def principal_label(principal: Principal) -> str:
    """How the header names who is logged in."""
    return f"{principal.name} ({principal.role})"


templates.env.globals["principal_label"] = principal_label
templates.env.filters["utc"] = lambda at: (
    time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if at is not None else ""
)


def query_with(params: Mapping[str, str], **changes: str | None) -> str:
    """The query string ``params`` with ``changes`` applied (``None`` removes a field)."""
    merged = {k: v for k, v in {**params, **changes}.items() if v is not None}
    return urlencode(merged)


templates.env.globals["query_with"] = query_with
#: The vendored libraries, as the gateway serves them.
templates.env.globals["vendor"] = {
    "htmx": vendored_url("htmx.org", "dist/htmx.min.js"),
    "chart": vendored_url("chart.js", "dist/chart.umd.min.js"),
}
