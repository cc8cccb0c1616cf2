"""Entry point of the xray-gateway Orthanc image: finish the plugin's settings, then Orthanc.

Runs with the image's own ``python3`` before orthancteam's ``/docker-entrypoint.sh``, which
turns ``/etc/orthanc/*.json`` and the ``ORTHANC__*`` variables into Orthanc's configuration
(``ORTHANC__XRAY_GATEWAY__CHAIN_URL`` becomes ``"XrayGateway": {"ChainUrl": …}``).

- New files get umask 0007. Orthanc shares the gateway's data volume through the ``xray``
  group (the plugin reads ``index.sqlite`` and writes ``alerts.sqlite`` there); a file
  either side creates must stay writable by the other, and by no one else.
- ``ORTHANC__XRAY_GATEWAY__*`` variables that compose left empty are dropped: orthancteam
  would write ``""`` into the section, and ``"FromBlock": ""`` is not a number.
- A blank contract address is taken from the deployment record that
  ``xray-gateway contract deploy`` wrote into the data volume (``chain/contract.json``),
  as the gateway itself does. When the address is the recorded one, the deployment block
  becomes ``FromBlock``, so the plugin's ledger mirror does not read the chain from
  genesis at every start.
- A chain URL without a contract address stops here, with the command that fixes it: the
  plugin would refuse that configuration anyway, and Orthanc must never run without it.
- So does an ``ORTHANC__*`` value still holding ``.env.example``'s placeholder (the
  gateway's password in ``RegisteredUsers``): Orthanc itself would accept it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

PREFIX = "ORTHANC__XRAY_GATEWAY__"
CHAIN_URL = PREFIX + "CHAIN_URL"
CONTRACT_ADDRESS = PREFIX + "CONTRACT_ADDRESS"
FROM_BLOCK = PREFIX + "FROM_BLOCK"
DATA_DIR = PREFIX + "DATA_DIR"

CONFIG = Path("/etc/orthanc/xray-gateway.json")
UPSTREAM = "/docker-entrypoint.sh"
UMASK = 0o007
PLACEHOLDER = "change-me"


class StartRefused(Exception):
    """Orthanc must not start with this environment; the message says what to fix."""


def data_dir(environ: Mapping[str, str], config: Mapping[str, Any]) -> Path:
    """The gateway's data dir as the plugin will see it: the variable, else the image's JSON."""
    override = environ.get(DATA_DIR, "").strip()
    if override:
        return Path(override)
    return Path(str(config["XrayGateway"]["DataDir"]))


def load_deployment(directory: Path) -> dict[str, Any] | None:
    """``<data dir>/chain/contract.json``, or None before the contract is deployed."""
    path = directory / "chain" / "contract.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return record if isinstance(record, dict) and record.get("address") else None


def plugin_environment(
    environ: Mapping[str, str], *, deployment: Mapping[str, Any] | None
) -> dict[str, str]:
    """The environment to start orthancteam's entrypoint with.

    Parameters
    ----------
    environ:
        This process's environment.
    deployment:
        The gateway's deployment record (``address``, ``block_number``), if any.

    Returns
    -------
    dict
        ``environ`` without empty ``ORTHANC__XRAY_GATEWAY__*`` values, with the contract
        address and ``FromBlock`` filled in from ``deployment`` where they were blank.

    Raises
    ------
    StartRefused
        A chain URL is set and no contract address is known, or an ``ORTHANC__*`` value
        holds the placeholder.
    """
    placeholders = sorted(
        key for key, value in environ.items()
        if key.startswith("ORTHANC__") and PLACEHOLDER in value.lower()
    )  # fmt: skip
    if placeholders:
        raise StartRefused(
            f"{', '.join(placeholders)} still hold{'s' if len(placeholders) == 1 else ''} "
            f"the placeholder {PLACEHOLDER!r}: set real values in docker/.env"
        )
    env = {
        key: value
        for key, value in environ.items()
        if not (key.startswith(PREFIX) and not value.strip())
    }
    recorded = str(deployment["address"]) if deployment else None
    if CONTRACT_ADDRESS not in env and recorded:
        env[CONTRACT_ADDRESS] = recorded
    same = recorded is not None and env.get(CONTRACT_ADDRESS, "").lower() == recorded.lower()
    if same and FROM_BLOCK not in env and deployment is not None:
        env[FROM_BLOCK] = str(int(deployment.get("block_number", 0)))
    if CHAIN_URL in env and CONTRACT_ADDRESS not in env:
        raise StartRefused(
            "the xray contract is not deployed yet (no GATEWAY_CONTRACT_ADDRESS, no "
            "chain/contract.json in the gateway's data volume). Deploy it once with "
            "`docker compose run --rm --no-deps gateway contract deploy`; this container "
            "restarts until then."
        )
    return env


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Set the umask and the plugin's environment, then exec orthancteam's entrypoint."""
    args = list(sys.argv[1:] if argv is None else argv)
    os.umask(UMASK)
    config = json.loads(CONFIG.read_text(encoding="utf-8"))
    deployment = load_deployment(data_dir(os.environ, config))
    try:
        env = plugin_environment(os.environ, deployment=deployment)
    except StartRefused as exc:
        print(f"xray-gateway orthanc: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    if CONTRACT_ADDRESS in env:
        # the chain URL is not printed: it may carry credentials
        print(
            f"xray-gateway orthanc: the ledger mirror follows {env[CONTRACT_ADDRESS]}"
            f" from block {env.get(FROM_BLOCK, '0')}",
            file=sys.stderr,
            flush=True,
        )
    os.execve(UPSTREAM, [UPSTREAM, *args], env)


if __name__ == "__main__":
    main()
