"""The plugin's view of the gateway's PostgreSQL index: only what the plugin reads."""

from __future__ import annotations

import re

from gateway.index import evidence_view
from gateway.index.db import COLUMNS
from gateway.index.queries import IS_FINGERPRINTED_VERSION
from gateway.orthanc_plugin import evidence


def selected(query: str) -> list[str]:
    match = re.match(r"SELECT (.*?) FROM", query)
    assert match is not None
    return [column.strip() for column in match.group(1).split(",")]


def test_the_view_reads_the_same_columns_as_the_sqlite_path_and_the_same_rule() -> None:
    assert selected(evidence_view.VERSIONS_SQL) == selected(evidence.VERSIONS_SQL)
    assert evidence_view.CREATE_VIEW.endswith(f"FROM instances WHERE {IS_FINGERPRINTED_VERSION}")
    assert "ORDER BY seq" in evidence_view.VERSIONS_SQL  # the row order, as ORDER BY id


def test_the_view_holds_no_column_the_plugin_does_not_read() -> None:
    read = set(selected(evidence.VERSIONS_SQL)) | {"sop_instance_uid"}
    assert set(evidence_view.COLUMNS) == read | {"seq"}
    view_columns = selected(evidence_view.CREATE_VIEW.split(" AS ", 1)[1])
    assert view_columns[0] == "id AS seq"
    # a computed column reads by its name: `(stage = 'erased') AS erased`
    assert {column.rsplit(" AS ", 1)[-1] for column in view_columns[1:]} == read
    table = set(COLUMNS)
    left_out = table - read - {"id"}
    for private in ("calling_aet", "study_instance_uid", "series_instance_uid", "object_name"):
        assert private in left_out


def test_the_triggers_show_a_row_by_the_views_own_rule() -> None:
    """The triggers' condition is the view's rule, on the trigger's row."""
    assert (
        evidence_view.fingerprinted_version("NEW").replace("NEW.", "") == IS_FINGERPRINTED_VERSION
    )


def test_an_update_notifies_when_any_column_of_the_view_changes() -> None:
    """Every column the view shows (and the stage behind ``erased``) is compared."""
    (updated,) = (s for s in evidence_view.TRIGGER_STATEMENTS if "xray_evidence_updated AFTER" in s)
    for name in evidence_view.COLUMNS:
        source = {"seq": "id", "erased": "stage = 'erased'"}.get(name, name)
        assert f"(OLD.{source})" in updated and f"(NEW.{source})" in updated, name
    assert "schema" not in updated and "calling_aet" not in updated
