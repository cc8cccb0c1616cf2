"""The grants' table in the index (SQL only): what the enforcement reads on every request.

A row is written once its grant is mined (``id`` is the chain's grant id) and marked when
its revocation is mined; the chain is the record, this table the fast copy the API reads.

A grant binds to its grantee's *id*: a token's random id, or an account's address. Rows
written before ids existed have ``grantee_id`` NULL and are read as the id such a token
has (``name:<grantee>``, see ``gateway/api/auth.py``; an account: its address); nothing
rewrites them.
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


def add(index: Index, grant: GrantRow) -> None:
    """Keep a grant the chain holds now (a second write of the same id changes nothing)."""
    with index.transaction() as db:
        db.execute(
            f"INSERT INTO grants ({_WRITTEN}) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (grant.id, grant.grantee, grant.grantee_kind, grant.grantee_key, grant.patient_key,
             grant.study_instance_uid, grant.study_key, grant.expires_at, grant.granted_at,
             grant.granted_by, grant.tx_hash, grant.block_number, grant.revoked_at,
             grant.revoked_by, grant.revoke_tx, grant.grantee_id or None, grant.replaces),
        )  # fmt: skip


def revoke(index: Index, grant_id: int, *, at: float, by: str, tx_hash: str) -> None:
    """Mark a grant revoked (its revocation is mined)."""
    with index.transaction() as db:
        db.execute(
            "UPDATE grants SET revoked_at = ?, revoked_by = ?, revoke_tx = ?"
            " WHERE id = ? AND revoked_at IS NULL",
            (at, by, tx_hash, grant_id),
        )


def get(index: Index, grant_id: int) -> GrantRow | None:
    """One grant by its chain id."""
    found = index.query(f"SELECT {_COLUMNS} FROM grants WHERE id = ?", (grant_id,))
    return _row(found[0]) if found else None


def covering(index: Index, grantee_id: str, study_instance_uid: str) -> list[GrantRow]:
    """The grants of the grantee ``grantee_id`` (a token's id) that cover the study: on it,
    or on its patient; oldest first."""
    found = index.query(
        f"SELECT {_COLUMNS} FROM grants WHERE {GRANTEE_ID} = ?"
        " AND (study_instance_uid = ? OR (study_instance_uid IS NULL AND patient_key IN"
        " (SELECT patient_key FROM instances WHERE study_instance_uid = ?"
        " AND patient_key IS NOT NULL))) ORDER BY id",
        (grantee_id, study_instance_uid, study_instance_uid),
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


def granted_studies(index: Index, grantee_id: str, *, now: float) -> list[str]:
    """The Study UIDs the standing grants of the grantee ``grantee_id`` cover, sorted."""
    found = index.query(
        "SELECT DISTINCT i.study_instance_uid FROM instances i JOIN (SELECT * FROM grants"
        f" WHERE {GRANTEE_ID} = ? AND revoked_at IS NULL AND expires_at > ?) g"
        " ON (g.study_instance_uid = i.study_instance_uid"
        " OR (g.study_instance_uid IS NULL AND g.patient_key = i.patient_key))"
        " WHERE i.study_instance_uid IS NOT NULL ORDER BY i.study_instance_uid",
        (grantee_id, now),
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
