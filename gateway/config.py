"""Settings (``GATEWAY_*`` environment variables) and where things live in the data dir."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.core.allowlist import Network, parse_allowed_aets
from gateway.core.nodes import default_node_id
from gateway.core.ownership import parse_accounts
from gateway.errors import ConfigError

# Values that mean "somebody forgot to set this"; a secret equal to one is refused.
PLACEHOLDERS = frozenset(
    {"", "change-me", "changeme", "changethis", "secret", "password", "minioadmin"}
)


class Settings(BaseSettings):
    """Every setting of the gateway. Secrets have no defaults.

    Unset ``orthanc_url``, ``chain_url`` and ``store_url`` mean the embedded defaults:
    Orthanc and anvil started by ``xray-gateway up`` and a filesystem object store,
    all under ``data_dir``.

    DICOM listeners: plain DICOM on ``dicom_port``; with ``tls_cert`` and ``tls_key``
    (PEM, the key unencrypted and mode 0600) DICOM TLS on ``tls_port`` too (2762, the
    registered DICOM-TLS port). ``tls_ca`` set means mutual TLS: client certificates are
    required and verified against it. ``plain_dicom=false`` (``GATEWAY_PLAIN_DICOM``)
    turns the plain port off, leaving TLS only.

    ``allowed_aets`` maps each calling AE title to the addresses or CIDRs it may come
    from: ``CT1=10.0.0.5,MR1=10.0.1.0/24|10.0.2.7,WS1`` or a JSON object (see
    :mod:`gateway.core.allowlist`); an AE without addresses may come from anywhere, an empty
    list lets every AE in.
    """

    # hide_input_in_errors: a refused value (a webhook URL with its token, an index URL
    # with its password) never reaches the message.
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", extra="ignore", hide_input_in_errors=True
    )

    data_dir: Path = Path("var")
    ae_title: str = "XRAYGW"
    dicom_host: str = "127.0.0.1"
    dicom_port: int = Field(default=11112, ge=1, le=65535)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    #: Reverse proxies whose ``X-Forwarded-For``/``-Proto`` the API believes (addresses or
    #: CIDRs, comma-separated): the client address they name is the one rate limits, the
    #: sign-in buckets and logs use. Loopback by default; never ``*`` (any client could
    #: then name any address and slip its rate limit).
    api_trusted_proxies: str = "127.0.0.1,::1"
    plain_dicom: bool = True
    tls_port: int = Field(default=2762, ge=1, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    allowed_aets: Annotated[dict[str, tuple[Network, ...]], NoDecode] = Field(default_factory=dict)
    # The DICOM port against hostile peers (gateway/ingest/listener.py).
    max_pdu: int = Field(default=1 << 20, ge=4096, le=1 << 28)
    max_associations: int = Field(default=32, ge=1, le=1000)
    max_associations_per_host: int = Field(default=16, ge=1, le=1000)
    dicom_negotiation_timeout_s: float = Field(default=5.0, gt=0, le=600)
    dicom_network_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    orthanc_url: str | None = None
    # The xray plugin's secret for its stored-file route (XrayGateway.StoredFileToken) when
    # Orthanc is not the embedded one (the embedded one's is generated in keys/).
    orthanc_stored_file_token: SecretStr | None = None
    orthanc_http_port: int = Field(default=8042, ge=1, le=65535)
    # The embedded Orthanc's own index on PostgreSQL (orthanc-postgresql), a postgresql://
    # URL; unset: Orthanc's SQLite index in <data_dir>/orthanc. Holds a password.
    orthanc_index_url: SecretStr | None = None
    # The embedded plugin reads the gateway's PostgreSQL index through the view made for it,
    # as this role (gateway/index/evidence_view.py); unset: <data_dir>/index.sqlite.
    plugin_index_url: SecretStr | None = None
    orthanc_dicom_port: int = Field(default=4242, ge=1, le=65535)
    store_url: str | None = None
    # The index database: unset, a SQLite file in data_dir; postgresql://user:pw@host/db,
    # PostgreSQL (gateway/index/engine.py). A secret: it may hold a password.
    index_url: SecretStr | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    chain_url: str | None = None
    anvil_port: int = Field(default=8545, ge=1, le=65535)
    contract_address: str | None = None
    # The append-only log's origin (the first line of its signed checkpoints and the name of
    # its key); unset: xray-gateway/<chain id>/<contract address>. No spaces nor '+'.
    log_origin: str | None = Field(default=None, pattern=r"^[^\s+]*$")
    # The most blocks one eth_getLogs may span: Besu refuses wider ranges (5,000 by default).
    chain_log_range: int = Field(default=5_000, ge=1, le=1_000_000)
    recorder_key_file: Path | None = None
    # Only these accounts' records count (comma-separated addresses); by default any account
    # that held the contract's Recorder role when it wrote (gateway/core/ownership.py).
    trusted_recorders: Annotated[frozenset[str] | None, NoDecode] = None
    admin_key_file: Path | None = None
    # Merkle batches (gateway/ingest/anchor.py Gatherer): at most batch_max images; cut once
    # nothing is on its way to the anchor stage and no image joined for batch_window_ms, or
    # when the oldest has waited anchor_max_delay_ms (the latency limit) while images stream in.
    # 2.5 s: the seed's 100 chest images (a ~4 s stream) in two recordBatch, each image
    # anchored within ~2.8 s of its ack (docs/performance.md "Session 10").
    batch_max: int = Field(default=256, ge=1, le=100_000)
    batch_window_ms: int = Field(default=200, ge=0)
    anchor_max_delay_ms: int = Field(default=2500, ge=0, le=3_600_000)
    # The access trail (gateway/trust/trail.py): a batch of read entries is cut at
    # trail_batch_max entries, or once the oldest unbatched entry has waited trail_window_s.
    trail_batch_max: int = Field(default=1024, ge=1, le=100_000)
    trail_window_s: float = Field(default=10.0, ge=0, le=86_400)
    # Chain writes of the API and the CLI (grants, revocations, erasure's retirements) are
    # queued for the node's anchoring worker, the recorder's one sender; a caller waits this
    # long for the outcome, then gets 503 chain-request-pending (it stays queued).
    chain_request_wait_s: float = Field(default=30.0, gt=0, le=3600)
    # Worker processes `up` starts for the pipeline (each with its own GIL; 0: none, run
    # `xray-gateway worker` yourself). Claims on rows last GATEWAY_WORKER_LEASE_S, renewed
    # while the worker lives; a dead worker's rows return to the queue when it runs out.
    workers: int = Field(default=1, ge=0, le=64)
    # DICOM listener processes `up` starts on the one DICOM port (SO_REUSEPORT: the kernel
    # spreads associations over them, each with its own GIL). 1: the listener runs in
    # `up`'s own process, as before; more: each is an `xray-gateway listener` child,
    # started again under its id when it dies (docs/scale-out.md).
    listeners: int = Field(default=1, ge=1, le=64)
    # This gateway node's name among the nodes sharing one index (docs/scale-out.md): it
    # qualifies every worker id (``<node>/<worker>``) and owns the Storage Commitment
    # requests this node received. Unset: derived from the host name and the data dir.
    node_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
    worker_lease_s: float = Field(default=30.0, gt=0)
    # The pipeline on threads inside `up`'s own process, as before #14 (for comparison).
    inprocess_pipeline: bool = False
    spool_reserve_mb: int = Field(default=256, ge=0)
    # The most bytes one instance's dataset may take once inflated (deflate bombs): 4 GiB
    # holds the largest real instances (multi-frame tomosynthesis, whole-slide levels).
    max_instance_bytes: int = Field(default=4 << 30, ge=1 << 20)
    commitment_timeout_s: float = Field(default=600.0, gt=0)
    # An instance received but not committed after this many seconds raises one
    # `pending_too_long` alert (gateway) and is `unconfirmed` in the plugin if unanchored.
    pending_alert_s: float = Field(default=900.0, gt=0)
    commitment_peers: Annotated[dict[str, tuple[str, int]], NoDecode] = Field(default_factory=dict)
    # HTTP API bounds: POST /v1/verify uploads, and the per-token rate of expensive routes.
    max_upload_bytes: int = Field(default=2 << 30, ge=1)
    upload_quota_mb: int = Field(default=4096, ge=1)
    max_concurrent_uploads: int = Field(default=4, ge=1)
    api_rate_per_minute: float = Field(default=30.0, gt=0)
    api_rate_burst: int = Field(default=10, ge=1)
    # The web console (/console, part 5 of #15): how long a login lasts, and the Orthanc
    # address its "open in the viewer" links point a browser at (unset: the embedded
    # Orthanc's own address, or none for an external one).
    console_session_s: float = Field(default=8 * 3600.0, ge=60)
    console_viewer_url: str | None = None
    # Where the Orthanc plugin writes its alerts.sqlite (XrayGateway.AlertsDir); unset: the
    # data dir, one file shared with the gateway (embedded). docker: the plugin's own volume,
    # read-only here, so that Orthanc needs no write access to the gateway's data.
    plugin_alerts_dir: Path | None = None
    # Alerts that reach people (gateway/notify/): each alert is POSTed as a signed JSON
    # event (Standard Webhooks) to every URL here (comma-separated), with the HMAC secret
    # read from a 0600 file (no default), and sent to syslog (udp://, tcp:// or tls://
    # host:port) as an RFC 5424 message holding an IHE ATNA AuditMessage.
    webhook_urls: Annotated[tuple[str, ...], NoDecode] = ()
    webhook_secret_file: Path | None = None
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)
    syslog_url: str | None = Field(default=None, pattern=r"^(udp|tcp|tls)://[^\s/:]+:\d{1,5}$")
    syslog_ca_file: Path | None = None
    # Retention (erasure part, issue #16): a period per modality, ``CT=10y,MR=10y,CR=5y``
    # (``y`` years of 365.25 days, ``m`` months of 30.44, ``d`` days); studies of a modality
    # not listed are kept. A job of `up` lists the studies past it once a day inside the
    # off-hours window ``HH:MM-HH:MM`` (UTC; may wrap midnight) for an admin; it erases nothing.
    retention: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    retention_window: Annotated[tuple[int, int], NoDecode] = (2 * 60, 5 * 60)
    # Grants made on chain (siwe part, issue #16; gateway/trust/grant_sync.py): `up` imports
    # AccessGranted/AccessRevoked every grant_sync_s seconds, reading only blocks
    # grant_sync_confirmations below the head; when the last block read changed (a reorg),
    # the last grant_sync_reorg_depth blocks are read again and mended.
    grant_sync_s: float = Field(default=2.0, gt=0, le=3600)
    grant_sync_confirmations: int = Field(default=0, ge=0, le=10_000)
    grant_sync_reorg_depth: int = Field(default=64, ge=1, le=100_000)
    # Sign-In with Ethereum (EIP-4361) for account-address grantees (gateway/trust/signin.py):
    # the domain (host[:port]) a message must name and its URI's origin (unset: the API's
    # own host:port over http), how long a nonce may wait for its signed message, and how
    # long the bearer session it opens lasts.
    siwe_domain: str | None = Field(default=None, pattern=r"^[^/?#\s]+$")
    siwe_origin: str | None = Field(default=None, pattern=r"^https?://[^/?#\s]+$")
    siwe_nonce_s: float = Field(default=300.0, ge=10, le=3600)
    siwe_session_s: float = Field(default=3600.0, ge=60, le=86_400)

    @field_validator("retention", mode="before")
    @classmethod
    def _parse_retention(cls, value: object) -> object:
        return parse_retention(value) if isinstance(value, str) else value

    @field_validator("retention_window", mode="before")
    @classmethod
    def _parse_retention_window(cls, value: object) -> object:
        return parse_window(value) if isinstance(value, str) else value

    @field_validator("data_dir", "plugin_alerts_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        """Relative to where the gateway was started, once: the embedded Orthanc runs in
        ``<data_dir>/orthanc`` and the plugin reads these paths from its configuration, so
        a relative ``./var`` (the default) would point elsewhere for them."""
        return value.absolute() if value is not None else None

    @field_validator("api_trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: str) -> str:
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an address or CIDR (a proxy is named by where it"
                    " connects from; '*' is refused)"
                ) from None
        return ",".join(entries)

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        if not 0 < len(value) <= 16 or not value.isascii() or "\\" in value:
            raise ValueError("an AE title is 1-16 ASCII characters without a backslash")
        return value

    @field_validator("allowed_aets", mode="before")
    @classmethod
    def _parse_aets(cls, value: object) -> object:
        return parse_allowed_aets(value)

    @field_validator("webhook_urls", mode="before")
    @classmethod
    def _parse_webhook_urls(cls, value: object) -> object:
        """``https://a/hook,https://b/hook``: http(s) URLs; blank means none."""
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, (list, tuple)):
            for url in value:
                if not str(url).startswith(("http://", "https://")):
                    raise ValueError("GATEWAY_WEBHOOK_URLS holds http:// or https:// URLs")
            return tuple(str(url) for url in value)
        return value

    @field_validator("syslog_url", "webhook_secret_file", "syslog_ca_file", mode="before")
    @classmethod
    def _blank_notify_setting(cls, value: object) -> object:
        """``GATEWAY_SYSLOG_URL=`` and the files blank (as in .env.example) mean unset."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("siwe_domain", "siwe_origin", mode="before")
    @classmethod
    def _blank_siwe_setting(cls, value: object) -> object:
        """``GATEWAY_SIWE_DOMAIN=`` (blank, as in .env.example): the API's own host:port."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("node_id", mode="before")
    @classmethod
    def _blank_node_id(cls, value: object) -> object:
        """``GATEWAY_NODE_ID=`` (blank, as in .env.example) means "derive it"."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("trusted_recorders", mode="before")
    @classmethod
    def _parse_recorders(cls, value: object) -> object:
        """``0xabc…,0xdef…``: lowercase addresses; blank means "the Recorder role decides"."""
        if isinstance(value, (str, list, tuple, set, frozenset)):
            return parse_accounts(value)
        return value

    @field_validator("commitment_peers", mode="before")
    @classmethod
    def _parse_peers(cls, value: object) -> object:
        """``AET=host:port,AET2=host:port`` or a JSON object ``{"AET": "host:port"}``."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                value = json.loads(text)
            else:
                pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
                if any(len(pair) != 2 for pair in pairs):
                    raise ValueError("GATEWAY_COMMITMENT_PEERS is AET=host:port,AET=host:port")
                value = {aet.strip(): address.strip() for aet, address in pairs}
        if isinstance(value, dict):
            return {str(aet): _host_port(address) for aet, address in value.items()}
        return value

    @model_validator(mode="after")
    def _check_association_caps(self) -> Settings:
        if self.max_associations_per_host > self.max_associations:
            raise ValueError(
                "GATEWAY_MAX_ASSOCIATIONS_PER_HOST cannot exceed GATEWAY_MAX_ASSOCIATIONS"
            )
        return self

    @model_validator(mode="after")
    def _check_secrets(self) -> Settings:
        for name in ("index_url", "orthanc_index_url", "plugin_index_url"):
            url: SecretStr | None = getattr(self, name)
            if url is not None and not url.get_secret_value().startswith(
                ("postgresql://", "postgres://")
            ):
                unset = " (unset: SQLite)" if name == "index_url" else ""
                raise ValueError(f"GATEWAY_{name.upper()} must be a postgresql:// URL{unset}")
        for name in ("s3_access_key", "s3_secret_key", "orthanc_stored_file_token"):
            secret: SecretStr | None = getattr(self, name)
            if secret is not None and secret.get_secret_value().strip().lower() in PLACEHOLDERS:
                raise ValueError(f"GATEWAY_{name.upper()} is a placeholder; set a real secret")
        s3 = bool(self.store_url and self.store_url.startswith(("s3://", "s3+https://")))
        if s3 and (self.s3_access_key is None or self.s3_secret_key is None):
            raise ValueError(
                "GATEWAY_STORE_URL is s3://: set GATEWAY_S3_ACCESS_KEY and GATEWAY_S3_SECRET_KEY"
            )
        self._check_tls()
        if self.webhook_urls and self.webhook_secret_file is None:
            raise ValueError("GATEWAY_WEBHOOK_URLS needs GATEWAY_WEBHOOK_SECRET_FILE (0600)")
        if self.syslog_ca_file is not None and not (self.syslog_url or "").startswith("tls://"):
            raise ValueError("GATEWAY_SYSLOG_CA_FILE needs a tls:// GATEWAY_SYSLOG_URL")
        return self

    def _check_tls(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("GATEWAY_TLS_CERT and GATEWAY_TLS_KEY go together: set both")
        if self.tls_ca is not None and not self.tls:
            raise ValueError("GATEWAY_TLS_CA needs GATEWAY_TLS_CERT and GATEWAY_TLS_KEY")
        if not self.plain_dicom and not self.tls:
            raise ValueError(
                "GATEWAY_PLAIN_DICOM=false leaves no DICOM port: set GATEWAY_TLS_CERT and"
                " GATEWAY_TLS_KEY for DICOM TLS"
            )
        if self.tls and self.plain_dicom and self.tls_port == self.dicom_port:
            raise ValueError("GATEWAY_TLS_PORT and GATEWAY_DICOM_PORT are the same port")

    @property
    def tls(self) -> bool:
        """True when the gateway listens for DICOM TLS."""
        return self.tls_cert is not None and self.tls_key is not None

    @cached_property
    def keys_dir(self) -> Path:
        """Where key files live (mode 0700 directory, 0600 files)."""
        return self.data_dir / "keys"

    @cached_property
    def chain_dir(self) -> Path:
        """Where the embedded anvil keeps its state and the deployment record."""
        return self.data_dir / "chain"

    @cached_property
    def uploads_dir(self) -> Path:
        """Where ``POST /v1/verify`` uploads are written while they are checked."""
        return self.data_dir / "uploads"

    @property
    def alerts_path(self) -> Path:
        """The gateway's own alerts (pipeline, audits)."""
        return self.data_dir / "alerts.sqlite"

    @property
    def plugin_alerts_path(self) -> Path:
        """The Orthanc plugin's alerts: ``alerts.sqlite`` in its alerts dir."""
        return (self.plugin_alerts_dir or self.data_dir) / "alerts.sqlite"

    @property
    def plugin_access_journal_path(self) -> Path:
        """The Orthanc plugin's access journal: ``access.sqlite`` in its alerts dir."""
        return (self.plugin_alerts_dir or self.data_dir) / "access.sqlite"

    @property
    def node(self) -> str:
        """``GATEWAY_NODE_ID``, or ``<host>-<6 hex of the data dir's absolute path>``: stable
        across restarts of one node, apart for two nodes on one host (two data dirs)."""
        if self.node_id is not None:
            return self.node_id
        return default_node_id(socket.gethostname(), self.data_dir)

    @property
    def index_location(self) -> Path | str:
        """The index: ``GATEWAY_INDEX_URL``, or ``index.sqlite`` in the data dir."""
        if self.index_url is None:
            return self.data_dir / "index.sqlite"
        return self.index_url.get_secret_value()

    @property
    def embedded_chain(self) -> bool:
        """True when ``up`` starts its own anvil."""
        return self.chain_url is None

    @property
    def effective_chain_url(self) -> str:
        """The JSON-RPC URL to use: the configured one, or the embedded anvil's."""
        return self.chain_url or f"http://127.0.0.1:{self.anvil_port}"

    @property
    def effective_recorder_key_file(self) -> Path:
        return self.recorder_key_file or self.keys_dir / "recorder.key"

    @property
    def effective_admin_key_file(self) -> Path:
        return self.admin_key_file or self.keys_dir / "admin.key"


_DAYS_PER = {"y": 365.25, "m": 30.44, "d": 1.0}
_RETENTION_ITEM = re.compile(r"^([A-Za-z0-9]{1,16})=(\d{1,4})([ymdYMD])$")
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


def parse_retention(value: str) -> dict[str, float]:
    """``CT=10y,MR=10y,CR=5y`` -> ``{"CT": 3652.5, ...}``: each modality's period in days.

    Raises
    ------
    ValueError
        An item that is not ``MODALITY=<n><y|m|d>``, a period of zero, or a modality twice.
    """
    periods: dict[str, float] = {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        found = _RETENTION_ITEM.match(item.replace(" ", ""))
        if found is None or int(found[2]) == 0:
            raise ValueError(
                f"GATEWAY_RETENTION item {item!r} is not MODALITY=<n>y|m|d (e.g. CT=10y)"
            )
        modality = found[1].upper()
        if modality in periods:
            raise ValueError(f"GATEWAY_RETENTION names {modality} twice")
        periods[modality] = int(found[2]) * _DAYS_PER[found[3].lower()]
    return periods


def parse_window(value: str) -> tuple[int, int]:
    """``01:30-05:00`` -> ``(90, 300)``: minutes after midnight UTC, start and end.

    Raises
    ------
    ValueError
        Not ``HH:MM-HH:MM``, or an empty window (start equals end).
    """
    found = _WINDOW.match(value.strip())
    if found is None:
        raise ValueError(f"GATEWAY_RETENTION_WINDOW {value!r} is not HH:MM-HH:MM (UTC)")
    start = int(found[1]) * 60 + int(found[2])
    end = int(found[3]) * 60 + int(found[4])
    if start == end:
        raise ValueError("GATEWAY_RETENTION_WINDOW is empty: its start is its end")
    return start, end


def _host_port(address: object) -> object:
    """``"host:port"`` -> ``(host, port)``; anything else is left to pydantic to refuse."""
    if isinstance(address, str):
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"commitment peer address {address!r} is not host:port")
        return (host.strip("[]"), int(port))
    return address


def get_settings() -> Settings:
    """Read settings from the environment, turning validation failures into ConfigError."""
    try:
        return Settings()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
