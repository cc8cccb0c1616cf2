"""Peer log filter: no tracebacks for a peer's input, identical lines counted instead of repeated."""

from __future__ import annotations

import logging
import sys

from gateway.ingest.peerlog import PeerLogFilter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(name: str, msg: str, *, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, (), exc_info)


def test_a_peer_loggers_traceback_becomes_one_line() -> None:
    try:
        raise TimeoutError("timed out")
    except TimeoutError as caught:
        exc = caught
    line = record("pynetdicom.dul", "timed out", exc=exc)
    assert PeerLogFilter().filter(line)
    assert line.exc_info is None
    assert line.getMessage() == "TimeoutError: timed out"
    handler = logging.StreamHandler(sys.stderr)
    assert "Traceback" not in handler.format(line)


def test_identical_lines_are_counted_and_reported_once_the_window_ends() -> None:
    clock = Clock()
    peer_filter = PeerLogFilter(window_s=60, clock=clock)
    passed = [
        peer_filter.filter(record("pynetdicom.dul", f"Unknown PDU type received '0x{n:02X}'"))
        for n in range(58)
    ]
    assert passed == [True] + [False] * 57
    clock.now += 61
    line = record("pynetdicom.dul", "Unknown PDU type received '0x0A'")
    assert peer_filter.filter(line)
    assert line.getMessage() == (
        "Unknown PDU type received '0x0A' (repeated 57 times in the last 60 s)"
    )


def test_other_loggers_are_left_alone() -> None:
    peer_filter = PeerLogFilter()
    lines = [record("gateway.ingest.pipeline", "batch anchored") for _ in range(3)]
    assert all(peer_filter.filter(line) for line in lines)
