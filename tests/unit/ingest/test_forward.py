"""The forward stage's adapter: Orthanc's answer becomes the pipeline's outcome."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from gateway.ingest.forward import PacsForwarder
from gateway.pacs.client import ForwardResult

OURS, THEIRS = b"\x01" * 32, b"\x02" * 32


class AnsweringPacs:
    """Answers ``store`` with a set result, and notes what it was asked."""

    def __init__(self, result: ForwardResult) -> None:
        self.result = result
        self.asked: list[tuple[Path, bytes]] = []

    def store(self, path: Path, *, digest: bytes) -> ForwardResult:
        self.asked.append((path, digest))
        return self.result


def forwarder(result: ForwardResult) -> tuple[PacsForwarder, AnsweringPacs]:
    pacs = AnsweringPacs(result)
    return PacsForwarder(cast(Any, pacs)), pacs


def test_a_stored_instance_is_no_conflict(tmp_path: Path) -> None:
    adapter, pacs = forwarder(ForwardResult("abc-123", "Success", False, OURS, None))

    outcome = adapter.forward(tmp_path / "x.dcm", digest=OURS)

    assert (outcome.orthanc_id, outcome.conflict) == ("abc-123", None)
    assert pacs.asked == [(tmp_path / "x.dcm", OURS)]


def test_other_bytes_under_the_same_uid_are_a_conflict_naming_both_digests(
    tmp_path: Path,
) -> None:
    adapter, _ = forwarder(ForwardResult("abc-123", "AlreadyStored", True, OURS, THEIRS))

    outcome = adapter.forward(tmp_path / "x.dcm", digest=OURS)

    assert outcome.orthanc_id == "abc-123" and outcome.conflict is not None
    assert THEIRS.hex()[:16] in outcome.conflict and OURS.hex()[:16] in outcome.conflict


def test_a_conflict_whose_copy_could_not_be_read_still_says_so(tmp_path: Path) -> None:
    adapter, _ = forwarder(ForwardResult("abc-123", "AlreadyStored", True, OURS, None))

    outcome = adapter.forward(tmp_path / "x.dcm", digest=OURS)

    assert outcome.conflict is not None and "holds digest ?…" in outcome.conflict
