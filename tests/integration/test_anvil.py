"""The anvil launcher keeps the contract and its records across restarts and crashes."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from eth_account import Account

from gateway.ledger import UserType, XrayLedger, connect, deploy
from gateway.ledger.anvil import Anvil
from gateway.procs import free_port


def _record(ledger: XrayLedger, label: str) -> None:
    ledger.record_image(
        record_key=hashlib.sha256(label.encode()).digest(),
        patient_key=hashlib.sha256(b"patient").digest(),
        digest=hashlib.sha256(b"d" + label.encode()).digest(),
        pixel_digest=hashlib.sha256(b"p" + label.encode()).digest(),
        body_part="HEAD",
        modality="CT",
    )


def _start(state_dir: Path) -> Anvil:
    node = Anvil(state_dir=state_dir, port=free_port(), state_interval=1)
    node.start()
    return node


def test_restart_keeps_contract_and_records(tmp_path: Path) -> None:
    admin = Account.create()
    node = _start(tmp_path)
    try:
        node.fund(admin.address)
        address, _ = deploy(connect(node.url), admin)
        ledger = XrayLedger(connect(node.url), address, account=admin)
        ledger.set_permission(admin.address, "gateway", UserType.RECORDER)
        _record(ledger, "one")
        height = ledger.w3.eth.block_number
    finally:
        node.stop()  # clean stop: anvil dumps its state
    assert node.state_path.exists()

    node = _start(tmp_path)  # a new port, the same state file
    try:
        again = XrayLedger(connect(node.url), address, account=admin)
        assert again.w3.eth.block_number >= height
        image = again.image_of(hashlib.sha256(b"one").digest())
        assert image is not None and image.current.modality == "CT"
        assert len(again.events("ImageRecorded")) == 1
        _record(again, "two")  # the nonce continues where it was
        assert again.xrayhash_count(hashlib.sha256(b"patient").digest()) == 2
    finally:
        node.stop()


def test_a_crash_loses_at_most_the_state_interval(tmp_path: Path) -> None:
    admin = Account.create()
    node = _start(tmp_path)
    try:
        node.fund(admin.address)
        address, _ = deploy(connect(node.url), admin)
        ledger = XrayLedger(connect(node.url), address, account=admin)
        ledger.set_permission(admin.address, "gateway", UserType.RECORDER)
        _record(ledger, "before-crash")
        recorded = time.time()
        # wait for the periodic dump that follows the record (interval: 1 s), then crash
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if node.state_path.exists() and node.state_path.stat().st_mtime > recorded + 0.05:
                break
            time.sleep(0.1)
    finally:
        node.kill()  # SIGKILL: no dump on exit
    node = _start(tmp_path)
    try:
        again = XrayLedger(connect(node.url), address)
        assert again.image_of(hashlib.sha256(b"before-crash").digest()) is not None
    finally:
        node.stop()
