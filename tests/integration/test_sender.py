"""The Sender on a real anvil: stuck transactions re-sent, nonce gaps healed, reverts typed.

Each test that stops automine gets its own anvil (function-scoped), so the session's
shared node is never left without mining. The "crashes" are real: a child process
with ``GATEWAY_FAILPOINT=ledger.after_send`` SIGKILLs itself after sending.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import TransactionNotFound

from gateway import errors
from gateway.errors import is_transient
from gateway.ingest.anchor import SingleAnchorer
from gateway.ingest.stages import AnchorItem
from gateway.ledger import Anchor, UserType, XrayLedger, connect, deploy
from gateway.ledger.anvil import Anvil, rpc
from gateway.ledger.sender import RevertDecoder, Sender
from gateway.procs import PROJECT_ROOT, free_port
from tests.conftest import Cast

pytestmark = pytest.mark.integration

WAIT = 120.0  # generous bound on anything the tests wait for; never a timing assertion


def item(label: str) -> AnchorItem:
    def h(text: str) -> bytes:
        return hashlib.sha256(f"{text}:{label}".encode()).digest()

    return AnchorItem(
        record_key=h("record"),
        patient_key=h("patient"),
        digest=h("digest"),
        pixel_digest=h("pixels"),
        body_part="CHEST",
        modality="DX",
    )


def record(ledger: XrayLedger, label: str, *, gas: int | None = None) -> Anchor:
    fields = asdict(item(label))
    if gas is None:
        return ledger.record_image(**fields)
    fn = ledger.contract.functions.recordImage(*fields.values())
    assert ledger.sender is not None
    return ledger.sender.transact(fn, gas=gas)


def wait_for(what: str, check: Callable[[], Any], *, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout:.0f} s")
        time.sleep(0.05)


@dataclass
class Chain:
    """A private anvil with the contract deployed and one recorder account."""

    node: Anvil
    w3: Web3
    address: str
    recorder: LocalAccount

    def ledger(self, **options: Any) -> XrayLedger:
        return XrayLedger(self.w3, self.address, account=self.recorder, **options)

    def rpc(self, method: str, *params: object) -> Any:
        return rpc(self.node.url, method, list(params))

    def automine(self, on: bool) -> None:
        self.rpc("evm_setAutomine", on)

    def mine(self) -> None:
        self.rpc("evm_mine")

    def nonce(self, tag: str = "latest") -> int:
        return int(self.w3.eth.get_transaction_count(self.recorder.address, tag))  # type: ignore[arg-type]

    def pool(self) -> dict[int, dict[str, Any]]:
        """The recorder's transactions the node holds, pending or queued, by nonce."""
        content = self.rpc("txpool_content")
        held: dict[int, dict[str, Any]] = {}
        for section in ("pending", "queued"):
            for address, by_nonce in content[section].items():
                if address.lower() == self.recorder.address.lower():
                    held.update({int(n): tx for n, tx in by_nonce.items()})
        return held

    def recorded(self, label: str) -> int:
        """How many ImageRecorded events the ledger holds for ``label``'s key."""
        ledger = XrayLedger(self.w3, self.address)
        return len(ledger.events("ImageRecorded", filters={"recordKey": item(label).record_key}))

    def tx(self, tx_hash: str) -> Any:
        return self.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    node = Anvil(state_dir=tmp_path / "anvil", port=free_port())
    node.start()
    try:
        admin, recorder = Account.create(), Account.create()
        node.fund(admin.address)
        node.fund(recorder.address)
        w3 = connect(node.url)
        address, _ = deploy(w3, admin)
        XrayLedger(w3, address, account=admin).set_permission(
            recorder.address, "xray-gateway", UserType.RECORDER
        )
        yield Chain(node=node, w3=w3, address=address, recorder=recorder)
    finally:
        node.stop()


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


def crash_after_send(chain: Chain, labels: list[str]) -> None:
    """Anchor ``labels`` concurrently in a child that SIGKILLs itself after the last send."""
    script = """
import sys, threading
from eth_account import Account
from gateway.ingest.anchor import SingleAnchorer
from gateway.ledger import XrayLedger, connect
from tests.integration.test_sender import item
url, address, key, *labels = sys.argv[1:]
anchorer = SingleAnchorer(XrayLedger(connect(url), address, account=Account.from_key(key)))
threads = [threading.Thread(target=anchorer.anchor, args=(item(l),)) for l in labels]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""
    env = {**os.environ, "GATEWAY_FAILPOINT": f"ledger.after_send:{len(labels)}"}
    argv = [sys.executable, "-c", script, chain.node.url, chain.address]
    argv += [chain.recorder.key.hex(), *labels]
    done = subprocess.run(argv, env=env, cwd=PROJECT_ROOT, capture_output=True, timeout=WAIT)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]


# -- re-sending a pending transaction -------------------------------------------------------


def test_a_pending_transaction_is_resent_with_the_same_nonce_and_higher_fees(
    chain: Chain, background: ThreadPoolExecutor
) -> None:
    ledger = chain.ledger(receipt_timeout=1.0, max_resends=20)
    chain.automine(False)
    nonce = chain.nonce()
    sent: Future[Anchor] = background.submit(record, ledger, "stuck")
    first = wait_for("the first send", lambda: chain.pool().get(nonce))
    # nobody mines: past its receipt timeout the Sender replaces it in the node's pool
    second = wait_for(
        "a replacement",
        lambda: (tx := chain.pool().get(nonce)) and tx["hash"] != first["hash"] and tx,
    )
    for fee in ("maxFeePerGas", "maxPriorityFeePerGas"):
        assert int(second[fee], 16) * 10 >= int(first[fee], 16) * 11  # the 10 % nodes require
    assert int(second["nonce"], 16) == int(first["nonce"], 16) == nonce
    chain.mine()
    anchor = sent.result(timeout=WAIT)

    mined = chain.tx(anchor.tx_hash)
    assert anchor.tx_hash != first["hash"] and mined["nonce"] == nonce
    assert mined["maxFeePerGas"] > int(first["maxFeePerGas"], 16)
    with pytest.raises(TransactionNotFound):
        chain.w3.eth.get_transaction_receipt(first["hash"])
    assert chain.nonce() == nonce + 1  # exactly one transaction of that nonce was mined
    assert chain.recorded("stuck") == 1
    chain.automine(True)
    record(ledger, "after")  # the next nonce follows on
    assert chain.nonce() == nonce + 2 and chain.recorded("after") == 1


def test_whichever_sent_hash_is_mined_is_the_result(
    chain: Chain, background: ThreadPoolExecutor
) -> None:
    """The original, not the replacement, is mined (another node's pool had it)."""
    ledger = chain.ledger(receipt_timeout=3.0, max_resends=20)
    chain.automine(False)
    nonce = chain.nonce()
    sent: Future[Anchor] = background.submit(record, ledger, "original")
    first = wait_for("the first send", lambda: chain.pool().get(nonce))
    raw_first = chain.rpc("eth_getRawTransactionByHash", first["hash"])
    chain.rpc("anvil_dropTransaction", first["hash"])
    second = wait_for("a re-send", lambda: chain.pool().get(nonce))
    assert second["hash"] != first["hash"]
    chain.rpc("anvil_dropTransaction", second["hash"])
    assert chain.rpc("eth_sendRawTransaction", raw_first) == first["hash"]
    chain.mine()
    anchor = sent.result(timeout=WAIT)
    assert anchor.tx_hash == first["hash"]  # the one that was mined, not the last one sent
    assert chain.nonce() == nonce + 1 and chain.recorded("original") == 1


def test_on_a_chain_without_base_fee_the_legacy_gas_price_is_raised(
    tmp_path: Path, background: ThreadPoolExecutor
) -> None:
    node = Anvil(state_dir=tmp_path, port=free_port(), extra_args=["--hardfork", "berlin"])
    node.start()
    try:
        account = Account.create()
        node.fund(account.address)
        w3 = connect(node.url)
        assert "baseFeePerGas" not in w3.eth.get_block("latest")
        # the xray contract needs cancun; an empty contract is a call like any other
        factory = w3.eth.contract(abi=[], bytecode="0x00")
        sender = Sender(w3, account, RevertDecoder([]), receipt_timeout=1.0, max_resends=20)
        rpc(node.url, "evm_setAutomine", [False])
        sent: Future[Anchor] = background.submit(sender.transact, factory.constructor())

        def pooled() -> dict[str, Any] | None:
            by_nonce = rpc(node.url, "txpool_content")["pending"]  # type: ignore[index]
            return next(iter(by_nonce.get(account.address.lower(), {}).values()), None)

        first = wait_for("the first send", pooled)
        second = wait_for(
            "a replacement", lambda: (tx := pooled()) and tx["hash"] != first["hash"] and tx
        )
        assert "maxFeePerGas" not in second and int(second["type"], 16) in (0, 1)
        assert int(second["gasPrice"], 16) * 10 >= int(first["gasPrice"], 16) * 11
        rpc(node.url, "evm_mine")
        anchor = sent.result(timeout=WAIT)
        assert anchor.tx_hash != first["hash"]
        assert w3.eth.get_transaction_count(account.address) == 1  # one of them mined
    finally:
        node.stop()


def test_a_transaction_still_pending_after_every_resend_is_a_typed_failure(chain: Chain) -> None:
    ledger = chain.ledger(receipt_timeout=0.5, max_resends=2)
    chain.automine(False)
    nonce = chain.nonce()
    with pytest.raises(errors.TransactionPending, match="not mined after 2 re-sends") as caught:
        record(ledger, "never-mined")
    assert caught.value.tx_hash == chain.pool()[nonce]["hash"]  # the last one sent is pooled
    chain.mine()  # it may still be mined later: the caller looks the record up before retrying
    assert chain.recorded("never-mined") == 1 and chain.nonce() == nonce + 1


def test_a_fee_bump_nodes_would_refuse_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match=r"at least 0\.1"):
        Sender(Web3(), Account.create(), RevertDecoder([]), fee_bump=0.05)


# -- reverts --------------------------------------------------------------------------------


def test_a_revert_in_a_mined_receipt_raises_the_typed_error(xray: XrayLedger, cast: Cast) -> None:
    ledger = xray.as_account(cast.recorder)
    record(ledger, "twice")
    height = ledger.w3.eth.block_number
    # an explicit gas limit skips the estimate that would refuse it: the revert is mined
    with pytest.raises(errors.XrayRecordExists) as caught:
        record(ledger, "twice", gas=500_000)
    assert caught.value.tx_hash is not None
    receipt = ledger.w3.eth.get_transaction_receipt(caught.value.tx_hash)  # type: ignore[arg-type]
    assert receipt["status"] == 0 and receipt["blockNumber"] > height
    events = ledger.events("ImageRecorded", filters={"recordKey": item("twice").record_key})
    assert len(events) == 1


def test_a_transaction_the_node_refuses_is_a_typed_failure(xray: XrayLedger) -> None:
    broke = Account.create()  # a recorder with no funds for gas
    xray.set_permission(broke.address, "unfunded", UserType.RECORDER)
    with pytest.raises(errors.TransactionFailed, match="refused"):
        record(xray.as_account(broke), "unpaid")
    assert xray.image_of(item("unpaid").record_key) is None


def test_a_revert_behind_a_record_in_the_same_block_is_not_a_success(
    chain: Chain, background: ThreadPoolExecutor
) -> None:
    ledger = chain.ledger()
    chain.automine(False)
    nonce = chain.nonce()
    first: Future[Anchor] = background.submit(record, ledger, "same-block", gas=500_000)
    wait_for("the first send", lambda: nonce in chain.pool())
    second: Future[Anchor] = background.submit(record, ledger, "same-block", gas=500_000)
    wait_for("the second send", lambda: nonce + 1 in chain.pool())
    chain.mine()
    first.result(timeout=WAIT)
    # status 0; the replay at the parent block cannot see the first record, so no name
    with pytest.raises(errors.TransactionFailed, match="mined with status 0") as caught:
        second.result(timeout=WAIT)
    tx_hash = caught.value.tx_hash
    assert tx_hash is not None
    assert chain.w3.eth.get_transaction_receipt(tx_hash)["status"] == 0  # type: ignore[arg-type]
    assert chain.recorded("same-block") == 1


# -- nonce gaps -----------------------------------------------------------------------------


def test_a_transaction_the_node_dropped_is_sent_again_and_unblocks_the_next(
    chain: Chain, background: ThreadPoolExecutor
) -> None:
    ledger = chain.ledger(receipt_timeout=1.0, max_resends=20)
    chain.automine(False)
    nonce = chain.nonce()
    a: Future[Anchor] = background.submit(record, ledger, "dropped")
    first = wait_for("the first send", lambda: chain.pool().get(nonce))
    chain.rpc("anvil_dropTransaction", first["hash"])
    assert nonce not in chain.pool()
    chain.automine(True)
    # the local next nonce is ahead of the node's: this one is queued behind the gap
    b: Future[Anchor] = background.submit(record, ledger, "behind-the-gap")
    anchor_a, anchor_b = a.result(timeout=WAIT), b.result(timeout=WAIT)
    assert chain.tx(anchor_a.tx_hash)["nonce"] == nonce and anchor_a.tx_hash != first["hash"]
    assert chain.tx(anchor_b.tx_hash)["nonce"] == nonce + 1
    assert chain.recorded("dropped") == 1 and chain.recorded("behind-the-gap") == 1
    assert chain.nonce() == nonce + 2


def test_a_next_nonce_ahead_of_the_node_is_re_read(chain: Chain) -> None:
    """A call gave up, then the node lost its transaction: the nonce is re-read, not skipped."""
    ledger = chain.ledger(receipt_timeout=0.5, max_resends=0)
    chain.automine(False)
    nonce = chain.nonce()
    with pytest.raises(errors.TransactionFailed) as caught:
        record(ledger, "given-up")
    chain.rpc("anvil_dropTransaction", caught.value.tx_hash)
    chain.automine(True)
    anchor = record(ledger, "next")
    assert chain.tx(anchor.tx_hash)["nonce"] == nonce  # not nonce + 1, stuck behind a gap
    assert chain.recorded("next") == 1 and chain.recorded("given-up") == 0
    assert chain.nonce() == nonce + 1 and chain.pool() == {}


def test_a_gap_left_by_a_crashed_gateway_is_filled_and_the_next_records_land(
    chain: Chain,
) -> None:
    chain.automine(False)
    nonce = chain.nonce()
    crash_after_send(chain, ["lost", "queued"])  # two anchors sent, receipts never seen
    held = chain.pool()
    assert sorted(held) == [nonce, nonce + 1]
    # which anchor got which nonce is the child's threads' race: the first one is "lost"
    first, second = held[nonce], held[nonce + 1]
    lost_label, queued_label = ("lost", "queued") if _carries(first, "lost") else ("queued", "lost")
    lost, queued = first, second
    raw_queued = chain.rpc("eth_getRawTransactionByHash", queued["hash"])
    chain.rpc("anvil_dropTransaction", lost["hash"])  # the node loses the first (and so both)
    chain.rpc("eth_sendRawTransaction", raw_queued)  # the second comes back, stuck behind a gap
    chain.mine()
    assert chain.nonce() == nonce and sorted(chain.pool()) == [nonce + 1]

    chain.automine(True)
    anchorer = SingleAnchorer(chain.ledger(receipt_timeout=5.0))  # the restarted gateway
    anchorer.anchor(item("new"))
    filler = chain.tx(wait_for("the gap filled", lambda: _mined_at(chain, nonce)))
    assert (
        filler["to"] == chain.recorder.address and filler["value"] == 0 and filler["input"] == b""
    )
    assert _mined_at(chain, nonce + 1) == queued["hash"]  # released, not replaced
    assert chain.recorded(queued_label) == 1 and chain.recorded("new") == 1
    # the lost one's row is still at the anchor stage: anchoring it again records it once
    assert chain.recorded(lost_label) == 0
    anchorer.anchor(item(lost_label))
    anchorer.anchor(item(queued_label))  # already on the ledger: found, not sent again
    assert chain.recorded("lost") == 1 and chain.recorded("queued") == 1
    assert chain.nonce() == nonce + 4  # filler, queued, new, lost: no nonce skipped or reused


def _carries(tx: dict[str, Any], label: str) -> bool:
    """Whether a pooled transaction is the record of ``label`` (its key is in the call data)."""
    return item(label).record_key.hex() in str(tx["input"])


def _mined_at(chain: Chain, nonce: int) -> str | None:
    """The hash of the recorder's transaction mined with ``nonce``, if any."""
    for number in range(chain.w3.eth.block_number + 1):
        for tx in chain.w3.eth.get_block(number, full_transactions=True)["transactions"]:
            assert not isinstance(tx, bytes)
            if tx["from"] == chain.recorder.address and tx["nonce"] == nonce:
                return "0x" + bytes(tx["hash"]).hex()
    return None


# -- a crash between send and receipt -------------------------------------------------------


def test_a_crash_between_send_and_receipt_records_once(chain: Chain) -> None:
    nonce = chain.nonce()
    crash_after_send(chain, ["crash"])
    assert chain.nonce() == nonce + 1  # automine: it was mined; the child never saw it
    result = SingleAnchorer(chain.ledger()).anchor(item("crash"))
    assert chain.nonce() == nonce + 1  # the re-run found the record and sent nothing
    assert _mined_at(chain, nonce) == result.tx_hash
    assert chain.recorded("crash") == 1


def test_a_crash_while_the_transaction_is_still_pending_records_once(chain: Chain) -> None:
    chain.automine(False)
    nonce = chain.nonce()
    crash_after_send(chain, ["pending"])
    assert nonce in chain.pool()
    anchorer = SingleAnchorer(chain.ledger(receipt_timeout=2.0, max_resends=1))
    # the record is not on the chain yet, but in the pending block: the estimate refuses,
    # and the anchorer says "pending" (retried as transient), never a permanent failure
    with pytest.raises(errors.TransactionPending) as caught:
        anchorer.anchor(item("pending"))
    assert isinstance(caught.value.__cause__, errors.XrayRecordExists)
    assert is_transient(caught.value)
    assert chain.nonce("pending") == nonce + 1 and sorted(chain.pool()) == [nonce]
    chain.mine()
    result = anchorer.anchor(item("pending"))  # the pipeline's retry finds it
    assert _mined_at(chain, nonce) == result.tx_hash
    assert chain.recorded("pending") == 1 and chain.nonce() == nonce + 1
