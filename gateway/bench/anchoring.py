"""The seed paper's workload on the ledger: hash 100 chest images, anchor them two ways.

The seed paper recorded 100 chest X-ray hashes one transaction per image in 56.8 s. Here,
on a fresh anvil with the xray contract deployed and a recorder granted (through
``gateway/ledger``):

- hashing: the gateway's fingerprint (dataset and pixel digests), header and HMAC keys
  of every file, as the fingerprint stage computes them;
- batched: the RFC 6962 tree of the 100 leaves and one ``recordBatch`` (until its
  receipt), after a one-leaf warm-up batch that pays the contract's one-time cost; every
  inclusion proof is then checked against the anchored root;
- one by one: 100 ``recordImage`` transactions, each waited for, as the seed did.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eth_account import Account

from gateway.core import keys
from gateway.core.fingerprint import fingerprint_and_header
from gateway.ingest.stages import AnchorItem
from gateway.ledger import MerkleTree, UserType, XrayLedger, connect, deploy, leaf_hash
from gateway.ledger.anvil import Anvil
from gateway.procs import free_port

Progress = Callable[[str], None]


def seed_anchoring(*, workdir: Path, files: list[Path], say: Progress) -> dict[str, Any]:
    """Hashing and anchoring times of ``files``, batched and one by one, with gas."""
    root = workdir / "anchoring"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    anvil = Anvil(state_dir=root, port=free_port())
    anvil.start()
    try:
        admin, recorder = Account.create(), Account.create()
        for account in (admin, recorder):
            anvil.fund(account.address)
        w3 = connect(anvil.url)
        address, _ = deploy(w3, admin)
        XrayLedger(w3, address, account=admin).set_permission(
            recorder.address, "bench", UserType.RECORDER
        )
        ledger = XrayLedger(w3, address, account=recorder)
        pseudonym_key = secrets.token_bytes(32)

        say(f"hashing {len(files)} chest images")
        start = time.perf_counter()
        items = []
        for path in files:
            with path.open("rb") as stream:
                fp, header = fingerprint_and_header(stream)
            items.append(
                AnchorItem(
                    record_key=keys.record_key(pseudonym_key, header.sop_instance_uid),
                    patient_key=keys.patient_key(
                        pseudonym_key, header.issuer_of_patient_id, header.patient_id
                    ),
                    digest=fp.digest,
                    pixel_digest=fp.pixel_digest,
                    body_part=header.body_part,
                    modality=header.modality,
                )
            )
        hash_s = time.perf_counter() - start
        total_bytes = sum(p.stat().st_size for p in files)

        # The contract's first batch also initialises its batch counter (a zero-to-nonzero
        # store, about 17k gas once per contract): anchor one single-leaf batch first, so
        # the measured batch costs what every later one does.
        _, first = ledger.record_batch(root=hashlib.sha256(b"bench warm-up").digest(), count=1)

        say(f"anchoring {len(items)} images in one recordBatch")
        start = time.perf_counter()
        leaves = [
            leaf_hash(
                record_key=i.record_key,
                patient_key=i.patient_key,
                digest=i.digest,
                pixel_digest=i.pixel_digest,
            )
            for i in items
        ]
        tree = MerkleTree(leaves)
        proofs = [tree.proof(n) for n in range(tree.size)]
        batch_id, batch = ledger.record_batch(root=tree.root, count=tree.size)
        batched_s = time.perf_counter() - start
        verified = sum(
            ledger.verify_batch_member(leaf=leaf, proof=proof, batch_id=batch_id)
            for leaf, proof in zip(leaves, proofs, strict=True)
        )

        say(f"anchoring {len(items)} images one recordImage each")
        start = time.perf_counter()
        single_gas = 0
        for item in items:
            single_gas += ledger.record_image(**asdict(item)).gas_used
        single_s = time.perf_counter() - start
    finally:
        anvil.stop()
        shutil.rmtree(root, ignore_errors=True)
    n = len(items)
    return {
        "images": n,
        "bytes": total_bytes,
        "hash_s": round(hash_s, 4),
        "anchor_batched_s": round(batched_s, 4),
        "anchor_single_s": round(single_s, 4),
        "anchor_images_per_s_batched": round(n / batched_s, 1),
        "anchor_images_per_s_single": round(n / single_s, 1),
        "gas_batch_tx": batch.gas_used,
        "gas_first_batch_tx": first.gas_used,
        "gas_per_image_batched": round(batch.gas_used / n, 1),
        "gas_per_image_single": round(single_gas / n, 1),
        "batch_proofs_verified": verified,
        "hash_plus_batched_s": round(hash_s + batched_s, 4),
        "hash_plus_single_s": round(hash_s + single_s, 4),
        "seed_paper_s": 56.8,
    }
