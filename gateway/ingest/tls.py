"""DICOM TLS: the listener's server context, the client context for reports.

``GATEWAY_TLS_CERT`` and ``GATEWAY_TLS_KEY`` (PEM; the key unencrypted and mode 0600) make
the gateway listen on ``GATEWAY_TLS_PORT`` too. With ``GATEWAY_TLS_CA``, client
certificates are required and verified against it (mutual TLS). TLS 1.2 at least, with
Python's default ciphers.

The handshake runs on each connection's own thread, under the listener's negotiation
deadline (:class:`gateway.ingest.listener.GuardedRequestHandler`), never in pynetdicom's accept
loop, where one silent connection would stop the TLS port from accepting anyone.
"""

from __future__ import annotations

import logging
import ssl
import stat
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

log = logging.getLogger(__name__)


def server_context(*, cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """The listener's context: our certificate, and client certificates required if ``ca``.

    Raises
    ------
    ConfigError
        The key is readable by others, or a file is missing or not a PEM certificate/key.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
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
            f" GATEWAY_TLS_KEY: PEM files, the key unencrypted and matching): {reason(exc)}"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the CA certificates {ca} (GATEWAY_TLS_CA): {reason(exc)}"
        ) from None


def check_key_file(key: Path) -> None:
    """Refuse a private key that is missing or that group or others may read (chmod 600)."""
    try:
        mode = key.stat().st_mode
    except OSError as exc:
        raise ConfigError(
            f"cannot read the TLS key {key} (GATEWAY_TLS_KEY): {reason(exc)}"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the TLS key {key} (GATEWAY_TLS_KEY) is open to other users (mode"
            f" {stat.S_IMODE(mode):o}); chmod 600 it"
        )


def reason(exc: BaseException) -> str:
    """What went wrong, in a few words (e.g. "CERTIFICATE_VERIFY_FAILED"), never a path."""
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def is_tls(assoc: Any) -> bool:
    """True when the association runs over TLS."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    return isinstance(sock, ssl.SSLSocket)
