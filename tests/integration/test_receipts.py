"""Receipts that verify offline, and a log that proves it only grows: the real parts.

`up` (anvil, Orthanc, the plugin) takes a first study of 50 CT slices from DCMTK's
storescu; their 50 receipts are written (the first with ``xray-gateway receipt``, the
others from the same route) beside the log's checkpoint. Then more images arrive in one
association and a second checkpoint is taken: 1,000 images later, as the issue asks
(about two minutes; ``XRAY_RECEIPTS_IMAGES`` sets another count). The auditor's side
runs as subprocesses of the CLI: ``log-consistency`` between
the two checkpoints (and a forged proof), ``verify --receipt … --chain`` while the chain
runs, then, with the gateway stopped, ``verify --receipt`` on all 50 files at once and on
a tampered file, a tampered receipt and a wrong log key.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydicom import dcmread

import dicom_fixtures
from gateway.core.checkpoint import parse_vkey, verifier_of
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import EXE, Up, gateway_env
from tests.integration.plugin_helpers import flip_pixel_byte

pytestmark = pytest.mark.integration

FIRST = 50
LATER = int(os.environ.get("XRAY_RECEIPTS_IMAGES", "1000"))


@dataclass
class Run:
    """What the module's one gateway run left for the auditor: files, receipts, checkpoints."""

    up: Up
    files: list[Path]
    receipts: list[Path]
    vkey: Path
    old_checkpoint: Path
    new_checkpoint: Path
    proof: Path
    seconds: dict[str, float]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The auditor's CLI: no GATEWAY_* settings unless given (it needs none offline)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [EXE, *args], env=env or clean, capture_output=True, text=True, timeout=600
    )


def api(up: Up) -> httpx.Client:
    token = (up.data_dir / "api-token").read_text().strip()
    return httpx.Client(
        base_url=f"http://127.0.0.1:{up.api_port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )


def uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    work = tmp_path_factory.mktemp("receipts")
    first = dicom_fixtures.ct_series(
        work / "first", FIRST, rows=16, cols=16, study_uid="1.2.826.0.1.3680043.10.1138.15.1",
        prefix="1.2.826.0.1.3680043.10.1138.15.2.",
    )  # fmt: skip
    later = dicom_fixtures.ct_series(
        work / "later", LATER, rows=16, cols=16, study_uid="1.2.826.0.1.3680043.10.1138.15.3",
        prefix="1.2.826.0.1.3680043.10.1138.15.4.",
    )  # fmt: skip
    # Small batches, cut quickly: the log grows by several leaves in each phase.
    up = Up(
        gateway_env(
            work / "var", GATEWAY_BATCH_MAX="64", GATEWAY_BATCH_WINDOW_MS="100",
            GATEWAY_ANCHOR_MAX_DELAY_MS="1000",
        )
    )  # fmt: skip
    seconds: dict[str, float] = {}
    try:
        started = time.monotonic()
        assert storescu(up.dicom_port, first).returncode == 0
        up.wait_done(FIRST)
        seconds["first_50_committed"] = time.monotonic() - started

        vkey = work / "log.vkey"
        shown = cli("log-key", env=up.env)
        assert shown.returncode == 0, shown.stderr
        vkey.write_text(shown.stdout)
        with api(up) as client:
            old_checkpoint = work / "old.checkpoint"
            reply = client.get("/v1/log/checkpoint")
            assert reply.status_code == 200 and reply.headers["content-type"].startswith(
                "text/plain"
            )
            old_checkpoint.write_text(reply.text)

            receipts = [work / f"receipt-{i:02d}.json" for i in range(FIRST)]
            made = cli("receipt", uid(first[0]), "-o", str(receipts[0]), env=up.env)
            assert made.returncode == 0, made.stderr
            for path, file in zip(receipts[1:], first[1:], strict=True):
                reply = client.get(f"/v1/instances/{uid(file)}/receipt")
                assert reply.status_code == 200, reply.text
                path.write_text(reply.text)

            started = time.monotonic()
            assert storescu(up.dicom_port, later).returncode == 0  # one association
            up.wait_done(FIRST + LATER, timeout=1200)
            seconds[f"later_{LATER}_committed"] = time.monotonic() - started
            new_checkpoint = work / "new.checkpoint"
            new_checkpoint.write_text(client.get("/v1/log/checkpoint").text)
            sizes = [int(p.read_text().split("\n")[1]) for p in (old_checkpoint, new_checkpoint)]
            reply = client.get(
                "/v1/log/consistency", params={"first": sizes[0], "second": sizes[1]}
            )
            assert reply.status_code == 200, reply.text
            proof = work / "consistency.json"
            proof.write_text(reply.text)
        yield Run(up, first, receipts, vkey, old_checkpoint, new_checkpoint, proof, seconds)
    finally:
        if up.proc.poll() is None:
            assert up.stop() == 0


def test_a_receipt_holds_the_proofs_and_no_patient_data(run: Run) -> None:
    receipt = json.loads(run.receipts[0].read_text())
    assert receipt["format"] == "xray-receipt/1" and receipt["anchoring"] == "batch"
    assert receipt["chain"]["contract"] == run.up.value("xray contract")
    assert receipt["log"]["leaf_index"] == receipt["batch"]["id"] - 1
    assert receipt["checkpoint"].startswith(receipt["checkpoint"].split("\n")[0] + "\n")
    ds = dcmread(run.files[0], stop_before_pixels=True)
    text = run.receipts[0].read_text()
    for value in (ds.SOPInstanceUID, ds.StudyInstanceUID, str(ds.PatientID), str(ds.PatientName)):
        assert value not in text


def test_the_log_grew_by_the_batches_of_the_later_images_and_the_cli_proves_it(run: Run) -> None:
    old, new = (p.read_text().split("\n") for p in (run.old_checkpoint, run.new_checkpoint))
    assert old[0] == new[0]  # one origin
    assert int(new[1]) - int(old[1]) >= LATER // 64  # batches of at most 64
    assert run.up.proc.poll() is None, "asked of the running gateway (tests run in order)"
    asked = cli(
        "log-consistency", str(run.old_checkpoint), str(run.new_checkpoint),
        "--log-key", str(run.vkey), "--url", f"http://127.0.0.1:{run.up.api_port}",
        "--token-file", str(run.up.data_dir / "api-token"),
    )  # fmt: skip
    assert asked.returncode == 0, asked.stdout + asked.stderr
    offline = cli(
        "log-consistency", str(run.old_checkpoint), str(run.new_checkpoint),
        "--log-key", str(run.vkey), "--proof", str(run.proof),
    )  # fmt: skip
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert "log consistency: VERIFIED" in offline.stdout


def test_a_forged_consistency_proof_fails(run: Run, tmp_path: Path) -> None:
    data = json.loads(run.proof.read_text())
    assert data["proof"], "a proof between different sizes has nodes"
    data["proof"][0] = "00" * 32
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(data))
    result = cli(
        "log-consistency", str(run.old_checkpoint), str(run.new_checkpoint),
        "--log-key", str(run.vkey), "--proof", str(forged),
    )  # fmt: skip
    assert result.returncode == 4, result.stdout + result.stderr
    assert "FAIL consistency" in result.stdout


def test_a_receipt_checks_on_the_chain_when_asked(run: Run) -> None:
    chain = f"http://127.0.0.1:{run.up.env['GATEWAY_ANVIL_PORT']}"
    result = cli(
        "verify", "--receipt", str(run.receipts[0]), str(run.files[0]),
        "--log-key", str(run.vkey), "--chain", chain,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("contract", "chain id", "transaction", "batch root", "log root"):
        assert f"ok   {check}:" in result.stdout


def test_with_the_gateway_stopped_the_cli_verifies_50_receipts_offline(run: Run) -> None:
    assert run.up.stop() == 0
    args = [a for r, f in zip(run.receipts, run.files, strict=True) for a in ("--receipt", str(r))]
    started = time.monotonic()
    result = cli("verify", *args, *map(str, run.files), "--log-key", str(run.vkey))
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert result.stdout.count(": VERIFIED") == FIRST
    sizes = [p.read_text().split("\n")[1] for p in (run.old_checkpoint, run.new_checkpoint)]
    proof = len(json.loads(run.proof.read_text())["proof"])
    print(
        f"\n{FIRST} receipts verified offline by one CLI run in {elapsed:.1f} s; log sizes "
        f"{sizes[0]} -> {sizes[1]} batches over {LATER} images, consistency proof of {proof} "
        f"nodes; {run.seconds}"
    )


def test_a_tampered_file_fails_offline(run: Run, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered.dcm"
    tampered.write_bytes(run.files[1].read_bytes())
    flip_pixel_byte(tampered)
    result = cli(
        "verify", "--receipt", str(run.receipts[1]), str(tampered), "--log-key", str(run.vkey)
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "FAIL file" in result.stdout
    other = cli(
        "verify", "--receipt", str(run.receipts[1]), str(run.files[2]), "--log-key", str(run.vkey)
    )
    assert other.returncode == 3


def test_a_tampered_receipt_fails_offline(run: Run, tmp_path: Path) -> None:
    receipt = json.loads(run.receipts[3].read_text())
    receipt["instance"]["patient_key"] = "11" * 32  # claimed for another patient
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(receipt))
    result = cli("verify", "--receipt", str(edited), str(run.files[3]), "--log-key", str(run.vkey))
    assert result.returncode == 4, result.stdout + result.stderr
    assert "FAIL batch" in result.stdout

    receipt = json.loads(run.receipts[3].read_text())
    receipt["batch"]["root"] = "22" * 32
    receipt["batch"]["proof"] = []  # a batch of one, the file's own leaf... with another root
    edited.write_text(json.dumps(receipt))
    result = cli("verify", "--receipt", str(edited), str(run.files[3]), "--log-key", str(run.vkey))
    assert result.returncode == 4, result.stdout + result.stderr

    receipt = json.loads(run.receipts[3].read_text())
    lines = receipt["checkpoint"].split("\n")
    lines[1] = str(int(lines[1]) + 1)  # a bigger log than was signed
    receipt["checkpoint"] = "\n".join(lines)
    edited.write_text(json.dumps(receipt))
    result = cli("verify", "--receipt", str(edited), str(run.files[3]), "--log-key", str(run.vkey))
    assert result.returncode == 4, result.stdout + result.stderr
    assert "FAIL checkpoint" in result.stdout


def test_a_wrong_log_key_fails_offline(run: Run, tmp_path: Path) -> None:
    name = parse_vkey(run.vkey.read_text()).name  # the same name, another key
    impostor = tmp_path / "impostor.vkey"
    impostor.write_text(verifier_of(Ed25519PrivateKey.generate(), name).vkey())
    result = cli(
        "verify", "--receipt", str(run.receipts[0]), str(run.files[0]), "--log-key", str(impostor)
    )
    assert result.returncode == 4, result.stdout + result.stderr
    assert "FAIL checkpoint: no signature by the log key" in result.stdout
