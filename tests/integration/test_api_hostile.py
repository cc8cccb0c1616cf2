"""The HTTP API of a real `up` under attack: oversized and concurrent uploads, rate limits,
a second audit, the OpenAPI schema, and an Orthanc URL whose password must never show.

One stack, configured with small bounds, whose PACS is an external Orthanc URL carrying
``user:s3cr3t-pw@`` on a loopback port where nothing listens (Orthanc is down). The audit
test briefly listens there itself without answering, so that a sweep stays in progress.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

import dicom_fixtures
from gateway.procs import free_port
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env, run

SECRET = "s3cr3t-pw"
MAX_UPLOAD = 1 << 20
SLOTS = 2
BURST = 3
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def orthanc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, orthanc_port: int) -> Iterator[Up]:
    env = gateway_env(
        tmp_path_factory.mktemp("api-hostile") / "var",
        GATEWAY_ORTHANC_URL=f"http://pacs-user:{SECRET}@127.0.0.1:{orthanc_port}",
        GATEWAY_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
        GATEWAY_MAX_CONCURRENT_UPLOADS=str(SLOTS),
        GATEWAY_API_RATE_PER_MINUTE="1",
        GATEWAY_API_RATE_BURST=str(BURST),
    )
    up = Up(env)
    try:
        yield up
    finally:
        assert up.stop() == 0


def token(up: Up, name: str, role: str = "clinician") -> str:
    result = run(up.env, "token", "create", "--role", role, "--name", name)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def admin(up: Up) -> str:
    return (up.data_dir / "api-token").read_text().strip()


def api(up: Up, bearer: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return httpx.Client(base_url=f"http://127.0.0.1:{up.api_port}", headers=headers, timeout=120)


def raw_request(up: Up, head: str, body: bytes = b"") -> socket.socket:
    """An HTTP request written on a raw socket (the caller reads or holds it)."""
    sock = socket.create_connection(("127.0.0.1", up.api_port), timeout=120)
    sock.sendall(head.encode("latin-1") + b"\r\n" + body)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the answer on ``sock`` (the server closes or sends a length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def upload_head(up: Up, bearer: str, *, length: int | None) -> str:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST /v1/verify HTTP/1.1\r\nHost: 127.0.0.1:{up.api_port}\r\n"
        f"Authorization: Bearer {bearer}\r\nContent-Type: application/dicom\r\n{framing}\r\n"
    )


def uploads_in_progress(up: Up) -> list[Path]:
    return sorted((up.data_dir / "uploads").glob("upload-*"))


def wait_for(condition: Any, what: str, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


def test_an_oversized_upload_is_413_before_its_body_by_header_or_once_counted(stack: Up) -> None:
    bearer = token(stack, "c-413")
    declared = raw_request(stack, upload_head(stack, bearer, length=4 << 30))  # 4 GiB, never sent
    with declared:
        status, headers, body = read_response(declared)
    assert status == 413 and headers["content-type"] == PROBLEM
    assert json.loads(body)["title"] == "Too large"

    chunked = raw_request(stack, upload_head(stack, bearer, length=None))
    with chunked:
        piece = b"x" * (64 << 10)
        for _ in range(MAX_UPLOAD // len(piece)):
            chunked.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        chunked.sendall(b"1\r\nx\r\n")  # one byte past the cap; the body never ends
        status, headers, _ = read_response(chunked)
    assert status == 413 and headers["content-type"] == PROBLEM
    wait_for(lambda: not uploads_in_progress(stack), "the refused upload's temp file is gone")


def test_uploads_past_the_slots_get_429_and_temp_files_are_removed(stack: Up) -> None:
    holders = [token(stack, f"c-slot-{n}") for n in range(SLOTS)]
    held = [raw_request(stack, upload_head(stack, b, length=1000), b"DICM" * 4) for b in holders]
    try:
        wait_for(lambda: len(uploads_in_progress(stack)) == SLOTS, "every slot is taken")
        assert all(path.parent == stack.data_dir / "uploads" for path in uploads_in_progress(stack))
        with api(stack, token(stack, "c-slot-extra")) as client:
            refused = client.post("/v1/verify", content=b"not dicom")
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"] == PROBLEM
        assert int(refused.headers["retry-after"]) >= 1
    finally:
        for sock in held:
            sock.close()  # the clients give up half-way
    wait_for(lambda: not uploads_in_progress(stack), "abandoned uploads leave no temp file")
    with api(stack, token(stack, "c-slot-after")) as client:
        assert client.post("/v1/verify", content=b"not dicom").status_code == 422


def test_the_per_token_rate_limit_answers_429_with_retry_after(stack: Up) -> None:
    with api(stack, token(stack, "c-rate")) as client:
        answers = [client.post("/v1/verify", content=b"not dicom") for _ in range(BURST + 1)]
    assert [a.status_code for a in answers] == [422] * BURST + [429]
    limited = answers[-1]
    assert limited.headers["content-type"] == PROBLEM
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    with api(stack, token(stack, "c-rate-other")) as client:
        assert client.post("/v1/verify", content=b"x").status_code == 422, "each token its own"


def test_a_second_audit_gets_409_with_the_running_ones_url(stack: Up, orthanc_port: int) -> None:
    # A PACS that accepts connections and never answers keeps the sweep on its first request.
    stalled = socket.create_server(("127.0.0.1", orthanc_port), backlog=64)
    try:
        with api(stack, admin(stack)) as client:
            first = client.post("/v1/audits")
            assert first.status_code == 202, first.text
            running = first.headers["location"]
            second = client.post("/v1/audits")
            with api(stack, token(stack, "a-409", role="auditor")) as other:
                third = other.post("/v1/audits")
    finally:
        stalled.close()  # the sweep's pending connection is reset: the audit ends
    for refused in (second, third):
        assert refused.status_code == 409 and refused.headers["content-type"] == PROBLEM
        assert refused.headers["location"] == running
        assert refused.json()["audit"] == running
    with api(stack, admin(stack)) as client:
        wait_for(lambda: client.get(running).json()["state"] != "running", "the audit ends")
        state = client.get(running).json()
    assert state["state"] == "failed" and SECRET not in json.dumps(state)


def test_the_openapi_schema_declares_what_the_routes_answer(stack: Up) -> None:
    schema = httpx.get(f"http://127.0.0.1:{stack.api_port}/openapi.json", timeout=30).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    expensive = {("post", "/v1/verify"), ("post", "/v1/audits"),
                 ("post", "/v1/instances/{sop_instance_uid}/restore")}  # fmt: skip
    # Sign-In with Ethereum: the only /v1 routes without a bearer token, rate-limited instead
    signing_in = {("get", "/v1/auth/siwe/nonce"), ("post", "/v1/auth/siwe")}
    assert signing_in <= {(m, p) for p, ops in schema["paths"].items() for m in ops}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            errors = {code: r for code, r in responses.items() if code[0] in "45"}
            for code, response in errors.items():
                if path == "/readyz":
                    continue  # its 503 is the readiness report itself
                assert list(response["content"]) == [PROBLEM], (method, path, code)
            if (method, path) in signing_in:  # open: the signature is the credential
                assert "security" not in operation, (method, path)
                assert "429" in errors and "503" in errors, (method, path)
            elif path.startswith("/v1/"):
                assert {"401", "403", "503"} <= set(errors), (method, path)
                assert operation["security"] == [{"HTTPBearer": []}]
            if path.startswith("/v1/") and (
                operation.get("parameters") or "requestBody" in operation
            ):
                assert "422" in errors, (method, path)
            if (method, path) in expensive:
                assert "429" in errors and "retry-after" in {
                    h.lower() for h in errors["429"]["headers"]
                }, (method, path)
    upload = schema["paths"]["/v1/verify"]["post"]["responses"]
    assert {"413", "429", "507"} <= set(upload)
    assert "409" in schema["paths"]["/v1/audits"]["post"]["responses"]
    assert list(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    readyz = schema["paths"]["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]
    assert readyz["schema"]["$ref"].endswith("/Readiness")


def test_the_orthanc_password_never_shows(stack: Up, tmp_path: Path) -> None:
    [path] = dicom_fixtures.ct_series(tmp_path, 1, rows=16, cols=16,
                                      prefix="1.2.826.0.1.3680043.10.1138.11.4.")  # fmt: skip
    sent = storescu(stack.dicom_port, [path])
    assert sent.returncode == 0, sent.stdout[-2000:]

    def forward_failed() -> bool:
        return any(r["last_error"] and "Orthanc" in r["last_error"] for r in stack.rows())

    wait_for(forward_failed, "the forward stage records Orthanc's outage", timeout=180)
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    study_uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    with api(stack, admin(stack)) as client:
        verdict = client.get(f"/v1/instances/{uid}/verify")
        study = client.get(f"/v1/studies/{study_uid}/verify")
        upload = client.post("/v1/verify", content=path.read_bytes())
        ready = client.get("/readyz")
    answers = [verdict, study, upload, ready]
    # the instance is pending at forward, and says why (Orthanc's error, without userinfo)
    assert verdict.status_code == 200, verdict.text
    assert verdict.json()["status"] == "pending" and verdict.json()["stage"] == "forward"
    assert any("Orthanc" in note for note in verdict.json()["notes"])
    assert ready.status_code == 503
    # the study cannot be listed without Orthanc: a problem with an error id
    assert study.status_code == 503, study.text
    body = study.json()
    assert body["title"] == "A downstream part is unavailable"
    assert body["instance"] == f"urn:uuid:{body['error_id']}"
    status = run(stack.env, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert "Orthanc" in status.stdout  # last_error is there, and tells what failed
    stack.log.flush()
    log = (stack.data_dir.parent / "up.log").read_text()
    assert body["error_id"] in log, "the error id leads to the log line"
    for text in [*(a.text for a in answers), status.stdout, log]:
        assert SECRET not in text and "pacs-user" not in text
