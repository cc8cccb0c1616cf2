"""Restore through the stand-ins: the sealed original goes back into the PACS only when it
is the recorded version, and the index then points at the restored copy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import CannotRestore, UnknownInstance
from gateway.trust.restore import restore
from tests.unit.trust.world import GATEWAY, World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


def test_a_tampered_copy_is_replaced_by_its_sealed_original(world: World) -> None:
    (image,) = world.images(1)
    row = world.commit(image)
    world.pacs.overwrite(row.orthanc_id or "", b"ransomware was here")
    assert world.verifier().instance(image.uid).status == "tampered"
    verdict = restore(world.verifier(), image.uid)
    assert verdict.status == "intact"
    assert world.index.get(row.id).orthanc_id == verdict.orthanc_id


def test_a_missing_copy_is_put_back(world: World) -> None:
    (image,) = world.images(1)
    row = world.commit(image)
    world.pacs.delete(row.orthanc_id or "")
    assert restore(world.verifier(), image.uid).status == "intact"


def test_nothing_is_restored_without_a_usable_recorded_original(world: World) -> None:
    unrecorded, retired, lost = world.images(3)
    world.pacs.store(unrecorded.path, digest=unrecorded.fingerprint.digest)
    world.commit(retired)
    world.ledger.retire_image(by=GATEWAY, record_key=retired.record_key, reason="withdrawn")
    row = world.commit(lost)
    world.store.delete(lost.object_name)
    world.pacs.overwrite(row.orthanc_id or "", b"tampered")
    with pytest.raises(CannotRestore, match="no ledger record"):
        restore(world.verifier(), unrecorded.uid)
    with pytest.raises(CannotRestore, match="retired"):
        restore(world.verifier(), retired.uid)
    with pytest.raises(CannotRestore, match="sealed original cannot be used"):
        restore(world.verifier(), lost.uid)
    assert world.verifier().instance(lost.uid).status == "tampered"  # the copy was not touched
    with pytest.raises(UnknownInstance):
        restore(world.verifier(index=None), "1.2.3.404")
    with pytest.raises(CannotRestore, match="no PACS"):
        restore(world.verifier(pacs=None), lost.uid)
