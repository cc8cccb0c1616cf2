"""A gateway's outside world for unit tests of trust/: stand-ins, and images put in by hand.

The PACS and the ledger are the in-memory stand-ins (:class:`MemoryPacs`,
:class:`MemoryLedger`); the index is the real SQLite index and the store the real
filesystem store, each on a temporary path. :meth:`World.commit` does by hand what the
pipeline does to a received image (fingerprint, seal, anchor, forward, index row), so a
test can then break one copy and ask the :class:`Verifier` what it sees.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dicom_fixtures
from gateway.core import keys
from gateway.core.fingerprint import Fingerprint, InstanceHeader, fingerprint_and_header
from gateway.core.keys import Kek, Keyring
from gateway.core.merkle import MerkleTree, encode_proof, leaf_hash
from gateway.core.seal import seal
from gateway.index.db import Index, Row
from gateway.ledger.memory import MemoryLedger
from gateway.pacs.memory import MemoryPacs
from gateway.store.fs import FilesystemStore
from gateway.trust.alerts import Alerts
from gateway.trust.verify import Verifier

GATEWAY = "0x" + "a1" * 20  # the gateway's Recorder account
ROGUE = "0x" + "b2" * 20  # a second Recorder, writing under keys it does not own
STUDY = "1.2.826.0.1.3680043.10.1000.1"


@dataclass(frozen=True)
class Image:
    """One image file and what the pipeline learns from it."""

    path: Path
    fingerprint: Fingerprint
    header: InstanceHeader
    record_key: bytes
    patient_key: bytes

    @property
    def uid(self) -> str:
        return self.header.sop_instance_uid

    @property
    def object_name(self) -> str:
        return f"{self.record_key.hex()}/{self.fingerprint.digest.hex()}"


@dataclass
class World:
    """The stand-ins, the real index and store, and a verifier over them."""

    root: Path
    pseudonym_key: bytes = b"\x07" * 32
    keyring: Keyring = field(default_factory=lambda: Keyring.of(Kek("kek-test", b"\x01" * 32)))
    pacs: MemoryPacs = field(default_factory=MemoryPacs)
    ledger: MemoryLedger = field(default_factory=MemoryLedger)
    _entries: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.store = FilesystemStore(self.root / "store")
        self.index = Index(self.root / "index.sqlite")
        self.alerts = Alerts(self.root / "alerts.sqlite")
        self.ledger.grant_role("recorder", GATEWAY, name="the gateway")
        self.ledger.grant_role("recorder", ROGUE, name="a rogue")

    def close(self) -> None:
        self.index.close()
        self.alerts.close()

    def verifier(self, **parts: Any) -> Verifier:
        """A verifier over every part (``parts`` replace or remove some: ``pacs=None``)."""
        given: dict[str, Any] = {
            "ledger": self.ledger, "pseudonym_key": self.pseudonym_key, "pacs": self.pacs,
            "store": self.store, "keyring": self.keyring, "index": self.index,
            "alerts": self.alerts,
        }  # fmt: skip
        return Verifier(**(given | parts))

    # -- images ---------------------------------------------------------------------------

    def images(self, count: int, *, study: str = STUDY) -> list[Image]:
        """``count`` small CT slices of one study, fingerprinted, not yet anywhere."""
        folder = self.root / f"images-{next(self._entries)}"
        prefix = f"{study}.{next(self._entries)}."
        paths = dicom_fixtures.ct_series(
            folder, count, rows=8, cols=8, study_uid=study, prefix=prefix
        )
        return [self.image(path) for path in paths]

    def image(self, path: Path) -> Image:
        with path.open("rb") as stream:
            fp, header = fingerprint_and_header(stream)
        return Image(
            path=path, fingerprint=fp, header=header,
            record_key=keys.record_key(self.pseudonym_key, header.sop_instance_uid),
            patient_key=keys.patient_key(
                self.pseudonym_key, header.issuer_of_patient_id, header.patient_id
            ),
        )  # fmt: skip

    # -- what the pipeline does, by hand ---------------------------------------------------

    def receive(self, image: Image) -> int:
        """An index row for a received image, at stage ``fingerprint``."""
        return self.index.add_received(
            entry_id=f"entry-{next(self._entries)}", sop_instance_uid=image.uid,
            sop_class_uid=image.header.sop_class_uid, calling_aet="MODALITY",
            size=image.path.stat().st_size,
        )  # fmt: skip

    def seal(self, image: Image) -> None:
        """Seal the image into the object store."""
        sealed = io.BytesIO()
        with image.path.open("rb") as plain:
            seal(
                plain, sealed, record_key=image.record_key, digest=image.fingerprint.digest,
                kek=self.keyring.current,
            )  # fmt: skip
        length = sealed.tell()
        sealed.seek(0)
        self.store.put(image.object_name, sealed, length=length)

    def facts(self, image: Image) -> dict[str, Any]:
        """The columns the fingerprint stage fills in."""
        return {
            "study_instance_uid": image.header.study_instance_uid,
            "series_instance_uid": image.header.series_instance_uid,
            "record_key": image.record_key, "patient_key": image.patient_key,
            "digest": image.fingerprint.digest, "pixel_digest": image.fingerprint.pixel_digest,
            "transfer_syntax": image.fingerprint.transfer_syntax, "version": 1,
            "object_name": image.object_name,
        }  # fmt: skip

    def commit(self, image: Image, *, recorder: str = GATEWAY) -> Row:
        """Everything the pipeline does to a received image, one ``recordImage`` for it."""
        row_id = self.receive(image)
        self.seal(image)
        event = self.ledger.record_image(
            recorder=recorder, record_key=image.record_key, patient_key=image.patient_key,
            digest=image.fingerprint.digest, pixel_digest=image.fingerprint.pixel_digest,
        )  # fmt: skip
        forwarded = self.pacs.store(image.path, digest=image.fingerprint.digest)
        self.index.update(
            row_id, stage="committed", **self.facts(image), tx_hash=event.tx_hash,
            block_number=event.block_number, block_time=self.ledger.block_time(event.block_number),
            recorder=recorder, orthanc_id=forwarded.orthanc_id,
        )  # fmt: skip
        return self.index.get(row_id)

    def commit_batch(self, images: list[Image], *, recorder: str = GATEWAY) -> list[Row]:
        """Everything the pipeline does to received images, one ``recordBatch`` for all."""
        tree = MerkleTree([leaf_of(image) for image in images])
        batch = self.ledger.record_batch(recorder=recorder, root=tree.root, count=tree.size)
        (event,) = self.ledger.events("BatchAnchored", filters={"batchId": batch.batch_id})
        rows = []
        for leaf_index, image in enumerate(images):
            row_id = self.receive(image)
            self.seal(image)
            forwarded = self.pacs.store(image.path, digest=image.fingerprint.digest)
            self.index.update(
                row_id, stage="committed", **self.facts(image), tx_hash=event.tx_hash,
                block_number=batch.block_number, block_time=batch.anchored_at,
                recorder=recorder, batch_id=batch.batch_id, leaf_index=leaf_index,
                proof=encode_proof(tree.proof(leaf_index)), orthanc_id=forwarded.orthanc_id,
            )  # fmt: skip
            rows.append(self.index.get(row_id))
        return rows


def leaf_of(image: Image) -> bytes:
    """The image's Merkle leaf."""
    return leaf_hash(
        record_key=image.record_key, patient_key=image.patient_key,
        digest=image.fingerprint.digest, pixel_digest=image.fingerprint.pixel_digest,
    )  # fmt: skip
