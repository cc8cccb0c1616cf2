"""The grant sync checks of tests/unit/trust/test_grant_sync.py, on the index in PostgreSQL:
the upserts, the compare-and-set cursor and the reorg undo in PostgreSQL's SQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.index.db import Index
from tests.integration.postgres import PostgresCluster
from tests.unit.trust.test_grant_sync import (  # noqa: F401 (collected here too)
    test_a_grant_on_a_study_the_index_does_not_know_applies_once_it_arrives,
    test_a_grant_on_chain_for_an_address_is_imported_and_enforced,
    test_a_grant_the_gateway_wrote_keeps_its_names_whichever_came_first,
    test_a_reorg_to_a_shorter_chain_drops_what_is_gone,
    test_a_reorg_undoes_what_the_dropped_blocks_held,
    test_a_token_key_is_shown_by_the_token_name_and_an_unknown_one_by_its_key,
    test_importing_a_grant_the_gateway_wrote_first_changes_nothing,
    test_importing_again_changes_nothing_after_a_restart_or_on_another_node,
    test_the_cursor_moves_only_from_where_its_pass_read_it,
)
from tests.unit.trust.test_grants import populate

pytestmark = pytest.mark.integration


@pytest.fixture
def index(postgres: PostgresCluster) -> Iterator[Index]:
    index = populate(Index(postgres.create_database()))
    yield index
    index.close()
