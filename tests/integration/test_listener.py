"""The listener against hostile peers on raw sockets: deadlines, caps, clean aborts, nothing left."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

import dicom_fixtures
from gateway.index.db import Index
from gateway.ingest.listener import GuardedAssociationServer, ListenerLimits, start_server
from gateway.ingest.receive import Receiver
from gateway.ingest.spool import Spool
from gateway.procs import free_port
from tests.integration import pdus
from tests.integration.dicom import echo, storescu

ABORT = b"\x07"


def start(tmp_path: Path, **limits: float) -> Receiver:
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    rx = Receiver(
        spool=spool, index=Index(tmp_path / "index.sqlite"), limits=ListenerLimits(**limits)
    )  # type: ignore[arg-type]
    rx.start(port=free_port())
    return rx


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    rx = start(tmp_path, negotiation_timeout_s=600)  # only what a test does ends a connection
    yield rx
    rx.stop()
    rx.index.close()


def wait_for(condition: object, what: str, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def incoming(rx: Receiver) -> list[Path]:
    return sorted(rx.spool.incoming.iterdir())


def test_a_silent_or_slow_peer_is_dropped_at_the_negotiation_deadline(tmp_path: Path) -> None:
    rx = start(tmp_path, negotiation_timeout_s=1)
    try:
        silent = pdus.connect(rx.port)
        one_byte = pdus.connect(rx.port)
        one_byte.sendall(b"\x01")
        partial = pdus.connect(rx.port)
        partial.sendall(pdus.associate_rq()[:40])  # half an A-ASSOCIATE-RQ, then nothing
        for sock in (silent, one_byte, partial):
            pdus.wait_closed(sock)
            sock.close()
        wait_for(lambda: rx.connections() == {}, "slots freed")
        assert echo(rx.port)
    finally:
        rx.stop()
        rx.index.close()


def test_connections_closed_before_their_request_free_their_slots_at_once(
    tmp_path: Path,
) -> None:
    # The deadline is far away: only the peer's close can free these slots.
    rx = start(tmp_path, negotiation_timeout_s=600, max_associations_per_host=3)
    try:
        socks = [pdus.connect(rx.port) for _ in range(3)]
        for sock in socks:
            sock.sendall(b"\x01\x00")
        wait_for(lambda: rx.connections() == {"127.0.0.1": 3}, "3 slots taken")
        assert not echo(rx.port)  # this address is at its cap
        for sock in socks:
            sock.close()
        wait_for(lambda: rx.connections() == {}, "slots freed by the close")
        assert echo(rx.port)
    finally:
        rx.stop()
        rx.index.close()


def test_listener_processes_on_one_port_count_the_caps_together(tmp_path: Path) -> None:
    """Two listeners on one port (as ``GATEWAY_LISTENERS=2`` runs them: ``SO_REUSEPORT``,
    the kernel spreading connections) hold at most the node's per-address cap between them,
    not that many each; closing frees the slots for either."""
    port, slots = free_port(), tmp_path / "run" / "slots"
    listeners = []
    for name in ("listen-1", "listen-2"):
        rx = Receiver(
            spool=Spool(tmp_path / name / "spool", reserve_bytes=0),
            index=Index(tmp_path / name / "index.sqlite"),
            limits=ListenerLimits(negotiation_timeout_s=600, max_associations_per_host=3),
        )
        rx.start(port=port, shared_port=True, slots_dir=slots)
        listeners.append(rx)

    def held() -> int:
        return sum(rx.connections().get("127.0.0.1", 0) for rx in listeners)

    def refused() -> int:
        return sum(rx.refused_connections for rx in listeners)

    try:
        socks = [pdus.connect(port) for _ in range(8)]
        for sock in socks:
            sock.sendall(b"\x01\x00")  # a request begun, never finished: each holds a slot
        wait_for(lambda: held() + refused() == 8, "every connection taken or refused")
        assert (held(), refused()) == (3, 5)
        for sock in socks:
            sock.close()
        wait_for(lambda: held() == 0, "slots freed by the close")
        assert echo(port)
    finally:
        for rx in listeners:
            rx.stop()
            rx.index.close()


def test_stalled_sockets_from_one_address_leave_room_for_another(
    receiver: Receiver, tmp_path: Path
) -> None:
    fixture = dicom_fixtures.ct_series(tmp_path / "fixtures", count=1, rows=64, cols=64)
    stalled: list[socket.socket] = []
    try:
        for n in range(200):
            sock = pdus.connect(receiver.port, source="127.0.0.2")
            if n % 3 == 1:
                sock.sendall(b"\x01")
            elif n % 3 == 2:
                sock.sendall(pdus.associate_rq()[:40])
            stalled.append(sock)
        held = receiver.limits.max_associations_per_host
        wait_for(lambda: receiver.refused_connections >= 200 - held, "the rest refused")
        assert echo(receiver.port)
        result = storescu(receiver.port, fixture)
        assert result.returncode == 0, result.stdout
        assert len(receiver.index.all()) == 1
    finally:
        for sock in stalled:
            sock.close()
    wait_for(lambda: receiver.connections() == {}, "slots freed")
    assert echo(receiver.port)


def test_a_pdu_longer_than_the_cap_is_refused_unread(tmp_path: Path) -> None:
    rx = start(tmp_path, max_pdu=65536)
    try:
        # A-ASSOCIATE-RQ declaring 4 GiB
        sock = pdus.connect(rx.port)
        sock.sendall(b"\x01\x00\xff\xff\xff\xf0" + b"\x00" * 4096)
        assert pdus.wait_closed(sock).startswith(ABORT)
        sock.close()
        # a P-DATA one byte over the cap, on an accepted association
        sock = pdus.associate(rx.port, pdus.CT)
        sock.sendall(b"\x04\x00" + (65537).to_bytes(4, "big") + b"\x00" * 4096)
        assert pdus.wait_closed(sock).startswith(ABORT)
        sock.close()
        assert echo(rx.port)
    finally:
        rx.stop()
        rx.index.close()


HOSTILE = {
    # a C-STORE (dataset announced) on context 3, which was never proposed: KeyError in
    # pynetdicom's decoder after it opened the dataset file
    "store-on-unaccepted-context": [pdus.p_data(3, 0b11, pdus.store_command())],
    "garbage-command": [pdus.p_data(1, 0b11, b"\xff\xfe\x00\x10garbage" * 4)],
    "unknown-pdu-type": [b"\x0a\x00\x00\x00\x00\x04abcd"],
    "half-a-dataset-then-abort": [
        pdus.p_data(1, 0b11, pdus.store_command()),
        pdus.p_data(1, 0b00, b"\x08\x00\x05\x00" * 1000),
        b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00",
    ],
    "half-a-dataset-then-close": [
        pdus.p_data(1, 0b11, pdus.store_command()),
        pdus.p_data(1, 0b00, b"\x08\x00\x05\x00" * 1000),
    ],
    "dataset-without-command": [pdus.p_data(1, 0b10, b"\x08\x00\x05\x00" * 10)],
    # a PDU whose body ends before its length says, then the connection closes:
    # GuardedSocket._read hands the DUL the short PDU it got
    "pdu-cut-short-then-close": [
        pdus.p_data(1, 0b11, pdus.store_command()),
        pdus.p_data(1, 0b00, b"\x08\x00\x05\x00" * 1000)[:-1500],
    ],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_p_data_ends_the_association_cleanly_and_leaves_no_file(
    receiver: Receiver, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="pynetdicom")
    sock = pdus.associate(receiver.port, pdus.CT)
    for pdu in HOSTILE[case]:
        sock.sendall(pdu)
    if case.endswith("close"):
        time.sleep(0.2)  # the partial file exists before the close
        sock.close()
    else:
        pdus.wait_abort(sock)
        sock.close()  # as a peer must once aborted
    wait_for(lambda: receiver.connections() == {}, "association over")
    assert incoming(receiver) == []
    assert receiver.index.all() == []
    dead = [r for r in caplog.records if "Exception in DUL.run()" in r.getMessage()]
    assert dead == [], "a pynetdicom thread died on the input"
    assert echo(receiver.port)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_a_peer_silent_in_the_tls_handshake_does_not_hold_the_accept_loop(
    tmp_path: Path,
) -> None:
    import ssl

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from gateway.ingest.listener import start_server

    cert, key = _self_signed(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    ae = AE(ae_title="XRAYGW")
    ae.add_supported_context(Verification)
    server = start_server(
        ae,
        ("127.0.0.1", free_port()),
        limits=ListenerLimits(negotiation_timeout_s=600),
        evt_handlers=[],
        ssl_context=server_context,
    )
    silent = pdus.connect(server.server_address[1])  # connects, never says ClientHello
    try:
        client_context = ssl.create_default_context(cafile=str(cert))
        client = AE(ae_title="TLSSCU")
        client.connection_timeout = 30  # the handshake: it never ends if nobody accepts
        client.add_requested_context(Verification)
        assoc = client.associate(
            "127.0.0.1", server.server_address[1], ae_title="XRAYGW",
            tls_args=(client_context, "localhost"),
        )  # fmt: skip
        assert assoc.is_established
        status = assoc.send_c_echo()
        assoc.release()
        assert status.Status == 0
    finally:
        silent.close()
        server.shutdown()


def test_a_pdu_trickled_a_byte_at_a_time_ends_at_the_network_timeout(tmp_path: Path) -> None:
    rx = start(tmp_path, network_timeout_s=1)
    try:
        sock = pdus.associate(rx.port, pdus.CT)
        sock.sendall(b"\x04\x00" + (60000).to_bytes(4, "big"))  # a P-DATA of 60,000 bytes...
        sock.settimeout(0.3)
        closed = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # ...sent a byte at a time, well inside 1 s apart
            try:
                sock.sendall(b"\x00")
                closed = sock.recv(1) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
            if closed:
                break
        sock.close()
        assert closed, "a trickling peer kept its association past the network timeout"
        wait_for(lambda: rx.connections() == {}, "slot freed")
        assert incoming(rx) == []
        assert echo(rx.port)
    finally:
        rx.stop()
        rx.index.close()


def test_a_request_followed_at_once_by_garbage_never_kills_a_thread(receiver: Receiver) -> None:
    """The A-ASSOCIATE-RQ and an invalid PDU in one write: the DUL aborts (Sta13) while the
    association thread is still answering the request. pynetdicom's state machine raised
    InvalidEventError (Evt7 in Sta13) out of the DUL thread, a traceback per input (pytest,
    with warnings as errors, fails a test in which any thread dies)."""
    for _ in range(40):
        sock = pdus.connect(receiver.port)
        sock.sendall(pdus.associate_rq("1.2.840.10008.1.1") + b"\x7f\x00\x00\x00\x00\x02\x00\x00")
        assert pdus.A_ABORT in pdus.wait_abort(sock)
        sock.close()  # as a peer does on an A-ABORT
    wait_for(lambda: not receiver.connections(), "every connection ended")
    assert echo(receiver.port)


def test_listeners_sharing_one_port_each_serve_it_into_one_index(tmp_path: Path) -> None:
    """Two listeners on one port (SO_REUSEPORT, as several listener processes bind it):
    every instance acked once into the one index; either alone still serves the port."""
    port = free_port()
    index = Index(tmp_path / "index.sqlite")
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    listeners = [
        Receiver(spool=spool, index=index, limits=ListenerLimits())  # type: ignore[arg-type]
        for _ in range(2)
    ]
    files = dicom_fixtures.ct_series(tmp_path / "series", 16, rows=16, cols=16)
    try:
        for rx in listeners:
            rx.start(port=port, shared_port=True)
        with pytest.raises(OSError):  # a listener that does not share is refused the port
            Receiver(spool=spool, index=index).start(port=port)  # type: ignore[arg-type]
        for start in range(0, 16, 2):  # eight associations: the kernel spreads them
            assert storescu(port, files[start : start + 2]).returncode == 0
        assert len(index.all()) == 16
        listeners[0].stop()
        assert storescu(port, files[:1]).returncode == 0  # the other one takes it
        assert len(index.all()) == 17
    finally:
        for rx in listeners:
            rx.stop()
        index.close()


def _server(handlers: list[object]) -> tuple[AE, GuardedAssociationServer]:
    ae = AE("XRAYGW")
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage, ALL_TRANSFER_SYNTAXES)
    server = start_server(
        ae, ("127.0.0.1", free_port()), limits=ListenerLimits(), evt_handlers=handlers
    )
    return ae, server


def test_requests_are_answered_by_the_thread_that_decoded_them(tmp_path: Path) -> None:
    """A C-STORE is served by its association's DUL thread (no hand-off to the reactor
    thread and back): every one after the first, which may come before the association's
    own thread has marked it established."""
    served_by: list[bool] = []

    def handle_store(event: evt.Event) -> int:
        served_by.append(threading.current_thread() is event.assoc.dul)
        return 0x0000

    fixture = dicom_fixtures.ct_series(tmp_path / "fixtures", count=4, rows=64, cols=64)
    ae, server = _server([(evt.EVT_C_STORE, handle_store)])
    try:
        result = storescu(server.server_address[1], fixture)
        assert result.returncode == 0, result.stdout
    finally:
        ae.shutdown()
    assert len(served_by) == 4 and all(served_by[1:])


def test_a_request_sent_the_moment_the_association_is_accepted_is_answered() -> None:
    """The peer may send its C-ECHO as soon as the A-ASSOCIATE-AC is out, before the
    association's thread marks it established; pynetdicom's service classes answer
    nothing then, so such a request waits for the reactor. Held open here by a slow
    EVT_ACCEPTED handler (it runs between the AC and 'established')."""
    served_by: list[bool] = []

    def slow_accept(event: evt.Event) -> None:
        time.sleep(0.5)

    def handle_echo(event: evt.Event) -> int:
        served_by.append(threading.current_thread() is event.assoc.dul)
        return 0x0000

    ae, server = _server([(evt.EVT_ACCEPTED, slow_accept), (evt.EVT_C_ECHO, handle_echo)])
    try:
        assert echo(server.server_address[1])
    finally:
        ae.shutdown()
    assert served_by == [False]  # the reactor answered it, once established
