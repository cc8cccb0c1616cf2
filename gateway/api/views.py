"""Ledger views: the seed's per-patient and per-doctor records."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from web3 import Web3

from gateway.api.deps import ReadingRecords, ServicesDep
from gateway.api.problems import problem_responses
from gateway.trust.views import PatientRecords, RecorderRecords

router = APIRouter(
    prefix="/v1", tags=["records"], responses=problem_responses(401, 403, 422, 500, 502, 503)
)


@router.get("/patients/{patient_id}/records", response_model=PatientRecords)
def patient_records(
    patient_id: Annotated[str, Path(max_length=64)],
    services: ServicesDep,
    who: ReadingRecords,
    issuer: Annotated[str, Query(max_length=64, description="Issuer of Patient ID")] = "",
) -> PatientRecords:
    """Every ledger record of a patient. The PatientID is turned into its pseudonym here
    and is neither stored nor logged."""
    return services.records.patient(patient_id, issuer=issuer)


Address = Annotated[
    str,
    Path(pattern=r"^0x[0-9a-fA-F]{40}$", description="an Ethereum account address (any case)"),
]


@router.get("/recorders/{address}/records", response_model=RecorderRecords)
def recorder_records(
    address: Address, services: ServicesDep, who: ReadingRecords
) -> RecorderRecords:
    """Every record and batch an account (the gateway's recorder, a doctor) wrote."""
    # Any case is an address; a mixed-case one need not carry a valid EIP-55 checksum.
    return services.records.recorder(Web3.to_checksum_address(address.lower()))
