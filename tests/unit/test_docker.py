"""The compose deployment in docker/ passes its static checks (no Docker engine here)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"
FILES = ("compose.yaml", "Dockerfile", ".env.example", ".gitignore")


def _load_validator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_validate", DOCKER_DIR / "validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


validator = _load_validator()


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    """A scratch copy of docker/ that a test may break."""
    for name in FILES:
        shutil.copy(DOCKER_DIR / name, tmp_path / name)
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_deployment_passes_static_checks() -> None:
    assert validator.validate(DOCKER_DIR) == []


@pytest.mark.parametrize(
    ("file", "old", "new", "complaint"),
    [
        pytest.param(
            "compose.yaml",
            "orthancteam/orthanc:26.8.2",
            "orthancteam/orthanc:latest",
            "uses 'latest'",
            id="latest-tag",
        ),
        pytest.param(
            "compose.yaml",
            "hyperledger/besu:26.8.1\n    depends_on",
            "hyperledger/besu\n    depends_on",
            "has no tag",
            id="untagged-image",
        ),
        pytest.param(
            "Dockerfile",
            "FROM python:3.11-slim\n",
            "FROM python\n",
            "has no tag",
            id="untagged-base",
        ),
        pytest.param(
            "compose.yaml",
            "      GATEWAY_BATCH_MAX: ${GATEWAY_BATCH_MAX:-256}\n",
            "      GATEWAY_BATCH_MAX: ${GATEWAY_BATCH_MAX:-256}\n      GATEWAY_NEW_KNOB: ${GATEWAY_NEW_KNOB:-1}\n",
            "GATEWAY_NEW_KNOB",
            id="undocumented-gateway-variable",
        ),
        pytest.param(
            "compose.yaml",
            "GATEWAY_CHAIN_URL: ${GATEWAY_CHAIN_URL:?set GATEWAY_CHAIN_URL in docker/.env}",
            "GATEWAY_CHAIN_URL: http://chain:8545",
            "must come from ${GATEWAY_CHAIN_URL}",
            id="gateway-variable-not-from-env",
        ),
        pytest.param(
            ".env.example",
            "ORTHANC_GATEWAY_PASSWORD=change-me\n",
            "",
            "ORTHANC_GATEWAY_PASSWORD",
            id="required-variable-missing-from-example",
        ),
        pytest.param(
            "compose.yaml",
            "GATEWAY_S3_SECRET_KEY: ${GATEWAY_S3_SECRET_KEY:?set GATEWAY_S3_SECRET_KEY in docker/.env}",
            "GATEWAY_S3_SECRET_KEY: s3cr3t-value",
            "GATEWAY_S3_SECRET_KEY holds a literal secret",
            id="inline-secret",
        ),
        pytest.param(
            "compose.yaml",
            "${ORTHANC_GATEWAY_PASSWORD:?set ORTHANC_GATEWAY_PASSWORD in docker/.env}",
            "hunter2",
            "ORTHANC__REGISTERED_USERS holds a literal secret",
            id="inline-secret-in-json",
        ),
        pytest.param(
            "compose.yaml",
            "ORTHANC__XRAY_GATEWAY__API_URL: http://gateway:8000",
            "ORTHANC__XRAY_GATEWAY__API_URL: http://plugin:hunter2@gateway:8000",
            "literal password",
            id="password-in-url",
        ),
        pytest.param(
            ".env.example",
            "GATEWAY_S3_SECRET_KEY=change-me",
            "GATEWAY_S3_SECRET_KEY=0123abcd",
            "GATEWAY_S3_SECRET_KEY must hold the placeholder",
            id="real-secret-in-example",
        ),
        pytest.param(".gitignore", ".env\n", "", ".gitignore must list .env", id="env-not-ignored"),
    ],
)
def test_broken_deployment_is_reported(
    deployment: Path, file: str, old: str, new: str, complaint: str
) -> None:
    _edit(deployment / file, old, new)

    errors = validator.validate(deployment)

    assert any(complaint in error for error in errors), errors


def test_command_line_exits_nonzero_on_problems(
    deployment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _edit(deployment / "compose.yaml", "orthancteam/orthanc:26.8.2", "orthancteam/orthanc:latest")

    assert validator.main(deployment) == 1
    assert "uses 'latest'" in capsys.readouterr().err
