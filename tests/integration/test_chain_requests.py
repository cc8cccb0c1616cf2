"""One sender per recorder account, on the stack `up` starts (anvil, Orthanc, storescu): grants
and revocations made through the API while the pipeline anchors a stream of images are
queued for the anchoring worker and sent by it, through the sender that anchors; every grant,
every revocation and every image lands, and the sender never had to repair a nonce."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from pydicom import dcmread

from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env, run
from tests.integration.plugin_helpers import make_study

pytestmark = pytest.mark.integration

IMAGES = 60  # streamed by storescu while the grants are made
GRANTEES = 8  # each granted the patient's studies through the API; every other one revoked
#: The sender's own warnings when it had to mend a nonce (gateway/ledger/sender.py).
NONCE_REPAIRS = re.compile(r"nonce \d+: |next nonce re-read|re-send refused")


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    root = tmp_path_factory.mktemp("chain-requests")
    gateway = Up(gateway_env(root / "var", GATEWAY_BATCH_MAX="8", GATEWAY_BATCH_WINDOW_MS="50"))
    try:
        yield gateway
    finally:
        assert gateway.stop() == 0


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


def _requests(up: Up) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{up.data_dir / 'index.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM chain_requests ORDER BY id").fetchall()
    finally:
        db.close()


def test_grants_made_while_images_anchor_are_sent_by_the_anchoring_worker(
    up: Up, tmp_path_factory: pytest.TempPathFactory
) -> None:
    study = make_study(tmp_path_factory.mktemp("images"), count=IMAGES)
    patient = dcmread(study.files[0], stop_before_pixels=True)
    api = f"http://127.0.0.1:{up.api_port}"
    admin = {"Authorization": f"Bearer {(up.data_dir / 'api-token').read_text().strip()}"}
    for n in range(GRANTEES):
        issued = run(up.env, "token", "create", "--name", f"dr-{n}", "--role", "grantee")
        assert issued.returncode == 0, issued.stderr
    sent: dict[str, Any] = {}
    stream = threading.Thread(
        target=lambda: sent.update(result=storescu(up.dicom_port, study.files))
    )
    stream.start()
    answers: list[requests.Response] = []
    while stream.is_alive() and len(answers) < GRANTEES:  # grants while the images stream
        answers.append(requests.post(f"{api}/v1/grants", headers=admin, timeout=120, json={
            "to": f"dr-{len(answers)}", "patient_id": str(patient.PatientID),
            "issuer": str(patient.get("IssuerOfPatientID", "")),
            "until": _iso(time.time() + 3600),
        }))  # fmt: skip
    stream.join(300)
    assert sent["result"].returncode == 0, sent["result"].stdout[-2000:]
    assert len(answers) >= 2, "the stream ended before two grants were made: a bigger stream"
    assert [a.status_code for a in answers] == [201] * len(answers), answers[-1].text
    grants = [a.json() for a in answers]
    revoked = [
        requests.delete(f"{api}/v1/grants/{g['id']}", headers=admin, timeout=120)
        for g in grants[::2]
    ]
    assert [r.status_code for r in revoked] == [200] * len(revoked)
    rows = up.wait_done(IMAGES)
    assert [r["stage"] for r in rows] == ["committed"] * IMAGES  # every image anchored
    # every grant and revocation went through the queue, sent by the anchoring worker
    queued = _requests(up)
    assert [(q["kind"], q["state"]) for q in queued] == (
        [("grant", "done")] * len(grants) + [("revoke", "done")] * len(revoked)
    )
    senders = {q["claimed_by"] for q in queued}
    assert len(senders) == 1 and senders.pop().endswith("/up-1/chain")
    assert [q["result"] for q in queued[: len(grants)]] == [g["id"] for g in grants]
    assert [q["tx_hash"] for q in queued[: len(grants)]] == [g["tx_hash"] for g in grants]
    # one sender for the recorder account: it never had to mend a nonce
    logged = up.log_path.read_text(errors="replace")
    repairs = NONCE_REPAIRS.findall(logged)
    print(f"{len(grants)} grants, {len(revoked)} revocations, {IMAGES} images:"
          f" {len(repairs)} nonce repairs")  # fmt: skip
    assert repairs == []
    assert "chain request" not in logged  # none refused, none left in flight
