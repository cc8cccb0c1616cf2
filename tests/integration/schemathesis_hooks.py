"""schemathesis hooks for the API fuzz run (SCHEMATHESIS_HOOKS=tests.integration.schemathesis_hooks).

``POST /v1/verify`` takes ``application/dicom`` bytes: sent as schemathesis sends any
binary body.
"""

from __future__ import annotations

import schemathesis

schemathesis.serializer.alias("application/dicom", "application/octet-stream")


@schemathesis.check
def client_errors_are_problem_json(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """Every 4xx answer is an RFC 9457 problem document with its own status."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    if content_type.split(";")[0].strip() != "application/problem+json":
        raise AssertionError(f"{response.status_code} came as {content_type!r}")
    body = response.json()
    if not isinstance(body, dict) or body.get("status") != response.status_code:
        raise AssertionError(f"{response.status_code} without a problem body: {body!r}")
    if not body.get("title") or "detail" not in body:
        raise AssertionError(f"{response.status_code} problem lacks title or detail: {body!r}")
    return True
