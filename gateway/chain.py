"""Bringing the ledger up: the embedded anvil, the gateway's accounts, the deployed contract."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from eth_account.signers.local import LocalAccount

from gateway.config import Settings
from gateway.errors import ConfigError, ContractNotDeployed
from gateway.ledger import UserType, XrayLedger, connect, deploy
from gateway.ledger.accounts import load_account, load_or_create_account
from gateway.ledger.anvil import Anvil
from gateway.redact import redact_url

RECORDER_NAME = "xray-gateway"


@dataclass(frozen=True)
class Deployment:
    """Where the contract lives, as recorded in ``<data dir>/chain/contract.json``."""

    address: str
    chain_id: int
    tx_hash: str
    block_number: int

    @classmethod
    def load(cls, path: Path) -> Deployment | None:
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls(**raw)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2) + "\n")
        tmp.replace(path)


def deployment_path(settings: Settings) -> Path:
    return settings.chain_dir / "contract.json"


def contract_address(settings: Settings) -> str:
    """The configured contract address, else the one ``up`` deployed into the data dir."""
    if settings.contract_address:
        return settings.contract_address
    deployment = Deployment.load(deployment_path(settings))
    if deployment is None:
        raise ConfigError(
            "no contract address: set GATEWAY_CONTRACT_ADDRESS or run `xray-gateway contract deploy`"
        )
    return deployment.address


def admin_account(settings: Settings, *, create: bool = False) -> LocalAccount:
    path = settings.effective_admin_key_file
    return load_or_create_account(path) if create else load_account(path)


def recorder_account(settings: Settings, *, create: bool = False) -> LocalAccount:
    path = settings.effective_recorder_key_file
    return load_or_create_account(path) if create else load_account(path)


def open_ledger(settings: Settings, account: LocalAccount | None = None) -> XrayLedger:
    """The xray contract on the configured chain, writing as ``account`` if given."""
    return XrayLedger.at(settings.effective_chain_url, contract_address(settings), account=account)


def deploy_contract(settings: Settings, *, admin: str | None = None) -> Deployment:
    """Deploy the contract with the admin key and remember where it went."""
    w3 = connect(settings.effective_chain_url)
    deployer = admin_account(settings, create=True)
    address, anchor = deploy(w3, deployer, admin=admin)
    deployment = Deployment(
        address=address,
        chain_id=w3.eth.chain_id,
        tx_hash=anchor.tx_hash,
        block_number=anchor.block_number,
    )
    deployment.save(deployment_path(settings))
    return deployment


def start_embedded_chain(settings: Settings) -> Anvil:
    """Start anvil under the data dir and fund the gateway's own accounts on it."""
    settings.chain_dir.mkdir(parents=True, exist_ok=True)
    anvil = Anvil(state_dir=settings.chain_dir, port=settings.anvil_port)
    anvil.start()
    for account in (admin_account(settings, create=True), recorder_account(settings, create=True)):
        anvil.fund(account.address)
    return anvil


def ensure_contract(settings: Settings) -> tuple[XrayLedger, Deployment]:
    """Deploy on first start, check the code on every later one, and grant the recorder.

    A deployment record whose address holds no code means the chain lost its state;
    that is reported, never papered over by a silent redeploy that would orphan records.
    """
    deployment = Deployment.load(deployment_path(settings))
    if deployment is None and not settings.contract_address:
        if not settings.embedded_chain:
            raise ConfigError(
                "no xray contract on the external chain yet: deploy it once with "
                "`xray-gateway contract deploy`, or set GATEWAY_CONTRACT_ADDRESS"
            )
        deployment = deploy_contract(settings)
    address = settings.contract_address or (deployment.address if deployment else "")
    try:
        ledger = XrayLedger.at(
            settings.effective_chain_url, address, account=admin_account(settings)
        )
    except ContractNotDeployed as exc:
        raise ContractNotDeployed(
            f"{exc}; the chain at {redact_url(settings.effective_chain_url)} has lost the contract recorded in "
            f"{deployment_path(settings)}. Restore the chain state, or move the data dir aside."
        ) from None
    recorder = recorder_account(settings, create=True)
    if not ledger.has_role("recorder", recorder.address):
        ledger.set_permission(recorder.address, RECORDER_NAME, UserType.RECORDER)
    if deployment is None:
        deployment = Deployment(
            address=ledger.address, chain_id=ledger.w3.eth.chain_id, tx_hash="", block_number=0
        )
    return ledger, deployment


__all__ = [
    "Deployment",
    "admin_account",
    "contract_address",
    "deploy_contract",
    "ensure_contract",
    "open_ledger",
    "recorder_account",
    "start_embedded_chain",
]
