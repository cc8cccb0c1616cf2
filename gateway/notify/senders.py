"""Put one event on the wire: a signed webhook POST (httpx) or a syslog message (sockets).

A sender raises :class:`~gateway.errors.DeliveryFailed` when its target did not take the
event; the outbox keeps it and tries again. Every wait is bounded (``timeout_s``), so a
target that hangs costs its own loop one timeout, never the gateway's other work.

Targets are named by an id that holds no secret: ``webhook:<12 hex of the URL's
SHA-256>`` (a URL may carry a token) and ``syslog``; messages show a URL's scheme, host
and port only.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from gateway.errors import DeliveryFailed
from gateway.notify import atna, signing
from gateway.notify.events import Event


class AlertTarget(Protocol):
    """One target: a webhook endpoint or the syslog receiver."""

    target: str  # the outbox's name for it (no secret)
    shown: str  # what messages show of it: scheme://host:port

    def send(self, event: Event) -> None:
        """Deliver ``event``; raises DeliveryFailed if the target did not take it."""
        ...

    def close(self) -> None: ...


def shown(url: str) -> str:
    """``scheme://host:port`` of ``url``: no user, password, path or query."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def webhook_target(url: str) -> str:
    return f"webhook:{hashlib.sha256(url.encode()).hexdigest()[:12]}"


class WebhookSender:
    """POSTs each event, signed (:mod:`gateway.notify.signing`); only a 2xx counts."""

    def __init__(self, url: str, *, secret: bytes, timeout_s: float) -> None:
        self.target = webhook_target(url)
        self.shown = shown(url)
        self._url = url
        self._secret = secret
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False)

    def send(self, event: Event) -> None:
        headers = signing.headers(
            self._secret, msg_id=event.id, timestamp=int(time.time()), body=event.body
        )
        try:
            reply = self._client.post(self._url, content=event.body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{self.shown}: {type(exc).__name__}") from None
        if not 200 <= reply.status_code < 300:
            raise DeliveryFailed(f"{self.shown}: HTTP {reply.status_code}")

    def close(self) -> None:
        self._client.close()


class SyslogSender:
    """RFC 5424 messages to ``udp://`` (RFC 5426: one datagram each), ``tcp://`` or
    ``tls://`` (RFC 5425: octet-counted on one kept connection, TLS verified against
    ``ca_file`` or the system's CAs)."""

    target = "syslog"

    def __init__(
        self, url: str, *, node: str, timeout_s: float, ca_file: Path | None = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("udp", "tcp", "tls") or not parts.hostname or not parts.port:
            raise DeliveryFailed(f"syslog URL {shown(url)} is not udp|tcp|tls://host:port")
        self.shown = shown(url)
        self.scheme = parts.scheme
        self._address = (parts.hostname, parts.port)
        self._node = node
        self._timeout_s = timeout_s
        self._tls = ssl.create_default_context(cafile=ca_file) if self.scheme == "tls" else None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._host = socket.gethostname()

    def message(self, event: Event) -> bytes:
        """The RFC 5424 message this sender writes for ``event`` (before framing)."""
        return atna.syslog_message(
            event, host=self._host, node=self._node, pid=os.getpid(), now=time.time()
        )

    def send(self, event: Event) -> None:
        message = self.message(event)
        with self._lock:
            try:
                if self.scheme == "udp":
                    self._udp(message)
                else:
                    self._stream().sendall(atna.octet_counted(message))
            except OSError as exc:
                self._drop()
                raise DeliveryFailed(f"{self.shown}: {type(exc).__name__}: {exc}") from None

    def _udp(self, message: bytes) -> None:
        with socket.socket(_family(self._address[0]), socket.SOCK_DGRAM) as sock:
            sock.settimeout(self._timeout_s)
            sock.sendto(message, self._address)

    def _stream(self) -> socket.socket:
        if self._socket is not None and _closed_by_peer(self._socket):
            self._drop()  # a write to it would "succeed" and the message be lost
        if self._socket is None:
            sock = socket.create_connection(self._address, timeout=self._timeout_s)
            if self._tls is not None:
                try:
                    sock = self._tls.wrap_socket(sock, server_hostname=self._address[0])
                except OSError:
                    sock.close()
                    raise
            self._socket = sock
        return self._socket

    def _drop(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def close(self) -> None:
        with self._lock:
            self._drop()


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether a kept syslog connection was closed by the receiver. A receiver never
    writes (RFC 5425 has no answers), so anything to read means its end: EOF, a TLS
    close_notify, or a reset."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
