"""A queued chain write by its id (admin): where a 503 ``chain-request-pending`` left it.

Grants, revocations and erasure's retirements are queued for the anchoring worker that
sends with the right recorder key (``gateway/ingest/chain_requests.py``). A caller whose
wait ran out got the request's id in the problem (``chain_request``);
``GET /v1/chain-requests/{id}`` says whether it is still queued, being sent, done (its
transaction, block and result) or refused (the error's type).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from gateway.api.deps import ManagingChainWrites, ServicesDep
from gateway.api.grants import utc
from gateway.api.problems import NOT_FOUND, NOT_READY, Problem, problem_responses
from gateway.index.chain_requests import ChainRequest

router = APIRouter(
    prefix="/v1/chain-requests", tags=["grants", "erasure"],
    responses=problem_responses(401, 403, 404, 422, 500, 503),
)  # fmt: skip

RequestId = Annotated[int, PathParam(ge=1, le=2**53, description="the queued write's id")]


class ChainRequestOut(BaseModel):
    """One queued chain write and, once it is settled, its outcome."""

    id: int
    kind: Literal["grant", "revoke", "retire", "retire_batched"]
    state: Literal["queued", "sending", "done", "failed"]
    node: str = Field(description="the gateway node it was asked on")
    recorder: str | None = Field(
        description="the recorder account that must send it (a retirement goes to the"
        " record's owner); null: the asking node's own worker sends it"
    )
    asked_by: str
    asked_at: datetime
    done_at: datetime | None
    tx_hash: str | None
    block_number: int | None
    result: int | None = Field(description="what the write returned (a grant's id)")
    error_type: str | None = Field(description="why it was refused (`failed`)")
    error: str | None

    @classmethod
    def of(cls, request: ChainRequest) -> ChainRequestOut:
        return cls(
            id=request.id, kind=request.kind, state=request.state,  # type: ignore[arg-type]
            node=request.node, recorder=request.recorder, asked_by=request.asked_by,
            asked_at=utc(request.asked_at),
            done_at=None if request.done_at is None else utc(request.done_at),
            tx_hash=request.tx_hash, block_number=request.block_number, result=request.result,
            error_type=request.error_type, error=request.error,
        )  # fmt: skip


@router.get("/{request_id}", response_model=ChainRequestOut)
def get_chain_request(
    request_id: RequestId, services: ServicesDep, who: ManagingChainWrites
) -> ChainRequestOut:
    """A queued grant, revocation or retirement and its outcome (roles that grant or erase)."""
    if services.chain_queue is None:
        raise Problem(NOT_READY, "chain writes are not queued by this gateway")
    found = services.chain_queue.request(request_id)
    if found is None:
        raise Problem(NOT_FOUND, f"no chain request {request_id}")
    return ChainRequestOut.of(found)
