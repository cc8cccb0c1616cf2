"""The access trail: who read a study, what a reader read, each entry with its proof."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import NonNegativeInt

from gateway.api.deps import Auditing, ServicesDep
from gateway.api.pages import LINK_HEADER, CursorParam, Limit, Page, Pager
from gateway.api.problems import INVALID_REQUEST, NOT_READY, Problem, problem_responses
from gateway.api.verify import UID_PATTERN

router = APIRouter(
    prefix="/v1", tags=["access trail"], responses=problem_responses(401, 403, 422, 500, 503)
)

#: Entries page by their id (the order they were logged in), oldest first.
ENTRIES: Pager[int] = Pager("access", NonNegativeInt)


@router.get("/access", response_model=Page[dict[str, Any]], responses=LINK_HEADER)
def access_trail(
    services: ServicesDep,
    who: Auditing,
    request: Request,
    response: Response,
    study: Annotated[
        str | None, Query(pattern=UID_PATTERN, max_length=64, description="a Study Instance UID")
    ] = None,
    user: Annotated[
        str | None, Query(min_length=1, max_length=200, description="a reader's name")
    ] = None,
    limit: Limit = 100,
    cursor: CursorParam = None,
) -> Page[dict[str, Any]]:
    """Who read study ``study``, or what reader ``user`` read (an Orthanc user, an API
    token's name, an address), oldest first; admin and auditor. Each entry holds its leaf
    inputs (pseudonymous keys only), and once anchored its batch id, root, transaction,
    block and inclusion proof (``anchored`` false: not yet on the chain)."""
    if (study is None) == (user is None):
        raise Problem(
            INVALID_REQUEST, "give exactly one of `study` and `user`",
            errors=[{"loc": ["query"], "msg": "exactly one of study, user"}],
        )  # fmt: skip
    if services.trail is None:
        raise Problem(NOT_READY, "the access trail is not configured")
    after = ENTRIES.decode(cursor) or 0
    found = services.trail.entries(study=study, who=user, after=after, limit=limit + 1)
    page = found[:limit]
    next_key = page[-1].entry.id if len(found) > limit else None
    return ENTRIES.page(request, response, [entry.as_json() for entry in page], next_key)
