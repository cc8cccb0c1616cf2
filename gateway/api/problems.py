"""Errors as RFC 9457 problem details (``application/problem+json``), translated here and only here.

A 4xx detail is written by us for the caller. A 5xx answer never quotes the exception:
it gives a stable title per status and an error id (``instance: urn:uuid:…``, also
``error_id``) that the log line carrying the (redacted) cause is tagged with.
"""

from __future__ import annotations

import logging
import uuid
from traceback import format_exception
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import (
    AlertsUnavailable,
    CannotRestore,
    ChainUnavailable,
    DatasetUnreadable,
    GatewayError,
    LedgerError,
    PacsUnavailable,
    StoreUnavailable,
    UnknownAlert,
    UnknownInstance,
)
from gateway.redact import redact_text

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"


# Titles of 5xx answers: stable, so that a client or an alert may match on them.
SERVER_TITLES = {
    500: "Gateway error",
    502: "The ledger answered with an error",
    503: "A downstream part is unavailable",
}

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

    type: str = Field("about:blank", description="a URI naming the kind of problem")
    title: str = Field(description="short, stable summary of the kind of problem")
    status: int = Field(description="the HTTP status")
    detail: str = Field(description="what went wrong with this request")
    instance: str | None = Field(
        None, description="5xx: `urn:uuid:` of this occurrence, as written in the log"
    )
    error_id: str | None = Field(None, description="5xx: the id to look up in the log")
    errors: list[InvalidParam] | None = Field(None, description="422: why it does not validate")
    audit: str | None = Field(None, description="409 on an audit: the running audit's URL")


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
    """Drop the ``application/json`` twin FastAPI adds beside each problem+json response.

    A ``model`` in ``responses=`` is what puts ``ProblemDetails`` into the components,
    and FastAPI then declares it under the route's own media type too; error answers are
    only ever sent as problem+json, so the schema says only that.
    """
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if PROBLEM in content:
                    content.pop("application/json", None)
    return schema


class Problem(Exception):
    """An error answer: HTTP status, a short title, a detail for the caller, extra members."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers
        self.extra = extra


def problem(
    status: int, title: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM)


def _route(request: Request) -> str:
    """The route's template (``/v1/patients/{patient_id}/records``), never the path itself:
    a path may carry a PatientID, which no log line may."""
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
    title = SERVER_TITLES.get(status, SERVER_TITLES[500])
    return problem(
        status,
        title,
        f"{title}; the gateway log has the cause under error id {error_id}",
        instance=f"urn:uuid:{error_id}",
        error_id=error_id,
    )


def _status_of(exc: GatewayError) -> tuple[int, str]:
    if isinstance(exc, (UnknownInstance, UnknownAlert)):
        return 404, "Not found"
    if isinstance(exc, CannotRestore):
        return 409, "Cannot restore"
    if isinstance(exc, DatasetUnreadable):
        return 422, "Not a readable DICOM file"
    if isinstance(exc, (PacsUnavailable, ChainUnavailable, StoreUnavailable, AlertsUnavailable)):
        return 503, "A downstream part is unavailable"
    if isinstance(exc, LedgerError):
        return 502, "The ledger answered with an error"
    return 500, "Gateway error"


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem document."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, headers=exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        return problem(exc.status_code, str(exc.detail), str(exc.detail), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(error.get("loc", ())), "msg": str(error.get("msg", ""))}
            for error in exc.errors()
        ]
        return problem(422, "Invalid request", "the request does not validate", errors=errors)

    @app.exception_handler(GatewayError)
    async def _gateway(request: Request, exc: GatewayError) -> JSONResponse:
        status, title = _status_of(exc)
        if status >= 500:
            return server_problem(status, request, exc)
        return problem(status, title, str(exc))

    app.add_middleware(UnexpectedErrors)


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
