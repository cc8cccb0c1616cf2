"""The gateway and its contract: deployed once, the admin key out of `up`, code and address
pinned, and every ledger read in log windows a Besu node answers."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account.signers.local import LocalAccount

from gateway.ledger import XrayLedger, connect, deploy
from gateway.ledger.accounts import load_or_create_account
from gateway.ledger.anvil import Anvil, rpc
from gateway.procs import free_port
from tests.integration.gateway_proc import EXE, Up, gateway_env, run
from tests.integration.plugin_helpers import edit_patient_name, make_study
from tests.integration.rpc_relay import LogRangeRelay

pytestmark = pytest.mark.integration

LOG_RANGE = 100  # the relay's limit and the gateway's windows: small, as anvil mines slowly

# Init code that deploys ``RUNTIME``: code that answers every call with 32 bytes of 1.
# Asked ``hasRole``, it says yes: only the comparison with the artifact can tell.
RUNTIME = bytes.fromhex("600160005260206000f3")
INIT = bytes.fromhex(f"60{len(RUNTIME):02x}80600b6000396000f3") + RUNTIME


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Anvil]:
    """An external chain of this test's own (it mines blocks other tests need not see)."""
    node = Anvil(state_dir=tmp_path / "chain", port=free_port())
    node.start()
    yield node
    node.stop()


def _external(data_dir: Path, chain_url: str, anvil: Anvil, **extra: str) -> dict[str, str]:
    """A gateway on an external chain whose operator funded its accounts."""
    for name in ("admin.key", "recorder.key"):
        anvil.fund(load_or_create_account(data_dir / "keys" / name).address)
    return gateway_env(data_dir, GATEWAY_CHAIN_URL=chain_url, **extra)


def _refused(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`up` run to completion: it must refuse to start, well before the deadline."""
    try:
        return subprocess.run([EXE, "up"], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"up started instead of refusing: {exc.stderr!r}") from None


def _deploy_raw(url: str, sender: LocalAccount, init: bytes) -> str:
    """Deploy ``init`` from ``sender``; returns the new contract's address."""
    w3 = connect(url)
    signed = sender.sign_transaction(
        {
            "data": init,
            "gas": 200_000,
            "gasPrice": w3.eth.gas_price * 2,
            "nonce": w3.eth.get_transaction_count(sender.address),
            "chainId": w3.eth.chain_id,
        }
    )
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signed.raw_transaction)
    )
    assert receipt["status"] == 1 and receipt["contractAddress"]
    return str(receipt["contractAddress"])


# -- the admin key stays out of `up` ------------------------------------------------------


def test_later_starts_never_read_the_admin_key(tmp_path: Path) -> None:
    env = gateway_env(tmp_path / "var")
    keys = tmp_path / "var" / "keys"
    up = Up(env)  # the first start on an embedded chain runs the deploy step
    try:
        address, recorder = up.value("xray contract"), up.value("recorder")
    finally:
        assert up.stop() == 0
    aside = tmp_path / "admin.key"
    shutil.move(keys / "admin.key", aside)  # the operator keeps it elsewhere now

    up = Up(env)
    try:
        assert up.value("xray contract") == address
        (row,) = _send(up, make_study(tmp_path, count=1).files)
        assert row["stage"] == "committed" and row["tx_hash"]
        info = json.loads(run(env, "contract", "info", "--account", recorder).stdout)
        assert info["accounts"][recorder]["roles"] == ["recorder"]
        assert info["code_matches_artifact"] is True
    finally:
        assert up.stop() == 0
    assert not (keys / "admin.key").exists()  # never read, never made anew
    # `contract …` commands are where the admin key is used: without it they say so
    refused = run(env, "contract", "grant", recorder, "--role", "doctor", "--name", "x")
    assert refused.returncode == 1 and "admin.key" in refused.stderr


def test_up_on_an_external_chain_refuses_a_recorder_without_its_role(
    tmp_path: Path, chain: Anvil
) -> None:
    env = _external(tmp_path / "var", chain.url, chain)
    deployed = run(env, "contract", "deploy")
    assert deployed.returncode == 0, deployed.stderr
    recorder = json.loads(deployed.stdout)["recorder"]
    assert json.loads(deployed.stdout)["recorder_granted"] is True
    revoked = run(env, "contract", "revoke", recorder, "--role", "recorder")
    assert revoked.returncode == 0, revoked.stderr

    result = _refused(env)
    assert result.returncode == 1
    assert f"the recorder {recorder} lacks the Recorder role" in result.stderr
    assert f"xray-gateway contract grant {recorder} --role recorder" in result.stderr
    # a second deployment would orphan the first one's records
    again = run(env, "contract", "deploy")
    assert again.returncode == 1 and "already pins" in again.stderr


def test_up_refuses_code_that_is_not_the_artifact(tmp_path: Path, chain: Anvil) -> None:
    env = _external(tmp_path / "var", chain.url, chain)
    impostor = _deploy_raw(chain.url, load_or_create_account(tmp_path / "var/keys/admin.key"), INIT)
    assert XrayLedger.at(chain.url, impostor).has_role("recorder", impostor)  # it says yes
    env["GATEWAY_CONTRACT_ADDRESS"] = impostor

    result = _refused(env)
    assert result.returncode == 1
    assert f"the code at {impostor} is not the xray contract of Xray.json" in result.stderr
    info = json.loads(run(env, "contract", "info").stdout)
    assert info["code_matches_artifact"] is False


def test_up_refuses_an_address_other_than_the_pinned_one(tmp_path: Path, chain: Anvil) -> None:
    env = _external(tmp_path / "var", chain.url, chain)
    deployed = run(env, "contract", "deploy")
    assert deployed.returncode == 0, deployed.stderr
    pinned = json.loads(deployed.stdout)["address"]
    # a genuine xray contract, but not the one this data dir was deployed against
    other, _ = deploy(connect(chain.url), load_or_create_account(tmp_path / "var/keys/admin.key"))
    env["GATEWAY_CONTRACT_ADDRESS"] = other

    result = _refused(env)
    assert result.returncode == 1
    assert f"GATEWAY_CONTRACT_ADDRESS {other} differs from the contract pinned" in result.stderr
    assert pinned in result.stderr
    info = run(env, "contract", "info")
    assert info.returncode == 1 and "differs" in info.stderr


# -- log reads in windows -----------------------------------------------------------------


def _send(up: Up, files: list[Path]) -> list[Any]:
    from tests.integration.dicom import storescu

    before = len(up.rows())
    result = storescu(up.dicom_port, files)
    assert result.returncode == 0, result.stdout[-2000:]
    return list(up.wait_done(before + len(files), timeout=300)[before:])


def _mine(anvil: Anvil, blocks: int) -> None:
    rpc(anvil.url, "anvil_mine", [hex(blocks)], timeout=300)


def _wait(predicate: Any, *, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("the condition never held")


def test_ledger_reads_go_in_windows_a_besu_node_accepts(tmp_path: Path, chain: Anvil) -> None:
    """Behind a relay that refuses wide eth_getLogs as Besu does, after thousands of blocks:
    anchoring, a new version's idempotent look-up, the verify API's evidence, the ledger
    views, an audit, the independent CLI and the plugin's ledger mirror all still work."""
    relay = LogRangeRelay(chain.url, max_range=LOG_RANGE)
    relay.start()
    try:
        env = _external(
            tmp_path / "var", relay.url, chain,
            GATEWAY_CHAIN_LOG_RANGE=str(LOG_RANGE), GATEWAY_BATCH_MAX="1",
        )  # fmt: skip
        deployed = run(env, "contract", "deploy")
        assert deployed.returncode == 0, deployed.stderr
        address = json.loads(deployed.stdout)["address"]
        _mine(chain, 3 * LOG_RANGE)  # the deployment is far behind the head now
        up = Up(env)
        try:
            _windows(up, relay, chain, address, tmp_path)
        finally:
            assert up.stop() == 0
    finally:
        relay.stop()
    assert relay.log_queries > 0 and relay.refused == 0


def _windows(up: Up, relay: LogRangeRelay, chain: Anvil, address: str, tmp_path: Path) -> None:
    study = make_study(tmp_path, count=1)
    (first,) = _send(up, study.files)
    assert first["stage"] == "committed", first["last_error"]

    # the plugin's ledger mirror follows the chain through the relay too
    creds = json.loads((up.data_dir / "keys" / "orthanc-http.json").read_text())
    orthanc = httpx.Client(
        base_url=f"http://127.0.0.1:{up.env['GATEWAY_ORTHANC_HTTP_PORT']}",
        auth=(creds["user"], creds["password"]), timeout=60,
    )  # fmt: skip
    with orthanc:
        _wait(
            lambda: (
                "confirmed on the ledger"
                in str(
                    orthanc.get(f"/xray/instances/{first['orthanc_id']}/integrity").json()["ledger"]
                )
            )
        )

    token = (up.data_dir / "api-token").read_text().strip()
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{up.api_port}",
        headers={"Authorization": f"Bearer {token}"}, timeout=120,
    )  # fmt: skip
    with api:
        _mine(chain, 3 * LOG_RANGE)
        verdict = api.get(f"/v1/instances/{first['sop_instance_uid']}/verify").json()
        assert verdict["status"] == "intact", verdict
        assert verdict["evidence"]["tx_hash"] == first["tx_hash"]
        # a new version, blocks later: the anchorer looks for it in every window first
        _mine(chain, 3 * LOG_RANGE)
        edit_patient_name(study.files[0], "Version^Two")
        (second,) = _send(up, study.files)
        assert second["tx_hash"] and second["tx_hash"] != first["tx_hash"], second["last_error"]
        image = XrayLedger.at(chain.url, address).image_of(bytes(first["record_key"]))
        assert image is not None and image.versions == 2
        # a verdict reads the blocks its record names, not every window since the deployment:
        # as many log queries under the key after 3 more windows of blocks as before them
        topic = "0x" + bytes(first["record_key"]).hex()
        before = relay.topic_queries.get(topic, 0)
        assert api.get(f"/v1/instances/{second['sop_instance_uid']}/verify").status_code == 200
        once = relay.topic_queries.get(topic, 0) - before
        _mine(chain, 3 * LOG_RANGE)
        assert api.get(f"/v1/instances/{second['sop_instance_uid']}/verify").status_code == 200
        assert relay.topic_queries.get(topic, 0) - before - once == once, relay.topic_queries
        assert once > 0  # the blocks of its versions, once per event name and look-up

        _mine(chain, 3 * LOG_RANGE)

        views = api.get(f"/v1/recorders/{up.value('recorder')}/records").json()
        assert {r["tx_hash"] for r in views["items"]} == {first["tx_hash"], second["tx_hash"]}
        started = api.post("/v1/audits")
        assert started.status_code == 202, started.text
        audit = _wait(lambda: _finished(api, started.json()["id"]), timeout=300)
        assert audit["state"] == "done", audit

    # the independent CLI: chain, contract and key only, no index to name the transaction
    key = tmp_path / "pseudonym.key"
    key.write_bytes((up.data_dir / "keys" / "pseudonym.key").read_bytes())
    key.chmod(0o600)
    env = {k: v for k, v in up.env.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DATA_DIR=str(tmp_path / "auditor"), GATEWAY_CHAIN_LOG_RANGE=str(LOG_RANGE))
    result = run(
        env, "verify", "--json", "--chain-url", relay.url, "--contract", address,
        "--pseudonym-key", str(key), str(study.files[0]),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (cli,) = json.loads(result.stdout)
    assert cli["status"] == "intact" and cli["evidence"]["tx_hash"] == second["tx_hash"]


def _finished(api: httpx.Client, audit_id: str) -> dict[str, Any] | None:
    state: dict[str, Any] = api.get(f"/v1/audits/{audit_id}").json()
    return state if state["state"] != "running" else None
