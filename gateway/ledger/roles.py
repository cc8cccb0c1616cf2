"""The Recorder and admin role history, read from the contract's RoleGranted/RoleRevoked events.

Role changes are rare, so the history is read once and then only the blocks mined since
(one ``eth_getLogs`` per event name and new head).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from gateway.core.ownership import Position, Role, RoleChange, Trust

if TYPE_CHECKING:
    from gateway.ledger.base import LedgerReader

ROLE_EVENTS = ("RoleGranted", "RoleRevoked")


def role_change(
    name: str, args: dict[str, Any], at: Position, ids: dict[bytes, Role]
) -> RoleChange | None:
    """A RoleGranted/RoleRevoked event's args as a :class:`RoleChange`, if of a role we follow."""
    role = ids.get(bytes(args["role"]))
    if role is None:
        return None
    return RoleChange(role=role, account=str(args["account"]), granted=name == "RoleGranted", at=at)


class RoleHistory:
    """Follows the role history of one contract; thread-safe.

    Parameters
    ----------
    ledger:
        The contract (read-only is enough).
    configured:
        ``GATEWAY_TRUSTED_RECORDERS`` parsed: when given, only these accounts are
        trusted recorders, whatever the role history says.
    """

    def __init__(self, ledger: LedgerReader, *, configured: frozenset[str] | None = None) -> None:
        self.ledger = ledger
        self.configured = configured
        self._ids: dict[bytes, Role] = {
            ledger.role_id("recorder"): "recorder",
            ledger.role_id("admin"): "admin",
        }
        self._changes: dict[Position, RoleChange] = {}
        self._next = 0
        self._trust = Trust(configured=configured)
        self._lock = threading.Lock()

    def trust(self) -> Trust:
        """Who was trusted when, up to the chain's current head."""
        with self._lock:
            head = self.ledger.head_block()
            if head >= self._next:
                for name in ROLE_EVENTS:
                    for event in self.ledger.events(name, from_block=self._next):
                        at = Position(event.block_number, event.log_index)
                        change = role_change(name, event.args, at, self._ids)
                        if change is not None:
                            self._changes[at] = change
                self._next = head + 1
                self._trust = Trust(self._changes.values(), configured=self.configured)
            return self._trust
