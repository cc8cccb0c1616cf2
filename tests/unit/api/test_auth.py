"""API tokens: issued with a role, kept only as a hash, revocable; the admin token file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.api.auth import PERMISSIONS, Principal, Tokens, ensure_token
from gateway.errors import ConfigError


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    return Tokens(admin_token_file=tmp_path / "api-token", issued_file=tmp_path / "keys" / "t.json")


def test_the_admin_token_file_is_private_and_stable(tokens: Tokens) -> None:
    token = ensure_token(tokens.admin_token_file)
    assert ensure_token(tokens.admin_token_file) == token
    assert tokens.admin_token_file.stat().st_mode & 0o777 == 0o600
    principal = tokens.authenticate(token)
    assert principal is not None and principal.role == "admin"


def test_issued_tokens_are_kept_as_hashes_and_can_be_revoked(tokens: Tokens) -> None:
    token = tokens.issue(name="auditor-1", role="auditor")
    stored = tokens.issued_file.read_text()
    assert token not in stored and json.loads(stored)[0]["role"] == "auditor"
    assert tokens.issued_file.stat().st_mode & 0o777 == 0o600
    principal = tokens.authenticate(token)
    assert principal is not None and (principal.name, principal.role) == ("auditor-1", "auditor")
    assert tokens.authenticate(token + "x") is None
    assert tokens.revoke("auditor-1") and tokens.authenticate(token) is None
    assert not tokens.revoke("auditor-1")


def test_names_are_unique_and_roles_known(tokens: Tokens) -> None:
    tokens.issue(name="a", role="clinician")
    with pytest.raises(ConfigError):
        tokens.issue(name="a", role="auditor")
    with pytest.raises(ConfigError):
        tokens.issue(name="b", role="root")  # type: ignore[arg-type]


def test_only_admin_restores_and_auditors_see_no_phi() -> None:
    assert [role for role, perms in PERMISSIONS.items() if "restore" in perms] == ["admin"]
    assert "phi" not in PERMISSIONS["auditor"] and "audit" in PERMISSIONS["auditor"]
    assert "audit" not in PERMISSIONS["clinician"] and "phi" in PERMISSIONS["clinician"]


def test_each_issued_token_has_its_own_id_and_a_reissued_name_another(tokens: Tokens) -> None:
    first = tokens.authenticate(tokens.issue(name="dr", role="grantee"))
    assert first is not None and first.token_id.startswith("tok-")
    assert tokens.id_of("dr") == first.token_id and tokens.still_valid(first)
    assert tokens.revoke("dr")
    again = tokens.authenticate(tokens.issue(name="dr", role="grantee"))
    assert again is not None and again.token_id not in ("", first.token_id)
    # the old token's principal (a console session of it) is no longer valid: another id
    assert not tokens.still_valid(first) and tokens.still_valid(again)
    assert tokens.id_of("nobody") is None


def test_an_entry_from_before_ids_has_the_legacy_id_of_its_name(tokens: Tokens) -> None:
    token = tokens.issue(name="old", role="grantee")
    entries = json.loads(tokens.issued_file.read_text())
    del entries[0]["id"]  # as written by a gateway from before token ids
    tokens.issued_file.write_text(json.dumps(entries))
    principal = tokens.authenticate(token)
    assert principal is not None and principal.token_id == "name:old"
    assert tokens.id_of("old") == "name:old" and tokens.still_valid(principal)


def test_no_token_is_named_like_an_account_address(tokens: Tokens) -> None:
    """An account signed in with Ethereum is named by its address: a token named so would
    read that account's grants."""
    with pytest.raises(ConfigError):
        tokens.issue(name="0x" + "ab" * 20, role="grantee")
    assert tokens.issue(name="0xab", role="grantee")  # not an address: a name like any


def test_a_grant_binds_a_tokens_id_or_a_signed_in_accounts_address() -> None:
    address = "0x" + "AB" * 20
    assert Principal("dr", "grantee", "tok-1").grantee_id == "tok-1"
    assert Principal("dr", "grantee", "name:dr").grantee_id == "name:dr"
    account = Principal(address, "grantee")
    assert account.is_account and account.grantee_id == address.lower()
    # a token named like an address before that was refused is still a token, by its id
    legacy = Principal(address, "grantee", "name:" + address)
    assert not legacy.is_account and legacy.grantee_id == "name:" + address
    assert Principal("dr", "grantee").grantee_id == ""
