"""The embedded chain: an anvil node whose state persists in the data dir."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from gateway.errors import ConfigError
from gateway.procs import PROJECT_ROOT, Child, port_in_use


def anvil_binary() -> str:
    """The project-local anvil from npm, else one on PATH."""
    local = PROJECT_ROOT / "node_modules" / ".bin" / "anvil"
    if local.exists():
        return str(local)
    found = shutil.which("anvil")
    if found is None:
        raise ConfigError(
            "anvil is not installed: run `make deps` (npm @foundry-rs/anvil-linux-amd64)"
        )
    return found


def rpc(
    url: str, method: str, params: list[object] | None = None, *, timeout: float = 5.0
) -> object:
    """One JSON-RPC call over plain HTTP (for probes and anvil_* cheat codes)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


class Anvil(Child):
    """anvil with ``--state``: loaded on start, dumped every ``state_interval`` s and on stop.

    A clean stop (SIGTERM) loses nothing, and neither does a crash of the gateway: anvil
    gets SIGTERM when its parent dies (:mod:`gateway.procs`). Only anvil itself dying
    without a dump (SIGKILL, power cut) loses up to ``state_interval`` seconds of blocks;
    the pipeline re-anchors what the chain lost when it starts (``Pipeline.start``). No dev accounts are created: the gateway's own accounts are
    funded with ``anvil_setBalance`` so that no well-known private key ever holds a role.
    """

    def __init__(
        self,
        *,
        state_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        state_interval: int = 2,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.state_path = state_dir / "anvil-state.json"
        argv = [
            anvil_binary(),
            "--host", host,
            "--port", str(port),
            "--state", str(self.state_path),
            "--state-interval", str(state_interval),
            "--preserve-historical-states",
            "--accounts", "0",
            *extra_args,  # e.g. ``--hardfork berlin`` for a chain without a base fee
        ]  # fmt: skip
        super().__init__(
            "anvil", argv, log_path=state_dir / "anvil.log", ready=self._probe, cwd=state_dir
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, *, timeout: float = 30.0) -> None:
        self.stop_stale()  # an anvil left by a crashed gateway: let it dump its state, then start
        if port_in_use(self.host, self.port):
            raise ConfigError(f"port {self.port} is taken: is another anvil running there?")
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        super().start(timeout=timeout)

    def _probe(self) -> bool:
        return rpc(self.url, "eth_chainId", timeout=1.0) is not None

    def fund(self, address: str, wei: int = 10**24) -> None:
        """Give ``address`` a balance (dev chain only)."""
        rpc(self.url, "anvil_setBalance", [address, hex(wei)])
