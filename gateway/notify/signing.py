"""Standard Webhooks signatures (https://www.standardwebhooks.com/): HMAC-SHA256 (pure).

Three headers go with each delivery: ``webhook-id`` (the event's stable id),
``webhook-timestamp`` (seconds since the epoch, when this attempt was signed) and
``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``. The
secret is the spec's ``whsec_<base64>`` (or, in a file that holds no such prefix, its raw
bytes), read from ``GATEWAY_WEBHOOK_SECRET_FILE`` (0600).

Written on :mod:`hmac` rather than the ``standardwebhooks`` package: the scheme is one
HMAC, and the package would bring four more dependencies (attrs, python-dateutil,
Deprecated and their stubs). The unit tests check it against the spec's published vector.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

from gateway.errors import ConfigError
from gateway.keyfiles import read_secret

PREFIX = "whsec_"
#: The oldest signature a receiver should accept (the spec's suggestion: five minutes).
TOLERANCE_S = 300


def secret_from(text: bytes) -> bytes:
    """The HMAC key a secret file's content stands for."""
    stripped = text.strip()
    if stripped.startswith(PREFIX.encode()):
        try:
            return base64.b64decode(stripped[len(PREFIX) :], validate=True)
        except ValueError:
            raise ConfigError("the webhook secret is whsec_ followed by invalid base64") from None
    if len(stripped) < 16:
        raise ConfigError("the webhook secret is shorter than 16 bytes")
    return stripped


def load_secret(path: Path) -> bytes:
    """The webhook signing key from ``path`` (refused unless mode 0600; never shown)."""
    return secret_from(read_secret(path))


def signature(secret: bytes, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value: ``v1,<base64>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


def headers(secret: bytes, *, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header of one signed delivery."""
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id=msg_id, timestamp=timestamp, body=body),
    }


def verify(
    secret: bytes,
    *,
    received: dict[str, str],
    body: bytes,
    now: float,
    tolerance_s: int = TOLERANCE_S,
) -> bool:
    """Whether ``received`` (lower-case header names) signs ``body`` with ``secret``, within
    ``tolerance_s`` of ``now``: what a receiver does (any one of the space-separated
    signatures may match)."""
    try:
        msg_id = received["webhook-id"]
        timestamp = int(received["webhook-timestamp"])
        offered = received["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = signature(secret, msg_id=msg_id, timestamp=timestamp, body=body)
    return any(hmac.compare_digest(expected, sig) for sig in offered)
