"""How many times the ledger holds an instance: single records plus batches proven to hold it."""

from __future__ import annotations

from pathlib import Path

from gateway.core.merkle import decode_proof, leaf_hash
from gateway.index.engine import connect
from gateway.ledger import XrayLedger


def records_of(index_path: Path | str, ledger: XrayLedger, uid: str, record_key: bytes) -> int:
    """``ImageRecorded``/``ImageSuperseded`` events for ``record_key``, plus every batch on
    chain whose root one of the UID's index rows is proven (leaf and proof) to be under.

    Batches are found through the index's persisted batches (``batch_members``), each checked
    on chain by its root (``batchIdOf``) and, where the row kept its proof, by the proof:
    a row that joined two batches that both landed counts twice. ``index_path`` is the
    index's SQLite file or its ``postgresql://`` URL.
    """
    events = sum(
        len(ledger.events(name, filters={"recordKey": record_key}))
        for name in ("ImageRecorded", "ImageSuperseded")
    )
    db = connect(index_path, readonly=True)
    try:
        found = db.execute(
            "SELECT DISTINCT b.root, i.patient_key, i.digest, i.pixel_digest, i.batch_id, i.proof"
            " FROM batch_members m JOIN batches b ON b.id = m.batch"
            " JOIN instances i ON i.id = m.row_id WHERE i.sop_instance_uid = ?",
            (uid,),
        ).fetchall()
    finally:
        db.close()
    batches = 0
    for root, patient_key, digest, pixel_digest, batch_id, proof in found:
        on_chain = ledger.batch_id_of(bytes(root))
        if not on_chain:
            continue
        if on_chain == batch_id and proof is not None:
            leaf = leaf_hash(
                record_key=record_key, patient_key=bytes(patient_key), digest=bytes(digest),
                pixel_digest=bytes(pixel_digest),
            )  # fmt: skip
            assert ledger.verify_batch_member(
                leaf=leaf, proof=decode_proof(bytes(proof)), batch_id=on_chain
            ), f"{uid}: the index's proof does not lead to batch {on_chain}"
        batches += 1
    return events + batches
