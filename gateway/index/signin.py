"""Sign-In with Ethereum's state in the index (SQL only): single-use nonces and sessions.

Both live in the shared index, so that a nonce given out by one gateway node can be
redeemed at another and a session opened at one is honoured by all. A session is kept
under its token's SHA-256 only: the index never holds a usable token.
"""

from __future__ import annotations

from gateway.index.db import Index


def add_nonce(index: Index, nonce: str, *, now: float, expires_at: float) -> None:
    """Keep a nonce just given out, and drop the nonces and sessions that are over."""
    with index.transaction() as db:
        db.execute("DELETE FROM siwe_nonces WHERE expires_at <= ?", (now,))
        db.execute("DELETE FROM siwe_sessions WHERE expires_at <= ?", (now,))
        db.execute(
            "INSERT INTO siwe_nonces (nonce, issued_at, expires_at) VALUES (?, ?, ?)",
            (nonce, now, expires_at),
        )


def use_nonce(index: Index, nonce: str, *, now: float) -> bool:
    """Spend a nonce: True once for a nonce given out and not expired, False ever after
    (one UPDATE: two nodes redeeming the same nonce at once cannot both win)."""
    with index.transaction() as db:
        used = db.execute(
            "UPDATE siwe_nonces SET used_at = ? WHERE nonce = ? AND used_at IS NULL"
            " AND expires_at > ?",
            (now, nonce, now),
        )
        return used.rowcount == 1


def open_session(
    index: Index, token_sha256: str, *, address: str, now: float, expires_at: float
) -> None:
    """Keep a new session of ``address`` under its token's SHA-256."""
    with index.transaction() as db:
        db.execute(
            "INSERT INTO siwe_sessions (token_sha256, address, issued_at, expires_at)"
            " VALUES (?, ?, ?, ?)",
            (token_sha256, address, now, expires_at),
        )


def session_address(index: Index, token_sha256: str, *, now: float) -> str | None:
    """The address a live session's token belongs to (None: unknown or over)."""
    found = index.query(
        "SELECT address FROM siwe_sessions WHERE token_sha256 = ? AND expires_at > ?",
        (token_sha256, now),
    )
    return str(found[0][0]) if found else None


def has_session(index: Index, address: str, *, now: float) -> bool:
    """Whether ``address`` holds a live session."""
    found = index.query(
        "SELECT 1 FROM siwe_sessions WHERE address = ? AND expires_at > ? LIMIT 1",
        (address, now),
    )
    return bool(found)


def close_sessions(index: Index, address: str) -> int:
    """End every session of ``address``; returns how many there were."""
    with index.transaction() as db:
        return int(db.execute("DELETE FROM siwe_sessions WHERE address = ?", (address,)).rowcount)
