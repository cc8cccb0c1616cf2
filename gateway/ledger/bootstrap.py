"""Bringing the ledger up: the embedded anvil, the gateway's accounts, the pinned contract.

The admin key is read by ``xray-gateway contract …`` and the one-time deploy step only;
a running gateway writes as the recorder, whose role the admin granted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from eth_account.signers.local import LocalAccount
from web3 import Web3

from gateway.config import Settings
from gateway.errors import ConfigError, ContractCodeMismatch, ContractNotDeployed
from gateway.ledger import UserType, XrayLedger, connect, deploy
from gateway.ledger.accounts import load_account, load_or_create_account
from gateway.ledger.anvil import Anvil
from gateway.ledger.client import ARTIFACT
from gateway.redact import redact_url

RECORDER_NAME = "xray-gateway"

log = logging.getLogger(__name__)


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
    """The pinned contract address: GATEWAY_CONTRACT_ADDRESS, else the deployment record.

    Raises
    ------
    ConfigError
        When neither says, or when both do and disagree: the data dir was deployed
        against another contract than the one configured, and following either silently
        would trust records nobody meant to.
    """
    deployment = Deployment.load(deployment_path(settings))
    configured = settings.contract_address
    if configured and deployment is not None and not _same(configured, deployment.address):
        raise ConfigError(
            f"GATEWAY_CONTRACT_ADDRESS {configured} differs from the contract pinned in "
            f"{deployment_path(settings)} ({deployment.address}): unset one of them, or move "
            "the deployment record aside if the gateway is meant to use another contract"
        )
    if configured:
        return configured
    if deployment is None:
        raise ConfigError(
            "no contract address: set GATEWAY_CONTRACT_ADDRESS or run `xray-gateway contract deploy`"
        )
    return deployment.address


def admin_account(settings: Settings, *, create: bool = False) -> LocalAccount:
    """The contract admin's account: for ``xray-gateway contract …`` and the deploy step only."""
    path = settings.effective_admin_key_file
    return load_or_create_account(path) if create else load_account(path)


def recorder_account(settings: Settings, *, create: bool = False) -> LocalAccount:
    path = settings.effective_recorder_key_file
    return load_or_create_account(path) if create else load_account(path)


def open_ledger(settings: Settings, account: LocalAccount | None = None) -> XrayLedger:
    """The xray contract on the configured chain, writing as ``account`` if given."""
    address = contract_address(settings)
    return XrayLedger.at(
        settings.effective_chain_url,
        address,
        account=account,
        from_block=_from_block(settings, address),
        log_range=settings.chain_log_range,
    )


def deploy_contract(settings: Settings, *, admin: str | None = None) -> Deployment:
    """The deploy step: deploy with the admin key, pin the address, grant the recorder.

    The recorder gets its role only when the deployer is the admin (``admin`` unset);
    otherwise the admin grants it with ``xray-gateway contract grant``.

    Raises
    ------
    ConfigError
        When the data dir already pins a contract: a second deployment would orphan
        every record of the first.
    """
    path = deployment_path(settings)
    pinned = Deployment.load(path)
    if pinned is not None:
        raise ConfigError(
            f"{path} already pins the xray contract at {pinned.address}; move it aside to "
            "deploy a new contract"
        )
    w3 = connect(settings.effective_chain_url)
    deployer = admin_account(settings, create=True)
    address, anchor = deploy(w3, deployer, admin=admin)
    deployment = Deployment(
        address=address,
        chain_id=w3.eth.chain_id,
        tx_hash=anchor.tx_hash,
        block_number=anchor.block_number,
    )
    deployment.save(path)
    if admin is None or _same(admin, deployer.address):
        recorder = recorder_account(settings, create=True)
        ledger = XrayLedger(w3, address, account=deployer, from_block=anchor.block_number)
        ledger.set_permission(recorder.address, RECORDER_NAME, UserType.RECORDER)
    return deployment


def start_embedded_chain(settings: Settings) -> Anvil:
    """Start anvil under the data dir and fund the gateway's own accounts on it.

    The admin is funded (and its key read or made) only before the first deployment:
    later starts never touch ``admin.key``.
    """
    settings.chain_dir.mkdir(parents=True, exist_ok=True)
    anvil = Anvil(state_dir=settings.chain_dir, port=settings.anvil_port)
    anvil.start()
    accounts = [recorder_account(settings, create=True)]
    if Deployment.load(deployment_path(settings)) is None and not settings.contract_address:
        accounts.append(admin_account(settings, create=True))
    for account in accounts:
        anvil.fund(account.address)
    return anvil


def ensure_contract(settings: Settings) -> tuple[XrayLedger, Deployment]:
    """The pinned, checked contract, writing as the recorder; deployed once on an embedded chain.

    Only the first start on an embedded chain runs the deploy step (and reads the admin
    key). Every start checks that the pinned address holds the committed artifact's code
    and that the recorder holds the Recorder role; the gateway never grants itself
    anything. A deployment record whose address holds no code means the chain lost its
    state; that is reported, never papered over by a silent redeploy that would orphan
    records.

    Raises
    ------
    ConfigError
        No pinned contract on an external chain, pins that disagree, or a recorder without
        its role (the message names the ``xray-gateway contract …`` command that fixes it).
    ContractNotDeployed, ContractCodeMismatch
        No code at the address, or code that is not ``contracts/out/Xray.json``'s.
    """
    if Deployment.load(deployment_path(settings)) is None and not settings.contract_address:
        if not settings.embedded_chain:
            raise ConfigError(
                "no xray contract on the external chain yet: deploy it once with "
                "`xray-gateway contract deploy`, or set GATEWAY_CONTRACT_ADDRESS"
            )
        deploy_contract(settings)
    address = contract_address(settings)
    w3 = connect(settings.effective_chain_url)
    deployment = _pin(settings, w3, address)
    recorder = recorder_account(settings, create=True)
    try:
        ledger = XrayLedger(
            w3,
            address,
            account=recorder,
            from_block=deployment.block_number,
            log_range=settings.chain_log_range,
        )
    except ContractNotDeployed as exc:
        raise ContractNotDeployed(
            f"{exc}; the chain at {redact_url(settings.effective_chain_url)} has lost the contract recorded in "
            f"{deployment_path(settings)}. Restore the chain state, or move the data dir aside."
        ) from None
    if not ledger.code_matches_artifact():
        raise ContractCodeMismatch(
            f"the code at {ledger.address} is not the xray contract of {ARTIFACT.name} "
            "(contracts/out): refusing to anchor into a contract nobody reviewed"
        )
    if not ledger.has_role("recorder", recorder.address):
        raise ConfigError(
            f"the recorder {recorder.address} lacks the Recorder role on {ledger.address}: "
            f"grant it once with `xray-gateway contract grant {recorder.address} "
            f"--role recorder --name {RECORDER_NAME}`"
        )
    return ledger, deployment


def deployment_block(w3: Web3, address: str) -> int:
    """The first block at which ``address`` holds code (a binary search on ``eth_getCode``).

    A node that keeps no old state cannot say: then 0, and log reads start at genesis.
    """
    address = Web3.to_checksum_address(address)
    try:
        high = int(w3.eth.block_number)
        if not w3.eth.get_code(address, high):
            return 0
        low = 0
        while low < high:
            middle = (low + high) // 2
            if w3.eth.get_code(address, middle):
                high = middle
            else:
                low = middle + 1
    except Exception as exc:  # a pruned node: "missing trie node", "state not available", ...
        log.warning("cannot find the contract's deployment block (%s); reading logs from 0", exc)
        return 0
    return low


def _pin(settings: Settings, w3: Web3, address: str) -> Deployment:
    """The deployment record of ``address``; written once when only the setting named it."""
    path = deployment_path(settings)
    deployment = Deployment.load(path)
    if deployment is None:
        deployment = Deployment(
            address=Web3.to_checksum_address(address),
            chain_id=int(w3.eth.chain_id),
            tx_hash="",
            block_number=deployment_block(w3, address),
        )
        deployment.save(path)
    elif deployment.chain_id != int(w3.eth.chain_id):
        raise ConfigError(
            f"{path} pins a contract on chain {deployment.chain_id}, but the node at "
            f"{redact_url(settings.effective_chain_url)} is chain {w3.eth.chain_id}"
        )
    return deployment


def _from_block(settings: Settings, address: str) -> int:
    """Where log reads of ``address`` may start: its recorded deployment block, else 0."""
    deployment = Deployment.load(deployment_path(settings))
    if deployment is not None and _same(deployment.address, address):
        return deployment.block_number
    return 0


def _same(a: str, b: str) -> bool:
    return a.lower() == b.lower()


__all__ = [
    "Deployment",
    "admin_account",
    "contract_address",
    "deploy_contract",
    "deployment_block",
    "ensure_contract",
    "open_ledger",
    "recorder_account",
    "start_embedded_chain",
]
