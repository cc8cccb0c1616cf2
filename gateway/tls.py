"""DICOM TLS: the listener's server context, the client context for reports, the handshake.

``GATEWAY_TLS_CERT`` and ``GATEWAY_TLS_KEY`` (PEM; the key unencrypted and mode 0600) make
the gateway listen on ``GATEWAY_TLS_PORT`` too. With ``GATEWAY_TLS_CA``, client
certificates are required and verified against it (mutual TLS). TLS 1.2 at least, with
Python's default ciphers.

The server context defers the handshake. pynetdicom wraps each accepted socket in its
accept loop, and a handshake there would let one silent connection stop the TLS port
from accepting anyone; :func:`handshake` runs it in the connection's own thread instead,
bounded by a timeout, and a failure is one log line, never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import stat
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

log = logging.getLogger(__name__)

#: The longest a peer may take over the TLS handshake.
HANDSHAKE_TIMEOUT_S = 10.0


class DeferredHandshakeContext(ssl.SSLContext):
    """An SSLContext whose server sockets handshake on :func:`handshake`, not when wrapped."""

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect and not server_side,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session,
        )


def server_context(*, cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """The listener's context: our certificate, and client certificates required if ``ca``.

    Raises
    ------
    ConfigError
        The key is readable by others, or a file is missing or not a PEM certificate/key.
    """
    context = DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_identity(context, cert=cert, key=key)
    if ca is not None:
        _load_ca(context, ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(*, cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """The context for associations the gateway opens: our certificate as client
    certificate; the peer's verified against ``ca``, or the system CAs without it."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_identity(context, cert=cert, key=key)
    if ca is not None:
        _load_ca(context, ca)
    return context


def _load_identity(context: ssl.SSLContext, *, cert: Path, key: Path) -> None:
    check_key_file(key)
    try:
        # An encrypted key would make OpenSSL prompt on the terminal: answer "no password".
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the TLS certificate {cert} with key {key} (GATEWAY_TLS_CERT,"
            f" GATEWAY_TLS_KEY: PEM files, the key unencrypted and matching): {_reason(exc)}"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the CA certificates {ca} (GATEWAY_TLS_CA): {_reason(exc)}"
        ) from None


def check_key_file(key: Path) -> None:
    """Refuse a private key that is missing or that group or others may read (chmod 600)."""
    try:
        mode = key.stat().st_mode
    except OSError as exc:
        raise ConfigError(
            f"cannot read the TLS key {key} (GATEWAY_TLS_KEY): {_reason(exc)}"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the TLS key {key} (GATEWAY_TLS_KEY) is open to other users (mode"
            f" {stat.S_IMODE(mode):o}); chmod 600 it"
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def handshake(event: Any) -> None:
    """EVT_CONN_OPEN on the TLS listener: the handshake, in the connection's thread.

    A peer that fails it (no client certificate, one from another CA, plain DICOM on the
    TLS port, silence) is logged in one line and its socket closed; the association then
    ends at once instead of waiting out the ACSE timeout for an A-ASSOCIATE-RQ that
    cannot come, so it does not hold a slot.
    """
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return
    address = event.address[0] if event.address else "?"
    previous = sock.gettimeout()
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        sock.do_handshake()
        sock.settimeout(previous)
    except (OSError, ValueError) as exc:
        reason = _reason(exc).replace("_", " ").lower()  # e.g. "certificate verify failed"
        log.warning("TLS handshake with %s failed: %s", address, reason)
        with contextlib.suppress(OSError):
            sock.close()
        event.assoc.acse_timeout = 0


def is_tls(assoc: Any) -> bool:
    """True when the association runs over TLS."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    return isinstance(sock, ssl.SSLSocket)
