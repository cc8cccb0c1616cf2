"""Batch claims: where they come from (the index, a gateway's API) and when the chain believes one."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.core.merkle import MerkleTree, decode_proof, encode_proof, leaf_hash
from gateway.errors import ConfigError
from gateway.trust.claims import BatchClaim, api_claims, claim_of, index_claims, proving_batch
from tests.unit.trust.world import World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


def test_proofs_and_claims_round_trip() -> None:
    leaves = [leaf_hash(record_key=bytes([i]) * 32, patient_key=b"p" * 32, digest=b"d" * 32,
                        pixel_digest=b"x" * 32) for i in range(7)]  # fmt: skip
    tree = MerkleTree(leaves)
    proof = tree.proof(5)
    assert decode_proof(encode_proof(proof)) == proof
    with pytest.raises(ValueError):
        decode_proof(encode_proof(proof)[:-1])
    claim = BatchClaim(record_key=bytes([5]) * 32, patient_key=b"p" * 32, digest=b"d" * 32,
                       pixel_digest=b"x" * 32, batch_id=3, proof=proof, version=1)  # fmt: skip
    assert BatchClaim.from_json(claim.to_json()) == claim


def test_the_index_claims_its_batched_versions_newest_first(world: World) -> None:
    image, single = world.images(2)
    (first,) = world.commit_batch([image])
    (again,) = world.commit_batch([image])  # the same version, anchored a second time
    world.commit(single)
    claims = index_claims(world.index)
    assert [c.batch_id for c in claims(image.uid)] == [again.batch_id, first.batch_id]
    assert claims(single.uid) == []  # a single record is no batch claim
    claim = claims(image.uid)[0]
    assert (claim.record_key, claim.digest, claim.tx_hash) == (
        image.record_key, image.fingerprint.digest, again.tx_hash,
    )  # fmt: skip
    assert encode_proof(claim.proof) == again.proof


def test_duplicates_rejected_rows_and_rows_without_leaf_fields_claim_nothing(world: World) -> None:
    (image,) = world.images(1)
    (row,) = world.commit_batch([image])
    assert claim_of(row) is not None
    for stage in ("duplicate", "rejected"):
        assert claim_of(dataclasses.replace(row, stage=stage)) is None
    for column in ("batch_id", "proof", "record_key", "patient_key", "digest", "pixel_digest"):
        assert claim_of(dataclasses.replace(row, **{column: None})) is None, column
    with pytest.raises(ValueError):
        claim_of(dataclasses.replace(row, proof=b"\x00" * 17))


def test_the_chain_believes_a_claim_only_when_its_proof_reaches_the_batch_root(
    world: World,
) -> None:
    images = world.images(3)
    world.commit_batch(images)
    other = world.commit_batch(world.images(3))
    claim = index_claims(world.index)(images[2].uid)[0]
    batch = proving_batch(world.ledger, claim)
    assert batch is not None and batch.batch_id == claim.batch_id
    forged = dataclasses.replace(claim, digest=b"\x01" * 32)
    moved = dataclasses.replace(claim, batch_id=other[0].batch_id or 0)
    unknown = dataclasses.replace(claim, batch_id=99)
    shrunk = dataclasses.replace(claim, proof=dataclasses.replace(claim.proof, size=2))
    for refuted in (forged, moved, unknown, shrunk):
        assert proving_batch(world.ledger, refuted) is None, refuted


def _gateway(answers: dict[str, httpx.Response], seen: list[httpx.Request]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.get(request.url.path, httpx.Response(404))

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_a_gateways_api_gives_claims_with_the_token_and_404_means_none() -> None:
    claim = BatchClaim(record_key=b"r" * 32, patient_key=b"p" * 32, digest=b"d" * 32,
                       pixel_digest=b"x" * 32, batch_id=4,
                       proof=MerkleTree([b"l" * 32, b"m" * 32]).proof(1))  # fmt: skip
    seen: list[httpx.Request] = []
    answers = {"/v1/instances/1.2.3/proof": httpx.Response(200, json=claim.to_json())}
    with _gateway(answers, seen) as client:
        claims = api_claims("https://gw.example/", token="s3cret", client=client)
        assert claims("1.2.3") == [claim]
        assert claims("1.2.4") == []
    assert [str(r.url) for r in seen] == [
        "https://gw.example/v1/instances/1.2.3/proof",
        "https://gw.example/v1/instances/1.2.4/proof",
    ]
    assert {r.headers["Authorization"] for r in seen} == {"Bearer s3cret"}


def test_a_gateway_answering_anything_else_is_a_config_error() -> None:
    answers = {
        "/v1/instances/1.2.3/proof": httpx.Response(401, json={"title": "Unauthorized"}),
        "/v1/instances/1.2.5/proof": httpx.Response(200, content=json.dumps({"batch_id": 1})),
    }
    with _gateway(answers, []) as client:
        claims = api_claims("https://gw.example", token="wrong", client=client)
        with pytest.raises(ConfigError, match=r"answered 401 for the proof of 1\.2\.3"):
            claims("1.2.3")
        with pytest.raises(KeyError):  # a malformed claim is refused, not believed
            claims("1.2.5")
