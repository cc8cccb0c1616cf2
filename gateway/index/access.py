"""The access trail's tables in the index: ``access_log`` and ``access_batches`` (SQL only).

Entries arrive from two sources: the Orthanc plugin's journal, imported past a high-water
mark (``source`` names the journal, ``source_seq`` its entry id, unique together so that an
entry is imported once however many importers race), and the API, which writes its own
reads (``source = 'api'``). A batch is cut from entries no batch holds yet, in one
transaction that serializes every cutter (:meth:`Connection.serialize`), so that with
several gateway nodes an entry joins exactly one batch; the batch is then sent by whoever
holds its lease (``claimed_by``/``claim_until``), exactly like image batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.index.db import Index

API_SOURCE = "api"

_ENTRY = (
    "id, source, source_seq, at, who, who_kind, route, sop_instance_uid, study_instance_uid,"
    " verdict, served, batch, leaf_index, leaf_record_key, leaf_study_key"
)
_BATCH = "id, root, count, state, attempts, last_error, batch_id, tx_hash, block_number"


@dataclass(frozen=True)
class AccessRow:
    """One entry of the local access log (names and UIDs: never leaves the gateway)."""

    id: int
    source: str
    source_seq: int | None
    at: float
    who: str
    who_kind: str
    route: str
    sop_instance_uid: str | None
    study_instance_uid: str | None
    verdict: str
    served: bool
    batch: int | None
    leaf_index: int | None
    # an erased image's entry keeps its leaf's keys instead of its UIDs (erasure2 part)
    leaf_record_key: bytes | None = None
    leaf_study_key: bytes | None = None


@dataclass(frozen=True)
class TrailBatch:
    """A Merkle batch of access entries: ``open`` until its root is on the chain."""

    id: int
    root: bytes
    count: int
    state: str
    attempts: int
    last_error: str | None
    batch_id: int | None
    tx_hash: str | None
    block_number: int | None


@dataclass(frozen=True)
class NewEntry:
    """An entry to add: what was read, by whom, and the verdict served."""

    source_seq: int | None
    at: float
    who: str
    who_kind: str
    route: str
    sop_instance_uid: str | None
    study_instance_uid: str | None
    verdict: str
    served: bool


def _entry(values: Sequence[Any]) -> AccessRow:
    (id_, source, seq, at, who, kind, route, sop, study, verdict, served, batch, leaf,
     record_key, study_key) = values  # fmt: skip
    return AccessRow(
        int(id_), source, None if seq is None else int(seq), float(at), who, kind, route, sop,
        study, verdict, bool(served), None if batch is None else int(batch),
        None if leaf is None else int(leaf),
        None if record_key is None else bytes(record_key),
        None if study_key is None else bytes(study_key),
    )  # fmt: skip


def _batch(values: Sequence[Any]) -> TrailBatch:
    (id_, root, count, state, attempts, error, batch_id, tx, block) = values
    return TrailBatch(
        int(id_), bytes(root), int(count), state, int(attempts), error,
        None if batch_id is None else int(batch_id), tx, None if block is None else int(block),
    )  # fmt: skip


def high_water(index: Index, source: str) -> int:
    """The newest journal id imported from ``source`` (0: none yet)."""
    ((found,),) = index.query("SELECT MAX(source_seq) FROM access_log WHERE source = ?", (source,))
    return int(found or 0)


def add(index: Index, source: str, entries: Sequence[NewEntry]) -> int:
    """Add entries (an entry of ``source`` whose ``source_seq`` is there already is skipped);
    returns how many were added. A missing study UID is filled from the index's rows."""
    added = 0
    with index.transaction() as db:
        for e in entries:
            study = e.study_instance_uid
            if study is None and e.sop_instance_uid:
                found = db.execute(
                    "SELECT study_instance_uid FROM instances WHERE sop_instance_uid = ?"
                    " AND study_instance_uid IS NOT NULL ORDER BY id DESC LIMIT 1",
                    (e.sop_instance_uid,),
                ).fetchone()
                study = found[0] if found else None
            cursor = db.execute(
                "INSERT INTO access_log (source, source_seq, at, who, who_kind, route,"
                " sop_instance_uid, study_instance_uid, verdict, served)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (source, e.source_seq, e.at, e.who, e.who_kind, e.route, e.sop_instance_uid,
                 study, e.verdict, int(e.served)),
            )  # fmt: skip
            added += max(cursor.rowcount, 0)
    return added


def cut_batch(
    index: Index, *, limit: int, root_of: Callable[[list[AccessRow]], bytes]
) -> TrailBatch | None:
    """Cut the oldest ``limit`` unbatched entries into a new open batch (None: no entries).

    One cutter at a time on either engine: the selection and the marking are one
    transaction under the ``access_batch`` lock, so no entry joins two batches.
    """
    with index.transaction() as db:
        db.serialize(b"access_batch")
        rows = [_entry(r) for r in db.execute(
            f"SELECT {_ENTRY} FROM access_log WHERE batch IS NULL ORDER BY id LIMIT ?", (limit,)
        ).fetchall()]  # fmt: skip
        if not rows:
            return None
        root = root_of(rows)
        (batch,) = db.execute(
            "INSERT INTO access_batches (root, count, created_at) VALUES (?, ?, ?) RETURNING id",
            (root, len(rows), time.time()),
        ).fetchone()
        db.executemany(
            "UPDATE access_log SET batch = ?, leaf_index = ? WHERE id = ?",
            [(batch, i, row.id) for i, row in enumerate(rows)],
        )
    return TrailBatch(int(batch), root, len(rows), "open", 0, None, None, None, None)


def claim_open_batch(index: Index, worker: str, *, lease_s: float) -> TrailBatch | None:
    """Take the lease on the oldest due open batch no live lease holds (None: none)."""
    now = time.time()
    with index.transaction() as db:
        db.serialize(b"access_batch_send")
        found = db.execute(
            f"SELECT {_BATCH} FROM access_batches WHERE state = 'open' AND next_attempt_at <= ?"
            " AND (claimed_by IS NULL OR claim_until <= ? OR claimed_by = ?) ORDER BY id LIMIT 1",
            (now, now, worker),
        ).fetchone()
        if found is None:
            return None
        batch = _batch(found)
        db.execute(
            "UPDATE access_batches SET claimed_by = ?, claim_until = ? WHERE id = ?",
            (worker, now + lease_s, batch.id),
        )
    return batch


def close_batch(
    index: Index, batch: int, *, batch_id: int, tx_hash: str, block_number: int
) -> None:
    """The batch's root is on the chain as ``batch_id``."""
    with index.transaction() as db:
        db.execute(
            "UPDATE access_batches SET state = 'landed', batch_id = ?, tx_hash = ?,"
            " block_number = ?, last_error = NULL, claimed_by = NULL WHERE id = ?",
            (batch_id, tx_hash, block_number, batch),
        )


def fail_batch(index: Index, batch: int, error: str, *, retry_in: float) -> None:
    """A send failed: say why, retry later (the lease is dropped)."""
    with index.transaction() as db:
        db.execute(
            "UPDATE access_batches SET attempts = attempts + 1, last_error = ?,"
            " next_attempt_at = ?, claimed_by = NULL WHERE id = ?",
            (error[:2000], time.time() + retry_in, batch),
        )


def batch(index: Index, batch: int) -> TrailBatch:
    """One batch by its local id."""
    (found,) = index.query(f"SELECT {_BATCH} FROM access_batches WHERE id = ?", (batch,))
    return _batch(found)


def landed_batches(index: Index) -> list[TrailBatch]:
    """Every batch whose root is on the chain, oldest first (what the audit re-checks)."""
    return [_batch(r) for r in index.query(
        f"SELECT {_BATCH} FROM access_batches WHERE state = 'landed' ORDER BY id"
    )]  # fmt: skip


def batch_of_root(index: Index, root: bytes) -> TrailBatch | None:
    """The batch cut with ``root``, whatever its state (None: none)."""
    found = index.query(
        f"SELECT {_BATCH} FROM access_batches WHERE root = ? ORDER BY id LIMIT 1", (root,)
    )
    return _batch(found[0]) if found else None


def batch_entries(index: Index, batch: int) -> list[AccessRow]:
    """The entries of one batch in leaf order, as the local log holds them now."""
    return [_entry(r) for r in index.query(
        f"SELECT {_ENTRY} FROM access_log WHERE batch = ? ORDER BY leaf_index", (batch,)
    )]  # fmt: skip


def entries(
    index: Index, *, study: str | None = None, who: str | None = None, after: int = 0,
    limit: int = 100, study_key: bytes | None = None,
) -> list[AccessRow]:  # fmt: skip
    """Entries of one study, or of one reader (by name), oldest first, ids above ``after``.

    ``study_key`` (the study's keyed leaf input) finds, with ``study``, the entries an
    erasure left without their UIDs.
    """
    if (study is None) == (who is None):
        raise ValueError("give exactly one of study and who")
    if study is not None and study_key is not None:
        return [_entry(r) for r in index.query(
            f"SELECT {_ENTRY} FROM access_log WHERE (study_instance_uid = ? OR"
            " leaf_study_key = ?) AND id > ? ORDER BY id LIMIT ?",
            (study, study_key, after, limit),
        )]  # fmt: skip
    column, value = ("study_instance_uid", study) if study is not None else ("who", who)
    return [_entry(r) for r in index.query(
        f"SELECT {_ENTRY} FROM access_log WHERE {column} = ? AND id > ? ORDER BY id LIMIT ?",
        (value, after, limit),
    )]  # fmt: skip


def counts(index: Index) -> dict[str, int]:
    """Entries in total, not yet in a batch, and in landed batches (status and tests)."""
    ((total, unbatched),) = index.query(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN batch IS NULL THEN 1 ELSE 0 END), 0)"
        " FROM access_log"
    )
    ((landed,),) = index.query(
        "SELECT COUNT(*) FROM access_log l JOIN access_batches b ON b.id = l.batch"
        " WHERE b.state = 'landed'"
    )
    return {"entries": int(total), "unbatched": int(unbatched), "anchored": int(landed)}
