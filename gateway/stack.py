"""``xray-gateway up``: every part started in order under the data dir, stopped in reverse.

chain (anvil) -> contract -> keys -> PACS (Orthanc) -> object store -> index/spool ->
worker processes (the pipeline) -> Storage Commitment SCP -> DICOM listener -> HTTP API

The pipeline runs in ``GATEWAY_WORKERS`` worker processes (:class:`WorkerNode`, the
``xray-gateway worker`` command), children of ``up`` that die with it and that ``up``
starts again when one dies; the listener rings them after each ack (``ingest/wakeup``).
The first anchors (one process sends the recorder's transactions); the others run every
other stage. ``GATEWAY_INPROCESS_PIPELINE`` keeps the pipeline on threads in ``up``.

With ``GATEWAY_LISTENERS`` above 1 the DICOM listener leaves ``up``'s process too: that
many :class:`ListenerNode` processes (``xray-gateway listener``) accept on the one DICOM
port (``SO_REUSEPORT``), supervised as the workers are.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from gateway.api import create_app
from gateway.api.app import Health
from gateway.api.auth import Tokens, ensure_token
from gateway.api.console import Console
from gateway.api.deps import Services
from gateway.api.limits import Limits, RateLimiter, UploadArea
from gateway.api.sessions import Sessions, ensure_session_key
from gateway.config import Settings
from gateway.core.checkpoint import init_log_key, load_log_key
from gateway.core.keys import init_keys, load_keyring, load_pseudonym_key
from gateway.core.nodes import worker_id
from gateway.errors import ChildFailed, ConfigError
from gateway.index.db import Index
from gateway.index.erasure import StudyKeys
from gateway.index.evidence_view import prepare_evidence_reader
from gateway.index.keycheck import check_shared_keys
from gateway.ingest.anchor import BatchAnchorer, SingleAnchorer
from gateway.ingest.chain_requests import ChainRequestLoop, QueuedChain
from gateway.ingest.commitment import CommitmentLog, CommitmentSCP
from gateway.ingest.forward import PacsForwarder
from gateway.ingest.listener import ListenerLimits
from gateway.ingest.pipeline import Pipeline
from gateway.ingest.receive import Receiver
from gateway.ingest.spool import Spool
from gateway.ingest.tls import client_context, server_context
from gateway.ingest.wakeup import (
    Bell,
    Doorbell,
    NotifyBell,
    NotifyDoorbell,
    SocketDoorbell,
    ready_path,
)
from gateway.ledger.anvil import Anvil
from gateway.ledger.bootstrap import (
    Deployment,
    ensure_contract,
    open_ledger,
    recorder_account,
    start_embedded_chain,
)
from gateway.ledger.client import XrayLedger
from gateway.metrics import (
    GatewayCollector,
    count_commitment,
    count_cstore_response,
    forget_process,
    observe_ack,
    registry_for,
    render,
)
from gateway.notify.notifier import Notifier
from gateway.notify.senders import AlertTarget, SyslogSender, WebhookSender
from gateway.notify.signing import load_secret
from gateway.orthanc_plugin import ENTRY_SCRIPT, plugin_section
from gateway.pacs.client import Pacs
from gateway.pacs.embedded import EmbeddedOrthanc, viewer_plugin_libraries
from gateway.procs import Child, port_in_use
from gateway.redact import redact_url
from gateway.store import ObjectStore, open_store
from gateway.trust.alerts import Alerts
from gateway.trust.audit import Audits, PendingWatch, overdue
from gateway.trust.erasure import Eraser, Retirements, Shedder
from gateway.trust.grant_sync import GrantSync, GrantSyncLoop
from gateway.trust.grants import Grants
from gateway.trust.receipts import Receipts
from gateway.trust.retention import RetentionJob
from gateway.trust.signin import SignIn
from gateway.trust.tlog import BatchLog, default_origin
from gateway.trust.trail import PLUGIN_SOURCE, Trail, TrailLoop
from gateway.trust.verify import Verifier
from gateway.trust.views import RecordViews

log = logging.getLogger(__name__)

RESTART_PAUSE_S = 5.0
"""How long `up` waits before starting again a worker process that failed to start."""

MAX_LISTENERS = 64
"""The most listener processes ``GATEWAY_LISTENERS`` may ask for (config.py's bound)."""


def external_pacs(settings: Settings) -> Pacs:
    """The Orthanc at ``GATEWAY_ORTHANC_URL``, with the plugin's stored-file secret if set."""
    assert settings.orthanc_url is not None
    token = settings.orthanc_stored_file_token
    return Pacs(
        settings.orthanc_url, user=None, password=None,
        stored_file_token=token.get_secret_value() if token is not None else None,
    )  # fmt: skip


def open_pacs(settings: Settings) -> Pacs:
    """The configured Orthanc, or the embedded one's URL and login (whether it runs or not)."""
    if settings.orthanc_url is not None:
        return external_pacs(settings)
    return Pacs.from_embedded(
        EmbeddedOrthanc(
            data_dir=settings.data_dir,
            http_port=settings.orthanc_http_port,
            dicom_port=settings.orthanc_dicom_port,
        )
    )


def open_object_store(settings: Settings) -> ObjectStore:
    """The configured object store (the filesystem one under the data dir by default)."""
    url = settings.store_url or f"file://{(settings.data_dir / 'objects').resolve()}"
    return open_store(
        url,
        access_key=settings.s3_access_key.get_secret_value() if settings.s3_access_key else None,
        secret_key=settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None,
    )


def build_verifier(
    settings: Settings,
    *,
    ledger: XrayLedger,
    pacs: Pacs,
    store: ObjectStore,
    index: Index,
    alerts: Alerts | None = None,
) -> Verifier:
    """A verifier over every copy: Orthanc, the object store, the ledger (and the index's proofs)."""
    return Verifier(
        ledger=ledger,
        pseudonym_key=load_pseudonym_key(settings.keys_dir),
        pacs=pacs,
        store=store,
        keyring=load_keyring(settings.keys_dir),
        study_keys=StudyKeys(index, load_keyring(settings.keys_dir)),
        index=index,
        max_instance_bytes=settings.max_instance_bytes,
        trusted_recorders=settings.trusted_recorders,
        alerts=alerts,
    )


def build_eraser(settings: Settings, *, ledger: Retirements, index: Index) -> Eraser:
    """Erasure over this node's parts; ``ledger`` writes as the records' owner (the recorder):
    the chain-request queue its anchoring worker sends from (:func:`chain_queue`)."""
    keyring = load_keyring(settings.keys_dir)
    pseudonym_key = load_pseudonym_key(settings.keys_dir)
    trail = Trail(index, pseudonym_key=pseudonym_key)

    def record(who: str, who_kind: str, route: str) -> None:
        trail.record(who=who, who_kind=who_kind, route=route, verdict="erased", served=False)

    return Eraser(
        index=index, store=open_object_store(settings), pacs=open_pacs(settings), ledger=ledger,
        study_keys=StudyKeys(index, keyring), pseudonym_key=pseudonym_key,
        spool=Spool(settings.data_dir / "spool", reserve_bytes=settings.spool_reserve_mb << 20),
        sealed_dir=settings.data_dir / "sealed", trail=record, node=settings.node,
    )  # fmt: skip


def chain_queue(
    settings: Settings, index: Index, *, ring: Callable[[], None], reader: XrayLedger | None
) -> QueuedChain:
    """The API's and the CLI's chain writes, queued for this node's anchoring worker."""
    return QueuedChain(
        index=index, node=settings.node, ring=ring, reader=reader,
        wait_s=settings.chain_request_wait_s,
    )  # fmt: skip


def chain_request_loop(
    settings: Settings, index: Index, *, ledger: XrayLedger, worker: str
) -> ChainRequestLoop:
    """The anchoring process's sender of the queued chain writes, with its own ``ledger``."""
    grants = Grants(index=index, ledger=ledger, pseudonym_key=load_pseudonym_key(settings.keys_dir))
    assert ledger.sender is not None, "the chain-request sender needs the recorder's account"
    return ChainRequestLoop(
        index=index, ledger=ledger, grants=grants, node=settings.node,
        worker=worker_id(settings.node, f"{worker}/chain"), recorder=ledger.sender.address,
    )  # fmt: skip


def api_server_config(settings: Settings, app: FastAPI) -> uvicorn.Config:
    """How uvicorn serves the API: where, and which proxies' ``X-Forwarded-*`` it believes
    (``GATEWAY_API_TRUSTED_PROXIES``; none when empty)."""
    return uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port, log_level="warning",
        forwarded_allow_ips=settings.api_trusted_proxies or [],
    )  # fmt: skip


def batch_log(settings: Settings, ledger: XrayLedger, index: Index) -> BatchLog:
    """The append-only log over the contract's batches, signing as GATEWAY_LOG_ORIGIN (by
    default one origin per chain and contract) with the log key in the keys dir."""
    origin = settings.log_origin or default_origin(ledger.chain_id(), ledger.address)
    return BatchLog(chain=ledger, index=index, key=load_log_key(settings.keys_dir), origin=origin)


def gateway_alerts(settings: Settings) -> Alerts:
    """The gateway's alert log, listing the Orthanc plugin's alerts too where they are apart."""
    return Alerts(settings.alerts_path, plugin_alerts=settings.plugin_alerts_path)


def build_notifier(settings: Settings) -> Notifier | None:
    """Webhooks and syslog for every alert, if any is configured (None: neither is).

    The notifier gets an index connection of its own, so that its transactions never hold
    the lock of the one the listener's acks write through (closed by :meth:`Stack.stop`).

    Raises
    ------
    ConfigError
        The webhook secret file is missing, readable by others, or not a usable secret.
    """
    s = settings
    senders: list[AlertTarget] = []
    if s.webhook_urls:
        assert s.webhook_secret_file is not None  # Settings requires it with URLs
        secret = load_secret(s.webhook_secret_file)
        senders += [
            WebhookSender(url, secret=secret, timeout_s=s.webhook_timeout_s)
            for url in s.webhook_urls
        ]
    if s.syslog_url is not None:
        senders.append(
            SyslogSender(
                s.syslog_url, node=s.node, timeout_s=s.webhook_timeout_s, ca_file=s.syslog_ca_file
            )
        )
    if not senders:
        return None
    logs = {"gateway": s.alerts_path}
    if s.plugin_alerts_path != s.alerts_path:
        logs["plugin"] = s.plugin_alerts_path
    return Notifier(
        index=Index(s.index_location), senders=senders, logs=logs, node=s.node,
        timeout_s=s.webhook_timeout_s,
    )  # fmt: skip


def api_limits(settings: Settings) -> Limits:
    """The HTTP API's bounds: upload size, slots and quota (beside the spool's reserve), rates."""
    return Limits(
        uploads=UploadArea(
            settings.uploads_dir,
            max_concurrent=settings.max_concurrent_uploads,
            quota_bytes=settings.upload_quota_mb << 20,
            reserve_bytes=settings.spool_reserve_mb << 20,
        ),
        rate=RateLimiter(per_minute=settings.api_rate_per_minute, burst=settings.api_rate_burst),
        max_upload_bytes=settings.max_upload_bytes,
    )


def run_dir(settings: Settings) -> Path:
    """Where the worker processes' wake-up sockets (or listening signs) and pid files are."""
    return settings.data_dir / "run"


def listener_ready(settings: Settings, listener: str) -> Path:
    """The sign a listener process leaves once its ports accept."""
    return run_dir(settings) / f"listener-{listener}.ready"


def tls_contexts(settings: Settings) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """The DICOM TLS listener's context, and the one for reports sent on new associations
    (None, None without GATEWAY_TLS_CERT)."""
    s = settings
    if s.tls_cert is None or s.tls_key is None:
        return None, None
    return (
        server_context(cert=s.tls_cert, key=s.tls_key, ca=s.tls_ca),
        client_context(cert=s.tls_cert, key=s.tls_key, ca=s.tls_ca),
    )


def worker_doorbell(settings: Settings) -> Doorbell:
    """What a listener rings after each ack: every worker socket in the run dir, or a
    NOTIFY on a PostgreSQL index (workers on any host)."""
    if settings.index_url is None:
        return SocketDoorbell(run_dir(settings))
    return NotifyDoorbell(settings.index_url.get_secret_value())


def build_receiver(
    settings: Settings,
    *,
    index: Index,
    spool: Spool,
    commitment: CommitmentSCP,
    on_stored: Callable[[int], None],
) -> Receiver:
    """The Storage SCP over the configured limits and allowlist, counting its responses."""
    s = settings
    return Receiver(
        spool=spool,
        index=index,
        ae_title=s.ae_title,
        allowed_aets=s.allowed_aets,
        on_stored=on_stored,
        commitment=commitment,
        max_instance_bytes=s.max_instance_bytes,
        limits=ListenerLimits.from_settings(s),
        node=s.node,
        on_response=count_cstore_response,
        on_ack=observe_ack,
    )


def build_commitment(
    settings: Settings, *, index: Index, owner: str, client_tls: ssl.SSLContext | None
) -> CommitmentSCP:
    """The Storage Commitment SCP reporting the requests ``owner`` receives."""
    s = settings
    return CommitmentSCP(
        index=index,
        ae_title=s.ae_title,
        peers=s.commitment_peers,
        timeout_s=s.commitment_timeout_s,
        ssl_context=client_tls,
        node=owner,
        on_count=count_commitment,
    )


def build_pipeline(
    settings: Settings,
    *,
    index: Index,
    spool: Spool,
    store: ObjectStore,
    ledger: XrayLedger,
    pacs: Pacs,
    alerts: Alerts,
    worker: str,
    anchors: bool = True,
    poll_s: float = 0.25,
) -> Pipeline:
    """The pipeline over the configured parts, claiming rows in the index as ``worker``."""
    s = settings
    return Pipeline(
        index=index,
        spool=spool,
        store=store,
        keyring=load_keyring(s.keys_dir),
        pseudonym_key=load_pseudonym_key(s.keys_dir),
        anchorer=SingleAnchorer(ledger),
        forwarder=PacsForwarder(pacs),
        sealed_dir=s.data_dir / "sealed",
        max_instance_bytes=s.max_instance_bytes,
        alerts=alerts,
        # GATEWAY_BATCH_MAX=1 anchors one transaction per image (the benchmark's
        # one-by-one mode); anything more gathers Merkle batches.
        batcher=BatchAnchorer(
            ledger,
            index,
            max_size=s.batch_max,
            window_ms=s.batch_window_ms,
            max_delay_ms=s.anchor_max_delay_ms,
        )
        if s.batch_max > 1
        else None,
        worker=worker,
        lease_s=s.worker_lease_s,
        poll_s=poll_s,
        anchors=anchors,
    )


def trail_loop(
    settings: Settings, index: Index, *, ledger: XrayLedger | None, journal: bool, worker: str
) -> TrailLoop:
    """The access trail's loop: import this node's plugin journal (``journal``), and cut and
    anchor trail batches with ``ledger`` (the process that anchors images: one account's
    nonces come from one process)."""
    s = settings
    return TrailLoop(
        Trail(index, pseudonym_key=load_pseudonym_key(s.keys_dir)),
        journal=(s.plugin_access_journal_path, f"{PLUGIN_SOURCE}:{s.node}") if journal else None,
        ledger=ledger, worker=worker_id(s.node, f"{worker}/trail"),
        max_entries=s.trail_batch_max, window_s=s.trail_window_s,
    )  # fmt: skip


def sign_in(settings: Settings, *, index: Index, chain_id: int) -> SignIn:
    """Sign-In with Ethereum for account grantees: messages must name
    ``GATEWAY_SIWE_DOMAIN`` (default: the API's own ``host:port``) and a URI under
    ``GATEWAY_SIWE_ORIGIN`` (default: ``http://`` and that domain), and this chain."""
    s = settings
    domain = s.siwe_domain or f"{s.api_host}:{s.api_port}"
    return SignIn(
        index=index, domain=domain, origin=s.siwe_origin or f"http://{domain}",
        chain_id=chain_id, nonce_s=s.siwe_nonce_s, session_s=s.siwe_session_s,
    )  # fmt: skip


class WorkerNode:
    """One worker process: the pipeline alone, with the store, ledger and PACS it needs.

    It claims rows in the index as ``<node>/<worker>`` (``worker`` is unique among this
    node's running workers, and the node id among the nodes sharing the index; the same
    id after a restart frees at once what the dead process held, and never another
    node's claims), and wakes when the listener rings its socket in the run dir (on a
    PostgreSQL index: a NOTIFY from a listener on any host), or every second to find
    retries due.
    """

    POLL_S = 1.0

    def __init__(self, settings: Settings, *, worker: str, anchors: bool = True) -> None:
        self.settings = settings
        self.worker = worker
        self.anchors = anchors
        self.index: Index | None = None
        self.alerts: Alerts | None = None
        self.pipeline: Pipeline | None = None
        self.bell: Bell | NotifyBell | None = None
        self.trail_loop: TrailLoop | None = None
        self.chain_loop: ChainRequestLoop | None = None

    def _woken(self) -> None:
        """A ring: new rows for the pipeline, or a queued chain write for the sender."""
        if self.pipeline is not None:
            self.pipeline.wake()
        if self.chain_loop is not None:
            self.chain_loop.wake()

    def start(self) -> None:
        s = self.settings
        try:
            ledger = open_ledger(s, recorder_account(s))  # `up` or `contract deploy` pinned it
            self.index = Index(s.index_location)  # GATEWAY_INDEX_URL, as `up` reads it
            self.alerts = gateway_alerts(s)
            self.pipeline = build_pipeline(
                s, index=self.index,
                spool=Spool(s.data_dir / "spool", reserve_bytes=s.spool_reserve_mb << 20),
                store=open_object_store(s), ledger=ledger, pacs=open_pacs(s),
                alerts=self.alerts, worker=worker_id(s.node, self.worker), anchors=self.anchors,
                poll_s=self.POLL_S,
            )  # fmt: skip
            self.pipeline.start()
            if self.anchors:  # the recorder's one sender: the API's and CLI's writes too
                self.chain_loop = chain_request_loop(
                    s, self.index, ledger=ledger, worker=self.worker
                )
                self.chain_loop.start()
            if s.index_url is not None:  # LISTEN: woken by a listener on any machine
                self.bell = NotifyBell(
                    s.index_url.get_secret_value(), self._woken,
                    ready=ready_path(run_dir(s), self.worker, notify=True),
                )  # fmt: skip
            else:
                self.bell = Bell(run_dir(s), self.worker, self._woken)
            self.pipeline.pause = self.bell.yield_to_acks  # acks first, across processes
            self.pipeline.last_ack = self.bell.last_ack  # no forward while they stream in
            if self.anchors:  # the recorder's one sender: trail batches go out from here too
                self.trail_loop = trail_loop(
                    s, self.index, ledger=ledger, journal=False, worker=self.worker
                )
                self.trail_loop.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.trail_loop is not None:
            self.trail_loop.stop()
        if self.bell is not None:
            self.bell.close()
        if self.chain_loop is not None:
            self.chain_loop.stop()
        if self.pipeline is not None:
            self.pipeline.stop()
        if self.alerts is not None:
            self.alerts.close()
        if self.index is not None:
            self.index.close()


class ListenerNode:
    """One listener process (``GATEWAY_LISTENERS`` above 1): the node's DICOM ports, shared
    with its other listener processes (``SO_REUSEPORT``: the kernel hands each new
    association to one of them), each with its own GIL.

    It writes into the one index and the node's spool (arriving in an ``incoming``
    directory of its own, cleared when it starts), rings the workers after each ack, and
    applies the same limits, allowlist, TLS and peer log as ``up``'s own listener. It
    answers Storage Commitment for the requests it received: it owns them as
    ``<node>/<listener>``, so a listener started again under its id reports what it had.
    """

    def __init__(self, settings: Settings, *, listener: str) -> None:
        self.settings = settings
        self.listener = listener
        self.index: Index | None = None
        self.doorbell: Doorbell | None = None
        self.commitment: CommitmentSCP | None = None
        self.receiver: Receiver | None = None

    def start(self) -> None:
        s = self.settings
        server_tls, client_tls = tls_contexts(s)
        try:
            index = self.index = Index(s.index_location)
            spool = Spool(
                s.data_dir / "spool", reserve_bytes=s.spool_reserve_mb << 20,
                incoming=f"incoming-{self.listener}",
            )  # fmt: skip
            spool.clear_incoming()  # what it was receiving when it died was never acked
            doorbell = self.doorbell = worker_doorbell(s)
            self.commitment = build_commitment(
                s, index=index, owner=worker_id(s.node, self.listener), client_tls=client_tls
            )
            self.commitment.start()
            self.receiver = build_receiver(
                s, index=index, spool=spool, commitment=self.commitment,
                on_stored=lambda _row: doorbell.ring(),
            )  # fmt: skip
            self.receiver.start(
                host=s.dicom_host, port=s.dicom_port if s.plain_dicom else None,
                tls_port=s.tls_port, ssl_context=server_tls, shared_port=True,
                slots_dir=run_dir(s) / "slots",
            )  # fmt: skip
            listener_ready(s, self.listener).touch()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        listener_ready(self.settings, self.listener).unlink(missing_ok=True)
        if self.receiver is not None:
            self.receiver.stop()
        if self.commitment is not None:
            self.commitment.stop()
        if self.doorbell is not None:
            self.doorbell.close()
        if self.index is not None:
            self.index.close()


class Stack:
    """The running gateway with its embedded parts (unless configured as external)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.anvil: Anvil | None = None
        self.orthanc: EmbeddedOrthanc | None = None
        self.ledger: XrayLedger | None = None
        self.deployment: Deployment | None = None
        self.pacs: Pacs | None = None
        self.store: ObjectStore | None = None
        self.index: Index | None = None
        self.pipeline: Pipeline | None = None
        self.receiver: Receiver | None = None
        self.alerts: Alerts | None = None
        self.audits: Audits | None = None
        self.pending_watch: PendingWatch | None = None
        self.retention: RetentionJob | None = None
        self.shedder: Shedder | None = None
        self.grant_sync: GrantSyncLoop | None = None
        self.spool: Spool | None = None
        self.commitment: CommitmentSCP | None = None
        self.token_path = settings.data_dir / "api-token"
        self._api: uvicorn.Server | None = None
        self._api_thread: threading.Thread | None = None
        self.workers: list[Child] = []
        self.listeners: list[Child] = []  # GATEWAY_LISTENERS above 1
        self._ready: dict[str, Path] = {}  # child name -> what shows it is up
        self._restart_at: dict[str, float] = {}  # a worker that failed to start waits
        self.doorbell: Doorbell | None = None
        self.notifier: Notifier | None = None
        self.trail_loop: TrailLoop | None = None
        self.chain_loop: ChainRequestLoop | None = None  # with the pipeline in this process

    @property
    def store_url(self) -> str:
        return self.settings.store_url or f"file://{(self.settings.data_dir / 'objects').resolve()}"

    def _open_evidence_to_the_plugin(self) -> None:
        """On a PostgreSQL index with ``GATEWAY_PLUGIN_INDEX_URL`` set: (re)create the plugin's
        view and let the role that URL names read it, and nothing else (the role itself, with
        its password, is the operator's: the gateway's role need not create roles)."""
        s = self.settings
        if s.index_url is None or s.plugin_index_url is None:
            return
        reader = urlsplit(s.plugin_index_url.get_secret_value()).username
        if not reader:
            raise ConfigError("GATEWAY_PLUGIN_INDEX_URL names no role (postgresql://ROLE:…@…)")
        import psycopg

        try:
            prepare_evidence_reader(s.index_url.get_secret_value(), unquote(reader))
        except psycopg.Error as exc:  # e.g. the role does not exist yet
            raise ConfigError(
                f"cannot let role {unquote(reader)!r} read the plugin's evidence view: "
                f"{type(exc).__name__}: {str(exc).strip()}"
            ) from None

    def start(self) -> None:
        s = self.settings
        # A bad certificate or key stops `up` before anything is started.
        server_tls, client_tls = tls_contexts(s)
        self._check_listeners()
        s.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            # The index first: a schema newer than this code's, or a PostgreSQL index that
            # cannot be reached, stops `up` before anything is started.
            self.index = Index(s.index_location)
            self._open_evidence_to_the_plugin()
            init_keys(s.keys_dir)
            init_log_key(s.keys_dir)  # signs the append-only log's checkpoints (receipts)
            # A node joining a shared index must name and seal as the others do: refused
            # before anything is started.
            check_shared_keys(
                self.index,
                pseudonym_key=load_pseudonym_key(s.keys_dir),
                keyring=load_keyring(s.keys_dir),
            )
            if s.embedded_chain:
                self.anvil = start_embedded_chain(s)
            self.ledger, self.deployment = ensure_contract(s)
            if s.orthanc_url is None:
                self.orthanc = self._embedded_orthanc()
                self.orthanc.start()
                self.pacs = Pacs.from_embedded(self.orthanc)
            else:
                self.pacs = external_pacs(s)
            self.store = open_object_store(s)
            self.alerts = gateway_alerts(s)
            self.notifier = build_notifier(s)
            if self.notifier is not None:
                self.notifier.start()
            spool = self.spool = Spool(s.data_dir / "spool", reserve_bytes=s.spool_reserve_mb << 20)
            spool.clear_incoming()  # partial receptions from a crash were never acked
            on_stored: Callable[[int], None]
            if s.inprocess_pipeline:
                self.pipeline = build_pipeline(
                    s, index=self.index, spool=spool, store=self.store, ledger=self.ledger,
                    pacs=self.pacs, alerts=self.alerts, worker=worker_id(s.node, "up"),
                )  # fmt: skip
                self.pipeline.start()
                on_stored = self.pipeline.wake
                self.chain_loop = chain_request_loop(s, self.index, ledger=self.ledger, worker="up")
                self.chain_loop.start()
            else:
                doorbell = self.doorbell = worker_doorbell(s)
                on_stored = lambda _row: doorbell.ring()  # noqa: E731
                for n in range(1, s.workers + 1):
                    self.workers.append(self._worker(n))
                    self._start_child(self.workers[-1], first=True)
            self._hand_over_commitments()
            if s.listeners > 1:
                self._start_listeners()
            else:
                self._start_own_listener(on_stored, server_tls, client_tls)
            self._start_api()
            # the plugin's journal is imported here; with the pipeline in this process,
            # trail batches are anchored here too (else by the anchoring worker)
            self.trail_loop = trail_loop(
                s, self.index, ledger=self.ledger if s.inprocess_pipeline else None,
                journal=True, worker="up",
            )  # fmt: skip
            self.trail_loop.start()
            # this node's copies of images erased on any node (erasure2 part)
            self.shedder = Shedder(self.index, spool, s.data_dir / "sealed", node=s.node)
            self.shedder.start()
        except BaseException:
            self.stop()
            raise

    def _start_own_listener(
        self,
        on_stored: Callable[[int], None],
        server_tls: ssl.SSLContext | None,
        client_tls: ssl.SSLContext | None,
    ) -> None:
        """The listener in ``up``'s own process (``GATEWAY_LISTENERS=1``)."""
        s = self.settings
        assert self.index is not None and self.spool is not None
        self.commitment = build_commitment(s, index=self.index, owner=s.node, client_tls=client_tls)
        self.commitment.start()
        self.receiver = build_receiver(
            s, index=self.index, spool=self.spool, commitment=self.commitment, on_stored=on_stored
        )
        if self.pipeline is not None:  # acks go first (performance.md)
            self.pipeline.pause = self.receiver.yield_to_acks
            self.pipeline.last_ack = self.receiver.last_ack
        self.receiver.start(
            host=s.dicom_host,
            port=s.dicom_port if s.plain_dicom else None,
            tls_port=s.tls_port,
            ssl_context=server_tls,
        )

    def _check_listeners(self) -> None:
        """Refuse, before anything starts, what several listener processes cannot do: share
        a DICOM port something already listens on (``SO_REUSEPORT`` would let a second
        gateway share it silently), or pause an in-process pipeline for their acks."""
        s = self.settings
        if s.listeners == 1:
            return
        if s.inprocess_pipeline:
            raise ConfigError(
                "GATEWAY_LISTENERS above 1 needs the pipeline in worker processes "
                "(unset GATEWAY_INPROCESS_PIPELINE)"
            )
        ports = [p for p in (s.dicom_port if s.plain_dicom else None, s.tls_port) if p]
        taken = [port for port in ports if port_in_use(s.dicom_host, port)]
        if taken:
            raise ConfigError(f"DICOM port {taken[0]} is already in use on {s.dicom_host}")

    def _start_listeners(self) -> None:
        """``GATEWAY_LISTENERS`` listener processes on the one DICOM port."""
        s = self.settings
        for n in range(1, s.listeners + 1):
            listener = f"listen-{n}"
            ready = self._ready[f"listener-{listener}"] = listener_ready(s, listener)
            child = Child(
                f"listener-{listener}",
                [sys.executable, "-m", "gateway", "listener", "--id", listener],
                log_path=run_dir(s) / f"listener-{listener}.log",
                ready=ready.exists,
                inherit_output=True,
            )
            self.listeners.append(child)
            self._start_child(child, first=True)

    def _hand_over_commitments(self) -> None:
        """Storage Commitment requests not yet reported go to a listener that will run:
        with listener processes, the first takes ``up``'s own and those of listeners
        beyond ``GATEWAY_LISTENERS``; with none, ``up`` takes every listener's."""
        s = self.settings
        assert self.index is not None
        if s.listeners > 1:
            gone = [
                worker_id(s.node, f"listen-{n}") for n in range(s.listeners + 1, MAX_LISTENERS + 1)
            ]
            first = CommitmentLog(self.index, node=worker_id(s.node, "listen-1"))
            first.hand_over([s.node, *gone])
        else:
            CommitmentLog(self.index, node=s.node).hand_over(prefix=worker_id(s.node, "listen-"))

    def _worker(self, n: int) -> Child:
        """Worker process ``n`` (id ``up-<n>``); the first one anchors."""
        worker = f"up-{n}"
        argv = [sys.executable, "-m", "gateway", "worker", "--id", worker]
        if n > 1:
            argv.append("--no-anchor")
        bell = self._ready[f"worker-{worker}"] = self._bell_ready(worker)
        return Child(
            f"worker-{worker}", argv, log_path=run_dir(self.settings) / f"worker-{worker}.log",
            ready=bell.exists, inherit_output=True,
        )  # fmt: skip

    def _bell_ready(self, worker: str) -> Path:
        """What shows ``worker``'s bell is up (its socket, or its sign that it listens)."""
        return ready_path(
            run_dir(self.settings), worker, notify=self.settings.index_url is not None
        )

    def _start_child(self, child: Child, *, first: bool) -> None:
        """Start a worker or listener process and wait until it shows it is up."""
        # a killed child's sign (socket, ready file): not ready until it is up anew
        self._ready[child.name].unlink(missing_ok=True)
        # a failpoint is one crash: a child started again runs without it
        child.env = None if first else {"GATEWAY_FAILPOINT": ""}
        child.start(timeout=120)

    def supervise(self) -> None:
        """Start again, under the same id, every worker or listener process that died (main
        thread only: a child's parent-death signal follows the thread that started it)."""
        for child in (*self.workers, *self.listeners):
            if child.process is None or child.running:
                continue
            if time.monotonic() < self._restart_at.get(child.name, 0.0):
                continue
            code = child.process.returncode
            if child.name not in self._restart_at:  # once per death, not per retry
                forget_process(child.process.pid)
            log.warning("%s exited (code %s): starting it again", child.name, code)
            try:
                self._start_child(child, first=False)
                self._restart_at.pop(child.name, None)
            except ChildFailed as exc:  # e.g. the index or the chain refuses it: try again
                self._restart_at[child.name] = time.monotonic() + RESTART_PAUSE_S
                log.error("%s: %s; next try in %.0f s", child.name, exc, RESTART_PAUSE_S)

    def _embedded_orthanc(self) -> EmbeddedOrthanc:
        """Orthanc with the integrity plugin as its storage area, and the viewers."""
        s = self.settings
        assert self.ledger is not None
        viewers = viewer_plugin_libraries()
        return EmbeddedOrthanc(
            data_dir=s.data_dir,
            http_port=s.orthanc_http_port,
            dicom_port=s.orthanc_dicom_port,
            plugin=ENTRY_SCRIPT,
            plugin_config=plugin_section(
                data_dir=s.data_dir,
                chain_url=s.effective_chain_url,
                contract_address=self.ledger.address,
                from_block=self.ledger.from_block,
                log_range=s.chain_log_range,
                web_viewer=any("WebViewer" in path.name for path in viewers),
                max_instance_bytes=s.max_instance_bytes,
                trusted_recorders=s.trusted_recorders,
                pending_alert_s=s.pending_alert_s,
                alerts_dir=s.plugin_alerts_dir,
                index_url=_secret(s.plugin_index_url),
            ),
            extra_plugins=viewers,
            index_url=_secret(s.orthanc_index_url),
        )

    def _start_api(self) -> None:
        ensure_token(self.token_path)
        assert self.store is not None and self.pacs is not None and self.ledger is not None
        assert self.index is not None
        ledger, store, pacs, index = self.ledger, self.store, self.pacs, self.index
        s = self.settings
        verifier = build_verifier(
            s, ledger=ledger, pacs=pacs, store=store, index=index, alerts=self.alerts
        )
        pseudonym_key = verifier.pseudonym_key
        assert self.alerts is not None
        self.audits = Audits(
            s.data_dir / "audits.sqlite", verifier=verifier, index=index, alerts=self.alerts
        )
        self.pending_watch = PendingWatch(
            index=index, alerts=self.alerts, after_s=s.pending_alert_s
        )
        self.pending_watch.start()
        # Off-hours, once a day: the studies past retention, listed for an admin (no erasing).
        self.retention = RetentionJob(index, periods=s.retention, window=s.retention_window)
        self.retention.start()
        chained = chain_queue(s, index, ring=self._ring_the_sender, reader=ledger)
        tokens = Tokens(
            admin_token_file=self.token_path, issued_file=s.keys_dir / "api-tokens.json"
        )
        # Grants a Hospital or Doctor account made on chain, imported into the index.
        self.grant_sync = GrantSyncLoop(
            GrantSync(
                chain=ledger, index=index, pseudonym_key=pseudonym_key,
                token_ids=tokens.ids,
                confirmations=s.grant_sync_confirmations, reorg_depth=s.grant_sync_reorg_depth,
            ),
            interval=s.grant_sync_s,
        )  # fmt: skip
        self.grant_sync.start()
        services = Services(
            verifier=verifier,
            tokens=tokens,
            audits=self.audits,
            alerts=self.alerts,
            records=RecordViews(ledger=ledger, pseudonym_key=pseudonym_key, index=index),
            limits=api_limits(s),
            receipts=Receipts(verifier=verifier, chain=ledger, log=batch_log(s, ledger, index)),
            trail=Trail(index, pseudonym_key=pseudonym_key),
            # the API's grants and erasure's retirements are queued for the anchoring
            # process, the recorder's one sender (`ingest/chain_requests.py`)
            grants=Grants(index=index, ledger=None, pseudonym_key=pseudonym_key, queue=chained),
            eraser=build_eraser(s, ledger=chained, index=index),
            signin=sign_in(s, index=index, chain_id=ledger.chain_id()),
            chain_queue=chained,
        )
        health = Health(
            checks={
                "chain": lambda: ledger.w3.eth.block_number,
                "object_store": store.check,
                "pacs": pacs.check,
            },
            stages=index.stage_counts,
        )
        metrics = registry_for(
            GatewayCollector(
                index=index,
                spool=self.spool,
                commitment_log=CommitmentLog(index, node=s.node),
                overdue=lambda: len(overdue(index, older_than=s.pending_alert_s)),
                node=s.node,
                alerts=self.alerts.counts,
                outbox=self.notifier.outbox.counts if self.notifier is not None else None,
            ),
            instruments=True,  # C-STORE responses, ack latency, commitment counts: all processes
        )
        app = create_app(
            health=health,
            services=services,
            metrics=lambda: render(metrics),
            console=self._console(services),
        )
        config = api_server_config(self.settings, app)
        self._api = uvicorn.Server(config)
        self._api_thread = threading.Thread(target=self._api.run, name="api", daemon=True)
        self._api_thread.start()
        while not self._api.started and self._api_thread.is_alive():
            threading.Event().wait(0.05)

    def _ring_the_sender(self) -> None:
        """Wake the process that sends the recorder's transactions: this one's loop, or the
        workers (the anchoring one serves the queue)."""
        if self.chain_loop is not None:
            self.chain_loop.wake()
        elif self.doorbell is not None:
            self.doorbell.ring()

    def _console(self, services: Services) -> Console:
        """The web console: sessions signed with the data dir's key, the index, the viewer."""
        s = self.settings
        viewer = s.console_viewer_url or (self.orthanc.url if self.orthanc is not None else None)
        sessions = Sessions(
            key=ensure_session_key(s.keys_dir / "console-session.key"),
            lifetime_s=s.console_session_s,
            still_valid=services.still_valid,
        )
        return Console(sessions=sessions, index=self.index, viewer_url=viewer)

    def stop(self) -> None:
        """Stop in reverse order: no new work first, then the workers, then the children."""
        if self._api is not None:
            self._api.should_exit = True
            if self._api_thread is not None:
                self._api_thread.join(10)
        for child in reversed(self.listeners):  # no new associations, theirs end
            child.stop(timeout=30)
        if self.receiver is not None:
            self.receiver.stop()
        if self.trail_loop is not None:
            self.trail_loop.stop()
        if self.chain_loop is not None:
            self.chain_loop.stop()
        if self.pending_watch is not None:
            self.pending_watch.stop()
        if self.retention is not None:
            self.retention.stop()
        if self.shedder is not None:
            self.shedder.stop()
        if self.grant_sync is not None:
            self.grant_sync.stop()
        if self.audits is not None:
            self.audits.close()
        if self.commitment is not None:
            self.commitment.stop()
        if self.pipeline is not None:
            self.pipeline.stop()
        for child in reversed(self.workers):  # a batch being sent finishes, or is resumed later
            child.stop(timeout=90)
        if self.doorbell is not None:
            self.doorbell.close()
        if self.notifier is not None:  # what it was sending stays pending in the outbox
            self.notifier.stop()
            self.notifier.outbox.index.close()
        if self.alerts is not None:  # after the pipeline: it records spool_swapped alerts
            self.alerts.close()
        if self.index is not None:
            self.index.close()
        if self.orthanc is not None:
            self.orthanc.stop()
        if self.anvil is not None:
            self.anvil.stop()  # SIGTERM: anvil dumps its state before exiting

    def _token_shown(self) -> str:
        """The token itself on a developer's embedded stack, only its file otherwise."""
        path = self.token_path.resolve()
        if self.anvil is not None and self.orthanc is not None:
            return f"{ensure_token(self.token_path)}  (in {path}, 0600)"
        return f"in {path} (0600)"

    def banner(self) -> str:
        assert self.ledger is not None and self.pacs is not None
        s = self.settings
        chain = redact_url(s.effective_chain_url) + ("  [embedded anvil]" if self.anvil else "")
        pacs = (
            f"{self.orthanc.url}  [embedded Orthanc; login in {s.keys_dir.resolve()}/orthanc-http.json]"
            if self.orthanc
            else "external Orthanc (GATEWAY_ORTHANC_URL)"
        )
        plain = f"{s.ae_title}@{s.dicom_host}:{s.dicom_port}" if s.plain_dicom else "off"
        lines = [
            "xray-gateway is up",
            f"  DICOM           {plain}",
            *self._tls_banner(),
            *self._listeners_banner(),
            f"  HTTP API        http://{s.api_host}:{s.api_port}  (OpenAPI: /docs; /healthz, /readyz, /metrics)",
            f"  console         http://{s.api_host}:{s.api_port}/console  (log in with an API token)",
            f"  API token       {self._token_shown()}",
            f"  PACS (Orthanc)  {pacs}",
            f"  object store    {self.store_url}",
            f"  chain           {chain}",
            f"  xray contract   {self.ledger.address}",
            f"  recorder        {recorder_account(s).address}",
            f"  node            {s.node}",
            f"  data dir        {s.data_dir.resolve()}",
            "Press Ctrl-C to stop.",
        ]
        if self.orthanc is not None:
            at = next(n for n, line in enumerate(lines) if line.startswith("  API token")) + 1
            lines.insert(
                at, f"  Orthanc DICOM   ORTHANC port {s.orthanc_dicom_port} (known AETs only)"
            )
            lines.insert(
                at + 1,
                f"  PACS viewers    {self.orthanc.url}/app/explorer.html  (every read checked"
                " by the integrity plugin; alerts in alerts.sqlite)",
            )
        return "\n".join(lines)

    def _listeners_banner(self) -> list[str]:
        s = self.settings
        if s.listeners == 1:
            return []
        return [f"  listeners       {s.listeners} processes on the DICOM port(s) (SO_REUSEPORT)"]

    def _tls_banner(self) -> list[str]:
        s = self.settings
        if not s.tls:
            return []
        clients = (
            f"client certificates required, CA {s.tls_ca}" if s.tls_ca else "no client certificates"
        )
        return [f"  DICOM TLS       {s.ae_title}@{s.dicom_host}:{s.tls_port}  ({clients})"]


def _secret(value: SecretStr | None) -> str | None:
    """A secret setting's value, or None when unset."""
    return value.get_secret_value() if value is not None else None
