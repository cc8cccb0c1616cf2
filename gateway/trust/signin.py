"""Sign-In with Ethereum (EIP-4361): an outside clinician granted by account address proves
holding that account's key, and gets a short bearer session of role ``grantee``.

A grant may name an account address instead of a token (a Hospital or Doctor account
calls ``grantAccess`` for a colleague's address). Its holder has no token: they ask for a
nonce (:meth:`SignIn.nonce`, kept in the shared index, single use, short lived), sign the
EIP-4361 message naming this gateway's domain, URI, the chain's id and that nonce with
their wallet (EIP-191 ``personal_sign``), and trade message and signature for a session
(:meth:`SignIn.sign_in`). The message is parsed and its signature recovered by the
``siwe`` package (the EIP-4361 ABNF grammar, eth-account's EIP-191 recovery); this module
adds what the package leaves to the relying party: the expected domain, URI origin and
chain id, the age of the message, and the nonce spent once across every node.

The session's token is random, returned once, and kept only as its SHA-256
(``siwe_sessions``); it lasts ``GATEWAY_SIWE_SESSION_S`` or until the message's own
``Expiration Time``, whichever comes first. Its identity is the checksummed address, which
the grants' enforcement turns into the padded-address grantee key the chain names.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from eth_keys.exceptions import BadSignature
from pydantic import ValidationError
from siwe import (
    ExpiredMessage,
    InvalidSignature,
    NotYetValidMessage,
    SiweMessage,
    VerificationError,
    generate_nonce,
)

from gateway.errors import SignInRefused
from gateway.index import signin as rows
from gateway.index.db import Index

#: Every session token starts so (a bearer token that does not is an API token).
TOKEN_PREFIX = "siwe_"
#: The longest message read, and its longest line: the EIP-4361 grammar's parser takes
#: time that grows faster than the input (0.7 s for a 480-character domain, 10 s for 8 KiB
#: of digits), so nothing larger reaches it. A wallet's message is a few hundred characters.
MAX_MESSAGE_CHARS = 2048
MAX_LINE_CHARS = 512
#: How an EIP-4361 message's first line ends, after ``[scheme://]domain``.
HEADER_TAIL = " wants you to sign in with your Ethereum account:"
#: The statement the nonce route suggests (any statement, or none, is accepted).
STATEMENT = "Sign in to the xray-gateway to read the studies granted to this account."
#: How far in the future a message's ``Issued At`` may be (the signer's clock).
CLOCK_SKEW_S = 60.0


@dataclass(frozen=True)
class Nonce:
    """A nonce given out, and what the message signed with it must name."""

    nonce: str
    expires_at: float
    domain: str
    uri: str
    chain_id: int
    statement: str


@dataclass(frozen=True)
class SignedIn:
    """A session opened: its bearer token (shown once), the address, until when."""

    token: str
    address: str
    expires_at: float


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _epoch(iso: str) -> float:
    """An EIP-4361 timestamp (RFC 3339) as epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).timestamp()


class SignIn:
    """Nonces, the message checks, and the sessions of Sign-In with Ethereum.

    Parameters
    ----------
    index:
        The shared index (``siwe_nonces``, ``siwe_sessions``).
    domain:
        The ``host[:port]`` a message must name (``GATEWAY_SIWE_DOMAIN``).
    origin:
        The ``scheme://host[:port]`` its ``URI`` must be under (``GATEWAY_SIWE_ORIGIN``).
    chain_id:
        The chain the grants are on: a message for another chain is refused.
    nonce_s, session_s:
        How long a nonce waits for its message; how long a session lasts.
    clock:
        Epoch seconds now (tests pass their own).
    """

    def __init__(
        self,
        *,
        index: Index,
        domain: str,
        origin: str,
        chain_id: int,
        nonce_s: float = 300.0,
        session_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.domain = domain
        self.origin = origin.rstrip("/")
        self.chain_id = chain_id
        self.nonce_s = nonce_s
        self.session_s = session_s
        self.clock = clock

    @property
    def uri(self) -> str:
        """The URI a message names: this gateway's sign-in route."""
        return f"{self.origin}/v1/auth/siwe"

    def nonce(self) -> Nonce:
        """A fresh single-use nonce (alphanumeric, as EIP-4361 asks), kept in the index."""
        now = self.clock()
        value = generate_nonce() + secrets.token_hex(4)  # 11 + 8 characters, ~97 bits
        rows.add_nonce(self.index, value, now=now, expires_at=now + self.nonce_s)
        return Nonce(value, now + self.nonce_s, self.domain, self.uri, self.chain_id, STATEMENT)

    def sign_in(self, message: str, signature: str) -> SignedIn:
        """Check a signed EIP-4361 message and open a session for the address it names.

        Raises
        ------
        SignInRefused
            ``.reason`` says which check failed (:class:`~gateway.errors.SignInRefused`);
            the nonce is spent only by a message whose every other check passed.
        """
        now = self.clock()
        parsed = self._parse(message)
        self._check_audience(parsed)
        self._check_times(parsed, now)
        self._check_signature(parsed, signature, now)
        if not rows.use_nonce(self.index, str(parsed.nonce), now=now):
            raise SignInRefused(
                "the nonce is not one this gateway gave out, was used, or expired",
                reason="siwe-nonce",
            )
        expires = now + self.session_s
        if parsed.expiration_time is not None:
            expires = min(expires, _epoch(str(parsed.expiration_time)))
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        address = str(parsed.address)
        rows.open_session(self.index, _sha256(token), address=address, now=now, expires_at=expires)
        return SignedIn(token, address, expires)

    def authenticate(self, token: str) -> str | None:
        """The address a live session token belongs to (None: not a session, or over)."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        return rows.session_address(self.index, _sha256(token), now=self.clock())

    def signed_in(self, address: str) -> bool:
        """Whether ``address`` holds a live session (a console login lasts no longer)."""
        return rows.has_session(self.index, address, now=self.clock())

    def sign_out(self, address: str) -> int:
        """End every session of ``address``."""
        return rows.close_sessions(self.index, address)

    # -- the checks ----------------------------------------------------------------------

    def _parse(self, message: str) -> SiweMessage:
        """The message parsed by the EIP-4361 grammar, once cheap checks bounded its size
        and found this gateway's domain on its first line."""
        text = message.replace("\r\n", "\n")
        lines = text.split("\n")
        if len(text) > MAX_MESSAGE_CHARS or max(map(len, lines)) > MAX_LINE_CHARS:
            raise SignInRefused("the message is too long", reason="siwe-malformed")
        if not lines[0].endswith(HEADER_TAIL):
            raise SignInRefused("not an EIP-4361 message", reason="siwe-malformed")
        domain = lines[0].removesuffix(HEADER_TAIL).split("://", 1)[-1]
        if domain != self.domain:
            raise SignInRefused(
                f"the message is for {domain!r}, not {self.domain!r}", reason="siwe-domain"
            )
        try:
            return SiweMessage.from_message(text)
        except (ValueError, ValidationError) as exc:
            raise SignInRefused(
                f"not an EIP-4361 message ({type(exc).__name__})", reason="siwe-malformed"
            ) from None

    def _check_audience(self, parsed: SiweMessage) -> None:
        """The message is for this gateway: its domain, its URI's origin, its chain."""
        if parsed.domain != self.domain:
            raise SignInRefused(
                f"the message is for {parsed.domain!r}, not {self.domain!r}", reason="siwe-domain"
            )
        try:
            uri = urlsplit(str(parsed.uri))
        except ValueError:  # e.g. an unclosed IPv6 bracket
            raise SignInRefused("the message's URI is not a URL", reason="siwe-domain") from None
        if f"{uri.scheme}://{uri.netloc}" != self.origin:
            raise SignInRefused(
                f"the message's URI is not under {self.origin}", reason="siwe-domain"
            )
        if parsed.scheme is not None and parsed.scheme != urlsplit(self.origin).scheme:
            raise SignInRefused("the message's scheme is not this gateway's", reason="siwe-domain")
        if int(parsed.chain_id) != self.chain_id:
            raise SignInRefused(
                f"the message is for chain {parsed.chain_id}, not {self.chain_id}",
                reason="siwe-chain",
            )

    def _check_times(self, parsed: SiweMessage, now: float) -> None:
        """Issued at most a nonce's lifetime ago, and not in the future (beyond skew)."""
        issued = _epoch(str(parsed.issued_at))
        if issued > now + CLOCK_SKEW_S:
            raise SignInRefused("the message is issued in the future", reason="siwe-expired")
        if now - issued > self.nonce_s:
            raise SignInRefused("the message was issued too long ago", reason="siwe-expired")

    def _check_signature(self, parsed: SiweMessage, signature: str, now: float) -> None:
        """Signed by the address it names (EIP-191), and within its own validity times."""
        at = datetime.fromtimestamp(now, UTC)
        try:
            parsed.verify(signature.strip(), timestamp=at)
        except (ExpiredMessage, NotYetValidMessage):
            raise SignInRefused(
                "the message is past its expiration time, or not valid yet", reason="siwe-expired"
            ) from None
        # A signature that is no point on the curve (all zeros, say) is eth_keys' BadSignature,
        # which the siwe package lets through.
        except (InvalidSignature, VerificationError, BadSignature, ValueError, TypeError):
            raise SignInRefused(
                "the signature is not the named account's", reason="siwe-signature"
            ) from None


__all__ = ["MAX_LINE_CHARS", "MAX_MESSAGE_CHARS", "TOKEN_PREFIX", "Nonce", "SignIn", "SignedIn"]
