"""Ethereum accounts of the gateway, kept as 0600 key files."""

from __future__ import annotations

import secrets
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from gateway.errors import ConfigError
from gateway.keyfiles import read_secret, write_secret


def load_account(path: Path) -> LocalAccount:
    """Load the account whose hex private key is in ``path``."""
    text = read_secret(path).decode("ascii", "replace").strip()
    try:
        account: LocalAccount = Account.from_key(text)
        return account
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} does not hold a private key") from exc


def load_or_create_account(path: Path) -> LocalAccount:
    """Load the account in ``path``, creating a fresh random key (0600) on first use."""
    if not path.exists():
        write_secret(path, ("0x" + secrets.token_hex(32) + "\n").encode("ascii"))
    return load_account(path)
