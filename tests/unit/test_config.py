"""Settings: embedded defaults, no default secrets, placeholders refused."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gateway.config import Settings, get_settings
from gateway.errors import ConfigError
from gateway.keyfiles import read_secret, write_secret
from gateway.ledger.accounts import load_or_create_account


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_embedded_stack() -> None:
    settings = get_settings()
    assert settings.ae_title == "XRAYGW"
    assert settings.dicom_port == 11112
    assert settings.api_port == 8000
    assert settings.embedded_chain
    assert settings.effective_chain_url == "http://127.0.0.1:8545"
    assert settings.s3_access_key is None and settings.s3_secret_key is None


def test_env_prefix_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_ALLOWED_AETS", "CT1, MR_2 ,")
    monkeypatch.setenv("GATEWAY_CHAIN_URL", "http://chain:8545")
    settings = get_settings()
    assert settings.allowed_aets == {"CT1": (), "MR_2": ()}  # the plain list: from anywhere
    assert not settings.embedded_chain


def test_trusted_recorders_are_a_list_of_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_settings().trusted_recorders is None  # the Recorder role history decides
    one, two = "0x" + "Ab" * 20, "0x" + "cd" * 20
    monkeypatch.setenv("GATEWAY_TRUSTED_RECORDERS", f"{one}, {two},")
    assert get_settings().trusted_recorders == frozenset({one.lower(), two})
    monkeypatch.setenv("GATEWAY_TRUSTED_RECORDERS", "0xnot-an-address")
    with pytest.raises(ConfigError, match="not an Ethereum address"):
        get_settings()


@pytest.mark.parametrize("value", ["change-me", "minioadmin", "", "  Secret "])
def test_placeholder_secrets_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("GATEWAY_S3_SECRET_KEY", value)
    monkeypatch.setenv("GATEWAY_S3_ACCESS_KEY", "gateway")
    with pytest.raises(ConfigError, match="placeholder"):
        get_settings()


def test_s3_store_needs_both_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_STORE_URL", "s3://127.0.0.1:9000/xray")
    with pytest.raises(ConfigError, match="S3_ACCESS_KEY"):
        get_settings()


def test_bad_ae_title_is_refused() -> None:
    with pytest.raises(ValueError):
        Settings(ae_title="A_TITLE_THAT_IS_TOO_LONG")


def test_key_files_are_0600_and_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "recorder.key"
    account = load_or_create_account(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_account(path).address == account.address
    with pytest.raises(FileExistsError):
        write_secret(path, b"other")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        read_secret(path)


def test_listener_limits_have_safe_defaults_and_a_host_cannot_take_every_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = get_settings()
    assert settings.max_pdu == 1 << 20
    assert settings.max_associations_per_host < settings.max_associations
    monkeypatch.setenv("GATEWAY_MAX_ASSOCIATIONS", "8")
    monkeypatch.setenv("GATEWAY_MAX_ASSOCIATIONS_PER_HOST", "9")
    with pytest.raises(ConfigError, match="PER_HOST"):
        get_settings()
    monkeypatch.setenv("GATEWAY_MAX_PDU", "0")  # 0 meant "unlimited" to pynetdicom
    monkeypatch.setenv("GATEWAY_MAX_ASSOCIATIONS_PER_HOST", "4")
    with pytest.raises(ConfigError, match="max_pdu"):
        get_settings()


def test_a_relative_data_dir_is_taken_from_where_the_gateway_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `make up` runs with the default ./var; Orthanc, started in var/orthanc, and the
    # plugin, reading paths from Orthanc's configuration, must get them absolute.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GATEWAY_DATA_DIR", raising=False)
    settings = Settings()
    assert settings.data_dir == tmp_path / "var"
    assert Settings(plugin_alerts_dir=Path("alerts")).plugin_alerts_dir == tmp_path / "alerts"


def test_postgresql_urls_for_orthanc_and_the_plugin_are_secret_and_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql://orthanc:hunter2-pw@db:5432/orthanc"
    monkeypatch.setenv("GATEWAY_ORTHANC_INDEX_URL", url)
    monkeypatch.setenv("GATEWAY_PLUGIN_INDEX_URL", url.replace("orthanc", "xray_evidence"))
    settings = Settings()
    assert settings.orthanc_index_url is not None
    assert settings.orthanc_index_url.get_secret_value() == url
    assert "hunter2-pw" not in repr(settings) and "hunter2-pw" not in str(settings)

    monkeypatch.setenv("GATEWAY_PLUGIN_INDEX_URL", "sqlite:///var/index.sqlite")
    with pytest.raises(ValueError, match="GATEWAY_PLUGIN_INDEX_URL must be a postgresql://"):
        Settings()


def test_the_index_url_selects_postgres_and_is_kept_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    assert Settings().index_location == tmp_path / "index.sqlite"  # unset: SQLite
    url = "postgresql://xray:s3cret-pw@db.example:5432/xray"
    monkeypatch.setenv("GATEWAY_INDEX_URL", url)
    settings = Settings()
    assert settings.index_location == url
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in str(settings)
    monkeypatch.setenv("GATEWAY_INDEX_URL", "mysql://xray:pw@db/xray")
    with pytest.raises(ValueError, match="postgresql://"):
        Settings()


# --- retention (erasure part) ---------------------------------------------------------------


def test_retention_is_a_period_per_modality_in_days() -> None:
    from gateway.config import parse_retention

    assert parse_retention("CT=10y, mr=6m ,CR=30d") == {
        "CT": 3652.5, "MR": 6 * 30.44, "CR": 30.0,
    }  # fmt: skip
    assert parse_retention("") == {}
    for bad in ("CT=10", "CT=0y", "CT=10y,CT=5y", "CT:10y", "C T=1y=2"):
        with pytest.raises(ValueError):
            parse_retention(bad)


def test_the_retention_window_is_minutes_after_midnight_utc() -> None:
    from gateway.config import parse_window

    assert parse_window("01:30-05:00") == (90, 300)
    assert parse_window("23:00-04:00") == (1380, 240)  # wraps midnight
    for bad in ("1:30-5:00", "02:00-02:00", "25:00-01:00", "night"):
        with pytest.raises(ValueError):
            parse_window(bad)
