"""The plugin's settings: the ``XrayGateway`` section of Orthanc's configuration (pure).

``xray-gateway up`` writes the section (see :func:`gateway.orthanc_plugin.plugin_section`);
an administrator running their own Orthanc writes it by hand::

    "XrayGateway": {
        "SysPath": ["/opt/xray-gateway", "/opt/xray-gateway/.venv/lib/python3.11/site-packages"],
        "DataDir": "/var/lib/xray-gateway",
        "ChainUrl": "http://127.0.0.1:8545",      // optional: without it, no ledger mirror
        "ContractAddress": "0x…",                 // with ChainUrl
        "FromBlock": 0,                           // the contract's deployment block
        "LogRange": 5000,                         // most blocks per eth_getLogs (Besu's limit)
        "WebViewer": true                         // the Orthanc Web Viewer plugin is loaded
    }
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.fingerprint import MAX_INSTANCE_BYTES

SECTION = "XrayGateway"


class PluginConfigError(Exception):
    """Orthanc's configuration does not let the plugin guarantee its checks."""


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

    @classmethod
    def from_orthanc(cls, config: dict[str, Any]) -> PluginSettings:
        """Read Orthanc's whole configuration (``orthanc.GetConfiguration()`` parsed).

        Raises
        ------
        PluginConfigError
            When the section is missing, or a setting would defeat the check: stored files
            compressed by Orthanc (their bytes would not hash to the recorded digest).
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
            alerts_path=data_dir / "alerts.sqlite",
            chain_url=str(chain_url) if chain_url else None,
            contract_address=str(address) if address else None,
            from_block=int(section.get("FromBlock", 0)),
            log_range=max(1, int(section.get("LogRange", 5_000))),
            web_viewer=bool(section.get("WebViewer", False)),
            sync_storage=bool(config.get("SyncStorageArea", True)),
            mirror_interval=float(section.get("MirrorInterval", 2.0)),
            max_instance_bytes=int(section.get("MaxInstanceBytes", MAX_INSTANCE_BYTES)),
        )
