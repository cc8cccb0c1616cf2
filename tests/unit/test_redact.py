"""No secret in any error: URLs lose their userinfo, which the clients send as basic auth."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from gateway.errors import ChainUnavailable, PacsUnavailable
from gateway.ledger.client import connect
from gateway.pacs.client import Pacs
from gateway.procs import free_port
from gateway.redact import redact_text, redact_url, userinfo

SECRET = "s3cr3t-pw"


def test_redact_url_drops_userinfo_and_keeps_the_rest() -> None:
    assert redact_url(f"http://user:{SECRET}@pacs:8042/x?y=1") == "http://pacs:8042/x?y=1"
    assert redact_url("https://token@node.example/rpc") == "https://node.example/rpc"
    assert redact_url("http://127.0.0.1:8042") == "http://127.0.0.1:8042"


def test_userinfo_is_percent_decoded() -> None:
    assert userinfo("http://us%40er:p%3Aw%2Fd@host:1") == ("us@er", "p:w/d")
    assert userinfo("http://user@host") == ("user", "")
    assert userinfo("http://host:8042") is None


def test_redact_text_cleans_every_url_it_quotes() -> None:
    text = f"GET http://u:{SECRET}@a:1/x failed, then https://v:{SECRET}@b/y too"
    cleaned = redact_text(text)
    assert SECRET not in cleaned
    assert cleaned == "GET http://a:1/x failed, then https://b/y too"


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        _Recorder.seen.append(self.headers.get("Authorization"))
        body = b'{"Version": "1.12.1"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def orthanc_stand_in() -> Iterator[int]:
    """A loopback HTTP server answering like Orthanc's /system, recording Authorization."""
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_pacs_sends_url_credentials_as_basic_auth(orthanc_stand_in: int) -> None:
    pacs = Pacs(f"http://admin:{SECRET}@127.0.0.1:{orthanc_stand_in}", user=None, password=None)
    assert pacs.url == f"http://127.0.0.1:{orthanc_stand_in}"
    assert SECRET not in repr(pacs)
    assert pacs.check() == "1.12.1"
    expected = "Basic " + base64.b64encode(f"admin:{SECRET}".encode()).decode()
    assert _Recorder.seen == [expected]


def test_an_unreachable_pacs_never_quotes_its_password() -> None:
    pacs = Pacs(f"http://admin:{SECRET}@127.0.0.1:{free_port()}", user=None, password=None)
    with pytest.raises(PacsUnavailable) as raised:
        pacs.check()
    assert SECRET not in str(raised.value) and "admin:" not in str(raised.value)
    assert "127.0.0.1" in str(raised.value)


def test_an_unreachable_chain_never_quotes_its_password() -> None:
    with pytest.raises(ChainUnavailable) as raised:
        connect(f"http://admin:{SECRET}@127.0.0.1:{free_port()}", timeout=2)
    assert SECRET not in str(raised.value)
