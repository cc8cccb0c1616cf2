"""The FastAPI application: health, readiness, and the /v1 routers (OpenAPI at /docs and /redoc)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from gateway import __version__
from gateway.api import (
    access,
    alerts,
    assets,
    audits,
    chain_requests,
    erasures,
    grants,
    log,
    problems,
    signin,
    studies,
    verify,
    views,
)
from gateway.api.auth import ensure_token
from gateway.api.console import Console, mount
from gateway.api.deps import Services
from gateway.api.problems import problem_json_only, problem_responses

PROMETHEUS_TEXT = "text/plain"  # the exposition format; its version is a media-type parameter


class Liveness(BaseModel):
    """``/healthz``: the process answers."""

    status: str = Field(description='always "ok"')


class Readiness(BaseModel):
    """``/readyz``: each dependency's check, and the queue depth per pipeline stage."""

    status: str = Field(description='"ready" (200) or "degraded" (503)')
    checks: dict[str, str] = Field(description='"ok" or "unavailable: <error type>" per part')
    stages: dict[str, int] | None = Field(None, description="instances per pipeline stage")


@dataclass
class Health:
    """Named readiness checks: each raises when its dependency is not usable."""

    checks: dict[str, Callable[[], Any]] = field(default_factory=dict)
    stages: Callable[[], dict[str, int]] | None = None

    def run(self) -> tuple[bool, dict[str, str]]:
        results: dict[str, str] = {}
        ok = True
        for name, check in self.checks.items():
            try:
                check()
                results[name] = "ok"
            except Exception as exc:  # a readiness probe reports, it never raises
                ok = False
                results[name] = f"unavailable: {type(exc).__name__}"
        return ok, results


def create_app(
    *,
    health: Health,
    services: Services | None = None,
    metrics: Callable[[], tuple[bytes, str]] | None = None,
    console: Console | None = None,
) -> FastAPI:
    """The application.

    Parameters
    ----------
    health:
        How to probe the parts ``/readyz`` reports on.
    services:
        What the ``/v1`` routes work with; without them those routes answer 503.
    metrics:
        What ``/metrics`` serves: (body, content type).
    console:
        The web console's sessions and index; without it ``/console`` is not served.
    """
    app = FastAPI(
        title="xray-gateway",
        version=__version__,
        description="Integrity of every DICOM image, anchored on the xray contract. "
        "Every /v1 route needs a bearer token; its role decides what it may do.",
        docs_url=None,  # assets.install serves /docs and /redoc from local files, not a CDN
        redoc_url=None,
    )
    assets.install(app, openapi_url=app.openapi_url or "/openapi.json")
    app.state.services = services
    problems.install(app)
    app.include_router(verify.router)
    app.include_router(audits.router)
    app.include_router(views.router)
    app.include_router(log.router)
    app.include_router(alerts.router)
    app.include_router(access.router)
    app.include_router(grants.router)
    app.include_router(chain_requests.router)
    app.include_router(studies.router)
    app.include_router(signin.router)
    if console is not None:
        mount(app, console)
    app.include_router(erasures.router)

    @app.get("/healthz", tags=["health"], response_model=Liveness)
    def healthz() -> Liveness:
        """Liveness: the process answers. Downstream outages do not make it fail."""
        return Liveness(status="ok")

    @app.get(
        "/readyz",
        tags=["health"],
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "a part is not reachable"}},
    )
    def readyz() -> JSONResponse:
        """Readiness: chain, object store and PACS reachable; queue depth per stage."""
        ok, results = health.run()
        body = Readiness(
            status="ready" if ok else "degraded",
            checks=results,
            stages=health.stages() if health.stages is not None else None,
        )
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    if metrics is not None:
        scrape = metrics

        @app.get(
            "/metrics",
            tags=["health"],
            response_class=Response,
            responses={
                200: {
                    "description": "Prometheus text exposition format",
                    "content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}},
                },
                **problem_responses(500),
            },
        )
        def prometheus_metrics() -> Response:
            """Prometheus text format: queues, failures, acks, commitment. No patient data."""
            body, content_type = scrape()
            return Response(body, media_type=content_type)

    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problem_json_only(plain_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


__all__ = ["Console", "Health", "create_app", "ensure_token"]
