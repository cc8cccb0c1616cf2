"""Static checks of the compose deployment in docker/ (no Docker engine needed).

Checks:

- every image is pinned: it has a tag (or digest) and the tag is not ``latest``,
  in compose.yaml and in every Dockerfile's ``FROM`` lines (build stages excepted);
- every variable the deployment reads is documented in .env.example: each
  ``${VAR}`` compose interpolates without a default, each docker secret taken
  from the environment and each ``GATEWAY_*`` variable (compose or Dockerfile),
  and every field of ``gateway/config.py``'s ``Settings`` as ``GATEWAY_<FIELD>``;
- nothing in .env.example is stale: each variable it sets is read by compose.yaml;
- a ``GATEWAY_*`` variable set in compose takes its value from the ``.env``
  variable of the same name, so .env is the one place to change it;
- no secret is written into compose.yaml: secret-looking settings hold only
  ``${VAR}`` references, and URLs carry no literal password; every secret a
  service names is declared, every declared secret is used;
- .env.example holds placeholders, not secrets, and .env is git-ignored; each
  Dockerfile has a ``.dockerignore`` that keeps .env files and keys out;
- the Orthanc image runs the integrity plugin as the code expects
  (``orthanc/orthanc.json``, ``Dockerfile.orthanc`` and the ``orthanc`` service): stored
  bytes as received, no storage cache, the Python plugin loaded first, the plugin's
  ``SysPath`` where the image installs the gateway, the gateway's data volume mounted at
  the plugin's ``DataDir`` (the keys volume not at all), Orthanc's files on a volume, and
  none of that overridden by ``ORTHANC__*`` variables;
- several nodes work: two or more Orthanc nodes share one index in PostgreSQL
  (``EnableIndex``, ``EnableStorage`` false, ``Lock`` false) and one volume at
  ``StorageDirectory``; two or more gateway nodes share ``GATEWAY_INDEX_URL`` and each has
  its own data and keys volumes; the plugin's evidence role (``XrayGateway.IndexUrl``,
  ``ORTHANC__XRAY_GATEWAY__INDEX_URL``) is not the gateway's own; services built from the
  gateway's Dockerfile with their own ``entrypoint`` are one-shot jobs, not nodes;
- the trust domains stay apart: with ``IndexUrl`` Orthanc mounts no gateway volume (the
  evidence comes through PostgreSQL); without it (one gateway node) it mounts the gateway's
  data volume read-only; it writes
  its alerts (``XrayGateway.AlertsDir``) to a volume of their own that the gateway mounts
  read-only at ``GATEWAY_PLUGIN_ALERTS_DIR``, takes the contract address from
  ``GATEWAY_CONTRACT_ADDRESS`` and never from the gateway's deployment record
  (``orthanc/entrypoint.py``), and the gateway's umask and data dir give its group (which
  Orthanc joins to read the index) no write.

Run ``python docker/validate.py``; it exits 1 and lists the problems if any.
Needs PyYAML.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SETTINGS_SOURCE = HERE.parent / "gateway" / "config.py"
GATEWAY_DOCKERFILE = "Dockerfile"
ORTHANC_DOCKERFILE = "Dockerfile.orthanc"
ORTHANC_CONFIG = Path("orthanc") / "orthanc.json"
ORTHANC_ENTRYPOINT = Path("orthanc") / "entrypoint.py"

PLACEHOLDER = "change-me"

# Setting names that carry credentials. *_FILE names carry paths to them.
SECRET_NAME = re.compile(
    r"PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|API_KEY|ROOT_USER|CREDENTIAL|REGISTERED_USERS",
)
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, ${NAME?err}, ${NAME:+x}, $NAME
BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
BARE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:([^@\s]+)@", re.IGNORECASE)
ENV_ASSIGNMENT = re.compile(r"^\s*(#\s*)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
GATEWAY_NAME = re.compile(r"\bGATEWAY_[A-Z0-9_]+\b")
FROM_LINE = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", re.IGNORECASE)
GROUPADD_XRAY = re.compile(r"groupadd\b[^\n]*--gid\s+(\d+)\s+xray\b")
PIP_TARGET = re.compile(r"--target\s+(\S+)")
UMASK = re.compile(r"\bumask\s+([0-7]{3,4})\b")
INSTALL_DIR = re.compile(r"install\s+-d\b[^\n]*?-m\s+([0-7]{3,4})\s+(\S+)")

# What a .dockerignore must keep out of a build context: secrets and key material.
DOCKERIGNORE_REQUIRED = ("**/.env", "**/*.key", "**/keys", "**/api-token", "var")

# Orthanc settings the integrity plugin depends on: fixed by the image's orthanc.json,
# never to be overridden from compose (ORTHANC__* variables win over the JSON files).
ORTHANC_PROTECTED = frozenset(
    {
        "StorageCompression",
        "MaximumStorageCacheSize",
        "OverwriteInstances",
        "SyncStorageArea",
        "Plugins",
        "PythonScript",
        "StorageDirectory",
        "IndexDirectory",
        "XrayGateway.DataDir",
        "XrayGateway.AlertsDir",
        "XrayGateway.SysPath",
        "XrayGateway.WebViewer",
        "XrayGateway.CatalogPath",
        "PostgreSQL.EnableIndex",
        "PostgreSQL.EnableStorage",
        "PostgreSQL.Lock",
    }
)
PLUGIN_ENTRY = "gateway/orthanc_plugin/entry.py"
POSTGRESQL_INDEX_PLUGIN = "/libOrthancPostgreSQLIndex.so"
INDEX_URL_VARIABLE = "ORTHANC__XRAY_GATEWAY__INDEX_URL"
URL_USER = re.compile(r"^[a-z][a-z0-9+.-]*://([^/:@\s]+)[:@]", re.IGNORECASE)


def _unescape_dollars(text: str) -> str:
    # "$$" is compose's escape for a literal "$": never an interpolation.
    return text.replace("$$", "\0")


def interpolations(text: str) -> list[tuple[str, str | None]]:
    """List the variables compose interpolates in ``text``.

    Parameters
    ----------
    text : str
        A string value from the compose file.

    Returns
    -------
    list of (str, str or None)
        Each variable name with its operator (``-``, ``:-``, ``?``, ``:?``,
        ``+``, ``:+``) or None for a bare reference.
    """
    text = _unescape_dollars(text)
    found: list[tuple[str, str | None]] = [(m[1], m[2]) for m in BRACED.finditer(text)]
    found += [(m[1], None) for m in BARE.finditer(BRACED.sub("", text))]
    return found


def _is_pure_interpolation(text: str) -> bool:
    stripped = BRACED.sub("", _unescape_dollars(text))
    return BARE.sub("", stripped).strip() == ""


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {key: value for key, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def load_env_example(path: Path) -> tuple[dict[str, str], set[str]]:
    """Read .env.example.

    Parameters
    ----------
    path : Path
        The .env.example file.

    Returns
    -------
    active : dict of str to str
        ``NAME=value`` lines.
    mentioned : set of str
        Names of active lines and of commented-out ``# NAME=value`` lines.
    """
    active: dict[str, str] = {}
    mentioned: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        match = ENV_ASSIGNMENT.match(line)
        if not match:
            continue
        commented, name, value = match.groups()
        mentioned.add(name)
        if not commented:
            active[name] = value.strip()
    return active, mentioned


def from_images(dockerfile: str) -> list[str]:
    """The images a Dockerfile's ``FROM`` lines pull (references to earlier stages left out)."""
    images: list[str] = []
    stages: set[str] = set()
    for line in dockerfile.splitlines():
        match = FROM_LINE.match(line)
        if not match:
            continue
        image, alias = match[1], match[2]
        if image.lower() not in stages:
            images.append(image)
        if alias:
            stages.add(alias.lower())
    return images


def check_images_pinned(compose: dict[str, Any], dockerfiles: Mapping[str, str]) -> list[str]:
    """Report images without a tag or digest, or tagged ``latest``."""
    errors: list[str] = []
    images = [
        (f"service {name!r}", service["image"])
        for name, service in (compose.get("services") or {}).items()
        if service.get("image")
    ]
    images += [
        (f"{name} FROM", image) for name, text in dockerfiles.items() for image in from_images(text)
    ]
    for where, image in images:
        if "$" in image:
            errors.append(f"{where}: image {image!r} is interpolated; pin it literally")
            continue
        if "@sha256:" in image:
            continue
        last = image.rsplit("/", 1)[-1]
        if ":" not in last:
            errors.append(f"{where}: image {image!r} has no tag")
        elif last.rsplit(":", 1)[1] == "latest":
            errors.append(f"{where}: image {image!r} uses 'latest'")
    return errors


def check_variables_documented(
    compose: dict[str, Any],
    dockerfiles: Mapping[str, str],
    active: dict[str, str],
    mentioned: set[str],
) -> list[str]:
    """Report variables the deployment reads that .env.example does not list."""
    errors: list[str] = []
    for text in _strings(compose):
        for name, operator in interpolations(text):
            has_default = operator is not None and operator.lstrip(":") in ("-", "+")
            if (not has_default or name.startswith("GATEWAY_")) and name not in active:
                errors.append(f"${{{name}}} is used in compose.yaml but not set in .env.example")
            elif name not in mentioned:
                errors.append(
                    f"${{{name}}} is used in compose.yaml but not mentioned in .env.example"
                )
    for name, spec in (compose.get("secrets") or {}).items():
        source = (spec or {}).get("environment")
        if source and source not in active:
            errors.append(f"secret {name!r} reads {source} but .env.example does not set it")
    for service_name, service in (compose.get("services") or {}).items():
        for key, value in _environment(service).items():
            if not key.startswith("GATEWAY_"):
                continue
            if key not in mentioned:
                errors.append(
                    f"service {service_name!r} sets {key}, which .env.example does not list"
                )
            if key not in {name for name, _ in interpolations(value)}:
                errors.append(
                    f"service {service_name!r}: {key} must come from ${{{key}}} in .env, not {value!r}"
                )
    for file, text in dockerfiles.items():
        for name in sorted(set(GATEWAY_NAME.findall(text)) - mentioned):
            errors.append(f"{file} sets {name}, which .env.example does not list")
    return errors


def check_env_example_used(compose: dict[str, Any], active: dict[str, str]) -> list[str]:
    """Report variables .env.example sets that compose.yaml never reads (stale entries)."""
    read = {name for text in _strings(compose) for name, _ in interpolations(text)}
    read |= {
        str(spec["environment"])
        for spec in (compose.get("secrets") or {}).values()
        if spec and spec.get("environment")
    }
    return [
        f".env.example sets {name}, which compose.yaml never reads; remove it"
        for name in sorted(set(active) - read)
    ]


def settings_fields(source: str) -> list[str]:
    """The field names of the ``Settings`` class in ``gateway/config.py``'s source."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == "Settings":
            return [
                statement.target.id
                for statement in node.body
                if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
            ]
    return []


def check_settings_documented(settings_source: str, mentioned: set[str]) -> list[str]:
    """Report gateway settings that .env.example does not mention (set or commented)."""
    fields = settings_fields(settings_source)
    if not fields:
        return ["gateway/config.py: no Settings class with fields found"]
    return [
        f"gateway/config.py has the setting {field}; .env.example does not mention "
        f"GATEWAY_{field.upper()} (set it, or list it commented with why it is not set)"
        for field in fields
        if f"GATEWAY_{field.upper()}" not in mentioned
    ]


def _json_literal_values(text: str) -> list[str]:
    # Replace interpolations by a marker, then every JSON string value must be one.
    marked = BRACED.sub("\1", _unescape_dollars(text))
    try:
        document = json.loads(marked)
    except ValueError:
        return []
    literals: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str) and node != "\1":
            literals.append(node)

    walk(document)
    return literals


def check_no_inline_secrets(compose: dict[str, Any]) -> list[str]:
    """Report secrets written into compose.yaml instead of referenced from .env."""
    errors: list[str] = []
    for service_name, service in (compose.get("services") or {}).items():
        for key, value in _environment(service).items():
            where = f"service {service_name!r}: {key}"
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):
                if value.lstrip().startswith(("{", "[")):
                    if _json_literal_values(value):
                        errors.append(f"{where} holds a literal secret; use ${{VAR}} values")
                elif not _is_pure_interpolation(value):
                    errors.append(f"{where} holds a literal secret; use a ${{VAR}} reference")
    for text in _strings(compose):
        for match in URL_PASSWORD.finditer(_unescape_dollars(text)):
            if not _is_pure_interpolation(match[1]):
                errors.append(f"URL with a literal password in compose.yaml: {text!r}")
    declared = compose.get("secrets") or {}
    for name, spec in declared.items():
        if spec and "content" in spec:
            errors.append(f"secret {name!r} has inline content; use environment: or file:")
    used: set[str] = set()
    for service_name, service in (compose.get("services") or {}).items():
        for entry in service.get("secrets") or []:
            secret = str(entry.get("source") if isinstance(entry, dict) else entry)
            used.add(secret)
            if secret not in declared:
                errors.append(f"service {service_name!r} uses secret {secret!r}, never declared")
    for name in sorted(set(declared) - used):
        errors.append(f"secret {name!r} is declared but no service uses it; remove it")
    return errors


def check_env_example(active: dict[str, str], gitignore: str) -> list[str]:
    """Report real-looking secrets in .env.example, or .env not git-ignored."""
    errors: list[str] = []
    for name, value in active.items():
        # *_FILE names carry a path to a secret, never the secret itself
        if SECRET_NAME.search(name) and not name.endswith("_FILE") and PLACEHOLDER not in value:
            errors.append(f".env.example: {name} must hold the placeholder {PLACEHOLDER!r}")
        for match in URL_PASSWORD.finditer(value):
            if PLACEHOLDER not in match[1]:
                errors.append(
                    f".env.example: {name} carries a password that is not {PLACEHOLDER!r}"
                )
    if ".env" not in {line.strip() for line in gitignore.splitlines()}:
        errors.append("docker/.gitignore must list .env")
    return errors


def check_dockerignore(directory: Path, dockerfiles: Mapping[str, str]) -> list[str]:
    """Report Dockerfiles without a ``<Dockerfile>.dockerignore`` that keeps secrets out."""
    errors: list[str] = []
    for name in dockerfiles:
        path = directory / f"{name}.dockerignore"
        if not path.exists():
            errors.append(f"{name} has no {path.name}: its build context would take .env and keys")
            continue
        lines = {line.strip() for line in path.read_text(encoding="utf-8").splitlines()}
        for pattern in DOCKERIGNORE_REQUIRED:
            if pattern not in lines:
                errors.append(f"{path.name} does not exclude {pattern}")
    return errors


def orthanc_json_path(env_key: str) -> str:
    """The configuration path orthancteam's entrypoint writes an ``ORTHANC__*`` variable to.

    ``ORTHANC__XRAY_GATEWAY__DATA_DIR`` -> ``XrayGateway.DataDir`` (its standard rule:
    ``__`` separates levels, ``_`` separates the words of a CamelCase name).
    """
    tokens = env_key.removeprefix("ORTHANC__").split("__")
    return ".".join("".join(word.capitalize() for word in token.split("_")) for token in tokens)


def _build_dockerfile(service: Mapping[str, Any]) -> str | None:
    build = service.get("build")
    if isinstance(build, dict):
        return Path(str(build.get("dockerfile", "Dockerfile"))).name
    return "Dockerfile" if build else None


def _nodes(compose: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The Orthanc nodes and the gateway nodes: services built from each Dockerfile. A
    service built from the gateway's Dockerfile with its own ``entrypoint`` is a one-shot
    job (``evidence-view``), not a node."""
    services: dict[str, Any] = compose.get("services") or {}
    orthanc = [n for n, svc in services.items() if _build_dockerfile(svc) == ORTHANC_DOCKERFILE]
    gateway = [
        n
        for n, svc in services.items()
        if _build_dockerfile(svc) == GATEWAY_DOCKERFILE and not svc.get("entrypoint")
    ]
    return orthanc, gateway


def _protected(path: str) -> bool:
    """Whether a configuration path is one the image fixes (orthancteam's names are
    case-insensitive: ``ORTHANC__POSTGRESQL__LOCK`` is ``PostgreSQL.Lock``)."""
    return path.lower() in {key.lower() for key in ORTHANC_PROTECTED}


def _evidence_url(service: Mapping[str, Any], section: Mapping[str, Any]) -> str:
    """``XrayGateway.IndexUrl`` of an Orthanc node: from its environment, else the image's."""
    return _environment(service).get(INDEX_URL_VARIABLE) or str(section.get("IndexUrl") or "")


def _volume_mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """Named volumes (and bind sources) of a service, keyed by their target path."""
    mounts: dict[str, str] = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            if entry.get("target"):
                mounts[str(entry["target"]).rstrip("/")] = str(entry.get("source", ""))
            continue
        parts = str(entry).split(":")
        if len(parts) >= 2:
            mounts[parts[1].rstrip("/")] = parts[0]
    return mounts


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _instructions(dockerfile: str) -> str:
    """The Dockerfile without its comment lines."""
    return "\n".join(line for line in dockerfile.splitlines() if not line.lstrip().startswith("#"))


def _dockerfile_env(dockerfile: str, name: str) -> str | None:
    match = re.search(rf"\b{name}=(\S+)", _instructions(dockerfile))
    return match[1] if match else None


def check_orthanc_plugin(
    compose: dict[str, Any], orthanc_config: Mapping[str, Any], dockerfiles: Mapping[str, str]
) -> list[str]:
    """Report anything that would keep the Orthanc service from running the integrity plugin
    as ``gateway/orthanc_plugin`` expects (see the module docstring)."""
    errors: list[str] = []
    services: dict[str, Any] = compose.get("services") or {}
    orthanc, gateway = _nodes(compose)
    if not orthanc or not gateway:
        return [
            f"expected services built from {ORTHANC_DOCKERFILE} and from "
            f"{GATEWAY_DOCKERFILE}; found {orthanc} and {gateway}"
        ]
    config = orthanc_config
    where = f"{ORTHANC_CONFIG}"

    # -- what the check itself depends on
    for key, wanted in (
        ("StorageCompression", False),
        ("MaximumStorageCacheSize", 0),
        ("OverwriteInstances", False),
    ):
        if key not in config or config[key] != wanted or type(config[key]) is not type(wanted):
            errors.append(f"{where}: {key} must be {json.dumps(wanted)}")
    plugins = config.get("Plugins")
    if (
        not isinstance(plugins, list)
        or not plugins
        or not str(plugins[0]).endswith("/libOrthancPython.so")
    ):
        errors.append(f"{where}: Plugins must list libOrthancPython.so first, by path")
        plugins = []
    postgresql = config.get("PostgreSQL")
    pg_index = isinstance(postgresql, dict) and postgresql.get("EnableIndex") is True
    if pg_index and not any(str(path).endswith(POSTGRESQL_INDEX_PLUGIN) for path in plugins):
        errors.append(f"{where}: PostgreSQL.EnableIndex without {POSTGRESQL_INDEX_PLUGIN[1:]}")
    section = config.get("XrayGateway")
    if not isinstance(section, dict) or not section.get("DataDir") or not section.get("SysPath"):
        return [*errors, f'{where}: no "XrayGateway" section with DataDir and SysPath']
    data_dir = str(section["DataDir"]).rstrip("/")
    lib = str(section["SysPath"][0]).rstrip("/")
    if config.get("PythonScript") != f"{lib}/{PLUGIN_ENTRY}":
        errors.append(f"{where}: PythonScript must be {lib}/{PLUGIN_ENTRY} (first SysPath entry)")
    viewer = any(str(path).endswith("/libOrthancWebViewer.so") for path in plugins)
    if bool(section.get("WebViewer")) != viewer:
        errors.append(f"{where}: XrayGateway.WebViewer must be {json.dumps(viewer)}, as Plugins")

    # -- the image installs the gateway where SysPath says, and shares the gateway's group
    orthanc_dockerfile = _instructions(dockerfiles.get(ORTHANC_DOCKERFILE, ""))
    targets = PIP_TARGET.findall(orthanc_dockerfile)
    if targets != [lib]:
        errors.append(
            f"{ORTHANC_DOCKERFILE} must pip install --target {lib} (XrayGateway.SysPath); "
            f"found {targets}"
        )
    if f"COPY docker/{ORTHANC_CONFIG.as_posix()} /etc/orthanc/" not in orthanc_dockerfile:
        errors.append(
            f"{ORTHANC_DOCKERFILE} does not copy docker/{ORTHANC_CONFIG} to /etc/orthanc/"
        )
    gids = [
        GROUPADD_XRAY.findall(_instructions(dockerfiles.get(name, "")))
        for name in (GATEWAY_DOCKERFILE, ORTHANC_DOCKERFILE)
    ]
    if not gids[0] or gids[0] != gids[1]:
        errors.append(f"group xray must have the same gid in both images; found {gids}")

    # -- compose does not override what the image fixes
    for name in orthanc:
        for key in _environment(services[name]):
            if key == "ORTHANC_JSON" or (
                key.startswith("ORTHANC__") and _protected(orthanc_json_path(key))
            ):
                errors.append(
                    f"service {name!r}: {key} overrides what {where} fixes for the plugin"
                )

    # -- the evidence: the gateway's index through PostgreSQL (IndexUrl: no gateway volume
    # at all), or its data volume at DataDir (one gateway node only); never its keys
    gateway_data = _dockerfile_env(dockerfiles.get(GATEWAY_DOCKERFILE, ""), "GATEWAY_DATA_DIR")
    if gateway_data is None or gateway_data.rstrip("/") != data_dir:
        errors.append(
            f"XrayGateway.DataDir {data_dir} is not the gateway image's GATEWAY_DATA_DIR "
            f"({gateway_data})"
        )
        return errors
    gateway_volumes = {
        source
        for node in gateway
        for target, source in _volume_mounts(services[node]).items()
        if _inside(target, data_dir)
    }
    for name in orthanc:
        orthanc_mounts = _volume_mounts(services[name])
        if _evidence_url(services[name], section):
            for target, source in orthanc_mounts.items():
                if source in gateway_volumes:
                    errors.append(
                        f"service {name!r} must not mount {source!r} ({target}): with "
                        "XrayGateway.IndexUrl the plugin reads the evidence through PostgreSQL"
                    )
        elif len(gateway) != 1:
            errors.append(
                f"service {name!r}: several gateway nodes share no data volume; set "
                f"{INDEX_URL_VARIABLE} (the evidence through PostgreSQL)"
            )
        else:
            gateway_mounts = _volume_mounts(services[gateway[0]])
            volume = gateway_mounts.get(data_dir)
            if volume is None:
                errors.append(f"service {gateway[0]!r} mounts no volume at {data_dir}")
            elif orthanc_mounts.get(data_dir) != volume:
                errors.append(
                    f"service {name!r} must mount {volume!r} at {data_dir} (XrayGateway.DataDir)"
                )
            for target, source in gateway_mounts.items():
                if (
                    target != data_dir
                    and _inside(target, data_dir)
                    and source in orthanc_mounts.values()
                ):
                    errors.append(f"service {name!r} must not mount {source!r} ({target})")
        for key in ("StorageDirectory", "IndexDirectory"):
            path = str(config.get(key, ""))
            if not path or not any(
                _inside(path, target) for target in orthanc_mounts if target != data_dir
            ):
                errors.append(f"{where}: {key} {path!r} is on no volume of service {name!r}")
    return errors


def check_several_nodes(
    compose: dict[str, Any], orthanc_config: Mapping[str, Any], active: Mapping[str, str]
) -> list[str]:
    """Report what would break with several Orthanc or gateway nodes.

    Several Orthanc nodes: one index in PostgreSQL (``EnableIndex``, files not in the
    database: ``EnableStorage`` false, ``Lock`` false for several writers) and one volume at
    ``StorageDirectory`` (files and the plugin's catalog). Several gateway nodes: the shared
    index (``GATEWAY_INDEX_URL``), and each node its own data and keys volumes. The plugin's
    role (``XrayGateway.IndexUrl``) is never the gateway's own.
    """
    errors: list[str] = []
    services: dict[str, Any] = compose.get("services") or {}
    orthanc, gateway = _nodes(compose)
    where = f"{ORTHANC_CONFIG}"
    if len(orthanc) > 1:
        postgresql = orthanc_config.get("PostgreSQL")
        wanted = {"EnableIndex": True, "EnableStorage": False, "Lock": False}
        if not isinstance(postgresql, dict) or any(
            postgresql.get(key) is not value for key, value in wanted.items()
        ):
            errors.append(
                f'{where}: {len(orthanc)} Orthanc nodes need one index: "PostgreSQL": '
                + json.dumps(wanted)
            )
        storage = str(orthanc_config.get("StorageDirectory", ""))
        shared = set()
        for name in orthanc:
            sources = [
                source
                for target, source in _volume_mounts(services[name]).items()
                if _inside(storage, target)
            ]
            shared.add(sources[0] if sources else "")
        if len(shared) != 1 or "" in shared:
            errors.append(
                f"the Orthanc nodes {orthanc} must share one volume at StorageDirectory "
                f"({storage}): files and the plugin's catalog; found {sorted(shared)}"
            )
    if len(gateway) > 1:
        for name in gateway:
            if "GATEWAY_INDEX_URL" not in _environment(services[name]):
                errors.append(
                    f"service {name!r}: several gateway nodes share one index; set "
                    "GATEWAY_INDEX_URL (PostgreSQL)"
                )
        for target in ("/var/lib/xray-gateway", "/var/lib/xray-gateway/keys"):
            owners: dict[str, list[str]] = {}
            for name in gateway:
                source = _volume_mounts(services[name]).get(target)
                if source:
                    owners.setdefault(source, []).append(name)
            for source, names in owners.items():
                if len(names) > 1:
                    errors.append(
                        f"gateway nodes {names} share {source!r} at {target}: each node "
                        "needs its own (spool, recorder key)"
                    )
    gateway_user = URL_USER.match(active.get("GATEWAY_INDEX_URL", ""))
    for name in orthanc:
        url = _evidence_url(services[name], orthanc_config.get("XrayGateway") or {})
        plugin_user = URL_USER.match(url)
        if url and plugin_user is None:
            errors.append(f"service {name!r}: {INDEX_URL_VARIABLE} names no PostgreSQL role")
        elif plugin_user and gateway_user and plugin_user[1] == gateway_user[1]:
            errors.append(
                f"service {name!r}: the plugin signs in as {plugin_user[1]!r}, the gateway's "
                "own role; it must use the read-only evidence role"
            )
    return errors


def _mount_modes(service: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """Each mount of a service by target path: its source and whether it is read-only."""
    mounts: dict[str, tuple[str, bool]] = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            if entry.get("target"):
                target = str(entry["target"]).rstrip("/")
                mounts[target] = (str(entry.get("source", "")), bool(entry.get("read_only")))
            continue
        parts = str(entry).split(":")
        if len(parts) >= 2:
            options = parts[2].split(",") if len(parts) > 2 else []
            mounts[parts[1].rstrip("/")] = (parts[0], "ro" in options)
    return mounts


def check_trust_domains(
    compose: dict[str, Any],
    orthanc_config: Mapping[str, Any],
    dockerfiles: Mapping[str, str],
    entrypoint_source: str,
) -> list[str]:
    """Report anything that lets the PACS side write the gateway's evidence (module docstring)."""
    services: dict[str, Any] = compose.get("services") or {}
    orthanc, gateway = _nodes(compose)
    section = orthanc_config.get("XrayGateway")
    if not orthanc or not gateway or not isinstance(section, dict):
        return []  # check_orthanc_plugin reports it
    errors: list[str] = []
    data_dir = str(section.get("DataDir", "")).rstrip("/")
    alerts_dir = str(section.get("AlertsDir") or "").rstrip("/")
    gateway_dockerfile = dockerfiles.get(GATEWAY_DOCKERFILE, "")
    wanted = _dockerfile_env(gateway_dockerfile, "GATEWAY_PLUGIN_ALERTS_DIR")
    if not alerts_dir or _inside(alerts_dir, data_dir):
        errors.append(
            f"{ORTHANC_CONFIG}: XrayGateway.AlertsDir must be set, outside DataDir: the "
            "plugin's alerts go to a volume of their own"
        )
    for name in orthanc:
        errors += _orthanc_node_domains(
            name, services, gateway, data_dir=data_dir, alerts_dir=alerts_dir, wanted=wanted
        )
    for name in orthanc:
        # -- the contract address is pinned, never followed from the gateway's data
        address = _environment(services[name]).get("ORTHANC__XRAY_GATEWAY__CONTRACT_ADDRESS", "")
        if "GATEWAY_CONTRACT_ADDRESS" not in {var for var, _ in interpolations(address)}:
            errors.append(
                f"service {name!r}: ORTHANC__XRAY_GATEWAY__CONTRACT_ADDRESS must come from "
                "${GATEWAY_CONTRACT_ADDRESS}"
            )
    if "contract.json" in entrypoint_source:
        errors.append(
            f"{ORTHANC_ENTRYPOINT} must not read the gateway's deployment record "
            "(chain/contract.json): the contract address is pinned in docker/.env"
        )
    # -- nothing of the gateway's is writable by its group (Orthanc is a member)
    instructions = _instructions(gateway_dockerfile)
    for mask in UMASK.findall(instructions):
        if not int(mask, 8) & 0o020:
            errors.append(f"{GATEWAY_DOCKERFILE}: umask {mask} lets the xray group write")
    for mode, path in INSTALL_DIR.findall(instructions):
        if path.rstrip("/\\") == data_dir and int(mode, 8) & 0o020:
            errors.append(f"{GATEWAY_DOCKERFILE}: {data_dir} is group-writable ({mode})")
    return errors


def _orthanc_node_domains(
    name: str,
    services: Mapping[str, Any],
    gateway: list[str],
    *,
    data_dir: str,
    alerts_dir: str,
    wanted: str | None,
) -> list[str]:
    """One Orthanc node's mounts: the gateway's data read-only if mounted at all, its alerts
    on a writable volume of their own that every gateway node mounts read-only."""
    errors: list[str] = []
    orthanc_mounts = _mount_modes(services[name])
    data_volumes = {_mount_modes(services[node]).get(data_dir, ("", False))[0] for node in gateway}
    data_volumes.discard("")
    for target, (source, read_only) in orthanc_mounts.items():
        if source in data_volumes and not read_only:
            errors.append(
                f"service {name!r} must mount {source!r} read-only ({target}:ro): the plugin "
                "only reads the gateway's index"
            )
    if not alerts_dir or _inside(alerts_dir, data_dir):
        return errors
    if alerts_dir not in orthanc_mounts or orthanc_mounts[alerts_dir][1]:
        errors.append(f"service {name!r} must mount a writable volume at {alerts_dir} (AlertsDir)")
        return errors
    volume = orthanc_mounts[alerts_dir][0]
    if volume in data_volumes:
        errors.append(f"the plugin's alerts volume must not be {volume!r}")
    for node in gateway:
        if wanted is None or _mount_modes(services[node]).get(wanted.rstrip("/")) != (volume, True):
            errors.append(
                f"service {node!r} must mount {volume!r} read-only at its "
                f"GATEWAY_PLUGIN_ALERTS_DIR ({wanted}), to list the plugin's alerts"
            )
    return errors


def dockerfiles_in(directory: Path) -> dict[str, str]:
    """Every ``Dockerfile*`` in ``directory`` (not their .dockerignore files), by name."""
    return {
        path.name: path.read_text(encoding="utf-8")
        for path in sorted(directory.glob("Dockerfile*"))
        if not path.name.endswith(".dockerignore")
    }


def validate(directory: Path = HERE, *, settings_source: Path = SETTINGS_SOURCE) -> list[str]:
    """Run every check on a deployment directory.

    Parameters
    ----------
    directory : Path
        Directory holding compose.yaml, the Dockerfiles, .env.example, .gitignore and
        orthanc/orthanc.json.
    settings_source : Path
        ``gateway/config.py``, whose ``Settings`` fields .env.example must mention.

    Returns
    -------
    list of str
        One message per problem; empty when the deployment passes.
    """
    compose = yaml.safe_load((directory / "compose.yaml").read_text(encoding="utf-8"))
    if not isinstance(compose, dict) or not isinstance(compose.get("services"), dict):
        return ["compose.yaml: no services mapping"]
    dockerfiles = dockerfiles_in(directory)
    active, mentioned = load_env_example(directory / ".env.example")
    gitignore_path = directory / ".gitignore"
    gitignore = gitignore_path.read_text(encoding="utf-8") if gitignore_path.exists() else ""
    orthanc_config = json.loads((directory / ORTHANC_CONFIG).read_text(encoding="utf-8"))
    return [
        *check_images_pinned(compose, dockerfiles),
        *check_variables_documented(compose, dockerfiles, active, mentioned),
        *check_env_example_used(compose, active),
        *check_settings_documented(settings_source.read_text(encoding="utf-8"), mentioned),
        *check_no_inline_secrets(compose),
        *check_env_example(active, gitignore),
        *check_dockerignore(directory, dockerfiles),
        *check_orthanc_plugin(compose, orthanc_config, dockerfiles),
        *check_several_nodes(compose, orthanc_config, active),
        *check_trust_domains(
            compose,
            orthanc_config,
            dockerfiles,
            (directory / ORTHANC_ENTRYPOINT).read_text(encoding="utf-8"),
        ),
    ]


def main(directory: Path = HERE) -> int:
    """Validate ``directory`` (docker/ by default) and report; return the exit status."""
    errors = validate(directory)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        return 1
    print(
        "docker/: images pinned, variables and settings documented, no inline secrets, "
        "Orthanc runs the integrity plugin and cannot write the gateway's evidence"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
