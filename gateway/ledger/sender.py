"""One account sending transactions: nonces handed out in order, receipts checked."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from eth_abi.abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from eth_utils.abi import function_signature_to_4byte_selector
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted
from web3.types import TxParams, TxReceipt

from gateway import errors
from gateway.ledger.types import Anchor

T = TypeVar("T")


class RevertDecoder:
    """Turns revert data into the typed :class:`~gateway.errors.ContractRevert` it names."""

    def __init__(self, abi: list[dict[str, Any]]) -> None:
        self._errors: dict[bytes, tuple[str, list[str]]] = {}
        for item in abi:
            if item["type"] != "error":
                continue
            types = [arg["type"] for arg in item["inputs"]]
            selector = function_signature_to_4byte_selector(f"{item['name']}({','.join(types)})")
            self._errors[bytes(selector)] = (item["name"], types)

    def decode(self, data: str | bytes | None, *, tx_hash: str | None = None) -> errors.LedgerError:
        """The error for ``data``; a plain LedgerError when the data names no known error."""
        raw = (
            bytes.fromhex(data[2:] if data.startswith("0x") else data)
            if isinstance(data, str)
            else data
        )
        if not raw or len(raw) < 4 or raw[:4] not in self._errors:
            shown = "0x" + raw.hex() if raw else "no data"
            return errors.TransactionFailed(f"the contract reverted ({shown})", tx_hash=tx_hash)
        name, types = self._errors[raw[:4]]
        values = tuple(abi_decode(types, raw[4:]))
        cls = errors.REVERTS.get(name)
        if cls is None:
            cls = type(name, (errors.ContractRevert,), {"name": name})
        return cls(values, tx_hash=tx_hash)


def translate(decoder: RevertDecoder, call: Callable[[], T]) -> T:
    """Run a chain call, mapping reverts to typed errors and I/O failures to ChainUnavailable."""
    try:
        return call()
    except ContractLogicError as exc:
        raise decoder.decode(exc.data if isinstance(exc.data, str | bytes) else None) from None
    except (requests.ConnectionError, requests.Timeout, ConnectionError) as exc:
        raise errors.ChainUnavailable(f"the chain node does not answer: {exc}") from exc


class Sender:
    """Sends transactions from one account, never reusing or skipping a nonce.

    Nonces are handed out under a lock, so concurrent callers get consecutive nonces;
    the receipt is awaited outside the lock, so transactions pipeline. After a send
    fails, the next send re-reads the pending nonce from the node, which heals gaps.
    """

    def __init__(
        self,
        w3: Web3,
        account: LocalAccount,
        decoder: RevertDecoder,
        *,
        receipt_timeout: float = 60.0,
    ) -> None:
        self.w3 = w3
        self.account = account
        self.address = account.address
        self._decoder = decoder
        self._receipt_timeout = receipt_timeout
        self._lock = threading.Lock()
        self._next_nonce: int | None = None
        self._chain_id: int | None = None

    def transact(self, call: Any, *, gas: int | None = None) -> Anchor:
        """Sign and send a contract call, wait for its receipt, and check its status.

        Raises
        ------
        ContractRevert
            The contract refused the call (found while estimating gas, or in the receipt).
        TransactionFailed
            The transaction was mined with status 0 for no decodable reason, or not mined.
        ChainUnavailable
            The node could not be reached.
        """
        tx_hash = translate(self._decoder, lambda: self._send(call, gas))
        try:
            receipt: TxReceipt = translate(
                self._decoder,
                lambda: self.w3.eth.wait_for_transaction_receipt(
                    HexStr(tx_hash), timeout=self._receipt_timeout, poll_latency=0.02
                ),
            )
        except TimeExhausted as exc:
            raise errors.TransactionFailed(
                f"transaction {tx_hash} not mined after {self._receipt_timeout:.0f} s",
                tx_hash=tx_hash,
            ) from exc
        if receipt["status"] != 1:
            raise self._why_failed(receipt, tx_hash)
        block = self.w3.eth.get_block(receipt["blockNumber"])
        return Anchor(
            tx_hash=tx_hash,
            block_number=receipt["blockNumber"],
            block_time=int(block["timestamp"]),
            gas_used=receipt["gasUsed"],
        )

    def _send(self, call: Any, gas: int | None) -> str:
        with self._lock:
            if self._chain_id is None:
                self._chain_id = self.w3.eth.chain_id
            if self._next_nonce is None:
                self._next_nonce = self.w3.eth.get_transaction_count(self.address, "pending")
            params: TxParams = {
                "from": self.address,
                "nonce": self._next_nonce,  # type: ignore[typeddict-item]
                "chainId": self._chain_id,
            }
            if gas is not None:
                params["gas"] = gas
            try:
                tx = call.build_transaction(params)  # estimates gas: a revert surfaces here
                signed = self.account.sign_transaction(tx)
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except Exception:
                self._next_nonce = None  # re-read from the node next time
                raise
            self._next_nonce += 1
            return "0x" + bytes(tx_hash).hex()

    def _why_failed(self, receipt: TxReceipt, tx_hash: str) -> errors.LedgerError:
        tx = self.w3.eth.get_transaction(HexStr(tx_hash))
        replay: TxParams = {"from": tx["from"], "to": tx["to"], "data": tx["input"]}
        try:
            self.w3.eth.call(replay, block_identifier=receipt["blockNumber"] - 1)
        except ContractLogicError as exc:
            return self._decoder.decode(
                exc.data if isinstance(exc.data, str | bytes) else None, tx_hash=tx_hash
            )
        return errors.TransactionFailed(
            f"transaction {tx_hash} was mined with status 0", tx_hash=tx_hash
        )
