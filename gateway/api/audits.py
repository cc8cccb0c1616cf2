"""Audit routes: start a sweep of the whole archive, follow its progress, read its findings."""

from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.api.deps import Auditing, ServicesDep
from gateway.api.problems import Problem
from gateway.audit import AuditState

router = APIRouter(prefix="/v1/audits", tags=["audits"])


@router.post("", status_code=202, response_model=AuditState)
def start_audit(services: ServicesDep, who: Auditing, response: Response) -> AuditState:
    """Start a sweep: PACS vs object store vs ledger. Poll ``Location`` for progress."""
    audit_id = services.audits.start(requested_by=who.name)
    response.headers["Location"] = f"/v1/audits/{audit_id}"
    state = services.audits.get(audit_id)
    assert state is not None
    return state


@router.get("/{audit_id}", response_model=AuditState)
def get_audit(audit_id: str, services: ServicesDep, who: Auditing) -> AuditState:
    """Progress while the sweep runs; summary and findings once it is done."""
    state = services.audits.get(audit_id)
    if state is None:
        raise Problem(404, "Not found", f"no audit {audit_id}")
    return state
