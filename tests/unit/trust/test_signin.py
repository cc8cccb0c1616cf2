"""Sign-In with Ethereum's checks (index on SQLite): each refusal by its reason, the nonce
spent once across nodes, and the session's life. Messages are signed by eth_account keys."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from siwe import SiweMessage

from gateway.errors import SignInRefused
from gateway.index.db import Index
from gateway.trust.signin import TOKEN_PREFIX, SignIn

NOW = 1_800_000_000.0
DOMAIN, ORIGIN, CHAIN = "gateway.example:8000", "https://gateway.example:8000", 31337


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def index(tmp_path: Path) -> Index:
    return Index(tmp_path / "index.sqlite")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signin(index: Index, clock: Clock) -> SignIn:
    return _node(index, clock)


def _node(index: Index, clock: Clock) -> SignIn:
    return SignIn(index=index, domain=DOMAIN, origin=ORIGIN, chain_id=CHAIN, nonce_s=300,
                  session_s=3600, clock=clock)  # fmt: skip


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _message(signin: SignIn, key: LocalAccount, **changed: Any) -> str:
    given = signin.nonce()
    fields: dict[str, Any] = {
        "domain": given.domain, "address": key.address, "uri": given.uri, "version": "1",
        "chain_id": given.chain_id, "nonce": given.nonce, "issued_at": _iso(NOW),
        "statement": given.statement,
    }  # fmt: skip
    fields.update(changed)
    return str(SiweMessage(**fields).prepare_message())


def _sign(message: str, key: LocalAccount) -> str:
    return "0x" + key.sign_message(encode_defunct(text=message)).signature.hex().removeprefix("0x")


def _refused(signin: SignIn, message: str, signature: str) -> str:
    with pytest.raises(SignInRefused) as refused:
        signin.sign_in(message, signature)
    return refused.value.reason


def test_a_signed_message_opens_a_session_for_its_address(signin: SignIn, clock: Clock) -> None:
    key = Account.create()
    message = _message(signin, key)
    session = signin.sign_in(message, _sign(message, key))
    assert session.address == key.address and session.token.startswith(TOKEN_PREFIX)
    assert session.expires_at == NOW + 3600
    assert signin.authenticate(session.token) == key.address
    assert signin.signed_in(key.address)
    assert signin.authenticate("not-a-session") is None
    assert signin.authenticate(TOKEN_PREFIX + "forged") is None
    clock.now = NOW + 3600  # the session is over
    assert signin.authenticate(session.token) is None and not signin.signed_in(key.address)


def test_a_session_ends_at_the_messages_own_expiration_time(signin: SignIn) -> None:
    key = Account.create()
    message = _message(signin, key, expiration_time=_iso(NOW + 600))
    assert signin.sign_in(message, _sign(message, key)).expires_at == NOW + 600


def test_a_nonce_is_spent_once_across_nodes_and_expires(
    signin: SignIn, index: Index, clock: Clock
) -> None:
    key = Account.create()
    message = _message(signin, key)
    signature = _sign(message, key)
    other_node = _node(index, clock)
    assert other_node.sign_in(message, signature).address == key.address  # redeemed elsewhere
    assert _refused(signin, message, signature) == "siwe-nonce"  # replayed
    never_given = _message(signin, key, nonce="abcdefgh12345")
    assert _refused(signin, never_given, _sign(never_given, key)) == "siwe-nonce"
    late = _message(signin, key)
    clock.now = NOW + 301  # the nonce waited too long (and so did the message)
    assert _refused(signin, late, _sign(late, key)) == "siwe-expired"
    clock.now = NOW + 250
    issued_late = _message(signin, key, issued_at=_iso(NOW + 250))
    clock.now = NOW + 250 + 301
    assert _refused(signin, issued_late, _sign(issued_late, key)) == "siwe-expired"


def test_a_nonce_past_its_lifetime_is_refused_even_for_a_fresh_message(
    signin: SignIn, clock: Clock
) -> None:
    key = Account.create()
    given = signin.nonce()
    clock.now = NOW + 301
    message = str(SiweMessage(
        domain=DOMAIN, address=key.address, uri=given.uri, version="1", chain_id=CHAIN,
        nonce=given.nonce, issued_at=_iso(clock.now),
    ).prepare_message())  # fmt: skip
    assert _refused(signin, message, _sign(message, key)) == "siwe-nonce"


def test_another_keys_signature_is_refused_and_leaves_the_nonce_unspent(signin: SignIn) -> None:
    key, thief = Account.create(), Account.create()
    message = _message(signin, key)
    assert _refused(signin, message, _sign(message, thief)) == "siwe-signature"
    assert _refused(signin, message, "0x" + "00" * 65) == "siwe-signature"
    edited = message.replace("Sign in", "Log in")  # signed text and sent text differ
    assert _refused(signin, edited, _sign(message, key)) == "siwe-signature"
    assert signin.sign_in(message, _sign(message, key)).address == key.address


@pytest.mark.parametrize(
    ("changed", "reason"),
    [
        ({"domain": "phish.example"}, "siwe-domain"),
        ({"uri": "https://phish.example/v1/auth/siwe"}, "siwe-domain"),
        ({"uri": "http://gateway.example:8000/v1/auth/siwe"}, "siwe-domain"),  # another scheme
        ({"chain_id": 1}, "siwe-chain"),
        ({"issued_at": _iso(NOW + 3600)}, "siwe-expired"),  # issued in the future
        ({"expiration_time": _iso(NOW - 1)}, "siwe-expired"),
        ({"not_before": _iso(NOW + 60)}, "siwe-expired"),
    ],
)
def test_a_message_for_another_site_chain_or_time_is_refused(
    signin: SignIn, changed: dict[str, Any], reason: str
) -> None:
    key = Account.create()
    message = _message(signin, key, **changed)
    assert _refused(signin, message, _sign(message, key)) == reason


def test_what_is_not_an_eip_4361_message_is_malformed(signin: SignIn) -> None:
    key = Account.create()
    assert _refused(signin, "hello", _sign("hello", key)) == "siwe-malformed"
    assert _refused(signin, "x" * 10_000, "0x" + "00" * 65) == "siwe-malformed"
    assert _refused(signin, "0" * 2000, "0x" + "00" * 65) == "siwe-malformed"
    long_line = _message(signin, key, statement="s" * 600)
    assert _refused(signin, long_line, _sign(long_line, key)) == "siwe-malformed"
    # a long domain never reaches the grammar's parser (its time grows with the input)
    junk = "0" * 400 + " wants you to sign in with your Ethereum account:\n"
    assert _refused(signin, junk, "0x" + "00" * 65) == "siwe-domain"
    windows = _message(signin, key).replace("\n", "\r\n")  # a browser's textarea
    assert signin.sign_in(windows, _sign(windows.replace("\r\n", "\n"), key)).address == key.address


def test_signing_out_ends_every_session_of_the_address(signin: SignIn) -> None:
    key = Account.create()
    tokens = []
    for _ in range(2):
        message = _message(signin, key)
        tokens.append(signin.sign_in(message, _sign(message, key)).token)
    assert signin.sign_out(key.address) == 2
    assert [signin.authenticate(t) for t in tokens] == [None, None]
