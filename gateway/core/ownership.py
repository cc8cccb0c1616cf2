"""Whose word counts: trusted recorders and the earliest-owner rule, shared by every verifier (pure).

The contract lets any account with the Recorder role write a version under any record
key it does not know yet, and a batched key is unknown to the contract until someone
shows its proof. So a verifier cannot take "the newest version" at face value. The
verify API, the independent CLI (``xray-gateway verify``) and the Orthanc plugin's
ledger mirror all gather what the chain holds about one record key and pass it to
:func:`rule`, which decides:

* a write counts only if its account was a **trusted recorder** at the block it was
  written: it held ``RECORDER_ROLE`` then (from the ``RoleGranted``/``RoleRevoked``
  history), or, when a list is configured (``GATEWAY_TRUSTED_RECORDERS``), it is on it;
* the **owner** of the key is the trusted recorder of its *earliest* anchoring (a proven
  batch membership or a direct version, ordered by block and log index);
* versions by the owner, or by the admin (who may supersede), are accepted; every other
  write is a **foreign claim**: ignored for the verdict and alerted;
* a retirement counts only if by the owner or the admin.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
Role = Literal["recorder", "admin"]

#: The contract's ``RetireReason`` enum, by value, as the Python client names it.


def same_account(a: str, b: str) -> bool:
    """Whether two addresses name one account (checksummed or not)."""
    return a.lower() == b.lower()


def parse_accounts(text: str | Iterable[str] | None) -> frozenset[str] | None:
    """``0xabc…,0xdef…`` (or a list) as a set of lowercase addresses; ``None`` when empty.

    Raises
    ------
    ValueError
        An entry is not a 20-byte hex address.
    """
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    accounts = set()
    for part in (p.strip() for p in parts):
        if not part:
            continue
        digits = part[2:] if part.lower().startswith("0x") else ""
        if len(digits) != 40 or any(c not in "0123456789abcdefABCDEF" for c in digits):
            raise ValueError(f"{part!r} is not an Ethereum address (0x and 40 hex digits)")
        accounts.add(part.lower())
    return frozenset(accounts) or None


@dataclass(frozen=True, order=True)
class Position:
    """Where on the chain something happened: block, then log index within it."""

    block_number: int
    log_index: int = 0


@dataclass(frozen=True)
class RoleChange:
    """A ``RoleGranted`` (``granted``) or ``RoleRevoked`` of ``role`` to ``account``."""

    role: Role
    account: str
    granted: bool
    at: Position


class Trust:
    """Who held the Recorder and admin roles when: answers "trusted at this position?".

    Parameters
    ----------
    changes:
        The role history, in any order.
    configured:
        The configured trusted recorders (lowercase); when given, they replace the
        Recorder role history (the admin still comes from the history).
    """

    def __init__(
        self, changes: Iterable[RoleChange] = (), *, configured: frozenset[str] | None = None
    ) -> None:
        self._changes = sorted(changes, key=lambda c: c.at)
        self.configured = configured

    def _held(self, role: Role, account: str, at: Position) -> bool:
        held = False
        for change in self._changes:
            if change.at >= at:
                break
            if change.role == role and same_account(change.account, account):
                held = change.granted
        return held

    def recorder(self, account: str, at: Position) -> bool:
        """Whether ``account`` was a trusted recorder for a write at ``at``."""
        if self.configured is not None:
            return account.lower() in self.configured
        return self._held("recorder", account, at)

    def admin(self, account: str, at: Position) -> bool:
        """Whether ``account`` held the contract's admin role for a write at ``at``."""
        return self._held("admin", account, at)


@dataclass(frozen=True)
class Anchoring(Generic[T]):
    """One write that puts a version of the key on chain: a proven batch leaf or a direct version.

    ``item`` is the caller's own description of it, handed back in the :class:`Ruling`.
    """

    account: str
    at: Position
    digest: bytes
    batched: bool
    item: T


@dataclass(frozen=True)
class Retiring:
    """An ``ImageRetired`` event: by whom, where, why."""

    account: str
    at: Position
    reason: str


@dataclass(frozen=True)
class Ruling(Generic[T]):
    """What :func:`rule` made of a key's writes.

    ``accepted`` holds the owner's (and the admin's) versions, oldest first; ``foreign``
    every other write, oldest first; ``retirement`` the first retirement that counts.
    """

    owner: str | None
    accepted: tuple[Anchoring[T], ...] = ()
    foreign: tuple[Anchoring[T], ...] = ()
    retirement: Retiring | None = None
    ignored_retirements: tuple[Retiring, ...] = field(default=())

    @property
    def newest(self) -> Anchoring[T] | None:
        """The version that counts now: the newest accepted one."""
        return self.accepted[-1] if self.accepted else None


def rule(
    anchorings: Sequence[Anchoring[T]], retirements: Sequence[Retiring], trust: Trust
) -> Ruling[T]:
    """Apply the earliest-owner rule to every write the chain holds under one record key.

    Parameters
    ----------
    anchorings:
        Proven batch memberships (at their ``BatchAnchored`` event, by the batch's
        recorder) and direct versions (at their ``ImageRecorded``/``ImageSuperseded``
        event, by its recorder), in any order.
    retirements:
        The key's ``ImageRetired`` events, in any order.
    trust:
        The role history (or configured list).
    """
    ordered = sorted(anchorings, key=lambda a: a.at)
    # As the contract settles it: within one block a batch comes before a direct write.
    first = sorted(anchorings, key=lambda a: (a.at.block_number, not a.batched, a.at.log_index))
    owner = next((a.account for a in first if trust.recorder(a.account, a.at)), None)
    if owner is None:
        return Ruling(owner=None, foreign=tuple(ordered))
    accepted: list[Anchoring[T]] = []
    foreign: list[Anchoring[T]] = []
    for anchoring in ordered:
        by_owner = same_account(anchoring.account, owner) and trust.recorder(
            anchoring.account, anchoring.at
        )
        by_admin = bool(accepted) and trust.admin(anchoring.account, anchoring.at)
        (accepted if by_owner or by_admin else foreign).append(anchoring)
    counted: Retiring | None = None
    ignored: list[Retiring] = []
    for retiring in sorted(retirements, key=lambda r: r.at):
        by_owner = same_account(retiring.account, owner) and trust.recorder(
            retiring.account, retiring.at
        )
        if counted is None and (by_owner or trust.admin(retiring.account, retiring.at)):
            counted = retiring
        else:
            ignored.append(retiring)
    return Ruling(
        owner=owner,
        accepted=tuple(accepted),
        foreign=tuple(foreign),
        retirement=counted,
        ignored_retirements=tuple(ignored),
    )


__all__ = [
    "Anchoring",
    "Position",
    "Retiring",
    "RoleChange",
    "Ruling",
    "Trust",
    "parse_accounts",
    "rule",
    "same_account",
]
