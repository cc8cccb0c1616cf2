"""An audit sweep through the stand-ins: every instance the PACS or the index knows is
verified, and every ledger record no instance accounts for is a finding."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.trust.audit import Audits, sweep
from tests.unit.trust.world import GATEWAY, World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


def test_a_sweep_reports_what_is_not_intact_and_records_nobody_accounts_for(
    world: World,
) -> None:
    intact, tampered, outsider, waiting = world.images(4)
    world.commit(intact)
    row = world.commit(tampered)
    world.pacs.overwrite(row.orthanc_id or "", b"not the image")
    world.pacs.store(outsider.path, digest=outsider.fingerprint.digest)
    world.index.update(world.receive(waiting), stage="put", **world.facts(waiting))
    orphan = world.images(1)[0]  # recorded by this gateway once, its index since lost
    world.ledger.record_image(
        recorder=GATEWAY, record_key=orphan.record_key, patient_key=orphan.patient_key,
        digest=orphan.fingerprint.digest, pixel_digest=orphan.fingerprint.pixel_digest,
    )  # fmt: skip
    progress: list[tuple[int, int]] = []
    report = sweep(
        world.verifier(), index=world.index, alerts=world.alerts,
        progress=lambda done, total: progress.append((done, total)), workers=2,
    )  # fmt: skip
    assert (report.summary["total"], report.summary["intact"]) == (4, 1)
    found = {(f.status, f.sop_instance_uid) for f in report.findings}
    assert found == {
        ("tampered", tampered.uid), ("unregistered", outsider.uid), ("pending", waiting.uid),
        ("missing", None),
    }  # fmt: skip
    assert report.ledger_records_without_instance == 1
    (lost,) = [f for f in report.findings if f.sop_instance_uid is None]
    assert lost.record_key == orphan.record_key.hex()
    assert progress[0] == (0, 4) and progress[-1] == (4, 4)
    kinds = {(a.kind, a.sop_instance_uid) for a in world.alerts.recent(kind=None)}
    assert ("tampered", tampered.uid) in kinds and ("unregistered", outsider.uid) in kinds


def test_an_image_received_and_recorded_while_the_sweep_runs_is_no_orphan(world: World) -> None:
    # the sweep reads the index, then checks every instance, then reads the ledger's
    # records: one anchored in between is accounted for by the index as it is by then
    first, arriving = world.images(2)
    world.commit(first)
    arrived: list[str] = []

    def meanwhile(done: int, total: int) -> None:
        if done == total and not arrived:
            arrived.append(world.commit(arriving).sop_instance_uid)

    report = sweep(world.verifier(), index=world.index, progress=meanwhile, workers=1)
    assert arrived == [arriving.uid]
    assert report.summary["total"] == 1  # the one the sweep took in
    assert report.findings == [] and report.ledger_records_without_instance == 0


def test_past_audits_are_listed_newest_first_and_findings_read_a_page_at_a_time(
    world: World, tmp_path: Path
) -> None:
    outsiders = world.images(5)
    for image in outsiders:  # in the PACS, never received: five findings
        world.pacs.store(image.path, digest=image.fingerprint.digest)
    audits = Audits(tmp_path / "audits.sqlite", verifier=world.verifier(), index=world.index,
                    alerts=None)  # fmt: skip
    started = []
    for who in ("ann", "bob", "cyd"):
        started.append(audits.start(requested_by=who))
        state = audits.wait(started[-1], 60)
        assert state is not None and state.state == "done"

    first = audits.page(limit=2)
    rest = audits.page(limit=2, after=first.next)

    assert [a.requested_by for a in first.items + rest.items] == ["cyd", "bob", "ann"]
    assert rest.next is None
    assert first.items[0].summary is not None and first.items[0].summary["unregistered"] == 5
    assert first.items[0].findings == 5
    pages = [audits.findings(started[0], limit=2, after=n) for n in (0, 2, 4)]
    assert [p.next for p in pages if p is not None] == [2, 4, None]
    uids = [f.sop_instance_uid for p in pages if p is not None for f in p.items]
    assert uids == sorted(image.uid for image in outsiders)
    assert audits.findings("no-such-audit") is None
    audits.close()
