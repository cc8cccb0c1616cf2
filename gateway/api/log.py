"""The append-only log's routes: the signed checkpoint, consistency and inclusion proofs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from gateway.api.deps import ServicesDep, Verifying
from gateway.api.problems import NO_SUCH_PROOF, NOT_READY, Problem, problem_responses
from gateway.trust.tlog import BatchLog

router = APIRouter(
    prefix="/v1/log", tags=["log"], responses=problem_responses(401, 403, 422, 500, 502, 503)
)

Size = Annotated[int, Query(ge=1, description="a tree size (number of batches)")]


def _log(services: ServicesDep) -> BatchLog:
    if services.receipts is None:
        raise Problem(NOT_READY, "the append-only log is not offered by this gateway")
    return services.receipts.log


@router.get(
    "/checkpoint",
    response_class=Response,
    responses={
        200: {
            "description": "a C2SP tlog-checkpoint in a C2SP signed-note",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def checkpoint(services: ServicesDep, who: Verifying) -> Response:
    """The log's newest checkpoint (C2SP ``tlog-checkpoint``: origin, size, base64 root) as a
    C2SP ``signed-note``, signed by the gateway's log key (``xray-gateway log-key``)."""
    log = _log(services)
    _, note = await run_in_threadpool(log.checkpoint)
    return Response(note, media_type="text/plain; charset=utf-8")


@router.get("/consistency", responses=problem_responses(404))
async def consistency(
    first: Size, second: Size, services: ServicesDep, who: Verifying
) -> dict[str, object]:
    """The RFC 6962 §2.1.2 proof that the log of ``first`` batches is a prefix of the log of
    ``second`` (hex nodes); 404 unless ``first <= second <=`` the log's size."""
    log = _log(services)
    try:
        proof = await run_in_threadpool(log.consistency, first, second)
    except ValueError as exc:
        raise Problem(NO_SUCH_PROOF, str(exc)) from None
    return {"first": first, "second": second, "proof": [node.hex() for node in proof]}


@router.get("/inclusion", responses=problem_responses(404))
async def inclusion(
    batch: Annotated[int, Query(ge=1, description="a batch id on the contract")],
    size: Size,
    services: ServicesDep,
    who: Verifying,
) -> dict[str, object]:
    """The proof that batch ``batch`` is leaf ``batch - 1`` of the log of ``size`` batches;
    404 unless ``batch <= size <=`` the log's size."""
    log = _log(services)
    try:
        proof = await run_in_threadpool(log.inclusion, batch, size)
    except ValueError as exc:
        raise Problem(NO_SUCH_PROOF, str(exc)) from None
    return {
        "batch": batch,
        "leaf_index": proof.index,
        "tree_size": proof.size,
        "proof": [node.hex() for node in proof.path],
    }
