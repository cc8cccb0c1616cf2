"""Grants of read access (admin): make one, revoke one, list them; a grantee's studies.

``POST /v1/grants`` writes the grant to the chain with the gateway's recorder key and keeps
it in the index; ``PATCH /v1/grants/{id}`` extends or narrows it (a new grant, then the old
one revoked); ``DELETE /v1/grants/{id}`` revokes it on the chain, then in the index;
``GET /v1/grants`` lists them by patient key, study or grantee (keyset pages by grant id).
A patient is named in a body only, never in a URL (the list takes the patient *key*,
``POST /v1/patients/key``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import AwareDatetime, BaseModel, Field, NonNegativeInt, model_validator

from gateway.api.deps import Granting, ServicesDep
from gateway.api.pages import LINK_HEADER, CursorParam, Limit, Page, Pager
from gateway.api.problems import INVALID_REQUEST, NOT_READY, Problem, problem_responses
from gateway.api.verify import UID_PATTERN
from gateway.index.grants import GrantRow
from gateway.trust.grants import Grants

router = APIRouter(
    prefix="/v1/grants", tags=["grants"],
    responses=problem_responses(401, 403, 422, 500, 502, 503),
)  # fmt: skip

GRANTS: Pager[int] = Pager("grants", NonNegativeInt)
GRANTEE_PATTERN = r"^(0x[0-9a-fA-F]{40}|[^\x00-\x1f\x7f]{1,200})$"


class NewGrant(BaseModel):
    """Read access for one grantee to one study, or to every study of one patient."""

    to: str = Field(
        pattern=GRANTEE_PATTERN, max_length=200,
        description="the grantee: a token holder's name (its token has role `grantee`) or an "
        "account address (`0x…`)",
    )  # fmt: skip
    until: AwareDatetime = Field(description="the expiry, ISO 8601 with a time zone")
    study_instance_uid: str | None = Field(None, pattern=UID_PATTERN, max_length=64)
    patient_id: str | None = Field(None, min_length=1, max_length=64, description="PatientID")
    issuer: str = Field("", max_length=64, description="IssuerOfPatientID")

    @model_validator(mode="after")
    def one_subject(self) -> NewGrant:
        if (self.study_instance_uid is None) == (self.patient_id is None):
            raise ValueError("give exactly one of study_instance_uid and patient_id")
        return self


class GrantChange(BaseModel):
    """A standing grant carried on: a new expiry, narrowed to one study of its patient, or both."""

    until: AwareDatetime | None = Field(None, description="the new expiry (later or earlier)")
    study_instance_uid: str | None = Field(
        None, pattern=UID_PATTERN, max_length=64,
        description="narrow a patient grant to this one of the patient's studies",
    )  # fmt: skip

    @model_validator(mode="after")
    def something(self) -> GrantChange:
        if self.until is None and self.study_instance_uid is None:
            raise ValueError("give until, study_instance_uid or both")
        return self


class GrantOut(BaseModel):
    """A grant as the index keeps it, with its state now and where it is on the chain."""

    id: int = Field(description="the contract's grant id")
    grantee: str
    grantee_kind: Literal["token", "account"]
    grantee_id: str = Field(
        description="what the grant binds: the id of the token issued to the grantee when it "
        "was made (a token issued again under the name is another grantee), or the address"
    )
    grantee_key: str = Field(description="the grantee as the chain names it (hex)")
    patient_key: str
    study_instance_uid: str | None = Field(description="null: every study of the patient")
    study_key: str | None
    expires_at: datetime
    granted_at: datetime
    granted_by: str
    tx_hash: str
    block_number: int
    state: Literal["active", "expired", "revoked"]
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_tx: str | None
    replaces: int | None = Field(
        None, description="the grant this one replaced (extended or narrowed), now revoked"
    )

    @classmethod
    def of(cls, row: GrantRow, *, now: float) -> GrantOut:
        return cls(
            id=row.id, grantee=row.grantee, grantee_kind=row.grantee_kind,  # type: ignore[arg-type]
            grantee_id=row.grantee_id, grantee_key=row.grantee_key.hex(),
            patient_key=row.patient_key.hex(),
            study_instance_uid=row.study_instance_uid,
            study_key=row.study_key.hex() if row.study_key else None,
            expires_at=utc(row.expires_at), granted_at=utc(row.granted_at),
            granted_by=row.granted_by, tx_hash=row.tx_hash, block_number=row.block_number,
            state=row.state(now),  # type: ignore[arg-type]
            revoked_at=utc(row.revoked_at) if row.revoked_at is not None else None,
            revoked_by=row.revoked_by, revoke_tx=row.revoke_tx, replaces=row.replaces,
        )  # fmt: skip


def utc(at: float) -> datetime:
    """An epoch time of the index as an aware UTC datetime (the routes' JSON)."""
    return datetime.fromtimestamp(at, UTC)


def _grants(services: ServicesDep) -> Grants:
    if services.grants is None:
        raise Problem(NOT_READY, "grants are not offered by this gateway")
    return services.grants


# 400: a body that is not JSON at all (FastAPI answers it before the route runs)
@router.post("", response_model=GrantOut, status_code=201, responses=problem_responses(400, 404))
def make_grant(body: NewGrant, services: ServicesDep, who: Granting) -> GrantOut:
    """Grant read access (admin); it is on the chain (``AccessGranted``) when this answers.

    A token holder's grant binds to the token issued to that name now (422 if there is
    none): a token issued again under the name later does not inherit it."""
    grants = _grants(services)
    try:
        row = grants.grant(
            to=body.to, until=body.until.timestamp(), by=who.name,
            study_instance_uid=body.study_instance_uid, patient_id=body.patient_id,
            issuer=body.issuer, token_id=services.tokens.id_of(body.to),
        )  # fmt: skip
    except ValueError as invalid:
        raise _invalid_body(invalid) from None
    return GrantOut.of(row, now=grants.clock())


def _invalid_body(invalid: ValueError) -> Problem:
    """422 ``invalid-request`` for a body the grants refused (expiry, study, patient)."""
    return Problem(INVALID_REQUEST, str(invalid), errors=[{"loc": ["body"], "msg": str(invalid)}])


GrantId = Annotated[int, PathParam(ge=1, le=2**53, description="the contract's grant id")]


# 400: a body that is not JSON at all (FastAPI answers it before the route runs)
@router.patch("/{grant_id}", response_model=GrantOut, responses=problem_responses(400, 404, 409))
def change_grant(
    grant_id: GrantId, body: GrantChange, services: ServicesDep, who: Granting
) -> GrantOut:
    """Extend (or shorten) a standing grant, or narrow a patient grant to one study (admin).

    No contract call changes a grant: this makes a new grant on chain (its ``replaces`` is
    ``grant_id``), then revokes the old one, so the grantee never loses access in between.
    Answers the new grant; 409 ``grant-not-standing`` for a revoked or expired one."""
    grants = _grants(services)
    try:
        row = grants.replace(
            grant_id, by=who.name, study_instance_uid=body.study_instance_uid,
            until=body.until.timestamp() if body.until is not None else None,
        )  # fmt: skip
    except ValueError as invalid:
        raise _invalid_body(invalid) from None
    return GrantOut.of(row, now=grants.clock())


@router.delete("/{grant_id}", response_model=GrantOut, responses=problem_responses(404))
def revoke_grant(grant_id: GrantId, services: ServicesDep, who: Granting) -> GrantOut:
    """Revoke a grant now (admin); on the chain (``AccessRevoked``) when this answers."""
    grants = _grants(services)
    return GrantOut.of(grants.revoke(grant_id, by=who.name), now=grants.clock())


@router.get("", response_model=Page[GrantOut], responses=LINK_HEADER)
def list_grants(
    services: ServicesDep,
    who: Granting,
    request: Request,
    response: Response,
    patient_key: Annotated[
        str | None, Query(pattern=r"^[0-9a-f]{64}$", description="a patient key (hex)")
    ] = None,
    study: Annotated[
        str | None, Query(pattern=UID_PATTERN, max_length=64, description="a Study UID")
    ] = None,
    grantee: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Limit = 100,
    cursor: CursorParam = None,
) -> Page[GrantOut]:
    """Grants, oldest first: of a patient key (its study grants too), of a study, or of a
    grantee (admin)."""
    grants = _grants(services)
    after = GRANTS.decode(cursor) or 0
    found = grants.listed(
        patient_key=bytes.fromhex(patient_key) if patient_key else None,
        study_instance_uid=study, grantee=grantee, after=after, limit=limit + 1,
    )  # fmt: skip
    page, now = found[:limit], grants.clock()
    next_key = page[-1].id if len(found) > limit else None
    return GRANTS.page(request, response, [GrantOut.of(g, now=now) for g in page], next_key)
