"""Restore: put the verified sealed original back into Orthanc, in place of a tampered or missing copy."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

from gateway.errors import CannotRestore, GatewayError, InstanceMissing, UnknownInstance
from gateway.trust.verify import Verdict, Verifier

log = logging.getLogger(__name__)


def restore(verifier: Verifier, sop_instance_uid: str) -> Verdict:
    """Replace Orthanc's copy of an instance with its sealed original; returns the new verdict.

    The original is opened from the object store and must hash to the digest the ledger
    holds before Orthanc's copy is touched. Restoring an intact instance re-stores the
    same bytes, which changes nothing.

    Raises
    ------
    UnknownInstance
        Nobody knows the instance.
    CannotRestore
        No ledger record, a retired record, or no usable sealed original.
    """
    pacs = verifier.pacs
    if pacs is None:
        raise CannotRestore("no PACS configured to restore into")
    record = verifier.record(sop_instance_uid)
    if record is None:
        if pacs.find(sop_instance_uid) is None and verifier.index is None:
            raise UnknownInstance(f"no instance {sop_instance_uid} anywhere")
        raise CannotRestore(
            "the instance has no ledger record: there is no verified original to restore"
        )
    if record.retired:
        raise CannotRestore(f"the record is retired ({record.retire_reason}); it is not restored")
    with tempfile.TemporaryDirectory(prefix="xray-restore-") as scratch:
        original = Path(scratch) / "original.dcm"
        with original.open("w+b") as sink:
            try:
                opened = verifier.original(record, sink)
            except GatewayError as exc:
                raise CannotRestore(f"the sealed original cannot be used: {exc}") from exc
        if opened.digest != record.digest:
            raise CannotRestore("the sealed original does not hash to the recorded digest")
        orthanc_id = pacs.find(sop_instance_uid)
        if orthanc_id is not None:
            with contextlib.suppress(InstanceMissing):
                pacs.delete(orthanc_id)
        result = pacs.store(original, digest=record.digest)
    if verifier.index is not None:
        for row in verifier.index.by_record(record.record_key, record.digest):
            if row.stage in ("committed", "conflict"):
                verifier.index.update(row.id, orthanc_id=result.orthanc_id)
    log.warning(
        "restored record %s into Orthanc %s from its sealed original",
        record.record_key.hex()[:12], result.orthanc_id,
    )  # fmt: skip
    return verifier.instance(sop_instance_uid)
