"""Console sessions: a signed cookie naming a server-side session that expires, and CSRF checks.

Logging in to ``/console`` trades an API token for a session. The token itself is never
kept: the server holds ``(principal, expiry)`` under a random session id, and the browser
holds that id signed with ``itsdangerous`` under a key in ``<data>/keys/console-session.key``
(0600, created on first start, never a default). The cookie is ``HttpOnly``,
``SameSite=Strict`` and ``Secure`` when the page came over TLS. A session ends at logout,
at its expiry (``GATEWAY_CONSOLE_SESSION_S``), when its token is revoked, or when the
gateway restarts (the ids live in memory; the signature alone opens nothing).

A state-changing request (any POST) must also come from the console's own pages:
SameSite=Strict keeps the cookie off cross-site requests, and :func:`same_origin` refuses
a request whose ``Origin`` (or, without one, ``Sec-Fetch-Site``) names another site, or
that carries neither an ``Origin`` nor htmx's ``HX-Request`` header.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request

from gateway.api.auth import Principal
from gateway.keyfiles import read_secret, write_secret

#: The cookie's name.
SESSION_COOKIE = "xray_console"
#: The signing key's length in bytes.
KEY_BYTES = 32
_SALT = "xray-gateway console session"


def ensure_session_key(path: Path) -> bytes:
    """The console's signing key in ``path`` (0600), created on first start."""
    if not path.exists():
        write_secret(path, secrets.token_bytes(KEY_BYTES))
    return read_secret(path)


@dataclass(frozen=True)
class Session:
    """One logged-in browser: who, and until when."""

    id: str
    principal: Principal
    expires_at: float


class Sessions:
    """The live console sessions of this process.

    Parameters
    ----------
    key:
        The signing key (:func:`ensure_session_key`).
    lifetime_s:
        How long a session lasts after login.
    still_valid:
        Whether a principal's token still exists with that role (a revoked token's
        sessions end at their next request).
    clock:
        Wall-clock seconds (tests pass their own).
    """

    def __init__(
        self,
        *,
        key: bytes,
        lifetime_s: float,
        still_valid: Callable[[Principal], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = URLSafeTimedSerializer(key, salt=_SALT)
        self.lifetime_s = lifetime_s
        self._still_valid = still_valid
        self._clock = clock
        self._live: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, principal: Principal) -> str:
        """A new session for ``principal``; returns the cookie's value."""
        session = Session(secrets.token_urlsafe(24), principal, self._clock() + self.lifetime_s)
        with self._lock:
            self._drop_expired()
            self._live[session.id] = session
        return self._signer.dumps(session.id)

    def find(self, cookie: str | None) -> Session | None:
        """The live session a cookie names, or ``None`` (unsigned, unknown, expired, revoked)."""
        session_id = self._session_id(cookie)
        if session_id is None:
            return None
        with self._lock:
            session = self._live.get(session_id)
            if session is None:
                return None
            if session.expires_at <= self._clock() or not self._still_valid(session.principal):
                del self._live[session_id]
                return None
            return session

    def close(self, cookie: str | None) -> None:
        """End the session a cookie names (logout); nothing if there is none."""
        session_id = self._session_id(cookie)
        if session_id is not None:
            with self._lock:
                self._live.pop(session_id, None)

    def _session_id(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            value = self._signer.loads(cookie, max_age=int(self.lifetime_s) + 1)
        except BadSignature:  # a forged, altered or expired signature
            return None
        return value if isinstance(value, str) else None

    def _drop_expired(self) -> None:
        now = self._clock()
        for session_id in [key for key, s in self._live.items() if s.expires_at <= now]:
            del self._live[session_id]


def same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from the console's own pages (CSRF check)."""
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == f"{request.url.scheme}://{request.url.netloc}"
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    return request.headers.get("hx-request") == "true"
