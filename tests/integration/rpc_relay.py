"""A JSON-RPC relay in front of anvil that refuses wide log ranges, as Besu does.

anvil answers ``eth_getLogs`` over any range; Besu refuses one wider than
``--rpc-max-logs-range`` (5,000 blocks by default). The relay forwards every request to
anvil unchanged, except an ``eth_getLogs`` whose range spans more than ``max_range``
blocks: that one gets Besu's error. ``refused`` counts the refusals, and
``topic_queries`` the ``eth_getLogs`` that filter on one topic (say, a record key).
"""

from __future__ import annotations

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gateway.procs import free_port

BESU_RANGE_ERROR = {"code": -32005, "message": "Requested range exceeds maximum RPC range limit"}


class LogRangeRelay:
    """``url`` forwards to ``upstream``; ``eth_getLogs`` over more than ``max_range`` is refused."""

    def __init__(self, upstream: str, *, max_range: int) -> None:
        self.upstream = upstream
        self.max_range = max_range
        self.port = free_port()
        self.refused = 0
        self.log_queries = 0
        self.topic_queries: dict[str, int] = {}
        self._lock = threading.Lock()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                reply = relay.handle(json.loads(body))
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def handle(self, request: Any) -> Any:
        if isinstance(request, list):  # a batch
            return [self.handle(one) for one in request]
        if request.get("method") == "eth_getLogs":
            with self._lock:
                self.log_queries += 1
                for topic in _topics(request["params"][0]):
                    self.topic_queries[topic] = self.topic_queries.get(topic, 0) + 1
            span = self._span(request["params"][0])
            if span is not None and span > self.max_range:
                with self._lock:
                    self.refused += 1
                return {"jsonrpc": "2.0", "id": request.get("id"), "error": BESU_RANGE_ERROR}
        return self._forward(request)

    def _span(self, query: dict[str, Any]) -> int | None:
        """Blocks from ``fromBlock`` to ``toBlock`` (tags resolved as Besu does)."""
        if "blockHash" in query:
            return None
        return self._number(query.get("toBlock")) - self._number(query.get("fromBlock"))

    def _number(self, tag: Any) -> int:
        if tag in (None, "latest", "pending", "safe", "finalized"):
            return int(
                self._forward({"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber"})["result"],
                16,
            )
        if tag == "earliest":
            return 0
        return int(tag, 16) if isinstance(tag, str) else int(tag)

    def _forward(self, request: Any) -> Any:
        http = urllib.request.Request(
            self.upstream,
            data=json.dumps(request).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(http, timeout=60) as response:
            return json.loads(response.read())


def _topics(query: dict[str, Any]) -> set[str]:
    """Every topic an ``eth_getLogs`` filter names (lowercase hex), at any position."""
    found: set[str] = set()
    for topic in query.get("topics") or ():
        for one in topic if isinstance(topic, list) else [topic]:
            if isinstance(one, str):
                found.add(one.lower())
    return found
