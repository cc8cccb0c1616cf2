"""``xray-gateway up``: every part started in order under the data dir, stopped in reverse."""

from __future__ import annotations

from gateway.chain import ensure_contract, recorder_account, start_embedded_chain
from gateway.config import Settings
from gateway.ledger.anvil import Anvil
from gateway.ledger.client import XrayLedger


class Stack:
    """The running gateway: embedded chain (unless ``GATEWAY_CHAIN_URL``) and the contract."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.anvil: Anvil | None = None
        self.ledger: XrayLedger | None = None

    def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.settings.embedded_chain:
                self.anvil = start_embedded_chain(self.settings)
            self.ledger, _ = ensure_contract(self.settings)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.anvil is not None:
            self.anvil.stop()  # SIGTERM: anvil dumps its state before exiting

    def banner(self) -> str:
        assert self.ledger is not None
        s = self.settings
        lines = [
            "xray-gateway is up",
            f"  data dir        {s.data_dir.resolve()}",
            f"  chain (JSON-RPC) {s.effective_chain_url}"
            + ("  [embedded anvil]" if self.anvil else ""),
            f"  xray contract   {self.ledger.address}",
            f"  recorder        {recorder_account(s).address}",
            "Press Ctrl-C to stop.",
        ]
        return "\n".join(lines)
