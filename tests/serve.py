"""An ASGI app on a real uvicorn server on a free loopback port, for the API's unit tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from gateway.procs import free_port


@contextmanager
def serve(app: FastAPI, config: uvicorn.Config | None = None) -> Iterator[str]:
    """Run ``app`` (as ``config`` says, if given) until the block ends; yields its base URL."""
    if config is None:
        config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    port = config.port
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
