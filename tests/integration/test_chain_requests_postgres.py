"""The chain-request queue's tests of tests/unit/ingest/test_chain_requests.py, on the index
in PostgreSQL (claims with ``SKIP LOCKED``, ids by ``RETURNING``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.index.db import Index
from tests.integration.postgres import PostgresCluster
from tests.unit.ingest.test_chain_requests import (  # noqa: F401 (collected here too)
    test_a_caller_stops_waiting_at_its_bound_and_the_request_stays_queued,
    test_a_caller_waits_for_the_outcome_and_is_told_a_refusal,
    test_a_request_left_in_flight_by_a_dead_worker_fails_and_is_never_sent_again,
    test_a_restarted_worker_fails_only_its_own_requests_left_in_flight,
    test_a_retirement_is_sent_by_the_worker_holding_the_records_owner_key,
    test_requests_are_sent_in_order_once_each_and_settled,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def index(postgres: PostgresCluster) -> Iterator[Index]:
    index = Index(postgres.create_database())
    yield index
    index.close()
