"""Audit routes: start a sweep of the whole archive, follow its progress, read its findings,
list past audits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from pydantic import NonNegativeInt

from gateway.api.deps import Auditing, ServicesDep, StartingAudit
from gateway.api.pages import LINK_HEADER, CursorParam, Limit, Page, Pager
from gateway.api.problems import AUDIT_RUNNING, NOT_FOUND, Problem, problem_responses
from gateway.errors import AuditRunning
from gateway.trust.audit import AuditKey, AuditState, Finding, PastAudit

router = APIRouter(
    prefix="/v1/audits", tags=["audits"], responses=problem_responses(401, 403, 500, 502, 503)
)

AuditId = Annotated[str, PathParam(max_length=64, description="an audit's id")]

AUDITS: Pager[AuditKey] = Pager("audits", tuple[float, str])
FINDINGS: Pager[int] = Pager("findings", NonNegativeInt)


@router.get("", response_model=Page[PastAudit], responses={**LINK_HEADER, **problem_responses(422)})
def list_audits(
    services: ServicesDep,
    who: Auditing,
    request: Request,
    response: Response,
    limit: Limit = 100,
    cursor: CursorParam = None,
) -> Page[PastAudit]:
    """Past and running audits, newest first: state, counts and summary (not the findings)."""
    found = services.audits.page(limit=limit, after=AUDITS.decode(cursor))
    return AUDITS.page(request, response, found.items, found.next)


@router.post(
    "",
    status_code=202,
    response_model=AuditState,
    responses={
        202: {"headers": {"Location": {"description": "poll here", "schema": {"type": "string"}}}},
        **problem_responses(409, 429),
    },
)
def start_audit(services: ServicesDep, who: StartingAudit, response: Response) -> AuditState:
    """Start a sweep: PACS vs object store vs ledger. Poll ``Location`` for progress.

    One sweep runs at a time: while one runs, the answer is 409 with its URL.
    """
    try:
        audit_id = services.audits.start(requested_by=who.name)
    except AuditRunning as running:
        url = f"/v1/audits/{running.audit_id}"
        raise Problem(
            AUDIT_RUNNING,
            f"audit {running.audit_id} is still running; follow it at {url}",
            headers={"Location": url},
            audit=url,
        ) from None
    response.headers["Location"] = f"/v1/audits/{audit_id}"
    state = services.audits.get(audit_id)
    assert state is not None
    return state


@router.get("/{audit_id}", response_model=AuditState, responses=problem_responses(404, 422))
def get_audit(audit_id: AuditId, services: ServicesDep, who: Auditing) -> AuditState:
    """Progress while the sweep runs; summary and findings once it is done."""
    state = services.audits.get(audit_id)
    if state is None:
        raise Problem(NOT_FOUND, f"no audit {audit_id}")
    return state


@router.get(
    "/{audit_id}/findings",
    response_model=Page[Finding],
    responses={**LINK_HEADER, **problem_responses(404, 422)},
)
def audit_findings(
    audit_id: AuditId,
    services: ServicesDep,
    who: Auditing,
    request: Request,
    response: Response,
    limit: Limit = 100,
    cursor: CursorParam = None,
) -> Page[Finding]:
    """A finished audit's findings a page at a time, ordered by SOP Instance UID
    (empty while it runs)."""
    after = FINDINGS.decode(cursor)
    found = services.audits.findings(audit_id, limit=limit, after=after or 0)
    if found is None:
        raise Problem(NOT_FOUND, f"no audit {audit_id}")
    return FINDINGS.page(request, response, found.items, found.next)
