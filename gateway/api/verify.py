"""Verify routes: one instance, one study, an uploaded file; restore; a batched image's proof."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from gateway.api.deps import ReadingStudies, Restoring, ServicesDep, Uploading, Verifying
from gateway.api.limits import Limits, Upload
from gateway.api.problems import (
    EMPTY_BODY,
    INVALID_CONTENT_LENGTH,
    NO_BATCH_PROOF,
    NO_RECEIPT,
    NOT_READY,
    TOO_LARGE,
    TOO_MANY_UPLOADS,
    UPLOAD_AREA_FULL,
    UPLOAD_INTERRUPTED,
    Problem,
    ProblemType,
    problem_responses,
)
from gateway.core import keys
from gateway.errors import UploadAreaFull, UploadsBusy
from gateway.trust.restore import restore
from gateway.trust.verify import StudyVerdict, Verdict

router = APIRouter(
    prefix="/v1", tags=["verify"], responses=problem_responses(401, 403, 422, 500, 502, 503)
)

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
Uid = Annotated[str, PathParam(pattern=UID_PATTERN, max_length=64, description="a DICOM UID")]
# A client told to wait gets a hint, not a promise: an upload usually lasts seconds.
UPLOAD_RETRY_AFTER_S = 5


@router.get(
    "/instances/{sop_instance_uid}/verify", response_model=Verdict, responses=problem_responses(404)
)
def verify_instance(sop_instance_uid: Uid, services: ServicesDep, who: ReadingStudies) -> Verdict:
    """The verdict for one instance: Orthanc's copy vs the sealed original vs the ledger.

    A grantee token: only an instance of a study a standing grant covers (else 403).
    """
    services.allow_instance(who, sop_instance_uid, route="api:verify")
    verdict = services.verifier.instance(sop_instance_uid, show_phi=who.may("phi"))
    services.read_by(
        who, route="api:verify", verdict=verdict.status, sop_instance_uid=sop_instance_uid
    )
    return verdict


@router.get(
    "/studies/{study_instance_uid}/verify",
    response_model=StudyVerdict,
    responses=problem_responses(404),
)
def verify_study(
    study_instance_uid: Uid, services: ServicesDep, who: ReadingStudies
) -> StudyVerdict:
    """Every instance of a study, each with its verdict, and how many have each status.

    A grantee token: only a study a standing grant covers (else 403).
    """
    services.allow_study(who, study_instance_uid, route="api:verify-study")
    answer = services.verifier.study(study_instance_uid, show_phi=who.may("phi"))
    for verdict in answer.instances:
        services.read_by(
            who, route="api:verify-study", verdict=verdict.status,
            sop_instance_uid=verdict.sop_instance_uid, study_instance_uid=study_instance_uid,
        )  # fmt: skip
    return answer


@router.post(
    "/verify",
    response_model=Verdict,
    responses=problem_responses(400, 404, 413, 429, 507),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/dicom": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def verify_file(request: Request, services: ServicesDep, who: Uploading) -> Verdict:
    """Is this exact DICOM file (the request body, ``application/dicom``) registered and unaltered?

    Bounded: at most ``GATEWAY_MAX_UPLOAD_BYTES`` (413), ``GATEWAY_MAX_CONCURRENT_UPLOADS``
    at once (429), a per-token rate (429) and the upload area's quota (507).
    """
    limits = services.limits
    declared = _declared_length(request, limits)
    try:
        with limits.uploads.upload() as upload:
            if declared is not None:
                upload.reserve(declared)
            await _receive(request, upload, limits)
            if upload.size == 0:
                raise Problem(EMPTY_BODY, "send the DICOM file as the request body")
            assert upload.file is not None
            upload.file.flush()
            return await run_in_threadpool(
                services.verifier.file,
                upload.path,
                show_phi=who.may("phi"),
                scratch=limits.uploads.root,
                limit=limits.uploads.room(),
            )
    except UploadsBusy as exc:
        raise _busy(TOO_MANY_UPLOADS, f"{exc}; retry later") from None
    except UploadAreaFull as exc:
        raise _busy(UPLOAD_AREA_FULL, f"{exc}; retry later") from None


def _busy(kind: ProblemType, detail: str) -> Problem:
    return Problem(kind, detail, headers={"Retry-After": str(UPLOAD_RETRY_AFTER_S)})


def _too_large(limits: Limits) -> Problem:
    return Problem(TOO_LARGE, f"uploads are limited to {limits.max_upload_bytes} bytes")


def _declared_length(request: Request, limits: Limits) -> int | None:
    """The body's Content-Length, refused at once (413) above the cap; None when streamed."""
    header = request.headers.get("content-length")
    if header is None:
        return None
    if not header.isdigit():
        raise Problem(INVALID_CONTENT_LENGTH, "Content-Length is not a whole number")
    length = int(header)
    if length > limits.max_upload_bytes:
        raise _too_large(limits)
    return length


async def _receive(request: Request, upload: Upload, limits: Limits) -> None:
    """Write the body into ``upload``, counting bytes: past the cap is a 413 however it came."""
    try:
        async for chunk in request.stream():
            if upload.size + len(chunk) > limits.max_upload_bytes:
                raise _too_large(limits)
            upload.write(chunk)
    except ClientDisconnect:
        # The caller went away mid-upload: nobody reads this answer, and it is no error of ours.
        raise Problem(UPLOAD_INTERRUPTED, "the client closed the connection") from None


@router.post(
    "/instances/{sop_instance_uid}/restore",
    response_model=Verdict,
    responses=problem_responses(404, 409, 429),
)
def restore_instance(sop_instance_uid: Uid, services: ServicesDep, who: Restoring) -> Verdict:
    """Put the verified sealed original back into Orthanc (admin only); returns the new verdict."""
    verdict = restore(services.verifier, sop_instance_uid)
    services.read_by(
        who, route="api:restore", verdict=verdict.status, sop_instance_uid=sop_instance_uid
    )
    return verdict


@router.get("/instances/{sop_instance_uid}/proof", responses=problem_responses(404))
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
        raise Problem(NO_BATCH_PROOF, f"record {key}… is not anchored through a batch")
    return claim.to_json()


@router.get("/instances/{sop_instance_uid}/receipt", responses=problem_responses(404))
def instance_receipt(
    sop_instance_uid: Uid, services: ServicesDep, who: Verifying
) -> dict[str, object]:
    """The instance's receipt (``xray-receipt/1``): everything that proves its anchoring,
    for ``xray-gateway verify --receipt R FILE`` to check offline. No patient data.

    A batched image's receipt carries its batch proof, the batch's place in the
    append-only log and the signed checkpoint; a single record's names its transaction only.
    """
    if services.receipts is None:
        raise Problem(NOT_READY, "receipts are not offered by this gateway")
    receipt = services.receipts.of(sop_instance_uid)
    if receipt is None:
        key = keys.record_key(services.verifier.pseudonym_key, sop_instance_uid).hex()[:12]
        raise Problem(NO_RECEIPT, f"record {key}… is not anchored on the ledger")
    return receipt.to_json()
