"""The grants' table in the index (SQL only): what the enforcement reads on every request.

A row is written once its grant is mined (``id`` is the chain's grant id) and marked when
its revocation is mined; the chain is the record, this table the fast copy the API reads.
Rows come from the gateway's own writes (:func:`add`, :func:`revoke`: names and UIDs) and
from the contract's events (:func:`import_granted`, :func:`import_revoked`: keys only, for
grants a Hospital or Doctor account made on chain); either way the same grant is one row.
A grantee and a study are matched by their keys, so a grant made on chain applies to a
study as soon as the index holds it, whoever wrote the grant.

A grant binds to its grantee's *id*: a token's random id, or an account's address; its
grantee key is derived from that id (``gateway/core/access.py``), which is how the
enforcement finds it. Rows written before ids existed have ``grantee_id`` NULL and are
read as the id such a token has (``name:<grantee>``, see ``gateway/api/auth.py``; an
account: its address); nothing rewrites them. An imported grant on a token key this
gateway did not issue has the id ``""`` (it is enforced by its key all the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.index.db import Index

_WRITTEN = (
    "id, grantee, grantee_kind, grantee_key, patient_key, study_instance_uid, study_key,"
    " expires_at, granted_at, granted_by, tx_hash, block_number, revoked_at, revoked_by,"
    " revoke_tx, grantee_id, replaces"
)
#: The id a row binds, with the rule for rows from before ids (module docstring).
GRANTEE_ID = (
    "COALESCE(grantee_id, CASE WHEN grantee_kind = 'token' THEN 'name:' || grantee"
    " ELSE grantee END)"
)
_COLUMNS = _WRITTEN.replace("grantee_id", GRANTEE_ID)


@dataclass(frozen=True)
class GrantRow:
    """One grant as the index holds it (names and UIDs: never leaves the gateway)."""

    id: int
    grantee: str
    grantee_kind: str
    grantee_key: bytes
    patient_key: bytes
    study_instance_uid: str | None
    study_key: bytes | None
    expires_at: float
    granted_at: float
    granted_by: str
    tx_hash: str
    block_number: int
    revoked_at: float | None
    revoked_by: str | None
    revoke_tx: str | None
    #: The token's id, or the account's address: what the grant binds.
    grantee_id: str = ""
    #: The grant this one replaced (extended or narrowed), revoked once this one was mined.
    replaces: int | None = None

    def state(self, now: float) -> str:
        """``active``, ``revoked`` or ``expired`` at ``now``."""
        if self.revoked_at is not None:
            return "revoked"
        return "active" if now < self.expires_at else "expired"


def _row(values: Sequence[Any]) -> GrantRow:
    (id_, grantee, kind, gkey, pkey, study, skey, expires, granted, by, tx, block,
     revoked_at, revoked_by, revoke_tx, grantee_id, replaces) = values  # fmt: skip
    return GrantRow(
        int(id_), grantee, kind, bytes(gkey), bytes(pkey), study,
        None if skey is None else bytes(skey), float(expires), float(granted), by, tx,
        int(block), None if revoked_at is None else float(revoked_at), revoked_by, revoke_tx,
        str(grantee_id), None if replaces is None else int(replaces),
    )  # fmt: skip


_INSERT = (
    f"INSERT INTO grants ({_WRITTEN}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _values(grant: GrantRow, grantee_id: str | None) -> tuple[Any, ...]:
    return (
        grant.id, grant.grantee, grant.grantee_kind, grant.grantee_key, grant.patient_key,
        grant.study_instance_uid, grant.study_key, grant.expires_at, grant.granted_at,
        grant.granted_by, grant.tx_hash, grant.block_number, grant.revoked_at,
        grant.revoked_by, grant.revoke_tx, grantee_id, grant.replaces,
    )  # fmt: skip


def add(index: Index, grant: GrantRow) -> None:
    """Keep a grant the gateway wrote and the chain holds now. When the event sync imported
    it first (same id and transaction), the gateway's names, UIDs, grantee id and the grant
    it replaces take the place of the import's keys-only labels; a second write changes
    nothing."""
    with index.transaction() as db:
        db.execute(
            f"{_INSERT} ON CONFLICT (id) DO UPDATE SET grantee = excluded.grantee,"
            " granted_by = excluded.granted_by,"
            " study_instance_uid = COALESCE(excluded.study_instance_uid, grants.study_instance_uid),"
            " grantee_id = COALESCE(excluded.grantee_id, grants.grantee_id),"
            " replaces = COALESCE(excluded.replaces, grants.replaces)"
            " WHERE grants.tx_hash = excluded.tx_hash",
            _values(grant, grant.grantee_id or None),
        )


def revoke(
    index: Index, grant_id: int, *, at: float, by: str, tx_hash: str, block: int | None = None
) -> None:
    """Mark a grant revoked (its revocation is mined, in ``block``)."""
    with index.transaction() as db:
        db.execute(
            "UPDATE grants SET revoked_at = ?, revoked_by = ?, revoke_tx = ?, revoke_block = ?"
            " WHERE id = ? AND revoked_at IS NULL",
            (at, by, tx_hash, block, grant_id),
        )


def get(index: Index, grant_id: int) -> GrantRow | None:
    """One grant by its chain id."""
    found = index.query(f"SELECT {_COLUMNS} FROM grants WHERE id = ?", (grant_id,))
    return _row(found[0]) if found else None


def covering(
    index: Index, *, grantee_key: bytes, study_key: bytes, study_instance_uid: str
) -> list[GrantRow]:
    """The grantee's grants that cover the study (by its key): on it, or on its patient;
    oldest first. Keys, not names: a grant imported from the chain names keys only."""
    found = index.query(
        f"SELECT {_COLUMNS} FROM grants WHERE grantee_key = ?"
        " AND (study_key = ? OR (study_key IS NULL AND patient_key IN"
        " (SELECT patient_key FROM instances WHERE study_instance_uid = ?"
        " AND patient_key IS NOT NULL))) ORDER BY id",
        (grantee_key, study_key, study_instance_uid),
    )
    return [_row(r) for r in found]


def listed(
    index: Index, *, patient_key: bytes | None = None, study_instance_uid: str | None = None,
    grantee: str | None = None, after: int = 0, limit: int = 100,
) -> list[GrantRow]:  # fmt: skip
    """Grants by id past ``after``: of a patient (study grants too), a study, or a grantee."""
    where, params = ["id > ?"], [after]
    if patient_key is not None:
        where.append("patient_key = ?")
        params.append(patient_key)  # type: ignore[arg-type]
    if study_instance_uid is not None:
        where.append("study_instance_uid = ?")
        params.append(study_instance_uid)  # type: ignore[arg-type]
    if grantee is not None:
        where.append("grantee = ?")
        params.append(grantee)  # type: ignore[arg-type]
    found = index.query(
        f"SELECT {_COLUMNS} FROM grants WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
        (*params, limit),
    )
    return [_row(r) for r in found]


def granted_studies(index: Index, grantee_key: bytes, *, now: float) -> list[str]:
    """The Study UIDs a grantee's standing grants cover, sorted (a study grant from the
    chain counts once :func:`name_study` gave it its UID)."""
    found = index.query(
        "SELECT DISTINCT i.study_instance_uid FROM instances i JOIN (SELECT * FROM grants"
        " WHERE grantee_key = ? AND revoked_at IS NULL AND expires_at > ?) g"
        " ON (g.study_instance_uid = i.study_instance_uid"
        " OR (g.study_key IS NULL AND g.patient_key = i.patient_key))"
        " WHERE i.study_instance_uid IS NOT NULL ORDER BY i.study_instance_uid",
        (grantee_key, now),
    )
    return [str(r[0]) for r in found]


def patient_key_of_study(index: Index, study_instance_uid: str) -> bytes | None:
    """The patient key the index's rows of a study carry (None: no row has one)."""
    found = index.query(
        "SELECT patient_key FROM instances WHERE study_instance_uid = ?"
        " AND patient_key IS NOT NULL ORDER BY id LIMIT 1",
        (study_instance_uid,),
    )
    return bytes(found[0][0]) if found else None


def all_studies(index: Index) -> list[str]:
    """Every Study UID the index's rows carry, sorted."""
    found = index.query(
        "SELECT DISTINCT study_instance_uid FROM instances"
        " WHERE study_instance_uid IS NOT NULL ORDER BY study_instance_uid"
    )
    return [str(r[0]) for r in found]


# -- grants made on chain: imported from the contract's events ---------------------------


def import_granted(index: Index, grant: GrantRow) -> bool:
    """Keep a grant read from an ``AccessGranted`` event; False when the index held it.

    The same event imported twice (a restart, another node) changes nothing. A row of the
    same id from another transaction is one a reorg dropped: the chain's grant replaces it.
    """
    with index.transaction() as db:
        db.execute("DELETE FROM grants WHERE id = ? AND tx_hash <> ?", (grant.id, grant.tx_hash))
        added = db.execute(f"{_INSERT} ON CONFLICT DO NOTHING", _values(grant, grant.grantee_id))
        return added.rowcount > 0


def import_revoked(
    index: Index, grant_id: int, *, at: float, by: str, tx_hash: str, block: int
) -> bool:
    """Mark a grant revoked from an ``AccessRevoked`` event; False when it was already."""
    with index.transaction() as db:
        db.execute(
            "UPDATE grants SET revoke_block = ? WHERE id = ? AND revoke_tx = ?"
            " AND revoke_block IS NULL",
            (block, grant_id, tx_hash),
        )
        marked = db.execute(
            "UPDATE grants SET revoked_at = ?, revoked_by = ?, revoke_tx = ?, revoke_block = ?"
            " WHERE id = ? AND revoked_at IS NULL",
            (at, by, tx_hash, block, grant_id),
        )
        return marked.rowcount > 0


def undo_reorged(
    index: Index, *, first: int, last: int, granted: set[tuple[int, str]],
    revoked: set[tuple[int, str]],
) -> int:  # fmt: skip
    """Forget what blocks ``first``..``last`` held before a reorg and hold no longer: grants
    mined there whose ``(id, tx)`` is not in ``granted`` (the events the chain holds there
    now) go, revocations not in ``revoked`` are undone. Returns how many rows changed."""
    with index.transaction() as db:
        stale = [
            (int(i), str(tx)) for i, tx in db.execute(
                "SELECT id, tx_hash FROM grants WHERE block_number BETWEEN ? AND ?", (first, last)
            ).fetchall()
        ]  # fmt: skip
        gone = [grant for grant in stale if grant not in granted]
        db.executemany("DELETE FROM grants WHERE id = ? AND tx_hash = ?", gone)
        unrevoked = [
            (int(i), str(tx)) for i, tx in db.execute(
                "SELECT id, revoke_tx FROM grants WHERE revoke_block BETWEEN ? AND ?",
                (first, last),
            ).fetchall()
        ]  # fmt: skip
        undone = [grant for grant in unrevoked if grant not in revoked]
        db.executemany(
            "UPDATE grants SET revoked_at = NULL, revoked_by = NULL, revoke_tx = NULL,"
            " revoke_block = NULL WHERE id = ? AND revoke_tx = ?",
            undone,
        )
        return len(gone) + len(undone)


def unnamed_study_keys(index: Index, *, now: float) -> list[bytes]:
    """The study keys of standing grants whose study the index has not named yet."""
    found = index.query(
        "SELECT DISTINCT study_key FROM grants WHERE study_key IS NOT NULL"
        " AND study_instance_uid IS NULL AND revoked_at IS NULL AND expires_at > ?",
        (now,),
    )
    return [bytes(r[0]) for r in found]


def name_study(index: Index, study_key: bytes, study_instance_uid: str) -> int:
    """Give the grants on ``study_key`` the study's UID, now that the index holds it."""
    with index.transaction() as db:
        named = db.execute(
            "UPDATE grants SET study_instance_uid = ? WHERE study_key = ?"
            " AND study_instance_uid IS NULL",
            (study_instance_uid, study_key),
        )
        return int(named.rowcount)


def studies_after(index: Index, after: int, *, limit: int) -> list[tuple[int, str]]:
    """``(row id, Study UID)`` of the index's rows past ``after``, oldest first."""
    found = index.query(
        "SELECT id, study_instance_uid FROM instances WHERE id > ?"
        " AND study_instance_uid IS NOT NULL ORDER BY id LIMIT ?",
        (after, limit),
    )
    return [(int(r[0]), str(r[1])) for r in found]


# -- cursors of the chain-event followers -------------------------------------------------


@dataclass(frozen=True)
class ChainCursor:
    """Where a follower of the contract's events has read to: every event of the blocks
    before ``next_block`` is imported; ``last_hash`` is the hash block ``next_block - 1``
    had when it was read (another hash now: a reorg)."""

    next_block: int
    last_hash: str | None


def cursor(index: Index, name: str) -> ChainCursor | None:
    """The follower ``name``'s cursor (None: it never ran against this index)."""
    found = index.query("SELECT next_block, last_hash FROM chain_cursors WHERE name = ?", (name,))
    return ChainCursor(int(found[0][0]), found[0][1]) if found else None


def move_cursor(index: Index, name: str, *, read: ChainCursor | None, to: ChainCursor) -> bool:
    """Move the cursor from ``read`` (as this follower read it) to ``to``; False when
    another node moved it meanwhile (its import holds the same events: nothing is lost)."""
    with index.transaction() as db:
        db.serialize(b"chain_cursor")
        row = db.execute(
            "SELECT next_block, last_hash FROM chain_cursors WHERE name = ?", (name,)
        ).fetchone()
        now = None if row is None else ChainCursor(int(row[0]), row[1])
        if now != read:
            return False
        if row is None:
            db.execute(
                "INSERT INTO chain_cursors (name, next_block, last_hash) VALUES (?, ?, ?)",
                (name, to.next_block, to.last_hash),
            )
        else:
            db.execute(
                "UPDATE chain_cursors SET next_block = ?, last_hash = ? WHERE name = ?",
                (to.next_block, to.last_hash, name),
            )
        return True
