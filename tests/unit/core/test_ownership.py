"""The earliest-owner rule and trusted recorders (gateway/core/ownership.py), on made-up event lists."""

from __future__ import annotations

import pytest

from gateway.core.ownership import (
    Anchoring,
    Position,
    Retiring,
    RoleChange,
    Trust,
    parse_accounts,
    rule,
)
from gateway.ledger.types import retire_reason_name

GATEWAY = "0x" + "a1" * 20
ROGUE = "0x" + "b2" * 20
ADMIN = "0x" + "c3" * 20
OTHER = "0x" + "d4" * 20

HISTORY = [
    RoleChange("admin", ADMIN, granted=True, at=Position(1)),
    RoleChange("recorder", GATEWAY, granted=True, at=Position(2)),
    RoleChange("recorder", ROGUE, granted=True, at=Position(20)),
]


def write(
    account: str, block: int, digest: int, *, batched: bool = False, log: int = 0
) -> Anchoring[str]:
    return Anchoring(
        account, Position(block, log), bytes([digest]) * 32, batched, item=f"{account[:4]}@{block}"
    )


def test_the_earliest_anchoring_owns_the_key_and_a_later_rogue_version_is_foreign() -> None:
    batch = write(GATEWAY, 10, 1, batched=True)
    forged = [write(ROGUE, 21, 2), write(ROGUE, 22, 3)]  # recordImage, then supersedeImage
    ruling = rule([*forged, batch], [], Trust(HISTORY))
    assert ruling.owner == GATEWAY
    assert ruling.newest is batch
    assert ruling.foreign == tuple(forged)


def test_the_owner_supersedes_its_own_record_and_the_admin_may_too() -> None:
    first, second = write(GATEWAY, 10, 1, batched=True), write(GATEWAY, 30, 2)
    by_admin = write(ADMIN, 40, 3)
    ruling = rule([by_admin, second, first], [], Trust(HISTORY))
    assert ruling.accepted == (first, second, by_admin)
    assert ruling.newest is by_admin and ruling.foreign == ()


def test_a_squatter_who_wrote_first_owns_the_key() -> None:
    # Ownership follows the chain's order, not who the gateway is: a recorder that
    # anchored first owns the key; the gateway's later batch is the foreign claim.
    squat, batch = write(ROGUE, 25, 9), write(GATEWAY, 26, 1, batched=True)
    ruling = rule([batch, squat], [], Trust(HISTORY))
    assert (ruling.owner, ruling.newest, ruling.foreign) == (ROGUE, squat, (batch,))


def test_same_block_is_ordered_by_log_index() -> None:
    rogue, batch = write(ROGUE, 25, 9, log=4), write(GATEWAY, 25, 1, batched=True, log=3)
    assert rule([rogue, batch], [], Trust(HISTORY)).owner == GATEWAY


def test_writes_outside_the_role_window_do_not_count() -> None:
    history = [*HISTORY, RoleChange("recorder", GATEWAY, granted=False, at=Position(50))]
    before_grant = write(ROGUE, 15, 9)  # ROGUE is granted the role at block 20 only
    batch = write(GATEWAY, 16, 1, batched=True)
    after_revoke = write(GATEWAY, 60, 2)
    ruling = rule([before_grant, batch, after_revoke], [], Trust(history))
    assert ruling.owner == GATEWAY
    assert ruling.newest is batch
    assert ruling.foreign == (before_grant, after_revoke)


def test_a_grant_in_the_same_block_counts_only_after_its_log() -> None:
    history = [RoleChange("recorder", OTHER, granted=True, at=Position(5, 2))]
    assert rule([write(OTHER, 5, 1, log=1)], [], Trust(history)).owner is None
    assert rule([write(OTHER, 5, 1, log=3)], [], Trust(history)).owner == OTHER


def test_a_configured_list_replaces_the_role_history() -> None:
    trust = Trust(HISTORY, configured=parse_accounts(GATEWAY.upper().replace("0X", "0x")))
    rogue_first, batch = write(ROGUE, 21, 9), write(GATEWAY, 22, 1, batched=True)
    ruling = rule([rogue_first, batch], [], trust)  # ROGUE holds the role but is not listed
    assert (ruling.owner, ruling.newest, ruling.foreign) == (GATEWAY, batch, (rogue_first,))
    assert rule([write(OTHER, 5, 1)], [], Trust(configured=frozenset({OTHER}))).owner == OTHER


def test_an_admin_write_does_not_found_a_record() -> None:
    ruling = rule([write(ADMIN, 5, 1)], [], Trust(HISTORY))
    assert ruling.owner is None and ruling.newest is None and len(ruling.foreign) == 1


def test_only_the_owners_or_the_admins_retirement_counts() -> None:
    batch = write(GATEWAY, 10, 1, batched=True)
    by_rogue = Retiring(ROGUE, Position(30), "withdrawn")
    ruling = rule([batch], [by_rogue], Trust(HISTORY))
    assert ruling.retirement is None and ruling.ignored_retirements == (by_rogue,)
    by_admin = Retiring(ADMIN, Position(31), "wrong_patient")
    assert rule([batch], [by_rogue, by_admin], Trust(HISTORY)).retirement == by_admin
    by_owner = Retiring(GATEWAY, Position(32), "duplicate")
    assert rule([batch], [by_owner, by_rogue], Trust(HISTORY)).retirement == by_owner


def test_addresses_and_reasons_parse() -> None:
    assert parse_accounts(f" {GATEWAY}, ,{ROGUE.upper().replace('0X', '0x')}") == frozenset(
        {GATEWAY, ROGUE}
    )
    assert parse_accounts("") is None and parse_accounts(None) is None
    with pytest.raises(ValueError, match="not an Ethereum address"):
        parse_accounts("0x1234")
    assert retire_reason_name(2) == "wrong_patient" and "unknown" in retire_reason_name(9)


def test_within_one_block_a_batch_owns_the_key_before_a_direct_write() -> None:
    # The contract keeps a direct owner only if it wrote in an earlier block than the batch
    # (supersedeBatchedImage displaces it otherwise); the verifiers agree, log order aside.
    squat, batch = write(ROGUE, 25, 9, log=0), write(GATEWAY, 25, 1, batched=True, log=1)
    ruling = rule([squat, batch], [], Trust(HISTORY))
    assert (ruling.owner, ruling.newest, ruling.foreign) == (GATEWAY, batch, (squat,))
