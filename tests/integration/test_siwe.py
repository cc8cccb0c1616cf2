"""Grants made on chain by a Doctor account, and Sign-In with Ethereum, on the stack `up`
starts (anvil, Orthanc with the plugin, storescu): the admin gives an account the Doctor
role on chain; the Doctor calls ``grantAccess`` on the contract itself for an outside
clinician's account address and one study; the gateway imports it; the clinician signs in
with an EIP-4361 message signed by their key (eth_account) and reads exactly that study,
through the API and the console's viewer, under their address in the access trail; the
Doctor revokes on chain and the reads turn 403 ``grant-revoked``. A replayed nonce, a
signature by another key and a message for another chain are refused."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
import requests
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from pydicom import dcmread
from siwe import SiweMessage

from gateway.api.auth import Tokens
from gateway.core.access import grantee_key, study_key
from gateway.core.keys import load_pseudonym_key, patient_key
from gateway.ledger import XrayLedger
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env, run
from tests.integration.plugin_helpers import Study, make_study

pytestmark = pytest.mark.integration

T = TypeVar("T")


@dataclass
class ChainGrantStack:
    up: Up
    api: str
    admin: str
    granted: Study  # the study the Doctor grants to the outsider
    other: Study  # the same patient's other study, never granted
    doctor: XrayLedger  # the contract, writing as the Doctor account
    outsider: LocalAccount  # the outside clinician: an account, no token
    patient: bytes  # the patient key
    pseudonym: bytes

    def get(self, path: str, token: str, **params: Any) -> requests.Response:
        return requests.get(
            f"{self.api}{path}", headers={"Authorization": f"Bearer {token}"}, params=params,
            timeout=120,
        )  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChainGrantStack]:
    root = tmp_path_factory.mktemp("siwe")
    env = gateway_env(root / "var", GATEWAY_TRAIL_WINDOW_S="0", GATEWAY_GRANT_SYNC_S="0.5")
    up = Up(env)
    try:
        granted, other = make_study(root, count=2), make_study(root, count=1)
        sent = storescu(up.dicom_port, granted.files + other.files)
        assert sent.returncode == 0, sent.stdout[-2000:]
        assert [r["stage"] for r in up.wait_done(3)] == ["committed"] * 3
        chain = f"http://127.0.0.1:{env['GATEWAY_ANVIL_PORT']}"
        doctor_account = Account.create()
        # the admin (on chain, with its key: `contract grant`) makes the account a Doctor
        made = run(env, "contract", "grant", doctor_account.address, "--role", "doctor",
                   "--name", "Dr. Referrer")  # fmt: skip
        assert made.returncode == 0, made.stderr
        ledger = XrayLedger.at(chain, up.value("xray contract"))
        ledger.w3.provider.make_request(  # type: ignore[operator]
            "anvil_setBalance", [doctor_account.address, hex(10**18)]
        )
        ds = dcmread(granted.files[0])
        pseudonym = load_pseudonym_key(up.data_dir / "keys")
        yield ChainGrantStack(
            up, f"http://127.0.0.1:{up.api_port}", (up.data_dir / "api-token").read_text().strip(),
            granted, other, ledger.as_account(doctor_account), Account.create(),
            patient_key(pseudonym, str(ds.IssuerOfPatientID), str(ds.PatientID)), pseudonym,
        )  # fmt: skip
    finally:
        assert up.stop() == 0


def _until(what: Callable[[], T | None], *, wait_s: float = 60) -> T:
    """Ask ``what`` until it answers (bounded); the answer."""
    deadline = time.monotonic() + wait_s
    while True:
        found = what()
        if found is not None:
            return found
        assert time.monotonic() < deadline, "no answer in time"
        time.sleep(0.25)


def _problem(reply: requests.Response, status: int = 403) -> str:
    assert reply.status_code == status, (reply.status_code, reply.text[:300])
    assert reply.headers["content-type"].startswith("application/problem+json")
    return str(reply.json()["type"]).rsplit("/", 1)[-1]


def _message(api: str, address: str, **changed: Any) -> str:
    """An EIP-4361 message for ``address`` with a fresh nonce from the gateway."""
    given = requests.get(f"{api}/v1/auth/siwe/nonce", timeout=30).json()
    fields: dict[str, Any] = {
        "domain": given["domain"], "address": address, "uri": given["uri"], "version": "1",
        "chain_id": given["chain_id"], "nonce": given["nonce"], "statement": given["statement"],
        "issued_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }  # fmt: skip
    fields.update(changed)
    return str(SiweMessage(**fields).prepare_message())


def _signed(message: str, key: LocalAccount) -> str:
    return "0x" + key.sign_message(encode_defunct(text=message)).signature.hex().removeprefix("0x")


def _sign_in(api: str, message: str, signature: str) -> requests.Response:
    return requests.post(
        f"{api}/v1/auth/siwe", json={"message": message, "signature": signature}, timeout=30
    )


def _imported(
    stack: ChainGrantStack, grant_id: int, *, once: Callable[[dict[str, Any]], bool] = bool
) -> dict[str, Any] | None:
    """The grant as the gateway's index holds it, once the sync imported it (and ``once``
    holds of it)."""
    listed = requests.get(
        f"{stack.api}/v1/grants", headers={"Authorization": f"Bearer {stack.admin}"},
        params={"limit": 1000}, timeout=30,
    ).json()["items"]  # fmt: skip
    found = next((g for g in listed if g["id"] == grant_id), None)
    return found if found is not None and once(found) else None


def test_a_doctors_grant_on_chain_lets_the_signed_in_account_read_exactly_that_study(
    stack: ChainGrantStack,
) -> None:
    s = stack
    grantee = bytes(12) + bytes.fromhex(s.outsider.address[2:])
    grant_id, mined = s.doctor.grant_access(
        grantee=grantee, patient_key=s.patient,
        study_key=study_key(s.pseudonym, s.granted.study_uid), expires_at=int(time.time()) + 3600,
    )  # fmt: skip
    # the gateway imports it, and names the study it knows by its key (the chain holds keys)
    imported = _until(
        lambda: _imported(s, grant_id, once=lambda g: g["study_instance_uid"] is not None)
    )
    assert imported["study_instance_uid"] == s.granted.study_uid
    assert imported["grantee"] == s.outsider.address and imported["grantee_kind"] == "account"
    assert imported["granted_by"] == s.doctor.sender.account.address  # type: ignore[union-attr]
    assert (imported["tx_hash"], imported["block_number"]) == (mined.tx_hash, mined.block_number)

    # sign in with Ethereum: the outsider's own key signs the gateway's message
    message = _message(s.api, s.outsider.address)
    signature = _signed(message, s.outsider)
    signed_in = _sign_in(s.api, message, signature)
    assert signed_in.status_code == 200, signed_in.text
    session = signed_in.json()
    assert (session["address"], session["role"]) == (s.outsider.address, "grantee")
    token = session["token"]

    study = s.get(f"/v1/studies/{s.granted.study_uid}/verify", token)
    assert study.status_code == 200 and study.json()["summary"]["intact"] == 2
    assert (
        s.get(f"/v1/instances/{s.granted.sop_uids[1]}/verify", token).json()["status"] == "intact"
    )
    assert s.get("/v1/studies", token).json()["items"] == [s.granted.study_uid]
    assert _problem(s.get(f"/v1/studies/{s.other.study_uid}/verify", token)) == "not-granted"
    assert _problem(s.get("/v1/audits", token)) == "forbidden"

    # the console's viewer, after a login with a pasted signed message
    console = requests.Session()
    form = _message(s.api, s.outsider.address)
    login = console.post(
        f"{s.api}/console/login/siwe", headers={"Origin": s.api}, timeout=30,
        data={"message": form, "signature": _signed(form, s.outsider), "next": "/console"},
    )  # fmt: skip
    assert login.status_code == 200 and login.url.endswith("/console"), login.text[:300]
    assert s.granted.study_uid in login.text
    viewer = console.get(f"{s.api}/console/studies/{s.granted.study_uid}/view", timeout=60)
    assert viewer.status_code == 200 and viewer.text.count('data-status="intact"') == 2
    assert (
        console.get(f"{s.api}/console/studies/{s.other.study_uid}/view", timeout=60).status_code
        == 403
    )

    # refused: the same message again (its nonce is spent), another key's signature, a
    # message for another chain
    assert _problem(_sign_in(s.api, message, signature), 401) == "siwe-nonce"
    forged = _message(s.api, s.outsider.address)
    assert _problem(_sign_in(s.api, forged, _signed(forged, Account.create())), 401) == (
        "siwe-signature"
    )
    elsewhere = _message(s.api, s.outsider.address, chain_id=1)
    assert _problem(_sign_in(s.api, elsewhere, _signed(elsewhere, s.outsider)), 401) == (
        "siwe-chain"
    )

    # the Doctor revokes on chain: the gateway imports it, and the reads are refused
    s.doctor.revoke_access(grant_id)
    _until(lambda: _imported(s, grant_id, once=lambda g: g["state"] == "revoked"))
    assert _problem(s.get(f"/v1/studies/{s.granted.study_uid}/verify", token)) == "grant-revoked"
    assert _problem(s.get(f"/v1/instances/{s.granted.sop_uids[1]}/verify", token)) == (
        "grant-revoked"
    )
    assert s.get("/v1/studies", token).json()["items"] == []
    assert (
        console.get(f"{s.api}/console/studies/{s.granted.study_uid}/view", timeout=60).status_code
        == 403
    )

    # every use, served or refused, is in the access trail under the account's address
    trail = requests.get(
        f"{s.api}/v1/access", headers={"Authorization": f"Bearer {s.admin}"},
        params={"user": s.outsider.address, "limit": 1000}, timeout=30,
    ).json()["items"]  # fmt: skip
    seen = {(e["route"], e["verdict"], e["served"], e["who_kind"]) for e in trail}
    assert ("api:verify-study", "intact", True, "account") in seen
    assert ("api:verify-study", "not-granted", False, "account") in seen
    assert ("api:verify-study", "grant-revoked", False, "account") in seen
    assert ("console:view", "grant-revoked", False, "account") in seen

    # nonces are rows in the shared index: an address asking for many is slowed down
    answers = [requests.get(f"{s.api}/v1/auth/siwe/nonce", timeout=30) for _ in range(12)]
    assert [a.status_code for a in answers].count(429) >= 1
    assert int(next(a for a in answers if a.status_code == 429).headers["Retry-After"]) >= 1


def test_a_patient_grant_on_chain_for_a_token_key_reaches_the_token_holder(
    stack: ChainGrantStack,
) -> None:
    """A grant on chain may name a token holder by its grantee key, derived from the id of
    the token issued to it (not its name): the gateway shows it under the name of that
    token, and the token reads every study of the patient."""
    s = stack
    issued = run(s.up.env, "token", "create", "--name", "dr-token", "--role", "grantee")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    keys = s.up.data_dir / "keys"
    token_id = Tokens(admin_token_file=s.up.data_dir / "api-token",
                      issued_file=keys / "api-tokens.json").id_of("dr-token")  # fmt: skip
    assert token_id is not None and token_id.startswith("tok-")
    assert s.get("/v1/studies", token).json()["items"] == []
    grant_id, _ = s.doctor.grant_access(
        grantee=grantee_key(s.pseudonym, token_id), patient_key=s.patient,
        study_key=None, expires_at=int(time.time()) + 3600,
    )  # fmt: skip
    imported = _until(lambda: _imported(s, grant_id))
    assert (imported["grantee"], imported["grantee_kind"]) == ("dr-token", "token")
    assert imported["grantee_id"] == token_id
    assert imported["study_instance_uid"] is None and imported["study_key"] is None
    assert s.get("/v1/studies", token).json()["items"] == sorted(
        [s.granted.study_uid, s.other.study_uid]
    )
    assert s.get(f"/v1/studies/{s.other.study_uid}/verify", token).status_code == 200
