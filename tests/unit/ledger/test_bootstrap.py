"""Which contract the gateway trusts: the pinned address (pure: files and settings only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.ledger.bootstrap import Deployment, contract_address, deployment_path
from gateway.orthanc_plugin import plugin_section
from gateway.orthanc_plugin.settings import PluginSettings

PINNED = "0x" + "ab" * 20
OTHER = "0x" + "cd" * 20


def _settings(tmp_path: Path, *, address: str | None = None, pinned: str | None = None) -> Settings:
    settings = Settings(data_dir=tmp_path, contract_address=address)
    if pinned:
        Deployment(address=pinned, chain_id=1, tx_hash="", block_number=7).save(
            deployment_path(settings)
        )
    return settings


def test_the_setting_or_the_deployment_record_pins_the_address(tmp_path: Path) -> None:
    assert contract_address(_settings(tmp_path / "a", address=OTHER)) == OTHER
    assert contract_address(_settings(tmp_path / "b", pinned=PINNED)) == PINNED
    both = _settings(tmp_path / "c", address=PINNED.upper().replace("0X", "0x"), pinned=PINNED)
    assert contract_address(both).lower() == PINNED


def test_a_setting_that_differs_from_the_pinned_record_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"GATEWAY_CONTRACT_ADDRESS {OTHER} differs") as exc:
        contract_address(_settings(tmp_path, address=OTHER, pinned=PINNED))
    assert PINNED in str(exc.value)


def test_without_either_the_message_names_the_deploy_step(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="xray-gateway contract deploy"):
        contract_address(_settings(tmp_path))


def test_the_plugin_gets_the_log_range(tmp_path: Path) -> None:
    section = plugin_section(
        data_dir=tmp_path, chain_url="http://chain:8545", contract_address=PINNED,
        from_block=7, log_range=250,
    )  # fmt: skip
    settings = PluginSettings.from_orthanc({"XrayGateway": section})
    assert (settings.from_block, settings.log_range) == (7, 250)
    del section["LogRange"]  # a hand-written section: Besu's default
    assert PluginSettings.from_orthanc({"XrayGateway": section}).log_range == 5_000
