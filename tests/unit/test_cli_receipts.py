"""The auditor's commands, offline: ``verify --receipt`` and ``log-consistency --proof``.

Run through :func:`gateway.cli.main` with no ``GATEWAY_*`` settings at all: each answer is
an exit code (docs/receipts.md) and one line per check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import dicom_fixtures
from gateway.cli import main
from gateway.core.checkpoint import Checkpoint, sign, verifier_of
from gateway.core.tlog import consistency_proof, log_leaf_hash, tree_root
from tests.unit.core.test_receipt import KEY, ORIGIN, make_receipt


@pytest.fixture
def auditor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A work dir holding the log's vkey; no gateway settings in the environment."""
    for name in [n for n in __import__("os").environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "no-such-gateway"))
    (tmp_path / "log.vkey").write_text(verifier_of(KEY, ORIGIN).vkey() + "\n")
    return tmp_path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return dicom_fixtures.ct_series(tmp_path_factory.mktemp("ct"), 2, rows=16, cols=16)


def write_receipts(auditor: Path, files: list[Path]) -> list[Path]:
    paths = []
    for i, file in enumerate(files):
        path = auditor / f"r{i}.json"
        path.write_text(json.dumps(make_receipt(file).to_json()))
        paths.append(path)
    return paths


def test_receipts_verify_offline_with_exit_0(
    auditor: Path, files: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    r0, r1 = write_receipts(auditor, files)
    vkey = str(auditor / "log.vkey")
    code = main(
        ["verify", "--receipt", str(r0), "--receipt", str(r1), *map(str, files), "--log-key", vkey]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count(": VERIFIED") == 2 and "ok   log:" in out


def test_each_failure_has_its_exit_code(
    auditor: Path, files: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    r0, r1 = write_receipts(auditor, files)
    vkey = str(auditor / "log.vkey")
    assert main(["verify", "--receipt", str(r0), str(files[1]), "--log-key", vkey]) == 3
    other = auditor / "other.vkey"
    other.write_text(verifier_of(Ed25519PrivateKey.generate(), ORIGIN).vkey())
    assert main(["verify", "--receipt", str(r0), str(files[0]), "--log-key", str(other)]) == 4
    data = json.loads(r0.read_text())
    data["batch"]["proof"][0] = "00" * 32
    r0.write_text(json.dumps(data))
    assert main(["verify", "--receipt", str(r0), str(files[0]), "--log-key", vkey]) == 4
    # the first failing file decides: file 0's receipt is forged, file 1 is fine
    assert (
        main(
            [
                "verify",
                "--receipt",
                str(r1),
                "--receipt",
                str(r0),
                str(files[1]),
                str(files[0]),
                "--log-key",
                vkey,
            ]
        )
        == 4
    )
    data.update(anchoring="single", batch=None, log=None, checkpoint=None)
    r0.write_text(json.dumps(data))
    assert main(["verify", "--receipt", str(r0), str(files[0])]) == 6
    assert "only --chain can prove it" in capsys.readouterr().out


def test_unusable_inputs_are_an_error_not_a_verdict(
    auditor: Path, files: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    [r0, _] = write_receipts(auditor, files)
    assert main(["verify", "--receipt", str(r0), str(files[0])]) == 1  # no --log-key
    (auditor / "bad.json").write_text("{}")
    assert main(["verify", "--receipt", str(auditor / "bad.json"), str(files[0])]) == 1
    assert main(["verify", "--receipt", str(r0), str(auditor / "missing.dcm")]) == 1
    (auditor / "bad.vkey").write_text("not a key")
    assert (
        main(
            ["verify", "--receipt", str(r0), str(files[0]), "--log-key", str(auditor / "bad.vkey")]
        )
        == 1
    )
    assert capsys.readouterr().err.count("xray-gateway: error:") == 4


def test_log_consistency_from_a_saved_proof(
    auditor: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaves = [log_leaf_hash(i, bytes([i]) * 32) for i in range(1, 12)]
    old, new = auditor / "old", auditor / "new"
    old.write_text(sign(Checkpoint(origin=ORIGIN, size=5, root=tree_root(leaves[:5])), KEY))
    new.write_text(sign(Checkpoint(origin=ORIGIN, size=11, root=tree_root(leaves)), KEY))
    proof = auditor / "proof.json"
    nodes = [n.hex() for n in consistency_proof(leaves, 5)]
    proof.write_text(json.dumps({"first": 5, "second": 11, "proof": nodes}))
    args = ["log-consistency", str(old), str(new), "--log-key", str(auditor / "log.vkey")]
    assert main([*args, "--proof", str(proof)]) == 0
    assert "log consistency: VERIFIED" in capsys.readouterr().out
    proof.write_text(json.dumps({"proof": [*nodes[:-1], "00" * 32]}))
    assert main([*args, "--proof", str(proof)]) == 4
