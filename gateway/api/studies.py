"""The studies a token may read, and one study as a DICOM zip checked on its way out.

``GET /v1/studies`` lists Study UIDs: a grantee's standing grants' studies, or every study
of the index for the roles that verify. ``GET /v1/studies/{uid}/download`` streams the
study's intact instances as a zip with a manifest of those left out (trust/share.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from gateway.api.auth import Principal
from gateway.api.deps import ReadingStudies, Services, ServicesDep
from gateway.api.pages import LINK_HEADER, CursorParam, Limit, Page, Pager, slice_after
from gateway.api.problems import problem_responses
from gateway.api.verify import UID_PATTERN
from gateway.trust.share import ZipEntry, study_uids, study_zip

router = APIRouter(
    prefix="/v1/studies", tags=["studies"], responses=problem_responses(401, 403, 422, 500, 503)
)

STUDIES: Pager[str] = Pager("studies", str)
StudyUid = Annotated[
    str, PathParam(pattern=UID_PATTERN, max_length=64, description="a Study Instance UID")
]


@router.get("", response_model=Page[str], responses=LINK_HEADER)
def list_studies(
    services: ServicesDep,
    who: ReadingStudies,
    request: Request,
    response: Response,
    limit: Limit = 100,
    cursor: CursorParam = None,
) -> Page[str]:
    """Study Instance UIDs this token may read, sorted: a grantee's granted studies (until
    each grant expires or is revoked), or every study the index holds."""
    after = STUDIES.decode(cursor)
    uids = _readable(services, who)
    page, next_key = slice_after(uids, lambda uid: uid, after=after, limit=limit)
    return STUDIES.page(request, response, page, next_key)


def _readable(services: Services, who: Principal) -> list[str]:
    if services.grants is None:
        return []
    if who.may("verify"):
        return services.grants.all_studies()
    return services.grants.studies(who.grantee_id)


@router.get(
    "/{study_instance_uid}/download",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
              "description": "a DICOM File-set: the intact instances under their File IDs, "
                             "their DICOMDIR, and MANIFEST.json"},
        **problem_responses(404),
    },
)  # fmt: skip
async def download_study(
    study_instance_uid: StudyUid, services: ServicesDep, who: ReadingStudies
) -> StreamingResponse:
    """The study as a zip (streamed): each instance read from the PACS as stored and
    checked against the ledger on its way out; only ``intact`` ones go in, under their
    PS3.10 File IDs and listed in a ``DICOMDIR`` (a CD viewer opens it); every other one is
    named in ``MANIFEST.json`` with its verdict. Each file is a read in the access trail.
    A grantee token: only a study a standing grant covers (else 403)."""
    await run_in_threadpool(services.allow_study, who, study_instance_uid, route="api:download")
    uids = await run_in_threadpool(study_uids, services.verifier, study_instance_uid)

    def trail(outcome: ZipEntry) -> None:
        services.read_by(
            who, route="api:download", verdict=outcome.status, served=outcome.included,
            sop_instance_uid=outcome.sop_instance_uid, study_instance_uid=study_instance_uid,
        )  # fmt: skip

    chunks: Iterator[bytes] = study_zip(services.verifier, uids, on_file=trail)
    return StreamingResponse(
        chunks,
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="study.zip"'},
    )
