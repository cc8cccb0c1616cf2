"""Entry point of the xray-gateway Orthanc image: check the plugin's settings, then Orthanc.

Runs with the image's own ``python3`` before orthancteam's ``/docker-entrypoint.sh``, which
turns ``/etc/orthanc/*.json`` and the ``ORTHANC__*`` variables into Orthanc's configuration
(``ORTHANC__XRAY_GATEWAY__CHAIN_URL`` becomes ``"XrayGateway": {"ChainUrl": …}``).

- New files get umask 0027. Orthanc shares nothing writable with the gateway: it reads the
  gateway's data volume (mounted read-only) through the ``xray`` group, and writes its
  alerts to a volume of its own, which the gateway reads through the same group.
- ``ORTHANC__XRAY_GATEWAY__*`` variables that compose left empty are dropped: orthancteam
  would write ``""`` into the section, and ``"FromBlock": ""`` is not a number.
- The contract address is pinned: with a chain URL, ``GATEWAY_CONTRACT_ADDRESS`` (as
  ``ORTHANC__XRAY_GATEWAY__CONTRACT_ADDRESS``) must hold an address, or Orthanc does not
  start. It is never taken from the gateway's data volume: whoever could write a file
  there could point the ledger check at a contract of their own.
- So does an ``ORTHANC__*`` value still holding ``.env.example``'s placeholder (the
  gateway's password in ``RegisteredUsers``): Orthanc itself would accept it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

PREFIX = "ORTHANC__XRAY_GATEWAY__"
CHAIN_URL = PREFIX + "CHAIN_URL"
CONTRACT_ADDRESS = PREFIX + "CONTRACT_ADDRESS"
FROM_BLOCK = PREFIX + "FROM_BLOCK"

UPSTREAM = "/docker-entrypoint.sh"
UMASK = 0o027
PLACEHOLDER = "change-me"
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


class StartRefused(Exception):
    """Orthanc must not start with this environment; the message says what to fix."""


def plugin_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment to start orthancteam's entrypoint with.

    Parameters
    ----------
    environ:
        This process's environment.

    Returns
    -------
    dict
        ``environ`` without empty ``ORTHANC__XRAY_GATEWAY__*`` values.

    Raises
    ------
    StartRefused
        A chain URL is set without a contract address (or with something that is not
        one), or an ``ORTHANC__*`` value holds the placeholder.
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
        key: value.strip() if key.startswith(PREFIX) else value
        for key, value in environ.items()
        if not (key.startswith(PREFIX) and not value.strip())
    }
    if CHAIN_URL in env and CONTRACT_ADDRESS not in env:
        raise StartRefused(
            "GATEWAY_CONTRACT_ADDRESS is blank in docker/.env. Deploy the xray contract once "
            "with `docker compose run --rm --no-deps gateway contract deploy`, set "
            "GATEWAY_CONTRACT_ADDRESS (and CONTRACT_DEPLOY_BLOCK) to what it printed, then "
            "`docker compose up -d`; this container restarts until then."
        )
    if CONTRACT_ADDRESS in env and not ADDRESS.fullmatch(env[CONTRACT_ADDRESS]):
        raise StartRefused(
            f"GATEWAY_CONTRACT_ADDRESS {env[CONTRACT_ADDRESS]!r} is not an address "
            "(0x and 40 hex digits)"
        )
    return env


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Set the umask and check the plugin's environment, then exec orthancteam's entrypoint."""
    args = list(sys.argv[1:] if argv is None else argv)
    os.umask(UMASK)
    try:
        env = plugin_environment(os.environ)
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
