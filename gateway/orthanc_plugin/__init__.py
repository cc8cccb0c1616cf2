"""The Orthanc plugin: integrity checks inside the PACS, for radiologists.

``xray-gateway up`` loads :data:`ENTRY_SCRIPT` into the embedded Orthanc with the
``XrayGateway`` configuration section from :func:`plugin_section`. See ``host.py`` for the
routes and ``guard.py`` for what is checked on every read.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Any

from gateway.core.fingerprint import MAX_INSTANCE_BYTES
from gateway.orthanc_plugin.settings import SECTION
from gateway.procs import PROJECT_ROOT

ENTRY_SCRIPT = Path(__file__).resolve().with_name("entry.py")

__all__ = ["ENTRY_SCRIPT", "SECTION", "plugin_section"]


def plugin_section(
    *,
    data_dir: Path,
    chain_url: str | None = None,
    contract_address: str | None = None,
    from_block: int = 0,
    log_range: int = 5_000,
    web_viewer: bool = False,
    mirror_interval: float = 2.0,
    max_instance_bytes: int = MAX_INSTANCE_BYTES,
    trusted_recorders: frozenset[str] | None = None,
    fail_closed: bool = False,
    pending_alert_s: float | None = None,
    alerts_dir: Path | None = None,
    index_url: str | None = None,
) -> dict[str, Any]:
    """The ``XrayGateway`` section for Orthanc's configuration.

    ``SysPath`` is this project's root and the running interpreter's site-packages (the
    venv's), so the script Orthanc runs imports this very code and its dependencies.
    ``StoredFileToken`` is not set here: :class:`gateway.pacs.embedded.EmbeddedOrthanc` adds the
    secret from the gateway's key directory when it writes the configuration.
    ``alerts_dir`` (``AlertsDir``) is where the plugin writes its alerts; None: ``data_dir``.
    ``index_url`` (``IndexUrl``): the gateway's index on PostgreSQL, read through the view
    made for the plugin as its read-only role; None: ``<data_dir>/index.sqlite``.
    """
    paths = sysconfig.get_paths()
    sys_path = [str(PROJECT_ROOT)]
    for key in ("purelib", "platlib"):
        if paths[key] not in sys_path:
            sys_path.append(paths[key])
    section: dict[str, Any] = {
        "SysPath": sys_path,
        "DataDir": str(data_dir.resolve()),
        "FromBlock": from_block,
        "LogRange": log_range,
        "WebViewer": web_viewer,
        "MirrorInterval": mirror_interval,
        "MaxInstanceBytes": max_instance_bytes,
        "FailClosed": fail_closed,
    }
    if pending_alert_s is not None:
        section["PendingAlertSeconds"] = pending_alert_s
    if alerts_dir is not None:
        section["AlertsDir"] = str(alerts_dir.resolve())
    if index_url:
        section["IndexUrl"] = index_url
    if chain_url and contract_address:
        section["ChainUrl"] = chain_url
        section["ContractAddress"] = contract_address
    if trusted_recorders:
        section["TrustedRecorders"] = ",".join(sorted(trusted_recorders))
    return section
