"""A pipeline on its real index and spool, with in-memory stand-ins for store, ledger and PACS."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import dicom_fixtures
from gateway.core.keys import Kek, Keyring
from gateway.index.db import Index
from gateway.ingest.memory import MemoryAnchorer, MemoryForwarder
from gateway.ingest.pipeline import Pipeline
from gateway.ingest.spool import Spool
from gateway.store.memory import MemoryStore
from gateway.trust.alerts import Alerts

CT = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Line:
    """The pipeline and every part it works on, for a test to drive and look at."""

    index: Index
    spool: Spool
    store: MemoryStore
    anchorer: MemoryAnchorer
    forwarder: MemoryForwarder
    alerts: Alerts
    pipeline: Pipeline
    sealed_dir: Path

    def acked(self, data: bytes, *, uid: str = "1.2.3.4") -> int:
        """File ``data`` in the spool and its row in the index, as the listener does at the ack."""
        incoming = self.spool.incoming_file()
        incoming.write(data)
        incoming.close()
        entry = self.spool.accept(Path(incoming.name))
        return self.index.add_received(
            entry_id=entry.entry_id, sop_instance_uid=uid, sop_class_uid=CT,
            calling_aet="CT1", size=entry.size, spool_sha256=entry.sha256,
        )  # fmt: skip

    def at_anchor(self, n: int, *, record_key: bytes | None = None) -> int:
        """A row past put, with made-up digests: only the anchor and forward steps run."""
        row_id = self.acked(f"instance {n}".encode(), uid=f"1.2.3.{n}")
        self.index.update(
            row_id, stage="anchor", record_key=record_key or bytes([n]) * 32,
            patient_key=b"p" * 32, digest=bytes([n]) * 31 + b"d", pixel_digest=b"x" * 32,
            version=1,
        )  # fmt: skip
        return row_id


@pytest.fixture(scope="session")
def two_images(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Two CT slices of one series, as Part-10 bytes."""
    paths = dicom_fixtures.ct_series(tmp_path_factory.mktemp("ct"), 2, rows=32, cols=32)
    return [path.read_bytes() for path in paths]


@pytest.fixture
def line(tmp_path: Path) -> Iterator[Line]:
    index = Index(tmp_path / "index.sqlite")
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    store, anchorer, forwarder = MemoryStore(), MemoryAnchorer(), MemoryForwarder()
    alerts = Alerts(tmp_path / "alerts.sqlite")
    pipeline = Pipeline(
        index=index, spool=spool, store=store,
        keyring=Keyring.of(Kek("kek-20261205-aaaaaaaa", bytes(range(32)))),
        pseudonym_key=b"k" * 32, anchorer=anchorer, forwarder=forwarder,
        sealed_dir=tmp_path / "sealed", workers=1, alerts=alerts,
    )  # fmt: skip
    yield Line(index, spool, store, anchorer, forwarder, alerts, pipeline, tmp_path / "sealed")
    pipeline.stop()
    alerts.close()
    index.close()
