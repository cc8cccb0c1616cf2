"""The index: one row per received instance, its stage and evidence; SQLite or PostgreSQL.

The database is a SQLite file in the data dir (the embedded default) or PostgreSQL
(``GATEWAY_INDEX_URL``), through :mod:`gateway.index.engine`; its schema is the numbered
steps of :mod:`gateway.index.schema`, run when the index is opened.

Every stage after the ack is a persisted task: a row's ``stage`` says what must happen
next, and a restart resumes from there. A task that kept failing for a permanent reason
is parked at stage ``failed`` (``parked_stage`` says where it stopped, ``last_error``
why; its spool file is kept) until an operator re-queues it (:meth:`Index.requeue`). A
committed row survives power loss (SQLite: WAL with ``synchronous=FULL``; PostgreSQL:
``synchronous_commit``), which the ack relies on.

``spool_sha256`` binds a row to what was acknowledged: the SHA-256 of the spool file as
it was received, stored in the same commit as the row, compared by the fingerprint stage
with the bytes it reads (NULL on rows acked before the column existed: not checked).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from gateway.core.group_commit import GroupCommit
from gateway.core.nodes import node_of
from gateway.errors import IndexUnavailable
from gateway.index import schema
from gateway.index.engine import LOCK_BUSY_ERRORS, Connection, connect, describe
from gateway.index.queries import IS_FINGERPRINTED_VERSION, IS_VERSION

STAGES = ("fingerprint", "seal", "put", "anchor", "forward", "committed")
# ``erased``: a version erased on request (gateway/trust/erasure.py); its evidence is kept.
DONE_STAGES = ("committed", "duplicate", "rejected", "conflict", "failed", "erased")
PARKED = "failed"  # no automatic work left, but not done: waits for `xray-gateway retry`

# Parks rows (stage ``failed``, the stage they were at kept); parameters: PARKED, error.
_PARK = (
    "UPDATE instances SET parked_stage = stage, stage = ?, last_error = ?,"
    " attempts = attempts + 1, strikes = strikes + 1, next_attempt_at = 0"
)


@dataclass(frozen=True)
class Row:
    """One instance as the index knows it."""

    id: int
    entry_id: str
    sop_instance_uid: str
    sop_class_uid: str
    calling_aet: str
    received_at: float
    size: int
    stage: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    record_key: bytes | None
    patient_key: bytes | None
    digest: bytes | None
    pixel_digest: bytes | None
    transfer_syntax: str | None
    modality: str | None
    body_part: str | None
    version: int | None
    kek_id: str | None
    object_name: str | None
    tx_hash: str | None
    block_number: int | None
    block_time: int | None
    recorder: str | None
    batch_id: int | None
    leaf_index: int | None
    proof: bytes | None
    orthanc_id: str | None
    conflict: str | None
    committed_at: float | None
    strikes: int = 0  # failures for a permanent reason since the last successful step
    parked_stage: str | None = None  # the stage a ``failed`` row stopped at
    spool_sha256: bytes | None = None  # the spool file's SHA-256 as received and acked
    anchored_at: float | None = None  # when the gateway had the anchor's receipt (wall clock)
    erase_plan: str | None = None  # the erasure naming it: erased at its next stage (erasure2)


COLUMNS = tuple(f.name for f in fields(Row))


@dataclass(frozen=True)
class PendingBatch:
    """A Merkle batch persisted before its ``recordBatch`` was sent, not yet landed.

    ``members`` are row ids in leaf order: the tree, and so the root, is rebuilt from
    those rows' fields, and the same batch is re-sent whole after a failure or a crash.
    """

    id: int
    root: bytes
    count: int
    members: tuple[int, ...]
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class StageMove:
    """One row's finished step, as :meth:`Index.advance_many` records it.

    ``values`` are the columns the step's work sets; ``stage`` is where the row goes. A
    fingerprint names ``duplicate_stage`` too: the commit decides (as
    :meth:`Index.claim_fingerprint`) whether the row is new, a new version or a duplicate,
    and ``values`` then hold at least ``record_key`` and ``digest``.
    """

    row_id: int
    stage: str
    values: Mapping[str, Any]
    duplicate_stage: str | None = None

    @property
    def record_key(self) -> bytes:
        """The key a fingerprint's decision locks (empty for other moves)."""
        return bytes(self.values.get("record_key") or b"")


@dataclass(frozen=True)
class Landed:
    """Where a move left its row: the stage, its version (0 unless a new fingerprint
    decided it) and, for a duplicate, the row it duplicates."""

    stage: str
    version: int
    duplicate_of: int | None


class Index:
    """Thread-safe access to the index database.

    ``location`` is a SQLite file (a path) or a ``postgresql://`` URL. Opening runs the
    schema's missing steps (:func:`gateway.index.schema.migrate`) and refuses a schema
    newer than this code's (:class:`~gateway.errors.IndexSchemaTooNew`).

    ``readonly=True`` opens an existing index without writing to it (``xray-gateway
    status``), whether or not a gateway has it open at the same time; an older schema is
    read as it is (added columns show their defaults).
    """

    def __init__(self, location: Path | str, *, readonly: bool = False) -> None:
        self._lock = threading.RLock()
        self.location = location
        #: ``location`` as messages may show it (no password).
        self.where = describe(location)
        self._db: Connection = connect(location, readonly=readonly)
        # PostgreSQL: the ack's insert has a session of its own, so that a C-STORE never
        # waits behind the pipeline's transactions (round trips under the index lock).
        # SQLite keeps one connection: its writers take one lock whatever the connection.
        self._ack_lock = threading.Lock()
        self._ack: Connection | None = None
        # C-STOREs acked together on several associations share one commit.
        self._acks: GroupCommit[tuple[Any, ...], int] = GroupCommit(self._insert_received)
        try:
            if readonly:
                schema.check(schema.version(self._db), self.where)
                if not self._db.columns("instances"):  # an empty database: no gateway yet
                    raise IndexUnavailable(f"no index at {self.where} (no instances table)")
            else:
                schema.migrate(self._db, where=self.where)
                if self._db.engine == "postgresql":
                    self._ack = connect(location)
            self._select = self._selection()
        except BaseException:
            self._db.close()
            raise

    @property
    def engine(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._db.engine

    def _selection(self) -> str:
        """The SELECT list: an older index opened read-only shows added columns' defaults."""
        present = self._db.columns("instances")
        defaults = schema.added_columns("instances")
        return ", ".join(
            name if not present or name in present else f"{defaults[name]} AS {name}"
            for name in COLUMNS
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with self._ack_lock:
            if self._ack is not None:
                self._ack.close()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction under the index lock (SQLite: ``BEGIN IMMEDIATE``)."""
        with self._lock:
            self._db.begin()
            try:
                yield self._db
            except BaseException:
                self._db.rollback()
                raise
            self._db.commit()

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        with self._lock:
            cursor = self._db.execute(f"SELECT {self._select} FROM instances {sql}", params)
            return [Row(*values) for values in cursor.fetchall()]

    def add_received(
        self,
        *,
        entry_id: str,
        sop_instance_uid: str,
        sop_class_uid: str,
        calling_aet: str,
        size: int,
        spool_sha256: bytes | None = None,
        received_by: str | None = None,
    ) -> int:
        """Record a durable received instance; its first task is ``fingerprint``.

        ``spool_sha256`` is the spool file's SHA-256 as it was received: the fingerprint
        stage refuses a file that no longer hashes to it. ``received_by`` is the gateway
        node whose spool holds it: only that node's workers claim it, except to anchor.
        """
        return self._acks.submit(
            (entry_id, sop_instance_uid, sop_class_uid, calling_aet, time.time(), size,
             spool_sha256, received_by)
        )  # fmt: skip

    def _insert_received(self, rows: Sequence[tuple[Any, ...]]) -> list[int]:
        """Insert the rows :meth:`add_received` was handed together, in one transaction.

        On the ack's own session (PostgreSQL) or the index's connection (SQLite). One row
        is one statement, its own transaction on both engines (one round trip); several
        rows share a ``BEGIN``/``COMMIT``: one WAL flush (SQLite) or one commit's wait
        (PostgreSQL) for them all, which :class:`~gateway.core.group_commit.GroupCommit`
        returns to each caller only once that commit is done.
        """
        db, lock = (self._db, self._lock) if self._ack is None else (self._ack, self._ack_lock)
        with lock:
            if len(rows) == 1:
                return [self._insert_one(db, rows[0])]
            db.begin()
            try:
                ids = [self._insert_one(db, row) for row in rows]
            except BaseException:
                db.rollback()
                raise
            db.commit()
            return ids

    @staticmethod
    def _insert_one(db: Connection, row: tuple[Any, ...]) -> int:
        (row_id,) = db.execute(
            "INSERT INTO instances (entry_id, sop_instance_uid, sop_class_uid, calling_aet,"
            " received_at, size, stage, spool_sha256, received_by)"
            " VALUES (?, ?, ?, ?, ?, ?, 'fingerprint', ?, ?) RETURNING id",
            row,
        ).fetchone()
        return int(row_id)

    def was_erased(self, sop_instance_uid: str) -> bool:
        """Whether an image with that UID was erased (the listener's check before the ack).

        On the ack's own session, as :meth:`add_received`: a C-STORE never waits behind
        the pipeline's transactions."""
        db, lock = (self._db, self._lock) if self._ack is None else (self._ack, self._ack_lock)
        with lock:
            found = db.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid = ? AND stage = 'erased' LIMIT 1",
                (sop_instance_uid,),
            ).fetchone()
            return found is not None

    def get(self, row_id: int) -> Row:
        (row,) = self._rows("WHERE id = ?", (row_id,))
        return row

    def has_entry(self, entry_id: str) -> bool:
        return bool(self._rows("WHERE entry_id = ?", (entry_id,)))

    def due(
        self, *, now: float | None = None, limit: int = 64, stages: tuple[str, ...] | None = None
    ) -> list[Row]:
        """Rows with work to do (at ``stages``, default all) whose retry time has come, oldest first."""
        stages = stages or STAGES[:-1]
        placeholders = ", ".join("?" for _ in stages)
        return self._rows(
            f"WHERE stage IN ({placeholders}) AND next_attempt_at <= ? ORDER BY id LIMIT ?",
            (*stages, time.time() if now is None else now, limit),
        )

    def update(self, row_id: int, **values: Any) -> None:
        """Set columns of one row (names are checked against the schema)."""
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise KeyError(f"no such index columns: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self.transaction() as db:
            db.execute(
                f"UPDATE instances SET {assignments} WHERE id = ?", (*values.values(), row_id)
            )

    def fail(self, row_id: int, error: str, *, retry_in: float, permanent: bool = False) -> None:
        """Note a failed attempt and when to try again; a permanent reason adds a strike."""
        with self.transaction() as db:
            db.execute(
                "UPDATE instances SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?,"
                " strikes = strikes + ? WHERE id = ?",
                (error, time.time() + retry_in, int(permanent), row_id),
            )

    def park(self, row_id: int, error: str) -> None:
        """Stop retrying a row: stage ``failed``, the stage it was at kept in ``parked_stage``.

        Nothing is deleted; :meth:`requeue` puts it back where it stopped.
        """
        with self.transaction() as db:
            db.execute(f"{_PARK} WHERE id = ? AND stage != ?", (PARKED, error, row_id, PARKED))

    def requeue(self, row_ids: list[int] | None = None) -> list[int]:
        """Put parked rows (all of them when ``row_ids`` is None) back at their stage, due now.

        Returns the ids that were re-queued; ids that are not parked are left alone.
        """
        with self.transaction() as db:
            if row_ids is None:
                ids = [int(r[0]) for r in db.execute(
                    "SELECT id FROM instances WHERE stage = ? ORDER BY id", (PARKED,)
                )]  # fmt: skip
            else:
                marks = ", ".join("?" for _ in row_ids)
                ids = [int(r[0]) for r in db.execute(
                    f"SELECT id FROM instances WHERE stage = ? AND id IN ({marks}) ORDER BY id",
                    (PARKED, *row_ids),
                )]  # fmt: skip
            for row_id in ids:
                db.execute(
                    "UPDATE instances SET stage = COALESCE(parked_stage, 'fingerprint'),"
                    " parked_stage = NULL, attempts = 0, strikes = 0, next_attempt_at = 0"
                    " WHERE id = ?",
                    (row_id,),
                )
        return ids

    def succeeded(self, row_id: int) -> None:
        """A step of the row worked: its permanent-failure strikes start again from zero."""
        with self.transaction() as db:
            db.execute("UPDATE instances SET strikes = 0 WHERE id = ? AND strikes > 0", (row_id,))

    def release(self, stage: str) -> int:
        """Make rows waiting at ``stage`` for a transient reason due now; returns how many.

        Called when a row got through ``stage``: the downstream is back, so the backlog
        need not wait out each row's own backoff.
        """
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE instances SET next_attempt_at = 0 WHERE stage = ? AND attempts > 0"
                " AND strikes = 0 AND next_attempt_at > ?",
                (stage, time.time()),
            )
            return int(cursor.rowcount)

    def claim_fingerprint(
        self, row_id: int, values: dict[str, Any], *, next_stage: str, duplicate_stage: str
    ) -> tuple[str, int, int | None]:
        """Atomically decide what a freshly fingerprinted row is: new, new version, or duplicate.

        The row moves to ``next_stage``, or to ``duplicate_stage`` when a row of the same
        record key holds the same digest (the pipeline's stage table names both). Returns
        the stage it moved to, its version (0 for a duplicate) and the row it duplicates.
        """
        with self.transaction() as db:
            return _claim_fingerprint(
                db, row_id, values, next_stage=next_stage, duplicate_stage=duplicate_stage
            )

    # -- stage moves of many rows in one commit (the pipeline's rounds) ----------------------

    def advance_many(
        self, moves: Sequence[StageMove], *, release: tuple[str, Sequence[int]] | None = None
    ) -> list[Landed]:
        """Record many rows' finished steps in one transaction (one commit, one fsync).

        ``release`` (worker, row ids): that worker's claims on those rows are dropped in the
        same transaction, as :meth:`unclaim` does (the rows are done, or wait).

        Each move sets its row's columns and stage as :meth:`update` would, or, for a move
        with a ``duplicate_stage`` (a fingerprint), decides new, new version or duplicate
        as :meth:`claim_fingerprint` does. Returns where each row landed, in ``moves``'
        order. Fingerprints are decided in record-key order (then row id), so that two
        claimers taking the same keys' locks never wait for each other in a cycle, and the
        older of two rows with the same bytes stays the original.
        """
        unknown = {name for move in moves for name in move.values} - set(COLUMNS)
        if unknown:
            raise KeyError(f"no such index columns: {sorted(unknown)}")
        order = sorted(
            range(len(moves)),
            key=lambda i: (moves[i].duplicate_stage is None, moves[i].record_key, moves[i].row_id),
        )  # fingerprints first, by key: their locks are taken in one order everywhere
        landed: dict[int, Landed] = {}
        with self.transaction() as db:
            for i in order:
                move = moves[i]
                if move.duplicate_stage is not None:
                    landed[i] = Landed(*_claim_fingerprint(
                        db, move.row_id, dict(move.values), next_stage=move.stage,
                        duplicate_stage=move.duplicate_stage,
                    ))  # fmt: skip
                    continue
                values = {**move.values, "stage": move.stage}
                assignments = ", ".join(f"{name} = ?" for name in values)
                db.execute(
                    f"UPDATE instances SET {assignments} WHERE id = ?",
                    (*values.values(), move.row_id),
                )
                landed[i] = Landed(move.stage, 0, None)
            if release is not None and release[1]:
                _unclaim(db, release[0], release[1])
        return [landed[i] for i in range(len(moves))]

    def rows_of(self, row_ids: Sequence[int]) -> list[Row]:
        """The rows with these ids, in the order given (ids with no row are left out)."""
        if not row_ids:
            return []
        marks = ", ".join("?" for _ in row_ids)
        found = {row.id: row for row in self._rows(f"WHERE id IN ({marks})", tuple(row_ids))}
        return [found[row_id] for row_id in row_ids if row_id in found]

    def versions_of(self, record_key: bytes, *, exclude: int | None = None) -> list[Row]:
        """Every version of this record key (:data:`~gateway.index.queries.IS_VERSION`), oldest first."""
        return self._rows(
            f"WHERE record_key = ? AND {IS_VERSION} AND id != ? ORDER BY id",
            (record_key, -1 if exclude is None else exclude),
        )

    def by_uid(self, sop_instance_uid: str) -> list[Row]:
        return self._rows("WHERE sop_instance_uid = ? ORDER BY id", (sop_instance_uid,))

    def by_record(self, record_key: bytes, digest: bytes) -> list[Row]:
        """Rows that hold this version (record key and digest), duplicates included."""
        return self._rows("WHERE record_key = ? AND digest = ? ORDER BY id", (record_key, digest))

    def by_record_key(self, record_key: bytes) -> list[Row]:
        """Every row of a record key, duplicates included, oldest first."""
        return self._rows("WHERE record_key = ? ORDER BY id", (record_key,))

    def batched(self) -> list[Row]:
        """Versions anchored through a batch (they carry a batch id and a proof)."""
        return self._rows(
            f"WHERE batch_id IS NOT NULL AND proof IS NOT NULL AND {IS_VERSION} ORDER BY id"
        )

    # -- Merkle batches -------------------------------------------------------------------

    def due_unbatched(self, stage: str, *, now: float | None = None, limit: int) -> list[Row]:
        """Due rows at ``stage`` that no open batch holds, oldest first."""
        return self._rows(
            "WHERE stage = ? AND next_attempt_at <= ? AND id NOT IN (SELECT m.row_id FROM"
            " batch_members m JOIN batches b ON b.id = m.batch WHERE b.state = 'open')"
            " ORDER BY id LIMIT ?",
            (stage, time.time() if now is None else now, limit),
        )

    def open_batch(self, *, root: bytes, members: list[int]) -> PendingBatch:
        """Persist a batch (root, count, members in leaf order) before it is sent.

        Raises
        ------
        ValueError
            A member already belongs to an open batch (it would be anchored twice).
        """
        with self.transaction() as db:
            db.serialize(b"batch_members")  # the check and the insert, one writer at a time
            marks = ", ".join("?" for _ in members)
            taken = db.execute(
                f"SELECT m.row_id FROM batch_members m JOIN batches b ON b.id = m.batch"
                f" WHERE b.state = 'open' AND m.row_id IN ({marks})",
                tuple(members),
            ).fetchall()
            if taken:
                raise ValueError(f"rows {[r for (r,) in taken]} are already in an open batch")
            (batch,) = db.execute(
                "INSERT INTO batches (root, count, created_at) VALUES (?, ?, ?) RETURNING id",
                (root, len(members), time.time()),
            ).fetchone()
            db.executemany(
                "INSERT INTO batch_members (batch, leaf_index, row_id) VALUES (?, ?, ?)",
                [(batch, i, row_id) for i, row_id in enumerate(members)],
            )
        return PendingBatch(int(batch), root, len(members), tuple(members), 0, None)

    def open_batches(
        self, *, now: float | None = None, due_only: bool = True
    ) -> list[PendingBatch]:
        """Persisted batches that have not landed (whose retry time has come), oldest first."""
        with self._lock:
            batches = self._db.execute(
                "SELECT id, root, count, attempts, last_error FROM batches WHERE state = 'open'"
                " AND (? = 0 OR next_attempt_at <= ?) ORDER BY id",
                (int(due_only), time.time() if now is None else now),
            ).fetchall()
            found = []
            for batch, root, count, attempts, last_error in batches:
                members = self._db.execute(
                    "SELECT row_id FROM batch_members WHERE batch = ? ORDER BY leaf_index", (batch,)
                ).fetchall()
                found.append(
                    PendingBatch(
                        int(batch),
                        bytes(root),
                        int(count),
                        tuple(int(m) for (m,) in members),
                        int(attempts),
                        last_error,
                    )
                )
            return found

    def fail_batch(
        self, batch: int, error: str, *, retry_in: float, permanent: bool = False
    ) -> None:
        """Note a failed send of a batch; it and each of its rows say why, and when it is retried.

        A permanent reason adds a strike to every member row, as :meth:`fail` does to one.
        """
        with self.transaction() as db:
            db.execute(
                "UPDATE batches SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
                " WHERE id = ?",
                (error, time.time() + retry_in, batch),
            )
            db.execute(
                "UPDATE instances SET attempts = attempts + 1, last_error = ?,"
                " strikes = strikes + ? WHERE id IN"
                " (SELECT row_id FROM batch_members WHERE batch = ?)",
                (error, int(permanent), batch),
            )

    def abandon_batch(self, batch: int, error: str) -> None:
        """Give up on an open batch that never landed: its rows are parked at ``failed``.

        The batch and its membership are deleted (it is not on the chain), so that the rows,
        once re-queued by :meth:`requeue`, join a new batch.
        """
        with self.transaction() as db:
            db.execute(
                f"{_PARK} WHERE id IN (SELECT row_id FROM batch_members WHERE batch = ?)"
                " AND stage != ?",
                (PARKED, error, batch, PARKED),
            )
            db.execute("DELETE FROM batch_members WHERE batch = ?", (batch,))
            db.execute("DELETE FROM batches WHERE id = ? AND state = 'open'", (batch,))

    def release_batches(self) -> int:
        """Make open batches that failed for a transient reason due now; returns how many."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE batches SET next_attempt_at = 0 WHERE state = 'open' AND attempts > 0"
                " AND next_attempt_at > ? AND id NOT IN (SELECT m.batch FROM batch_members m"
                " JOIN instances i ON i.id = m.row_id WHERE i.strikes > 0)",
                (time.time(),),
            )
            return int(cursor.rowcount)

    def close_batch(
        self, batch: int, *, batch_id: int, tx_hash: str, block_number: int,
        rows: dict[int, dict[str, Any]],
    ) -> None:  # fmt: skip
        """The batch landed: mark it and set every member row's values, in one transaction."""
        with self.transaction() as db:
            db.execute(
                "UPDATE batches SET state = 'landed', batch_id = ?, tx_hash = ?, block_number = ?,"
                " last_error = NULL WHERE id = ?",
                (batch_id, tx_hash, block_number, batch),
            )
            for row_id, values in rows.items():
                unknown = set(values) - set(COLUMNS)
                if unknown:
                    raise KeyError(f"no such index columns: {sorted(unknown)}")
                assignments = ", ".join(f"{name} = ?" for name in values)
                db.execute(
                    f"UPDATE instances SET {assignments} WHERE id = ?", (*values.values(), row_id)
                )

    def reopen_batches(self, tx_hash: str) -> list[PendingBatch]:
        """Mark the landed batches of ``tx_hash`` open again (the chain lost them); returns them."""
        with self.transaction() as db:
            ids = [
                int(batch)
                for (batch,) in db.execute(
                    "SELECT id FROM batches WHERE state = 'landed' AND tx_hash = ?", (tx_hash,)
                ).fetchall()
            ]
            db.execute(
                "UPDATE batches SET state = 'open', attempts = 0, next_attempt_at = 0,"
                " last_error = NULL WHERE state = 'landed' AND tx_hash = ?",
                (tx_hash,),
            )
        return [batch for batch in self.open_batches(due_only=False) if batch.id in ids]

    def batch_counts(self) -> dict[str, int]:
        """Merkle batches per state (``open``, ``landed``)."""
        with self._lock:
            cursor = self._db.execute("SELECT state, COUNT(*) FROM batches GROUP BY state")
            return {str(state): int(count) for state, count in cursor.fetchall()}

    def anchored_newest_first(self, *, limit: int, offset: int = 0) -> list[Row]:
        """Rows past the anchor stage with their transaction, newest block first."""
        return self._rows(
            "WHERE tx_hash IS NOT NULL AND stage IN ('forward', 'committed', 'conflict')"
            " ORDER BY block_number DESC, id DESC LIMIT ? OFFSET ?",
            (limit, offset),
        )

    def by_study(self, study_instance_uid: str) -> list[Row]:
        return self._rows("WHERE study_instance_uid = ? ORDER BY id", (study_instance_uid,))

    def all(self) -> list[Row]:
        return self._rows("ORDER BY id")

    def stage_counts(self) -> dict[str, int]:
        with self._lock:
            cursor = self._db.execute("SELECT stage, COUNT(*) FROM instances GROUP BY stage")
            return {str(stage): int(count) for stage, count in cursor.fetchall()}

    def waiting_per_node(self) -> dict[str, int]:
        """Rows with work left before ``anchor``, per node that received them (``""``: rows
        from before node ids): only that node can work them (its spool holds the bytes)."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT COALESCE(received_by, ''), COUNT(*) FROM instances"
                " WHERE stage IN ('fingerprint', 'seal', 'put', 'forward') GROUP BY received_by"
            )
            return {str(node): int(count) for node, count in cursor.fetchall()}

    # -- what `status` and /metrics show ----------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only statement (for modules that keep their own table here).

        Written in SQLite's spelling with ``?`` placeholders; it runs on either engine.
        """
        with self._lock:
            return [tuple(values) for values in self._db.execute(sql, params).fetchall()]

    def activity(self, *, since: float, bucket_s: int) -> list[tuple[int, int, int]]:
        """Images received and anchored per ``bucket_s`` seconds since ``since`` (the console's
        chart): ``(bucket start, received, anchored)``, oldest first, empty buckets left out.

        Bucketed in SQL on whole seconds, rounded down: a cast rounds on PostgreSQL and
        truncates on SQLite, so the CASE takes one off where the cast went up; integer
        division is then the same on both engines.
        """
        counts: dict[int, list[int]] = {}
        for column, slot in (("received_at", 0), ("anchored_at", 1)):
            whole = f"CAST({column} AS BIGINT)"
            second = f"(CASE WHEN {whole} > {column} THEN {whole} - 1 ELSE {whole} END)"
            for start, count in self.query(
                f"SELECT ({second} / ?) * ?, COUNT(*) FROM instances"
                f" WHERE {column} >= ? GROUP BY 1",
                (bucket_s, bucket_s, since),
            ):
                counts.setdefault(int(start), [0, 0])[slot] += int(count)
        return [(start, counts[start][0], counts[start][1]) for start in sorted(counts)]

    def maintain(self, sql: str) -> None:
        """Run a maintenance statement outside any transaction: a PRAGMA, VACUUM (erasure)."""
        with self._lock:
            self._db.execute(sql)

    def oldest_pending(self) -> Row | None:
        """The row with work left that was received first."""
        rows = self._rows(
            f"WHERE stage NOT IN ({', '.join('?' for _ in DONE_STAGES)}) ORDER BY id LIMIT 1",
            DONE_STAGES,
        )
        return rows[0] if rows else None

    def failing(self, limit: int = 20) -> list[Row]:
        """Rows with work left whose last attempt failed, most recently failed first."""
        return self._rows(
            f"WHERE stage NOT IN ({', '.join('?' for _ in DONE_STAGES)}) AND attempts > 0"
            " ORDER BY next_attempt_at DESC, id DESC LIMIT ?",
            (*DONE_STAGES, limit),
        )

    def parked(self, limit: int = 20) -> list[Row]:
        """Rows parked at stage ``failed``, oldest first."""
        return self._rows("WHERE stage = ? ORDER BY id LIMIT ?", (PARKED, limit))

    def parked_counts(self) -> dict[tuple[str, str], int]:
        """Parked rows per (stage they stopped at, error class)."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT parked_stage, last_error, COUNT(*) FROM instances WHERE stage = ?"
                " GROUP BY parked_stage, last_error",
                (PARKED,),
            )
            counts: dict[tuple[str, str], int] = {}
            for stage, error, count in cursor.fetchall():
                key = (str(stage or "unknown"), error_class(error))
                counts[key] = counts.get(key, 0) + int(count)
            return counts

    def failure_counts(self) -> dict[tuple[str, str], int]:
        """Failing rows (work left, attempts > 0) per (stage, error class)."""
        with self._lock:
            cursor = self._db.execute(
                f"SELECT stage, last_error, COUNT(*) FROM instances WHERE stage NOT IN"
                f" ({', '.join('?' for _ in DONE_STAGES)}) AND attempts > 0"
                " GROUP BY stage, last_error",
                DONE_STAGES,
            )
            counts: dict[tuple[str, str], int] = {}
            for stage, error, count in cursor.fetchall():
                key = (str(stage), error_class(error))
                counts[key] = counts.get(key, 0) + int(count)
            return counts

    # -- claims: which worker process works a row, for how long -----------------------------
    #
    # A worker claims due rows in one transaction, renews its claims while it lives, and
    # drops a row's claim when the row waits or is done. A dead worker's claims run out
    # after the lease, or at once when a worker starts again under the same id.
    #
    # Claimers never queue behind each other on PostgreSQL: a claim's SELECT takes row
    # locks ``FOR UPDATE SKIP LOCKED``, so a row another claimer is taking right now is
    # passed over (and once that claimer commits, its claim excludes the row anyway). On
    # SQLite the claim transaction is ``BEGIN IMMEDIATE``: one claimer at a time. No claim
    # waits for a row lock, so claims cannot deadlock with ``renew_claims`` or
    # ``unclaim``, which update many rows in no particular order.

    _FREE = "(claimed_by IS NULL OR claim_until <= ?)"

    def claim_due(
        self, worker: str, *, stages: tuple[str, ...], limit: int, lease_s: float,
        anywhere: tuple[str, ...] = (), now: float | None = None,
    ) -> list[Row]:  # fmt: skip
        """Claim up to ``limit`` due rows at ``stages`` that no live claim holds, oldest first.

        Only rows the worker's node received (``<node>/…``, :mod:`gateway.core.nodes`), or
        that no node is named for, or at one of the stages ``anywhere`` (the pipeline's
        stage table says which need no local file: the others read the receiving node's
        spool and sealed dir).
        """
        if limit <= 0 or not stages:
            return []
        now = time.time() if now is None else now
        marks = ", ".join("?" for _ in stages)
        free_stages = ", ".join("?" for _ in anywhere) or "NULL"
        with self.transaction() as db:
            ids = [int(r[0]) for r in db.execute(
                f"SELECT id FROM instances WHERE stage IN ({marks}) AND next_attempt_at <= ?"
                f" AND {self._FREE} AND (received_by IS NULL OR received_by = ?"
                f" OR stage IN ({free_stages})) ORDER BY id LIMIT ?{db.row_lock('skip')}",
                (*stages, now, now, node_of(worker), *anywhere, limit),
            )]  # fmt: skip
            return self._mark_claimed(db, worker, ids, now + lease_s)

    def claim_unbatched(
        self, worker: str, stage: str, *, limit: int, lease_s: float, now: float | None = None
    ) -> list[Row]:
        """Claim the due rows at ``stage`` that no open batch holds, no other worker's live
        claim holds (this worker's own are renewed), oldest first: the rows one batch thread
        may cut a batch from, so that no two cut batches from the same rows."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            ids = [int(r[0]) for r in db.execute(
                "SELECT id FROM instances WHERE stage = ? AND next_attempt_at <= ?"
                f" AND ({self._FREE} OR claimed_by = ?) AND id NOT IN (SELECT m.row_id FROM"
                " batch_members m JOIN batches b ON b.id = m.batch WHERE b.state = 'open')"
                f" ORDER BY id LIMIT ?{db.row_lock('skip')}",
                (stage, now, now, worker, limit),
            )]  # fmt: skip
            return self._mark_claimed(db, worker, ids, now + lease_s)

    def claim_batch(
        self, worker: str, batch: int, *, lease_s: float, now: float | None = None
    ) -> bool:
        """Claim every member of an open batch, unless another worker's live claim holds one.

        All or nothing: on PostgreSQL the members are locked ``FOR UPDATE NOWAIT``, and a
        member another transaction has locked (another claimer at this batch) makes the
        claim fail at once rather than wait; the batch is tried again at its next turn.
        """
        now = time.time() if now is None else now
        try:
            with self.transaction() as db:
                ids = [int(r[0]) for r in db.execute(
                    "SELECT row_id FROM batch_members WHERE batch = ?", (batch,)
                )]  # fmt: skip
                marks = ", ".join("?" for _ in ids)
                held = [
                    claimed_by for claimed_by, until in db.execute(
                        f"SELECT claimed_by, claim_until FROM instances WHERE id IN ({marks})"
                        f" ORDER BY id{db.row_lock('nowait')}",
                        tuple(ids),
                    )
                    if claimed_by is not None and claimed_by != worker and until > now
                ]  # fmt: skip
                if held:
                    return False
                self._mark_claimed(db, worker, ids, now + lease_s)
                return True
        except LOCK_BUSY_ERRORS:  # another claimer holds a member right now
            return False

    def _mark_claimed(self, db: Connection, worker: str, ids: list[int], until: float) -> list[Row]:
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        db.execute(
            f"UPDATE instances SET claimed_by = ?, claim_until = ? WHERE id IN ({marks})",
            (worker, until, *ids),
        )
        return self._rows(f"WHERE id IN ({marks}) ORDER BY id", tuple(ids))

    def unclaim(self, worker: str, row_ids: list[int] | tuple[int, ...]) -> None:
        """Drop this worker's claims on these rows (they wait, or are done)."""
        if not row_ids:
            return
        with self.transaction() as db:
            _unclaim(db, worker, row_ids)

    def renew_claims(self, worker: str, *, lease_s: float) -> int:
        """Extend every claim this worker holds by the lease; returns how many."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE instances SET claim_until = ? WHERE claimed_by = ?",
                (time.time() + lease_s, worker),
            )
            return int(cursor.rowcount)

    def release_claims(self, worker: str) -> int:
        """Drop every claim of ``worker`` (it starts again: what it held is due at once)."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE instances SET claimed_by = NULL, claim_until = 0 WHERE claimed_by = ?",
                (worker,),
            )
            return int(cursor.rowcount)

    def claim_counts(self, *, now: float | None = None) -> dict[str, int]:
        """Live claims per worker (none on an index from before worker processes)."""
        with self._lock:
            if "claimed_by" not in self._db.columns("instances"):
                return {}
            cursor = self._db.execute(
                "SELECT claimed_by, COUNT(*) FROM instances WHERE claimed_by IS NOT NULL"
                " AND claim_until > ? GROUP BY claimed_by",
                (time.time() if now is None else now,),
            )
            return {str(worker): int(count) for worker, count in cursor.fetchall()}


def _claim_fingerprint(
    db: Connection, row_id: int, values: dict[str, Any], *, next_stage: str, duplicate_stage: str
) -> tuple[str, int, int | None]:
    """Inside a transaction: :meth:`Index.claim_fingerprint`'s decision and update."""
    db.serialize(values["record_key"])  # two claims of one record never interleave
    cursor = db.execute(
        "SELECT id, digest, version FROM instances WHERE record_key = ? AND id != ?"
        f" AND {IS_FINGERPRINTED_VERSION} ORDER BY id",
        (values["record_key"], row_id),
    )
    others = cursor.fetchall()
    same = [other_id for other_id, digest, _ in others if digest == values["digest"]]
    if same:
        stage, version, duplicate_of = duplicate_stage, 0, int(same[0])
    else:
        stage = next_stage
        version = 1 + max((int(v or 0) for _, _, v in others), default=0)
        duplicate_of = None
    values = {**values, "stage": stage, "version": version or None, "attempts": 0,
              "last_error": None, "next_attempt_at": 0}  # fmt: skip
    assignments = ", ".join(f"{name} = ?" for name in values)
    db.execute(f"UPDATE instances SET {assignments} WHERE id = ?", (*values.values(), row_id))
    return stage, version, duplicate_of


def _unclaim(db: Connection, worker: str, row_ids: Sequence[int]) -> None:
    """Inside a transaction: drop ``worker``'s claims on these rows."""
    marks = ", ".join("?" for _ in row_ids)
    db.execute(
        f"UPDATE instances SET claimed_by = NULL, claim_until = 0 WHERE claimed_by = ?"
        f" AND id IN ({marks})",
        (worker, *row_ids),
    )


def error_class(last_error: str | None) -> str:
    """The exception class in a ``last_error`` (``"<stage>: <Class>: <message>"``)."""
    parts = (last_error or "").split(": ")
    for part in parts[1:2] or parts[:1]:
        name = part.strip()
        if name.isidentifier():
            return name
    return "unknown"
