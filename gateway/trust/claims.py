"""Batch claims: what someone says puts an image in an anchored batch, and where they come from.

A batched image has no record of its own on chain: only its batch's root and leaf count
are there. Whoever holds the image's leaf fields and inclusion proof can claim it is a
member; the claim is believed only once the proof leads to the root the chain holds
(:func:`proving_batch`, by the one rule :func:`gateway.core.merkle.claimed_in_batch`).
Claims come from the gateway's own index (:func:`index_claims`) or, for an auditor
checking files against the chain alone, from a gateway's API (:func:`api_claims`), which
need not be trusted for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.core.merkle import InclusionProof, claimed_in_batch, decode_proof
from gateway.errors import ConfigError, XrayUnknownBatch
from gateway.index.base import IndexRows
from gateway.index.db import Row
from gateway.index.queries import is_version
from gateway.ledger.base import LedgerReader
from gateway.ledger.types import Batch

if TYPE_CHECKING:
    import httpx


@dataclass(frozen=True)
class BatchClaim:
    """What someone says about a batched image; believed only once its proof meets the chain.

    The index makes these claims inside the gateway; an auditor's CLI may take them from
    the gateway's API (``GET /v1/instances/{uid}/proof``) without trusting it, because the
    proof either leads to a root anchored on chain or it does not.
    """

    record_key: bytes
    patient_key: bytes
    digest: bytes
    pixel_digest: bytes
    batch_id: int
    proof: InclusionProof
    version: int | None = None
    tx_hash: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "record_key": self.record_key.hex(),
            "patient_key": self.patient_key.hex(),
            "digest": self.digest.hex(),
            "pixel_digest": self.pixel_digest.hex(),
            "batch_id": self.batch_id,
            "leaf_index": self.proof.index,
            "size": self.proof.size,
            "proof": [node.hex() for node in self.proof.path],
            "version": self.version,
            "tx_hash": self.tx_hash,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchClaim:
        """Parse :meth:`to_json`'s form; raises ValueError/KeyError/TypeError on bad input."""
        return cls(
            record_key=bytes.fromhex(data["record_key"]),
            patient_key=bytes.fromhex(data["patient_key"]),
            digest=bytes.fromhex(data["digest"]),
            pixel_digest=bytes.fromhex(data["pixel_digest"]),
            batch_id=int(data["batch_id"]),
            proof=InclusionProof(
                index=int(data["leaf_index"]),
                size=int(data["size"]),
                path=tuple(bytes.fromhex(node) for node in data["proof"]),
            ),
            version=data.get("version"),
            tx_hash=data.get("tx_hash"),
        )


ClaimSource = Callable[[str], list[BatchClaim]]
"""Batch claims for a SOP Instance UID, newest first."""


def claim_of(row: Row) -> BatchClaim | None:
    """The batch claim an index row makes, or ``None`` for a row that makes none.

    A row claims when it is a version of an image (not a duplicate nor a rejected
    instance) with a batch id, an inclusion proof and its leaf fields. Raises ValueError
    when its proof is malformed.
    """
    if row.batch_id is None or row.proof is None or not is_version(row.stage):
        return None
    if not (row.record_key and row.patient_key and row.digest and row.pixel_digest):
        return None
    return BatchClaim(
        record_key=row.record_key,
        patient_key=row.patient_key,
        digest=row.digest,
        pixel_digest=row.pixel_digest,
        batch_id=row.batch_id,
        proof=decode_proof(row.proof),
        version=row.version,
        tx_hash=row.tx_hash,
    )


def index_claims(index: IndexRows) -> ClaimSource:
    """The claims the gateway's index makes (its rows with a batch id and a proof)."""

    def claims(uid: str) -> list[BatchClaim]:
        found = (claim_of(row) for row in reversed(index.by_uid(uid)))
        return [claim for claim in found if claim is not None]

    return claims


def api_claims(
    url: str, *, token: str, timeout: float = 30.0, client: httpx.Client | None = None
) -> ClaimSource:
    """The claims a gateway's API makes (``GET {url}/v1/instances/{uid}/proof``).

    ``client`` sends the requests (by default a new connection each, as ``httpx.get``);
    tests give one with a mock transport.

    Raises
    ------
    ConfigError
        The gateway answered anything but the proof (200) or "no batch proof" (404).
    """
    import httpx  # only an auditor's CLI asks another gateway: kept out of the API's start-up

    get = client.get if client is not None else httpx.get

    def claims(uid: str) -> list[BatchClaim]:
        reply = get(
            f"{url.rstrip('/')}/v1/instances/{uid}/proof",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        if reply.status_code == 404:
            return []
        if reply.status_code != 200:
            raise ConfigError(f"{url} answered {reply.status_code} for the proof of {uid}")
        return [BatchClaim.from_json(reply.json())]

    return claims


def proving_batch(ledger: LedgerReader, claim: BatchClaim) -> Batch | None:
    """The anchored batch ``claim`` is a proven member of, or ``None`` if it is not.

    ``None`` when the chain knows no such batch, or when the claim's proof does not lead
    from its leaf to that batch's root and leaf count: a claim the chain does not confirm.
    """
    try:
        batch = ledger.batch_of(claim.batch_id)
    except XrayUnknownBatch:
        return None
    proven = claimed_in_batch(
        record_key=claim.record_key, patient_key=claim.patient_key, digest=claim.digest,
        pixel_digest=claim.pixel_digest, proof=claim.proof, root=batch.root, count=batch.count,
    )  # fmt: skip
    return batch if proven else None


__all__ = [
    "BatchClaim",
    "ClaimSource",
    "api_claims",
    "claim_of",
    "index_claims",
    "proving_batch",
]
