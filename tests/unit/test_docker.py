"""The compose deployment in docker/ passes its static checks (no Docker engine here), and
the Orthanc image's configuration is one the integrity plugin accepts."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from gateway.orthanc_plugin.settings import SECTION, PluginSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "docker"
ADDRESS = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


validator = _load("docker_validate", DOCKER_DIR / "validate.py")
entrypoint = _load("docker_orthanc_entrypoint", DOCKER_DIR / "orthanc" / "entrypoint.py")


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    """A scratch copy of docker/ that a test may break."""
    copy = tmp_path / "docker"
    shutil.copytree(DOCKER_DIR, copy, ignore=shutil.ignore_patterns(".env", "__pycache__"))
    return copy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_deployment_passes_static_checks() -> None:
    assert validator.validate(DOCKER_DIR) == []


ORTHANC_ENV_ANCHOR = "      ORTHANC__NAME: XRAY-PACS\n"
ORTHANC_VOLUMES_END = "      - orthanc-alerts:/var/lib/xray-alerts\n    networks:"
ORTHANC_ALERTS_MOUNT = "      - orthanc-alerts:/var/lib/xray-alerts\n"
EVIDENCE_URL = (
    "      ORTHANC__XRAY_GATEWAY__INDEX_URL: postgresql://xray_evidence:"
    "${EVIDENCE_DB_PASSWORD:?set EVIDENCE_DB_PASSWORD in docker/.env}@postgres:5432/xray\n"
)


@pytest.mark.parametrize(
    ("file", "old", "new", "complaint"),
    [
        pytest.param(
            "Dockerfile.orthanc",
            "FROM orthancteam/orthanc:26.8.2\n",
            "FROM orthancteam/orthanc:latest\n",
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
            "Dockerfile.orthanc",
            "FROM python:3.11-slim AS wheel\n",
            "FROM python AS wheel\n",
            "Dockerfile.orthanc FROM: image 'python' has no tag",
            id="untagged-build-stage",
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
            ".env.example",
            "ORTHANC_GATEWAY_PASSWORD=change-me\n",
            "ORTHANC_GATEWAY_PASSWORD=change-me\nXRAY_PLUGIN_API_TOKEN=change-me\n",
            "sets XRAY_PLUGIN_API_TOKEN, which compose.yaml never reads",
            id="stale-example-variable",
        ),
        pytest.param(
            ".env.example",
            "GATEWAY_SPOOL_RESERVE_MB=2048\n",
            "",
            "does not mention GATEWAY_SPOOL_RESERVE_MB",
            id="setting-missing-from-example",
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
            "ORTHANC__XRAY_GATEWAY__CHAIN_URL: ${GATEWAY_CHAIN_URL:?set GATEWAY_CHAIN_URL in docker/.env}",
            "ORTHANC__XRAY_GATEWAY__CHAIN_URL: http://rpc:hunter2@chain:8545",
            "literal password",
            id="password-in-url",
        ),
        pytest.param(
            "compose.yaml",
            "networks:\n  backend:\n",
            "secrets:\n  plugin_api_token:\n    file: ./token\n\nnetworks:\n  backend:\n",
            "secret 'plugin_api_token' is declared but no service uses it",
            id="unused-secret",
        ),
        pytest.param(
            "compose.yaml",
            ORTHANC_VOLUMES_END,
            ORTHANC_VOLUMES_END.replace(
                "    networks:", "    secrets: [plugin_api_token]\n    networks:"
            ),
            "uses secret 'plugin_api_token', never declared",
            id="undeclared-secret",
        ),
        pytest.param(
            ".env.example",
            "GATEWAY_S3_SECRET_KEY=change-me",
            "GATEWAY_S3_SECRET_KEY=0123abcd",
            "GATEWAY_S3_SECRET_KEY must hold the placeholder",
            id="real-secret-in-example",
        ),
        pytest.param(".gitignore", ".env\n", "", ".gitignore must list .env", id="env-not-ignored"),
        pytest.param(
            "Dockerfile.orthanc.dockerignore",
            "**/keys\n",
            "",
            "Dockerfile.orthanc.dockerignore does not exclude **/keys",
            id="keys-in-build-context",
        ),
        pytest.param(
            "orthanc/orthanc.json",
            '"StorageCompression": false',
            '"StorageCompression": true',
            "StorageCompression must be false",
            id="storage-compression",
        ),
        pytest.param(
            "orthanc/orthanc.json",
            '"MaximumStorageCacheSize": 0',
            '"MaximumStorageCacheSize": 128',
            "MaximumStorageCacheSize must be 0",
            id="storage-cache",
        ),
        pytest.param(
            "orthanc/orthanc.json",
            '"OverwriteInstances": false',
            '"OverwriteInstances": true',
            "OverwriteInstances must be false",
            id="overwrite-instances",
        ),
        pytest.param(
            "orthanc/orthanc.json",
            '"/usr/share/orthanc/plugins/libOrthancPython.so",\n'
            '    "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so",\n'
            '    "/usr/share/orthanc/plugins/libOrthancWebViewer.so",',
            '"/usr/share/orthanc/plugins/libOrthancWebViewer.so",\n'
            '    "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so",\n'
            '    "/usr/share/orthanc/plugins/libOrthancPython.so",',
            "libOrthancPython.so first",
            id="web-viewer-before-python",
        ),
        pytest.param(
            "orthanc/orthanc.json",
            '    "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so",\n',
            "",
            "PostgreSQL.EnableIndex without libOrthancPostgreSQLIndex.so",
            id="postgresql-index-plugin-not-loaded",
        ),
        pytest.param(
            "orthanc/orthanc.json",
            '"SysPath": ["/opt/xray-gateway/lib"]',
            '"SysPath": ["/opt/xray-gateway/site-packages"]',
            "must pip install --target /opt/xray-gateway/site-packages",
            id="sys-path-not-where-installed",
        ),
        pytest.param(
            "Dockerfile.orthanc",
            "groupadd --system --gid 10001 xray",
            "groupadd --system --gid 10002 xray",
            "group xray must have the same gid in both images",
            id="group-mismatch",
        ),
        pytest.param(
            "Dockerfile",
            "GATEWAY_DATA_DIR=/var/lib/xray-gateway \\",
            "GATEWAY_DATA_DIR=/srv/xray \\",
            "is not the gateway image's GATEWAY_DATA_DIR",
            id="data-dir-mismatch",
        ),
        pytest.param(
            "compose.yaml",
            EVIDENCE_URL,
            "",
            "several gateway nodes share no data volume; set ORTHANC__XRAY_GATEWAY__INDEX_URL",
            id="plugin-without-evidence",
        ),
        pytest.param(
            "compose.yaml",
            ORTHANC_ALERTS_MOUNT,
            ORTHANC_ALERTS_MOUNT + "      - gateway-keys:/var/lib/xray-gateway/keys:ro\n",
            "must not mount 'gateway-keys'",
            id="keys-mounted-into-orthanc",
        ),
        pytest.param(
            "compose.yaml",
            ORTHANC_ALERTS_MOUNT,
            ORTHANC_ALERTS_MOUNT + "      - gateway-data:/var/lib/xray-gateway:ro\n",
            "with XrayGateway.IndexUrl the plugin reads the evidence through PostgreSQL",
            id="gateway-data-mounted-beside-the-evidence-role",
        ),
        pytest.param(
            "compose.yaml",
            EVIDENCE_URL,
            EVIDENCE_URL.replace("xray_evidence:${EVIDENCE_DB", "xray_gateway:${INDEX_DB"),
            "the gateway's own role; it must use the read-only evidence role",
            id="plugin-signs-in-as-the-gateway",
        ),
        pytest.param(
            "orthanc/orthanc.json",
            '"Lock": false',
            '"Lock": true',
            "2 Orthanc nodes need one index",
            id="orthanc-index-locked-by-one-node",
        ),
        pytest.param(
            "orthanc/orthanc.json",
            '"EnableStorage": false',
            '"EnableStorage": true',
            "2 Orthanc nodes need one index",
            id="orthanc-files-in-the-database",
        ),
        pytest.param(
            "compose.yaml",
            "  orthanc-2: *orthanc-node\n",
            "  orthanc-2:\n    <<: *orthanc-node\n    volumes:\n"
            "      - orthanc-2-db:/var/lib/orthanc/db\n"
            "      - orthanc-alerts:/var/lib/xray-alerts\n",
            "must share one volume at StorageDirectory",
            id="orthanc-nodes-with-their-own-storage",
        ),
        pytest.param(
            "compose.yaml",
            "      - gateway-2-keys:/var/lib/xray-gateway/keys\n",
            "      - gateway-keys:/var/lib/xray-gateway/keys\n",
            "share 'gateway-keys' at /var/lib/xray-gateway/keys",
            id="gateway-nodes-share-keys",
        ),
        pytest.param(
            "compose.yaml",
            "      GATEWAY_INDEX_URL: ${GATEWAY_INDEX_URL:?set GATEWAY_INDEX_URL in docker/.env}\n"
            "      GATEWAY_ALLOWED_AETS",
            "      GATEWAY_ALLOWED_AETS",
            "several gateway nodes share one index; set GATEWAY_INDEX_URL",
            id="gateway-nodes-without-the-shared-index",
        ),
        pytest.param(
            "compose.yaml",
            ORTHANC_ENV_ANCHOR,
            ORTHANC_ENV_ANCHOR + '      ORTHANC__POSTGRESQL__LOCK: "true"\n',
            "ORTHANC__POSTGRESQL__LOCK overrides",
            id="compose-overrides-the-index-lock",
        ),
        pytest.param(
            "compose.yaml",
            "      - orthanc-db:/var/lib/orthanc/db\n",
            "",
            "StorageDirectory '/var/lib/orthanc/db/storage' is on no volume",
            id="orthanc-files-not-persisted",
        ),
        pytest.param(
            "compose.yaml",
            ORTHANC_ENV_ANCHOR,
            ORTHANC_ENV_ANCHOR + '      ORTHANC__STORAGE_COMPRESSION: "true"\n',
            "ORTHANC__STORAGE_COMPRESSION overrides",
            id="compose-overrides-plugin-setting",
        ),
        pytest.param(
            "compose.yaml",
            ORTHANC_ENV_ANCHOR,
            ORTHANC_ENV_ANCHOR + "      ORTHANC__XRAY_GATEWAY__DATA_DIR: /data\n",
            "ORTHANC__XRAY_GATEWAY__DATA_DIR overrides",
            id="compose-overrides-data-dir",
        ),
        # -- separated trust domains: the PACS side cannot write the gateway's evidence
        pytest.param(
            "compose.yaml",
            ORTHANC_ALERTS_MOUNT,
            ORTHANC_ALERTS_MOUNT + "      - gateway-data:/var/lib/xray-gateway\n",
            "must mount 'gateway-data' read-only",
            id="orthanc-writes-gateway-data",
        ),
        pytest.param(
            "orthanc/orthanc.json",
            '    "AlertsDir": "/var/lib/xray-alerts",\n',
            "",
            "XrayGateway.AlertsDir must be set, outside DataDir",
            id="plugin-alerts-in-gateway-data",
        ),
        pytest.param(
            "compose.yaml",
            "      - orthanc-alerts:/var/lib/xray-alerts\n",
            "      - orthanc-alerts:/var/lib/xray-alerts:ro\n",
            "must mount a writable volume at /var/lib/xray-alerts",
            id="plugin-alerts-not-writable",
        ),
        pytest.param(
            "compose.yaml",
            "      - orthanc-alerts:/var/lib/xray-alerts:ro\n",
            "      - orthanc-alerts:/var/lib/xray-alerts\n",
            "must mount 'orthanc-alerts' read-only at its GATEWAY_PLUGIN_ALERTS_DIR",
            id="gateway-writes-plugin-alerts",
        ),
        pytest.param(
            "compose.yaml",
            ORTHANC_ENV_ANCHOR,
            ORTHANC_ENV_ANCHOR + "      ORTHANC__XRAY_GATEWAY__ALERTS_DIR: /var/lib/xray-gateway\n",
            "ORTHANC__XRAY_GATEWAY__ALERTS_DIR overrides",
            id="compose-overrides-alerts-dir",
        ),
        pytest.param(
            "compose.yaml",
            "ORTHANC__XRAY_GATEWAY__CONTRACT_ADDRESS: ${GATEWAY_CONTRACT_ADDRESS:-}",
            "ORTHANC__XRAY_GATEWAY__CONTRACT_ADDRESS: ''",
            "ORTHANC__XRAY_GATEWAY__CONTRACT_ADDRESS must come from ${GATEWAY_CONTRACT_ADDRESS}",
            id="contract-not-pinned",
        ),
        pytest.param(
            "orthanc/entrypoint.py",
            "def plugin_environment(",
            'RECORD = "chain/contract.json"\n\n\ndef plugin_environment(',
            "must not read the gateway's deployment record",
            id="entrypoint-follows-contract-json",
        ),
        pytest.param(
            "Dockerfile",
            '"umask 0027 && ',
            '"umask 0007 && ',
            "umask 0007 lets the xray group write",
            id="gateway-files-group-writable",
        ),
        pytest.param(
            "Dockerfile",
            "-m 2750 /var/lib/xray-gateway",
            "-m 2770 /var/lib/xray-gateway",
            "/var/lib/xray-gateway is group-writable (2770)",
            id="gateway-data-dir-group-writable",
        ),
    ],
)
def test_broken_deployment_is_reported(
    deployment: Path, file: str, old: str, new: str, complaint: str
) -> None:
    _edit(deployment / file, old, new)

    errors = validator.validate(deployment)

    assert any(complaint in error for error in errors), errors


def test_dockerfile_without_dockerignore_is_reported(deployment: Path) -> None:
    (deployment / "Dockerfile.orthanc.dockerignore").unlink()

    errors = validator.validate(deployment)

    assert any("Dockerfile.orthanc has no Dockerfile.orthanc.dockerignore" in e for e in errors)


def test_every_gateway_setting_must_be_in_env_example(deployment: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.py"
    source = (ROOT / "gateway" / "config.py").read_text(encoding="utf-8")
    anchor = "    batch_max: int"
    assert anchor in source
    config.write_text(source.replace(anchor, "    pipeline_nice: int = 10\n" + anchor, 1))

    errors = validator.validate(deployment, settings_source=config)

    assert errors == [
        "gateway/config.py has the setting pipeline_nice; .env.example does not mention "
        "GATEWAY_PIPELINE_NICE (set it, or list it commented with why it is not set)"
    ]


def test_build_stages_are_not_images() -> None:
    dockerfile = "FROM --platform=linux/amd64 python:3.11-slim AS wheel\nFROM wheel\nFROM debian\n"

    assert validator.from_images(dockerfile) == ["python:3.11-slim", "debian"]


@pytest.mark.parametrize(
    ("variable", "path"),
    [
        ("ORTHANC__STORAGE_COMPRESSION", "StorageCompression"),
        ("ORTHANC__MAXIMUM_STORAGE_CACHE_SIZE", "MaximumStorageCacheSize"),
        ("ORTHANC__XRAY_GATEWAY__CONTRACT_ADDRESS", "XrayGateway.ContractAddress"),
        ("ORTHANC__XRAY_GATEWAY__FROM_BLOCK", "XrayGateway.FromBlock"),
    ],
)
def test_orthanc_variable_names_map_to_configuration_paths(variable: str, path: str) -> None:
    assert validator.orthanc_json_path(variable) == path


def test_command_line_exits_nonzero_on_problems(
    deployment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _edit(
        deployment / "Dockerfile.orthanc",
        "FROM orthancteam/orthanc:26.8.2\n",
        "FROM orthancteam/orthanc\n",
    )

    assert validator.main(deployment) == 1
    assert "has no tag" in capsys.readouterr().err


# -- the Orthanc image's configuration, read by the plugin's own settings reader ------------


def _compose_environment(service: str, **env: str) -> dict[str, str]:
    """A service's environment as compose resolves it with .env.example's values and ``env``."""
    compose = yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text(encoding="utf-8"))
    active, _ = validator.load_env_example(DOCKER_DIR / ".env.example")
    active.update(env)

    def resolve(match: re.Match[str]) -> str:
        name, operator, default = match[1], match[2], match[3]
        value = active.get(name, "")
        if not value and operator in (":-", "-"):
            return str(default)
        return value

    return {
        key: validator.BRACED.sub(resolve, value)
        for key, value in validator._environment(compose["services"][service]).items()
    }


def _orthancteam_merge(config: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    """What orthancteam's entrypoint does with ``ORTHANC__*`` variables: a JSON value where
    one parses, else the string, at the variable's configuration path."""
    merged = json.loads(json.dumps(config))
    for key, raw in environ.items():
        if not key.startswith("ORTHANC__"):
            continue
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        *parents, leaf = validator.orthanc_json_path(key).split(".")
        node = merged
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return merged


def _image_config() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(
        (DOCKER_DIR / "orthanc" / "orthanc.json").read_text(encoding="utf-8")
    )
    return config


def test_the_plugin_accepts_the_image_configuration_with_compose_environment() -> None:
    environ = _compose_environment(
        "orthanc",
        ORTHANC_GATEWAY_PASSWORD="0b1d5e7a",
        GATEWAY_CONTRACT_ADDRESS=ADDRESS,
        CONTRACT_DEPLOY_BLOCK="7",
        GATEWAY_ORTHANC_STORED_FILE_TOKEN="s3cr3t",
        EVIDENCE_DB_PASSWORD="e71d",
        ORTHANC_DB_PASSWORD="0d7a",
    )
    env = entrypoint.plugin_environment(environ)

    settings = PluginSettings.from_orthanc(_orthancteam_merge(_image_config(), env))

    assert settings.chain_url == "http://chain:8545"
    assert settings.contract_address == ADDRESS
    assert settings.from_block == 7
    assert settings.web_viewer is True
    assert settings.fail_closed is True  # docker: refuse what cannot be checked
    assert settings.stored_file_token == "s3cr3t"
    # the evidence through the view, as the read-only role; no gateway volume mounted
    assert settings.index_url == "postgresql://xray_evidence:e71d@postgres:5432/xray"
    # the alerts on the plugin's own volume, not in the gateway's (read-only) data
    assert settings.alerts_path == Path("/var/lib/xray-alerts/alerts.sqlite")
    # Orthanc's files and the plugin's catalog on the orthanc-db volume, as `up` lays them out
    assert settings.storage_dir == Path("/var/lib/orthanc/db/storage")
    assert settings.catalog_path == Path("/var/lib/orthanc/db/xray-attachments.sqlite")


def test_the_example_placeholders_keep_orthanc_from_starting() -> None:
    with pytest.raises(entrypoint.StartRefused, match="ORTHANC__REGISTERED_USERS"):
        entrypoint.plugin_environment(
            _compose_environment("orthanc", GATEWAY_CONTRACT_ADDRESS=ADDRESS)
        )


def test_the_image_installs_the_plugin_where_its_configuration_points() -> None:
    config = _image_config()
    lib = config[SECTION]["SysPath"][0]
    dockerfile = (DOCKER_DIR / "Dockerfile.orthanc").read_text(encoding="utf-8")

    # the wheel puts gateway/orthanc_plugin/entry.py under the --target directory
    assert f"--target {lib} " in dockerfile
    assert config["PythonScript"] == f"{lib}/gateway/orthanc_plugin/entry.py"
    assert (ROOT / "gateway" / "orthanc_plugin" / "entry.py").is_file()
    # the ledger client finds the contract artifact beside the package
    assert f"COPY contracts/out {lib}/contracts/out" in dockerfile


# -- docker/orthanc/entrypoint.py ------------------------------------------------------------

CHAIN = {"ORTHANC__XRAY_GATEWAY__CHAIN_URL": "http://chain:8545"}


def test_a_blank_contract_is_refused_even_with_a_deployment_record_at_hand(
    tmp_path: Path,
) -> None:
    """Orthanc no longer follows chain/contract.json: whoever can write the gateway's data
    volume would point the ledger check at a contract of their own."""
    (tmp_path / "chain").mkdir()
    (tmp_path / "chain" / "contract.json").write_text(json.dumps({"address": ADDRESS}))
    environ = {
        **CHAIN,
        "ORTHANC__XRAY_GATEWAY__CONTRACT_ADDRESS": "",
        "ORTHANC__XRAY_GATEWAY__DATA_DIR": str(tmp_path),
    }

    with pytest.raises(entrypoint.StartRefused, match="GATEWAY_CONTRACT_ADDRESS is blank"):
        entrypoint.plugin_environment(environ)


def test_the_pinned_contract_and_block_are_passed_on() -> None:
    environ = {
        **CHAIN,
        "ORTHANC__XRAY_GATEWAY__CONTRACT_ADDRESS": f" {ADDRESS} ",
        "ORTHANC__XRAY_GATEWAY__FROM_BLOCK": "42",
        "PATH": "/usr/bin",
    }

    env = entrypoint.plugin_environment(environ)

    assert env["ORTHANC__XRAY_GATEWAY__CONTRACT_ADDRESS"] == ADDRESS
    assert env["ORTHANC__XRAY_GATEWAY__FROM_BLOCK"] == "42"
    assert env["PATH"] == "/usr/bin"


def test_a_contract_that_is_not_an_address_is_refused() -> None:
    with pytest.raises(entrypoint.StartRefused, match="not an address"):
        entrypoint.plugin_environment(
            {**CHAIN, "ORTHANC__XRAY_GATEWAY__CONTRACT_ADDRESS": "chain/contract.json"}
        )


def test_empty_plugin_values_are_dropped() -> None:
    environ = {
        **CHAIN,
        "ORTHANC__XRAY_GATEWAY__CONTRACT_ADDRESS": ADDRESS,
        "ORTHANC__XRAY_GATEWAY__FROM_BLOCK": "5",
        "ORTHANC__XRAY_GATEWAY__MIRROR_INTERVAL": " ",
        "ORTHANC__NAME": "",
    }

    env = entrypoint.plugin_environment(environ)

    assert env["ORTHANC__XRAY_GATEWAY__FROM_BLOCK"] == "5"
    assert "ORTHANC__XRAY_GATEWAY__MIRROR_INTERVAL" not in env
    assert env["ORTHANC__NAME"] == ""  # only the plugin's section is cleaned


def test_a_placeholder_password_does_not_start() -> None:
    users = '{"xray-gateway": "Change-Me"}'

    with pytest.raises(entrypoint.StartRefused) as refused:
        entrypoint.plugin_environment(
            {
                **CHAIN,
                "ORTHANC__XRAY_GATEWAY__CONTRACT_ADDRESS": ADDRESS,
                "ORTHANC__REGISTERED_USERS": users,
            }
        )

    assert "ORTHANC__REGISTERED_USERS" in str(refused.value)
    assert users not in str(refused.value)


@pytest.fixture
def image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The entrypoint's surroundings in a scratch dir; exec and umask recorded, not done."""
    data = tmp_path / "data"
    calls: dict[str, Any] = {}
    monkeypatch.setattr(entrypoint.os, "umask", lambda mask: calls.setdefault("umask", mask))

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        calls["exec"] = (path, argv, env)
        raise SystemExit(0)

    monkeypatch.setattr(entrypoint.os, "execve", execve)
    for key in list(os.environ):
        if key.startswith("ORTHANC__"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("ORTHANC__XRAY_GATEWAY__CHAIN_URL", "http://chain:8545")
    calls["data"] = data
    return calls


def test_main_hands_over_to_orthancteam_with_the_contract(
    image: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORTHANC__XRAY_GATEWAY__CONTRACT_ADDRESS", ADDRESS)
    monkeypatch.setenv("ORTHANC__XRAY_GATEWAY__FROM_BLOCK", "9")

    with pytest.raises(SystemExit):
        entrypoint.main(["/tmp/orthanc.json"])

    path, argv, env = image["exec"]
    assert (path, argv) == ("/docker-entrypoint.sh", ["/docker-entrypoint.sh", "/tmp/orthanc.json"])
    assert env["ORTHANC__XRAY_GATEWAY__CONTRACT_ADDRESS"] == ADDRESS
    assert env["ORTHANC__XRAY_GATEWAY__FROM_BLOCK"] == "9"
    assert image["umask"] == 0o027  # nothing Orthanc creates is group-writable


def test_main_refuses_without_a_pinned_contract_whatever_the_data_volume_says(
    image: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    (image["data"] / "chain").mkdir(parents=True)
    (image["data"] / "chain" / "contract.json").write_text(
        json.dumps({"address": ADDRESS, "block_number": 9})
    )

    with pytest.raises(SystemExit) as exited:
        entrypoint.main(["/tmp/orthanc.json"])

    assert exited.value.code == 1
    assert "exec" not in image
    assert "contract deploy" in capsys.readouterr().err


def test_the_second_nodes_key_job_copies_the_shared_keys_once_and_never_the_recorder_key(
    tmp_path: Path,
) -> None:
    """The ``gateway-2-keys`` job's script, run on two directories standing for the volumes."""
    compose = yaml.safe_load((Path(__file__).parents[2] / "docker" / "compose.yaml").read_text())
    job = compose["services"]["gateway-2-keys"]
    assert job["depends_on"] == {"gateway": {"condition": "service_healthy"}}
    gate = compose["services"]["gateway-2"]["depends_on"]["gateway-2-keys"]
    assert gate == {"condition": "service_completed_successfully"}
    source, target = tmp_path / "gateway-keys", tmp_path / "gateway-2-keys"
    (source / "kek").mkdir(parents=True)
    target.mkdir()
    for name, text in [("pseudonym.key", "p"), ("admin.key", "a"), ("recorder.key", "r"),
                       ("kek/k1", "1"), ("kek/current", "k1")]:  # fmt: skip
        (source / name).write_text(text)
        (source / name).chmod(0o600)
    (target / "recorder.key").write_text("its own")
    script = (
        job["entrypoint"][2]
        .replace("/var/lib/xray-gateway/keys-of-gateway", str(source))
        .replace("/var/lib/xray-gateway/keys", str(target))
    )
    exec(compile(script, "gateway-2-keys", "exec"), {})
    (source / "pseudonym.key").write_text("changed")
    exec(compile(script, "gateway-2-keys", "exec"), {})  # again: what is there is kept
    copied = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert copied == ["admin.key", "kek/current", "kek/k1", "pseudonym.key", "recorder.key"]
    assert (target / "pseudonym.key").read_text() == "p"
    assert (target / "recorder.key").read_text() == "its own"
    assert all((target / name).stat().st_mode & 0o077 == 0 for name in copied[:4])
