"""The API's bounds as units: token buckets, upload slots and quota, and the routes' answers.

Routes run on a real uvicorn on a free loopback port over stand-in services; the real
stack is tested in tests/integration/test_api_hostile.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI

from gateway.api.app import Health, create_app
from gateway.api.auth import Tokens, ensure_token
from gateway.api.deps import Services
from gateway.api.limits import Limits, RateLimiter, UploadArea
from gateway.errors import (
    AuditRunning,
    PacsUnavailable,
    UnknownInstance,
    UploadAreaFull,
    UploadsBusy,
)
from gateway.trust.alerts import Alerts
from gateway.trust.audit import Audits
from tests.serve import serve as serve_url

SECRET = "s3cr3t-pw"
PROBLEM = "application/problem+json"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_says_how_long_to_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=6, burst=2, clock=clock)  # one request per 10 s
    assert limiter.take("a", "upload") == 0 and limiter.take("a", "upload") == 0
    assert limiter.take("a", "upload") == pytest.approx(10.0)
    assert limiter.take("b", "upload") == 0, "another token has its own bucket"
    assert limiter.take("a", "audit") == 0, "another route group has its own bucket"
    clock.now += 5
    assert limiter.take("a", "upload") == pytest.approx(5.0)
    clock.now += 5
    assert limiter.take("a", "upload") == 0
    clock.now += 3600
    assert [limiter.take("a", "upload") for _ in range(3)][:2] == [0, 0], "refills to burst only"


def test_upload_slots_are_counted_and_given_back(tmp_path: Path) -> None:
    area = UploadArea(tmp_path / "uploads", max_concurrent=2, quota_bytes=1 << 20, reserve_bytes=0)
    with area.upload() as first, area.upload():
        first.write(b"x" * 10)
        assert first.path.parent == tmp_path / "uploads" and first.path.exists()
        with pytest.raises(UploadsBusy), area.upload():
            pass
    assert not first.path.exists(), "the temp file is removed"
    assert area.held_bytes == 0
    with area.upload():
        pass


def test_the_quota_counts_every_upload_in_progress(tmp_path: Path) -> None:
    area = UploadArea(tmp_path / "uploads", max_concurrent=4, quota_bytes=100, reserve_bytes=0)
    with area.upload() as first:
        first.reserve(60)
        with area.upload() as second:
            second.write(b"x" * 40)
            with pytest.raises(UploadAreaFull):
                second.write(b"x")
        first.write(b"x" * 60)  # inside what it reserved
        with pytest.raises(UploadAreaFull):
            first.write(b"x" * 41)
    assert area.held_bytes == 0


def test_uploads_leave_the_spool_reserve_alone(tmp_path: Path) -> None:
    huge = 1 << 60  # more free space than any disk has: every write would eat into it
    area = UploadArea(tmp_path / "uploads", max_concurrent=1, quota_bytes=huge, reserve_bytes=huge)
    with area.upload() as upload, pytest.raises(UploadAreaFull):
        upload.write(b"x")


def test_files_left_by_a_crash_are_removed_on_start(tmp_path: Path) -> None:
    (tmp_path / "uploads").mkdir()
    stale = tmp_path / "uploads" / "upload-abc.dcm"
    stale.write_bytes(b"x")
    UploadArea(tmp_path / "uploads", max_concurrent=1, quota_bytes=10, reserve_bytes=0)
    assert not stale.exists()


class StandInVerifier:
    """Answers like a Verifier whose PACS is down with a careless message; sweeps block."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.uploads: list[tuple[Path, int]] = []
        self.inflation: tuple[Path | None, int] = (None, -1)
        self.pacs = self
        self.ledger = self

    def instance(self, uid: str, show_phi: bool = False) -> Any:
        raise PacsUnavailable(f"Orthanc at http://admin:{SECRET}@pacs:8042 could not check")

    def study(self, uid: str, show_phi: bool = False) -> Any:
        raise RuntimeError(f"a bug of ours while talking to http://admin:{SECRET}@pacs:8042")

    def file(
        self, path: Path, show_phi: bool = False, scratch: Path | None = None, limit: int = -1
    ) -> Any:
        self.uploads.append((path, path.stat().st_size))
        self.inflation = (scratch, limit)
        raise UnknownInstance("no such instance was ever recorded")

    def find_instances(self, query: dict[str, str]) -> list[tuple[str, str]]:
        self.release.wait(30)
        return []


@pytest.fixture
def verifier() -> Iterator[StandInVerifier]:
    stand_in = StandInVerifier()
    yield stand_in
    stand_in.release.set()


@contextmanager
def serve(app: FastAPI) -> Iterator[httpx.Client]:
    """The app on a real uvicorn on a free loopback port; yields a client for it."""
    with serve_url(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def build(tmp_path: Path, verifier: StandInVerifier, **limits: Any) -> tuple[FastAPI, str]:
    token = ensure_token(tmp_path / "api-token")
    audits = Audits(
        tmp_path / "audits.sqlite", verifier=cast(Any, verifier), index=None, alerts=None
    )
    services = Services(
        verifier=cast(Any, verifier),
        tokens=Tokens(admin_token_file=tmp_path / "api-token", issued_file=tmp_path / "t.json"),
        audits=audits,
        alerts=Alerts(tmp_path / "alerts.sqlite"),
        records=cast(Any, None),
        limits=Limits(
            uploads=UploadArea(
                tmp_path / "uploads",
                max_concurrent=limits.get("max_concurrent", 2),
                quota_bytes=limits.get("quota_bytes", 1 << 20),
                reserve_bytes=0,
            ),
            rate=RateLimiter(
                per_minute=limits.get("per_minute", 600), burst=limits.get("burst", 50)
            ),
            max_upload_bytes=limits.get("max_upload_bytes", 1000),
        ),
    )
    return create_app(health=Health(), services=services), token


def test_a_5xx_gives_a_stable_title_and_an_error_id_never_the_exception(
    tmp_path: Path, verifier: StandInVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    app, token = build(tmp_path, verifier)
    with serve(app) as client:
        response = client.get(
            "/v1/instances/1.2.3/verify", headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["title"] == "A downstream part is unavailable"
    assert SECRET not in response.text and "pacs:8042" not in response.text
    assert body["instance"] == f"urn:uuid:{body['error_id']}"
    logged = [r.getMessage() for r in caplog.records if body["error_id"] in r.getMessage()]
    assert len(logged) == 1 and "could not check" in logged[0] and SECRET not in logged[0]


def test_an_unexpected_exception_is_a_500_problem_logged_once_without_secrets(
    tmp_path: Path,
    verifier: StandInVerifier,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    app, token = build(tmp_path, verifier)
    with serve(app) as client:
        response = client.get(
            "/v1/studies/1.2.3/verify", headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 500 and response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["title"] == "Gateway error" and SECRET not in response.text
    logged = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert not any(SECRET in text for text in logged)
    tagged = [text for text in logged if body["error_id"] in text]
    assert len(tagged) == 1 and "RuntimeError" in tagged[0] and "Traceback" in tagged[0]
    printed = capfd.readouterr().err  # uvicorn's own loggers write there, not to caplog
    assert "Exception in ASGI application" not in printed and SECRET not in printed


def test_a_second_audit_gets_409_with_the_running_one(
    tmp_path: Path, verifier: StandInVerifier
) -> None:
    app, token = build(tmp_path, verifier)
    auth = {"Authorization": f"Bearer {token}"}
    with serve(app) as client:
        first = client.post("/v1/audits", headers=auth)
        assert first.status_code == 202
        running = first.headers["location"]
        second = client.post("/v1/audits", headers=auth)
        assert second.status_code == 409 and second.headers["content-type"] == PROBLEM
        assert second.headers["location"] == running and second.json()["audit"] == running
        verifier.release.set()
        app.state.services.audits.wait(running.rsplit("/", 1)[1], 30)
        assert client.post("/v1/audits", headers=auth).status_code == 202, "free again once done"


def test_audits_refuses_a_second_sweep_itself(tmp_path: Path, verifier: StandInVerifier) -> None:
    audits = Audits(tmp_path / "a.sqlite", verifier=cast(Any, verifier), index=None, alerts=None)
    first = audits.start(requested_by="a")
    with pytest.raises(AuditRunning) as raised:
        audits.start(requested_by="b")
    assert raised.value.audit_id == first and audits.running() == first
    verifier.release.set()
    audits.close()


def test_the_rate_limit_answers_429_with_retry_after(
    tmp_path: Path, verifier: StandInVerifier
) -> None:
    app, token = build(tmp_path, verifier, per_minute=1, burst=2)
    auth = {"Authorization": f"Bearer {token}"}
    with serve(app) as client:
        statuses = [
            client.post("/v1/verify", headers=auth, content=b"x").status_code for _ in "abc"
        ]
        limited = client.post("/v1/verify", headers=auth, content=b"x")
        other_group = client.get("/v1/instances/1.2.3/verify", headers=auth)
    assert statuses == [404, 404, 429]
    assert limited.status_code == 429 and limited.headers["content-type"] == PROBLEM
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert other_group.status_code == 503, "cheap routes are not rate limited"


def test_an_upload_above_the_cap_is_413_by_header_or_by_count(
    tmp_path: Path, verifier: StandInVerifier
) -> None:
    app, token = build(tmp_path, verifier, max_upload_bytes=1000)
    auth = {"Authorization": f"Bearer {token}"}

    def streamed(size: int) -> Iterator[bytes]:
        yield b"x" * size  # no Content-Length: sent chunked

    with serve(app) as client:
        declared = client.post("/v1/verify", headers=auth, content=b"x" * 1001)
        chunked = client.post("/v1/verify", headers=auth, content=streamed(1001))
        fits = client.post("/v1/verify", headers=auth, content=streamed(1000))
    assert declared.status_code == 413 and chunked.status_code == 413
    assert declared.headers["content-type"] == PROBLEM
    assert fits.status_code == 404
    assert [(path.parent, size) for path, size in verifier.uploads] == [
        (tmp_path / "uploads", 1000)
    ]
    assert list((tmp_path / "uploads").iterdir()) == [], "every temp file is removed"


def test_an_upload_past_the_quota_is_507_with_retry_after(
    tmp_path: Path, verifier: StandInVerifier
) -> None:
    app, token = build(tmp_path, verifier, quota_bytes=500, max_upload_bytes=1000)
    with serve(app) as client:
        response = client.post(
            "/v1/verify", headers={"Authorization": f"Bearer {token}"}, content=b"x" * 600
        )
    assert response.status_code == 507 and response.headers["retry-after"]
    assert list((tmp_path / "uploads").iterdir()) == []


def test_a_5xx_log_line_names_the_route_never_the_patient_id_of_the_body(
    tmp_path: Path, verifier: StandInVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    app, token = build(tmp_path, verifier)  # no record views: the route fails unexpectedly
    with serve(app) as client:
        response = client.post(
            "/v1/patients/key",
            json={"patient_id": "PID-0042"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 500
    [line] = [
        r.getMessage() for r in caplog.records if response.json()["error_id"] in r.getMessage()
    ]
    assert "/v1/patients/key" in line
    assert not any("PID-0042" in r.getMessage() for r in caplog.records)


def test_a_deflated_upload_inflates_inside_the_upload_area_within_its_room(
    tmp_path: Path, verifier: StandInVerifier
) -> None:
    """The inflated copy of a deflated upload is written to the upload area, never the
    system's temp folder, and may take no more than the quota leaves."""
    area = UploadArea(tmp_path / "up", max_concurrent=2, quota_bytes=1000, reserve_bytes=0)
    with area.upload() as first:
        first.write(b"x" * 300)
        assert area.room() == 700
    assert area.room() == 1000
    app, token = build(tmp_path, verifier, quota_bytes=5000, max_upload_bytes=1000)
    with serve(app) as client:
        response = client.post(
            "/v1/verify", headers={"Authorization": f"Bearer {token}"}, content=b"x" * 600
        )
    assert response.status_code == 404
    assert verifier.inflation == (tmp_path / "uploads", 5000 - 600)
