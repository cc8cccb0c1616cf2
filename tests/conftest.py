"""Shared fixtures: a real anvil on a free port, funded accounts, a fresh xray contract."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from gateway.ledger import UserType, XrayLedger, connect, deploy
from gateway.ledger.anvil import Anvil
from gateway.procs import free_port


@pytest.fixture(scope="session")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    """One real anvil for the session, with state in a temporary dir."""
    node = Anvil(state_dir=tmp_path_factory.mktemp("anvil"), port=free_port())
    node.start()
    yield node
    node.stop()


@dataclass(frozen=True)
class Cast:
    """One account per role the contract knows, plus one that holds none."""

    admin: LocalAccount
    hospital: LocalAccount
    doctor: LocalAccount
    recorder: LocalAccount
    auditor: LocalAccount
    stranger: LocalAccount

    def by_role(self) -> dict[str, LocalAccount]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@pytest.fixture(scope="session")
def cast(anvil: Anvil) -> Cast:
    accounts = {name: Account.create() for name in Cast.__dataclass_fields__}
    for account in accounts.values():
        anvil.fund(account.address)
    return Cast(**accounts)


@pytest.fixture
def xray(anvil: Anvil, cast: Cast) -> XrayLedger:
    """A freshly deployed contract with every role handed out, seen by the admin."""
    w3 = connect(anvil.url)
    address, _ = deploy(w3, cast.admin)
    ledger = XrayLedger(w3, address, account=cast.admin)
    ledger.set_permission(cast.hospital.address, "General Hospital", UserType.HOSPITAL)
    ledger.set_permission(cast.doctor.address, "Dr.Lee", UserType.DOCTOR)
    ledger.set_permission(cast.recorder.address, "xray-gateway", UserType.RECORDER)
    ledger.set_permission(cast.auditor.address, "Audit Office", UserType.AUDITOR)
    return ledger


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "var"
    path.mkdir()
    return path
