"""Bearer tokens with roles: who may verify, audit, restore, and see patient data.

=============  =====================================================================
role           may
=============  =====================================================================
``admin``      everything: verify, audit, restore, ledger views, attribute values, erase
``auditor``    verify, audit, ledger views, alerts; attribute values are redacted
``clinician``  verify and alerts, with attribute values (a radiologist's workstation)
``grantee``    only the studies a standing grant gives it (``xray-gateway grant``): their
               verdicts, the study listing, the console's viewer and the DICOM zip;
               403 ``not-granted``/``grant-expired``/``grant-revoked`` for anything else
=============  =====================================================================

Only the admin manages grants (``grant``). A grantee may also be an account address that
signed in with Ethereum (``/v1/auth/siwe``, :mod:`gateway.trust.signin`): its principal is
named by the address and has no token id, so its grants are matched by the address's key
(:attr:`Principal.grantee_id`); no token may be named like an address.

The admin token lives in ``<data>/api-token`` (0600, created by ``up``). Other tokens
are issued with ``xray-gateway token create``; only their SHA-256 is kept, in
``<data>/keys/api-tokens.json`` (0600), so the file never holds a usable token.

Each issued token also gets a random ``id`` at issue, kept beside its hash: a grant binds
to that id, not to the name, so a name revoked and issued again is a new holder that
inherits none of the old token's grants (nor its console sessions). Compatibility: an
entry written before ids existed has none; its id is ``name:<name>`` (:func:`token_id`),
which is what grant rows of that time are matched by (``gateway/index/grants.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.core.access import LEGACY_ID_PREFIX, is_account
from gateway.errors import ConfigError
from gateway.keyfiles import read_secret, replace_secret, write_secret

Role = Literal["admin", "auditor", "clinician", "grantee"]
ROLES: tuple[Role, ...] = ("admin", "auditor", "clinician", "grantee")
#: ``granted``: reads of the studies a grant covers, checked per study (api/grants.py).
Permission = Literal[
    "verify", "audit", "restore", "records", "alerts", "phi", "grant", "granted", "erase"
]

PERMISSIONS: dict[Role, frozenset[Permission]] = {
    "admin": frozenset(
        {"verify", "audit", "restore", "records", "alerts", "phi", "grant", "erase"}
    ),
    "auditor": frozenset({"verify", "audit", "records", "alerts"}),
    "clinician": frozenset({"verify", "alerts", "phi"}),
    "grantee": frozenset({"granted"}),
}


#: The admin token's id (it has no entry in the issued file).
ADMIN_ID = "admin"


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: a token's holder by name, role and the token's id; or an
    account signed in with Ethereum, named by its address, with no token id."""

    name: str
    role: Role
    token_id: str = ""

    def may(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.role]

    @property
    def is_account(self) -> bool:
        """Whether this is an account signed in with Ethereum (no token; named by address)."""
        return not self.token_id and is_account(self.name)

    @property
    def grantee_id(self) -> str:
        """What a grant to this principal binds (its grantee key is derived from it,
        ``gateway/core/access.py``): the token's id, or the account's address; ``""``
        for a principal that is neither (it matches no grant)."""
        if self.token_id:
            return self.token_id
        return self.name.lower() if self.is_account else ""


#: The holder of the admin token.
ADMIN = Principal("admin", "admin", ADMIN_ID)


def ensure_token(path: Path) -> str:
    """The admin API token in ``path`` (0600), created on first start."""
    if not path.exists():
        write_secret(path, (secrets.token_urlsafe(32) + "\n").encode("ascii"))
    return read_secret(path).decode("ascii").strip()


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_id(entry: dict[str, str]) -> str:
    """An issued entry's id; ``name:<name>`` for one issued before ids (module docstring)."""
    return entry.get("id") or LEGACY_ID_PREFIX + entry["name"]


def _new_id() -> str:
    return "tok-" + secrets.token_hex(16)


class Tokens:
    """The admin token plus the issued ones.

    Parameters
    ----------
    admin_token_file:
        ``<data>/api-token``.
    issued_file:
        ``<data>/keys/api-tokens.json``: name, role and SHA-256 of each issued token.
    """

    def __init__(self, *, admin_token_file: Path, issued_file: Path) -> None:
        self.admin_token_file = admin_token_file
        self.issued_file = issued_file

    def _issued(self) -> list[dict[str, str]]:
        if not self.issued_file.exists():
            return []
        entries = json.loads(read_secret(self.issued_file))
        if not isinstance(entries, list):
            raise ConfigError(f"{self.issued_file} is not a list of tokens")
        return [dict(entry) for entry in entries]

    def _save(self, entries: list[dict[str, str]]) -> None:
        data = (json.dumps(entries, indent=2) + "\n").encode("utf-8")
        if self.issued_file.exists():
            replace_secret(self.issued_file, data)
        else:
            write_secret(self.issued_file, data)

    def issue(self, *, name: str, role: Role) -> str:
        """A new token for ``name`` with ``role``; shown once, only its hash is kept."""
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        if not name or not name.isprintable():
            raise ConfigError("a token needs a printable name")
        if is_account(name):
            raise ConfigError("a token may not be named like an account address")
        entries = self._issued()
        if any(entry["name"] == name for entry in entries):
            raise ConfigError(f"a token named {name!r} exists; revoke it first")
        token = secrets.token_urlsafe(32)
        entries.append({"name": name, "role": role, "id": _new_id(), "sha256": _hash(token)})
        self._save(entries)
        return token

    def revoke(self, name: str) -> bool:
        """Forget the token named ``name``; False when there is none."""
        entries = self._issued()
        kept = [entry for entry in entries if entry["name"] != name]
        if len(kept) == len(entries):
            return False
        self._save(kept)
        return True

    def ids(self) -> list[tuple[str, str]]:
        """``(name, id)`` of every issued token (what the grant sync names token keys by)."""
        return [(entry["name"], token_id(entry)) for entry in self._issued()]

    def list(self) -> list[tuple[str, str]]:
        """``(name, role)`` of every issued token (the admin token is not listed)."""
        return [(entry["name"], entry["role"]) for entry in self._issued()]

    def id_of(self, name: str) -> str | None:
        """The id of the token issued to ``name`` now (None: no such token)."""
        for entry in self._issued():
            if entry["name"] == name:
                return token_id(entry)
        return None

    def still_valid(self, principal: Principal) -> bool:
        """Whether ``principal``'s token still exists with its role (not revoked or re-issued:
        a token issued again under the same name has another id)."""
        if principal == ADMIN:
            return self.admin_token_file.exists()
        return any(
            (entry["name"], entry["role"], token_id(entry))
            == (principal.name, principal.role, principal.token_id)
            for entry in self._issued()
        )

    def authenticate(self, token: str) -> Principal | None:
        """The principal ``token`` belongs to, or ``None``; comparisons are constant-time."""
        found: Principal | None = None
        if self.admin_token_file.exists():
            admin = read_secret(self.admin_token_file).decode("ascii").strip()
            if hmac.compare_digest(admin.encode(), token.encode()):
                found = ADMIN
        digest = _hash(token)
        for entry in self._issued():
            if hmac.compare_digest(entry["sha256"], digest) and entry["role"] in ROLES:
                found = found or Principal(entry["name"], entry["role"], token_id(entry))
        return found
