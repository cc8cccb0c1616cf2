"""GET /v1/access on a real uvicorn: roles, the one-of query, the cursor, and the proofs."""

from __future__ import annotations

from pathlib import Path

import httpx

from gateway.index.db import Index
from gateway.trust.access_journal import AccessJournal
from gateway.trust.trail import Trail
from tests.unit.api.test_limits import StandInVerifier, build, serve
from tests.unit.api.test_limits import verifier as verifier  # the fixture

KEY = b"p" * 32


def test_auditors_page_through_a_study_and_a_reader_clinicians_are_refused(
    tmp_path: Path, verifier: StandInVerifier
) -> None:
    app, admin = build(tmp_path, verifier)
    services = app.state.services
    index = Index(tmp_path / "index.sqlite")
    try:
        services.trail = Trail(index, pseudonym_key=KEY)
        journal = AccessJournal(tmp_path / "access.sqlite")
        for i in range(7):
            journal.append(who="alice", who_kind="orthanc-user", route="rest", verdict="intact",
                           served=True, sop_instance_uid=f"1.2.{i}", study_instance_uid="1.2")  # fmt: skip
        journal.close()
        services.trail.import_journal(tmp_path / "access.sqlite", source="plugin:n")
        auditor = services.tokens.issue(name="audrey", role="auditor")
        clinician = services.tokens.issue(name="cleo", role="clinician")
        with serve(app) as client:

            def get(token: str, **params: str | int) -> httpx.Response:
                return client.get(
                    "/v1/access", params=params, headers={"Authorization": f"Bearer {token}"}
                )

            assert get(clinician, study="1.2").status_code == 403
            assert get(auditor).status_code == 422
            assert get(auditor, study="1.2", user="alice").status_code == 422
            seen: list[dict[str, object]] = []
            after = 0
            while True:
                page = get(auditor, study="1.2", limit=3, after=after).json()
                seen += page["entries"]
                if page["next"] is None:
                    break
                after = page["next"]
            assert [e["sop_instance_uid"] for e in seen] == [f"1.2.{i}" for i in range(7)]
            assert all(e["anchored"] is False and e["proof"] is None for e in seen)
            assert len(get(admin, user="alice").json()["entries"]) == 7
            assert get(admin, user="nobody").json() == {"entries": [], "next": None}
    finally:
        index.close()
