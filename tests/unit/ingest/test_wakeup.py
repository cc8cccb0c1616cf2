"""Wake-ups over Unix datagram sockets: the listener rings, each worker's bell answers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from gateway.ingest.wakeup import Bell, SocketDoorbell, ready_path, socket_path


def test_a_ring_wakes_every_worker_and_many_rings_fold_into_few(tmp_path: Path) -> None:
    run = tmp_path / "run"
    woken = {name: threading.Event() for name in ("w1", "w2")}
    counts = {name: 0 for name in woken}

    def on_ring(name: str) -> None:
        counts[name] += 1
        woken[name].set()

    bells = [Bell(run, name, lambda name=name: on_ring(name)) for name in woken]  # type: ignore[misc]
    doorbell = SocketDoorbell(run)
    try:
        for _ in range(500):
            doorbell.ring()
        assert all(event.wait(10) for event in woken.values())
    finally:
        doorbell.close()
        for bell in bells:
            bell.close()
    assert all(1 <= count <= 500 for count in counts.values())
    assert not list(run.iterdir())  # each bell removed its socket


def test_ringing_with_no_worker_or_a_dead_ones_socket_does_not_fail(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "worker-gone.sock").touch()  # left by a SIGKILLed worker: not a socket any more
    doorbell = SocketDoorbell(run)
    doorbell.ring()
    doorbell.close()


def test_a_worker_started_again_under_its_id_takes_its_socket_back(tmp_path: Path) -> None:
    run = tmp_path / "run"
    woken = threading.Event()
    first = Bell(run, "w1", lambda: None)
    first._sock.close()  # as after SIGKILL: the path stays behind
    second = Bell(run, "w1", woken.set)
    doorbell = SocketDoorbell(run)
    try:
        assert second.last_ring == 0.0
        doorbell.ring()
        assert woken.wait(10)
        assert second.last_ring > 0.0  # what yield_to_acks looks at
    finally:
        doorbell.close()
        second.close()


def test_a_workers_wait_for_a_stream_of_acks_is_bounded(tmp_path: Path) -> None:
    bell = Bell(tmp_path / "run", "w1", lambda: None)
    try:
        bell.yield_to_acks()  # no ring yet: nothing to wait for
        bell.last_ring = time.monotonic() + 3600  # acks ringing for ever: it still returns
        bell.yield_to_acks()  # (after MAX_YIELD_S: commits advance during a long stream)
    finally:
        bell.close()


def test_a_bell_shows_it_is_up_by_its_socket_or_by_its_sign_that_it_listens(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    assert ready_path(run, "up-1", notify=False) == socket_path(run, "up-1")
    sign = ready_path(run, "up-1", notify=True)
    assert sign.parent == run and sign.name == "worker-up-1.listening"
    bell = Bell(run, "up-1", lambda: None)
    try:
        assert ready_path(run, "up-1", notify=False).exists()  # what `up` waits for
        # the sign is no socket: a socket doorbell on the same run dir never rings it
        assert sign not in set(run.glob("worker-*.sock"))
    finally:
        bell.close()


def test_a_run_dir_deeper_than_a_socket_address_still_rings(tmp_path: Path) -> None:
    # 120 bytes of directory names alone: the socket's path is longer than the 107 bytes
    # an AF_UNIX address holds, so binding or ringing it by its path fails
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "run"
    rang = threading.Event()
    bell = Bell(deep, "up-1", rang.set)
    doorbell = SocketDoorbell(deep)
    try:
        assert socket_path(deep, "up-1").exists()  # the ready sign: the socket in run_dir
        doorbell.ring()
        assert rang.wait(30)
    finally:
        doorbell.close()
        bell.close()


def test_acks_as_far_apart_as_large_images_are_not_yielded_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 10 MB chest images are acked 35-45 ms apart here: holding the worker back for them
    # delayed their anchor by ~1.7 s; CT slices, ~4 ms apart, are still yielded to
    slept: list[float] = []
    monkeypatch.setattr("gateway.ingest.receive.time.sleep", slept.append)
    bell = Bell(tmp_path / "run", "w1", lambda: None)
    try:
        bell.last_ring = time.monotonic() - 0.03
        bell.yield_to_acks()
        assert slept == []
        assert bell.last_ack() == bell.last_ring
        bell.last_ring = time.monotonic() + 3600  # acked just now, and for ever
        bell.yield_to_acks()
        assert slept  # it waited (and returned: MAX_YIELD_S)
    finally:
        bell.close()
