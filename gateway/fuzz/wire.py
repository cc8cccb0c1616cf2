"""One input against the DICOM port: send it, read what comes back, decide how it ended.

An input *ends* once its last byte is sent. The gateway then has ``answer_s`` to answer
conclusively (A-ASSOCIATE-RJ, A-ABORT, A-RELEASE-RP, or closing the connection); if it
has not, the fuzzer half-closes its side (FIN), after which the gateway must close within
``hang_s``, or the input is a *hang*. The outcomes are short strings: the PDU names
received (an A-ABORT with its source and reason, an A-ASSOCIATE-RJ with its result,
source and reason), ``dimse:0xNNNN`` for each DIMSE response status, ``closed``,
``reset``, ``fin``, ``hang``.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.dsutils import decode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.presentation import build_context

from gateway.fuzz.datasets import StoreInput
from gateway.fuzz.pdus import PDU_NAMES, RawInput, release_rq

# Send a Part-10 file's dataset bytes exactly as they are in the file: the mutated bytes
# reach the gateway unparsed (send_c_store reads only the file meta).
_config.STORE_SEND_CHUNKED_DATASET = True
logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # aborted associations are expected
logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # and so are odd datasets

C_STORE_RSP = 0x8001
CONCLUSIVE = ("A-ASSOCIATE-RJ", "A-ABORT", "A-RELEASE-RP")


@dataclass
class Outcome:
    """How one input ended, from the fuzzer's side of the socket."""

    events: list[str] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)  # SOP Instance UIDs answered 0x0000
    refused: set[str] = field(default_factory=set)  # answered with any other status
    hang: bool = False

    def add(self, event: str) -> None:
        if not self.events or self.events[-1] != event:
            self.events.append(event)


class _Reader:
    """Splits the bytes received into PDUs and records them in an :class:`Outcome`."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.buffer = bytearray()
        self.command = bytearray()
        self.conclusive = False
        self.accepted = False

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 6:
            pdu_type, _, length = struct.unpack(">BBL", self.buffer[:6])
            if len(self.buffer) < 6 + length:
                return
            pdu = bytes(self.buffer[: 6 + length])
            del self.buffer[: 6 + length]
            self._pdu(pdu_type, pdu)

    def _pdu(self, pdu_type: int, pdu: bytes) -> None:
        name = PDU_NAMES.get(pdu_type, f"pdu-0x{pdu_type:02x}")
        if name == "P-DATA-TF":
            self._p_data(pdu)
            return
        if name == "A-ASSOCIATE-RJ" and len(pdu) >= 10:
            name += f"({pdu[7]},{pdu[8]},{pdu[9]})"
        elif name == "A-ABORT" and len(pdu) >= 10:
            name += f"({pdu[8]},{pdu[9]})"
        elif name == "A-ASSOCIATE-AC":
            self.accepted = True
        self.outcome.add(name)
        if name.startswith(CONCLUSIVE):
            self.conclusive = True

    def _p_data(self, pdu: bytes) -> None:
        decoded = P_DATA_TF()
        try:
            decoded.decode(pdu)
        except Exception:  # the gateway sent something we cannot read: say so
            self.outcome.add("P-DATA-TF(undecodable)")
            return
        for item in decoded.presentation_data_value_items:
            value = item.presentation_data_value
            if not value or not value[0] & 0x01:  # dataset fragments: not looked at
                continue
            self.command += value[1:]
            if value[0] & 0x02:  # the last command fragment
                self._response(bytes(self.command))
                self.command.clear()

    def _response(self, command: bytes) -> None:
        try:
            ds = decode(BytesIO(command), True, True)
            status, field_, uid = (
                int(ds.Status),
                int(ds.CommandField),
                ds.get("AffectedSOPInstanceUID"),
            )
        except Exception:
            self.outcome.add("dimse:undecodable")
            return
        self.outcome.add(f"dimse:0x{status:04X}")
        if field_ == C_STORE_RSP and uid:
            (self.outcome.acked if status == 0 else self.outcome.refused).add(str(uid))


def run_raw(
    host: str, port: int, item: RawInput, *, answer_s: float = 1.0, hang_s: float = 30.0
) -> Outcome:
    """Send a raw-socket input and watch how the gateway ends it."""
    outcome = Outcome()
    reader = _Reader(outcome)
    try:
        sock = socket.create_connection((host, port), timeout=hang_s)
    except OSError as exc:
        outcome.add(f"connect-failed:{type(exc).__name__}")
        return outcome
    with contextlib.closing(sock):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        chunks: list[bytes] = [item.before] if item.before else []
        if item.associate:
            if not _send(sock, [item.associate], outcome):
                return _finish(sock, reader, hang_s)
            if not _read_until(sock, reader, lambda: reader.accepted or reader.conclusive, hang_s):
                return _finish(sock, reader, hang_s)
            if not reader.accepted:
                return _finish(sock, reader, hang_s)
            chunks = list(item.after)
            if item.release:
                chunks.append(release_rq())
        if not _send(sock, chunks, outcome):
            return _finish(sock, reader, hang_s)
        if item.associate:
            _read_until(sock, reader, lambda: reader.conclusive, answer_s, quiet=True)
        return _finish(sock, reader, hang_s)


def _send(sock: socket.socket, chunks: list[bytes], outcome: Outcome) -> bool:
    """Send every chunk; False when the gateway closed or reset the connection meanwhile."""
    try:
        for chunk in chunks:
            sock.sendall(chunk)
    except OSError:
        outcome.add("closed-while-sending")
        return False
    return True


def _read_until(
    sock: socket.socket,
    reader: _Reader,
    done: Callable[[], bool],
    seconds: float,
    *,
    quiet: bool = False,
) -> bool:
    """Read until ``done()`` or the connection closes (False) or ``seconds`` pass.

    ``quiet``: ``seconds`` counts from the last byte received, not from the start.
    """
    deadline = time.monotonic() + seconds
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            continue
        try:
            data = sock.recv(65536)
        except OSError:
            reader.outcome.add("reset")
            reader.conclusive = True
            return False
        if not data:
            reader.outcome.add("closed")
            reader.conclusive = True
            return False
        reader.feed(data)
        if quiet:
            deadline = time.monotonic() + seconds
    return True


def _finish(sock: socket.socket, reader: _Reader, hang_s: float) -> Outcome:
    """Half-close, then wait for the gateway to close; a hang if it does not in ``hang_s``."""
    if not reader.conclusive:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
            reader.outcome.add("fin")
        closed = not _read_until(sock, reader, lambda: False, hang_s)
        if not closed:
            reader.outcome.hang = True
            reader.outcome.add("hang")
    return reader.outcome


class StoreClient:
    """pynetdicom's SCU sending mutated Part-10 files as C-STOREs, one association each."""

    def __init__(self, *, host: str, port: int, called: str, workdir: Path, hang_s: float) -> None:
        self.host, self.port, self.called = host, port, called
        self.path = workdir / "c-store.dcm"
        self.ae = AE(ae_title="FUZZSCU")
        self.ae.acse_timeout = hang_s
        self.ae.dimse_timeout = hang_s
        self.ae.network_timeout = hang_s

    def send(self, item: StoreInput) -> Outcome:
        outcome = Outcome()
        self.path.write_bytes(item.part10)
        context = build_context(item.sop_class, [item.transfer_syntax])
        started = time.monotonic()
        assoc = self.ae.associate(self.host, self.port, [context], ae_title=self.called)
        if not assoc.is_established:
            if self._timed_out(started):
                outcome.add("hang")
                outcome.hang = True
            else:
                outcome.add("rejected" if assoc.is_rejected else "aborted")
            return outcome
        started = time.monotonic()
        try:
            status: Dataset = assoc.send_c_store(self.path)
        except (ValueError, RuntimeError, AttributeError) as exc:
            outcome.add(f"scu-error:{type(exc).__name__}")
            assoc.abort()
            return outcome
        if "Status" in status:
            code = int(status.Status)
            outcome.add(f"dimse:0x{code:04X}")
            (outcome.acked if code == 0 else outcome.refused).add(item.request_uid)
            assoc.release()
        elif self._timed_out(started):  # no response, no abort, no close: pynetdicom gave up
            outcome.add("hang")
            outcome.hang = True
            assoc.abort()
        else:
            outcome.add("aborted")
        return outcome

    def _timed_out(self, started: float) -> bool:
        """Whether pynetdicom waited its whole timeout (rather than seeing an abort or close)."""
        return time.monotonic() - started >= 0.95 * float(self.ae.dimse_timeout or 0)
