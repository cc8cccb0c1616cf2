"""The notify settings: webhook URLs need a secret file, syslog URLs have a scheme, and a
refused value (a URL may hold a token or a password) never reaches the message."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import get_settings
from gateway.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))


def test_webhook_urls_are_a_list_and_need_a_secret_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_WEBHOOK_URLS", "https://a.example/hook, http://b.example:8080/x")
    with pytest.raises(ConfigError, match="GATEWAY_WEBHOOK_SECRET_FILE"):
        get_settings()
    monkeypatch.setenv("GATEWAY_WEBHOOK_SECRET_FILE", "/keys/webhook-secret")
    settings = get_settings()
    assert settings.webhook_urls == ("https://a.example/hook", "http://b.example:8080/x")
    monkeypatch.setenv("GATEWAY_WEBHOOK_URLS", "")
    assert get_settings().webhook_urls == ()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_WEBHOOK_URLS", "ftp://hooks.example/services/T0KEN-s3cr3t"),
        ("GATEWAY_SYSLOG_URL", "http://T0KEN-s3cr3t@syslog.example:514"),
        ("GATEWAY_INDEX_URL", "mysql://u:T0KEN-s3cr3t@db.example/x"),
    ],
)
def test_a_refused_value_is_never_shown(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        get_settings()
    assert (
        "T0KEN-s3cr3t" not in str(refused.value)
        and name.removeprefix("GATEWAY_").lower() in str(refused.value).lower()
    )


def test_syslog_urls_and_their_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("udp://127.0.0.1:514", "tcp://logs.example:601", "tls://logs.example:6514"):
        monkeypatch.setenv("GATEWAY_SYSLOG_URL", url)
        assert get_settings().syslog_url == url
    monkeypatch.setenv("GATEWAY_SYSLOG_URL", "udp://logs.example:514")
    monkeypatch.setenv("GATEWAY_SYSLOG_CA_FILE", "/keys/ca.pem")
    with pytest.raises(ConfigError, match="tls://"):
        get_settings()
    monkeypatch.setenv("GATEWAY_SYSLOG_URL", "")
    monkeypatch.setenv("GATEWAY_SYSLOG_CA_FILE", "")
    settings = get_settings()
    assert settings.syslog_url is None and settings.syslog_ca_file is None
