"""The DICOM listener (pynetdicom): C-ECHO, and C-STORE acked only once the bytes are durable.

Each handler answers with a DICOM status, never an exception:

=======  ===============================================================
0x0000   stored: the instance is fsynced in the spool and in the index
0xA700   out of resources: the spool cannot take it (full, unwritable), or the
         dataset inflates past GATEWAY_MAX_INSTANCE_BYTES; nothing is kept, never acked
0xA900   the dataset's SOP Instance/Class UID differs from the request's
0x0124   refused, not authorized: the image was erased on request (erasure); never kept
0xC000   cannot understand: hostile UID, unparsable or truncated dataset
=======  ===============================================================

With a :class:`~gateway.ingest.commitment.CommitmentSCP`, the same AE also answers Storage
Commitment (Push Model) N-ACTION requests.

The AE listens on a plain port, a DICOM TLS port (:mod:`gateway.ingest.tls`), or both; both share
the handlers, the spool and the index. A calling AE title that is not in the allow-list,
or calls from an address it may not use (:mod:`gateway.core.allowlist`), is rejected at
association time: A-ASSOCIATE-RJ, rejected-permanent, calling AE title not recognised.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import config
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    _config,
    dimse_messages,
    evt,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from gateway import failpoints
from gateway.core.allowlist import Network, refusal
from gateway.core.fingerprint import MAX_INSTANCE_BYTES, checked_header
from gateway.errors import DatasetTooLarge, DatasetUnreadable, SpoolUnavailable
from gateway.index.db import Index
from gateway.ingest import file_meta
from gateway.ingest.listener import GuardedAssociationServer, ListenerLimits, nodelay, start_server
from gateway.ingest.spool import IncomingFile, Spool

if TYPE_CHECKING:
    from gateway.ingest.commitment import CommitmentSCP

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
NOT_AUTHORIZED = 0x0124  # "Refused: Not Authorized" (PS3.7 C.4.2): an erased image
CANNOT_UNDERSTAND = 0xC000

# A-ASSOCIATE-RJ: rejected-permanent, by the DUL service user, calling AE not recognised.
REJECTED_PERMANENT = 0x01
SERVICE_USER = 0x01
CALLING_AE_NOT_RECOGNISED = 0x03

#: Acks closer together than this are a stream the pipeline yields to: small instances,
#: where the listener's per-ack work and the worker's index writes compete (CT slices
#: arrive ~4 ms apart here). Large ones (10 MB chest images, 35-45 ms apart) are not
#: held back: the yields delayed their anchor by ~1.7 s, while sealing them beside the
#: stream costs the seed's ~4 s ack ~0.4 s (docs/performance.md, "Session 10").
STREAMING_S = 0.02
#: The longest a pipeline stage waits for a stream of C-STOREs to pause.
MAX_YIELD_S = 0.25


class SpoolingAE(AE):
    """An AE whose C-STORE datasets arrive in the files its receiver makes, never in memory.

    Parameters
    ----------
    ae_title:
        Our AE title.
    dataset_file:
        Called on the DUL thread of an association of this AE, with that association,
        for each C-STORE dataset it starts to receive; returns the file (with the part of
        the ``NamedTemporaryFile`` interface pynetdicom uses) the dataset is written to.
    """

    def __init__(self, ae_title: str, *, dataset_file: Callable[[Any], IncomingFile]) -> None:
        super().__init__(ae_title=ae_title)
        self.dataset_file = dataset_file
        route_received_datasets()


_routing = threading.Lock()
_routed = False


def route_received_datasets() -> None:
    """Have pynetdicom write each received C-STORE dataset to a file of its own AE's spool.

    pynetdicom 3.0 offers no hook for this at the AE or the association: whether a
    dataset is written to a file is a module global (``_config.STORE_RECV_CHUNKED_DATASET``),
    and the file is made by the ``NamedTemporaryFile`` that ``dimse_messages`` imported,
    called without the association. So this is the one patch of pynetdicom's globals,
    installed once per process (by every :class:`SpoolingAE`), and it routes: each file
    comes from the AE of the association being decoded, so that two receivers in one
    process keep their files apart. Any other AE gets pynetdicom's own temporary file.

    The same place writes the file's File Meta with :mod:`gateway.ingest.file_meta`'s
    encoder instead of a pydicom dataset built and written per instance: the same bytes
    (a unit test compares them), a tenth of the listener's CPU per CT slice less.
    """
    global _routed
    with _routing:
        if _routed:
            return
        _config.STORE_RECV_CHUNKED_DATASET = True
        setattr(dimse_messages, "NamedTemporaryFile", _dataset_file)  # noqa: B010
        setattr(dimse_messages, "create_file_meta", file_meta.create_file_meta)  # noqa: B010
        setattr(dimse_messages, "write_file_meta_info", file_meta.write_file_meta_info)  # noqa: B010
        _routed = True


def _dataset_file(*args: Any, **kwargs: Any) -> Any:
    """The file a C-STORE dataset arrives in, asked of the AE whose association receives it.

    pynetdicom decodes P-DATA on the association's DUL thread, which knows its association.
    """
    assoc = getattr(threading.current_thread(), "assoc", None)
    ae = getattr(assoc, "ae", None)
    if isinstance(ae, SpoolingAE):
        return ae.dataset_file(assoc)
    return tempfile.NamedTemporaryFile(*args, **kwargs)  # pynetdicom closes and removes it


def status(code: int, comment: str = "") -> Dataset:
    """A C-STORE response status, with an Error Comment (LO, at most 64 characters)."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def valid_uid(value: object) -> bool:
    """A syntactically valid UID: digits and dots, at most 64 characters.

    Checked without pydicom's own validation, which would log (and warn) the peer's
    value once more for every hostile UID.
    """
    return isinstance(value, str) and UID(value, validation_mode=config.IGNORE).is_valid


def wait_while_streaming(last: Callable[[], float]) -> None:
    """Sleep while the latest ack (``last()``, time.monotonic()) is under ``STREAMING_S``
    old, at most ``MAX_YIELD_S``: acks first, for the listener's own pipeline and for
    worker processes alike."""
    deadline = time.monotonic() + MAX_YIELD_S
    while True:
        now = time.monotonic()
        quiet = last() + STREAMING_S
        if now >= quiet or now >= deadline:
            return
        time.sleep(min(quiet, deadline) - now)


@dataclass
class Receiver:
    """The gateway's Storage SCP.

    Parameters
    ----------
    spool, index:
        Where received instances become durable.
    ae_title:
        Our AE title; associations calling another one are rejected.
    allowed_aets:
        Calling AE title -> the networks it may call from (empty: from anywhere); an
        empty mapping lets every AE in.
    on_stored:
        Called with the index row id after each acked instance (wakes the pipeline).
    commitment:
        The Storage Commitment SCP to answer N-ACTION with, if any.
    max_instance_bytes:
        The most bytes a dataset may inflate to (``GATEWAY_MAX_INSTANCE_BYTES``); a deflated
        dataset is inflated on the spool's filesystem to be checked before the ack.
    limits:
        What one peer may hold of the listener (timeouts, PDU size, associations).
    node:
        This gateway node's id, recorded on each row: its spool holds the bytes.
    on_response:
        Called with each C-STORE response's status (``up`` counts them in the metrics
        that add up over its listener processes).
    on_ack:
        Called with each successful C-STORE's ack latency in seconds, from its dataset's
        first bytes to the success response (``up``'s ack latency histogram).
    """

    spool: Spool
    index: Index
    ae_title: str = "XRAYGW"
    allowed_aets: Mapping[str, tuple[Network, ...]] = field(default_factory=dict)
    on_stored: Callable[[int], None] | None = None
    commitment: CommitmentSCP | None = None
    max_instance_bytes: int = MAX_INSTANCE_BYTES
    limits: ListenerLimits = field(default_factory=ListenerLimits)
    node: str | None = None
    on_response: Callable[[int], None] | None = None
    on_ack: Callable[[float], None] | None = None

    def __post_init__(self) -> None:
        self._server: GuardedAssociationServer | None = None  # the plain port's
        self._tls_server: GuardedAssociationServer | None = None
        self._lock = threading.Lock()
        # The files each association is receiving into, removed when it ends (see
        # discard_partials): any it did not get to file are partial or refused.
        self._receiving: dict[int, list[IncomingFile]] = {}
        self.responses: Counter[int] = Counter()  # C-STORE responses by status, for /metrics
        self._started: dict[str, float] = {}  # incoming file name -> when its bytes began
        self._last_store = -STREAMING_S

    def build_ae(self) -> SpoolingAE:
        """The AE, configured here and only here: contexts, AE titles, where datasets arrive.

        A dataset arrives in an :class:`~gateway.ingest.spool.IncomingFile` on the spool's
        filesystem, so that accepting it is a rename, not a copy, and a full disk is a
        refusal rather than an aborted association.
        """
        ae = SpoolingAE(self.ae_title, dataset_file=self._incoming_file)
        ae.maximum_pdu_size = self.limits.max_pdu
        ae.require_called_aet = True
        if self.allowed_aets:
            ae.require_calling_aet = list(self.allowed_aets)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if self.commitment is not None:
            self.commitment.add_contexts(ae)
        return ae

    def start(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = 11112,
        tls_port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        shared_port: bool = False,
        slots_dir: Path | None = None,
    ) -> None:
        """Listen in the background: plain DICOM on ``port`` (None: not at all), and DICOM
        TLS on ``tls_port`` when an ``ssl_context`` (:func:`gateway.ingest.tls.server_context`) is
        given. Each port counts its own connections against ``limits``
        (:class:`gateway.ingest.listener.GuardedAssociationServer`). ``shared_port``: other
        listener processes may bind the same ports (``SO_REUSEPORT``); ``slots_dir``: they
        count the association caps together there (``ingest/slots.py``)."""
        ae = self.build_ae()
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_CONN_OPEN, nodelay),
            (evt.EVT_REQUESTED, self.handle_requested),
        ]
        if self.commitment is not None:
            handlers.append((evt.EVT_N_ACTION, self.commitment.handle_action))
        if port is not None:
            self._server = start_server(
                ae,
                (host, port),
                limits=self.limits,
                evt_handlers=handlers,
                on_association_end=self.discard_partials,
                shared_port=shared_port,
                slots_dir=slots_dir,
            )
        if ssl_context is not None:
            assert tls_port is not None, "a TLS listener needs its port"
            self._tls_server = start_server(
                ae,
                (host, tls_port),
                limits=self.limits,
                evt_handlers=handlers,
                on_association_end=self.discard_partials,
                ssl_context=ssl_context,
                shared_port=shared_port,
                slots_dir=slots_dir,
            )

    @property
    def port(self) -> int:
        """The plain DICOM port."""
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def tls_port(self) -> int:
        """The DICOM TLS port."""
        assert self._tls_server is not None
        return int(self._tls_server.server_address[1])

    def stop(self) -> None:
        for server in (self._server, self._tls_server):
            if server is not None:
                server.shutdown()
        self._server = self._tls_server = None

    def connections(self) -> dict[str, int]:
        """Connections being served now, by peer address, over both ports."""
        counts: Counter[str] = Counter()
        for server in (self._server, self._tls_server):
            if server is not None:
                counts.update(server.connections())
        return dict(counts)

    @property
    def refused_connections(self) -> int:
        """Connections closed at once because an association cap was reached."""
        return sum(s.refused for s in (self._server, self._tls_server) if s is not None)

    def response_counts(self) -> dict[int, int]:
        """C-STORE responses sent so far, by status code."""
        with self._lock:
            return dict(self.responses)

    def _incoming_file(self, assoc: object) -> IncomingFile:
        """pynetdicom's file for a dataset arriving on ``assoc``, noted under it."""
        incoming = self.spool.incoming_file()
        with self._lock:
            self._started[str(incoming.name)] = time.monotonic()
            self._receiving.setdefault(id(assoc), []).append(incoming)
        return incoming

    def discard_partials(self, assoc: object) -> None:
        """Remove what an association that ended was still receiving or was refused.

        Called once its thread ends, however it ended (release, abort, peer close,
        timeout, undecodable P-DATA). A filed dataset was renamed into the spool, so
        removing its incoming name is a no-op.
        """
        with self._lock:
            files = self._receiving.pop(id(assoc), [])
            for incoming in files:
                self._started.pop(str(incoming.name), None)
        left = [f for f in files if Path(f.name).exists()]
        for incoming in left:
            incoming.discard()
        if left:
            log.warning("association ended mid-dataset: %d partial reception(s) removed", len(left))

    def handle_echo(self, event: Any) -> int:
        return SUCCESS

    def handle_requested(self, event: Any) -> None:
        """EVT_REQUESTED: reject a calling AE that is unknown, or calls from the wrong address.

        pynetdicom's own ``require_calling_aet`` (set in :meth:`build_ae`) knows titles
        only; the host check needs the peer's address, and EVT_REQUESTED is where
        pynetdicom lets a handler reject before negotiation.
        """
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        why = refusal(self.allowed_aets, calling, str(assoc.requestor.address))
        if why is None:
            return
        log.warning("association rejected: %s", why)
        assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()  # as pynetdicom does after its own rejections: waits for the peer to close

    def handle_store(self, event: Any) -> Dataset:
        """Make the instance durable, then ack; any refusal is a status with a comment."""
        response = self._store(event)
        with self._lock:
            self.responses[int(response.Status)] += 1
            started = self._started.pop(str(event.dataset_path), None)
        if started is not None and int(response.Status) == SUCCESS and self.on_ack is not None:
            self.on_ack(time.monotonic() - started)
        self._last_store = time.monotonic()
        if self.on_response is not None:
            self.on_response(int(response.Status))
        return response

    def last_ack(self) -> float:
        """When the latest C-STORE was answered (time.monotonic())."""
        return self._last_store

    def yield_to_acks(self) -> None:
        """Hold the caller (a pipeline stage) back while C-STOREs stream in, at most MAX_YIELD_S.

        The pipeline's Python work (web3 above all) competes with the listener's threads
        for the GIL. Measured on 200 CT slices: acked in 1.1-1.3 s with the pipeline
        paused, 4.2 s with it running beside the listener. Waiting while the acks come
        back to back lets the modality finish first; the bound keeps commits advancing
        during a long stream.
        """
        wait_while_streaming(lambda: self._last_store)

    def _store(self, event: Any) -> Dataset:
        request = event.request
        requested_uid = request.AffectedSOPInstanceUID
        requested_class = request.AffectedSOPClassUID
        calling = str(event.assoc.requestor.ae_title).strip()
        path = Path(event.dataset_path)
        overflow = self.spool.overflowed(path)
        if overflow is not None:
            log.error(
                "refused C-STORE %s from %s: spool full (%s)", requested_uid, calling, overflow
            )
            return status(OUT_OF_RESOURCES, "gateway spool is full")
        if not valid_uid(requested_uid) or not valid_uid(requested_class):
            log.warning("refused C-STORE from %s: invalid UID in the request", calling)
            return status(CANNOT_UNDERSTAND, "invalid SOP Instance or Class UID in request")
        # A deflated dataset is inflated beside the spool to be checked: within the cap, and
        # within the room above the spool's reserve, so that a small bomb cannot fill the disk.
        room = max(self.spool.free_bytes() - self.spool.reserve_bytes, 0)
        limit = min(self.max_instance_bytes, room)
        incoming = self.spool.arriving(path)
        written = incoming.written_meta if incoming is not None else None
        try:
            with path.open("rb") as stream:
                header = checked_header(
                    stream, limit=limit, scratch=self.spool.incoming, written=written
                )
        except DatasetTooLarge as exc:
            if exc.limit is not None and exc.limit < self.max_instance_bytes:
                log.error("refused C-STORE %s: no room left to inflate it (%s)", requested_uid, exc)
                return status(OUT_OF_RESOURCES, "gateway spool is full")
            # A resource limit of this gateway, not a fault of the encoding: out of resources,
            # as for a full spool. The comment names the limit so the sender can tell.
            log.warning("refused C-STORE %s from %s: %s", requested_uid, calling, exc)
            return status(OUT_OF_RESOURCES, f"refused: {exc}")
        except DatasetUnreadable as exc:
            log.warning("refused C-STORE %s from %s: %s", requested_uid, calling, exc)
            return status(CANNOT_UNDERSTAND, f"dataset cannot be understood: {exc}")
        except OSError as exc:
            log.error("spool read failed: %s", exc)
            return status(OUT_OF_RESOURCES, "gateway spool unavailable")
        if not valid_uid(header.sop_instance_uid) or not valid_uid(header.sop_class_uid):
            log.warning("refused C-STORE from %s: invalid UID in the dataset", calling)
            return status(CANNOT_UNDERSTAND, "invalid SOP Instance or Class UID in dataset")
        if header.sop_instance_uid != requested_uid:
            log.warning("refused C-STORE %s from %s: dataset UID differs", requested_uid, calling)
            return status(DATASET_MISMATCH, "SOP Instance UID differs from the request")
        if header.sop_class_uid != requested_class:
            return status(DATASET_MISMATCH, "SOP Class UID differs from the request")
        if not valid_uid(header.study_instance_uid) or not valid_uid(header.series_instance_uid):
            # Type 1 in every image IOD; the PACS cannot file an instance without them.
            log.warning("refused C-STORE %s from %s: no Study/Series UID", requested_uid, calling)
            return status(DATASET_MISMATCH, "missing or invalid Study/Series Instance UID")
        if self.index.was_erased(requested_uid):
            log.warning("refused C-STORE from %s: an erased image sent again", calling)
            return status(NOT_AUTHORIZED, "refused: this image was erased on request")
        if not self.spool.has_room():
            log.error("refused C-STORE %s: the spool is full", requested_uid)
            return status(OUT_OF_RESOURCES, "gateway spool is full")
        try:
            entry = self.spool.accept(path)
        except (SpoolUnavailable, OSError) as exc:
            log.error("refused C-STORE %s: %s", requested_uid, exc)
            return status(OUT_OF_RESOURCES, "gateway spool unavailable")
        try:
            row_id = self.index.add_received(
                entry_id=entry.entry_id,
                sop_instance_uid=requested_uid,
                sop_class_uid=requested_class,
                calling_aet=calling,
                size=entry.size,
                spool_sha256=entry.sha256,
                received_by=self.node,
            )
        except Exception as exc:  # the index is our durability too: no row, no ack
            log.exception("refused C-STORE %s: index write failed", requested_uid)
            self.spool.discard(entry.entry_id)  # nothing would ever process it
            return status(OUT_OF_RESOURCES, f"gateway index unavailable: {type(exc).__name__}")
        if self.on_stored is not None:
            self.on_stored(row_id)
        failpoints.hit("receive.before_ack")
        return status(SUCCESS)
