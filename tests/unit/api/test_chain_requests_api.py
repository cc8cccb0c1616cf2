"""``GET /v1/chain-requests/{id}``: where a write that answered 503 ``chain-request-pending``
stands (queued, then done with its transaction), for the roles that grant or erase only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.api.problems import PROBLEM
from gateway.errors import ChainRequestPending
from gateway.index.db import Index
from gateway.ingest.chain_requests import QueuedChain
from tests.unit.api.test_limits import StandInVerifier, build, serve
from tests.unit.ingest.test_chain_requests import KEY_A, _Chain, _loop


@pytest.fixture
def verifier() -> Iterator[StandInVerifier]:
    stand_in = StandInVerifier()
    yield stand_in
    stand_in.release.set()


def test_a_pending_write_is_looked_up_by_the_id_its_503_gave(
    tmp_path: Path, verifier: StandInVerifier
) -> None:
    index = Index(tmp_path / "index.sqlite")
    app, token = build(tmp_path, verifier)
    queued = QueuedChain(index=index, node="n1", ring=lambda: None, wait_s=0.05)
    app.state.services.chain_queue = queued
    auditor = app.state.services.tokens.issue(name="audit-desk", role="auditor")
    with pytest.raises(ChainRequestPending) as pending:  # no worker: the caller stops waiting
        queued.retire_image(record_key=KEY_A, reason="erased")
    request_id = pending.value.request_id
    with serve(app) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        waiting = client.get(f"/v1/chain-requests/{request_id}")
        assert _loop(index, _Chain()).step()  # the anchoring worker sends it
        done = client.get(f"/v1/chain-requests/{request_id}")
        unknown = client.get(f"/v1/chain-requests/{request_id + 1}")
        malformed = client.get("/v1/chain-requests/0")
        refused = client.get(
            f"/v1/chain-requests/{request_id}", headers={"Authorization": f"Bearer {auditor}"}
        )
    assert waiting.status_code == 200, waiting.text
    assert {k: waiting.json()[k] for k in ("kind", "state", "node", "asked_by", "tx_hash")} == {
        "kind": "retire", "state": "queued", "node": "n1", "asked_by": "erasure", "tx_hash": None,
    }  # fmt: skip
    assert done.status_code == 200
    assert (done.json()["state"], done.json()["tx_hash"]) == ("done", f"0x{1:064x}")
    assert done.json()["done_at"] is not None and done.json()["block_number"] == 11
    assert unknown.status_code == 404 and unknown.headers["content-type"] == PROBLEM
    assert malformed.status_code == 422
    assert refused.status_code == 403
