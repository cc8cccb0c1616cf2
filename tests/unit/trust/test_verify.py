"""The Verifier through its seams: each status, as the stand-ins of the PACS and the ledger
and a real index show it, and the rule that only a record's owner writes count.

Nothing here subclasses the Verifier or calls its private methods: each test puts an image
in by hand (:mod:`tests.unit.trust.world`), breaks one copy the way the world would, and
reads the verdict. The same paths run against Orthanc and anvil in tests/integration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from pydicom import dcmread

from gateway.errors import PacsUnavailable, StoreUnavailable, UnknownInstance
from gateway.store.fs import FilesystemStore
from gateway.trust.claims import BatchClaim
from gateway.trust.verify import (
    STATUSES,
    Copies,
    Evidence,
    Verdict,
    summarise,
)
from tests.unit.trust.world import GATEWAY, ROGUE, Image, World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


def edited(image: Image, tmp_path: Path, **attributes: object) -> bytes:
    """The image's file with some attributes changed (a header edit)."""
    ds = dcmread(image.path)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    out = tmp_path / "edited.dcm"
    ds.save_as(out)
    return out.read_bytes()


def repixelled(image: Image, tmp_path: Path) -> bytes:
    """The image's file with one pixel changed."""
    ds = dcmread(image.path)
    pixels = bytearray(ds.PixelData)
    pixels[0] ^= 0xFF
    ds.PixelData = bytes(pixels)
    out = tmp_path / "repixelled.dcm"
    ds.save_as(out)
    return out.read_bytes()


# -- intact ---------------------------------------------------------------------------------


def test_an_untouched_image_is_intact_with_its_evidence(world: World) -> None:
    (image,) = world.images(1)
    row = world.commit(image)
    verdict = world.verifier().instance(image.uid)
    assert verdict.status == "intact"
    assert verdict.copies == Copies(pacs="ok", store="ok", ledger="ok")
    assert verdict.orthanc_id == row.orthanc_id
    evidence = verdict.evidence
    assert evidence.recorded_digest == evidence.digest_now == image.fingerprint.digest.hex()
    assert (evidence.tx_hash, evidence.block_number) == (row.tx_hash, row.block_number)
    assert (evidence.recorder, evidence.recorder_name) == (GATEWAY, "the gateway")
    assert evidence.block_time == world.ledger.block_time(row.block_number or 0)
    assert evidence.batch is None and evidence.foreign_claims == []


def test_a_batched_image_is_intact_through_the_proof_the_chain_confirms(world: World) -> None:
    images = world.images(3)
    rows = world.commit_batch(images)
    verdict = world.verifier().instance(images[1].uid)
    assert verdict.status == "intact"
    batch = verdict.evidence.batch
    assert batch is not None
    assert (batch.batch_id, batch.leaf_index, batch.size) == (rows[1].batch_id, 1, 3)
    assert batch.root == world.ledger.batch_of(rows[1].batch_id or 0).root.hex()
    assert verdict.evidence.tx_hash == rows[1].tx_hash


# -- tampered -------------------------------------------------------------------------------


def test_an_edited_header_is_tampered_with_the_attributes_it_changed(
    world: World, tmp_path: Path
) -> None:
    (image,) = world.images(1)
    row = world.commit(image)
    world.pacs.overwrite(row.orthanc_id or "", edited(image, tmp_path, PatientName="Other^Body"))
    seen = world.verifier().instance(image.uid, show_phi=True)
    assert (seen.status, seen.tamper) == ("tampered", "header_changed")
    assert "attributes of the header were edited" in seen.explanation
    assert seen.copies == Copies(pacs="differs", store="ok", ledger="ok")
    (change,) = seen.changes
    assert (change.keyword, change.change, change.after) == ("PatientName", "changed", "Other^Body")
    hidden = world.verifier().instance(image.uid)
    (change,) = hidden.changes
    assert change.redacted and change.before is None and change.after is None


def test_bytes_that_only_encode_the_recorded_dataset_differently_are_not_called_edited(
    world: World,
) -> None:
    # DCMTK's storescu drops a file's Data Set Trailing Padding on the wire: the bytes an
    # auditor holds then carry (FFFC,FFFC) that the recorded ones do not
    (image,) = world.images(1)
    row = world.commit(image)
    padding = b"\xfc\xff\xfc\xff" + b"OB" + b"\x00\x00" + (8).to_bytes(4, "little") + bytes(8)
    world.pacs.overwrite(row.orthanc_id or "", image.path.read_bytes() + padding)
    seen = world.verifier().instance(image.uid, show_phi=True)
    assert (seen.status, seen.tamper, seen.changes) == ("tampered", "header_changed", [])
    assert "re-encoded, not edited" in seen.explanation
    assert "attributes of the header were edited" not in seen.explanation


def test_changed_pixels_are_tampered_pixels_changed(world: World, tmp_path: Path) -> None:
    (image,) = world.images(1)
    row = world.commit(image)
    world.pacs.overwrite(row.orthanc_id or "", repixelled(image, tmp_path))
    verdict = world.verifier().instance(image.uid)
    assert (verdict.status, verdict.tamper) == ("tampered", "pixels_changed")
    assert "pixel data itself" in verdict.explanation


def test_bytes_that_are_no_dicom_at_all_are_tampered(world: World) -> None:
    (image,) = world.images(1)
    row = world.commit(image)
    world.pacs.overwrite(row.orthanc_id or "", b"not a DICOM file")
    verdict = world.verifier().instance(image.uid)
    assert verdict.status == "tampered"
    assert [c.after for c in world.verifier().instance(image.uid, show_phi=True).changes] == [
        "unreadable"
    ]


def test_a_copy_of_an_older_version_is_tampered_and_named_superseded(
    world: World, tmp_path: Path
) -> None:
    (image,) = world.images(1)
    row = world.commit(image)
    old = row.orthanc_id or ""
    newer = world.image(tmp_path_file(tmp_path, edited(image, tmp_path, ImageComments="v2")))
    assert newer.record_key == image.record_key
    world.seal(newer)
    world.ledger.supersede_image(
        recorder=GATEWAY, record_key=newer.record_key, patient_key=newer.patient_key,
        digest=newer.fingerprint.digest, pixel_digest=newer.fingerprint.pixel_digest,
    )  # fmt: skip
    verdict = world.verifier().instance(image.uid)  # the PACS still holds version 1
    assert verdict.orthanc_id == old
    assert (verdict.status, verdict.evidence.version) == ("tampered", 2)
    assert "this copy matches an older, superseded version of the image" in verdict.notes


# -- missing, unregistered, unknown ------------------------------------------------------------


def test_a_copy_gone_from_the_pacs_is_missing(world: World) -> None:
    (image,) = world.images(1)
    row = world.commit(image)
    world.pacs.delete(row.orthanc_id or "")
    verdict = world.verifier().instance(image.uid)
    assert verdict.status == "missing"
    assert verdict.copies == Copies(pacs="absent", store="ok", ledger="ok")


def test_a_copy_nobody_recorded_is_unregistered(world: World) -> None:
    (image,) = world.images(1)
    world.pacs.store(image.path, digest=image.fingerprint.digest)  # around the gateway
    verdict = world.verifier().instance(image.uid)
    assert verdict.status == "unregistered"
    assert verdict.copies == Copies(pacs="ok", store="unchecked", ledger="absent")


def test_an_image_nobody_knows_is_an_unknown_instance(world: World) -> None:
    with pytest.raises(UnknownInstance):
        world.verifier().instance("1.2.3.4.5")


# -- pending ------------------------------------------------------------------------------------


def test_an_image_still_on_its_way_is_pending_whatever_the_pacs_holds(
    world: World, tmp_path: Path
) -> None:
    (image,) = world.images(1)
    row_id = world.receive(image)
    world.index.update(row_id, stage="anchor", **world.facts(image))
    verdict = world.verifier().instance(image.uid)
    assert (verdict.status, verdict.stage) == ("pending", "anchor")  # not missing
    assert verdict.copies == Copies(pacs="absent", ledger="unchecked")
    # another copy in the PACS meanwhile: still pending, and said
    world.pacs.store(
        tmp_path_file(tmp_path, edited(image, tmp_path, PatientName="X^Y")), digest=b""
    )
    verdict = world.verifier().instance(image.uid)
    assert verdict.status == "pending"
    assert "the PACS holds another copy than the one being processed" in verdict.notes


def tmp_path_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "copy.dcm"
    path.write_bytes(data)
    return path


def test_a_parked_image_is_pending_at_the_stage_it_stopped_with_its_error(world: World) -> None:
    (image,) = world.images(1)
    row_id = world.receive(image)
    world.index.update(row_id, stage="seal", **world.facts(image))
    world.index.park(row_id, "KeyringError: no KEK")
    verdict = world.verifier().instance(image.uid)
    assert (verdict.status, verdict.stage) == ("pending", "failed")
    assert verdict.notes[0] == "parked at stage seal: KeyringError: no KEK"
    assert "xray-gateway retry" in verdict.notes[1]


def test_an_outage_of_the_pacs_is_said_for_a_pending_image_and_raised_otherwise(
    world: World,
) -> None:
    waiting, done = world.images(2)
    world.commit(done)
    world.index.update(world.receive(waiting), stage="forward", **world.facts(waiting))
    world.pacs.reachable = False
    verdict = world.verifier().instance(waiting.uid)
    assert (verdict.status, verdict.copies.pacs) == ("pending", "unchecked")
    assert any("the PACS could not be reached" in note for note in verdict.notes)
    with pytest.raises(PacsUnavailable):
        world.verifier().instance(done.uid)


# -- unconfirmed ----------------------------------------------------------------------------------


def test_a_claim_on_a_batch_the_chain_does_not_know_is_unconfirmed(world: World) -> None:
    images = world.images(2)
    rows = world.commit_batch(images)
    world.index.update(rows[0].id, batch_id=99)  # the index names a batch not on this chain
    verdict = world.verifier().instance(images[0].uid)
    assert verdict.status == "unconfirmed"
    assert verdict.copies == Copies(pacs="ok", ledger="unconfirmed")
    assert verdict.notes == ["batch 99 is unknown to the contract"]


def test_a_transaction_or_block_the_chain_does_not_have_is_unconfirmed(world: World) -> None:
    first, second = world.images(2)
    for image in (first, second):
        row_id = world.receive(image)
        world.seal(image)
        world.pacs.store(image.path, digest=image.fingerprint.digest)
        world.index.update(row_id, stage="committed", **world.facts(image))
    world.index.update(world.index.by_uid(first.uid)[0].id, tx_hash="0x" + "ee" * 32)
    head = world.ledger.head_block()
    world.index.update(world.index.by_uid(second.uid)[0].id, block_number=head + 5)
    verdict = world.verifier().instance(first.uid)
    assert verdict.status == "unconfirmed"
    assert verdict.notes == [f"transaction 0x{'ee' * 32} is not found on the chain"]
    verdict = world.verifier().instance(second.uid)
    assert verdict.status == "unconfirmed"
    assert verdict.notes == [
        f"the index records block {head + 5}, above the chain's head {head}: the node has not "
        "caught up"
    ]


def test_a_claim_the_chain_refutes_is_ignored(world: World, tmp_path: Path) -> None:
    # the index's digest is rewritten to the tampered copy's: the proof no longer leads to
    # the batch's root, so the ledger holds no record of it (not unconfirmed, not intact)
    images = world.images(2)
    rows = world.commit_batch(images)
    forged = world.image(tmp_path_file(tmp_path, edited(images[0], tmp_path, PatientID="X")))
    world.pacs.overwrite(rows[0].orthanc_id or "", forged.path.read_bytes())
    world.index.update(rows[0].id, digest=forged.fingerprint.digest)
    verdict = world.verifier().instance(images[0].uid)
    assert verdict.status == "unregistered"
    assert world.verifier().record(images[0].uid) is None
    # a single row naming a transaction the chain holds, which recorded something else
    (single,) = world.images(1)
    row_id = world.receive(single)
    world.pacs.store(single.path, digest=single.fingerprint.digest)
    world.index.update(row_id, stage="committed", **world.facts(single), tx_hash=rows[1].tx_hash)
    assert world.verifier().instance(single.uid).status == "unregistered"


# -- retired ----------------------------------------------------------------------------------------


def test_a_record_its_owner_retired_is_retired(world: World) -> None:
    (image,) = world.images(1)
    world.commit(image)
    world.ledger.retire_image(by=GATEWAY, record_key=image.record_key, reason="wrong_patient")
    verdict = world.verifier().instance(image.uid)
    assert verdict.status == "retired"
    assert verdict.copies == Copies(pacs="ok", ledger="retired")
    assert verdict.notes == [f"retired by {GATEWAY}: wrong_patient"]
    assert verdict.evidence.retire_reason == "wrong_patient"


# -- store_corrupt ------------------------------------------------------------------------------------


def test_a_sealed_original_gone_or_broken_is_store_corrupt(world: World) -> None:
    gone, broken = world.images(2)
    world.commit(gone)
    world.commit(broken)
    world.store.delete(gone.object_name)
    path = world.store.path_of(broken.object_name)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.chmod(0o600)
    path.write_bytes(bytes(data))
    verdict = world.verifier().instance(gone.uid)
    assert verdict.status == "store_corrupt"
    assert verdict.copies == Copies(pacs="ok", store="absent", ledger="ok")
    assert verdict.notes == ["the sealed original is not in the object store"]
    verdict = world.verifier().instance(broken.uid)
    assert (verdict.status, verdict.copies.store) == ("store_corrupt", "corrupt")
    assert verdict.notes[0].startswith("the sealed original does not open")


def test_tampered_outranks_a_broken_original_and_says_it_cannot_be_restored(
    world: World, tmp_path: Path
) -> None:
    (image,) = world.images(1)
    row = world.commit(image)
    world.store.delete(image.object_name)
    world.pacs.overwrite(row.orthanc_id or "", repixelled(image, tmp_path))
    verdict = world.verifier().instance(image.uid)
    assert (verdict.status, verdict.copies.store) == ("tampered", "absent")
    assert "the sealed original is unusable too: the image cannot be restored" in verdict.notes
    assert verdict.changes == []  # no original to compare with


class UnreadableStore(FilesystemStore):
    """A store that cannot be read right now (an outage, not a loss)."""

    def open(self, name: str) -> BinaryIO:
        raise StoreUnavailable("the object store does not answer")


def test_an_unreadable_store_leaves_the_original_unchecked_not_corrupt(world: World) -> None:
    (image,) = world.images(1)
    world.commit(image)
    verdict = world.verifier(store=UnreadableStore(world.root / "store")).instance(image.uid)
    assert verdict.status == "intact"
    assert verdict.copies == Copies(pacs="ok", store="unchecked", ledger="ok")
    assert verdict.notes == ["the object store could not be read: the object store does not answer"]


# -- only the owner's writes count -------------------------------------------------------------------


def test_a_rogue_recorders_versions_of_a_batched_key_are_ignored_and_alerted_once(
    world: World,
) -> None:
    images = world.images(2)
    world.commit_batch(images)
    victim = images[0]
    forged = b"\x66" * 32
    for write in (world.ledger.record_image, world.ledger.supersede_image):
        write(
            recorder=ROGUE, record_key=victim.record_key, patient_key=victim.patient_key,
            digest=forged, pixel_digest=forged,
        )  # fmt: skip
    verdict = world.verifier().instance(victim.uid)
    assert verdict.status == "intact"  # the gateway anchored the key first: it owns it
    assert verdict.evidence.recorder == GATEWAY
    assert verdict.evidence.foreign_claims == [ROGUE]
    world.verifier().instance(victim.uid)  # a second verifier, a second verdict: no new alert
    (alert,) = world.alerts.recent(sop_instance_uid=victim.uid, kind="foreign_claim")
    assert alert.source == "verifier"
    assert ROGUE in alert.detail and victim.record_key.hex() in alert.detail
    assert world.alerts.recent(sop_instance_uid=images[1].uid) == []


def test_a_retirement_by_someone_else_than_the_owner_is_ignored(world: World) -> None:
    (image,) = world.images(1)
    world.commit(image)
    world.ledger.retire_image(by=ROGUE, record_key=image.record_key, reason="withdrawn")
    verdict = world.verifier().instance(image.uid)
    assert verdict.status == "intact"
    assert verdict.evidence.foreign_claims == [ROGUE]


def test_a_recorder_that_never_held_the_role_owns_nothing(world: World) -> None:
    (image,) = world.images(1)
    stranger = "0x" + "c3" * 20
    world.commit(image, recorder=stranger)
    verdict = world.verifier().instance(image.uid)
    assert verdict.status == "unregistered"  # its record does not count: no trusted record
    trusted = world.verifier(trusted_recorders=frozenset({stranger}))
    assert trusted.instance(image.uid).status == "intact"


# -- studies and files --------------------------------------------------------------------------------


def test_a_study_lists_the_pacs_and_the_index_with_a_summary(world: World, tmp_path: Path) -> None:
    intact, tampered, waiting = world.images(3)
    world.commit(intact)
    row = world.commit(tampered)
    world.pacs.overwrite(row.orthanc_id or "", repixelled(tampered, tmp_path))
    world.index.update(world.receive(waiting), stage="seal", **world.facts(waiting))
    study = world.verifier().study(intact.header.study_instance_uid)
    assert {v.sop_instance_uid: v.status for v in study.instances} == {
        intact.uid: "intact", tampered.uid: "tampered", waiting.uid: "pending",
    }  # fmt: skip
    assert (study.summary["intact"], study.summary["tampered"], study.summary["total"]) == (1, 1, 3)
    with pytest.raises(UnknownInstance):
        world.verifier().study("1.2.3.999")


def test_a_file_is_checked_against_the_ledger_and_the_claims_it_is_given(world: World) -> None:
    image, other = world.images(2)
    world.commit_batch([image])
    world.commit_batch([other])
    alone = world.verifier(pacs=None, store=None, keyring=None, index=None)
    assert alone.file(image.path).status == "unregistered"  # a batch member needs its claim
    record = world.verifier().record(image.uid)
    assert record is not None and record.claim() is not None
    claim = BatchClaim.from_json(record.claim().to_json())  # type: ignore[union-attr]
    believed = world.verifier(pacs=None, store=None, keyring=None, index=None,
                              claims=lambda uid: [claim])  # fmt: skip
    verdict = believed.file(image.path)
    assert (verdict.status, verdict.copies.store) == ("intact", "unchecked")
    moved = dataclasses.replace(claim, batch_id=world.index.by_uid(other.uid)[0].batch_id or 0)
    refuted = world.verifier(pacs=None, index=None, claims=lambda uid: [moved])
    assert refuted.file(image.path).status == "unregistered"
    unknown = dataclasses.replace(claim, batch_id=99)
    unconfirmed = world.verifier(pacs=None, index=None, claims=lambda uid: [unknown])
    assert unconfirmed.file(image.path).status == "unconfirmed"


def test_a_summary_counts_every_status() -> None:
    verdicts = [
        Verdict("1.2", status, "", Evidence(record_key="00"), Copies())
        for status in ("intact", "intact", "tampered")
    ]
    summary = summarise(verdicts)
    assert summary["intact"] == 2 and summary["tampered"] == 1 and summary["total"] == 3
    assert set(STATUSES) <= set(summary)
