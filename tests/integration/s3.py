"""Test helpers for S3: a real moto server as a child process, and a TCP relay to cut."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

from gateway.procs import Child, free_port

MOTO_SERVER = Path(sys.executable).parent / "moto_server"


class MotoServer(Child):
    """moto's S3 server on loopback: the same HTTP API as MinIO, any credentials accepted."""

    def __init__(self, *, log_dir: Path, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        argv = [str(MOTO_SERVER), "-H", self.host, "-p", str(self.port)]
        super().__init__("moto", argv, log_path=log_dir / "moto.log", ready=self._probe)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def _probe(self) -> bool:
        with urllib.request.urlopen(f"http://{self.endpoint}/", timeout=1.0) as response:
            return bool(response.status == 200)


class Relay:
    """A TCP relay from a loopback port to ``target``, to simulate network trouble.

    ``stop()`` closes the listener and every relayed connection (the peer is gone:
    connections are refused). ``stall()`` keeps everything open but stops moving bytes
    (a dropped link that TCP has not noticed: the case where uploads hang).
    ``start()`` serves again on the same port, dropping whatever was stalled.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.host = "127.0.0.1"
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        """Accept and relay connections (again), dropping any that were stalled."""
        self.stop()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._flowing.set()
        self._spawn(self._accept, listener)

    def stall(self) -> None:
        """Stop moving bytes; connections stay open and new ones are still accepted."""
        self._flowing.clear()

    def stop(self) -> None:
        """Refuse new connections and reset every open one."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self._drop_connections()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = [t for t in self._threads if t.is_alive()]

    def _drop_connections(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
            sock.close()
        self._flowing.set()  # let stalled pumps notice their sockets are gone

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed by stop()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            # The second pump to finish closes the pair: a relay that carries thousands of
            # connections must not keep their sockets (a process past 1024 descriptors
            # breaks select(), which pynetdicom uses).
            pending = [2]
            self._spawn(self._pump, client, upstream, pending)
            self._spawn(self._pump, upstream, client, pending)

    def _pump(self, source: socket.socket, sink: socket.socket, pending: list[int]) -> None:
        try:
            self._move(source, sink)
        finally:
            with self._lock:
                pending[0] -= 1
                done = pending[0] == 0
                if done:
                    self._sockets.difference_update((source, sink))
            if done:
                for sock in (source, sink):
                    with contextlib.suppress(OSError):
                        sock.close()

    def _move(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
                self._flowing.wait()
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                # A stall after the recv keeps this chunk back too, so that the sender's
                # socket buffers fill up and its send blocks, as over a dead link.
                with self._lock:
                    alive = source in self._sockets
                if not alive:
                    return
                sink.sendall(data)
            except OSError:
                return
