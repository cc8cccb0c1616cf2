"""Console sessions: a signed cookie naming a live server-side session; expiry, logout,
revocation; the signing key's file; the CSRF check."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request

from gateway.api.auth import Principal
from gateway.api.sessions import Sessions, ensure_session_key, same_origin

ALICE = Principal("alice", "auditor")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def sessions(tmp_path: Path, clock: Clock, valid: set[Principal] | None = None) -> Sessions:
    key = ensure_session_key(tmp_path / "keys" / "console-session.key")
    allowed = valid if valid is not None else {ALICE}
    return Sessions(key=key, lifetime_s=600, still_valid=lambda p: p in allowed, clock=clock)


def test_the_signing_key_is_a_private_file_made_once(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "console-session.key"
    key = ensure_session_key(path)
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert ensure_session_key(path) == key


def test_a_session_lives_until_logout(tmp_path: Path) -> None:
    live = sessions(tmp_path, Clock())
    cookie = live.open(ALICE)
    found = live.find(cookie)
    assert found is not None and found.principal == ALICE
    live.close(cookie)
    assert live.find(cookie) is None


def test_a_session_expires(tmp_path: Path) -> None:
    clock = Clock()
    live = sessions(tmp_path, clock)
    cookie = live.open(ALICE)
    clock.now += 599
    assert live.find(cookie) is not None
    clock.now += 2
    assert live.find(cookie) is None


def test_a_revoked_token_ends_its_sessions(tmp_path: Path) -> None:
    valid = {ALICE}
    live = sessions(tmp_path, Clock(), valid)
    cookie = live.open(ALICE)
    valid.clear()
    assert live.find(cookie) is None


def test_a_forged_or_foreign_cookie_opens_nothing(tmp_path: Path) -> None:
    live = sessions(tmp_path, Clock())
    cookie = live.open(ALICE)
    assert live.find(cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")) is None
    assert live.find("not-a-cookie") is None and live.find(None) is None
    other = Sessions(key=b"\x01" * 32, lifetime_s=600, still_valid=lambda p: True, clock=Clock())
    assert other.find(cookie) is None  # signed with another key
    # a session id signed with the right key but never opened (e.g. before a restart)
    restarted = sessions(tmp_path, Clock())
    assert restarted.find(cookie) is None


def request(headers: dict[str, str]) -> Request:
    scope = {
        "type": "http", "method": "POST", "path": "/console/logout", "scheme": "http",
        "server": ("127.0.0.1", 8000), "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000")]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }  # fmt: skip
    return Request(scope)


def test_only_requests_from_the_console_itself_may_change_state() -> None:
    assert same_origin(request({"Origin": "http://127.0.0.1:8000"}))
    assert not same_origin(request({"Origin": "http://evil.example"}))
    assert not same_origin(request({"Origin": "null"}))
    assert same_origin(request({"HX-Request": "true", "Sec-Fetch-Site": "same-origin"}))
    assert not same_origin(request({"HX-Request": "true", "Sec-Fetch-Site": "cross-site"}))
    assert not same_origin(request({}))  # neither an Origin nor htmx's header
