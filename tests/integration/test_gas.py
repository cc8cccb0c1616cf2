"""Gas per operation on a real anvil, written to contracts/out/gas.json (the seeds' cost table)."""

from __future__ import annotations

import hashlib
import json

from gateway.ledger import (
    BatchedLeaf,
    MerkleTree,
    UserType,
    XrayLedger,
    connect,
    deploy,
    leaf_hash,
    verify_inclusion,
)
from gateway.ledger.anvil import Anvil
from gateway.procs import PROJECT_ROOT
from tests.conftest import Cast

GAS_REPORT = PROJECT_ROOT / "contracts" / "out" / "gas.json"


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _batch_leaves(n: int, tag: str) -> list[bytes]:
    return [
        leaf_hash(
            record_key=h(f"{tag}:rec:{i}"),
            patient_key=h(f"{tag}:pat:{i % 13}"),
            digest=h(f"{tag}:dig:{i}"),
            pixel_digest=h(f"{tag}:pix:{i}"),
        )
        for i in range(n)
    ]


def test_gas_report(anvil: Anvil, cast: Cast) -> None:
    w3 = connect(anvil.url)
    address, deployed = deploy(w3, cast.admin)
    admin = XrayLedger(w3, address, account=cast.admin)
    set_permission = admin.set_permission(cast.recorder.address, "xray-gateway", UserType.RECORDER)
    recorder = admin.as_account(cast.recorder)

    def image(label: str) -> dict[str, object]:
        return {
            "record_key": h("rec:" + label),
            "patient_key": h("patient:" + label),
            "digest": h("digest:" + label),
            "pixel_digest": h("pixels:" + label),
            "body_part": "CHEST",
            "modality": "DX",
        }

    record = recorder.record_image(**image("a"))  # type: ignore[arg-type]
    supersede = recorder.supersede_image(**{**image("a"), "digest": h("digest:a2")})  # type: ignore[arg-type]
    retire = recorder.retire_image(record_key=h("rec:a"), reason="duplicate")

    batches: dict[str, dict[str, int | float]] = {}
    for n in (1, 100, 256, 1000):
        leaves = _batch_leaves(n, f"b{n}")
        tree = MerkleTree(leaves)
        batch_id, anchor = recorder.record_batch(root=tree.root, count=n)
        # every member verifies against the root the chain holds
        batch = admin.batch_of(batch_id)
        assert batch.count == n
        assert all(
            verify_inclusion(leaf=leaf, proof=tree.proof(i), root=batch.root)
            for i, leaf in enumerate(leaves)
        )
        assert admin.verify_batch_member(
            leaf=leaves[-1], proof=tree.proof(n - 1), batch_id=batch_id
        )
        batches[str(n)] = {"gas": anchor.gas_used, "gas_per_image": round(anchor.gas_used / n, 1)}
        if n == 256:  # one member of a full default-size batch (proof checked on chain):
            # retired, and another given a new version (its first stored one)
            retire_batched = recorder.retire_batched_image(
                record_key=h("b256:rec:7"), patient_key=h(f"b256:pat:{7 % 13}"),
                digest=h("b256:dig:7"), pixel_digest=h("b256:pix:7"), batch_id=batch_id,
                proof=tree.proof(7), reason="duplicate",
            )  # fmt: skip
            leaf = BatchedLeaf(
                patient_key=h(f"b256:pat:{8 % 13}"), digest=h("b256:dig:8"),
                pixel_digest=h("b256:pix:8"), batch_id=batch_id, proof=tree.proof(8),
            )  # fmt: skip
            supersede_batched = recorder.supersede_batched_image(
                record_key=h("b256:rec:8"), leaf=leaf, patient_key=h(f"b256:pat:{8 % 13}"),
                digest=h("b256:dig:8-v2"), pixel_digest=h("b256:pix:8"), body_part="CHEST",
                modality="DX",
            )  # fmt: skip

    # the access trail: one root for N read entries, a batch of kind Access
    access: dict[str, dict[str, int | float]] = {}
    for n in (100, 1024):
        tree = MerkleTree(_batch_leaves(n, f"access{n}"))
        batch_id, anchor = recorder.record_access_batch(root=tree.root, count=n)
        assert admin.batch_kind_of(batch_id) == "access"
        access[str(n)] = {"gas": anchor.gas_used, "gas_per_entry": round(anchor.gas_used / n, 1)}

    # grants (issue #16): one study for a token grantee, then revoked
    grant_id, grant = recorder.grant_access(
        grantee=h("who:token:dr"), patient_key=h("patient:a"), study_key=h("study:a"),
        expires_at=admin.block_time(admin.head_block()) + 7 * 86400,
    )  # fmt: skip
    revoke_grant = recorder.revoke_access(grant_id)
    assert admin.grant_of(grant_id).revoked_by == cast.recorder.address
    assert admin.grants_of(h("patient:a")) == admin.grants_of(h("study:a")) == [grant_id]

    report = {
        "note": "Gas measured on anvil by tests/integration/test_gas.py; "
        "recordBatch anchors one RFC 6962 root for N images.",
        "deploy": deployed.gas_used,
        "setPermission": set_permission.gas_used,
        "recordImage": record.gas_used,
        "supersedeImage": supersede.gas_used,
        "retireImage": retire.gas_used,
        "retireBatchedImage_256": retire_batched.gas_used,
        "supersedeBatchedImage_256": supersede_batched.gas_used,
        "recordBatch": batches,
        "recordAccessBatch": access,
        "grantAccess": grant.gas_used,
        "revokeAccess": revoke_grant.gas_used,
        "gas_per_image": {
            "single": record.gas_used,
            "batched_100": batches["100"]["gas_per_image"],
            "batched_256": batches["256"]["gas_per_image"],
            "batched_1000": batches["1000"]["gas_per_image"],
            "saving_at_1000": round(record.gas_used / float(batches["1000"]["gas_per_image"]), 1),
        },
    }
    GAS_REPORT.write_text(json.dumps(report, indent=2) + "\n")
    assert float(batches["1000"]["gas_per_image"]) < record.gas_used / 100
    assert float(batches["256"]["gas_per_image"]) < 1000  # GATEWAY_BATCH_MAX's default
    # an access batch costs one more slot (its kind) than an image batch, never per entry
    assert access["1024"]["gas"] == access["100"]["gas"]
    assert float(access["100"]["gas_per_entry"]) < 1500
