"""The chain-request queue in the index (SQL only): chain writes the anchoring worker sends.

The recorder account has one sender, the node's anchoring worker (its nonces come from one
process). Grants, revocations and erasure's retirements asked for through the API or the
CLI are queued here (``queued``), claimed one at a time in id order by that worker
(``sending``), and marked with their outcome once mined (``done``: transaction, block and
result, e.g. the grant id) or refused (``failed``: the error's type and message). A row
left ``sending`` by a worker that died is marked ``failed`` when the worker starts again,
never sent twice: whether it reached the chain is for the chain to say (its hash, if any,
is in the sender's log). The payload holds keys, UIDs and names, never a PatientID.

A request is for a node (``node``: its worker sends grants and revocations asked there), or
for a recorder account (``recorder``: only that account may send it, e.g. the retirement of
a record the contract lets only its owner retire). The worker of the node that holds that
account's key sends it, whichever node queued it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.index.db import Index

QUEUED, SENDING, DONE, FAILED = "queued", "sending", "done", "failed"
INTERRUPTED = "Interrupted"  # the error type of a request its worker died while sending

_COLUMNS = (
    "id, node, kind, payload, asked_by, asked_at, state, done_at, tx_hash, block_number,"
    " result, error_type, error, recorder"
)

#: The requests a worker sends: its node's own, and those for its recorder account.
_MINE = "((node = ? AND recorder IS NULL) OR recorder = ?)"


@dataclass(frozen=True)
class ChainRequest:
    """One queued chain write and, once it is settled, its outcome."""

    id: int
    node: str
    kind: str
    payload: dict[str, Any]
    asked_by: str
    asked_at: float
    state: str
    done_at: float | None
    tx_hash: str | None
    block_number: int | None
    result: int | None
    error_type: str | None
    error: str | None
    recorder: str | None = None

    @property
    def settled(self) -> bool:
        return self.state in (DONE, FAILED)


def _request(values: Sequence[Any]) -> ChainRequest:
    (id_, node, kind, payload, asked_by, asked_at, state, done_at, tx_hash, block, result,
     error_type, error, recorder) = values  # fmt: skip
    return ChainRequest(
        int(id_), node, kind, json.loads(payload), asked_by, float(asked_at), state,
        None if done_at is None else float(done_at), tx_hash,
        None if block is None else int(block), None if result is None else int(result),
        error_type, error, recorder,
    )  # fmt: skip


def account(address: str | None) -> str | None:
    """A recorder address as the queue keeps it (lower case), None for none."""
    return None if address is None else address.lower()


def enqueue(
    index: Index, *, node: str, kind: str, payload: dict[str, Any], asked_by: str,
    recorder: str | None = None,
) -> int:  # fmt: skip
    """Queue a write for ``node``'s anchoring worker, or, given ``recorder``, for the worker
    that sends with that account; returns the request's id."""
    with index.transaction() as db:
        row = db.execute(
            "INSERT INTO chain_requests (node, kind, payload, asked_by, asked_at, state,"
            " recorder) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (node, kind, json.dumps(payload, sort_keys=True), asked_by, time.time(), QUEUED,
             account(recorder)),
        ).fetchone()  # fmt: skip
    return int(row[0])


def claim(
    index: Index, *, node: str, worker: str, recorder: str | None = None
) -> ChainRequest | None:
    """The oldest queued request of the node, or for its ``recorder`` account, now
    ``sending`` as ``worker`` (None: none queued). One at a time, in id order: a revocation
    queued after a grant is sent after it."""
    due = f"SELECT id FROM chain_requests WHERE state = ? AND {_MINE} ORDER BY id LIMIT 1"
    mine = (QUEUED, node, account(recorder))
    if not index.query(due, mine):
        return None  # nothing queued: no write transaction
    with index.transaction() as db:
        found = db.execute(f"{due}{db.row_lock('skip')}", mine).fetchone()
        if found is None:
            return None
        db.execute(
            "UPDATE chain_requests SET state = ?, claimed_by = ? WHERE id = ?",
            (SENDING, worker, int(found[0])),
        )
        row = db.execute(
            f"SELECT {_COLUMNS} FROM chain_requests WHERE id = ?", (int(found[0]),)
        ).fetchone()
    return _request(row)


def interrupted(index: Index, *, node: str, recorder: str | None = None) -> int:
    """Mark ``failed`` every request of ``node`` (or for its ``recorder``) left ``sending``
    (its worker died); only the node's one anchoring worker calls this, as it starts.
    Returns how many."""
    with index.transaction() as db:
        cursor = db.execute(
            "UPDATE chain_requests SET state = ?, done_at = ?, error_type = ?, error = ?"
            f" WHERE state = ? AND {_MINE}",
            (FAILED, time.time(), INTERRUPTED,
             "the worker sending it stopped: look for its transaction on chain", SENDING, node,
             account(recorder)),
        )  # fmt: skip
        return int(cursor.rowcount)


def requeue(index: Index, request_id: int) -> None:
    """Put a claimed request back (the chain could not be reached: nothing was sent)."""
    with index.transaction() as db:
        db.execute(
            "UPDATE chain_requests SET state = ?, claimed_by = NULL WHERE id = ? AND state = ?",
            (QUEUED, request_id, SENDING),
        )


def finish(
    index: Index, request_id: int, *, tx_hash: str | None, block_number: int | None,
    result: int | None,
) -> None:  # fmt: skip
    """The request's transaction is mined: its hash, block and result."""
    with index.transaction() as db:
        db.execute(
            "UPDATE chain_requests SET state = ?, done_at = ?, tx_hash = ?, block_number = ?,"
            " result = ? WHERE id = ?",
            (DONE, time.time(), tx_hash, block_number, result, request_id),
        )


def fail(index: Index, request_id: int, *, error_type: str, error: str) -> None:
    """The request was refused (by the contract, the node, or before sending)."""
    with index.transaction() as db:
        db.execute(
            "UPDATE chain_requests SET state = ?, done_at = ?, error_type = ?, error = ?"
            " WHERE id = ?",
            (FAILED, time.time(), error_type, error, request_id),
        )


def get(index: Index, request_id: int) -> ChainRequest | None:
    """One request by id."""
    found = index.query(f"SELECT {_COLUMNS} FROM chain_requests WHERE id = ?", (request_id,))
    return _request(found[0]) if found else None
