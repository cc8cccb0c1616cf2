"""The embedded PACS: Debian's Orthanc started with a generated config under the data dir."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.keyfiles import read_secret, replace_secret, write_secret
from gateway.procs import Child, port_in_use

HOST = "127.0.0.1"
CREDENTIALS_FILE = "orthanc-http.json"
# The secret the gateway sends to the plugin's stored-file route (forward.STORED_FILE_HEADER).
STORED_FILE_TOKEN_FILE = "orthanc-stored-file.token"

# The exact library, never the plugins folder: Orthanc loads every .so in a folder it is
# given, and Debian's folder also holds ServeFolders and ModalityWorklists.
PYTHON_PLUGIN_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancPython.so"),
    Path("/usr/lib/orthanc/libOrthancPython.so.4.0"),
)

# Viewer-side plugins from Debian (``orthanc-webviewer``, ``orthanc-dicomweb``), loaded
# after the Python plugin so that the integrity plugin's routes come first.
WEB_VIEWER_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancWebViewer.so"),
    Path("/usr/lib/orthanc/libOrthancWebViewer.so.2.8"),
)
DICOMWEB_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so.1.7"),
)

# Orthanc's own index on PostgreSQL (Debian package ``orthanc-postgresql``); never the
# storage plugin: the integrity plugin is the storage area, files stay on disk.
POSTGRESQL_INDEX_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"),
    Path("/usr/lib/orthanc/libOrthancPostgreSQLIndex.so.4.0"),
)

# Keys the gateway's guarantees rest on; ``extra_config`` may not override them.
PROTECTED_KEYS = frozenset(
    {
        "RemoteAccessAllowed",
        "AuthenticationEnabled",
        "RegisteredUsers",
        "StorageCompression",
        "OverwriteInstances",
        "MaximumStorageCacheSize",
        "Plugins",
        "PythonScript",
        "StorageDirectory",
        "IndexDirectory",
        "HttpPort",
        "DicomPort",
        "DicomAet",
        "XrayGateway",
        "WebViewer",
        "DicomWeb",
        "PostgreSQL",
    }
)


def orthanc_binary() -> str:
    """Path of the Orthanc executable (Debian installs it in /usr/sbin, often not on PATH)."""
    found = shutil.which("Orthanc")
    if found is not None:
        return found
    fallback = Path("/usr/sbin/Orthanc")
    if fallback.exists():
        return str(fallback)
    raise ConfigError("Orthanc is not installed: apt-get install orthanc")


def viewer_plugin_libraries() -> list[Path]:
    """The installed Web Viewer and DICOMweb plugin libraries (either may be missing)."""
    found = []
    for candidates in (WEB_VIEWER_CANDIDATES, DICOMWEB_CANDIDATES):
        existing = next((path for path in candidates if path.exists()), None)
        if existing is not None:
            found.append(existing)
    return found


def postgresql_index_library() -> Path:
    """Path of the PostgreSQL index plugin (Debian package ``orthanc-postgresql``)."""
    for candidate in POSTGRESQL_INDEX_CANDIDATES:
        if candidate.exists():
            return candidate
    raise ConfigError(
        "the Orthanc PostgreSQL plugin is not installed: apt-get install orthanc-postgresql"
    )


def python_plugin_library() -> Path:
    """Path of Orthanc's Python plugin library (Debian package ``orthanc-python``)."""
    for candidate in PYTHON_PLUGIN_CANDIDATES:
        if candidate.exists():
            return candidate
    raise ConfigError("the Orthanc Python plugin is not installed: apt-get install orthanc-python")


class EmbeddedOrthanc(Child):
    """Orthanc with a generated config in ``<data_dir>/orthanc/``, for ``xray-gateway up``.

    What the generated config guarantees:

    - HTTP answers loopback clients only, with HTTP basic auth. Orthanc 1.10 has no
      option to choose the listening address: it binds HTTP and DICOM to 0.0.0.0.
      ``RemoteAccessAllowed: false`` makes it answer 401 to every HTTP request that does
      not come from loopback, whatever the credentials. The DICOM port stays reachable
      from the network, so every ``DicomAlwaysAllow*`` is false and
      ``DicomCheckModalityHost`` is true: only the AETs listed in ``DicomModalities``
      (from ``extra_config``), from their configured hosts, get an association.
      Firewall the DICOM port if that is not enough; production runs Orthanc ≥ 1.12.11.
    - The user and password are random, generated on first start and kept in
      ``<data_dir>/keys/orthanc-http.json`` (0600), where the gateway and tests read them.
      Orthanc only takes passwords in its config, so that file is 0600 too.
    - The plugin's ``stored-file`` route (the file as stored, refused or not) answers only
      the gateway: a random token, generated on first start in
      ``<data_dir>/keys/orthanc-stored-file.token`` (0600), is written into the
      ``XrayGateway`` section (``StoredFileToken``) and sent by the gateway in the
      ``X-Xray-Stored-File-Token`` header. Every other Orthanc user gets 403.
    - Stored files are the received bytes: ``StorageCompression`` off (the dataset digest
      of Orthanc's copy equals the gateway's) and ``OverwriteInstances`` off (a second
      version under the same SOP Instance UID is answered ``AlreadyStored``, never
      silently replaces the first).
    - ``MaximumStorageCacheSize: 0``: Orthanc's RAM cache of files would serve repeated
      reads without touching the storage area, and the verification plugin (registered
      as the storage area) must see every read.
    - No plugin is loaded unless ``plugin`` (a Python script) is given: then exactly the
      Python plugin library is loaded and runs that script, with ``plugin_config`` as the
      ``XrayGateway`` section; ``extra_plugins`` (the Web Viewer, DICOMweb) load after it.
      The Web Viewer keeps its cache of decoded images in ``orthanc/webviewer-cache``,
      but the plugin answers the viewer's image route itself, from checked reads, so that
      cache is never served. DICOMweb answers on ``/dicom-web/`` and WADO-URI on ``/wado``,
      with its metadata cache off (``EnableMetadataCache: false``; the plugin refuses to
      start with it on).
    - WebDAV is off: it is a second upload path around the gateway.
    - HTTP compression is off: on loopback gzip only costs time, and Orthanc compresses a
      whole file before sending its first byte.
    - With ``index_url`` Orthanc keeps its own index in PostgreSQL (``orthanc-postgresql``
      4.0, loaded first): ``EnableIndex`` on, ``EnableStorage`` off (files stay in the
      storage directory, where the integrity plugin is the storage area), ``Lock`` off so
      that several Orthanc nodes share the one index (the plugin's multi-writer mode since
      4.0, on Orthanc ≥ 1.9.2). Those nodes also share ``storage_dir`` and, beside it,
      the plugin's attachment catalogue (``xray-attachments.sqlite``): a node reads files
      another node stored, and knows their arrival digests.

    Parameters
    ----------
    data_dir:
        The gateway's data dir; Orthanc's config, database and files go in ``orthanc/``.
    http_port, dicom_port, aet:
        Where and as whom Orthanc answers.
    plugin:
        A Python script for Orthanc's Python plugin, or ``None`` for no plugin.
    plugin_config:
        The ``XrayGateway`` section the plugin reads (with ``plugin`` only).
    extra_plugins:
        Further plugin libraries (with ``plugin`` only), e.g. :func:`viewer_plugin_libraries`.
    extra_config:
        Further config keys (e.g. ``DicomModalities``); may not override the keys above.
    index_url:
        A ``postgresql://`` URL for Orthanc's own index (not the gateway's), or ``None``
        for Orthanc's SQLite index in ``orthanc/index``.
    storage_dir:
        Where Orthanc keeps its files (shared by several nodes), or ``None`` for
        ``orthanc/storage``.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        http_port: int = 8042,
        dicom_port: int = 4242,
        aet: str = "ORTHANC",
        plugin: Path | None = None,
        plugin_config: dict[str, Any] | None = None,
        extra_plugins: Sequence[Path] = (),
        extra_config: dict[str, Any] | None = None,
        index_url: str | None = None,
        storage_dir: Path | None = None,
    ) -> None:
        if plugin is None and (plugin_config or extra_plugins):
            raise ConfigError("plugin_config and extra_plugins need the plugin script")
        clash = PROTECTED_KEYS & set(extra_config or {})
        if clash:
            raise ConfigError(f"extra_config may not set {', '.join(sorted(clash))}")
        self.data_dir = data_dir
        self.home = data_dir / "orthanc"
        self.config_path = self.home / "orthanc.json"
        self.credentials_path = data_dir / "keys" / CREDENTIALS_FILE
        self.stored_file_token_path = data_dir / "keys" / STORED_FILE_TOKEN_FILE
        self.http_port = http_port
        self.dicom_port = dicom_port
        self.aet = aet
        self.plugin = plugin
        self.plugin_config = dict(plugin_config or {})
        self.extra_plugins = list(extra_plugins)
        self.extra_config = dict(extra_config or {})
        if index_url is not None and not index_url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("Orthanc's index URL must be a postgresql:// URL")
        self.index_url = index_url
        self.storage_dir = storage_dir if storage_dir is not None else self.home / "storage"
        argv = [orthanc_binary(), str(self.config_path)]
        super().__init__(
            "orthanc",
            argv,
            log_path=self.home / "orthanc.log",
            ready=self._probe,
            # DCMTK inside Orthanc leaves Nagle's algorithm on unless told otherwise;
            # measured ten times slower for a series of small C-STOREs.
            env={"TCP_NODELAY": "1"},
            cwd=self.home,
        )

    @property
    def url(self) -> str:
        """Base URL of Orthanc's REST API (loopback)."""
        return f"http://{HOST}:{self.http_port}"

    @property
    def credentials(self) -> tuple[str, str]:
        """``(user, password)`` for HTTP basic auth, created on first use."""
        if not self.credentials_path.exists():
            user = "xray-" + secrets.token_hex(4)
            body = json.dumps({"user": user, "password": secrets.token_urlsafe(32)})
            write_secret(self.credentials_path, body.encode())
        try:
            stored = json.loads(read_secret(self.credentials_path))
            return str(stored["user"]), str(stored["password"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{self.credentials_path} is not a user/password file") from exc

    @property
    def stored_file_token(self) -> str:
        """The plugin's stored-file secret, created on first use (see the class docstring)."""
        if not self.stored_file_token_path.exists():
            write_secret(self.stored_file_token_path, secrets.token_urlsafe(32).encode())
        token = read_secret(self.stored_file_token_path).decode().strip()
        if len(token) < 32:
            raise ConfigError(f"{self.stored_file_token_path} does not hold a token")
        return token

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration this instance runs with.

        Returns
        -------
        dict
            JSON-ready configuration; see the class docstring for why each key is set.
        """
        user, password = self.credentials
        config: dict[str, Any] = {
            "Name": f"xray-gateway PACS ({self.aet})",
            "StorageDirectory": str(self.storage_dir.resolve()),
            "IndexDirectory": str((self.home / "index").resolve()),
            "StorageCompression": False,
            "MaximumStorageCacheSize": 0,
            "OverwriteInstances": False,
            "StableAge": 2,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {user: password},
            "HttpDescribeErrors": True,
            "HttpCompressionEnabled": False,
            "WebDavEnabled": False,
            "ExecuteLuaEnabled": False,
            "RestApiWriteToFileSystemEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowFindWorklist": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {},
            "DeidentifyLogs": True,
            "Plugins": [],
        }
        config.update(self.extra_config)
        if self.index_url is not None:
            config["Plugins"] = [str(postgresql_index_library())]
            config["PostgreSQL"] = {
                "EnableIndex": True,
                "EnableStorage": False,
                "ConnectionUri": self.index_url,
                "Lock": False,
                "EnableSsl": False,
                "MaximumConnectionRetries": 10,
                "ConnectionRetryInterval": 1,
                "IndexConnectionsCount": 4,
            }
        if self.plugin is not None:
            config["Plugins"] += [str(python_plugin_library())]
            config["Plugins"] += [str(path) for path in self.extra_plugins]
            config["PythonScript"] = str(self.plugin.resolve())
            if self.plugin_config:
                config["XrayGateway"] = {
                    **self.plugin_config,
                    "StoredFileToken": self.stored_file_token,
                }
            names = " ".join(path.name for path in self.extra_plugins)
            if "WebViewer" in names:
                config["WebViewer"] = {
                    "CachePath": str((self.home / "webviewer-cache").resolve()),
                    "CacheSize": 100,
                }
            if "DicomWeb" in names:
                config["DicomWeb"] = {
                    "Enable": True,
                    "Root": "/dicom-web/",
                    "EnableWado": True,
                    "WadoRoot": "/wado",
                    "Ssl": False,
                    "EnableMetadataCache": False,
                }
        if not config["Plugins"]:
            del config["Plugins"]
        return config

    def write_config(self) -> Path:
        """Write :meth:`config` to ``<data_dir>/orthanc/orthanc.json`` (0600: it holds the password)."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        replace_secret(self.config_path, json.dumps(self.config(), indent=2).encode())
        return self.config_path

    def start(self, *, timeout: float = 30.0) -> None:
        """Write the config, start Orthanc and wait until ``GET /system`` answers 200.

        Raises
        ------
        ConfigError
            If the HTTP or DICOM port is already taken, or Orthanc is not installed.
        ChildFailed
            If Orthanc exits early or is not ready within ``timeout`` seconds.
        """
        self.stop_stale()  # an Orthanc left by a crashed gateway holds the ports
        for port in (self.http_port, self.dicom_port):
            if port_in_use(HOST, port):
                raise ConfigError(f"port {port} is taken: is another Orthanc running there?")
        if self.plugin is not None and not self.plugin.is_file():
            raise ConfigError(f"Orthanc plugin script {self.plugin} does not exist")
        self.write_config()
        super().start(timeout=timeout)

    def _probe(self) -> bool:
        user, password = self.credentials
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request = urllib.request.Request(
            f"{self.url}/system", headers={"Authorization": f"Basic {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=1.0) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError:
            return False
