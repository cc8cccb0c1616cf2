"""The plugin's settings: the ``XrayGateway`` section of Orthanc's configuration (pure).

``xray-gateway up`` writes the section (see :func:`gateway.orthanc_plugin.plugin_section`);
an administrator running their own Orthanc writes it by hand::

    "XrayGateway": {
        "SysPath": ["/opt/xray-gateway", "/opt/xray-gateway/.venv/lib/python3.11/site-packages"],
        "DataDir": "/var/lib/xray-gateway",
        "IndexUrl": "postgresql://xray_evidence:…@db/xray",  // optional: the gateway's index on
                                                  // PostgreSQL, read through its view (below)
        "AlertsDir": "/var/lib/xray-alerts",      // optional: where alerts.sqlite and the
                                                  // access journal access.sqlite go (DataDir)
        "ChainUrl": "http://127.0.0.1:8545",      // optional: without it, no ledger mirror
        "ContractAddress": "0x…",                 // with ChainUrl
        "FromBlock": 0,                           // the contract's deployment block
        "TrustedRecorders": "0xabc…,0xdef…",      // optional: only these recorders count
        "LogRange": 5000,                         // most blocks per eth_getLogs (Besu's limit)
        "WebViewer": true,                        // the Orthanc Web Viewer plugin is loaded
        "FailClosed": true,                       // refuse, not serve, what cannot be checked
        "StoredFileToken": "…",                   // the gateway's secret for stored-file
        "PendingAlertSeconds": 900                // received, not anchored after: unconfirmed
    }

``IndexUrl`` (optional): the gateway's index is on PostgreSQL; the plugin reads the
view made for it (:mod:`gateway.index.evidence_view`) as a role that may only read that
view, instead of ``<DataDir>/index.sqlite``. Its password is never logged.

``StoredFileToken`` has no default: without it, ``/xray/instances/{id}/stored-file``
answers 403 to everyone. With the DICOMweb plugin, its metadata cache must be off
(``"DicomWeb": {"EnableMetadataCache": false}``): it would serve metadata from attachment
4301 instead of from checked files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.fingerprint import MAX_INSTANCE_BYTES
from gateway.core.ownership import parse_accounts
from gateway.errors import PluginConfigError
from gateway.orthanc_plugin.verdict import PENDING_ALERT_S

SECTION = "XrayGateway"


@dataclass(frozen=True)
class PluginSettings:
    """Where the plugin finds everything, derived from Orthanc's configuration."""

    storage_dir: Path
    catalog_path: Path
    index_path: Path
    alerts_path: Path
    chain_url: str | None
    contract_address: str | None
    from_block: int
    log_range: int
    web_viewer: bool
    sync_storage: bool
    mirror_interval: float
    max_instance_bytes: int = MAX_INSTANCE_BYTES
    #: Only these recorders' records count; ``None``: whoever held the Recorder role.
    trusted_recorders: frozenset[str] | None = None
    fail_closed: bool = False
    stored_file_token: str | None = None
    pending_alert_s: float = PENDING_ALERT_S
    #: The gateway's PostgreSQL index (read through its view), or None: ``index_path``.
    index_url: str | None = None

    @property
    def access_journal_path(self) -> Path:
        """The access journal (``access.sqlite``), beside the alerts in ``AlertsDir``."""
        return self.alerts_path.with_name("access.sqlite")

    @classmethod
    def from_orthanc(cls, config: dict[str, Any]) -> PluginSettings:
        """Read Orthanc's whole configuration (``orthanc.GetConfiguration()`` parsed).

        Raises
        ------
        PluginConfigError
            When the section is missing, or a setting would defeat the check: stored files
            compressed by Orthanc (their bytes would not hash to the recorded digest), or
            DICOMweb's metadata cache on (served from attachment 4301, not checked files).
        """
        section = config.get(SECTION)
        if not isinstance(section, dict) or not section.get("DataDir"):
            raise PluginConfigError(
                f'the Orthanc configuration has no "{SECTION}": {{"DataDir": …}}'
            )
        if config.get("StorageCompression", False):
            raise PluginConfigError(
                "StorageCompression is on: stored files would not hash to the recorded digest"
            )
        if _dicomweb_cache_on(config):
            raise PluginConfigError(
                'the DICOMweb plugin\'s metadata cache is on: set "DicomWeb": '
                '{"EnableMetadataCache": false} (it serves attachment 4301, not checked files)'
            )
        data_dir = Path(str(section["DataDir"]))
        storage = Path(str(config.get("StorageDirectory", "OrthancStorage")))
        chain_url = section.get("ChainUrl") or None
        address = section.get("ContractAddress") or None
        if bool(chain_url) != bool(address):
            raise PluginConfigError("ChainUrl and ContractAddress go together")
        return cls(
            storage_dir=storage,
            catalog_path=Path(
                str(section.get("CatalogPath") or storage.parent / "xray-attachments.sqlite")
            ),
            index_path=data_dir / "index.sqlite",
            alerts_path=Path(str(section.get("AlertsDir") or data_dir)) / "alerts.sqlite",
            chain_url=str(chain_url) if chain_url else None,
            contract_address=str(address) if address else None,
            from_block=int(section.get("FromBlock", 0)),
            log_range=max(1, int(section.get("LogRange", 5_000))),
            web_viewer=bool(section.get("WebViewer", False)),
            sync_storage=bool(config.get("SyncStorageArea", True)),
            mirror_interval=float(section.get("MirrorInterval", 2.0)),
            max_instance_bytes=int(section.get("MaxInstanceBytes", MAX_INSTANCE_BYTES)),
            trusted_recorders=_accounts(section.get("TrustedRecorders")),
            fail_closed=_flag(section.get("FailClosed", False)),
            stored_file_token=str(section.get("StoredFileToken") or "") or None,
            pending_alert_s=float(section.get("PendingAlertSeconds", PENDING_ALERT_S)),
            index_url=_index_url(section.get("IndexUrl")),
        )


def _index_url(value: object) -> str | None:
    """``IndexUrl``: a ``postgresql://`` URL, or nothing (the SQLite file in DataDir)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith(("postgresql://", "postgres://")):
        raise PluginConfigError(f"{SECTION}.IndexUrl must be a postgresql:// URL")
    return value


def _accounts(value: object) -> frozenset[str] | None:
    """``TrustedRecorders``: a comma-separated string or a list of addresses."""
    if value is None or isinstance(value, (str, list)):
        try:
            return parse_accounts(value)
        except ValueError as exc:
            raise PluginConfigError(f"{SECTION}.TrustedRecorders: {exc}") from None
    raise PluginConfigError(f"{SECTION}.TrustedRecorders is a string or a list of addresses")


def _flag(value: Any) -> bool:
    """A boolean setting; orthancteam's image passes ``ORTHANC__…`` values as strings."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _dicomweb_cache_on(config: dict[str, Any]) -> bool:
    """True when the DICOMweb plugin may be loaded with its metadata cache on (its default
    since DICOMweb 1.15; Debian's 1.7 has none, and ignores the setting)."""
    plugins = config.get("Plugins", [])
    names = [str(p).lower() for p in plugins] if isinstance(plugins, list) else []
    dicomweb = config.get("DicomWeb")
    if not isinstance(dicomweb, dict) and not any("dicomweb" in name for name in names):
        return False
    setting = dicomweb.get("EnableMetadataCache", True) if isinstance(dicomweb, dict) else True
    return _flag(setting)
