"""The access trail's tests (tests/unit/trust/test_trail.py) on a PostgreSQL index: the
schema step, the import's ON CONFLICT, the serialized cut and the leased sends."""

from __future__ import annotations

import pytest

from tests.integration.postgres import PostgresCluster
from tests.unit.trust.test_trail import (  # noqa: F401  (run here on PostgreSQL)
    index,
    test_a_batch_mined_and_closed_while_the_audit_runs_is_checked_not_called_missing,
    test_a_batch_mined_but_not_yet_closed_by_its_sender_is_checked_not_called_missing,
    test_a_batch_whose_root_is_on_the_chain_already_is_closed_not_sent_again,
    test_batches_are_cut_once_anchored_and_every_proof_checks_against_the_chain,
    test_the_audit_finds_a_deleted_an_edited_and_a_vanished_batch,
    test_the_journal_is_imported_once_past_its_high_water_mark,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def location(postgres: PostgresCluster) -> str:
    return postgres.create_database()
