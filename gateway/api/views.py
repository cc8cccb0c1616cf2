"""Ledger views: the seed's per-patient and per-recorder (doctor) records, a page at a time.

No PatientID is ever part of a URL (proxies and access logs keep URLs): a role allowed
patient data turns one into its pseudonymous key with ``POST /v1/patients/key`` (the
PatientID in the body), and the records are read by that key,
``GET /v1/patients/records?patient_key=<hex>``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field, NonNegativeInt
from web3 import Web3

from gateway.api.deps import ReadingRecords, SeeingPatientData, ServicesDep
from gateway.api.pages import LINK_HEADER, CursorParam, Limit, Page, Pager, slice_after
from gateway.api.problems import problem_responses
from gateway.trust.views import BatchSummary, LedgerRecord

router = APIRouter(
    prefix="/v1", tags=["records"], responses=problem_responses(401, 403, 422, 500, 502, 503)
)

#: Records in ledger order, ``(block_number, record_key)``; batches by id.
RecordKey = tuple[NonNegativeInt, str]
PATIENT_RECORDS: Pager[RecordKey] = Pager("patient-records", RecordKey)
RECORDER_RECORDS: Pager[RecordKey] = Pager("recorder-records", RecordKey)
BATCHES: Pager[int] = Pager("batches", NonNegativeInt)

PATIENT_KEY_PATTERN = r"^[0-9a-f]{64}$"


def record_order(record: LedgerRecord) -> RecordKey:
    return (record.block_number, record.record_key)


class PatientIdentity(BaseModel):
    """A patient as the modality names them: patient data, sent in a body only."""

    patient_id: str = Field(min_length=1, max_length=64, description="PatientID (0010,0020)")
    issuer: str = Field("", max_length=64, description="IssuerOfPatientID (0010,0021)")


class PatientKey(BaseModel):
    """The pseudonym the ledger names a patient by (HMAC of issuer and PatientID)."""

    patient_key: str = Field(pattern=PATIENT_KEY_PATTERN, description="64 lowercase hex digits")


class PatientRecordsPage(Page[LedgerRecord]):
    """A page of a patient's ledger records, oldest first."""

    patient_key: str
    xrayhash_count: int = Field(description="the contract's getXrayhashCount for the patient")


class RecorderRecordsPage(Page[LedgerRecord]):
    """A page of the records an account wrote, oldest first."""

    recorder: str
    name: str
    roles: list[str]


@router.post("/patients/key", response_model=PatientKey, responses=problem_responses(400))
def patient_key(
    patient: PatientIdentity, services: ServicesDep, who: SeeingPatientData
) -> PatientKey:
    """The pseudonymous key of a patient, for ``GET /v1/patients/records``. Roles allowed
    patient data only; the PatientID is neither stored nor logged."""
    key = services.records.patient_key(patient.patient_id, issuer=patient.issuer)
    return PatientKey(patient_key=key.hex())


@router.get("/patients/records", response_model=PatientRecordsPage, responses=LINK_HEADER)
def patient_records(
    patient_key: Annotated[
        str, Query(pattern=PATIENT_KEY_PATTERN, description="from `POST /v1/patients/key`")
    ],
    services: ServicesDep,
    who: ReadingRecords,
    request: Request,
    response: Response,
    limit: Limit = 100,
    cursor: CursorParam = None,
) -> PatientRecordsPage:
    """Every ledger record of a patient, by pseudonymous key, oldest first."""
    after = PATIENT_RECORDS.decode(cursor)
    found = services.records.patient(bytes.fromhex(patient_key))
    items, next_key = slice_after(found.records, record_order, after=after, limit=limit)
    return PatientRecordsPage(
        patient_key=found.patient_key,
        xrayhash_count=found.xrayhash_count,
        items=items,
        next_cursor=PATIENT_RECORDS.next_cursor(request, response, next_key),
    )


Address = Annotated[
    str,
    Path(pattern=r"^0x[0-9a-fA-F]{40}$", description="an Ethereum account address (any case)"),
]


def checksummed(address: str) -> str:
    # Any case is an address; a mixed-case one need not carry a valid EIP-55 checksum.
    return Web3.to_checksum_address(address.lower())


@router.get(
    "/recorders/{address}/records", response_model=RecorderRecordsPage, responses=LINK_HEADER
)
def recorder_records(
    address: Address,
    services: ServicesDep,
    who: ReadingRecords,
    request: Request,
    response: Response,
    limit: Limit = 100,
    cursor: CursorParam = None,
) -> RecorderRecordsPage:
    """Every record an account (the gateway's recorder, a doctor) wrote, oldest first."""
    after = RECORDER_RECORDS.decode(cursor)
    found = services.records.recorder(checksummed(address))
    items, next_key = slice_after(found.records, record_order, after=after, limit=limit)
    return RecorderRecordsPage(
        recorder=found.recorder,
        name=found.name,
        roles=found.roles,
        items=items,
        next_cursor=RECORDER_RECORDS.next_cursor(request, response, next_key),
    )


@router.get(
    "/recorders/{address}/batches", response_model=Page[BatchSummary], responses=LINK_HEADER
)
def recorder_batches(
    address: Address,
    services: ServicesDep,
    who: ReadingRecords,
    request: Request,
    response: Response,
    limit: Limit = 100,
    cursor: CursorParam = None,
) -> Page[BatchSummary]:
    """Every Merkle batch an account anchored, by batch id."""
    after = BATCHES.decode(cursor)
    batches = sorted(services.records.recorder(checksummed(address)).batches, key=batch_order)
    items, next_key = slice_after(batches, batch_order, after=after, limit=limit)
    return BATCHES.page(request, response, items, next_key)


def batch_order(batch: BatchSummary) -> int:
    return batch.batch_id
