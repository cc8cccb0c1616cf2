"""DICOM TLS settings and contexts: what goes together, the key's mode, clear errors."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from gateway.config import Settings, get_settings
from gateway.errors import ConfigError
from gateway.ingest.tls import client_context, server_context
from tests.integration.certs import Authority, authority


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return authority(tmp_path_factory.mktemp("pki"), "site-ca")


def test_tls_is_off_by_default_and_listens_on_2762_when_on(tmp_path: Path) -> None:
    settings = get_settings()
    assert not settings.tls and settings.plain_dicom
    on = Settings(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")
    assert on.tls and on.tls_port == 2762


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GATEWAY_TLS_CERT": "/c.pem"}, "GATEWAY_TLS_CERT and GATEWAY_TLS_KEY go together"),
        ({"GATEWAY_TLS_KEY": "/k.pem"}, "GATEWAY_TLS_CERT and GATEWAY_TLS_KEY go together"),
        ({"GATEWAY_TLS_CA": "/ca.pem"}, "GATEWAY_TLS_CA needs GATEWAY_TLS_CERT"),
        ({"GATEWAY_PLAIN_DICOM": "false"}, "leaves no DICOM port"),
        ({"GATEWAY_TLS_CERT": "/c.pem", "GATEWAY_TLS_KEY": "/k.pem", "GATEWAY_TLS_PORT": "11112"},
         "GATEWAY_TLS_PORT and GATEWAY_DICOM_PORT are the same port"),
    ],
)  # fmt: skip
def test_settings_that_do_not_go_together_are_a_config_error(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        get_settings()


def test_tls_only_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TLS_CERT", "/c.pem")
    monkeypatch.setenv("GATEWAY_TLS_KEY", "/k.pem")
    monkeypatch.setenv("GATEWAY_PLAIN_DICOM", "false")
    monkeypatch.setenv("GATEWAY_TLS_PORT", "11112")  # the plain port is off: no clash
    settings = get_settings()
    assert settings.tls and not settings.plain_dicom


def test_the_server_context_is_tls12_at_least_and_mutual_with_a_ca(
    tmp_path: Path, ca: Authority
) -> None:
    leaf = ca.issue(tmp_path, "gateway")
    one_way = server_context(cert=leaf.cert, key=leaf.key)
    assert one_way.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert one_way.verify_mode == ssl.CERT_NONE
    mutual = server_context(cert=leaf.cert, key=leaf.key, ca=ca.cert)
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    client = client_context(cert=leaf.cert, key=leaf.key, ca=ca.cert)
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_key_others_may_read_is_refused(tmp_path: Path, ca: Authority, mode: int) -> None:
    leaf = ca.issue(tmp_path, "gateway")
    leaf.key.chmod(mode)
    with pytest.raises(ConfigError, match=rf"open to other users \(mode {mode:o}\); chmod 600"):
        server_context(cert=leaf.cert, key=leaf.key)


def test_unreadable_files_are_a_config_error_naming_the_setting(
    tmp_path: Path, ca: Authority
) -> None:
    leaf = ca.issue(tmp_path, "gateway")
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=r"cannot read the TLS key .* \(GATEWAY_TLS_KEY\)"):
        server_context(cert=leaf.cert, key=missing)
    with pytest.raises(ConfigError, match="cannot load the TLS certificate"):
        server_context(cert=missing, key=leaf.key)
    with pytest.raises(ConfigError, match="GATEWAY_TLS_CA"):
        server_context(cert=leaf.cert, key=leaf.key, ca=missing)
    other = ca.issue(tmp_path / "other", "other")
    with pytest.raises(ConfigError, match="cannot load the TLS certificate"):
        server_context(cert=leaf.cert, key=other.key)  # a key that is not the certificate's
