"""Sign-In with Ethereum (EIP-4361) for account-address grantees: a nonce, then a session.

``GET /v1/auth/siwe/nonce`` gives out a single-use nonce with what the message must name
(domain, URI, chain id); ``POST /v1/auth/siwe`` takes the signed message and its
signature and answers a bearer session of role ``grantee`` for the address, which every
``/v1`` route accepts like a token (:meth:`gateway.api.deps.Services.authenticate`). Both
routes are open: the signature is the credential. The checks are
:class:`gateway.trust.signin.SignIn`'s; a refusal is a problem saying which one failed.
Each client address has its own rate on each route (``GATEWAY_API_RATE_PER_MINUTE`` and
``_BURST``, as a token has on the expensive routes): nonces are rows in the shared index,
and each message costs a parse and a signature recovery.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from gateway.api.deps import Services, ServicesDep
from gateway.api.limits import retry_after
from gateway.api.problems import NOT_READY, RATE_LIMITED, Problem, problem_responses
from gateway.trust.signin import MAX_MESSAGE_CHARS, SignIn

router = APIRouter(prefix="/v1/auth/siwe", tags=["sign-in"])


class NonceOut(BaseModel):
    """A nonce, and what the EIP-4361 message signed with it must name."""

    nonce: str = Field(description="single use; put it in the message's `Nonce:` line")
    expires_at: datetime = Field(description="sign and send the message before this")
    domain: str = Field(description="the message's first line names this domain")
    uri: str = Field(description="the message's `URI:`")
    chain_id: int = Field(description="the message's `Chain ID:`")
    statement: str = Field(description="a statement to show the signer (any, or none, is fine)")
    version: Literal["1"] = "1"


class SignedMessage(BaseModel):
    """An EIP-4361 message and its EIP-191 (``personal_sign``) signature."""

    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    signature: str = Field(pattern=r"^(0x)?[0-9a-fA-F]{130}$", description="65 bytes, hex")


class SessionOut(BaseModel):
    """A bearer session for the signed-in account (``Authorization: Bearer <token>``)."""

    token: str = Field(description="shown once; the gateway keeps only its SHA-256")
    token_type: Literal["bearer"] = "bearer"
    address: str = Field(description="the account, checksummed (EIP-55)")
    role: Literal["grantee"] = "grantee"
    expires_at: datetime


def _signin(services: Services, request: Request, group: str) -> SignIn:
    """The sign-in service, once the caller's address has a request left in ``group``."""
    if services.signin is None:
        raise Problem(NOT_READY, "Sign-In with Ethereum is not offered by this gateway")
    client = request.client.host if request.client is not None else "unknown"
    wait = services.limits.rate.take(f"address:{client}", group)
    if wait > 0:
        raise Problem(
            RATE_LIMITED, f"too many {group} requests from this address; retry later",
            headers={"Retry-After": retry_after(wait)},
        )  # fmt: skip
    return services.signin


@router.get("/nonce", response_model=NonceOut, responses=problem_responses(429, 500, 503))
def nonce(services: ServicesDep, request: Request) -> NonceOut:
    """A single-use nonce for a Sign-In with Ethereum message (no token needed)."""
    given = _signin(services, request, "siwe-nonce").nonce()
    return NonceOut(
        nonce=given.nonce, expires_at=datetime.fromtimestamp(given.expires_at, UTC),
        domain=given.domain, uri=given.uri, chain_id=given.chain_id, statement=given.statement,
    )  # fmt: skip


# 400: a body that is not JSON at all (FastAPI answers it before the route runs)
@router.post(
    "", response_model=SessionOut, responses=problem_responses(400, 401, 422, 429, 500, 503)
)
def sign_in(body: SignedMessage, services: ServicesDep, request: Request) -> SessionOut:
    """Trade a signed EIP-4361 message for a bearer session of role ``grantee``.

    Refused (401) for a signature not by the named address (``siwe-signature``), a nonce
    not given out, used or expired (``siwe-nonce``), an old or expired message
    (``siwe-expired``), another domain or URI (``siwe-domain``) or chain
    (``siwe-chain``); 422 ``siwe-malformed`` for a message that is not EIP-4361.
    """
    session = _signin(services, request, "siwe").sign_in(body.message, body.signature)
    return SessionOut(
        token=session.token, address=session.address,
        expires_at=datetime.fromtimestamp(session.expires_at, UTC),
    )  # fmt: skip
