"""The counted-versions rule: one definition, the same rows in SQL, in Python and for the plugin."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.index import queries
from gateway.index.db import DONE_STAGES, STAGES, Index
from gateway.index.queries import IS_FINGERPRINTED_VERSION, IS_VERSION, is_version
from gateway.orthanc_plugin.evidence import RecordBook
from gateway.procs import PROJECT_ROOT

CT = "1.2.840.10008.5.1.4.1.1.2"
UID = "1.2.3"
EVERY_STAGE = tuple(dict.fromkeys(STAGES + DONE_STAGES))


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    """One row of UID at every stage, each with its own digest, and one not yet fingerprinted."""
    index = Index(tmp_path / "index.sqlite")
    for n, stage in enumerate(EVERY_STAGE, start=1):
        row_id = index.add_received(
            entry_id=f"e{n}", sop_instance_uid=UID, sop_class_uid=CT, calling_aet="CT1", size=1
        )
        index.update(row_id, stage=stage, digest=bytes([n]) * 32, version=n, record_key=b"k" * 32)
    index.add_received(
        entry_id="unclaimed", sop_instance_uid=UID, sop_class_uid=CT, calling_aet="CT1", size=1
    )
    yield index
    index.close()


def test_duplicates_and_rejected_receptions_are_the_rows_that_are_not_versions(
    index: Index,
) -> None:
    counted = {stage for (stage,) in index.query(f"SELECT stage FROM instances WHERE {IS_VERSION}")}
    assert counted == {stage for stage in EVERY_STAGE if is_version(stage)}
    assert counted == {
        "fingerprint", "seal", "put", "anchor", "forward", "committed", "conflict", "failed",
        "erased",  # an erased version is still a version: verify and audit say `erased`
    }  # fmt: skip


def test_the_plugin_reads_the_fingerprinted_versions_the_index_counts(
    index: Index, tmp_path: Path
) -> None:
    fingerprinted = index.query(
        f"SELECT digest FROM instances WHERE sop_instance_uid = ? AND {IS_FINGERPRINTED_VERSION}"
        " ORDER BY id",
        (UID,),
    )
    expected = [row.digest for row in index.by_uid(UID) if is_version(row.stage) and row.digest]
    assert [digest for (digest,) in fingerprinted] == expected
    assert [v.digest for v in RecordBook(tmp_path / "index.sqlite").versions(UID)] == expected
    assert len(expected) == len(EVERY_STAGE) - 2  # the unclaimed row has no digest yet


def test_no_other_module_restates_the_rule_in_sql_or_python() -> None:
    restated = re.compile(
        r"NOT\s+IN\s*\(\s*'duplicate'|in \(\"duplicate\", \"rejected\"\)", re.IGNORECASE
    )
    found = [
        path.relative_to(PROJECT_ROOT).as_posix()
        for path in sorted((PROJECT_ROOT / "gateway").rglob("*.py"))
        if path != Path(queries.__file__) and restated.search(path.read_text(encoding="utf-8"))
    ]
    assert found == []
