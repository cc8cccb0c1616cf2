"""The grant checks of tests/unit/trust/test_grants.py, on the index in PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.index.db import Index
from tests.integration.postgres import PostgresCluster
from tests.unit.trust.test_grants import (  # noqa: F401 (collected here too)
    populate,
    test_a_grant_binds_the_token_id_so_a_new_token_of_the_name_inherits_nothing,
    test_a_patient_grant_covers_each_study_of_that_patient,
    test_a_revocation_is_kept_once_and_an_unknown_grant_is_said,
    test_a_row_from_before_ids_binds_the_legacy_id_of_its_name,
    test_a_study_grant_covers_that_study_only_and_only_for_its_grantee,
    test_the_refusal_says_expired_or_revoked_after_the_newest_grant,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def index(postgres: PostgresCluster) -> Iterator[Index]:
    index = populate(Index(postgres.create_database()))
    yield index
    index.close()
