"""Verify routes: one instance, one study, an uploaded file; restore; a batched image's proof."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from gateway import keys
from gateway.api.deps import Restoring, ServicesDep, Verifying
from gateway.api.problems import Problem
from gateway.restore import restore
from gateway.verify import StudyVerdict, Verdict

router = APIRouter(prefix="/v1", tags=["verify"])

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
Uid = Annotated[str, PathParam(pattern=UID_PATTERN, max_length=64, description="a DICOM UID")]
MAX_UPLOAD = 4 << 30


@router.get("/instances/{sop_instance_uid}/verify", response_model=Verdict)
def verify_instance(sop_instance_uid: Uid, services: ServicesDep, who: Verifying) -> Verdict:
    """The verdict for one instance: Orthanc's copy vs the sealed original vs the ledger."""
    return services.verifier.instance(sop_instance_uid, show_phi=who.may("phi"))


@router.get("/studies/{study_instance_uid}/verify", response_model=StudyVerdict)
def verify_study(study_instance_uid: Uid, services: ServicesDep, who: Verifying) -> StudyVerdict:
    """Every instance of a study, each with its verdict, and how many have each status."""
    return services.verifier.study(study_instance_uid, show_phi=who.may("phi"))


@router.post(
    "/verify",
    response_model=Verdict,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/dicom": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def verify_file(request: Request, services: ServicesDep, who: Verifying) -> Verdict:
    """Is this exact DICOM file (the request body, ``application/dicom``) registered and unaltered?"""
    with tempfile.NamedTemporaryFile(prefix="xray-upload-", suffix=".dcm") as upload:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD:
                raise Problem(413, "Too large", f"uploads are limited to {MAX_UPLOAD} bytes")
            upload.write(chunk)
        if size == 0:
            raise Problem(422, "Empty body", "send the DICOM file as the request body")
        upload.flush()
        return await run_in_threadpool(
            services.verifier.file, Path(upload.name), show_phi=who.may("phi")
        )


@router.post("/instances/{sop_instance_uid}/restore", response_model=Verdict)
def restore_instance(sop_instance_uid: Uid, services: ServicesDep, who: Restoring) -> Verdict:
    """Put the verified sealed original back into Orthanc (admin only); returns the new verdict."""
    return restore(services.verifier, sop_instance_uid)


@router.get("/instances/{sop_instance_uid}/proof")
def instance_proof(
    sop_instance_uid: Uid, services: ServicesDep, who: Verifying
) -> dict[str, object]:
    """The batch claim of a batched image: its leaf fields and inclusion proof.

    It proves itself: ``xray-gateway verify --proofs`` checks it against the chain.
    """
    record = services.verifier.record(sop_instance_uid)
    claim = record.claim() if record is not None else None
    if claim is None:
        key = keys.record_key(services.verifier.pseudonym_key, sop_instance_uid).hex()[:12]
        raise Problem(404, "No batch proof", f"record {key}… is not anchored through a batch")
    return claim.to_json()
