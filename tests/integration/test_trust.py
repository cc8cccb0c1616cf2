"""A second Recorder cannot bend a verdict: tried as a new user would, on the stack `up` starts.

The gateway anchors a study in a Merkle batch. The admin then grants a second account
the Recorder role; it ``recordImage``s and ``supersedeImage``s forged digests under the
record key of one of those images (the contract cannot know a batched key before its
proof is shown, so both land). The verify API, the independent CLI and the Orthanc
plugin must all keep the gateway, which anchored the key first, as its owner.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from eth_account import Account
from pydicom import dcmread

from gateway.core.fingerprint import Fingerprint, fingerprint_bytes
from gateway.errors import ContractRevert
from gateway.ledger import XrayLedger
from gateway.ledger.accounts import load_account
from gateway.ledger.anvil import rpc
from gateway.ledger.types import Anchor, UserType
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env, run
from tests.integration.plugin_helpers import make_study, stored_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = Up(gateway_env(tmp_path_factory.mktemp("trust") / "var"))
    try:
        yield up
    finally:
        assert up.stop() == 0


def forge(original: Path, out: Path, name: str) -> Fingerprint:
    """A copy of ``original`` with another patient name; returns its digests."""
    ds = dcmread(original)
    ds.PatientName = name
    ds.save_as(out)
    return fingerprint_bytes(out.read_bytes())


def write_as_rogue(rogue: XrayLedger, row: Any, decoy: Fingerprint, forged: Fingerprint) -> Anchor:
    """recordImage a decoy digest under the row's record key, then supersedeImage the forged one."""
    for write, fp in ((rogue.record_image, decoy), (rogue.supersede_image, forged)):
        anchor = write(
            record_key=bytes(row["record_key"]), patient_key=bytes(row["patient_key"]),
            digest=fp.digest, pixel_digest=fp.pixel_digest, body_part="CHEST", modality="CT",
        )  # fmt: skip
    return anchor


def retire_as_non_owner(admin: XrayLedger, rogue: XrayLedger, row: Any, chain_url: str) -> str:
    """Retire the row's record key as an account that did not anchor it first; returns who.

    Today's contract lets any Hospital retire any record. Once the owner rule is on chain
    only the owner or the admin may, and the contract takes the rogue for the owner of
    its own direct record of the key (the batch's proof was never shown): then the rogue
    retires it. Either way the key's first anchoring is the gateway's batch.
    """
    hospital = Account.create()
    rpc(chain_url, "anvil_setBalance", [hospital.address, hex(10**24)])
    admin.set_permission(hospital.address, "another hospital", UserType.HOSPITAL)
    key = bytes(row["record_key"])
    try:
        admin.as_account(hospital).retire_image(record_key=key, reason="withdrawn")
        return str(hospital.address)
    except ContractRevert:
        rogue.retire_image(record_key=key, reason="withdrawn")
        assert rogue.sender is not None
        return str(rogue.sender.address)


class Plugin:
    """Orthanc's integrity route, as a PACS user sees it."""

    def __init__(self, up: Up) -> None:
        creds = json.loads((up.data_dir / "keys" / "orthanc-http.json").read_text())
        self.auth = (creds["user"], creds["password"])
        self.url = f"http://127.0.0.1:{up.env['GATEWAY_ORTHANC_HTTP_PORT']}"

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.url}{path}", auth=self.auth, timeout=60)

    def verdict_after(self, orthanc_id: str, block: int, *, timeout: float = 90) -> Any:
        """The plugin's verdict once its ledger mirror has synced ``block``."""
        deadline = time.monotonic() + timeout
        answer: Any = {}
        while time.monotonic() < deadline:
            answer = self.get(f"/xray/instances/{orthanc_id}/integrity").json()
            synced = re.search(r"mirror at block (\d+)", str(answer.get("ledger")))
            if synced and int(synced.group(1)) >= block:
                return answer
            time.sleep(0.5)
        raise AssertionError(f"the mirror never synced block {block}: {answer}")


def foreign_claims(api: httpx.Client, uid: str, source: str, *, timeout: float = 60) -> list[Any]:
    """The ``foreign_claim`` alerts of ``uid`` from ``source``, waiting for the first."""
    deadline = time.monotonic() + timeout
    found: list[Any] = []
    while time.monotonic() < deadline:
        reply = api.get("/v1/alerts", params={"sop_instance_uid": uid, "kind": "foreign_claim"})
        found = [a for a in reply.json()["items"] if a["source"] == source]
        if found:
            return found
        time.sleep(0.5)
    return found


def test_a_rogue_recorder_cannot_rewrite_an_image_the_gateway_anchored_in_a_batch(
    stack: Up, tmp_path: Path
) -> None:
    study = make_study(tmp_path, count=3)
    result = storescu(stack.dicom_port, study.files)
    assert result.returncode == 0, result.stdout[-2000:]
    rows = {row["sop_instance_uid"]: row for row in stack.wait_done(3)}
    uid, original = study.sop_uids[0], study.files[0]
    victim = rows[uid]
    assert victim["batch_id"] is not None  # anchored in a Merkle batch, not on its own

    chain_url = f"http://127.0.0.1:{stack.env['GATEWAY_ANVIL_PORT']}"
    address = stack.value("xray contract")
    admin = XrayLedger.at(
        chain_url, address, account=load_account(stack.data_dir / "keys" / "admin.key")
    )
    rogue_account = Account.create()
    rpc(chain_url, "anvil_setBalance", [rogue_account.address, hex(10**24)])
    admin.set_permission(rogue_account.address, "second site", UserType.RECORDER)
    rogue = admin.as_account(rogue_account)
    forged = tmp_path / "forged.dcm"
    forged_fp = forge(original, forged, "Forged^Patient")
    decoy_fp = forge(original, tmp_path / "decoy.dcm", "Decoy^Patient")
    last = write_as_rogue(rogue, victim, decoy_fp, forged_fp)  # both land on chain
    rogue_address = rogue_account.address.lower()

    token = (stack.data_dir / "api-token").read_text().strip()
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{stack.api_port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    with api:
        # the verify API: still intact, the gateway's batch as evidence, the rogue named
        verdict = api.get(f"/v1/instances/{uid}/verify").json()
        assert verdict["status"] == "intact", verdict
        evidence = verdict["evidence"]
        assert evidence["recorded_digest"] == bytes(victim["digest"]).hex()
        assert evidence["recorder_name"] == "xray-gateway"
        assert evidence["batch"]["batch_id"] == victim["batch_id"]
        assert [a.lower() for a in evidence["foreign_claims"]] == [rogue_address]
        (alert,) = foreign_claims(api, uid, "verifier")
        assert rogue_address in alert["detail"].lower()
        # the forged file, whose digest the rogue recorded, is not intact
        upload = api.post(
            "/v1/verify",
            content=forged.read_bytes(),
            headers={"Content-Type": "application/dicom"},
        )
        assert upload.status_code == 200, upload.text
        assert upload.json()["status"] == "tampered"

        # the independent CLI, with the chain, the key and the API's proofs only
        key = tmp_path / "pseudonym.key"
        key.write_bytes((stack.data_dir / "keys" / "pseudonym.key").read_bytes())
        key.chmod(0o600)
        auditor = run(stack.env, "token", "create", "--role", "auditor", "--name", "trust")
        assert auditor.returncode == 0, auditor.stderr
        token_file = tmp_path / "auditor.token"
        token_file.write_text(auditor.stdout.strip())
        env = {k: v for k, v in stack.env.items() if not k.startswith("GATEWAY_")}
        env["GATEWAY_DATA_DIR"] = str(tmp_path / "empty")
        cli = run(
            env, "verify", "--json", "--chain-url", chain_url, "--contract", address,
            "--pseudonym-key", str(key), "--proofs", f"http://127.0.0.1:{stack.api_port}",
            "--token-file", str(token_file), str(original), str(forged),
        )  # fmt: skip
        assert cli.returncode == 3, cli.stdout[-2000:] + cli.stderr[-2000:]
        said = json.loads(cli.stdout)
        assert [v["status"] for v in said] == ["intact", "tampered"]
        assert said[0]["evidence"]["recorded_digest"] == bytes(victim["digest"]).hex()
        assert [a.lower() for a in said[0]["evidence"]["foreign_claims"]] == [rogue_address]
        # a configured list replaces the role history: with only an unknown account on
        # it, nobody's record counts and the original is unregistered
        listed = run(
            env, "verify", "--json", "--chain-url", chain_url, "--contract", address,
            "--pseudonym-key", str(key), "--proofs", f"http://127.0.0.1:{stack.api_port}",
            "--token-file", str(token_file), "--trusted-recorders", "0x" + "42" * 20,
            str(original),
        )  # fmt: skip
        assert listed.returncode == 3, listed.stderr
        assert [v["status"] for v in json.loads(listed.stdout)] == ["unregistered"]

        # the plugin: still intact and served once its mirror holds the rogue's writes
        plugin = Plugin(stack)
        seen = plugin.verdict_after(victim["orthanc_id"], last.block_number)
        assert (seen["status"], seen["served"]) == ("intact", True), seen
        served = plugin.get(f"/instances/{victim['orthanc_id']}/file")
        assert served.status_code == 200
        assert fingerprint_bytes(served.content).digest == bytes(victim["digest"])
        (alert,) = foreign_claims(api, uid, "orthanc-plugin")
        assert rogue_address in alert["detail"].lower()

        # a retirement by an account that is not the owner does not count either
        retirer = retire_as_non_owner(admin, rogue, victim, chain_url).lower()
        verdict = api.get(f"/v1/instances/{uid}/verify").json()
        assert verdict["status"] == "intact", verdict
        assert verdict["evidence"]["retired_by"] is None
        assert retirer in [a.lower() for a in verdict["evidence"]["foreign_claims"]]
        head = int(str(rpc(chain_url, "eth_blockNumber")), 16)
        seen = plugin.verdict_after(victim["orthanc_id"], head)
        assert (seen["status"], seen["served"]) == ("intact", True), seen

        # the forged file put in Orthanc's storage in place of the original: refused by
        # the plugin, tampered for the API (the rogue's record of its digest does not count)
        path = stored_file(stack.data_dir, plugin.url, plugin.auth, victim["orthanc_id"])
        path.write_bytes(forged.read_bytes())
        assert plugin.get(f"/instances/{victim['orthanc_id']}/file").status_code == 500
        swapped = api.get(f"/v1/instances/{uid}/verify").json()
        assert (swapped["status"], swapped["tamper"]) == ("tampered", "header_changed")
        assert swapped["evidence"]["recorded_digest"] == bytes(victim["digest"]).hex()
