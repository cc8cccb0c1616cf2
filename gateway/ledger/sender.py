"""One account sending transactions: nonces in order, stuck ones re-sent, receipts checked."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from eth_abi.abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from eth_utils.abi import function_signature_to_4byte_selector
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import Nonce, RPCEndpoint, TxParams, TxReceipt, Wei

from gateway import errors, failpoints
from gateway.ledger.types import Anchor
from gateway.redact import redact_text

T = TypeVar("T")
log = logging.getLogger(__name__)

MIN_FEE_BUMP = 0.10
"""The least raise of both fees (or the gas price) a node accepts to replace a transaction."""
DEFAULT_PRIORITY_FEE = 10**9
"""The tip offered when the node has no ``eth_maxPriorityFeePerGas`` (1 gwei)."""


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
        raise errors.ChainUnavailable(
            f"the chain node does not answer: {redact_text(str(exc))}"
        ) from exc


class _Flight:
    """One call in the air: its nonce, the fields last signed for it, every hash sent."""

    def __init__(self, nonce: int, tx: TxParams, tx_hash: str) -> None:
        self.nonce = nonce
        self.tx = tx
        self.hashes = [tx_hash]


class Sender:
    """Sends transactions from one account, never reusing or skipping a nonce.

    Nonces are handed out under a lock, so concurrent callers get consecutive nonces;
    receipts are awaited outside it, so transactions pipeline.

    A transaction still pending after ``receipt_timeout`` seconds is re-sent with the
    same nonce and fees raised by ``fee_bump`` (at least the 10 % nodes require to
    replace a pooled transaction), at most ``max_resends`` times; whichever of the
    hashes is mined is the result. Before each re-send the node's mined nonce is
    read: if it has moved past ours, one of our hashes has a receipt, or the call was
    not made.

    Nonce gaps are healed on the first send, after any failed send or
    call, and whenever a transaction waits too long: a nonce below one the node holds
    (or one this process is still waiting on) that nobody holds is filled with a
    zero-value transfer to ourselves, and a local next nonce ahead of everything the
    node holds is re-read from the node. A nonce the node holds, or one this process
    still awaits, is never given to another call.
    """

    def __init__(
        self,
        w3: Web3,
        account: LocalAccount,
        decoder: RevertDecoder,
        *,
        receipt_timeout: float = 60.0,
        max_resends: int = 3,
        fee_bump: float = 0.125,
        poll_interval: float = 0.1,
    ) -> None:
        if fee_bump < MIN_FEE_BUMP:
            raise ValueError(
                f"fee_bump must be at least {MIN_FEE_BUMP}: nodes refuse smaller replacements"
            )
        if max_resends < 0 or receipt_timeout <= 0 or poll_interval <= 0:
            raise ValueError("max_resends must be >= 0, receipt_timeout and poll_interval > 0")
        self.w3 = w3
        self.account = account
        self.address = account.address
        self._decoder = decoder
        self.receipt_timeout = receipt_timeout
        self.max_resends = max_resends
        self.fee_bump = fee_bump
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._next_nonce: int | None = None
        self._suspect = True  # heal before the first send: this may be a restart
        self._flights: dict[int, _Flight] = {}
        self._chain_id: int | None = None
        self._txpool = True  # does the node answer txpool_content? (geth, anvil, reth do)

    # -- the call --------------------------------------------------------------------------

    def transact(self, call: Any, *, gas: int | None = None) -> Anchor:
        """Sign and send a contract call, see it mined, and check its receipt's status.

        Raises
        ------
        ContractRevert
            The contract refused the call (found while estimating gas against the pending
            block, or in the receipt of the mined transaction).
        TransactionFailed
            Mined with status 0 for no decodable reason; not mined after every re-send;
            its nonce used by a transaction that is not ours; or refused by the node
            (funds, fees). In the last two cases the call was not made.
        ChainUnavailable
            The node could not be reached. The transaction may still be mined: look the
            effect up before calling again.
        """
        flight = self._typed(lambda: self._send(call, gas))
        failpoints.hit("ledger.after_send")
        try:
            receipt = self._typed(lambda: self._await(flight))
        except BaseException:
            with self._lock:
                self._suspect = True
            raise
        finally:
            with self._lock:
                self._flights.pop(flight.nonce, None)
        tx_hash = _hex(receipt["transactionHash"])
        if receipt["status"] != 1:
            raise self._why_failed(receipt, tx_hash)
        block = self.w3.eth.get_block(receipt["blockNumber"])
        return Anchor(
            tx_hash=tx_hash,
            block_number=receipt["blockNumber"],
            block_time=int(block["timestamp"]),
            gas_used=receipt["gasUsed"],
        )

    def _typed(self, step: Callable[[], T]) -> T:
        """:func:`translate`, and a node refusing a transaction (funds, fees) as TransactionFailed."""
        try:
            return translate(self._decoder, step)
        except Web3RPCError as exc:
            raise errors.TransactionFailed(
                f"the chain node refused the transaction: {exc}"
            ) from exc

    def _send(self, call: Any, gas: int | None) -> _Flight:
        with self._lock:
            if self._chain_id is None:
                self._chain_id = self.w3.eth.chain_id
            if self._suspect or self._next_nonce is None:
                self._heal()
            assert self._next_nonce is not None
            nonce = self._next_nonce
            params: TxParams = {
                "from": self.address,
                "nonce": Nonce(nonce),
                "chainId": self._chain_id,
                **self._fees(),
            }
            try:
                # against the pending block: a record still in the pool counts as written
                params["gas"] = (
                    gas if gas is not None else call.estimate_gas({"from": self.address}, "pending")
                )
                tx: TxParams = call.build_transaction(params)
                tx_hash = self._broadcast(tx)
            except ContractLogicError:
                raise  # the call is refused; the nonces are fine
            except Exception:
                self._suspect = True
                raise
            self._next_nonce = nonce + 1
            flight = _Flight(nonce, tx, tx_hash)
            self._flights[nonce] = flight
            return flight

    def _await(self, flight: _Flight) -> TxReceipt:
        """The receipt of whichever of the flight's hashes is mined, re-sending on time-outs."""
        resends = 0
        while True:
            receipt = self._poll(flight, self.receipt_timeout)
            if receipt is not None:
                return receipt
            with self._lock:
                consumed = self.w3.eth.get_transaction_count(self.address, "latest") > flight.nonce
                if not consumed and resends < self.max_resends:
                    self._heal()  # a gap below us keeps us pending whatever we pay
                    self._resend(flight)
                    resends += 1
                    continue
            if not consumed:
                raise errors.TransactionPending(
                    f"transaction with nonce {flight.nonce} not mined after {resends} "
                    f"re-sends of {self.receipt_timeout:g} s each; it may still be mined "
                    f"(sent as {', '.join(flight.hashes)})",
                    tx_hash=flight.hashes[-1],
                )
            # the nonce is used: if by one of ours, its receipt is there (or soon is)
            receipt = self._poll(flight, self.receipt_timeout)
            if receipt is not None:
                return receipt
            raise errors.TransactionFailed(
                f"nonce {flight.nonce} was used by a transaction that is not one of ours "
                f"({', '.join(flight.hashes)}): the call was not made",
                tx_hash=flight.hashes[-1],
            )

    def _poll(self, flight: _Flight, timeout: float) -> TxReceipt | None:
        deadline = time.monotonic() + timeout
        while True:
            for tx_hash in list(flight.hashes):
                try:
                    return self.w3.eth.get_transaction_receipt(HexStr(tx_hash))
                except TransactionNotFound:
                    pass
            if time.monotonic() >= deadline:
                return None
            time.sleep(self.poll_interval)

    def _resend(self, flight: _Flight) -> None:
        """Re-sign the flight's transaction with the same nonce and higher fees (lock held)."""
        tx: TxParams = {**flight.tx, **self._bumped(flight.tx)}
        try:
            tx_hash = self._broadcast(tx)
        except Web3RPCError as exc:
            reason = str(exc).lower()
            if "nonce too low" in reason or "already known" in reason:
                log.info(
                    "nonce %d: re-send refused (%s); awaiting the mined one", flight.nonce, exc
                )
                return
            if "underpriced" in reason:  # the next bump starts from the refused fees
                log.warning("nonce %d: re-send refused as underpriced; bumping again", flight.nonce)
                flight.tx = tx
                return
            raise
        log.warning(
            "nonce %d still pending after %g s: re-sent with higher fees as %s (was %s)",
            flight.nonce,
            self.receipt_timeout,
            tx_hash,
            flight.hashes[-1],
        )
        flight.tx = tx
        flight.hashes.append(tx_hash)

    # -- nonces ----------------------------------------------------------------------------

    def _heal(self) -> None:
        """Fill nonce gaps that hold transactions up; re-read a next nonce that ran ahead.

        Taken are the nonces the node holds for us (its pending count, and its pool when
        it shows it) and those this process still awaits. Below the highest taken one, a
        free nonce is a gap; above it, a local next nonce that ran ahead (its transactions
        lost, their calls already failed) comes back to the node's.
        """
        if self._chain_id is None:
            self._chain_id = self.w3.eth.chain_id
        latest = self.w3.eth.get_transaction_count(self.address, "latest")
        pending = self.w3.eth.get_transaction_count(self.address, "pending")
        held = self._held_nonces()
        taken = set(range(latest, pending)) | held | {n for n in self._flights if n >= latest}
        top = max([pending, latest, *(n + 1 for n in taken)])
        for nonce in range(latest, top):
            if nonce not in taken:
                self._fill(nonce)
        if self._next_nonce is not None and self._next_nonce != top:
            log.warning("next nonce re-read from the node: %d (was %d)", top, self._next_nonce)
        self._next_nonce = top
        self._suspect = False

    def _held_nonces(self) -> set[int]:
        """The nonces of our transactions in the node's pool, pending or queued behind a gap."""
        if not self._txpool:
            return set()
        reply = self.w3.provider.make_request(RPCEndpoint("txpool_content"), [])
        if "error" in reply or not isinstance(reply.get("result"), dict):
            self._txpool = False  # the pending count is all we know of the pool
            return set()
        held: set[int] = set()
        for section in ("pending", "queued"):
            for address, by_nonce in (reply["result"].get(section) or {}).items():
                if address.lower() == self.address.lower():
                    held.update(int(n) for n in by_nonce)
        return held

    def _fill(self, nonce: int) -> None:
        """Use ``nonce`` up with a zero-value transfer to ourselves: no call, no effect."""
        filler: TxParams = {
            "from": self.address,
            "to": self.address,
            "value": Wei(0),
            "gas": 21_000,
            "nonce": Nonce(nonce),
            "chainId": self._chain_id or self.w3.eth.chain_id,
            **self._fees(),
        }
        try:
            tx_hash = self._broadcast(filler)
        except Web3RPCError as exc:
            reason = str(exc).lower()
            if "nonce too low" in reason or "already known" in reason or "underpriced" in reason:
                return  # something holds the nonce after all
            raise
        log.warning("nonce %d: a gap held later transactions up; filled with %s", nonce, tx_hash)

    # -- fees ------------------------------------------------------------------------------

    def _fees(self) -> TxParams:
        """Current fees: EIP-1559 on a chain with a base fee, else a legacy gas price."""
        base = self.w3.eth.get_block("latest").get("baseFeePerGas")
        if base is None:
            return {"gasPrice": self.w3.eth.gas_price}
        try:
            tip = int(self.w3.eth.max_priority_fee)
        except Web3RPCError:
            tip = DEFAULT_PRIORITY_FEE
        return {"maxFeePerGas": Wei(2 * int(base) + tip), "maxPriorityFeePerGas": Wei(tip)}

    def _bumped(self, tx: TxParams) -> TxParams:
        """Fees for replacing ``tx``: each raised by ``fee_bump``, and never below today's."""
        now = self._fees()
        if "gasPrice" in tx:
            price = max(self._raise(int(tx["gasPrice"])), int(now.get("gasPrice", 0)))
            return {"gasPrice": Wei(price)}
        tip = max(
            self._raise(int(tx["maxPriorityFeePerGas"])), int(now.get("maxPriorityFeePerGas", 0))
        )
        fee = self._raise(int(tx["maxFeePerGas"]))
        if "maxFeePerGas" in now:  # today's base fee part, with the raised tip on top
            fee = max(fee, int(now["maxFeePerGas"]) - int(now["maxPriorityFeePerGas"]) + tip)
        return {"maxFeePerGas": Wei(fee), "maxPriorityFeePerGas": Wei(tip)}

    def _raise(self, value: int) -> int:
        at_least = value + -(-value // 10) + 1  # strictly more than 10 %, in integers
        return max(at_least, math.ceil(value * (1 + self.fee_bump)))

    # -- plumbing --------------------------------------------------------------------------

    def _broadcast(self, tx: TxParams) -> str:
        signed = self.account.sign_transaction(dict(tx))  # type: ignore[arg-type]
        return _hex(self.w3.eth.send_raw_transaction(signed.raw_transaction))

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


def _hex(value: bytes | str) -> str:
    return "0x" + bytes(HexBytes(value)).hex()
