"""The forward's uploads on a real loopback HTTP server: one kept-alive connection per thread."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from gateway.pacs.client import Pacs


class _Orthanc(BaseHTTPRequestHandler):
    """Answers ``POST /instances/`` as Orthanc does; notes each upload's connection and size."""

    protocol_version = "HTTP/1.1"  # keep-alive, as Orthanc's server
    seen: ClassVar[list[tuple[int, int]]] = []  # (client port, bytes received)

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        self.seen.append((self.client_address[1], len(body)))
        answer = json.dumps({"ID": f"id-{len(body)}", "Status": "Success"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Orthanc.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Orthanc)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_uploads_reuse_one_connection_per_thread_and_arrive_whole(
    server: str, tmp_path: Path
) -> None:
    pacs = Pacs(server, user="xray", password="pw", timeout=10)
    files = []
    for n, size in enumerate((3 << 20, 1000, 5)):  # larger than one upload block, and small
        files.append(tmp_path / f"{n}.dcm")
        files[-1].write_bytes(bytes([n]) * size)

    results = [pacs.store(path, digest=b"d" * 32) for path in files]
    other: list[str] = []
    thread = threading.Thread(target=lambda: other.append(pacs.store(files[2], digest=b"d" * 32)
                                                           .orthanc_id))  # fmt: skip
    thread.start()
    thread.join(30)

    assert [r.orthanc_id for r in results] == ["id-3145728", "id-1000", "id-5"]
    assert other == ["id-5"]
    ports = [port for port, _ in _Orthanc.seen]
    assert [size for _, size in _Orthanc.seen] == [3 << 20, 1000, 5, 5]
    assert len(set(ports[:3])) == 1  # the first thread's three uploads: one connection
    assert ports[3] != ports[0]  # another thread has its own
