"""The committed contract artifact matches the sources, and every custom error has a class."""

from __future__ import annotations

import hashlib
import subprocess

from gateway import errors
from gateway.ledger import load_artifact
from gateway.procs import PROJECT_ROOT

NODE_MODULES = PROJECT_ROOT / "node_modules"


def test_artifact_records_compiler_and_sources() -> None:
    artifact = load_artifact()
    assert artifact["compiler"]["name"] == "solcjs"
    assert artifact["compiler"]["version"].startswith("0.8.")
    assert artifact["bytecode"].startswith("0x60")
    assert {item["name"] for item in artifact["abi"] if item["type"] == "function"} >= {
        "setPermission", "removePermission", "getXrayhashCount", "getXrayhash", "recordImage",
        "supersedeImage", "recordBatch", "retireImage", "imageOf", "batchOf",
    }  # fmt: skip


def test_source_hashes_match_the_files_on_disk() -> None:
    """Fast staleness check: any edit under contracts/src or to OpenZeppelin changes a hash."""
    artifact = load_artifact()
    ours = {p.name for p in (PROJECT_ROOT / "contracts" / "src").glob("*.sol")}
    assert ours <= set(artifact["sources"]), "a contract source is missing from the artifact"
    for name, digest in artifact["sources"].items():
        path = PROJECT_ROOT / "contracts" / "src" / name if name in ours else NODE_MODULES / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, (
            f"{name} changed: run make contracts"
        )


def test_recompiling_gives_the_committed_artifact() -> None:
    """Full staleness check: solcjs recompiles and the output must equal contracts/out/Xray.json."""
    result = subprocess.run(
        ["node", str(PROJECT_ROOT / "contracts" / "build.js"), "--check"],
        capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_every_custom_error_in_the_abi_has_a_typed_exception() -> None:
    names = {item["name"] for item in load_artifact()["abi"] if item["type"] == "error"}
    assert names == set(errors.REVERTS)
    for name, cls in errors.REVERTS.items():
        assert issubclass(cls, errors.ContractRevert)
        assert cls.name == name == cls.__name__
