"""The DICOM port's defences against hostile peers, around pynetdicom's association server.

pynetdicom 3.0 trusts its peers at the socket level: an accepted socket has no
timeout, the DUL reads whatever PDU length a peer declares into memory, every
connection holds an association thread (counted toward ``maximum_associations``)
before its A-ASSOCIATE-RQ has even arrived, and an exception while decoding a
P-DATA (a C-STORE on a presentation context that was never accepted is a
``KeyError``) ends the DUL thread with a traceback. :func:`start_server` starts
the same server with these holes closed:

- **Negotiation deadline.** Until a whole A-ASSOCIATE-RQ has arrived (the TLS
  handshake included, which runs on the connection's thread), every read
  waits at most what is left of ``negotiation_timeout_s`` in total, so a peer
  sending nothing, one byte, or one byte a second is dropped. Afterwards each
  PDU header or body must arrive within ``network_timeout_s``.
- **PDU cap.** A PDU declaring more than ``max_pdu`` bytes is never read: the
  association is aborted (A-ABORT) as soon as its 6-byte header is seen. The
  same value is the maximum PDU length we advertise.
- **Association caps.** Connections are counted per peer address as they are
  accepted, before any thread is started: above ``max_associations_per_host``
  (or ``max_associations`` overall) the connection is closed at once. A slot is
  freed as soon as its connection ends, including one that closed before its
  A-ASSOCIATE-RQ (pynetdicom would keep it for the whole ACSE timeout). With several
  listener processes on one port, the caps count over all of them (``ingest/slots.py``).
- **Clean aborts.** A P-DATA that cannot be decoded (unknown context, malformed
  command set) aborts the association through the state machine (A-ABORT to the
  peer) instead of killing the DUL thread; an exception in an association
  thread is logged in one line, never as a traceback, and the socket is closed.
- **Nothing left behind.** ``on_association_end`` is called once for every
  association that started, however it ended, so the caller can remove the
  partial files it received.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass, VerificationServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)
from pynetdicom.utils import make_target

from gateway.ingest import tls
from gateway.ingest.slots import SharedSlots
from gateway.ingest.store_response import encode_store_response, store_response_pdvs

if TYPE_CHECKING:
    from gateway.config import Settings

log = logging.getLogger(__name__)
# pynetdicom's own loggers, for the lines of its loops reproduced here (the peer log
# filter, gateway/ingest/peerlog.py, knows them by these names).
_dul_log = logging.getLogger("pynetdicom.dul")
_assoc_log = logging.getLogger("pynetdicom.association")

#: The PDU type of an A-ASSOCIATE-RQ: once one has been read whole, negotiation is over.
A_ASSOCIATE_RQ_TYPE = 0x01
#: A-ABORT reason "invalid-PDU-parameter value" (PS3.8 9.3.8), from the service provider.
INVALID_PDU_PARAMETER = 0x06
#: The longest an association's DUL or reactor thread sleeps with nothing to do before it
#: looks at its timers (ARTIM, network idle) again; work wakes it at once.
IDLE_CHECK_S = 0.05


@dataclass(frozen=True)
class ListenerLimits:
    """What one peer may hold of the listener.

    Parameters
    ----------
    max_pdu:
        The largest PDU (variable field, bytes) a peer may send; also advertised.
    max_associations:
        Connections served at once, from all peers together.
    max_associations_per_host:
        Connections served at once from one peer address.
    negotiation_timeout_s:
        How long a connection may take to deliver its whole A-ASSOCIATE-RQ.
    network_timeout_s:
        How long a read may wait once the association is negotiated.
    """

    max_pdu: int = 1 << 20
    max_associations: int = 32
    max_associations_per_host: int = 16
    negotiation_timeout_s: float = 5.0
    network_timeout_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ListenerLimits:
        """The limits of ``GATEWAY_MAX_PDU``, ``GATEWAY_MAX_ASSOCIATIONS[_PER_HOST]`` and
        ``GATEWAY_DICOM_{NEGOTIATION,NETWORK}_TIMEOUT_S``."""
        return cls(
            max_pdu=settings.max_pdu,
            max_associations=settings.max_associations,
            max_associations_per_host=settings.max_associations_per_host,
            negotiation_timeout_s=settings.dicom_negotiation_timeout_s,
            network_timeout_s=settings.dicom_network_timeout_s,
        )


class PeerProtocolError(ConnectionError):
    """The peer broke the protocol at the transport level; its association is aborted."""


class GuardedSocket(AssociationSocket):
    """An accepted association's socket with a negotiation deadline and a PDU-length cap.

    pynetdicom's DUL reads each PDU as ``recv(6)`` (type, reserved, length) then
    ``recv(length)``; both calls come here.
    """

    def __init__(self, assoc: Association, client_socket: socket.socket, limits: ListenerLimits):
        super().__init__(assoc, client_socket=client_socket)
        self.limits = limits
        self.negotiated = False
        self._deadline = time.monotonic() + limits.negotiation_timeout_s
        self._pdu_type: int | None = None  # from the last header read, until its body is read

    def recv(self, nr_bytes: int) -> bytearray:
        if self._pdu_type is not None:  # this is the body of the PDU whose header came last
            pdu_type, self._pdu_type = self._pdu_type, None
            if nr_bytes > self.limits.max_pdu:
                self._abort()
                raise PeerProtocolError(
                    f"PDU of {nr_bytes} bytes refused (GATEWAY_MAX_PDU is {self.limits.max_pdu})"
                )
            data = self._read(nr_bytes)
            if pdu_type == A_ASSOCIATE_RQ_TYPE and len(data) == nr_bytes and not self.negotiated:
                self.negotiated = True
            return data
        data = self._read(nr_bytes)
        if nr_bytes == 6 and len(data) == 6:
            self._pdu_type = data[0]
        return data

    def _read(self, nr_bytes: int) -> bytearray:
        """Read up to ``nr_bytes`` (fewer if the peer closes) before the deadline."""
        sock = cast(socket.socket, self.socket)
        if self.negotiated:  # a whole read, not each chunk: trickling a byte a minute fails
            deadline, what = time.monotonic() + self.limits.network_timeout_s, "network"
        else:
            deadline, what = self._deadline, "negotiation"
        data = bytearray()
        while len(data) < nr_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"peer too slow: {what} timeout")
            sock.settimeout(left)
            chunk = sock.recv(min(nr_bytes - len(data), 65536))
            if not chunk:  # the peer closed: the DUL sees a short PDU
                break
            data += chunk
        return data

    def _abort(self) -> None:
        """Tell the peer why (A-ABORT) before the DUL closes the connection."""
        pdu = A_ABORT_RQ()
        pdu.source = 0x02
        pdu.reason_diagnostic = INVALID_PDU_PARAMETER
        sock = cast(socket.socket, self.socket)
        with contextlib.suppress(OSError):
            sock.sendall(pdu.encode())
            sock.shutdown(socket.SHUT_RDWR)  # the rest of the refused PDU is never read


class GuardedDIMSE(DIMSEServiceProvider):
    """A DIMSE provider that turns an undecodable P-DATA into an abort, not a dead thread.

    Its messages are sent whole, one at a time (:meth:`send_msg`): a C-STORE response
    sent by the DUL thread (:meth:`GuardedAssociation.serve_here`) never falls between
    the fragments of an N-EVENT-REPORT the commitment thread sends on the association.
    """

    def __init__(self, assoc: GuardedAssociation) -> None:
        super().__init__(assoc)
        self._sending = threading.Lock()
        self.msg_queue = ServingQueue(assoc)

    def send_msg(self, primitive: Any, context_id: int) -> None:
        with self._sending:
            pdvs = self._store_response(primitive)
            if pdvs is None:
                super().send_msg(primitive, context_id)
                return
            for pdv in pdvs:
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, pdv))
                self.dul.send_pdu(pdata)

    def _store_response(self, primitive: Any) -> list[bytes] | None:
        """A C-STORE response's P-DATA values, encoded directly (:mod:`gateway.ingest.
        store_response`: the same bytes, without building and encoding a pydicom dataset
        twice per ack); None to leave the message to pynetdicom.

        Only where nothing would see the difference: pynetdicom's own handler is the only
        one bound to EVT_DIMSE_SENT, and for a C-STORE response it logs nothing.
        """
        if not isinstance(primitive, C_STORE) or primitive.MessageIDBeingRespondedTo is None:
            return None
        sent = cast(list[tuple[Any, Any]], self.assoc.get_handlers(evt.EVT_DIMSE_SENT))
        if any(handler is not standard_dimse_sent_handler for handler, _ in sent):
            return None
        encoded = encode_store_response(primitive)
        if encoded is None:
            return None
        return store_response_pdvs(encoded, self.maximum_pdu_size)

    def receive_primitive(self, primitive: Any) -> None:
        try:
            super().receive_primitive(primitive)
        except Exception as exc:  # any P-DATA the peer can craft; the DUL must survive it
            log.warning(
                "aborted the association of %s: undecodable P-DATA (%s)",
                _peer(self.assoc),
                type(exc).__name__,
            )
            self.message = None  # its partial file goes when the association ends
            # Evt19 (invalid PDU): the state machine sends A-ABORT and closes (AA-8).
            self.assoc.dul.event_queue.put("Evt19")


class WakingQueue(queue.Queue[Any]):
    """A queue that calls ``wake`` after each put: its reader sleeps until there is work."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class ServingQueue(WakingQueue):
    """The decoded DIMSE messages: a C-STORE or C-ECHO request put by the DUL thread is
    served right there (:meth:`GuardedAssociation.serve_here`); anything else is queued
    for the association's reactor, woken by the put."""

    def __init__(self, assoc: GuardedAssociation) -> None:
        super().__init__(assoc.wake.set)
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        context_id, message = item
        if not self._assoc.serve_here(context_id, message):
            super().put(item, block, timeout)


class GuardedDUL(DULServiceProvider):
    """A DUL that sleeps until there is work, and whose end always wakes the association.

    pynetdicom 3.0's DUL loop polls: with nothing to do it sleeps 1 ms and looks again
    at its socket and queues, so each association's DUL wakes a thousand times a second
    for the GIL, and a response queued for the peer waits up to 1 ms to be sent. Here
    it waits in ``select`` on its socket and a bell (a socket pair) that every put on
    its queues rings, at most :data:`IDLE_CHECK_S` (its ARTIM timer's expiry is looked
    at that often); what the loop does once awake is pynetdicom's own.

    An acceptor's association thread waits up to the ACSE timeout for the
    A-ASSOCIATE-RQ. When the DUL ends first (the peer closed, or missed the
    negotiation deadline) nothing would wake it; ``None`` on its queue reads as
    "no request", so it closes the connection at once.
    """

    def __init__(self, assoc: GuardedAssociation) -> None:
        super().__init__(assoc)
        self._bell_lock = threading.Lock()
        self._bell: tuple[socket.socket, socket.socket] | None = socket.socketpair()
        for end in self._bell:
            end.setblocking(False)
        self._rung = False
        self.event_queue = WakingQueue(self.ring)
        self.to_provider_queue = WakingQueue(self.ring)
        self.to_user_queue = WakingQueue(assoc.wake.set)

    def ring(self) -> None:
        """Wake the DUL thread (from any thread): something was queued for it."""
        if threading.get_ident() == self.ident:
            return  # it is awake: it looks at its queues before it sleeps again
        with self._bell_lock:
            if self._rung or self._bell is None:
                return
            self._rung = True
            with contextlib.suppress(OSError):  # full: a ring is waiting already
                self._bell[1].send(b"\0")

    def _wait_for_work(self) -> None:
        """Sleep until the peer sends, something is queued, or :data:`IDLE_CHECK_S` passed."""
        if self._kill_thread or not self.event_queue.empty():
            return
        if not self.to_provider_queue.empty():
            return
        bell = self._bell
        assert bell is not None, "the bell lives as long as the DUL thread"
        waiting: list[Any] = [bell[0]]
        transport = self.socket.socket if self.socket is not None else None
        if transport is not None and transport.fileno() >= 0:
            if isinstance(transport, ssl.SSLSocket) and transport.pending():
                return  # decrypted bytes that select cannot see
            waiting.append(transport)
        timeout = min(IDLE_CHECK_S, max(0.0, self.artim_timer.remaining))
        try:
            select.select(waiting, [], [], timeout)
        except (OSError, ValueError):  # the socket closed under us: pynetdicom's own pace
            time.sleep(self._run_loop_delay)
        with self._bell_lock:
            self._rung = False
            with contextlib.suppress(OSError):
                while bell[0].recv(64):
                    pass

    def run_reactor(self) -> None:
        """pynetdicom 3.0's ``DULServiceProvider.run_reactor``, sleeping in
        :meth:`_wait_for_work` instead of polling every millisecond."""
        self._idle_timer.start()
        sock = cast(AssociationSocket, self.socket)
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                idle = True
            if idle:
                self._wait_for_work()
            if self._kill_thread:
                break
            if self.artim_timer.expired:  # its event goes ahead of any other this loop
                self.event_queue.put("Evt18")
            try:
                # Either send what the state machine queued or read one PDU per loop.
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                _dul_log.error("Exception in DUL.run(), aborting association")
                _dul_log.exception(exc)
                # Past the state machine, which the error may have left inconsistent.
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                sock.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False

    def kill_dul(self) -> None:
        super().kill_dul()
        self.ring()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self.ring()  # pynetdicom waits for the thread to end
        return bool(super().stop_dul())

    def _is_transport_event(self) -> bool:
        """Read the next PDU only once the state machine has acted on the last one.

        pynetdicom reads on while events wait: after an unknown PDU type (Evt19, its body
        left unread) it would block reading that body as the next header, until the
        deadline, instead of aborting at once.
        """
        if not self.event_queue.empty():
            return False
        return bool(super()._is_transport_event())

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            # pynetdicom's state machine raises on an event its state does not allow, e.g.
            # a response queued just before the peer's A-ABORT (Evt7/Evt9/Evt14 in Sta13):
            # the peer's doing, so one line, the connection closed, never a thread traceback.
            log.warning(
                "association of %s: upper layer stopped by %s",
                _peer(self.assoc),
                type(exc).__name__,
            )
            self._kill_thread = True
            if self.socket is not None:
                self.socket.close()
        finally:
            self.to_user_queue.put(None)  # type: ignore[arg-type,unused-ignore]
            with self._bell_lock:
                bell, self._bell = self._bell, None
            if bell is not None:
                for end in bell:
                    end.close()


class GuardedAssociation(Association):
    """An acceptor association that reports its end and never dies with a traceback.

    Its reactor sleeps until there is work (:attr:`wake`: a DIMSE message decoded, a
    primitive from the DUL, the end), at most :data:`IDLE_CHECK_S`, where pynetdicom's
    polls every millisecond: a decoded C-STORE reaches its handler at once.
    """

    def __init__(self, ae: AE, *, on_end: Callable[[GuardedAssociation], None]) -> None:
        super().__init__(ae, MODE_ACCEPTOR)
        self.wake = threading.Event()
        self.dul = GuardedDUL(self)
        self.dimse = GuardedDIMSE(self)
        self.network_timeout = self.network_timeout  # onto the new DUL's idle timer
        self._on_end = on_end

    def kill(self) -> None:
        self.wake.set()
        super().kill()

    def _abort_blocking(self, block: bool = True) -> None:
        """pynetdicom's abort; never waiting for the DUL to stop when the DUL thread itself
        aborts (from a request it serves): it would wait for itself."""
        super()._abort_blocking(block and threading.current_thread() is not self.dul)

    def serve_here(self, context_id: int | None, message: Any) -> bool:
        """Serve a C-STORE or C-ECHO request on the thread that decoded it, the DUL's.

        pynetdicom hands every decoded request to the association's reactor thread and
        the response back to the DUL thread: two thread hand-offs per C-STORE, each a
        wake-up and a wait for the GIL, on the path of every ack. The DUL thread has
        nothing else to do meanwhile: the peer waits for the response (one operation at
        a time is negotiated). What ``Association._serve_request`` does, except setting
        ``_is_paused``, which belongs to the reactor thread. Anything else (responses,
        N-ACTION, requests on contexts that were not accepted, a request that came before
        the association was marked established) goes to the reactor.

        Returns
        -------
        bool
            True if the request was served here.
        """
        if threading.current_thread() is not self.dul or context_id is None:
            return False
        if not self.is_established:
            # The peer may send as soon as our A-ASSOCIATE-AC is out, before this
            # association's thread marks it established; pynetdicom's service classes
            # then skip the response (they read it as aborted). The reactor serves it.
            return False
        if not isinstance(message, C_STORE | C_ECHO) or not message.is_valid_request:
            return False
        context = self._accepted_cx.get(context_id)
        if context is None or self._sent_release:
            return False
        class_uid = cast(UID, message.AffectedSOPClassUID)
        with contextlib.suppress(KeyError):
            class_uid = self.acceptor.accepted_common_extended[class_uid][0]
        if _config.UNRESTRICTED_STORAGE_SERVICE and isinstance(message, C_STORE):
            class_uid = UID("1.2.840.10008.5.1.4.1.1.1")
        service = uid_to_service_class(class_uid)
        if not issubclass(service, StorageServiceClass | VerificationServiceClass):
            return False
        self.dimse.cancel_req = {}
        try:
            service(self).SCP(message, context)
        except Exception as exc:  # as pynetdicom's reactor: logged, the association aborted
            _assoc_log.exception(exc)
            self.abort()
        self.dimse.cancel_req = {}
        return True

    def _run_reactor(self) -> None:
        """pynetdicom 3.0's ``Association._run_reactor``, sleeping on :attr:`wake` while
        nothing came in instead of 1 ms before every look.

        It sleeps marked paused (``_is_paused``), where pynetdicom's sleeps just before:
        a thread sending on this association (an N-EVENT-REPORT) may take it over then.
        """
        self._is_paused = False
        idle = False
        while not self._kill:
            self._is_paused = True
            if idle:
                timeout = min(IDLE_CHECK_S, max(0.0, self.dul._idle_timer.remaining))
                self.wake.wait(timeout)
                self.wake.clear()  # whatever woke it is looked at below
            self._reactor_checkpoint.wait()  # a sender holds it paused until done
            self._is_paused = False
            context_id, msg = self.dimse.get_msg(block=False)
            idle = msg is None
            if msg:
                self._serve_request(msg, cast(int, context_id))
            if self._reactor_done():
                return

    def _reactor_done(self) -> bool:
        """The end checks of pynetdicom's reactor loop: released, aborted, DUL gone, idle."""
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            _assoc_log.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return True
        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            _assoc_log.info(log_msg)
            self.dul.receive_pdu(wait=False)  # EVT_ACSE_RECV fires for its subscribers
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return True
        if not self.dul.is_alive():
            self.kill()
            return True
        if self.dul.idle_timer_expired():
            _assoc_log.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return True
        return False

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # a peer's input must not surface as a thread traceback
            log.warning("association with %s ended by %s: aborted", _peer(self), type(exc).__name__)
            self._abandon()
        finally:
            self._on_end(self)

    def _abandon(self) -> None:
        """Stop the DUL and close the connection after an unexpected error."""
        self.is_established = False
        self.is_aborted = True
        self.dul.kill_dul()
        sock = self.dul.socket
        if sock is not None and sock.socket is not None:
            sock.close()


class GuardedRequestHandler(RequestHandler):
    """Starts a :class:`GuardedAssociation` on a :class:`GuardedSocket` for each connection."""

    server: GuardedAssociationServer

    def handle(self) -> None:
        context = self.server.ssl_context
        if context is not None:
            # The TLS handshake, here on the connection's own thread and under the
            # negotiation deadline (the socket's timeout), never on the accept thread.
            try:
                self.request = context.wrap_socket(self.request, server_side=True)
            except (OSError, ValueError) as exc:  # no or a wrong certificate, silence, plain
                why = tls.reason(exc).replace("_", " ").lower()  # "certificate verify failed"
                raise PeerProtocolError(f"TLS handshake failed: {why}") from None
        assoc = self._create_association()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()

    def _create_association(self) -> Association:
        """pynetdicom's ``RequestHandler._create_association``, with the guarded parts."""
        server = self.server
        limits = server.limits
        host = self.client_address[0]
        assoc = GuardedAssociation(self.ae, on_end=lambda a: server.association_ended(a, host))
        assoc._server = server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        # Waiting for the A-ASSOCIATE-RQ is bounded by the negotiation deadline too.
        assoc.acse_timeout = limits.negotiation_timeout_s
        request = cast(socket.socket, self.request)
        assoc.set_socket(GuardedSocket(assoc, request, limits))

        assoc.acceptor.maximum_length = limits.max_pdu
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        # Shared, not copied: negotiation only reads them (pynetdicom's
        # negotiate_as_acceptor builds new contexts for the result), and pynetdicom's
        # deepcopy of every storage context with every transfer syntax took 40-200 ms of
        # CPU per association, the most of all for several associations at once.
        assoc.acceptor.supported_contexts = server.contexts
        assoc.requestor.address_info = self.remote

        for event, handlers in server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *cast(tuple[Any, Any], handlers))
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in cast(list[tuple[Any, Any]], handlers):
                    assoc.bind(event, handler, args)
        # The ACSE timeout applies to release and abort waits again once negotiated.
        assoc.bind(evt.EVT_ACCEPTED, _restore_acse_timeout)
        return assoc


def _restore_acse_timeout(event: Any) -> None:
    assoc = event.assoc
    artim = assoc.dul.artim_timer.timeout
    assoc.acse_timeout = assoc.ae.acse_timeout  # (its setter sets the ARTIM timer too)
    # ARTIM bounds how long an aborted connection waits for the peer to close (Sta13):
    # keep that as short as the negotiation deadline.
    assoc.dul.artim_timer.timeout = artim


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, counting connections per peer address before any thread."""

    limits: ListenerLimits = ListenerLimits()
    #: The node's slots over all its listener processes (None: this process is the one).
    shared_slots: SharedSlots | None = None
    # socketserver's default backlog (5) drops the SYNs of a burst of connections, and a
    # dropped SYN is retried only after a second: a flood would delay every modality.
    request_queue_size = 256
    on_association_end: Callable[[Association], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots_lock = threading.Lock()
        self._by_host: dict[str, int] = {}
        self._held: dict[str, list[tuple[int, int]]] = {}  # shared slots, by peer address
        self.refused = 0  # connections closed at once because a cap was reached
        kwargs["request_handler"] = GuardedRequestHandler
        super().__init__(*args, **kwargs)

    def connections(self) -> dict[str, int]:
        """Connections being served, by peer address."""
        with self._slots_lock:
            return dict(self._by_host)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection; its TLS handshake (if any) is left to its own thread.

        pynetdicom wraps the socket here, on the accept thread and with no timeout: one
        peer that never sends its ClientHello would stop every later connection.
        """
        client, address = cast(socket.socket, self.socket).accept()
        client.settimeout(self.limits.negotiation_timeout_s)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Take a slot for this peer address, or refuse (socketserver closes the socket)."""
        host = str(client_address[0])
        with self._slots_lock:
            total = sum(self._by_host.values())
            mine = self._by_host.get(host, 0)
            if total >= self.limits.max_associations:
                reason = f"GATEWAY_MAX_ASSOCIATIONS ({self.limits.max_associations}) reached"
            elif mine >= self.limits.max_associations_per_host:
                reason = (
                    f"GATEWAY_MAX_ASSOCIATIONS_PER_HOST ({self.limits.max_associations_per_host})"
                    f" reached for {host}"
                )
            else:
                held = self.shared_slots.take(host) if self.shared_slots is not None else None
                if not isinstance(held, str):
                    self._by_host[host] = mine + 1
                    if held is not None:
                        self._held.setdefault(host, []).append(held)
                    return True
                reason = held  # the other listener processes hold the node's slots
            self.refused += 1
        log.warning("refused a connection from %s: %s", host, reason)
        return False

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Start the association; give the slot back if it never started."""
        try:
            self.finish_request(request, client_address)
        except Exception as exc:
            why = exc if isinstance(exc, PeerProtocolError) else type(exc).__name__
            log.warning("connection from %s dropped: %s", client_address[0], why)
            self.shutdown_request(request)
            self._release(str(client_address[0]))

    def association_ended(self, assoc: Association, host: str) -> None:
        """Called by each association as its thread ends, however it ended."""
        try:
            if self.on_association_end is not None:
                self.on_association_end(assoc)
        finally:
            self._release(host)

    def _release(self, host: str) -> None:
        with self._slots_lock:
            left = self._by_host.get(host, 0) - 1
            if left > 0:
                self._by_host[host] = left
            else:
                self._by_host.pop(host, None)
            held = self._held.get(host)
            if held:
                SharedSlots.give_back(held.pop())
                if not held:
                    del self._held[host]


class SharedPortServer(GuardedAssociationServer):
    """The guarded server on a port that other processes listen on too (``SO_REUSEPORT``):
    the kernel spreads new connections over every socket bound to it, so each listener
    process takes its share with its own GIL. The association caps count over every
    listener process of the node when :func:`start_server` is given a ``slots_dir``
    (:class:`~gateway.ingest.slots.SharedSlots`)."""

    def server_bind(self) -> None:
        cast(socket.socket, self.socket).setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def start_server(
    ae: AE,
    address: tuple[str, int],
    *,
    limits: ListenerLimits,
    evt_handlers: list[Any],
    on_association_end: Callable[[Association], None] | None = None,
    ssl_context: Any = None,
    shared_port: bool = False,
    slots_dir: Path | None = None,
) -> GuardedAssociationServer:
    """``AE.start_server(address, block=False, ...)`` with the guarded server.

    The AE's ``maximum_pdu_size`` becomes ``limits.max_pdu``; its
    ``maximum_associations`` is set above the caps counted here (pynetdicom counts
    an association until its thread ends, a little after its connection).
    ``shared_port`` binds with ``SO_REUSEPORT`` (:class:`SharedPortServer`); with
    ``slots_dir`` (the node's run dir), the caps count over every process listening there.
    """
    ae.maximum_pdu_size = limits.max_pdu
    ae.maximum_associations = 2 * limits.max_associations
    ae.network_timeout = limits.network_timeout_s
    server = cast(
        GuardedAssociationServer,
        ae.make_server(
            address,
            evt_handlers=evt_handlers,
            ssl_context=ssl_context,
            server_class=SharedPortServer if shared_port else GuardedAssociationServer,
        ),
    )
    server.limits = limits
    if slots_dir is not None:
        server.shared_slots = SharedSlots(
            slots_dir, port=int(server.server_address[1]), total=limits.max_associations,
            per_host=limits.max_associations_per_host,
        )  # fmt: skip
    server.on_association_end = on_association_end
    thread = threading.Thread(
        target=make_target(server.serve_forever),
        name=f"AcceptorServer@{datetime.now():%Y%m%d%H%M%S}",
        daemon=True,
    )
    thread.start()
    ae._servers.append(server)
    return server


def _peer(assoc: Association) -> str:
    """The peer's address, for log lines (never its AE's data)."""
    try:
        return str(assoc.requestor.address)
    except Exception:
        return "?"


def nodelay(event: Any) -> None:
    """EVT_CONN_OPEN: TCP_NODELAY on the association's socket, once per connection.

    pynetdicom leaves Nagle's algorithm on (it sets only ``SO_REUSEADDR``), which holds
    back small PDUs (A-ASSOCIATE-AC, C-STORE and N-ACTION responses, N-EVENT-REPORTs)
    until the peer's delayed ACK: tens of ms per instance. Bound for accepted and for
    requested associations alike.
    """
    try:
        sock = event.assoc.dul.socket.socket
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass
