"""`xray-gateway` as a user runs it: help, `up` with its embedded chain, `contract …`."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account

from gateway.ledger.anvil import Anvil
from gateway.procs import free_port
from tests.integration.gateway_proc import EXE, Up, gateway_env, run


def _env(data_dir: Path, anvil_port: int) -> dict[str, str]:
    return gateway_env(data_dir, GATEWAY_ANVIL_PORT=str(anvil_port))


@pytest.fixture
def up_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    yield _env(tmp_path / "var", free_port())


def test_help_lists_the_subcommands() -> None:
    result = subprocess.run([EXE, "--help"], capture_output=True, text=True, check=True)
    for command in ("up", "contract"):
        assert f"    {command} " in result.stdout
    module = subprocess.run(
        [sys.executable, "-m", "gateway", "contract", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for action in ("deploy", "grant", "revoke", "info"):
        assert action in module.stdout


def test_up_deploys_once_and_a_restart_keeps_every_record(up_env: dict[str, str]) -> None:
    data_dir = Path(up_env["GATEWAY_DATA_DIR"])
    up = Up(up_env)
    try:
        address = up.value("xray contract")
        recorder = up.value("recorder")
        info = json.loads(run(up_env, "contract", "info", "--account", recorder).stdout)
        assert info["address"] == address
        assert info["code_matches_artifact"] is True
        assert info["accounts"][recorder]["roles"] == ["recorder"]

        doctor = Account.create()
        granted = run(
            up_env, "contract", "grant", doctor.address, "--role", "doctor", "--name", "Dr.Lee"
        )
        assert granted.returncode == 0, granted.stderr
    finally:
        assert up.stop() == 0

    for name in ("admin.key", "recorder.key"):
        mode = stat.S_IMODE((data_dir / "keys" / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))

    up = Up(up_env)
    try:
        assert up.value("xray contract") == address  # not redeployed
        info = json.loads(run(up_env, "contract", "info", "--account", doctor.address).stdout)
        assert info["accounts"][doctor.address] == {"name": "Dr.Lee", "roles": ["doctor"]}
        revoked = run(up_env, "contract", "revoke", doctor.address)
        assert revoked.returncode == 0, revoked.stderr
        info = json.loads(run(up_env, "contract", "info", "--account", doctor.address).stdout)
        assert info["accounts"][doctor.address]["roles"] == []
        again = run(up_env, "contract", "revoke", doctor.address)
        assert again.returncode == 1
        assert "XrayNoPermission" in again.stderr
    finally:
        assert up.stop() == 0


def test_contract_commands_explain_a_missing_chain(tmp_path: Path) -> None:
    env = _env(tmp_path / "var", free_port())
    env["GATEWAY_CONTRACT_ADDRESS"] = "0x" + "11" * 20
    result = run(env, "contract", "info")
    assert result.returncode == 1
    assert result.stderr.startswith("xray-gateway: error: no Ethereum JSON-RPC node answers")
    env.pop("GATEWAY_CONTRACT_ADDRESS")
    result = run(env, "contract", "info")
    assert "GATEWAY_CONTRACT_ADDRESS" in result.stderr


def test_up_external_refuses_without_a_chain_url(tmp_path: Path) -> None:
    env = _env(tmp_path / "var", free_port())
    result = run(env, "up", "--external")
    assert result.returncode == 1
    assert "GATEWAY_CHAIN_URL" in result.stderr


def test_up_external_never_deploys_silently(tmp_path: Path, anvil: Anvil) -> None:
    """On an external chain the contract is deployed once, on purpose, not by `up`."""
    env = _env(tmp_path / "var", free_port())
    env["GATEWAY_CHAIN_URL"] = anvil.url
    result = run(env, "up", "--external")
    assert result.returncode == 1
    assert "contract deploy" in result.stderr
