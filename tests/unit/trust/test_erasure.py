"""Erasure's two steps on a real index (SQLite), with stand-ins for the store, PACS and chain."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.core import keys
from gateway.core.keys import Kek, Keyring
from gateway.core.merkle import InclusionProof
from gateway.core.seal import seal
from gateway.errors import ErasureChanged, ErasureNotFound, KeyShredded, TransactionFailed
from gateway.index.db import Index
from gateway.index.erasure import StudyKeys, erasure
from gateway.ledger.types import Anchor, Retirement, RetireReason
from gateway.store.memory import MemoryStore
from gateway.trust.erasure import Eraser

PSEUDONYM = bytes(range(32))
KEYRING = Keyring.of(Kek("kek-20261121-aaaaaaaa", bytes(range(32, 64))))
STUDY, OTHER = "1.2.3.1", "1.2.3.2"


@dataclass
class Chain:
    """Retirements by record key; ``fail_next`` makes the next retirement fail once."""

    retired: dict[bytes, str] = field(default_factory=dict)
    batched: list[int] = field(default_factory=list)
    fail_next: bool = False

    def retirement_of(self, record_key: bytes) -> Retirement | None:
        reason = self.retired.get(record_key)
        return None if reason is None else Retirement(by="0xrecorder", at=1, reason=reason)

    def _retire(self, record_key: bytes, reason: RetireReason | str) -> Anchor:
        if self.fail_next:
            self.fail_next = False
            raise TransactionFailed("the node went away")
        assert record_key not in self.retired  # the contract refuses a second retirement
        self.retired[record_key] = RetireReason.parse(reason).label
        return Anchor(tx_hash="0x" + record_key.hex(), block_number=1, block_time=1, gas_used=1)

    def retire_image(self, *, record_key: bytes, reason: RetireReason | str) -> Anchor:
        return self._retire(record_key, reason)

    def retire_batched_image(
        self, *, record_key: bytes, patient_key: bytes, digest: bytes, pixel_digest: bytes,
        batch_id: int, proof: InclusionProof, reason: RetireReason | str,
    ) -> Anchor:  # fmt: skip
        self.batched.append(batch_id)
        return self._retire(record_key, reason)


@dataclass
class Orthanc:
    ids: dict[str, str] = field(default_factory=dict)

    def find(self, sop_instance_uid: str) -> str | None:
        return self.ids.get(sop_instance_uid)

    def delete(self, orthanc_id: str) -> None:
        self.ids = {uid: i for uid, i in self.ids.items() if i != orthanc_id}


@dataclass
class Spool:
    root: Path

    def path_of(self, entry_id: str) -> Path:
        return self.root / f"{entry_id}.dcm"


@dataclass
class Site:
    index: Index
    store: MemoryStore
    pacs: Orthanc
    chain: Chain
    eraser: Eraser
    trail: list[tuple[str, str, str]]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    index = Index(tmp_path / "index.sqlite")
    store, pacs, chain = MemoryStore(), Orthanc(), Chain()
    trail: list[tuple[str, str, str]] = []
    eraser = Eraser(
        index=index, store=store, pacs=pacs, ledger=chain,
        study_keys=StudyKeys(index, KEYRING), pseudonym_key=PSEUDONYM,
        spool=Spool(tmp_path), sealed_dir=tmp_path, trail=lambda *entry: trail.append(entry),
    )  # fmt: skip
    yield Site(index, store, pacs, chain, eraser, trail)
    index.close()


def committed(site: Site, study: str, n: int, *, batch: int | None = None) -> str:
    """A committed image of ``study``, sealed under its study key; returns its UID."""
    uid = f"{study}.{n}"
    record_key, digest = keys.record_key(PSEUDONYM, uid), bytes([n]) * 32
    key, _ = site.eraser.study_keys.for_study(keys.study_ref(PSEUDONYM, study))
    sealed = io.BytesIO()
    seal(io.BytesIO(b"pixels"), sealed, record_key=record_key, digest=digest, kek=key)
    name = f"{record_key.hex()}/{digest.hex()}"
    site.store.put(name, io.BytesIO(sealed.getvalue()), length=len(sealed.getvalue()))
    row_id = site.index.add_received(
        entry_id=f"e{study.replace('.', '')}x{n}", sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", calling_aet="CT1", size=10,
    )  # fmt: skip
    site.index.update(
        row_id, stage="committed", study_instance_uid=study, record_key=record_key,
        digest=digest, pixel_digest=digest, patient_key=keys.patient_key(PSEUDONYM, "", "P1"),
        object_name=name, version=1, tx_hash=None if batch else "0xabc", batch_id=batch,
        proof=bytes(16) if batch else None,
    )  # fmt: skip
    site.pacs.ids[uid] = f"orthanc-{n}"
    return uid


def test_the_dry_run_lists_pseudonymous_keys_and_erases_nothing(site: Site) -> None:
    uids = [committed(site, STUDY, n) for n in (1, 2)]
    plan = site.eraser.plan(reason="gdpr_art17", asked_by="admin", study=STUDY)
    shown = repr(plan.public())
    assert STUDY not in shown and not any(uid in shown for uid in uids)
    assert plan.public()["counts"] == {
        "instances": 2, "objects": 2, "spool_copies": 0, "pacs_copies": 2, "chain_records": 2,
        "v1_objects": 0,
    }  # fmt: skip
    assert all(site.pacs.find(uid) for uid in uids) and not site.chain.retired
    logged = erasure(site.index, plan.plan_hash)
    assert logged is not None and logged.state == "planned" and logged.asked_by == "admin"
    assert site.trail[-1][0] == "admin" and "dry run" in site.trail[-1][2]


def test_a_confirmation_needs_the_same_set_and_reason(site: Site) -> None:
    committed(site, STUDY, 1)
    plan = site.eraser.plan(reason="gdpr_art17", asked_by="admin", study=STUDY)
    with pytest.raises(ErasureChanged):
        site.eraser.confirm("f" * 64, reason="gdpr_art17", confirmed_by="admin")
    with pytest.raises(ErasureChanged):
        site.eraser.confirm(plan.plan_hash, reason="legal_order", confirmed_by="admin")
    committed(site, STUDY, 2)  # arrived after the dry run
    with pytest.raises(ErasureChanged):
        site.eraser.confirm(plan.plan_hash, reason="gdpr_art17", confirmed_by="admin")
    assert not site.chain.retired and site.store.exists(next(iter(site.store.names())))


def test_confirmed_the_study_is_shredded_and_the_other_kept(site: Site) -> None:
    erased = [committed(site, STUDY, 1), committed(site, STUDY, 2, batch=7)]
    kept = committed(site, OTHER, 3)
    plan = site.eraser.plan(reason="gdpr_art17", asked_by="admin", study=STUDY)
    site.eraser.confirm(plan.plan_hash, reason="gdpr_art17", confirmed_by="dpo")
    with pytest.raises(KeyShredded):
        site.eraser.study_keys.for_study(keys.study_ref(PSEUDONYM, STUDY))
    assert sorted(site.store.names()) == [
        n for (n,) in site.index.query("SELECT object_name FROM instances WHERE sop_instance_uid = ?", (kept,))
    ]  # fmt: skip
    assert [uid for uid in erased if site.pacs.find(uid)] == [] and site.pacs.find(kept)
    assert sorted(site.chain.retired.values()) == ["erased", "erased"] and site.chain.batched == [7]
    stages = dict(site.index.query("SELECT sop_instance_uid, stage FROM instances"))
    assert stages == {erased[0]: "erased", erased[1]: "erased", kept: "committed"}
    logged = erasure(site.index, plan.plan_hash)
    assert logged is not None and (logged.state, logged.confirmed_by) == ("done", "dpo")
    assert site.trail[-1][0] == "dpo"


def test_a_failed_confirmation_is_finished_by_confirming_again(site: Site) -> None:
    committed(site, STUDY, 1)
    committed(site, STUDY, 2)
    plan = site.eraser.plan(reason="gdpr_art17", asked_by="admin", study=STUDY)
    site.chain.fail_next = True
    with pytest.raises(TransactionFailed):
        site.eraser.confirm(plan.plan_hash, reason="gdpr_art17", confirmed_by="admin")
    logged = erasure(site.index, plan.plan_hash)
    assert logged is not None and logged.state == "erasing"  # the log says it is not done
    assert not list(site.store.names())  # shredded and deleted before the chain failed
    again = site.eraser.confirm(plan.plan_hash, reason="gdpr_art17", confirmed_by="admin")
    assert again.plan_hash == plan.plan_hash
    assert list(site.chain.retired.values()) == ["erased", "erased"]


def test_by_patient_every_study_of_the_patient(site: Site) -> None:
    committed(site, STUDY, 1)
    committed(site, OTHER, 2)
    plan = site.eraser.plan(reason="patient_request", asked_by="admin", patient=("", "P1"))
    assert len(plan.studies) == 2 and len(plan.instances) == 2
    with pytest.raises(ErasureNotFound):
        site.eraser.plan(reason="patient_request", asked_by="admin", patient=("", "NOBODY"))
    with pytest.raises(ValueError):
        site.eraser.plan(reason="because", asked_by="admin", study=STUDY)
    with pytest.raises(ErasureNotFound):  # the API's fuzzing found it a 500 before
        site.eraser.plan(reason="patient_request", asked_by="admin", study=" ")


def test_v1_objects_move_to_their_study_s_key(site: Site) -> None:
    from gateway.core.seal import STUDY_KEY_VERSION, open_sealed, read_seal_header
    from gateway.trust.erasure import upgrade_to_v2

    uid = committed(site, STUDY, 1)
    ((name,),) = site.index.query(
        "SELECT object_name FROM instances WHERE sop_instance_uid = ?", (uid,)
    )
    record_key, digest = (bytes.fromhex(part) for part in name.split("/"))
    old = io.BytesIO()  # an object sealed before study keys: v1, under the KEK
    seal(io.BytesIO(b"old pixels"), old, record_key=record_key, digest=digest, kek=KEYRING.current)
    site.store.put(name, io.BytesIO(old.getvalue()), length=len(old.getvalue()), replace=True)
    upgrade = dict(study_keys=site.eraser.study_keys, pseudonym_key=PSEUDONYM)
    assert upgrade_to_v2(site.index, site.store, **upgrade) == 1  # type: ignore[arg-type]
    with site.store.open(name) as stream:
        moved = stream.read()
    assert read_seal_header(io.BytesIO(moved)).version == STUDY_KEY_VERSION
    plain = io.BytesIO()
    open_sealed(
        io.BytesIO(moved), plain, record_key=record_key, digest=digest, keyring=KEYRING,
        study_keys=site.eraser.study_keys,
    )  # fmt: skip
    assert plain.getvalue() == b"old pixels"
    assert upgrade_to_v2(site.index, site.store, **upgrade) == 0  # type: ignore[arg-type]


# -- images still in the pipeline; copies on every node (erasure2) ----------------------------


@dataclass
class Parts:
    """What the pipeline's check reads (the pipeline passes its ``Steps``)."""

    index: Index
    store: MemoryStore
    spool: Spool
    sealed_dir: Path
    pseudonym_key: bytes = PSEUDONYM


def in_pipeline(site: Site, study: str, n: int, *, stage: str, node: str = "") -> int:
    """A fingerprinted image of ``study`` at ``stage``, with its spool and sealed-stage
    files on disk; returns its row id."""
    uid = committed(site, study, n)
    ((row_id, entry),) = site.index.query(
        "SELECT id, entry_id FROM instances WHERE sop_instance_uid = ?", (uid,)
    )
    site.index.update(row_id, stage=stage, tx_hash=None)
    with site.index.transaction() as db:  # the node whose spool holds it
        db.execute("UPDATE instances SET received_by = ? WHERE id = ?", (node or None, row_id))
    del site.pacs.ids[uid]
    root = site.eraser.sealed_dir
    (root / f"{entry}.dcm").write_bytes(b"received")
    (root / f"{entry}.seal").write_bytes(b"sealed")
    return int(row_id)


def files_of(site: Site, row_id: int) -> list[str]:
    entry = site.index.get(row_id).entry_id
    return sorted(p.name for p in site.eraser.sealed_dir.glob(f"{entry}.*"))


def test_a_confirmation_erases_images_still_before_the_anchor(site: Site) -> None:
    committed(site, STUDY, 1)
    waiting = in_pipeline(site, STUDY, 2, stage="put")
    plan = site.eraser.plan(reason="gdpr_art17", asked_by="admin", study=STUDY)
    assert plan.public()["counts"]["spool_copies"] == 1
    site.eraser.confirm(plan.plan_hash, reason="gdpr_art17", confirmed_by="admin")
    row = site.index.get(waiting)
    assert (row.stage, row.erase_plan) == ("erased", plan.plan_hash)
    assert files_of(site, waiting) == [] and not list(site.store.names())
    assert len(site.chain.retired) == 1  # never anchored: nothing to retire for it


def test_the_pipeline_s_check_erases_a_named_row_instead_of_working_it(site: Site) -> None:
    from gateway.index.erasure import name_rows
    from gateway.trust.erasure import erase_if_named

    parts = Parts(site.index, site.store, Spool(site.eraser.sealed_dir), site.eraser.sealed_dir)
    named = in_pipeline(site, STUDY, 1, stage="put")
    other = in_pipeline(site, OTHER, 2, stage="seal")
    name_rows(site.index, "ab" * 32, [named])
    assert not erase_if_named(site.index.get(other), parts)  # not named: worked as ever
    assert files_of(site, other) != [] and site.index.get(other).stage == "seal"
    assert erase_if_named(site.index.get(named), parts)
    assert site.index.get(named).stage == "erased" and files_of(site, named) == []
    assert not site.store.exists(str(site.index.get(named).object_name))
    # fingerprinted after its study was erased: the seal stage finds the key destroyed
    site.eraser.study_keys.destroy([keys.study_ref(PSEUDONYM, OTHER)])
    assert erase_if_named(site.index.get(other), parts)
    assert site.index.get(other).stage == "erased" and files_of(site, other) == []


def test_a_confirmation_waits_for_the_rows_a_worker_holds(site: Site) -> None:
    from gateway.errors import ErasureInFlight

    held = in_pipeline(site, STUDY, 1, stage="put")
    site.index.claim_due("gw-b/worker-1", stages=("put",), limit=10, lease_s=600)
    plan = site.eraser.plan(reason="gdpr_art17", asked_by="admin", study=STUDY)
    site.eraser.settle_s = 0.3
    with pytest.raises(ErasureInFlight):
        site.eraser.confirm(plan.plan_hash, reason="gdpr_art17", confirmed_by="admin")
    row = site.index.get(held)
    assert (row.stage, row.erase_plan) == ("put", plan.plan_hash)  # named, left to its worker
    logged = erasure(site.index, plan.plan_hash)
    assert logged is not None and logged.state == "erasing"
    site.index.unclaim("gw-b/worker-1", [held])  # the step ended
    site.eraser.confirm(plan.plan_hash, reason="gdpr_art17", confirmed_by="admin")
    assert site.index.get(held).stage == "erased"


def test_every_node_sheds_its_copies_and_the_status_says_which(site: Site, tmp_path: Path) -> None:
    from gateway.trust.erasure import Shedder

    site.eraser.node = "gw-a"
    on_a = in_pipeline(site, STUDY, 1, stage="committed", node="gw-a")
    on_b = in_pipeline(site, STUDY, 2, stage="committed", node="gw-b")
    node_b = tmp_path / "node-b"
    (node_b / "ready").mkdir(parents=True)
    (node_b / "sealed").mkdir()
    entry_b = site.index.get(on_b).entry_id
    (node_b / "ready" / f"{entry_b}.dcm").write_bytes(b"received on b")
    (node_b / "sealed" / f"{entry_b}.seal").write_bytes(b"sealed on b")
    (site.eraser.sealed_dir / f"{entry_b}.dcm").unlink()  # b's files are on b only
    (site.eraser.sealed_dir / f"{entry_b}.seal").unlink()
    plan = site.eraser.plan(reason="gdpr_art17", asked_by="admin", study=STUDY)
    site.eraser.confirm(plan.plan_hash, reason="gdpr_art17", confirmed_by="admin")
    assert files_of(site, on_a) == []
    status = site.eraser.status(plan.plan_hash)
    assert status["state"] == "done" and status["nodes_not_shed"] == ["gw-b"]
    assert status["nodes"]["gw-a"]["shed"] and not status["nodes"]["gw-b"]["shed"]

    @dataclass
    class Ready:
        ready: Path

        def path_of(self, entry_id: str) -> Path:
            return self.ready / f"{entry_id}.dcm"

    shedder = Shedder(site.index, Ready(node_b / "ready"), node_b / "sealed", node="gw-b")
    assert shedder.sweep() == 2
    assert not list((node_b / "ready").iterdir()) and not list((node_b / "sealed").iterdir())
    status = site.eraser.status(plan.plan_hash)
    assert status["nodes_not_shed"] == [] and status["nodes"]["gw-b"]["files"] == 2
    # a copy of an erased row left behind anyway (a crash mid-delete) goes at the next sweep
    (node_b / "sealed" / f"{entry_b}.seal").write_bytes(b"left behind")
    assert shedder.sweep() == 1


# -- old seals (erasure2) --------------------------------------------------------------------


def test_a_kept_v1_copy_opens_with_no_key_once_the_old_keks_are_retired(tmp_path: Path) -> None:
    from gateway.core.keys import init_keys, load_keyring
    from gateway.core.seal import STUDY_KEY_VERSION, open_sealed, read_seal_header
    from gateway.errors import SealError
    from gateway.store.fs import FilesystemStore
    from gateway.trust.erasure import retire_old_keks

    keys_dir = tmp_path / "keys"
    init_keys(keys_dir)
    old_ring = load_keyring(keys_dir)
    index = Index(tmp_path / "index.sqlite")
    store = FilesystemStore(tmp_path / "objects")
    try:
        site = Site(index, store, Orthanc(), Chain(), Eraser(  # type: ignore[arg-type]
            index=index, store=store, pacs=Orthanc(), ledger=Chain(),
            study_keys=StudyKeys(index, old_ring), pseudonym_key=PSEUDONYM,
            spool=Spool(tmp_path), sealed_dir=tmp_path,
        ), [])  # fmt: skip
        uid = committed(site, STUDY, 1)
        ((name,),) = index.query("SELECT object_name FROM instances WHERE sop_instance_uid = ?",
                                 (uid,))  # fmt: skip
        record_key, digest = (bytes.fromhex(part) for part in name.split("/"))
        old = io.BytesIO()  # the old seal path: v1, the data key wrapped under the KEK
        seal(io.BytesIO(b"pixels"), old, record_key=record_key, digest=digest,
             kek=old_ring.current)  # fmt: skip
        kept = old.getvalue()  # someone keeps a copy of the v1 object
        store.put(name, io.BytesIO(kept), length=len(kept), replace=True)
        committed(site, OTHER, 2)  # another study, v2 already
        plan = site.eraser.plan(reason="gdpr_art17", asked_by="admin", study=STUDY)
        assert plan.public()["counts"]["v1_objects"] == 1
        assert "keys rotate --retire-old" in str(plan.public()["remedy"])
        opened = dict(record_key=record_key, digest=digest)
        open_sealed(io.BytesIO(kept), io.BytesIO(), keyring=old_ring, **opened)  # opens today

        done = retire_old_keks(index, store, keys_dir=keys_dir, pseudonym_key=PSEUDONYM)
        assert done.moved_to_v2 == 1 and done.destroyed == (old_ring.current.kek_id,)
        assert done.study_keys_rewrapped == 2
        new_ring = load_keyring(keys_dir)
        assert list(new_ring.ids) == [done.current_kek]
        with pytest.raises(SealError):  # the kept v1 copy: its KEK is gone
            open_sealed(io.BytesIO(kept), io.BytesIO(), keyring=new_ring, **opened)
        # the stored object is v2 now and opens through its study key under the new KEK
        with store.open(name) as stream:
            moved = stream.read()
        assert read_seal_header(io.BytesIO(moved)).version == STUDY_KEY_VERSION
        plain = io.BytesIO()
        open_sealed(io.BytesIO(moved), plain, keyring=new_ring,
                    study_keys=StudyKeys(index, new_ring), **opened)  # fmt: skip
        assert plain.getvalue() == b"pixels"
        assert not (keys_dir / "kek" / f"{old_ring.current.kek_id}.key").exists()
    finally:
        index.close()
