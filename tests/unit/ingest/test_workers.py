"""Two pipelines on one index, as two worker processes: claims keep each step to one worker."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dicom_fixtures
from gateway.core.keys import Kek, Keyring
from gateway.index.db import Index
from gateway.ingest.memory import MemoryAnchorer, MemoryForwarder
from gateway.ingest.pipeline import Pipeline
from gateway.ingest.spool import Spool
from gateway.ingest.stages import AnchorItem, AnchorResult, ForwardOutcome
from gateway.store.memory import MemoryStore
from tests.unit.ingest.conftest import CT


class CountingAnchorer(MemoryAnchorer):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[bytes] = Counter()

    def anchor(self, item: AnchorItem, *, batched: Any = None) -> AnchorResult:
        self.calls[item.record_key] += 1
        return super().anchor(item, batched=batched)


class CountingForwarder(MemoryForwarder):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[bytes] = Counter()

    def forward(self, path: Path, *, digest: bytes) -> ForwardOutcome:
        self.calls[digest] += 1
        time.sleep(0.01)  # long enough for the other worker to look for the same row
        return super().forward(path, digest=digest)


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return dicom_fixtures.ct_series(tmp_path / "ct", 24, rows=16, cols=16)


def pipeline(tmp: Path, *, worker: str, anchors: bool, anchorer: MemoryAnchorer,
             forwarder: MemoryForwarder, store: MemoryStore) -> Pipeline:  # fmt: skip
    return Pipeline(
        index=Index(tmp / "index.sqlite"), spool=Spool(tmp / "spool", reserve_bytes=0),
        store=store, keyring=Keyring.of(Kek("kek-20261205-aaaaaaaa", bytes(range(32)))),
        pseudonym_key=b"k" * 32, anchorer=anchorer, forwarder=forwarder,
        sealed_dir=tmp / "sealed", workers=3, worker=worker, anchors=anchors, poll_s=0.05,
    )  # fmt: skip


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Pipeline, Pipeline]]:
    store, forwarder = MemoryStore(), CountingForwarder()
    first = pipeline(tmp_path, worker="w1", anchors=True, anchorer=CountingAnchorer(),
                     forwarder=forwarder, store=store)  # fmt: skip
    second = pipeline(tmp_path, worker="w2", anchors=False, anchorer=CountingAnchorer(),
                      forwarder=forwarder, store=store)  # fmt: skip
    yield first, second
    for one in (first, second):
        one.stop()
        one.index.close()


def test_two_workers_run_every_step_of_every_row_once(
    two: tuple[Pipeline, Pipeline], files: list[Path], tmp_path: Path
) -> None:
    first, second = two
    index, spool = first.index, Spool(tmp_path / "spool", reserve_bytes=0)
    for one in two:
        one.start()
    for n, path in enumerate(files):
        incoming = spool.incoming_file()
        incoming.write(path.read_bytes())
        incoming.close()
        entry = spool.accept(Path(incoming.name))
        index.add_received(
            entry_id=entry.entry_id, sop_instance_uid=f"1.2.3.{n}", sop_class_uid=CT,
            calling_aet="CT1", size=entry.size, spool_sha256=entry.sha256,
        )  # fmt: skip
        for one in two:
            one.wake()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(row.stage == "committed" for row in index.all()):
            break
        time.sleep(0.05)
    rows = index.all()
    assert [row.stage for row in rows] == ["committed"] * len(files)
    anchored, idle = first.anchorer, second.anchorer
    assert isinstance(anchored, CountingAnchorer) and isinstance(idle, CountingAnchorer)
    assert set(anchored.calls.values()) == {1} and len(anchored.calls) == len(files)
    assert not idle.calls  # the no-anchor worker left every anchor to the other
    forwarder = first.steps.forwarder
    assert isinstance(forwarder, CountingForwarder)
    assert set(forwarder.calls.values()) == {1} and len(forwarder.calls) == len(files)
    assert index.claim_counts() == {}  # every claim dropped once its row was done
