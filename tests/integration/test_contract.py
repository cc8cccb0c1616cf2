"""The xray contract on a real anvil: who may do what, write-once keys, versions, events."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from gateway import errors
from gateway.ledger import Anchor, MerkleTree, UserType, XrayLedger, leaf_hash
from gateway.ledger.merkle import InclusionProof
from tests.conftest import Cast

SEED_DIGEST = bytes.fromhex("16c8a694c91b80f1d97efb91455ab8b3facd6221ea401d740086722d4bad0134")
ADMIN_ROLE = b"\x00" * 32


def key(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def record(ledger: XrayLedger, label: str, *, digest: bytes | None = None) -> Anchor:
    return ledger.record_image(
        record_key=key("rec:" + label),
        patient_key=key("patient:ken"),
        digest=digest or key("digest:" + label),
        pixel_digest=key("pixels:" + label),
        body_part="CHEST",
        modality="DX",
    )


# Each mutating call, who may make it, and the exact error everyone else gets.
# `call(ledger, cast)` runs it as whoever `ledger` signs for; the label keeps keys apart.
Call = Callable[[XrayLedger, Cast, str], Anchor]


def _supersede(ledger: XrayLedger, cast: Cast, label: str) -> Anchor:
    return ledger.supersede_image(
        record_key=key("rec:base"),
        patient_key=key("patient:ken"),
        digest=key("v2:" + label),
        pixel_digest=key("px2:" + label),
        body_part="CHEST",
        modality="DX",
    )


CALLS: dict[
    str, tuple[Call, set[str], Callable[[str], tuple[type[errors.ContractRevert], tuple[Any, ...]]]]
] = {
    "setPermission(doctor)": (
        lambda led, c, lbl: led.set_permission(c.stranger.address, "Dr.X", UserType.DOCTOR),
        {"admin", "hospital"},
        lambda who: (errors.XrayNotPermissionManager, (who, UserType.DOCTOR)),
    ),
    "setPermission(hospital)": (
        lambda led, c, lbl: led.set_permission(c.stranger.address, "H", UserType.HOSPITAL),
        {"admin"},
        lambda who: (errors.XrayNotPermissionManager, (who, UserType.HOSPITAL)),
    ),
    "setPermission(recorder)": (
        lambda led, c, lbl: led.set_permission(c.stranger.address, "R", UserType.RECORDER),
        {"admin"},
        lambda who: (errors.XrayNotPermissionManager, (who, UserType.RECORDER)),
    ),
    "setPermission(auditor)": (
        lambda led, c, lbl: led.set_permission(c.stranger.address, "A", UserType.AUDITOR),
        {"admin"},
        lambda who: (errors.XrayNotPermissionManager, (who, UserType.AUDITOR)),
    ),
    "removePermission(doctor)": (
        lambda led, c, lbl: led.remove_permission(c.doctor.address),
        {"admin", "hospital"},
        lambda who: (errors.XrayNotPermissionManager, (who, UserType.DOCTOR)),
    ),
    "removePermission(recorder)": (
        lambda led, c, lbl: led.remove_permission(c.recorder.address),
        {"admin"},
        lambda who: (errors.XrayNotPermissionManager, (who, UserType.RECORDER)),
    ),
    "recordImage": (
        lambda led, c, lbl: record(led, lbl),
        {"recorder", "doctor"},
        lambda who: (errors.XrayNotRecorder, (who,)),
    ),
    "supersedeImage": (
        _supersede,
        {"recorder", "doctor"},
        lambda who: (errors.XrayNotRecorder, (who,)),
    ),
    "recordBatch": (
        lambda led, c, lbl: led.record_batch(root=key("root:" + lbl), count=3)[1],
        {"recorder", "doctor"},
        lambda who: (errors.XrayNotRecorder, (who,)),
    ),
    "retireImage": (
        lambda led, c, lbl: led.retire_image(record_key=key("rec:base"), reason="duplicate"),
        {"admin", "hospital"},
        lambda who: (errors.XrayNotCustodian, (who,)),
    ),
    "retireBatchedImage": (
        lambda led, c, lbl: led.retire_batched_image(
            record_key=key("rec:b0"),
            patient_key=key("patient:ken"),
            digest=key("digest:b0"),
            pixel_digest=key("pixels:b0"),
            batch_id=1,
            proof=_one_leaf_proof(),
            reason="dup",
        ),
        {"admin", "hospital"},
        lambda who: (errors.XrayNotCustodian, (who,)),
    ),
    "grantRole": (
        lambda led, c, lbl: led.grant_role("recorder", c.stranger.address),
        {"admin"},
        lambda who: (errors.AccessControlUnauthorizedAccount, (who, ADMIN_ROLE)),
    ),
}


def _one_leaf_proof() -> InclusionProof:
    return InclusionProof(index=0, size=1, path=())


ROLES = ("admin", "hospital", "doctor", "recorder", "auditor", "stranger")


@pytest.mark.parametrize("call_name", sorted(CALLS))
def test_every_forbidden_caller_gets_the_exact_custom_error(
    xray: XrayLedger, cast: Cast, call_name: str
) -> None:
    call, allowed, expected = CALLS[call_name]
    record(xray.as_account(cast.recorder), "base")
    leaf = leaf_hash(record_key=key("rec:b0"), patient_key=key("patient:ken"),
                     digest=key("digest:b0"), pixel_digest=key("pixels:b0"))  # fmt: skip
    xray.as_account(cast.recorder).record_batch(root=leaf, count=1)  # batch 1: one leaf
    for role in ROLES:
        if role in allowed:
            continue
        account = cast.by_role()[role]
        error_type, values = expected(account.address.lower())
        with pytest.raises(error_type) as caught:
            call(xray.as_account(account), cast, role)
        assert caught.value.name == error_type.name
        assert caught.value.values == values, (call_name, role)
    # and the roles that may make the call can (each on a fresh contract state slice)
    allowed_role = sorted(allowed)[0]
    assert call(xray.as_account(cast.by_role()[allowed_role]), cast, allowed_role).block_number > 0


def test_a_removed_doctor_can_no_longer_record(xray: XrayLedger, cast: Cast) -> None:
    doctor = xray.as_account(cast.doctor)
    record(doctor, "before")
    xray.as_account(cast.hospital).remove_permission(cast.doctor.address)
    assert xray.roles_of(cast.doctor.address) == []
    with pytest.raises(errors.XrayNotRecorder):
        record(doctor, "after")
    # what the doctor recorded before resigning stays, under the doctor's name
    assert xray.xrayhash(key("patient:ken"), 0)[0] == "Dr.Lee"
    with pytest.raises(errors.XrayNoPermission):
        xray.remove_permission(cast.doctor.address)


def test_a_key_is_written_only_once(xray: XrayLedger, cast: Cast) -> None:
    recorder = xray.as_account(cast.recorder)
    record(recorder, "once")
    with pytest.raises(errors.XrayRecordExists) as caught:
        record(recorder, "once", digest=key("other bytes"))
    assert caught.value.values == (key("rec:once"),)
    image = xray.image_of(key("rec:once"))
    assert image is not None and image.current.digest == key("digest:once")
    with pytest.raises(errors.XrayZeroValue):
        recorder.record_image(
            record_key=b"\x00" * 32, patient_key=key("p"), digest=key("d"), pixel_digest=key("x"),
            body_part="", modality="",
        )  # fmt: skip


def test_a_supersede_links_to_its_predecessor(xray: XrayLedger, cast: Cast) -> None:
    recorder = xray.as_account(cast.recorder)
    record(recorder, "base")
    anchor = _supersede(recorder, cast, "fix")
    image = xray.image_of(key("rec:base"))
    assert image is not None
    assert image.versions == 2
    assert image.current.digest == key("v2:fix")
    assert xray.version_of(key("rec:base"), 1).digest == key("digest:base")
    (event,) = xray.events("ImageSuperseded", from_block=anchor.block_number)
    assert event.args["previousDigest"] == key("digest:base")
    assert event.args["digest"] == key("v2:fix")
    assert event.args["version"] == 2
    with pytest.raises(errors.XrayUnchangedDigest):
        _supersede(recorder, cast, "fix")
    with pytest.raises(errors.XrayUnknownRecord):
        recorder.supersede_image(
            record_key=key("never"), patient_key=key("p"), digest=key("d"), pixel_digest=key("x"),
            body_part="", modality="",
        )  # fmt: skip
    with pytest.raises(errors.XrayUnknownVersion):
        xray.version_of(key("rec:base"), 3)


def test_a_retire_keeps_the_record(xray: XrayLedger, cast: Cast) -> None:
    record(xray.as_account(cast.recorder), "base")
    xray.as_account(cast.hospital).retire_image(record_key=key("rec:base"), reason="wrong patient")
    image = xray.image_of(key("rec:base"))
    assert image is not None
    assert image.retired
    assert image.retired_by == cast.hospital.address
    assert image.retire_reason == "wrong patient"
    assert image.current.digest == key("digest:base")  # the record stays
    with pytest.raises(errors.XrayRecordRetired):
        xray.retire_image(record_key=key("rec:base"), reason="again")
    with pytest.raises(errors.XrayRecordRetired):
        _supersede(xray.as_account(cast.recorder), cast, "late")
    with pytest.raises(errors.XrayUnknownRecord):
        xray.retire_image(record_key=key("never"), reason="x")


def test_every_state_change_emits_exactly_one_event(xray: XrayLedger, cast: Cast) -> None:
    recorder = xray.as_account(cast.recorder)
    xray_events = {"PermissionSet", "PermissionRemoved", "ImageRecorded", "ImageSuperseded",
                   "BatchAnchored", "ImageRetired"}  # fmt: skip
    role_events = {"RoleGranted", "RoleRevoked"}
    changes: list[tuple[str, Callable[[], Anchor], str]] = [
        ("setPermission", lambda: xray.set_permission(cast.stranger.address, "Dr.S", UserType.DOCTOR), "PermissionSet"),
        ("setPermission off", lambda: xray.set_permission(cast.stranger.address, "", UserType.DOCTOR, enabled=False), "PermissionSet"),
        ("removePermission", lambda: xray.remove_permission(cast.auditor.address), "PermissionRemoved"),
        ("recordImage", lambda: record(recorder, "base"), "ImageRecorded"),
        ("supersedeImage", lambda: _supersede(recorder, cast, "v2"), "ImageSuperseded"),
        ("recordBatch", lambda: recorder.record_batch(root=key("root"), count=10)[1], "BatchAnchored"),
        ("retireImage", lambda: xray.retire_image(record_key=key("rec:base"), reason="test"), "ImageRetired"),
        ("retireBatchedImage", lambda: _retire_first_of_three(xray, recorder), "ImageRetired"),
    ]  # fmt: skip
    topics = {
        bytes(xray.w3.keccak(text=_signature(item))): item["name"]
        for item in xray.contract.abi
        if item["type"] == "event"
    }
    for label, change, expected in changes:
        anchor = change()
        receipt = xray.w3.eth.get_transaction_receipt(anchor.tx_hash)  # type: ignore[arg-type]
        names = [topics[bytes(log["topics"][0])] for log in receipt["logs"]]
        ours = [name for name in names if name in xray_events]
        assert ours == [expected], (label, names)
        assert set(names) - xray_events <= role_events, (label, names)
        if not label.startswith(("setPermission", "removePermission")):
            assert len(names) == 1, (label, names)


def _retire_first_of_three(xray: XrayLedger, recorder: XrayLedger) -> Anchor:
    batch_id, tree, members = _batch_of_three(recorder)
    return xray.retire_batched_image(**members[0], batch_id=batch_id, proof=tree.proof(0),
                                     reason="test")  # fmt: skip


def _signature(item: dict[str, Any]) -> str:
    return f"{item['name']}({','.join(arg['type'] for arg in item['inputs'])})"


def test_seed_parity_views_match_the_papers_console_session(xray: XrayLedger, cast: Cast) -> None:
    """The seed's Fig. 11: `getXrayhashCount()` then `getXrayhash(0)` -> (name, part, hash)."""
    patient = key("patient:ken")
    # >xry.setPermission(doctor, 'Dr.Lee', 1, true)  -- 1 is Doctor in UserType
    assert int(UserType.DOCTOR) == 1
    xray.set_permission(cast.doctor.address, "Dr.Lee", UserType(1))
    # >xry.setXrayhash('chest', '16c8a694…', { from: doctor })
    xray.as_account(cast.doctor).record_image(
        record_key=key("rec:ken-chest"),
        patient_key=patient,
        digest=SEED_DIGEST,
        pixel_digest=key("pixels"),
        body_part="chest",
        modality="CR",
    )
    assert xray.xrayhash_count(patient) == 1
    assert xray.xrayhash(patient, 0) == ("Dr.Lee", "chest", SEED_DIGEST)
    with pytest.raises(errors.XrayIndexOutOfRange) as caught:
        xray.xrayhash(patient, 1)
    assert caught.value.values == (patient, 1, 1)
    # >xry.removePermission(doctor); setXrayhash from the doctor now fails
    xray.remove_permission(cast.doctor.address)
    with pytest.raises(errors.XrayNotRecorder):
        record(xray.as_account(cast.doctor), "resigned")
    assert xray.xrayhash_count(patient) == 1


def test_invalid_user_type_and_zero_address_are_refused(xray: XrayLedger, cast: Cast) -> None:
    with pytest.raises(errors.XrayInvalidUserType):
        xray.set_permission(cast.stranger.address, "nobody", UserType.NONE)
    with pytest.raises(errors.XrayZeroValue):
        xray.set_permission("0x" + "00" * 20, "zero", UserType.DOCTOR)
    with pytest.raises(errors.XrayEmptyBatch):
        xray.as_account(cast.recorder).record_batch(root=key("r"), count=0)


def test_a_batch_root_is_anchored_once(xray: XrayLedger, cast: Cast) -> None:
    recorder = xray.as_account(cast.recorder)
    batch_id, _ = recorder.record_batch(root=key("root-a"), count=5)
    assert batch_id == 1
    assert xray.batch_id_of(key("root-a")) == 1
    with pytest.raises(errors.XrayBatchExists) as caught:
        recorder.record_batch(root=key("root-a"), count=5)
    assert caught.value.values == (key("root-a"), 1)
    batch = xray.batch_of(1)
    assert (batch.root, batch.count, batch.recorder) == (key("root-a"), 5, cast.recorder.address)
    with pytest.raises(errors.XrayUnknownBatch):
        xray.batch_of(2)


def _batch_of_three(recorder: XrayLedger) -> tuple[int, MerkleTree, list[dict[str, bytes]]]:
    members = [
        {"record_key": key(f"rec:b{i}"), "patient_key": key("patient:ken"),
         "digest": key(f"digest:b{i}"), "pixel_digest": key(f"pixels:b{i}")}
        for i in range(3)
    ]  # fmt: skip
    tree = MerkleTree([leaf_hash(**m) for m in members])
    batch_id, _ = recorder.record_batch(root=tree.root, count=3)
    return batch_id, tree, members


def test_a_batched_image_is_retired_by_its_inclusion_proof(xray: XrayLedger, cast: Cast) -> None:
    batch_id, tree, members = _batch_of_three(xray.as_account(cast.recorder))
    hospital = xray.as_account(cast.hospital)
    # a proof for another leaf, an unknown batch, a caller who is no custodian: refused
    with pytest.raises(errors.XrayNotInBatch) as caught:
        hospital.retire_batched_image(**members[2], batch_id=batch_id, proof=tree.proof(1),
                                      reason="x")  # fmt: skip
    assert caught.value.values == (members[2]["record_key"], batch_id)
    with pytest.raises(errors.XrayUnknownBatch):
        hospital.retire_batched_image(**members[2], batch_id=9, proof=tree.proof(2), reason="x")
    with pytest.raises(errors.XrayNotCustodian):
        xray.as_account(cast.doctor).retire_batched_image(
            **members[2], batch_id=batch_id, proof=tree.proof(2), reason="x"
        )
    anchor = hospital.retire_batched_image(
        **members[2], batch_id=batch_id, proof=tree.proof(2), reason="wrong patient"
    )
    (event,) = xray.events("ImageRetired", from_block=anchor.block_number)
    assert event.args["recordKey"] == members[2]["record_key"]
    retirement = xray.retirement_of(members[2]["record_key"])
    assert retirement is not None
    assert (retirement.by, retirement.reason) == (cast.hospital.address, "wrong patient")
    assert xray.retirement_of(members[1]["record_key"]) is None
    assert xray.batch_of(batch_id).root == tree.root  # the batch stays
    with pytest.raises(errors.XrayRecordRetired):
        hospital.retire_batched_image(**members[2], batch_id=batch_id, proof=tree.proof(2),
                                      reason="again")  # fmt: skip
    # and no new version can be recorded under the retired key
    with pytest.raises(errors.XrayRecordRetired):
        xray.as_account(cast.recorder).record_image(
            **{**members[2], "digest": key("digest:b2-v2")}, body_part="CHEST", modality="DX"
        )
