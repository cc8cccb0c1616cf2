"""What ``xray-gateway status`` shows: the ingest queue, read from the index without writing.

Rows per stage, the oldest row with work left, the rows failing now, the rows parked at
stage ``failed``, the rows each worker process holds, and the Storage Commitment requests
(:class:`CommitmentLog`), for the whole index and per gateway node. No
patient data: a row is named by a prefix of its record key, or of its spool entry before
it is fingerprinted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gateway.core.nodes import SEPARATOR, node_of
from gateway.errors import ConfigError, IndexSchemaTooNew, IndexUnavailable
from gateway.index.db import DONE_STAGES, STAGES, Index, Row
from gateway.index.engine import DATABASE_ERRORS, describe
from gateway.ingest.commitment import CommitmentLog, Undelivered

# What opening or reading an index may raise when it is missing or cannot be read.
_UNREADABLE: tuple[type[Exception], ...] = (FileNotFoundError, IndexUnavailable, *DATABASE_ERRORS)

#: The commitment request states ``status`` counts, in the order it prints them.
COMMITMENT_STATES = ("open", "ready", "reported")


def status_report(
    location: Path | str, *, limit: int = 10, now: float | None = None
) -> dict[str, Any]:
    """The index at ``path`` as ``status`` prints it (and ``status --json`` dumps it).

    Parameters
    ----------
    location:
        The index database (a SQLite file or a ``postgresql://`` URL); opened read-only,
        whether or not a gateway has it open. Shown without its password.
    limit:
        The most failing rows, parked rows and undelivered reports to list.
    now:
        The time ages and retry delays are counted from (default: the clock).

    Raises
    ------
    ConfigError
        There is no index at ``location``, or it cannot be read.
    IndexSchemaTooNew
        A newer gateway wrote the index.
    """
    where = describe(location)
    try:
        index = Index(location, readonly=True)
    except IndexSchemaTooNew:
        raise
    except _UNREADABLE as exc:
        raise ConfigError(f"cannot read the index at {where}: {exc}") from None
    now = time.time() if now is None else now
    try:
        counts = index.stage_counts()
        oldest = index.oldest_pending()
        failing = index.failing(limit)
        parked = index.parked(limit)
        commitments, undelivered = _commitments(CommitmentLog(index, readonly=True), limit)
        claims = index.claim_counts(now=now)
        per_node = _per_node_commitments(CommitmentLog(index, readonly=True))
        waiting = _waiting_per_node(index)
    finally:
        index.close()
    stages = [*STAGES, *(st for st in DONE_STAGES if st not in STAGES)]
    stages += sorted(set(counts) - set(stages))
    return {
        "index": where,
        "stages": {stage: counts.get(stage, 0) for stage in stages},
        "pending": sum(n for stage, n in counts.items() if stage not in DONE_STAGES),
        "oldest_pending": None if oldest is None else _oldest(oldest, now),
        "failing": [_failing(row, now) for row in failing],
        "parked": [_parked(row) for row in parked],
        "claims": claims,  # rows each worker process holds now (live leases)
        "commitment_requests": {state: commitments.get(state, 0) for state in COMMITMENT_STATES},
        "commitment_undelivered": [item._asdict() for item in undelivered],
        "nodes": nodes_report(claims, per_node, waiting),
    }


def nodes_report(
    claims: dict[str, int],
    commitments: dict[str, dict[str, int]],
    waiting: dict[str, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per gateway node sharing the index: the rows only it can work (``waiting``: received
    by it, not yet sealed, stored or forwarded), the rows its workers hold (per worker, by
    its id on the node) and its Storage Commitment requests per state. A node shows once
    it has any of these; ``""`` is rows, claims or requests from before node ids."""
    nodes: dict[str, dict[str, Any]] = {}

    def node(name: str) -> dict[str, Any]:
        return nodes.setdefault(name, {
            "waiting": 0, "claims": 0, "workers": {},
            "commitment_requests": dict.fromkeys(COMMITMENT_STATES, 0),
        })  # fmt: skip

    for worker, count in claims.items():
        entry = node(node_of(worker))
        entry["claims"] += count
        entry["workers"][worker.rpartition(SEPARATOR)[2]] = count
    for name, states in commitments.items():
        node(name)["commitment_requests"].update(states)
    for name, count in (waiting or {}).items():
        node(name)["waiting"] = count
    return dict(sorted(nodes.items()))


def _waiting_per_node(index: Index) -> dict[str, int]:
    try:
        return index.waiting_per_node()
    except DATABASE_ERRORS:  # an index from before node ids
        return {}


def _per_node_commitments(log: CommitmentLog) -> dict[str, dict[str, int]]:
    try:
        return log.counts_per_node()
    except DATABASE_ERRORS:  # an index from before node ids
        return {}


def _commitments(log: CommitmentLog, limit: int) -> tuple[dict[str, int], list[Undelivered]]:
    try:
        return log.counts(), log.undelivered(limit)
    except DATABASE_ERRORS:  # an index from before Storage Commitment
        return {}, []


def _name(row: Row) -> str:
    return row.record_key.hex()[:12] if row.record_key else f"entry {row.entry_id[:8]}"


def _oldest(row: Row, now: float) -> dict[str, Any]:
    return {
        "record": _name(row),
        "stage": row.stage,
        "age_s": round(now - row.received_at, 1),
        "attempts": row.attempts,
        "last_error": row.last_error,
    }


def _failing(row: Row, now: float) -> dict[str, Any]:
    return {
        "record": _name(row),
        "stage": row.stage,
        "attempts": row.attempts,
        "next_attempt_in_s": round(max(0.0, row.next_attempt_at - now), 1),
        "last_error": row.last_error,
    }


def _parked(row: Row) -> dict[str, Any]:
    return {
        "row": row.id,
        "record": _name(row),
        "stage": row.parked_stage,
        "attempts": row.attempts,
        "last_error": row.last_error,
    }
