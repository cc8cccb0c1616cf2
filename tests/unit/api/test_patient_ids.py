"""No PatientID in a URL: no route takes one in its path or query, so no access log shows one."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from gateway.core import keys
from gateway.procs import free_port
from gateway.trust.views import PatientRecords
from tests.unit.api.test_limits import StandInVerifier, build

PATIENT_ID = "PID-0042-DOE"
PSEUDONYM_KEY = bytes(range(32))


@pytest.fixture
def verifier() -> Iterator[StandInVerifier]:
    stand_in = StandInVerifier()
    yield stand_in
    stand_in.release.set()


class StandInRecords:
    """Record views with an empty ledger: the key of a PatientID, and no records."""

    def patient_key(self, patient_id: str, *, issuer: str = "") -> bytes:
        return keys.patient_key(PSEUDONYM_KEY, issuer, patient_id)

    def patient(self, patient_key: bytes) -> PatientRecords:
        return PatientRecords(patient_key=patient_key.hex(), xrayhash_count=0, records=[])


def test_no_route_takes_a_patient_id_in_its_path_or_query(
    tmp_path: Path, verifier: StandInVerifier
) -> None:
    app, _ = build(tmp_path, verifier)
    parameters = [
        (path, parameter["name"], parameter["in"])
        for path, operations in app.openapi()["paths"].items()
        for operation in operations.values()
        for parameter in operation.get("parameters", [])
    ]
    assert parameters  # the walk sees the routes' parameters
    for path, name, where in parameters:
        assert where != "cookie" and "patient" not in path.replace("/patients/", "/"), path
        assert name not in ("patient_id", "PatientID", "issuer", "patient_name", "birth_date")
        assert "patient" not in name or name == "patient_key", (path, name)


@contextmanager
def serve_with_access_log(app: FastAPI) -> Iterator[str]:
    """``app`` on uvicorn with its access log on (``up`` runs it at warning, without one)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=True)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_access_log_never_shows_a_patient_id(
    tmp_path: Path, verifier: StandInVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    app, token = build(tmp_path, verifier)
    app.state.services.records = StandInRecords()
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    with (
        serve_with_access_log(app) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client,
    ):
        key = client.post(
            "/v1/patients/key", json={"patient_id": PATIENT_ID, "issuer": "HOSP"}
        ).json()["patient_key"]
        records = client.get("/v1/patients/records", params={"patient_key": key})

    assert key == keys.patient_key(PSEUDONYM_KEY, "HOSP", PATIENT_ID).hex()
    assert records.status_code == 200 and records.json()["patient_key"] == key
    logged = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any("/v1/patients/key" in line for line in logged)
    assert any(f"/v1/patients/records?patient_key={key}" in line for line in logged)
    assert not any(PATIENT_ID in line or "HOSP" in line for line in logged)
