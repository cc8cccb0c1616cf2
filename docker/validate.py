"""Static checks of the compose deployment in docker/ (no Docker engine needed).

Checks:

- every image is pinned: it has a tag (or digest) and the tag is not ``latest``,
  in compose.yaml and in the Dockerfile's ``FROM`` lines;
- every variable the deployment reads is documented in .env.example: each
  ``${VAR}`` compose interpolates without a default, each docker secret taken
  from the environment and each ``GATEWAY_*`` variable (compose or Dockerfile);
- a ``GATEWAY_*`` variable set in compose takes its value from the ``.env``
  variable of the same name, so .env is the one place to change it;
- no secret is written into compose.yaml: secret-looking settings hold only
  ``${VAR}`` references, and URLs carry no literal password;
- .env.example holds placeholders, not secrets, and .env is git-ignored.

Run ``python docker/validate.py``; it exits 1 and lists the problems if any.
Needs PyYAML.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent

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


def check_images_pinned(compose: dict[str, Any], dockerfile: str) -> list[str]:
    """Report images without a tag or digest, or tagged ``latest``."""
    errors: list[str] = []
    images = [
        (f"service {name!r}", service["image"])
        for name, service in (compose.get("services") or {}).items()
        if service.get("image")
    ]
    images += [
        ("Dockerfile FROM", line.split()[1])
        for line in dockerfile.splitlines()
        if line.strip().upper().startswith("FROM ")
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
    dockerfile: str,
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
    for name in sorted(set(GATEWAY_NAME.findall(dockerfile)) - mentioned):
        errors.append(f"Dockerfile sets {name}, which .env.example does not list")
    return errors


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
    for name, spec in (compose.get("secrets") or {}).items():
        if spec and "content" in spec:
            errors.append(f"secret {name!r} has inline content; use environment: or file:")
    return errors


def check_env_example(active: dict[str, str], gitignore: str) -> list[str]:
    """Report real-looking secrets in .env.example, or .env not git-ignored."""
    errors: list[str] = []
    for name, value in active.items():
        if SECRET_NAME.search(name) and PLACEHOLDER not in value:
            errors.append(f".env.example: {name} must hold the placeholder {PLACEHOLDER!r}")
        for match in URL_PASSWORD.finditer(value):
            if PLACEHOLDER not in match[1]:
                errors.append(
                    f".env.example: {name} carries a password that is not {PLACEHOLDER!r}"
                )
    if ".env" not in {line.strip() for line in gitignore.splitlines()}:
        errors.append("docker/.gitignore must list .env")
    return errors


def validate(directory: Path = HERE) -> list[str]:
    """Run every check on a deployment directory.

    Parameters
    ----------
    directory : Path
        Directory holding compose.yaml, Dockerfile, .env.example and .gitignore.

    Returns
    -------
    list of str
        One message per problem; empty when the deployment passes.
    """
    compose = yaml.safe_load((directory / "compose.yaml").read_text(encoding="utf-8"))
    if not isinstance(compose, dict) or not isinstance(compose.get("services"), dict):
        return ["compose.yaml: no services mapping"]
    dockerfile = (directory / "Dockerfile").read_text(encoding="utf-8")
    active, mentioned = load_env_example(directory / ".env.example")
    gitignore_path = directory / ".gitignore"
    gitignore = gitignore_path.read_text(encoding="utf-8") if gitignore_path.exists() else ""
    return [
        *check_images_pinned(compose, dockerfile),
        *check_variables_documented(compose, dockerfile, active, mentioned),
        *check_no_inline_secrets(compose),
        *check_env_example(active, gitignore),
    ]


def main(directory: Path = HERE) -> int:
    """Validate ``directory`` (docker/ by default) and report; return the exit status."""
    errors = validate(directory)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        return 1
    print("docker/compose.yaml: images pinned, variables documented, no inline secrets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
