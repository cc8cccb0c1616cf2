"""Grants of read access with an expiry: written to the chain, kept in the index, enforced.

A grant gives one grantee — a named token holder, or an outside clinician's account
address — read access to one study or to every study of one patient, until an expiry
time; it can be revoked at any time. The chain is the record: each grant and each
revocation is an event of the xray contract (``AccessGranted``/``AccessRevoked``) with
keys only (grantee key, patient key, study key, expiry, granter). The index keeps the
same grant with its names and UIDs, written once the transaction is mined; the API's
enforcement reads the index (no chain round trip per request) and :meth:`Grants.check`
says why a read is refused: ``not-granted``, ``grant-expired`` or ``grant-revoked``.

A grant to a token holder binds to the *id* of the token issued to that name at the time
(``gateway/api/auth.py``), and its grantee key on chain is derived from that id: a token
revoked and issued again under the same name is another grantee, with none of its grants.

A standing grant is extended (or shortened) or narrowed from a patient to one of its
studies by :meth:`Grants.replace`, with no contract change: a new grant that records the
one it replaces, then the old one's revocation, in that order, so that the grantee never
loses access in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

from gateway.core import keys
from gateway.core.access import grantee_key, is_account, study_key
from gateway.errors import (
    AccessDenied,
    GrantNotStanding,
    TransactionFailed,
    TransactionPending,
    UnknownGrant,
    UnknownInstance,
)
from gateway.index import grants as rows
from gateway.index.db import Index
from gateway.index.grants import GrantRow
from gateway.ledger.client import XrayLedger
from gateway.ledger.types import Anchor

T = TypeVar("T")


class ChainCalls(Protocol):
    """The chain-request queue as grants use it (``gateway/ingest/chain_requests.py``)."""

    def call(self, kind: str, payload: dict[str, Any], *, by: str) -> int:
        """Queue a write, wait until it is mined, and return its result (a grant id)."""
        ...


@dataclass(frozen=True)
class PendingGrant:
    """A grant as it is asked for, before the chain gives it an id (keys, names and UIDs;
    never a PatientID): what a queued ``grant`` request carries."""

    to: str
    grantee_id: str
    grantee_key: bytes
    patient_key: bytes
    study_instance_uid: str | None
    study_key: bytes | None
    expires_at: int
    by: str
    replaces: int | None = None

    def payload(self) -> dict[str, Any]:
        """As JSON (keys in hex)."""
        return {
            **asdict(self), "grantee_key": self.grantee_key.hex(),
            "patient_key": self.patient_key.hex(),
            "study_key": self.study_key.hex() if self.study_key is not None else None,
        }  # fmt: skip

    @classmethod
    def of(cls, payload: dict[str, Any]) -> PendingGrant:
        """From :meth:`payload`'s JSON."""
        study_key_ = payload["study_key"]
        return cls(**{
            **payload, "grantee_key": bytes.fromhex(payload["grantee_key"]),
            "patient_key": bytes.fromhex(payload["patient_key"]),
            "study_key": bytes.fromhex(study_key_) if study_key_ is not None else None,
        })  # fmt: skip


class Grants:
    """Make, revoke, list and check grants.

    Parameters
    ----------
    index:
        The index (``grants`` and the instances' study UIDs and patient keys).
    ledger:
        The contract, writing as the gateway's recorder; ``None``: read-only (checks only).
    pseudonym_key:
        The site's pseudonym key: grantee, patient and study keys.
    clock:
        Epoch seconds now (a test may pass its own).
    queue:
        Where the API and the CLI send their writes: the chain-request queue the node's
        anchoring worker sends from (``gateway/ingest/chain_requests.py``), which runs them
        through a :class:`Grants` of its own with the ``ledger``. ``None``: write with
        ``ledger`` here (that worker itself, and the in-memory tests).
    """

    def __init__(
        self,
        *,
        index: Index,
        ledger: XrayLedger | None,
        pseudonym_key: bytes,
        clock: Callable[[], float] = time.time,
        queue: ChainCalls | None = None,
    ) -> None:
        self.index = index
        self.ledger = ledger
        self.pseudonym_key = pseudonym_key
        self.clock = clock
        self.queue = queue

    def grant(
        self,
        *,
        to: str,
        until: float,
        by: str,
        study_instance_uid: str | None = None,
        patient_id: str | None = None,
        issuer: str = "",
        token_id: str | None = None,
    ) -> GrantRow:
        """Grant ``to`` read access to a study or to every study of a patient until ``until``.

        ``to`` is an account address, or a token holder's name whose token's id is
        ``token_id`` (the grant binds to that token, not to the name).

        Raises
        ------
        ValueError
            Neither or both of a study and a patient, an expiry not in the future, a
            token holder without ``token_id``, or the zero address as the grantee.
        UnknownInstance
            The index holds no instance of that study.
        """
        if (study_instance_uid is None) == (patient_id is None):
            raise ValueError("grant one study or one patient's studies")
        grantee_id = to.lower() if is_account(to) else token_id
        if not grantee_id:
            raise ValueError(f"{to!r} has no token: issue one first (xray-gateway token create)")
        expires = self._future(until)
        if study_instance_uid is not None:
            patient = rows.patient_key_of_study(self.index, study_instance_uid)
            if patient is None:
                raise UnknownInstance("no fingerprinted instance of that study in the index")
            study: bytes | None = study_key(self.pseudonym_key, study_instance_uid)
        else:
            assert patient_id is not None
            patient, study = keys.patient_key(self.pseudonym_key, issuer, patient_id), None
        grantee = grantee_key(self.pseudonym_key, grantee_id)
        if not any(grantee):  # the contract refuses it (XrayZeroValue): say so, as a 422
            raise ValueError("the grantee may not be the zero address")
        return self._granted(
            PendingGrant(
                to=to, grantee_id=grantee_id, grantee_key=grantee, patient_key=patient,
                study_instance_uid=study_instance_uid, study_key=study, expires_at=expires,
                by=by,
            )
        )  # fmt: skip

    def _granted(self, pending: PendingGrant) -> GrantRow:
        """Write ``pending`` through the queue (then read the row its worker wrote) or here."""
        if self.queue is None:
            return self.write_grant(pending)
        return self.get(self.queue.call("grant", pending.payload(), by=pending.by))

    def write_grant(self, pending: PendingGrant) -> GrantRow:
        """Send the grant with this process's ledger, then keep its row (it is mined)."""
        grant_id, anchor = self._send(
            lambda ledger: ledger.grant_access(
                grantee=pending.grantee_key, patient_key=pending.patient_key,
                study_key=pending.study_key, expires_at=pending.expires_at,
            )
        )  # fmt: skip
        row = GrantRow(
            id=grant_id, grantee=pending.to,
            grantee_kind="account" if is_account(pending.to) else "token",
            grantee_key=pending.grantee_key, patient_key=pending.patient_key,
            study_instance_uid=pending.study_instance_uid, study_key=pending.study_key,
            expires_at=float(pending.expires_at), granted_at=float(anchor.block_time),
            granted_by=pending.by, tx_hash=anchor.tx_hash, block_number=anchor.block_number,
            revoked_at=None, revoked_by=None, revoke_tx=None, grantee_id=pending.grantee_id,
            replaces=pending.replaces,
        )  # fmt: skip
        rows.add(self.index, row)
        return row

    def replace(
        self, grant_id: int, *, by: str, until: float | None = None,
        study_instance_uid: str | None = None,
    ) -> GrantRow:  # fmt: skip
        """Carry a standing grant on under a new expiry ``until``, or narrowed from a patient
        grant to one of its studies (or both): grant the new one first, then revoke the old.

        Returns the new grant (its ``replaces`` is ``grant_id``). A crash between the two
        leaves both standing, the new one already recording what it replaces; revoke the old
        one again to finish.

        Raises
        ------
        UnknownGrant
            No grant ``grant_id``.
        GrantNotStanding
            It is revoked or expired.
        ValueError
            Nothing to change, an expiry not in the future, or a study that is not one of the
            grant's patient's (or another study than a study grant's own).
        """
        old = self.get(grant_id)
        state = old.state(self.clock())
        if state != "active":
            raise GrantNotStanding(f"grant {grant_id} is {state}", state=state)
        if until is None and study_instance_uid is None:
            raise ValueError("give a new expiry, a study to narrow to, or both")
        expires = self._future(until if until is not None else old.expires_at)
        study, study_key_ = self._narrowed(old, study_instance_uid)
        new = self._granted(
            PendingGrant(
                to=old.grantee, grantee_id=old.grantee_id, grantee_key=old.grantee_key,
                patient_key=old.patient_key, study_instance_uid=study, study_key=study_key_,
                expires_at=expires, by=by, replaces=old.id,
            )
        )  # fmt: skip
        self.revoke(old.id, by=by)
        return self.get(new.id)

    def _narrowed(self, old: GrantRow, study_uid: str | None) -> tuple[str | None, bytes | None]:
        """The study (and its key) the replacing grant covers: the old grant's, or one study
        of the old patient grant's patient."""
        if study_uid is None or study_uid == old.study_instance_uid:
            return old.study_instance_uid, old.study_key
        if old.study_instance_uid is not None:
            raise ValueError("a study grant can only be narrowed to its own study")
        if rows.patient_key_of_study(self.index, study_uid) != old.patient_key:
            raise ValueError("that study is not one of the grant's patient's")
        return study_uid, study_key(self.pseudonym_key, study_uid)

    def _future(self, until: float) -> int:
        """``until`` in whole seconds, as the chain keeps it; it must be in the future."""
        expires = int(until)
        if expires <= self.clock():
            raise ValueError("the expiry must be in the future")
        return expires

    def revoke(self, grant_id: int, *, by: str) -> GrantRow:
        """Revoke grant ``grant_id`` on the chain, then in the index; a revoked one is kept."""
        found = rows.get(self.index, grant_id)
        if found is None:
            raise UnknownGrant(f"no grant {grant_id}")
        if found.revoked_at is None:
            if self.queue is not None:
                self.queue.call("revoke", {"grant_id": grant_id, "by": by}, by=by)
            else:
                _, anchor = self._send(lambda ledger: (None, ledger.revoke_access(grant_id)))
                rows.revoke(
                    self.index, grant_id, at=float(anchor.block_time), by=by,
                    tx_hash=anchor.tx_hash, block=anchor.block_number,
                )  # fmt: skip
        return self.get(grant_id)

    def _send(self, write: Callable[[XrayLedger], tuple[T, Anchor]]) -> tuple[T, Anchor]:
        """One write; a send the node refused (e.g. a nonce another process of this recorder
        took meanwhile: the sender heals its nonces) is tried once more."""
        if self.ledger is None:
            raise TransactionFailed("this gateway writes no grants: it has no recorder account")
        try:
            return write(self.ledger)
        except TransactionPending:
            raise
        except TransactionFailed:
            return write(self.ledger)

    def get(self, grant_id: int) -> GrantRow:
        found = rows.get(self.index, grant_id)
        if found is None:
            raise UnknownGrant(f"no grant {grant_id}")
        return found

    def listed(
        self, *, patient_key: bytes | None = None, study_instance_uid: str | None = None,
        grantee: str | None = None, after: int = 0, limit: int = 100,
    ) -> list[GrantRow]:  # fmt: skip
        """Grants by id: of a patient key (its study grants too), a study, or a grantee."""
        return rows.listed(
            self.index, patient_key=patient_key, study_instance_uid=study_instance_uid,
            grantee=grantee, after=after, limit=limit,
        )  # fmt: skip

    def patient_key(self, patient_id: str, issuer: str = "") -> bytes:
        """The key a patient's grants are listed under."""
        return keys.patient_key(self.pseudonym_key, issuer, patient_id)

    def check(self, grantee_id: str, study_instance_uid: str) -> GrantRow:
        """The standing grant that lets the grantee ``grantee_id`` read the study: a token's
        id (``tok-…``, or ``name:<name>`` for one issued before ids), or the address of an
        account signed in with Ethereum (``Principal.grantee_id``). Grants are matched by
        the keys the chain names (the grantee key derived from that id, study, patient), so
        a grant a Hospital or Doctor account made on chain counts as one the gateway wrote.

        Raises
        ------
        AccessDenied
            None stands: ``.reason`` is ``grant-revoked`` or ``grant-expired`` after the
            newest covering grant, else ``not-granted``.
        """
        now = self.clock()
        covering = [] if not grantee_id else rows.covering(
            self.index, grantee_key=grantee_key(self.pseudonym_key, grantee_id),
            study_key=study_key(self.pseudonym_key, study_instance_uid),
            study_instance_uid=study_instance_uid,
        )  # fmt: skip
        standing = [g for g in covering if g.state(now) == "active"]
        if standing:
            return max(standing, key=lambda g: g.expires_at)
        if not covering:
            raise AccessDenied("no grant covers this study", reason="not-granted")
        newest = covering[-1]
        if newest.state(now) == "revoked":
            raise AccessDenied(f"grant {newest.id} was revoked", reason="grant-revoked")
        raise AccessDenied(f"grant {newest.id} expired", reason="grant-expired")

    def studies(self, grantee_id: str) -> list[str]:
        """The Study UIDs the standing grants of the grantee ``grantee_id`` cover (as in
        :meth:`check`: a token's id or an account's address, matched by its key)."""
        if not grantee_id:
            return []
        return rows.granted_studies(
            self.index, grantee_key(self.pseudonym_key, grantee_id), now=self.clock()
        )

    def all_studies(self) -> list[str]:
        """Every Study UID the index holds, sorted (the listing for roles that verify)."""
        return rows.all_studies(self.index)

    def study_of(self, sop_instance_uid: str) -> str | None:
        """The study an instance belongs to, by the index's rows."""
        found = self.index.query(
            "SELECT study_instance_uid FROM instances WHERE sop_instance_uid = ?"
            " AND study_instance_uid IS NOT NULL ORDER BY id DESC LIMIT 1",
            (sop_instance_uid,),
        )
        return str(found[0][0]) if found else None
