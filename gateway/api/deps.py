"""Dependencies shared by the routers: the services, and who is asking with which role."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.auth import Permission, Principal, Tokens
from gateway.api.limits import Limits, retry_after
from gateway.api.problems import FORBIDDEN, NOT_READY, RATE_LIMITED, UNAUTHORIZED, Problem
from gateway.errors import AccessDenied
from gateway.ingest.chain_requests import QueuedChain
from gateway.trust.alerts import Alerts
from gateway.trust.audit import Audits
from gateway.trust.erasure import Eraser
from gateway.trust.grants import Grants
from gateway.trust.receipts import Receipts
from gateway.trust.signin import SignIn
from gateway.trust.trail import Trail
from gateway.trust.verify import Verifier
from gateway.trust.views import RecordViews


@dataclass
class Services:
    """What the /v1 routes work with, built once by the stack."""

    verifier: Verifier
    tokens: Tokens
    audits: Audits
    alerts: Alerts
    records: RecordViews
    limits: Limits
    receipts: Receipts | None = None  # receipts and the append-only log (None: not offered)
    #: The access trail (reads through the API are written to it; ``GET /v1/access``).
    trail: Trail | None = None
    #: Grants of read access (``/v1/grants``; enforced for grantee tokens).
    grants: Grants | None = None
    #: Erasure and the retention list (admin only; None: not offered).
    eraser: Eraser | None = None
    #: Sign-In with Ethereum for account-address grantees (None: not offered).
    signin: SignIn | None = None
    #: The chain writes queued for the anchoring workers (``/v1/chain-requests/{id}``).
    chain_queue: QueuedChain | None = None

    def authenticate(self, token: str) -> Principal | None:
        """Who a bearer token is: an API token's holder, or the account a Sign-In with
        Ethereum session was opened for (role ``grantee``, named by its address)."""
        principal = self.tokens.authenticate(token)
        if principal is None and self.signin is not None:
            address = self.signin.authenticate(token)
            principal = Principal(address, "grantee") if address is not None else None
        return principal

    def still_valid(self, principal: Principal) -> bool:
        """Whether a console session's principal still holds its token or its signed-in
        account session (a revoked token or an ended account session ends the login)."""
        if principal.is_account:
            return self.signin is not None and self.signin.signed_in(principal.name)
        return self.tokens.still_valid(principal)

    def read_by(
        self, who: Principal, *, route: str, verdict: str, served: bool = True,
        sop_instance_uid: str | None = None, study_instance_uid: str | None = None,
    ) -> None:  # fmt: skip
        """Write a read made through the API to the access trail: by the token's name, or by
        the address of an account signed in with Ethereum (kind ``account``)."""
        if self.trail is not None:
            self.trail.record(
                who=who.name, who_kind="account" if who.is_account else "token",
                route=route, verdict=verdict, served=served,
                sop_instance_uid=sop_instance_uid, study_instance_uid=study_instance_uid,
            )  # fmt: skip

    def allow_study(self, who: Principal, study_instance_uid: str, *, route: str) -> None:
        """Let ``who`` read the study: any role that may verify; a grantee only under a
        standing grant. A refusal is written to the access trail, then raised.

        Raises
        ------
        AccessDenied
            A grantee with no standing grant on the study (``.reason`` says why).
        """
        if who.may("verify"):
            return
        try:
            if not who.may("granted") or self.grants is None:
                raise AccessDenied("this token reads no studies", reason="not-granted")
            self.grants.check(who.grantee_id, study_instance_uid)
        except AccessDenied as denied:
            self.read_by(
                who, route=route, verdict=denied.reason, served=False,
                study_instance_uid=study_instance_uid,
            )  # fmt: skip
            raise

    def allow_instance(self, who: Principal, sop_instance_uid: str, *, route: str) -> None:
        """:meth:`allow_study` for the study the index files the instance under."""
        if who.may("verify"):
            return
        study = self.grants.study_of(sop_instance_uid) if self.grants is not None else None
        if study is None:
            self.read_by(
                who, route=route, verdict="not-granted", served=False,
                sop_instance_uid=sop_instance_uid,
            )  # fmt: skip
            raise AccessDenied("no grant covers this instance", reason="not-granted")
        self.allow_study(who, study, route=route)


def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise Problem(NOT_READY, "the verification services are not configured")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer …`")
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="xray-gateway"'}


def get_principal(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Problem(UNAUTHORIZED, "a bearer token is required", headers=CHALLENGE)
    principal = services.authenticate(credentials.credentials)
    if principal is None:
        raise Problem(UNAUTHORIZED, "the token is not valid", headers=CHALLENGE)
    return principal


def require(permission: Permission) -> Callable[[Principal], Principal]:
    """A dependency that lets through only roles holding ``permission``."""

    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.may(permission):
            raise Problem(FORBIDDEN, f"the {principal.role} role may not {permission}")
        return principal

    return check


def require_any(*permissions: Permission) -> Callable[[Principal], Principal]:
    """A dependency that lets through roles holding any of ``permissions``."""

    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not any(principal.may(p) for p in permissions):
            raise Problem(FORBIDDEN, f"the {principal.role} role may not {permissions[0]}")
        return principal

    return check


def rate_limited(permission: Permission, group: str) -> Callable[..., Principal]:
    """``require(permission)``, then one request from the caller's token bucket for ``group``."""

    allowed = Depends(require(permission))

    # A default rather than Annotated: string annotations cannot see this closure's names.
    def check(services: ServicesDep, principal: Principal = allowed) -> Principal:
        wait = services.limits.rate.take(principal.name, group)
        if wait > 0:
            raise Problem(
                RATE_LIMITED,
                f"the {group} rate limit of this token is used up; retry later",
                headers={"Retry-After": retry_after(wait)},
            )
        return principal

    return check


Verifying = Annotated[Principal, Depends(require("verify"))]
Uploading = Annotated[Principal, Depends(rate_limited("verify", "upload"))]
StartingAudit = Annotated[Principal, Depends(rate_limited("audit", "audit"))]
Auditing = Annotated[Principal, Depends(require("audit"))]
Restoring = Annotated[Principal, Depends(rate_limited("restore", "restore"))]
ReadingRecords = Annotated[Principal, Depends(require("records"))]
ReadingAlerts = Annotated[Principal, Depends(require("alerts"))]
SeeingPatientData = Annotated[Principal, Depends(require("phi"))]
#: Roles that verify, or grantees (each study then checked by ``Services.allow_study``).
ReadingStudies = Annotated[Principal, Depends(require_any("verify", "granted"))]
Granting = Annotated[Principal, Depends(require("grant"))]
Erasing = Annotated[Principal, Depends(require("erase"))]
ManagingChainWrites = Annotated[Principal, Depends(require_any("grant", "erase"))]
