"""Receivers a notify test starts on free ports: a Standard Webhooks endpoint that
dedupes by ``webhook-id``, and syslog servers over UDP (RFC 5426) and TCP/TLS (RFC 5425
octet counting)."""

from __future__ import annotations

import json
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gateway.notify import signing
from gateway.procs import free_port


@dataclass
class Delivery:
    """One POST as it arrived."""

    headers: dict[str, str]
    body: bytes
    signed: bool


@dataclass
class WebhookReceiver:
    """Processes each event id once (as the spec asks receivers to), counts every raw
    delivery, and can hold the first delivery open until :meth:`release`."""

    secret: bytes
    hold_first: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    processed: dict[str, dict[str, Any]] = field(default_factory=dict)
    times_processed: dict[str, int] = field(default_factory=dict)
    holding: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.port = free_port()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.take({k.lower(): v for k, v in self.headers.items()}, body)
                if receiver.hold_first and not receiver.holding.is_set():
                    receiver.holding.set()
                    receiver.released.wait(120)
                try:
                    self.send_response(204)
                    self.end_headers()
                except OSError:
                    pass  # the gateway died while this delivery was held

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/xray"

    def take(self, headers: dict[str, str], body: bytes) -> None:
        signed = signing.verify(self.secret, received=headers, body=body, now=time.time())
        with self.lock:
            self.deliveries.append(Delivery(headers, body, signed))
            msg_id = headers.get("webhook-id", "")
            if signed and msg_id not in self.processed:  # dedupe by webhook-id
                self.processed[msg_id] = json.loads(body)
                self.times_processed[msg_id] = self.times_processed.get(msg_id, 0) + 1

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


class SyslogServer:
    """Collects syslog messages (without framing) over ``udp``, ``tcp`` or ``tls``."""

    def __init__(
        self, scheme: str, *, tls: ssl.SSLContext | None = None, one_per_connection: bool = False
    ) -> None:
        self.scheme = scheme
        self.port = free_port()
        self.messages: list[bytes] = []
        self._lock = threading.Lock()
        collect = self._collect
        if scheme == "udp":

            class Datagrams(socketserver.BaseRequestHandler):
                def handle(self) -> None:
                    collect(self.request[0])

            self.server: socketserver.BaseServer = socketserver.ThreadingUDPServer(
                ("127.0.0.1", self.port), Datagrams
            )
        else:

            class Stream(socketserver.StreamRequestHandler):
                def setup(self) -> None:
                    if tls is not None:
                        self.request = tls.wrap_socket(self.request, server_side=True)
                    super().setup()

                def handle(self) -> None:
                    while frame := read_octet_counted(self.rfile):
                        collect(frame)
                        if one_per_connection:  # as a receiver that drops idle clients
                            return

                def finish(self) -> None:
                    super().finish()
                    self.request.close()  # the TLS wrapper: the server closes only the raw socket

            self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Stream)
        self.server.daemon_threads = True  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def _collect(self, message: bytes) -> None:
        with self._lock:
            self.messages.append(message)

    def received(self) -> list[bytes]:
        with self._lock:
            return list(self.messages)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def read_octet_counted(stream: Any) -> bytes:
    """One ``MSG-LEN SP SYSLOG-MSG`` frame from ``stream`` (b"" at its end)."""
    length = b""
    while (char := stream.read(1)) not in (b" ", b""):
        length += char
        assert char.isdigit() and len(length) < 10, f"not octet counting: {length!r}"
    if not length:
        return b""
    message: bytes = stream.read(int(length))
    assert len(message) == int(length), "a frame cut short"
    return message


def wait_until(what: str, predicate: Any, *, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"never: {what}")


def server_tls(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context
