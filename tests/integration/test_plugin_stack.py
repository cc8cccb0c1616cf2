"""The integrity plugin on the stack `up` starts: the real pipeline, anvil and the ledger mirror."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.core.fingerprint import fingerprint_bytes
from gateway.core.merkle import decode_proof
from gateway.ledger import XrayLedger
from gateway.ledger.accounts import load_account
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env
from tests.integration.plugin_helpers import alerts, flip_pixel_byte, make_study, stored_file

pytestmark = pytest.mark.integration


class Gateway:
    """The running stack plus what the tests need to reach its Orthanc and its chain."""

    def __init__(self, up: Up) -> None:
        self.up = up
        creds = json.loads((up.data_dir / "keys" / "orthanc-http.json").read_text())
        self.auth = (creds["user"], creds["password"])
        self.url = f"http://127.0.0.1:{up.env['GATEWAY_ORTHANC_HTTP_PORT']}"
        self.chain_url = f"http://127.0.0.1:{up.env['GATEWAY_ANVIL_PORT']}"

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.url}{path}", auth=self.auth, timeout=60)

    def integrity(self, orthanc_id: str) -> dict[str, object]:
        reply = self.get(f"/xray/instances/{orthanc_id}/integrity")
        reply.raise_for_status()
        answer: dict[str, object] = reply.json()
        return answer

    def wait_integrity(
        self, orthanc_id: str, predicate: str, *, timeout: float = 60
    ) -> dict[str, object]:
        """Poll until the verdict's ``ledger`` or ``status`` text contains ``predicate``."""
        deadline = time.monotonic() + timeout
        answer: dict[str, object] = {}
        while time.monotonic() < deadline:
            answer = self.integrity(orthanc_id)
            if predicate in str(answer["ledger"]) or predicate == answer["status"]:
                return answer
            time.sleep(0.5)
        raise AssertionError(f"never {predicate!r}: {answer}")

    def send(self, files: list[Path]) -> list[sqlite3.Row]:
        before = len(self.up.rows())
        result = storescu(self.up.dicom_port, files)
        assert result.returncode == 0, result.stdout[-2000:]
        rows = self.up.wait_done(before + len(files))
        return rows[before:]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    up = Up(gateway_env(tmp_path_factory.mktemp("plugin-stack") / "var"))
    try:
        yield Gateway(up)
    finally:
        assert up.stop() == 0


def test_up_loads_the_plugin_and_what_the_gateway_forwarded_is_verified_on_the_ledger(
    gateway: Gateway, tmp_path: Path
) -> None:
    study = make_study(tmp_path, count=3)
    rows = gateway.send(study.files)
    assert all(row["stage"] == "committed" for row in rows)
    for row in rows:
        verdict = gateway.wait_integrity(row["orthanc_id"], "confirmed on the ledger")
        assert verdict["status"] == "intact"
        assert verdict["recorded"]["tx_hash"] == row["tx_hash"]  # type: ignore[index]
        assert verdict["recorded"]["block_number"] == row["block_number"]  # type: ignore[index]
        assert gateway.get(f"/instances/{row['orthanc_id']}/file").status_code == 200
    assert not alerts(gateway.up.data_dir)


def test_a_tampered_copy_is_refused_and_alerted(gateway: Gateway, tmp_path: Path) -> None:
    study = make_study(tmp_path, count=2)
    rows = gateway.send(study.files)
    victim = rows[0]
    path = stored_file(gateway.up.data_dir, gateway.url, gateway.auth, victim["orthanc_id"])
    flip_pixel_byte(path)
    assert gateway.get(f"/instances/{victim['orthanc_id']}/file").status_code == 500
    assert gateway.get(f"/instances/{victim['orthanc_id']}/preview").status_code == 415
    found = alerts(gateway.up.data_dir, sop_instance_uid=victim["sop_instance_uid"])
    assert [a["kind"] for a in found] == ["tampered"]
    assert bytes(victim["digest"]).hex() in found[0]["detail"]
    assert gateway.get(f"/instances/{rows[1]['orthanc_id']}/file").status_code == 200


def test_a_record_retired_on_the_ledger_is_served_with_the_reason(
    gateway: Gateway, tmp_path: Path
) -> None:
    study = make_study(tmp_path, count=1)
    (row,) = gateway.send(study.files)
    gateway.wait_integrity(row["orthanc_id"], "confirmed on the ledger")
    admin = load_account(gateway.up.data_dir / "keys" / "admin.key")
    ledger = XrayLedger.at(gateway.chain_url, gateway.up.value("xray contract"), account=admin)
    # anchored in a Merkle batch: the chain checks the inclusion proof before retiring
    ledger.retire_batched_image(
        record_key=bytes(row["record_key"]), patient_key=bytes(row["patient_key"]),
        digest=bytes(row["digest"]), pixel_digest=bytes(row["pixel_digest"]),
        batch_id=row["batch_id"], proof=decode_proof(bytes(row["proof"])),
        reason="wrong_patient",
    )  # fmt: skip

    verdict = gateway.wait_integrity(row["orthanc_id"], "retired")
    assert verdict["served"] is True
    assert "wrong_patient" in str(verdict["explanation"])
    served = gateway.get(f"/instances/{row['orthanc_id']}/file")
    assert served.status_code == 200
    assert fingerprint_bytes(served.content).digest == bytes(row["digest"])
    found = alerts(gateway.up.data_dir, sop_instance_uid=row["sop_instance_uid"])
    assert [a["kind"] for a in found] == ["retired"]


def test_a_copy_matching_a_forged_index_row_is_refused_by_the_ledger(
    gateway: Gateway, tmp_path: Path
) -> None:
    """An intruder who alters Orthanc's file *and* rewrites the gateway's index to match is
    still caught: the ledger mirror holds no record of the forged digest."""
    study = make_study(tmp_path, count=1)
    (row,) = gateway.send(study.files)
    gateway.wait_integrity(row["orthanc_id"], "confirmed on the ledger")
    path = stored_file(gateway.up.data_dir, gateway.url, gateway.auth, row["orthanc_id"])
    flip_pixel_byte(path)
    forged = fingerprint_bytes(path.read_bytes()).digest
    db = sqlite3.connect(gateway.up.data_dir / "index.sqlite", timeout=30)
    try:
        db.execute("UPDATE instances SET digest = ? WHERE id = ?", (forged, row["id"]))
        db.commit()
    finally:
        db.close()

    verdict = gateway.integrity(row["orthanc_id"])
    assert verdict["status"] == "tampered" and verdict["served"] is False
    assert "not on the ledger" in str(verdict["headline"])
    assert "holds no record" in str(verdict["ledger"])
    assert gateway.get(f"/instances/{row['orthanc_id']}/file").status_code == 500
