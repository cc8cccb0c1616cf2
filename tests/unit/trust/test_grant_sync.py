"""Grants made on chain, imported from the contract's events (index on SQLite): the cursor,
idempotence across passes, restarts and nodes, the names shown, reorgs, and grants on a
study the index does not know yet. The chain is a stand-in holding blocks of events."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.access import grantee_key, study_key, who_key
from gateway.errors import AccessDenied
from gateway.index import grants as rows
from gateway.index.db import Index
from gateway.index.grants import ChainCursor, GrantRow
from gateway.ledger.types import LedgerEvent
from gateway.trust.grant_sync import CURSOR, GrantSync
from gateway.trust.grants import Grants
from tests.unit.trust.test_grants import DR, KEY, NOW, PATIENT, populate

DOCTOR = "0x" + "d0" * 20
OUTSIDER = "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"  # checksummed (EIP-55)


class Chain:
    """Blocks of grant events from block 1; a reorg replaces the newest blocks."""

    from_block = 1

    def __init__(self) -> None:
        self.blocks: list[list[LedgerEvent]] = []
        self.hashes: list[str] = []
        self.forks = 0
        self.next_id = 1

    def mine(self, *events: tuple[str, dict[str, object]]) -> int:
        number = len(self.blocks) + 1
        tx = f"0x{self.forks:02x}{number:062x}"
        self.blocks.append(
            [LedgerEvent(name, args, tx, number, i) for i, (name, args) in enumerate(events)]
        )
        self.hashes.append(f"0xhash-{self.forks}-{number}")
        return number

    def grant(self, grantee: bytes, *, study: bytes | None = None, patient: bytes = PATIENT,
              expires: float = NOW + 3600) -> int:  # fmt: skip
        grant_id, self.next_id = self.next_id, self.next_id + 1
        self.mine(("AccessGranted", {
            "grantId": grant_id, "grantee": grantee, "patientKey": patient,
            "studyKey": study or bytes(32), "expiresAt": int(expires), "granter": DOCTOR,
        }))  # fmt: skip
        return grant_id

    def revoke(self, grant_id: int) -> int:
        return self.mine(("AccessRevoked", {"grantId": grant_id, "by": DOCTOR}))

    def reorg(self, depth: int) -> None:
        """Drop the newest ``depth`` blocks; blocks mined from now on have new hashes."""
        self.forks += 1
        del self.blocks[-depth:], self.hashes[-depth:]

    def events(
        self, name: str, *, from_block: int = 0, to_block: int | None = None
    ) -> list[LedgerEvent]:
        last = self.head_block() if to_block is None else to_block
        return [e for block in self.blocks for e in block
                if e.name == name and from_block <= e.block_number <= last]  # fmt: skip

    def head_block(self) -> int:
        return len(self.blocks)

    def block_hash(self, block_number: int) -> str:
        return self.hashes[block_number - 1]

    def block_time(self, block_number: int) -> int:
        return int(NOW) - 100 + block_number


@pytest.fixture
def index(tmp_path: Path) -> Index:
    return populate(Index(tmp_path / "index.sqlite"))


def _sync(chain: Chain, index: Index, **kwargs: object) -> GrantSync:
    tokens = [("dr", DR), ("old", "name:old")]  # "old": issued before tokens had ids
    return GrantSync(chain=chain, index=index, pseudonym_key=KEY, token_ids=lambda: tokens,
                     **kwargs)  # type: ignore[arg-type]  # fmt: skip


def _grants(index: Index) -> Grants:
    return Grants(index=index, ledger=None, pseudonym_key=KEY, clock=lambda: NOW)


def _account(address: str) -> bytes:
    return grantee_key(KEY, address)


def _reason(index: Index, grantee: str, study: str) -> str:
    with pytest.raises(AccessDenied) as denied:
        _grants(index).check(grantee, study)
    return denied.value.reason


def test_a_grant_on_chain_for_an_address_is_imported_and_enforced(index: Index) -> None:
    chain = Chain()
    grant_id = chain.grant(_account(OUTSIDER), study=study_key(KEY, "1.2.1"))
    done = _sync(chain, index).sync()
    assert done is not None and (done.first, done.last, done.granted, done.moved) == (1, 1, 1, True)
    row = rows.get(index, grant_id)
    assert row is not None
    assert (row.grantee, row.grantee_kind, row.granted_by) == (OUTSIDER, "account", DOCTOR)
    assert row.grantee_id == OUTSIDER.lower()
    assert (row.study_instance_uid, row.block_number, row.granted_at) == ("1.2.1", 1, NOW - 99)
    assert _grants(index).check(OUTSIDER, "1.2.1").id == grant_id
    assert _grants(index).studies(OUTSIDER) == ["1.2.1"]
    assert _reason(index, OUTSIDER, "1.2.2") == "not-granted"  # the patient's other study
    assert _reason(index, DR, "1.2.1") == "not-granted"  # another grantee


def test_a_token_key_is_shown_by_the_token_name_and_an_unknown_one_by_its_key(
    index: Index,
) -> None:
    """A token key is derived from the token's id (grants2): the grant reaches the holder
    of that token, not whoever holds the name now."""
    chain = Chain()
    known = chain.grant(grantee_key(KEY, DR))  # every study of the patient
    legacy = chain.grant(who_key(KEY, "token", "old"), study=study_key(KEY, "1.2.1"))
    unknown = chain.grant(grantee_key(KEY, "tok-not-ours"))
    _sync(chain, index).sync()
    shown = [(g.id, g.grantee, g.grantee_id) for g in rows.listed(index)]
    assert shown == [
        (known, "dr", DR), (legacy, "old", "name:old"),
        (unknown, "key:" + grantee_key(KEY, "tok-not-ours").hex(), ""),
    ]  # fmt: skip
    assert _grants(index).studies(DR) == ["1.2.1", "1.2.2"]
    assert _grants(index).studies("name:dr") == []  # the name's legacy key: another grantee
    assert _grants(index).check("name:old", "1.2.1").id == legacy
    assert _grants(index).check("tok-not-ours", "1.2.2").id == unknown


def test_importing_again_changes_nothing_after_a_restart_or_on_another_node(index: Index) -> None:
    chain = Chain()
    first = chain.grant(_account(OUTSIDER), study=study_key(KEY, "1.2.1"))
    assert _sync(chain, index).sync().granted == 1  # type: ignore[union-attr]
    assert _sync(chain, index).sync() is None  # a restart: the cursor is in the index
    assert rows.cursor(index, CURSOR) == ChainCursor(2, chain.block_hash(1))
    second = chain.grant(_account(OUTSIDER), study=study_key(KEY, "1.2.2"))
    chain.revoke(first)
    node_a, node_b = _sync(chain, index), _sync(chain, index)
    a = node_a.sync()
    assert a is not None and (a.first, a.last, a.granted, a.revoked) == (2, 3, 1, 1)
    # another node that read the cursor before: the same events, imported again, are no-ops
    with index.transaction() as db:
        db.execute("UPDATE chain_cursors SET next_block = 2, last_hash = ?", (chain.block_hash(1),))
    b = node_b.sync()
    assert b is not None and (b.granted, b.revoked) == (0, 0)
    assert [g.id for g in rows.listed(index)] == [first, second]
    assert _reason(index, OUTSIDER, "1.2.1") == "grant-revoked"
    assert _grants(index).check(OUTSIDER, "1.2.2").id == second


def test_the_cursor_moves_only_from_where_its_pass_read_it(index: Index) -> None:
    start = ChainCursor(5, "0xa")
    assert rows.move_cursor(index, "x", read=None, to=start)
    assert not rows.move_cursor(index, "x", read=None, to=ChainCursor(9, "0xb"))  # moved meanwhile
    assert rows.move_cursor(index, "x", read=start, to=ChainCursor(9, "0xb"))
    assert rows.cursor(index, "x") == ChainCursor(9, "0xb")


def test_a_grant_the_gateway_wrote_keeps_its_names_whichever_came_first(index: Index) -> None:
    chain = Chain()
    grant_id = chain.grant(grantee_key(KEY, DR), study=study_key(KEY, "1.2.1"))
    tx = chain.blocks[0][0].tx_hash
    written = GrantRow(
        id=grant_id, grantee="dr", grantee_kind="token", grantee_key=grantee_key(KEY, DR),
        patient_key=PATIENT, study_instance_uid="1.2.1", study_key=study_key(KEY, "1.2.1"),
        expires_at=NOW + 3600, granted_at=NOW - 99, granted_by="admin", tx_hash=tx,
        block_number=1, revoked_at=None, revoked_by=None, revoke_tx=None, grantee_id=DR,
        replaces=7,  # the gateway's own record: the grant this one extended
    )  # fmt: skip
    _sync(chain, index).sync()  # the sync first: keys and the granter's address
    assert rows.get(index, grant_id).granted_by == DOCTOR  # type: ignore[union-attr]
    assert rows.get(index, grant_id).replaces is None  # type: ignore[union-attr]
    rows.add(index, written)  # then the gateway's own write: its names
    assert rows.get(index, grant_id) == written
    assert _sync(chain, index).sync() is None and rows.get(index, grant_id) == written


def test_importing_a_grant_the_gateway_wrote_first_changes_nothing(index: Index) -> None:
    """The anchoring worker writes the row once the grant is mined; the sync reading the
    same event afterwards keeps the gateway's names, grantee id and replaced grant."""
    chain = Chain()
    grant_id = chain.grant(grantee_key(KEY, DR), study=study_key(KEY, "1.2.1"))
    written = GrantRow(
        id=grant_id, grantee="dr", grantee_kind="token", grantee_key=grantee_key(KEY, DR),
        patient_key=PATIENT, study_instance_uid="1.2.1", study_key=study_key(KEY, "1.2.1"),
        expires_at=NOW + 3600, granted_at=NOW - 99, granted_by="admin",
        tx_hash=chain.blocks[0][0].tx_hash, block_number=1, revoked_at=None, revoked_by=None,
        revoke_tx=None, grantee_id=DR, replaces=7,
    )  # fmt: skip
    rows.add(index, written)
    done = _sync(chain, index).sync()
    assert done is not None and done.granted == 0
    assert rows.get(index, grant_id) == written


def test_a_grant_on_a_study_the_index_does_not_know_applies_once_it_arrives(index: Index) -> None:
    chain = Chain()
    grant_id = chain.grant(_account(OUTSIDER), study=study_key(KEY, "1.2.9"))
    sync = _sync(chain, index)
    sync.sync()
    assert rows.get(index, grant_id).study_instance_uid is None  # type: ignore[union-attr]
    assert _grants(index).studies(OUTSIDER) == []
    row = index.add_received(entry_id="late", sop_instance_uid="1.2.9.1",
                             sop_class_uid="1.2.840.10008.5.1.4.1.1.2", calling_aet="CT", size=1)  # fmt: skip
    index.update(row, study_instance_uid="1.2.9", patient_key=PATIENT)
    assert _grants(index).check(OUTSIDER, "1.2.9").id == grant_id  # by key, at once
    assert sync.name_studies(now=NOW) == 1  # the loop names it for the listings
    assert rows.get(index, grant_id).study_instance_uid == "1.2.9"  # type: ignore[union-attr]
    assert _grants(index).studies(OUTSIDER) == ["1.2.9"]


def test_a_reorg_undoes_what_the_dropped_blocks_held(index: Index) -> None:
    chain = Chain()
    kept = chain.grant(_account(OUTSIDER), study=study_key(KEY, "1.2.1"))  # block 1
    dropped = chain.grant(_account(OUTSIDER), study=study_key(KEY, "1.2.2"))  # block 2
    chain.revoke(kept)  # block 3
    sync = _sync(chain, index, reorg_depth=8)
    sync.sync()
    assert _reason(index, OUTSIDER, "1.2.1") == "grant-revoked"
    chain.reorg(2)  # blocks 2 and 3 are gone; the new block 2 holds another grant
    chain.next_id = 2
    other = chain.grant(_account(OUTSIDER), study=study_key(KEY, "1.2.3"))
    chain.mine()  # and an empty block 3: the cursor's block has another hash now
    done = sync.sync()
    assert done is not None and (done.first, done.last, done.undone) == (1, 3, 2)
    assert other == dropped  # the id came back, for another grant
    assert _grants(index).check(OUTSIDER, "1.2.1").id == kept  # its revocation is undone
    assert _grants(index).check(OUTSIDER, "1.2.3").id == other
    assert _reason(index, OUTSIDER, "1.2.2") == "not-granted"  # the dropped grant is gone


def test_blocks_not_yet_confirmed_wait(index: Index) -> None:
    chain = Chain()
    chain.grant(_account(OUTSIDER), study=study_key(KEY, "1.2.1"))
    sync = _sync(chain, index, confirmations=1)
    assert sync.sync() is None  # block 1 is the head: not deep enough
    chain.mine()
    assert sync.sync().granted == 1  # type: ignore[union-attr]


def test_a_reorg_to_a_shorter_chain_drops_what_is_gone(index: Index) -> None:
    chain = Chain()
    kept = chain.grant(_account(OUTSIDER), study=study_key(KEY, "1.2.1"))  # block 1
    chain.grant(_account(OUTSIDER), study=study_key(KEY, "1.2.2"))  # block 2
    chain.revoke(kept)  # block 3
    sync = _sync(chain, index)
    sync.sync()
    chain.reorg(2)  # the chain is one block long now
    done = sync.sync()
    assert done is not None and (done.first, done.last, done.undone) == (1, 1, 2)
    assert rows.cursor(index, CURSOR) == ChainCursor(2, chain.block_hash(1))
    assert _grants(index).check(OUTSIDER, "1.2.1").id == kept
    assert _reason(index, OUTSIDER, "1.2.2") == "not-granted"
    assert sync.sync() is None  # nothing changed since


def test_studies_are_named_on_a_pass_without_new_blocks(index: Index) -> None:
    chain = Chain()
    grant_id = chain.grant(_account(OUTSIDER), study=study_key(KEY, "1.2.9"))
    sync = _sync(chain, index)
    sync.sync()
    row = index.add_received(entry_id="late", sop_instance_uid="1.2.9.1",
                             sop_class_uid="1.2.840.10008.5.1.4.1.1.2", calling_aet="CT", size=1)  # fmt: skip
    index.update(row, study_instance_uid="1.2.9", patient_key=PATIENT)
    assert sync.sync() is None  # no new block, and yet:
    assert rows.get(index, grant_id).study_instance_uid == "1.2.9"  # type: ignore[union-attr]
