"""Erasure routes (admin only): a dry run that lists what would go and its hash, the
confirmation that carries the hash, and the studies the retention job listed."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, Field, model_validator

from gateway.api.deps import Erasing, ServicesDep
from gateway.api.pages import LINK_HEADER, CursorParam, Limit, Page, Pager, slice_after
from gateway.api.problems import NOT_READY, Problem, problem_responses
from gateway.api.verify import UID_PATTERN
from gateway.index.erasure import retention_due
from gateway.trust.erasure import Eraser

router = APIRouter(tags=["erasure"], responses=problem_responses(401, 403, 500, 502, 503))

Reason = Literal[
    "gdpr_art17", "patient_request", "retention_expired", "legal_order", "wrong_patient"
]
#: Where a page of the retention list stops: the last study's due time and UID.
RETENTION: Pager[tuple[float, str]] = Pager("retention", tuple[float, str])
PlanHash = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$", description="a dry run's hash")]


class ErasureRequest(BaseModel):
    """What to erase: one study (by its UID) or every study of one patient."""

    reason: Reason
    study_instance_uid: str | None = Field(default=None, pattern=UID_PATTERN, max_length=64)
    patient_id: str | None = Field(default=None, min_length=1, max_length=64)
    issuer_of_patient_id: str = Field(default="", max_length=64)

    @model_validator(mode="after")
    def _one_target(self) -> ErasureRequest:
        if (self.study_instance_uid is None) == (self.patient_id is None):
            raise ValueError("give either study_instance_uid or patient_id")
        return self


class Confirmation(BaseModel):
    """The reason of the dry run being confirmed (it must be the same)."""

    reason: Reason


class ErasurePlan(BaseModel):
    """A dry run's list (pseudonymous keys only) and its hash; or, confirmed, what went."""

    hash: str
    reason: str
    dry_run: bool
    studies: list[str]
    study_keys: list[str]
    instances: list[dict[str, Any]]
    counts: dict[str, int]
    remedy: str | None = None  # what to run when v1 objects would still open from a copy


class RetentionItem(BaseModel):
    """A study past its modality's retention period."""

    study_instance_uid: str
    modality: str
    received_at: float
    due_at: float
    listed_at: float


def _eraser(services: Any) -> Eraser:
    if services.eraser is None:
        raise Problem(NOT_READY, "erasure is not configured on this gateway")
    eraser: Eraser = services.eraser
    return eraser


# 400: a body that is not JSON at all (FastAPI answers it before the route runs)
@router.post("/v1/erasures", response_model=ErasurePlan, responses=problem_responses(400, 404, 422))
def dry_run(services: ServicesDep, who: Erasing, body: ErasureRequest) -> ErasurePlan:
    """The dry run: what erasing would remove, and the hash to confirm it with. Nothing is
    erased. The study UID or patient ID travels in the body, never in the URL."""
    patient = (body.issuer_of_patient_id, body.patient_id) if body.patient_id is not None else None
    plan = _eraser(services).plan(
        reason=body.reason, asked_by=who.name, study=body.study_instance_uid, patient=patient
    )
    return ErasurePlan(dry_run=True, **plan.public())


@router.post(
    "/v1/erasures/{plan_hash}/confirm",
    response_model=ErasurePlan,
    responses=problem_responses(400, 409, 422),
)
def confirm(
    services: ServicesDep, who: Erasing, plan_hash: PlanHash, body: Confirmation
) -> ErasurePlan:
    """Erase what the dry run ``plan_hash`` listed: refused (409) if the set changed since,
    or the reason differs. Sent again after a failure, it finishes the erasure."""
    done = _eraser(services).confirm(plan_hash, reason=body.reason, confirmed_by=who.name)
    return ErasurePlan(dry_run=False, **done.public())


class NodeShed(BaseModel):
    """Whether one gateway node has deleted its local copies (spool, sealed dir)."""

    shed: bool
    shed_at: float | None
    files: int


class ErasureStatus(BaseModel):
    """An erasure as the log holds it, and which nodes have shed their copies and which not
    yet (nodes are those that received images of the set, and any that shed)."""

    hash: str
    reason: str
    state: str
    asked_by: str
    planned_at: float
    confirmed_by: str | None
    confirmed_at: float | None
    done_at: float | None
    counts: dict[str, int]
    nodes: dict[str, NodeShed]
    nodes_not_shed: list[str]


@router.get(
    "/v1/erasures/{plan_hash}", response_model=ErasureStatus, responses=problem_responses(404, 422)
)
def status(services: ServicesDep, who: Erasing, plan_hash: PlanHash) -> ErasureStatus:
    """Where an erasure stands (``planned``, ``erasing``, ``done``), and which gateway
    nodes have deleted their local copies of its images."""
    return ErasureStatus(**_eraser(services).status(plan_hash))


@router.get(
    "/v1/retention",
    response_model=Page[RetentionItem],
    responses={**LINK_HEADER, **problem_responses(422)},
)
def retention(
    services: ServicesDep,
    who: Erasing,
    request: Request,
    response: Response,
    limit: Limit = 100,
    cursor: CursorParam = None,
) -> Page[RetentionItem]:
    """The studies the off-hours retention job last listed as past their modality's
    period, oldest due first, a page at a time. Nothing is erased automatically."""
    listed = [RetentionItem(**vars(item)) for item in retention_due(_eraser(services).index)]
    items, next_key = slice_after(
        listed, lambda item: (item.due_at, item.study_instance_uid),
        after=RETENTION.decode(cursor), limit=limit,
    )  # fmt: skip
    return RETENTION.page(request, response, items, next_key)
