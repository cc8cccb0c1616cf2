"""The access trail: who read a study, what a reader read, each entry with its proof."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from gateway.api.deps import Auditing, ServicesDep
from gateway.api.problems import INVALID_REQUEST, NOT_READY, Problem, problem_responses
from gateway.api.verify import UID_PATTERN

router = APIRouter(
    prefix="/v1", tags=["access trail"], responses=problem_responses(401, 403, 422, 500, 503)
)

PAGE_MAX = 500


@router.get("/access")
def access_trail(
    services: ServicesDep,
    who: Auditing,
    study: Annotated[
        str | None, Query(pattern=UID_PATTERN, max_length=64, description="a Study Instance UID")
    ] = None,
    user: Annotated[
        str | None, Query(min_length=1, max_length=200, description="a reader's name")
    ] = None,
    after: Annotated[int, Query(ge=0, description="the cursor: the last entry id seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
) -> dict[str, Any]:
    """Who read study ``study``, or what reader ``user`` read (admin and auditor), oldest
    first. Each entry holds its leaf inputs (pseudonymous keys), its batch id, root,
    transaction and inclusion proof once anchored. ``next`` is the cursor of the next page
    (an opaque entry id: pass it as ``after``), null on the last page."""
    if (study is None) == (user is None):
        raise Problem(INVALID_REQUEST, "give exactly one of `study` and `user`")
    trail = services.trail
    if trail is None:
        raise Problem(NOT_READY, "the access trail is not configured")
    entries = trail.entries(study=study, who=user, after=after, limit=limit)
    return {
        "entries": [entry.as_json() for entry in entries],
        "next": entries[-1].entry.id if len(entries) == limit else None,
    }
