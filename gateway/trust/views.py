"""The seed paper's ledger views: every record of a patient, every record of a recorder (doctor).

Both are served from the contract's events (``ImageRecorded``, ``ImageSuperseded``,
``BatchAnchored``). Batched images have no per-image event: their membership comes from
the index's inclusion proofs, each checked against the batch root on chain before it is
listed. The patient is named on chain only by ``patient_key``; a caller allowed patient
data turns a PatientID into that key here (:meth:`RecordViews.patient_key`), and the
views are asked by key, so that no PatientID travels in a URL.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core import keys
from gateway.index.db import Index
from gateway.ledger import XrayLedger
from gateway.trust.claims import claim_of, proving_batch


@dataclass(frozen=True)
class LedgerRecord:
    """One image version as the ledger holds it (no patient data)."""

    record_key: str
    digest: str
    pixel_digest: str
    version: int
    recorder: str
    recorder_name: str
    tx_hash: str
    block_number: int
    body_part: str | None = None
    modality: str | None = None
    sop_instance_uid: str | None = None
    batch_id: int | None = None


@dataclass(frozen=True)
class PatientRecords:
    """The seed's ``getXrayhashCount``/``getXrayhash`` view, with evidence per record."""

    patient_key: str
    xrayhash_count: int
    records: list[LedgerRecord]


@dataclass(frozen=True)
class BatchSummary:
    """One batch a recorder anchored."""

    batch_id: int
    root: str
    count: int
    tx_hash: str
    block_number: int


@dataclass(frozen=True)
class RecorderRecords:
    """Everything one account recorded."""

    recorder: str
    name: str
    roles: list[str]
    records: list[LedgerRecord]
    batches: list[BatchSummary]


class RecordViews:
    """Builds the views from the ledger (and the index, for UIDs and batch proofs)."""

    def __init__(self, *, ledger: XrayLedger, pseudonym_key: bytes, index: Index | None) -> None:
        self.ledger = ledger
        self.pseudonym_key = pseudonym_key
        self.index = index
        self._names: dict[str, str] = {}

    def _name(self, address: str) -> str:
        if address not in self._names:
            self._names[address] = self.ledger.name_of(address)
        return self._names[address]

    def _uid_of(self, record_key: bytes) -> str | None:
        if self.index is None:
            return None
        rows = self.index.by_record_key(record_key)
        return rows[0].sop_instance_uid if rows else None

    def _from_events(self, filters: dict[str, object]) -> list[LedgerRecord]:
        found: list[LedgerRecord] = []
        for name in ("ImageRecorded", "ImageSuperseded"):
            for event in self.ledger.events(name, filters=filters):
                args = event.args
                record_key = bytes(args["recordKey"])  # type: ignore[call-overload]
                recorder = str(args["recorder"])
                found.append(
                    LedgerRecord(
                        record_key=record_key.hex(),
                        digest=bytes(args["digest"]).hex(),  # type: ignore[call-overload]
                        pixel_digest=bytes(args["pixelDigest"]).hex(),  # type: ignore[call-overload]
                        version=int(args.get("version", 1)),  # type: ignore[call-overload]
                        recorder=recorder,
                        recorder_name=self._name(recorder),
                        tx_hash=event.tx_hash,
                        block_number=event.block_number,
                        body_part=str(args["bodyPart"]) if "bodyPart" in args else None,
                        modality=str(args["modality"]) if "modality" in args else None,
                        sop_instance_uid=self._uid_of(record_key),
                    )
                )
        return found

    def _from_batches(
        self, *, patient_key: bytes | None, recorder: str | None
    ) -> list[LedgerRecord]:
        if self.index is None:
            return []
        found: list[LedgerRecord] = []
        for row in self.index.batched():
            if patient_key is not None and row.patient_key != patient_key:
                continue
            claim = claim_of(row)
            batch = proving_batch(self.ledger, claim) if claim is not None else None
            if claim is None or batch is None:
                continue  # the index claims what the chain does not hold: not a ledger record
            if recorder is not None and batch.recorder.lower() != recorder.lower():
                continue
            found.append(
                LedgerRecord(
                    record_key=claim.record_key.hex(),
                    digest=claim.digest.hex(),
                    pixel_digest=claim.pixel_digest.hex(),
                    version=row.version or 1,
                    recorder=batch.recorder,
                    recorder_name=self._name(batch.recorder),
                    tx_hash=row.tx_hash or "",
                    block_number=batch.block_number,
                    body_part=row.body_part,
                    modality=row.modality,
                    sop_instance_uid=row.sop_instance_uid,
                    batch_id=claim.batch_id,
                )
            )
        return found

    def patient_key(self, patient_id: str, *, issuer: str = "") -> bytes:
        """The pseudonymous key the ledger names the patient ``patient_id`` (of ``issuer``) by."""
        return keys.patient_key(self.pseudonym_key, issuer, patient_id)

    def patient(self, patient_key: bytes) -> PatientRecords:
        """Every record of the patient named on chain by ``patient_key``."""
        records = self._from_events({"patientKey": patient_key})
        records += self._from_batches(patient_key=patient_key, recorder=None)
        records.sort(key=lambda r: (r.block_number, r.record_key))
        return PatientRecords(
            patient_key=patient_key.hex(),
            xrayhash_count=self.ledger.xrayhash_count(patient_key),
            records=records,
        )

    def recorder(self, address: str) -> RecorderRecords:
        """Every record and batch the account ``address`` wrote."""
        records = self._from_events({"recorder": address})
        records += self._from_batches(patient_key=None, recorder=address)
        records.sort(key=lambda r: (r.block_number, r.record_key))
        batches = [
            BatchSummary(
                batch_id=int(event.args["batchId"]),  # type: ignore[call-overload]
                root=bytes(event.args["root"]).hex(),  # type: ignore[call-overload]
                count=int(event.args["count"]),  # type: ignore[call-overload]
                tx_hash=event.tx_hash,
                block_number=event.block_number,
            )
            for event in self.ledger.events("BatchAnchored", filters={"recorder": address})
        ]
        return RecorderRecords(
            recorder=address,
            name=self._name(address),
            roles=self.ledger.roles_of(address),
            records=records,
            batches=batches,
        )
