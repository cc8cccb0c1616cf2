"""The erasure part's tables in the index: study keys, the erasure log, studies past retention.

``study_keys`` holds one random key per study, wrapped under a KEK and filed under the
study's pseudonymous reference (:func:`gateway.core.keys.study_ref`), never its UID. New
objects are sealed under it (seal format v2): destroying it is the crypto-shredding an
erasure does. A destroyed key keeps its row (``destroyed_at``, no wrapped key) so that its
objects say :class:`~gateway.errors.KeyShredded`, not "unknown key".

Destroying is a DELETE of the wrapped bytes: on SQLite under ``secure_delete`` (freed
pages are zeroed) followed by a WAL checkpoint, so the file no longer holds them; on
PostgreSQL the old tuple stays in the table's pages until VACUUM, which the erasure runs
after the transaction. Backups of the index taken before still hold the wrapped key, and
with the KEK it opens the study: keep index backups for less than the time an erasure
must take effect in, or delete them (docs/architecture.md, "Erasure").

``erasures`` is the log: each dry run's plan (pseudonymous keys only) under its hash, who
asked and why, and its state (``planned``, ``erasing``, ``done``). ``retention_due`` is
what the off-hours retention job last listed for an admin.

A confirmed erasure names its rows (``instances.erase_plan``): a row still in the
pipeline is erased at its next stage instead of going on (:func:`take_erased`), and the
confirmation waits for the rows being worked right now (:func:`in_flight`). Each node
sheds its own local copies of erased rows and says so in ``erasure_shed``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from gateway.core.access import instance_key, study_key
from gateway.core.keys import Kek, Keyring, StudyKey, new_study_key
from gateway.errors import KeyringError, KeyShredded, SealCorrupt, SealKeyMissing
from gateway.index.db import Index

#: An erasure's states, in order: planned by a dry run, confirmed and under way, done.
PLANNED, ERASING, DONE = "planned", "erasing", "done"


class StudyKeys:
    """The index's study keys, opened with the KEK ring (a seal ``StudyKeySource``).

    Parameters
    ----------
    index:
        The index holding ``study_keys``.
    keyring:
        Wraps new study keys (its current KEK) and unwraps stored ones.
    """

    def __init__(self, index: Index, keyring: Keyring) -> None:
        self.index = index
        self.keyring = keyring

    def for_study(self, ref: bytes) -> tuple[StudyKey, str]:
        """The key of the study ``ref`` names, made on first use; and the KEK wrapping it.

        Two workers racing for a new study both end up with the one key that was stored.

        Raises
        ------
        KeyShredded
            The study was erased: nothing new is sealed under it.
        """
        select = "SELECT key_id, kek_id, wrapped_key FROM study_keys WHERE study_ref = ?"
        found = self.index.query(select, (ref,))
        if not found:  # the study's first image: a write only then
            fresh = new_study_key()
            kek = self.keyring.current
            with self.index.transaction() as db:
                db.execute(
                    "INSERT INTO study_keys (study_ref, key_id, kek_id, wrapped_key, created_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (study_ref) DO NOTHING",
                    (ref, fresh.key_id, kek.kek_id, aes_key_wrap(kek.key, fresh.key),
                     time.time()),
                )  # fmt: skip
            found = self.index.query(select, (ref,))
        ((key_id, kek_id, wrapped),) = found
        return self._opened(str(key_id), kek_id, wrapped), str(kek_id)

    def study_key(self, key_id: str) -> StudyKey:
        """The study key ``key_id`` (what opening a v2 object asks for).

        Raises
        ------
        KeyShredded
            An erasure destroyed it.
        SealKeyMissing
            The index knows no such key.
        """
        found = self.index.query(
            "SELECT kek_id, wrapped_key FROM study_keys WHERE key_id = ?", (key_id,)
        )
        if not found:
            raise SealKeyMissing(f"the index holds no study key {key_id!r}", kek_id=key_id)
        ((kek_id, wrapped),) = found
        return self._opened(key_id, kek_id, wrapped)

    def key_ids(self, refs: Sequence[bytes]) -> dict[bytes, str]:
        """The key id of each study in ``refs`` that has one (destroyed or not)."""
        found: dict[bytes, str] = {}
        for ref in refs:
            for (key_id,) in self.index.query(
                "SELECT key_id FROM study_keys WHERE study_ref = ?", (ref,)
            ):
                found[ref] = str(key_id)
        return found

    def destroy(self, refs: Sequence[bytes]) -> int:
        """Destroy the keys of the studies ``refs`` name; returns how many were still there.

        The wrapped bytes are overwritten, then set to NULL, in one transaction; SQLite
        zeroes the freed pages (``secure_delete``) and the WAL is checkpointed after, so
        the database file no longer holds them. PostgreSQL is vacuumed by
        :func:`vacuum_study_keys`.
        """
        sqlite = self.index.engine == "sqlite"
        if sqlite:
            self.index.maintain("PRAGMA secure_delete = ON")
        destroyed = 0
        with self.index.transaction() as db:
            for ref in refs:
                cursor = db.execute(
                    "UPDATE study_keys SET wrapped_key = ?, destroyed_at = ?"
                    " WHERE study_ref = ? AND destroyed_at IS NULL",
                    (bytes(40), time.time(), ref),
                )
                destroyed += max(cursor.rowcount, 0)
                db.execute("UPDATE study_keys SET wrapped_key = NULL WHERE study_ref = ?", (ref,))
        if sqlite:
            self.index.maintain("PRAGMA wal_checkpoint(TRUNCATE)")
        return destroyed

    def rewrap(self, new_kek: Kek) -> int:
        """Re-wrap every live study key under ``new_kek`` (KEK rotation); returns how many."""
        rows = self.index.query(
            "SELECT study_ref, key_id, kek_id, wrapped_key FROM study_keys"
            " WHERE destroyed_at IS NULL AND kek_id != ?",
            (new_kek.kek_id,),
        )
        with self.index.transaction() as db:
            for ref, key_id, kek_id, wrapped in rows:
                key = self._opened(str(key_id), kek_id, wrapped).key
                db.execute(
                    "UPDATE study_keys SET kek_id = ?, wrapped_key = ?"
                    " WHERE study_ref = ? AND destroyed_at IS NULL",
                    (new_kek.kek_id, aes_key_wrap(new_kek.key, key), ref),
                )
        return len(rows)

    def _opened(self, key_id: str, kek_id: Any, wrapped: Any) -> StudyKey:
        if wrapped is None:
            raise KeyShredded(
                f"study key {key_id} was destroyed by an erasure: its objects cannot be opened",
                key_id=key_id,
            )
        try:
            kek = self.keyring.get(str(kek_id))
        except KeyringError as error:
            raise SealKeyMissing(
                f"study key {key_id} is wrapped under KEK {kek_id!r}, which the keyring lacks",
                kek_id=str(kek_id),
            ) from error
        try:
            return StudyKey(key_id, aes_key_unwrap(kek.key, bytes(wrapped)))
        except InvalidUnwrap:
            raise SealCorrupt(f"study key {key_id} does not unwrap under KEK {kek_id}") from None


def vacuum_study_keys(index: Index) -> None:
    """PostgreSQL: reclaim the old tuples that still hold destroyed keys' wrapped bytes."""
    if index.engine == "postgresql":
        index.maintain("VACUUM study_keys")


def erased_digest(index: Index, digest: bytes) -> bool:
    """Whether ``digest`` is the dataset digest of an erased image (a copy come back)."""
    return bool(
        index.query("SELECT 1 FROM instances WHERE stage = 'erased' AND digest = ?", (digest,))
    )


def study_shredded(index: Index, ref: bytes) -> bool:
    """Whether the study ``ref`` names was erased (its key destroyed)."""
    return bool(
        index.query(
            "SELECT 1 FROM study_keys WHERE study_ref = ? AND destroyed_at IS NOT NULL", (ref,)
        )
    )


# -- rows an erasure names, still in the pipeline ------------------------------------------

#: Stages a row leaves the pipeline at (no step of the pipeline will run on it again).
_OUT_OF_PIPELINE = ("committed", "duplicate", "rejected", "conflict", "failed", "erased")


def name_rows(index: Index, plan_hash: str, row_ids: Sequence[int]) -> None:
    """Name ``row_ids`` as the erasure ``plan_hash``'s: the pipeline erases each of them at
    its next stage instead of working it (:func:`take_erased`)."""
    with index.transaction() as db:
        for row_id in row_ids:
            db.execute("UPDATE instances SET erase_plan = ? WHERE id = ?", (plan_hash, row_id))


def in_flight(index: Index, row_ids: Sequence[int], *, now: float | None = None) -> list[int]:
    """Of ``row_ids``, those the pipeline may still move: held by a live claim (a worker is
    running a step on it) or in a Merkle batch not yet landed (it may still be anchored)."""
    if not row_ids:
        return []
    now = time.time() if now is None else now
    marks = ", ".join("?" for _ in row_ids)
    done = ", ".join("?" for _ in _OUT_OF_PIPELINE)
    rows = index.query(
        f"SELECT id FROM instances WHERE id IN ({marks}) AND stage NOT IN ({done}) AND"
        " ((claimed_by IS NOT NULL AND claim_until > ?) OR id IN (SELECT m.row_id FROM"
        " batch_members m JOIN batches b ON b.id = m.batch WHERE b.state = 'open'))"
        " ORDER BY id",
        (*row_ids, *_OUT_OF_PIPELINE, now),
    )
    return [int(row_id) for (row_id,) in rows]


def take_erased(index: Index, row_id: int, *, stage: str, plan_hash: str | None = None) -> bool:
    """Move a row from ``stage`` to ``erased`` (and drop its claim), unless it moved on
    meanwhile; ``plan_hash`` names the erasure if the row had none. True if it moved."""
    with index.transaction() as db:
        cursor = db.execute(
            "UPDATE instances SET stage = 'erased', erase_plan = COALESCE(erase_plan, ?),"
            " claimed_by = NULL, claim_until = 0 WHERE id = ? AND stage = ?",
            (plan_hash, row_id, stage),
        )
        return int(cursor.rowcount) > 0


def forget_trail_uids(
    index: Index, *, pseudonym_key: bytes, studies: Sequence[str], sop_uids: Sequence[str]
) -> int:
    """Drop the plaintext Study and SOP Instance UIDs from the access trail's entries about
    ``studies`` (or naming one of ``sop_uids``), keeping in their place the keyed values
    their leaves were built from: each anchored batch's root stays recomputable, and the
    proofs still check. Returns how many entries changed. Who read, when, by which route
    and with which verdict stay as they were (they are not the patient's)."""
    changed = 0
    with index.transaction() as db:
        found = {
            int(id_): (sop, study)
            for column, values in (("study_instance_uid", studies), ("sop_instance_uid", sop_uids))
            for value in values
            for id_, sop, study in db.execute(
                f"SELECT id, sop_instance_uid, study_instance_uid FROM access_log"
                f" WHERE {column} = ?",
                (value,),
            ).fetchall()
        }
        for id_, (sop, study) in found.items():
            db.execute(
                "UPDATE access_log SET leaf_record_key = ?, leaf_study_key = ?,"
                " sop_instance_uid = NULL, study_instance_uid = NULL WHERE id = ?",
                (instance_key(pseudonym_key, sop), study_key(pseudonym_key, study), id_),
            )
            changed += 1
    return changed


# -- each node's shedding of its local copies -------------------------------------------------


@dataclass(frozen=True)
class LocalCopy:
    """An erased row's files on one node (its spool entry and sealed-stage file)."""

    entry_id: str
    plan_hash: str | None


def erased_entries(index: Index, entry_ids: Sequence[str]) -> list[LocalCopy]:
    """Of the spool entries ``entry_ids``, those whose row was erased."""
    found: list[LocalCopy] = []
    for start in range(0, len(entry_ids), 500):
        chunk = entry_ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        found += [
            LocalCopy(str(entry_id), None if plan is None else str(plan))
            for entry_id, plan in index.query(
                f"SELECT entry_id, erase_plan FROM instances WHERE stage = 'erased'"
                f" AND entry_id IN ({marks})",
                tuple(chunk),
            )
        ]
    return found


def unshed(index: Index, node: str) -> list[str]:
    """Confirmed erasures (``erasing`` or ``done``) that ``node`` has not shed yet."""
    rows = index.query(
        "SELECT plan_hash FROM erasures WHERE state IN (?, ?) AND plan_hash NOT IN"
        " (SELECT plan_hash FROM erasure_shed WHERE node = ?) ORDER BY id",
        (ERASING, DONE, node),
    )
    return [str(plan_hash) for (plan_hash,) in rows]


def entries_of(index: Index, plan_hash: str, node: str) -> list[str]:
    """The spool entries of an erasure's rows that ``node`` received."""
    rows = index.query(
        "SELECT entry_id, received_by FROM instances WHERE erase_plan = ?", (plan_hash,)
    )
    return [str(entry) for entry, by in rows if (by or "") == node]


def record_shed(index: Index, plan_hash: str, *, node: str, files: int) -> None:
    """``node`` holds no local copy of the erasure's rows any more (``files``: how many the
    sweep that found the erasure done deleted; earlier sweeps may have deleted more)."""
    with index.transaction() as db:
        db.execute(
            "INSERT INTO erasure_shed (plan_hash, node, files, shed_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (plan_hash, node) DO NOTHING",
            (plan_hash, node, files, time.time()),
        )


def shedding(index: Index, plan_hash: str) -> dict[str, dict[str, Any]]:
    """Each node that received rows of the erasure, or shed copies of it: whether it has
    shed them, when, and how many files it deleted (``""``: rows from before node ids)."""
    nodes: dict[str, dict[str, Any]] = {
        str(by or ""): {"shed": False, "shed_at": None, "files": 0}
        for (by,) in index.query(
            "SELECT DISTINCT received_by FROM instances WHERE erase_plan = ?", (plan_hash,)
        )
    }
    for node, files, at in index.query(
        "SELECT node, files, shed_at FROM erasure_shed WHERE plan_hash = ?", (plan_hash,)
    ):
        nodes[str(node)] = {"shed": True, "shed_at": float(at), "files": int(files)}
    return nodes


# -- the erasure log --------------------------------------------------------------------------


@dataclass(frozen=True)
class ErasureEntry:
    """One erasure as the log holds it (its plan: pseudonymous keys only)."""

    id: int
    plan_hash: str
    reason: str
    asked_by: str
    planned_at: float
    state: str
    confirmed_by: str | None
    confirmed_at: float | None
    done_at: float | None
    plan: dict[str, Any]


_ENTRY = (
    "id, plan_hash, reason, asked_by, planned_at, state, confirmed_by, confirmed_at, done_at, plan"
)


def _entry(values: Sequence[Any]) -> ErasureEntry:
    (id_, plan_hash, reason, asked_by, planned_at, state, by, confirmed_at, done_at, plan) = values
    return ErasureEntry(
        id_, plan_hash, reason, asked_by, planned_at, state, by, confirmed_at, done_at,
        json.loads(plan),
    )  # fmt: skip


def log_plan(
    index: Index, *, plan_hash: str, reason: str, asked_by: str, plan: dict[str, Any]
) -> ErasureEntry:
    """Keep a dry run's plan under its hash (the same plan twice keeps the first)."""
    with index.transaction() as db:
        db.execute(
            "INSERT INTO erasures (plan_hash, reason, asked_by, planned_at, state, plan)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (plan_hash) DO NOTHING",
            (plan_hash, reason, asked_by, time.time(), PLANNED, json.dumps(plan, sort_keys=True)),
        )
    found = erasure(index, plan_hash)
    assert found is not None
    return found


def erasure(index: Index, plan_hash: str) -> ErasureEntry | None:
    """The logged erasure with that plan hash, if a dry run made it."""
    found = index.query(f"SELECT {_ENTRY} FROM erasures WHERE plan_hash = ?", (plan_hash,))
    return _entry(found[0]) if found else None


def erasures(index: Index, *, limit: int = 100) -> list[ErasureEntry]:
    """The newest erasures first."""
    rows = index.query(f"SELECT {_ENTRY} FROM erasures ORDER BY id DESC LIMIT ?", (limit,))
    return [_entry(r) for r in rows]


def mark(index: Index, plan_hash: str, state: str, *, by: str | None = None) -> None:
    """Move an erasure to ``erasing`` (confirmed, by whom) or ``done``."""
    now = time.time()
    with index.transaction() as db:
        if state == ERASING:
            db.execute(
                "UPDATE erasures SET state = ?, confirmed_by = ?,"
                " confirmed_at = COALESCE(confirmed_at, ?) WHERE plan_hash = ?",
                (state, by, now, plan_hash),
            )
        else:
            db.execute(
                "UPDATE erasures SET state = ?, done_at = ? WHERE plan_hash = ?",
                (state, now, plan_hash),
            )


# -- retention ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionDue:
    """A study past its modality's retention period, listed for an admin to decide on."""

    study_instance_uid: str
    modality: str
    received_at: float
    due_at: float
    listed_at: float


def studies_received(index: Index) -> list[tuple[str, str, float]]:
    """Each committed study: its UID, its modality, and when its newest image came."""
    rows = index.query(
        "SELECT study_instance_uid, MAX(modality), MAX(received_at) FROM instances"
        " WHERE stage = 'committed' AND study_instance_uid IS NOT NULL"
        " GROUP BY study_instance_uid"
    )
    return [(str(uid), str(modality or ""), float(at)) for uid, modality, at in rows]


def replace_retention_due(index: Index, due: Sequence[RetentionDue]) -> None:
    """Replace the retention list with ``due`` (one transaction: readers see one list)."""
    with index.transaction() as db:
        db.execute("DELETE FROM retention_due")
        for item in due:
            db.execute(
                "INSERT INTO retention_due"
                " (study_instance_uid, modality, received_at, due_at, listed_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (item.study_instance_uid, item.modality, item.received_at, item.due_at,
                 item.listed_at),
            )  # fmt: skip


def retention_due(index: Index) -> list[RetentionDue]:
    """The studies the retention job last listed, oldest due first."""
    rows = index.query(
        "SELECT study_instance_uid, modality, received_at, due_at, listed_at FROM retention_due"
        " ORDER BY due_at, study_instance_uid"
    )
    return [RetentionDue(str(u), str(m), float(r), float(d), float(ls)) for u, m, r, d, ls in rows]
