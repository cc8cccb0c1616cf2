"""Errors as RFC 9457 problem details (``application/problem+json``), translated here and only here.

Every problem this API answers is of one of the :data:`PROBLEM_TYPES`: its ``type`` is a
stable URI, ``/problems/<slug>`` (relative to the API), that resolves to a short page
saying what it means and what to do; its ``title`` is the type's, word for word. The
OpenAPI schema lists them all (``ProblemDetails.type``: an enum, with ``x-problem-types``
giving status, title and meaning), and ``/problems/{slug}`` is a route of its own.

A 4xx detail is written by us for the caller. A 5xx answer never quotes the exception:
it gives a stable title per status and an error id (``instance: urn:uuid:…``, also
``error_id``) that the log line carrying the (redacted) cause is tagged with.
"""

from __future__ import annotations

import html
import logging
import re
import uuid
from dataclasses import dataclass
from traceback import format_exception
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import (
    AccessDenied,
    AlertsUnavailable,
    CannotRestore,
    ChainRequestPending,
    ChainUnavailable,
    DatasetUnreadable,
    ErasureChanged,
    ErasureInFlight,
    ErasureNotFound,
    GatewayError,
    GrantNotStanding,
    LedgerError,
    PacsUnavailable,
    SignInRefused,
    StoreUnavailable,
    UnknownAlert,
    UnknownGrant,
    UnknownInstance,
)
from gateway.redact import redact_text

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
TYPES_URL = "/problems"


@dataclass(frozen=True)
class ProblemType:
    """A kind of problem: its URI's slug, HTTP status, stable title, and what it means."""

    slug: str
    status: int
    title: str
    meaning: str

    @property
    def uri(self) -> str:
        return f"{TYPES_URL}/{self.slug}"


# fmt: off
UPLOAD_INTERRUPTED = ProblemType("upload-interrupted", 400, "Upload interrupted",
    "The client closed the connection before the whole body arrived. Send it again.")
UNAUTHORIZED = ProblemType("unauthorized", 401, "Unauthorized",
    "No bearer token, or not a valid one (revoked, mistyped). Send `Authorization: Bearer "
    "<token>`; `xray-gateway token create` issues one.")
FORBIDDEN = ProblemType("forbidden", 403, "Forbidden",
    "The token's role may not do this (roles: admin, auditor, clinician, grantee). Ask for a token "
    "of a role that may.")
NOT_GRANTED = ProblemType("not-granted", 403, "Not granted",
    "This grantee token holds no grant for the study asked for: a grantee reads only the "
    "studies granted to it (`xray-gateway grant`).")
GRANT_EXPIRED = ProblemType("grant-expired", 403, "Grant expired",
    "The grant that let this token read the study has expired. Ask the granter for a new one.")
GRANT_REVOKED = ProblemType("grant-revoked", 403, "Grant revoked",
    "The grant that let this token read the study was revoked (its revocation is on chain).")
NO_SUCH_GRANT = ProblemType("no-such-grant", 404, "No such grant",
    "The index holds no grant with that id.")
SIWE_MALFORMED = ProblemType("siwe-malformed", 422, "Not a sign-in message",
    "The message is not an EIP-4361 (Sign-In with Ethereum) message. Build it from "
    "`GET /v1/auth/siwe/nonce` and sign it as it is.")
SIWE_SIGNATURE = ProblemType("siwe-signature", 401, "Bad signature",
    "The signature does not recover to the address the message names (another key signed "
    "it, or the message was changed after signing).")
SIWE_NONCE = ProblemType("siwe-nonce", 401, "Nonce not valid",
    "The message's nonce is not one this gateway gave out, was used already, or expired "
    "(GATEWAY_SIWE_NONCE_S). Ask `GET /v1/auth/siwe/nonce` for a new one and sign again.")
SIWE_EXPIRED = ProblemType("siwe-expired", 401, "Sign-in message expired",
    "The message was issued too long ago or in the future, is past its Expiration Time, "
    "or before its Not Before. Sign a new one.")
SIWE_DOMAIN = ProblemType("siwe-domain", 401, "Wrong domain",
    "The message names another domain or URI than this gateway's (GATEWAY_SIWE_DOMAIN, "
    "GATEWAY_SIWE_ORIGIN): it was signed for another site.")
SIWE_CHAIN = ProblemType("siwe-chain", 401, "Wrong chain",
    "The message names another chain id than the chain this gateway's grants are on.")
NOT_FOUND = ProblemType("not-found", 404, "Not found",
    "No such resource: no instance, audit or alert with that id, or no such route.")
NO_BATCH_PROOF = ProblemType("no-batch-proof", 404, "No batch proof",
    "The record is not anchored through a Merkle batch (anchored on its own, or not yet): "
    "there is no inclusion proof to give.")
NO_RECEIPT = ProblemType("no-receipt", 404, "No receipt",
    "The record is not anchored on the ledger yet: there is no receipt to give. Ask again "
    "once the instance is committed.")
NO_SUCH_PROOF = ProblemType("no-such-proof", 404, "No such proof",
    "The append-only log does not hold the tree sizes or batch asked for (yet): a proof "
    "needs `first <= second <=` the log's size.")
METHOD_NOT_ALLOWED = ProblemType("method-not-allowed", 405, "Method not allowed",
    "The route exists, but not for this HTTP method; the OpenAPI schema lists its methods.")
CANNOT_RESTORE = ProblemType("cannot-restore", 409, "Cannot restore",
    "There is no verified original to put back into the PACS (never sealed, or its sealed "
    "copy does not match the ledger).")
ERASURE_CHANGED = ProblemType("erasure-changed", 409, "Erasure set changed",
    "The confirmation does not match a dry run as the set is now: the hash is unknown, the "
    "reason differs, or images arrived or went since. Run the dry run again and confirm "
    "its hash.")
GRANT_NOT_STANDING = ProblemType("grant-not-standing", 409, "Grant not standing",
    "The grant to extend or narrow is revoked or expired; make a new grant instead.")
AUDIT_RUNNING = ProblemType("audit-running", 409, "An audit is running",
    "One sweep runs at a time. Follow the running one at the URL in `Location` (and the "
    "`audit` member), or try again once it is done.")
TOO_LARGE = ProblemType("too-large", 413, "Too large",
    "The upload is larger than GATEWAY_MAX_UPLOAD_BYTES.")
INVALID_REQUEST = ProblemType("invalid-request", 422, "Invalid request",
    "A parameter or the body does not validate; `errors` says which and why.")
INVALID_CURSOR = ProblemType("invalid-cursor", 422, "Invalid cursor",
    "The `cursor` is not one this list gave out (edited, cut short, or another list's). "
    "Start again from the first page, without a cursor.")
EMPTY_BODY = ProblemType("empty-body", 422, "Empty body",
    "The upload has no body: send the DICOM file as the request body.")
INVALID_CONTENT_LENGTH = ProblemType("invalid-content-length", 422, "Invalid Content-Length",
    "The Content-Length header is not a whole number.")
NOT_DICOM = ProblemType("not-dicom", 422, "Not a readable DICOM file",
    "The file cannot be read as DICOM (not DICOM, cut short, or inflating past the limit).")
TOO_MANY_UPLOADS = ProblemType("too-many-uploads", 429, "Too many uploads",
    "Every upload slot is taken (GATEWAY_MAX_CONCURRENT_UPLOADS). Retry after "
    "`Retry-After` seconds.")
RATE_LIMITED = ProblemType("rate-limited", 429, "Too many requests",
    "This token's rate limit for uploads, audits or restores (on the sign-in routes: this "
    "address's) is used up (GATEWAY_API_RATE_PER_MINUTE, GATEWAY_API_RATE_BURST). Retry after "
    "`Retry-After` seconds.")
GATEWAY_FAILED = ProblemType("gateway-error", 500, "Gateway error",
    "A fault of the gateway's own. The answer's `error_id` names the log line that holds "
    "the cause; report it with that id.")
LEDGER_ERROR = ProblemType("ledger-error", 502, "The ledger answered with an error",
    "The chain node or the xray contract refused or failed the call. The log line with the "
    "answer's `error_id` has the cause.")
UNAVAILABLE = ProblemType("unavailable", 503, "A downstream part is unavailable",
    "The chain, the object store, the PACS or the plugin's alerts cannot be reached now. "
    "Retry later; `/readyz` names the part that is down.")
CHAIN_REQUEST_PENDING = ProblemType("chain-request-pending", 503, "Chain write pending",
    "The write was queued for the gateway's anchoring worker (the recorder's one sender) and "
    "is not mined yet, or that worker is not running. It stays queued; its result shows in "
    "the list it belongs to (e.g. `GET /v1/grants`) once mined, and "
    "`GET /v1/chain-requests/{id}` shows where it stands. Retry after Retry-After.")
NOT_READY = ProblemType("not-ready", 503, "Not ready",
    "The gateway's API runs without its services (starting, or a health-only process).")
UPLOAD_AREA_FULL = ProblemType("upload-area-full", 507, "Upload area full",
    "The upload area's quota, or the disk's reserve, is reached. Retry after `Retry-After` "
    "seconds.")
HTTP_ERROR = ProblemType("http-error", 400, "HTTP error",
    "An error the HTTP layer answered before any route ran; `status` and `detail` say which.")
# fmt: on

#: Every problem the API can answer, by slug.
PROBLEM_TYPES: dict[str, ProblemType] = {
    kind.slug: kind
    for kind in (
        UPLOAD_INTERRUPTED, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, NO_BATCH_PROOF, NO_RECEIPT,
        NO_SUCH_PROOF, METHOD_NOT_ALLOWED, CANNOT_RESTORE, ERASURE_CHANGED, AUDIT_RUNNING, TOO_LARGE, INVALID_REQUEST,
        INVALID_CURSOR, EMPTY_BODY, INVALID_CONTENT_LENGTH, NOT_DICOM, TOO_MANY_UPLOADS,
        RATE_LIMITED, GATEWAY_FAILED, LEDGER_ERROR, UNAVAILABLE, NOT_READY, UPLOAD_AREA_FULL,
        HTTP_ERROR, NOT_GRANTED, GRANT_EXPIRED, GRANT_REVOKED, NO_SUCH_GRANT,
        GRANT_NOT_STANDING, CHAIN_REQUEST_PENDING,
        SIWE_MALFORMED, SIWE_SIGNATURE, SIWE_NONCE, SIWE_EXPIRED, SIWE_DOMAIN, SIWE_CHAIN,
    )
}  # fmt: skip


#: A grantee's refusals (:class:`~gateway.errors.AccessDenied`), by reason.
DENIALS = {
    "not-granted": NOT_GRANTED,
    "grant-expired": GRANT_EXPIRED,
    "grant-revoked": GRANT_REVOKED,
}

#: Sign-In with Ethereum's refusals (:class:`~gateway.errors.SignInRefused`), by reason.
SIGN_IN_REFUSALS = {
    kind.slug: kind
    for kind in (SIWE_MALFORMED, SIWE_SIGNATURE, SIWE_NONCE, SIWE_EXPIRED, SIWE_DOMAIN, SIWE_CHAIN)
}

# Types of 5xx answers: stable titles, so that a client or an alert may match on them.
SERVER_TYPES = {500: GATEWAY_FAILED, 502: LEDGER_ERROR, 503: UNAVAILABLE}
# What the HTTP layer itself answers (no route, wrong method).
HTTP_TYPES = {404: NOT_FOUND, 405: METHOD_NOT_ALLOWED}

STATUS_DESCRIPTIONS = {
    400: "The request is malformed (e.g. an upload cut short)",
    401: "No bearer token, or not a valid one",
    403: "The token's role may not do this",
    404: "No such resource",
    409: "Conflicts with the current state",
    413: "The upload is larger than GATEWAY_MAX_UPLOAD_BYTES",
    422: "The request does not validate, or the file is not readable DICOM",
    429: "Too many requests or uploads at once; retry after Retry-After seconds",
    500: "Gateway error; look the error id up in the log",
    502: "The ledger answered with an error",
    503: "A downstream part (chain, object store, PACS) is unavailable",
    507: "The upload area is full; retry after Retry-After seconds",
}


class InvalidParam(BaseModel):
    """One reason a request does not validate."""

    loc: list[str | int]
    msg: str


class ProblemDetails(BaseModel):
    """An RFC 9457 problem document, as every error answer of this API is."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description="a URI naming the kind of problem; it resolves to a page that explains "
        "it (the list: `x-problem-types`)",
        json_schema_extra={
            "enum": [kind.uri for kind in PROBLEM_TYPES.values()],
            "x-problem-types": [
                {"type": kind.uri, "status": kind.status, "title": kind.title,
                 "meaning": kind.meaning}
                for kind in PROBLEM_TYPES.values()
            ],
        },
    )  # fmt: skip
    title: str = Field(description="short, stable summary of the kind of problem")
    status: int = Field(description="the HTTP status")
    detail: str = Field(description="what went wrong with this request")
    instance: str | None = Field(
        None, description="5xx: `urn:uuid:` of this occurrence, as written in the log"
    )
    error_id: str | None = Field(None, description="5xx: the id to look up in the log")
    errors: list[InvalidParam] | None = Field(None, description="422: why it does not validate")
    audit: str | None = Field(None, description="409 on an audit: the running audit's URL")
    chain_request: int | None = Field(
        None, description="503 `chain-request-pending`: the queued chain write's id"
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with a problem+json body, as OpenAPI states it."""
    declared: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "model": ProblemDetails,
            "description": STATUS_DESCRIPTIONS.get(status, "An error"),
            "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
        }
        if status in (429, 503, 507):
            entry["headers"] = {
                "Retry-After": {
                    "description": "seconds to wait before trying again",
                    "schema": {"type": "integer"},
                }
            }
        if status == 409:
            entry["headers"] = {
                "Location": {
                    "description": "the conflicting resource",
                    "schema": {"type": "string"},
                }
            }
        declared[status] = entry
    return declared


def problem_json_only(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop the twin FastAPI adds beside each problem+json response.

    A ``model`` in ``responses=`` is what puts ``ProblemDetails`` into the components,
    and FastAPI then declares it under the route's own media type too (``application/json``,
    or ``text/html`` for a page); error answers are only ever sent as problem+json, so the
    schema says only that.
    """
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if PROBLEM in content:
                    response["content"] = {PROBLEM: content[PROBLEM]}
    return schema


class Problem(Exception):
    """An error answer: its type (status, title), a detail for the caller, extra members."""

    def __init__(
        self,
        kind: ProblemType,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.headers = headers
        self.extra = extra


def problem(
    kind: ProblemType,
    detail: str,
    *,
    status: int | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The problem document of ``kind``; ``status`` only for :data:`HTTP_ERROR`'s."""
    status = status or kind.status
    body = {"type": kind.uri, "title": kind.title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM)


def _route(request: Request) -> str:
    """The route's template (``/v1/audits/{audit_id}``), never the path itself: a path is
    the caller's input, and a log line holds only what we wrote."""
    return str(getattr(request.scope.get("route"), "path", "(no route)"))


def server_problem(
    status: int, request: Request, exc: BaseException, *, traceback: bool = False
) -> JSONResponse:
    """A 5xx answer with an error id; the id and the redacted cause go to the log only.

    ``traceback`` logs the stack too: for a bug of ours, never for a downstream outage.
    """
    error_id = str(uuid.uuid4())
    if traceback:
        cause = redact_text("".join(format_exception(exc)).rstrip())
    else:
        cause = redact_text(f"{type(exc).__name__}: {exc}")
    log.log(
        logging.ERROR if traceback else logging.WARNING,
        "error %s: %s %s -> %d: %s", error_id, request.method, _route(request), status, cause,
    )  # fmt: skip
    kind = SERVER_TYPES.get(status, GATEWAY_FAILED)
    return problem(
        kind,
        f"{kind.title}; the gateway log has the cause under error id {error_id}",
        instance=f"urn:uuid:{error_id}",
        error_id=error_id,
    )


def allowed_methods(request: Request) -> list[str]:
    """Every method the API schema declares at this path: Starlette's 405 names only the
    first matching route's, and ``GET`` and ``POST /v1/audits`` are two routes."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), request.url.path):
            methods |= {method.upper() for method in operations}
    return sorted(methods)


def _type_of(exc: GatewayError) -> ProblemType:
    if isinstance(exc, (UnknownInstance, UnknownAlert, ErasureNotFound)):
        return NOT_FOUND
    if isinstance(exc, ErasureChanged):
        return ERASURE_CHANGED
    if isinstance(exc, CannotRestore):
        return CANNOT_RESTORE
    if isinstance(exc, AccessDenied):
        return DENIALS[exc.reason]
    if isinstance(exc, UnknownGrant):
        return NO_SUCH_GRANT
    if isinstance(exc, GrantNotStanding):
        return GRANT_NOT_STANDING
    if isinstance(exc, ChainRequestPending):
        return CHAIN_REQUEST_PENDING
    if isinstance(exc, SignInRefused):
        return SIGN_IN_REFUSALS[exc.reason]
    if isinstance(exc, DatasetUnreadable):
        return NOT_DICOM
    if isinstance(
        exc,
        (PacsUnavailable, ChainUnavailable, StoreUnavailable, AlertsUnavailable, ErasureInFlight),
    ):
        return UNAVAILABLE
    if isinstance(exc, LedgerError):
        return LEDGER_ERROR
    return GATEWAY_FAILED


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem document."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem(exc.kind, exc.detail, headers=exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        kind = HTTP_TYPES.get(exc.status_code, HTTP_ERROR)
        return problem(kind, str(exc.detail), status=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(error.get("loc", ())), "msg": str(error.get("msg", ""))}
            for error in exc.errors()
        ]
        return problem(INVALID_REQUEST, "the request does not validate", errors=errors)

    @app.exception_handler(GatewayError)
    async def _gateway(request: Request, exc: GatewayError) -> JSONResponse:
        kind = _type_of(exc)
        if isinstance(exc, ChainRequestPending):  # a clear 503: queued, with its id
            return problem(
                kind, str(exc), headers={"Retry-After": "5"}, chain_request=exc.request_id
            )
        if kind.status >= 500:
            return server_problem(kind.status, request, exc)
        return problem(kind, str(exc))

    app.add_middleware(UnexpectedErrors)
    install_type_pages(app)


Slug = Annotated[
    str,
    Path(description="a problem type's slug", json_schema_extra={"enum": list(PROBLEM_TYPES)}),
]


def install_type_pages(app: FastAPI) -> None:
    """``GET /problems/{slug}``: the page each problem ``type`` URI resolves to."""

    @app.get(
        f"{TYPES_URL}/{{slug}}",
        tags=["problems"],
        response_class=HTMLResponse,
        responses={
            200: {"description": "what the problem means", "content": {"text/html": {}}},
            **problem_responses(404, 422),
        },
    )
    def problem_type(slug: Slug) -> HTMLResponse:
        """What a problem ``type`` means: its status, title and what to do about it."""
        kind = PROBLEM_TYPES.get(slug)
        if kind is None:
            raise Problem(NOT_FOUND, f"no problem type {slug!r}")
        return HTMLResponse(type_page(kind))


def type_page(kind: ProblemType) -> str:
    """A short HTML page for one problem type (no script, no external asset)."""
    title = html.escape(kind.title)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title} ({kind.status}) · xray-gateway</title></head><body>"
        f"<h1>{title}</h1><p>HTTP status <strong>{kind.status}</strong>; problem type "
        f"<code>{html.escape(kind.uri)}</code>.</p><p>{html.escape(kind.meaning)}</p>"
        "<p>Every error of the xray-gateway API is an RFC 9457 problem document "
        '(<code>application/problem+json</code>); <a href="/docs">the API docs</a> '
        "list each route's.</p></body></html>\n"
    )


class UnexpectedErrors:
    """Any other exception becomes a 500 problem with an error id, logged once, redacted.

    An ``exception_handler(Exception)`` would answer too, but Starlette re-raises the
    exception afterwards and uvicorn logs it again, unredacted; this middleware, inside
    Starlette's outermost one, handles it for good.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise  # too late for another answer: uvicorn closes the connection
            # A bug of ours, not the caller's input: the traceback belongs in the log.
            response = server_problem(500, Request(scope), exc, traceback=True)
            await response(scope, receive, send)
