"""The xray contract on a real anvil: who may do what, owners, write-once keys, versions, events."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

import dicom_fixtures
from gateway import errors
from gateway.core import keys
from gateway.core.fingerprint import fingerprint_and_header
from gateway.ledger import (
    Anchor,
    BatchedLeaf,
    MerkleTree,
    RetireReason,
    UserType,
    XrayLedger,
    leaf_hash,
)
from gateway.ledger.anvil import Anvil
from gateway.trust.verify import Verifier
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


# The refusal matrix: each mutating call, the role that shows it works, the roles that
# may make it, and the exact error every other role gets. "owner" is the Recorder that
# wrote the records the calls touch (and anchored batch 1); "rival" is a second Recorder.
ROLES = ("admin", "hospital", "doctor", "owner", "rival", "auditor", "stranger")


@dataclass(frozen=True)
class Stage:
    """What the matrix calls act on: a record, a batch of three, a doctor a hospital hired."""

    accounts: dict[str, LocalAccount]
    hired: LocalAccount
    tree: MerkleTree
    members: list[dict[str, bytes]]

    def batched(self, i: int) -> BatchedLeaf:
        """Member ``i`` of batch 1 as a proven leaf."""
        m = self.members[i]
        return BatchedLeaf(patient_key=m["patient_key"], digest=m["digest"],
                           pixel_digest=m["pixel_digest"], batch_id=1, proof=self.tree.proof(i))  # fmt: skip


Call = Callable[[XrayLedger, Stage, str], Anchor]
Expect = Callable[[str, str, Stage], tuple[type[errors.ContractRevert], tuple[Any, ...]]]


def _supersede(ledger: XrayLedger, stage: Stage | None, label: str) -> Anchor:
    return ledger.supersede_image(
        record_key=key("rec:base"),
        patient_key=key("patient:ken"),
        digest=key("v2:" + label),
        pixel_digest=key("px2:" + label),
        body_part="CHEST",
        modality="DX",
    )


def _supersede_batched(ledger: XrayLedger, stage: Stage, label: str, i: int = 0) -> Anchor:
    return ledger.supersede_batched_image(
        record_key=stage.members[i]["record_key"], leaf=stage.batched(i),
        patient_key=key("patient:ken"), digest=key("v2:" + label), pixel_digest=key("px2:" + label),
        body_part="CHEST", modality="DX",
    )  # fmt: skip


def _retire_batched(ledger: XrayLedger, stage: Stage, reason: str, i: int = 0) -> Anchor:
    return ledger.retire_batched_image(
        **stage.members[i], batch_id=1, proof=stage.tree.proof(i), reason=reason
    )


def _manager(user_type: UserType) -> Expect:
    return lambda role, who, stage: (errors.XrayNotPermissionManager, (who, user_type))


def _recorder(
    role: str, who: str, stage: Stage
) -> tuple[type[errors.ContractRevert], tuple[Any, ...]]:
    return errors.XrayNotRecorder, (who,)


def _owner_of(record_key: bytes) -> Expect:
    """Another Recorder is told who owns the key; an account that is no Recorder, that it is not one."""

    def expect(
        role: str, who: str, stage: Stage
    ) -> tuple[type[errors.ContractRevert], tuple[Any, ...]]:
        if role == "rival":
            return errors.XrayNotOwner, (record_key, who, stage.accounts["owner"].address.lower())
        return errors.XrayNotRecorder, (who,)

    return expect


OWNER_CALLS = {"admin", "owner"}
#: Who may grant read access: the admin, Hospitals, Doctors and Recorders (not Auditors).
GRANTERS = {"admin", "hospital", "doctor", "owner", "rival"}
FAR_FUTURE = 2**39


def _owners_grant(led: XrayLedger, st: Stage, label: str) -> int:
    """A fresh grant made by the owner (a Recorder), for another account to try to revoke."""
    grant_id, _ = led.as_account(st.accounts["owner"]).grant_access(
        grantee=key("who:" + label), patient_key=key("pat:" + label), study_key=None,
        expires_at=FAR_FUTURE,
    )  # fmt: skip
    return grant_id


CALLS: dict[str, tuple[Call, str, set[str], Expect]] = {
    "setPermission(doctor)": (
        lambda led, st, lbl: led.set_permission(Account.create().address, "Dr.X", UserType.DOCTOR),
        "hospital", {"admin", "hospital"}, _manager(UserType.DOCTOR),
    ),
    "setPermission(hospital)": (
        lambda led, st, lbl: led.set_permission(st.accounts["stranger"].address, "H", UserType.HOSPITAL),
        "admin", {"admin"}, _manager(UserType.HOSPITAL),
    ),
    "setPermission(recorder)": (
        lambda led, st, lbl: led.set_permission(st.accounts["stranger"].address, "R", UserType.RECORDER),
        "admin", {"admin"}, _manager(UserType.RECORDER),
    ),
    "setPermission(auditor)": (
        lambda led, st, lbl: led.set_permission(st.accounts["stranger"].address, "A", UserType.AUDITOR),
        "admin", {"admin"}, _manager(UserType.AUDITOR),
    ),
    "removePermission(doctor)": (
        lambda led, st, lbl: led.remove_permission(st.hired.address),
        "hospital", {"admin", "hospital"}, _manager(UserType.DOCTOR),
    ),
    "removePermission(recorder)": (
        lambda led, st, lbl: led.remove_permission(st.accounts["rival"].address),
        "admin", {"admin"}, _manager(UserType.RECORDER),
    ),
    "recordImage": (
        lambda led, st, lbl: record(led, lbl), "rival", {"owner", "rival"}, _recorder,
    ),
    "recordBatch": (
        lambda led, st, lbl: led.record_batch(root=key("root:" + lbl), count=3)[1],
        "rival", {"owner", "rival"}, _recorder,
    ),
    "recordAccessBatch": (
        lambda led, st, lbl: led.record_access_batch(root=key("access:" + lbl), count=3)[1],
        "rival", {"owner", "rival"}, _recorder,
    ),
    "supersedeImage": (_supersede, "owner", OWNER_CALLS, _owner_of(key("rec:base"))),
    "supersedeBatchedImage": (
        _supersede_batched, "owner", OWNER_CALLS, _owner_of(key("rec:b0")),
    ),
    "retireImage": (
        lambda led, st, lbl: led.retire_image(record_key=key("rec:base"), reason="duplicate"),
        "owner", OWNER_CALLS, _owner_of(key("rec:base")),
    ),
    "retireBatchedImage": (
        lambda led, st, lbl: _retire_batched(led, st, "duplicate"),
        "owner", OWNER_CALLS, _owner_of(key("rec:b0")),
    ),
    "grantAccess": (
        lambda led, st, lbl: led.grant_access(
            grantee=key("who:" + lbl), patient_key=key("pat:" + lbl), study_key=key("study:" + lbl),
            expires_at=FAR_FUTURE,
        )[1],
        "doctor", GRANTERS, lambda role, who, st: (errors.XrayNotGranter, (who,)),
    ),
    "revokeAccess": (
        lambda led, st, lbl: led.revoke_access(_owners_grant(led, st, lbl)),
        "owner", {"admin", "owner"}, lambda role, who, st: (errors.XrayNotGranter, (who,)),
    ),
    "grantRole": (
        lambda led, st, lbl: led.grant_role("recorder", st.accounts["stranger"].address),
        "admin", {"admin"},
        lambda role, who, st: (errors.AccessControlUnauthorizedAccount, (who, ADMIN_ROLE)),
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def rival(anvil: Anvil) -> LocalAccount:
    """A second Recorder's account (granted on each fresh contract by ``accounts``)."""
    account = Account.create()
    anvil.fund(account.address)
    return account


@pytest.fixture
def accounts(xray: XrayLedger, cast: Cast, rival: LocalAccount) -> dict[str, LocalAccount]:
    """Every role of the matrix, by name, on the fresh contract ``xray``."""
    xray.set_permission(rival.address, "rogue gateway", UserType.RECORDER)
    by_role = cast.by_role()
    by_role["owner"] = by_role.pop("recorder")
    return {**by_role, "rival": rival}


def _stage(xray: XrayLedger, accounts: dict[str, LocalAccount]) -> Stage:
    owner = xray.as_account(accounts["owner"])
    record(owner, "base")
    batch_id, tree, members = _batch_of_three(owner)
    assert batch_id == 1
    hired = Account.create()
    xray.as_account(accounts["hospital"]).set_permission(hired.address, "Dr.Hired", UserType.DOCTOR)
    return Stage(accounts=accounts, hired=hired, tree=tree, members=members)


@pytest.mark.parametrize("call_name", sorted(CALLS))
def test_every_forbidden_caller_gets_the_exact_custom_error(
    xray: XrayLedger, accounts: dict[str, LocalAccount], call_name: str
) -> None:
    call, shown_by, allowed, expected = CALLS[call_name]
    stage = _stage(xray, accounts)
    refused = [role for role in ROLES if role not in allowed]
    for role in refused:
        account = accounts[role]
        error_type, values = expected(role, account.address.lower(), stage)
        with pytest.raises(errors.ContractRevert) as caught:
            call(xray.as_account(account), stage, role)
        assert caught.value.name == error_type.name, (call_name, role)
        assert caught.value.values == values, (call_name, role)
    # and a role that may make the call can
    assert shown_by in allowed
    assert call(xray.as_account(accounts[shown_by]), stage, shown_by).block_number > 0


def test_the_refusal_matrix_covers_every_mutator_of_the_abi(xray: XrayLedger) -> None:
    mutators = {
        item["name"] for item in xray.contract.abi
        if item["type"] == "function" and item["stateMutability"] not in ("view", "pure")
    }  # fmt: skip
    covered = {name.split("(")[0] for name in CALLS}
    # OpenZeppelin's own: revokeRole is guarded like grantRole, renounceRole only drops the caller's
    assert mutators - covered == {"revokeRole", "renounceRole"}


def test_a_second_recorder_can_neither_supersede_nor_retire_the_firsts_record(
    xray: XrayLedger, accounts: dict[str, LocalAccount]
) -> None:
    """The issue's scenario: both attempts revert with XrayNotOwner, the record is unchanged."""
    owner, rival = accounts["owner"], accounts["rival"]
    record(xray.as_account(owner), "base")
    before = xray.image_of(key("rec:base"))
    forger = xray.as_account(rival)
    with pytest.raises(errors.XrayNotOwner) as superseding:
        _supersede(forger, None, "forged")
    with pytest.raises(errors.XrayNotOwner) as retiring:
        forger.retire_image(record_key=key("rec:base"), reason="withdrawn")
    expected = (key("rec:base"), rival.address.lower(), owner.address.lower())
    assert superseding.value.values == retiring.value.values == expected
    assert xray.image_of(key("rec:base")) == before
    assert xray.owner_of(key("rec:base")) == owner.address
    assert xray.retirement_of(key("rec:base")) is None


def test_the_owner_and_the_admin_may_supersede_and_retire(
    xray: XrayLedger, accounts: dict[str, LocalAccount]
) -> None:
    owner = xray.as_account(accounts["owner"])
    record(owner, "base")
    _supersede(owner, None, "by-owner")
    _supersede(xray, None, "by-admin")  # the admin holds no Recorder role and still may
    image = xray.image_of(key("rec:base"))
    assert image is not None and image.versions == 3
    assert image.current.recorder == accounts["admin"].address
    assert xray.owner_of(key("rec:base")) == accounts["owner"].address  # the admin takes nothing
    xray.retire_image(record_key=key("rec:base"), reason="erased")
    retirement = xray.retirement_of(key("rec:base"))
    assert retirement is not None
    assert (retirement.by, retirement.reason) == (accounts["admin"].address, "erased")


def test_an_owner_that_lost_the_recorder_role_may_no_longer_change_its_records(
    xray: XrayLedger, accounts: dict[str, LocalAccount]
) -> None:
    owner = accounts["owner"]
    record(xray.as_account(owner), "base")
    xray.set_permission(owner.address, "", UserType.RECORDER, enabled=False)
    with pytest.raises(errors.XrayNotRecorder) as caught:
        _supersede(xray.as_account(owner), None, "late")
    assert caught.value.values == (owner.address.lower(),)
    with pytest.raises(errors.XrayNotRecorder):
        xray.as_account(owner).retire_image(record_key=key("rec:base"), reason="withdrawn")
    assert xray.owner_of(key("rec:base")) == owner.address  # the key stays its


def test_a_doctor_no_longer_records(xray: XrayLedger, cast: Cast) -> None:
    for call in (
        lambda led: record(led, "by-doctor"),
        lambda led: led.record_batch(root=key("root:doctor"), count=1)[1],
    ):
        with pytest.raises(errors.XrayNotRecorder) as caught:
            call(xray.as_account(cast.doctor))
        assert caught.value.values == (cast.doctor.address.lower(),)


def test_a_hospital_manages_only_the_doctors_it_added(
    xray: XrayLedger, accounts: dict[str, LocalAccount], anvil: Anvil
) -> None:
    hospital_account = accounts["hospital"]
    hospital = xray.as_account(hospital_account)
    me = hospital_account.address.lower()
    # its own doctor: hire, rename, suspend, reinstate, dismiss
    hired = Account.create()
    hospital.set_permission(hired.address, "Dr.New", UserType.DOCTOR)
    hospital.set_permission(hired.address, "Dr.New (cardiology)", UserType.DOCTOR)
    assert xray.name_of(hired.address) == "Dr.New (cardiology)"
    hospital.set_permission(hired.address, "", UserType.DOCTOR, enabled=False)
    hospital.set_permission(hired.address, "", UserType.DOCTOR)
    hospital.remove_permission(hired.address)
    assert xray.roles_of(hired.address) == []
    refusals: list[tuple[str, Callable[[XrayLedger], Anchor], type[errors.ContractRevert], tuple[Any, ...]]] = [
        ("grant itself", lambda h: h.set_permission(hospital_account.address, "Me", UserType.DOCTOR),
         errors.XraySelfManagement, (me,)),
        ("revoke itself", lambda h: h.set_permission(hospital_account.address, "", UserType.DOCTOR, enabled=False),
         errors.XraySelfManagement, (me,)),
        ("remove itself", lambda h: h.remove_permission(hospital_account.address),
         errors.XrayNotPermissionManager, (me, UserType.HOSPITAL)),
    ]  # fmt: skip
    for role in ("owner", "auditor", "admin"):  # accounts holding another role
        other = accounts[role]
        refusals.append((
            f"make a doctor of the {role}",
            lambda h, a=other: h.set_permission(a.address, "Dr.Who", UserType.DOCTOR),
            errors.XrayHoldsOtherRole, (other.address.lower(),),
        ))  # fmt: skip
    doctor = accounts["doctor"]  # Dr.Lee, added by the admin
    stranger = accounts["stranger"]
    refusals += [
        ("rename the admin's doctor", lambda h: h.set_permission(doctor.address, "Dr.Evil", UserType.DOCTOR),
         errors.XrayNotOwnDoctor, (doctor.address.lower(), me)),
        ("revoke the admin's doctor", lambda h: h.set_permission(doctor.address, "", UserType.DOCTOR, enabled=False),
         errors.XrayNotOwnDoctor, (doctor.address.lower(), me)),
        ("remove the admin's doctor", lambda h: h.remove_permission(doctor.address),
         errors.XrayNotOwnDoctor, (doctor.address.lower(), me)),
        ("rename an account with no role", lambda h: h.set_permission(stranger.address, "Mallory", UserType.DOCTOR, enabled=False),
         errors.XrayNotOwnDoctor, (stranger.address.lower(), me)),
    ]  # fmt: skip
    for label, call, error_type, values in refusals:
        with pytest.raises(errors.ContractRevert) as caught:
            call(hospital)
        assert (caught.value.name, caught.value.values) == (error_type.name, values), label
    # another hospital's doctor is not this hospital's either
    other = Account.create()
    anvil.fund(other.address)
    xray.set_permission(other.address, "Other Hospital", UserType.HOSPITAL)
    theirs = Account.create()
    xray.as_account(other).set_permission(theirs.address, "Dr.Theirs", UserType.DOCTOR)
    for call in (
        lambda h: h.set_permission(theirs.address, "Dr.Mine", UserType.DOCTOR),
        lambda h: h.remove_permission(theirs.address),
    ):
        with pytest.raises(errors.XrayNotOwnDoctor) as caught:
            call(hospital)
        assert caught.value.values == (theirs.address.lower(), me)
    assert xray.name_of(theirs.address) == "Dr.Theirs"
    assert xray.name_of(doctor.address) == "Dr.Lee"
    assert xray.roles_of(doctor.address) == ["doctor"]


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
    recorder = xray.as_account(cast.recorder)
    record(recorder, "base")
    anchor = recorder.retire_image(record_key=key("rec:base"), reason="wrong_patient")
    image = xray.image_of(key("rec:base"))
    assert image is not None
    assert image.retired
    assert image.retired_by == cast.recorder.address
    assert image.retire_reason == "wrong_patient"
    assert image.current.digest == key("digest:base")  # the record stays
    (event,) = xray.events("ImageRetired", from_block=anchor.block_number)
    assert event.args["reason"] == RetireReason.WRONG_PATIENT
    with pytest.raises(errors.XrayRecordRetired):
        xray.retire_image(record_key=key("rec:base"), reason="duplicate")
    with pytest.raises(errors.XrayRecordRetired):
        _supersede(recorder, None, "late")
    with pytest.raises(errors.XrayUnknownRecord):
        xray.retire_image(record_key=key("never"), reason="duplicate")


def test_a_retirement_reason_comes_from_the_fixed_set(xray: XrayLedger, cast: Cast) -> None:
    recorder = xray.as_account(cast.recorder)
    record(recorder, "base")
    with pytest.raises(errors.XrayInvalidReason):  # the contract refuses None
        recorder.retire_image(record_key=key("rec:base"), reason=RetireReason.NONE)
    with pytest.raises(ValueError, match="wrong_patient"):  # free text never leaves the client
        recorder.retire_image(record_key=key("rec:base"), reason="patient asked, see ticket")
    assert [r.label for r in RetireReason][1:] == [
        "withdrawn",
        "wrong_patient",
        "duplicate",
        "corrupt",
        "erased",
    ]
    assert xray.retirement_of(key("rec:base")) is None


def test_every_state_change_emits_exactly_one_event(xray: XrayLedger, cast: Cast) -> None:
    recorder = xray.as_account(cast.recorder)
    xray_events = {"PermissionSet", "PermissionRemoved", "ImageRecorded", "ImageSuperseded",
                   "BatchAnchored", "ImageRetired", "OwnershipRestored"}  # fmt: skip
    role_events = {"RoleGranted", "RoleRevoked"}
    changes: list[tuple[str, Callable[[], Anchor], str]] = [
        ("setPermission", lambda: xray.set_permission(cast.stranger.address, "Dr.S", UserType.DOCTOR), "PermissionSet"),
        ("setPermission off", lambda: xray.set_permission(cast.stranger.address, "", UserType.DOCTOR, enabled=False), "PermissionSet"),
        ("removePermission", lambda: xray.remove_permission(cast.auditor.address), "PermissionRemoved"),
        ("recordImage", lambda: record(recorder, "base"), "ImageRecorded"),
        ("supersedeImage", lambda: _supersede(recorder, None, "v2"), "ImageSuperseded"),
        ("recordBatch", lambda: recorder.record_batch(root=key("root"), count=10)[1], "BatchAnchored"),
        ("retireImage", lambda: xray.retire_image(record_key=key("rec:base"), reason="duplicate"), "ImageRetired"),
        ("retireBatchedImage", lambda: _retire_first_of_three(xray, recorder), "ImageRetired"),
        ("supersedeBatchedImage", lambda: _supersede_second_of_three(recorder), "ImageSuperseded"),
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
                                     reason="duplicate")  # fmt: skip


def _supersede_second_of_three(recorder: XrayLedger) -> Anchor:
    """A new version of member 1 of the batch ``_retire_first_of_three`` anchored (batch 2)."""
    members = [
        {"record_key": key(f"rec:b{i}"), "patient_key": key("patient:ken"),
         "digest": key(f"digest:b{i}"), "pixel_digest": key(f"pixels:b{i}")}
        for i in range(3)
    ]  # fmt: skip
    tree = MerkleTree([leaf_hash(**m) for m in members])
    batch_id = recorder.batch_id_of(tree.root)
    leaf = BatchedLeaf(patient_key=key("patient:ken"), digest=key("digest:b1"),
                       pixel_digest=key("pixels:b1"), batch_id=batch_id, proof=tree.proof(1))  # fmt: skip
    return recorder.supersede_batched_image(
        record_key=key("rec:b1"), leaf=leaf, patient_key=key("patient:ken"),
        digest=key("digest:b1-v2"), pixel_digest=key("pixels:b1"), body_part="CHEST", modality="DX",
    )  # fmt: skip


def _signature(item: dict[str, Any]) -> str:
    return f"{item['name']}({','.join(arg['type'] for arg in item['inputs'])})"


def test_seed_parity_views_match_the_papers_console_session(xray: XrayLedger, cast: Cast) -> None:
    """The seed's Fig. 11: `getXrayhashCount()` then `getXrayhash(0)` -> (name, part, hash)."""
    patient = key("patient:ken")
    # >xry.setPermission(doctor, 'Dr.Lee', 1, true)  -- 1 is Doctor in UserType
    assert int(UserType.DOCTOR) == 1
    xray.set_permission(cast.doctor.address, "Dr.Lee", UserType(1))
    # doctors no longer record: Dr.Lee records as a Recorder, under the same name
    xray.set_permission(cast.doctor.address, "Dr.Lee", UserType.RECORDER)
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


def test_access_batches_share_the_batch_sequence_and_prove_no_image(
    xray: XrayLedger, cast: Cast
) -> None:
    """Image and access batches take ids from one sequence, each with a kind a reader can
    see; an access batch's root is never accepted as proof of an image."""
    recorder = xray.as_account(cast.recorder)
    first, _, _ = _batch_of_three(recorder)
    # an access batch whose tree holds a leaf shaped exactly like an image's
    members = [
        {"record_key": key(f"rec:a{i}"), "patient_key": key("patient:ann"),
         "digest": key(f"digest:a{i}"), "pixel_digest": key(f"pixels:a{i}")}
        for i in range(2)
    ]  # fmt: skip
    tree = MerkleTree([leaf_hash(**m) for m in members])
    access_id, anchor = recorder.record_access_batch(root=tree.root, count=2)
    third, _ = recorder.record_batch(root=key("root-after-access"), count=4)
    assert (first, access_id, third) == (1, 2, 3)
    assert xray.batch_count() == 3
    assert [xray.batch_kind_of(i) for i in (1, 2, 3)] == ["image", "access", "image"]
    assert xray.batch_of(access_id).root == tree.root and xray.batch_of(access_id).count == 2
    (event,) = xray.events("AccessBatchAnchored")
    assert (event.args["batchId"], event.tx_hash) == (access_id, anchor.tx_hash)
    assert [e.args["batchId"] for e in xray.events("BatchAnchored")] == [1, 3]  # image feeds
    with pytest.raises(errors.XrayNotImageBatch):
        recorder.retire_batched_image(**members[0], batch_id=access_id, proof=tree.proof(0),
                                      reason="duplicate")  # fmt: skip
    with pytest.raises(errors.XrayBatchExists):
        recorder.record_access_batch(root=tree.root, count=2)
    with pytest.raises(errors.XrayUnknownBatch):
        xray.batch_kind_of(4)


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
    recorder = xray.as_account(cast.recorder)
    # a proof for another leaf, an unknown batch, a caller who is no Recorder: refused
    with pytest.raises(errors.XrayNotInBatch) as caught:
        recorder.retire_batched_image(**members[2], batch_id=batch_id, proof=tree.proof(1),
                                      reason="duplicate")  # fmt: skip
    assert caught.value.values == (members[2]["record_key"], batch_id)
    with pytest.raises(errors.XrayUnknownBatch):
        recorder.retire_batched_image(**members[2], batch_id=9, proof=tree.proof(2),
                                      reason="duplicate")  # fmt: skip
    with pytest.raises(errors.XrayNotRecorder):
        xray.as_account(cast.hospital).retire_batched_image(
            **members[2], batch_id=batch_id, proof=tree.proof(2), reason="duplicate"
        )
    assert xray.owner_of(members[2]["record_key"]) is None  # unknown until its proof is shown
    anchor = recorder.retire_batched_image(
        **members[2], batch_id=batch_id, proof=tree.proof(2), reason="wrong_patient"
    )
    assert xray.owner_of(members[2]["record_key"]) == cast.recorder.address
    (event,) = xray.events("ImageRetired", from_block=anchor.block_number)
    assert event.args["recordKey"] == members[2]["record_key"]
    retirement = xray.retirement_of(members[2]["record_key"])
    assert retirement is not None
    assert (retirement.by, retirement.reason) == (cast.recorder.address, "wrong_patient")
    assert xray.retirement_of(members[1]["record_key"]) is None
    assert xray.batch_of(batch_id).root == tree.root  # the batch stays
    with pytest.raises(errors.XrayRecordRetired):
        recorder.retire_batched_image(**members[2], batch_id=batch_id, proof=tree.proof(2),
                                      reason="duplicate")  # fmt: skip
    # and no new version can be recorded under the retired key
    with pytest.raises(errors.XrayRecordRetired):
        xray.as_account(cast.recorder).record_image(
            **{**members[2], "digest": key("digest:b2-v2")}, body_part="CHEST", modality="DX"
        )


def _new_version(label: str) -> dict[str, Any]:
    return {"patient_key": key("patient:ken"), "digest": key("v2:" + label),
            "pixel_digest": key("px2:" + label), "body_part": "CHEST", "modality": "DX"}  # fmt: skip


def _leaf(members: list[dict[str, bytes]], tree: MerkleTree, batch_id: int, i: int) -> BatchedLeaf:
    m = members[i]
    return BatchedLeaf(patient_key=m["patient_key"], digest=m["digest"],
                       pixel_digest=m["pixel_digest"], batch_id=batch_id, proof=tree.proof(i))  # fmt: skip


def test_a_batched_key_gets_its_first_stored_version_through_its_proof(
    xray: XrayLedger, accounts: dict[str, LocalAccount]
) -> None:
    owner = xray.as_account(accounts["owner"])
    batch_id, tree, members = _batch_of_three(owner)
    b0, b1 = members[0]["record_key"], members[1]["record_key"]
    # a proof for another leaf is refused, and so is a new version equal to the batched one
    with pytest.raises(errors.XrayNotInBatch):
        owner.supersede_batched_image(record_key=b0, leaf=_leaf(members, tree, batch_id, 1),
                                      **_new_version("x"))  # fmt: skip
    with pytest.raises(errors.XrayUnchangedDigest):
        owner.supersede_batched_image(
            record_key=b0,
            leaf=_leaf(members, tree, batch_id, 0),
            **{**_new_version("x"), "digest": members[0]["digest"]},
        )
    anchor = owner.supersede_batched_image(
        record_key=b0, leaf=_leaf(members, tree, batch_id, 0), **_new_version("b0")
    )
    assert xray.owner_of(b0) == accounts["owner"].address
    image = xray.image_of(b0)
    assert image is not None and image.versions == 1 and image.current.digest == key("v2:b0")
    (event,) = xray.events("ImageSuperseded", from_block=anchor.block_number)
    assert (event.args["previousDigest"], event.args["version"]) == (members[0]["digest"], 1)
    # the next version goes the same way, and links to the stored one
    owner.supersede_batched_image(
        record_key=b0, leaf=_leaf(members, tree, batch_id, 0), **_new_version("b0-v3")
    )
    assert xray.version_of(b0, 2).digest == key("v2:b0-v3")
    # the admin may write one too; the key is still the batch recorder's
    xray.supersede_batched_image(
        record_key=b1, leaf=_leaf(members, tree, batch_id, 1), **_new_version("b1")
    )
    assert xray.owner_of(b1) == accounts["owner"].address


def test_a_squatter_on_a_batched_key_is_displaced_by_the_batch_recorder(
    xray: XrayLedger, accounts: dict[str, LocalAccount]
) -> None:
    owner = xray.as_account(accounts["owner"])
    rival = xray.as_account(accounts["rival"])
    batch_id, tree, members = _batch_of_three(owner)
    b0 = members[0]["record_key"]
    # the rogue Recorder writes a forged digest under a key known so far only to the batch
    rival.record_image(**{**members[0], "digest": key("forged")}, body_part="CHEST", modality="DX")
    assert xray.owner_of(b0) == accounts["rival"].address
    # it cannot use the batch's proof itself
    with pytest.raises(errors.XrayNotOwner) as caught:
        rival.supersede_batched_image(record_key=b0, leaf=_leaf(members, tree, batch_id, 0),
                                      **_new_version("forged-2"))  # fmt: skip
    assert caught.value.values == (b0, accounts["rival"].address.lower(),
                                   accounts["owner"].address.lower())  # fmt: skip
    anchor = owner.supersede_batched_image(
        record_key=b0, leaf=_leaf(members, tree, batch_id, 0), **_new_version("b0")
    )
    (restored,) = xray.events("OwnershipRestored", from_block=anchor.block_number)
    assert restored.args == {"recordKey": b0, "from": accounts["rival"].address,
                             "to": accounts["owner"].address}  # fmt: skip
    assert xray.owner_of(b0) == accounts["owner"].address
    with pytest.raises(errors.XrayNotOwner):
        _supersede_key(rival, b0, "forged-3")
    with pytest.raises(errors.XrayNotOwner):
        rival.retire_image(record_key=b0, reason="withdrawn")
    # the squatter cannot take the key back with a batch of its own, anchored later
    rogue_tree = MerkleTree([leaf_hash(**{**members[0], "digest": key("forged")})])
    rogue_batch, _ = rival.record_batch(root=rogue_tree.root, count=1)
    rogue_leaf = BatchedLeaf(patient_key=members[0]["patient_key"], digest=key("forged"),
                             pixel_digest=members[0]["pixel_digest"], batch_id=rogue_batch,
                             proof=rogue_tree.proof(0))  # fmt: skip
    with pytest.raises(errors.XrayNotOwner):
        rival.supersede_batched_image(record_key=b0, leaf=rogue_leaf, **_new_version("forged-4"))
    assert xray.image_of(b0).current.digest == key("v2:b0")  # type: ignore[union-attr]


def test_an_earlier_batch_wins_over_a_later_rogue_batch(
    xray: XrayLedger, accounts: dict[str, LocalAccount]
) -> None:
    owner = xray.as_account(accounts["owner"])
    rival = xray.as_account(accounts["rival"])
    batch_id, tree, members = _batch_of_three(owner)
    b2 = members[2]["record_key"]
    forged = {**members[2], "digest": key("forged")}
    rogue_tree = MerkleTree([leaf_hash(**forged)])
    rogue_batch, _ = rival.record_batch(root=rogue_tree.root, count=1)
    rogue_leaf = BatchedLeaf(patient_key=forged["patient_key"], digest=forged["digest"],
                             pixel_digest=forged["pixel_digest"], batch_id=rogue_batch,
                             proof=rogue_tree.proof(0))  # fmt: skip
    rival.retire_batched_image(**forged, batch_id=rogue_batch, proof=rogue_tree.proof(0),
                               reason="withdrawn")  # fmt: skip
    assert xray.owner_of(b2) == accounts["rival"].address
    assert xray.retirement_of(b2) is not None
    # the earlier batch owns the key: the squatter's claim and its retirement are void
    anchor = owner.supersede_batched_image(
        record_key=b2, leaf=_leaf(members, tree, batch_id, 2), **_new_version("b2")
    )
    (restored,) = xray.events("OwnershipRestored", from_block=anchor.block_number)
    assert (restored.args["from"], restored.args["to"]) == (accounts["rival"].address,
                                                            accounts["owner"].address)  # fmt: skip
    assert xray.owner_of(b2) == accounts["owner"].address
    assert xray.retirement_of(b2) is None
    with pytest.raises(errors.XrayNotOwner):  # and its later batch proves nothing now
        rival.retire_batched_image(**forged, batch_id=rogue_leaf.batch_id,
                                   proof=rogue_tree.proof(0), reason="withdrawn")  # fmt: skip


def test_a_key_written_directly_before_the_batch_keeps_its_owner(
    xray: XrayLedger, accounts: dict[str, LocalAccount]
) -> None:
    owner = xray.as_account(accounts["owner"])
    rival = xray.as_account(accounts["rival"])
    members = [
        {"record_key": key(f"rec:early{i}"), "patient_key": key("patient:ken"),
         "digest": key(f"digest:early{i}"), "pixel_digest": key(f"pixels:early{i}")}
        for i in range(2)
    ]  # fmt: skip
    rival.record_image(**members[0], body_part="CHEST", modality="DX")  # first, in its own block
    tree = MerkleTree([leaf_hash(**m) for m in members])
    batch_id, _ = owner.record_batch(root=tree.root, count=2)
    with pytest.raises(errors.XrayNotOwner) as caught:
        owner.supersede_batched_image(record_key=members[0]["record_key"],
                                      leaf=_leaf(members, tree, batch_id, 0), **_new_version("late"))  # fmt: skip
    assert caught.value.values == (members[0]["record_key"], accounts["owner"].address.lower(),
                                   accounts["rival"].address.lower())  # fmt: skip
    assert xray.owner_of(members[0]["record_key"]) == accounts["rival"].address


def _supersede_key(ledger: XrayLedger, record_key: bytes, label: str) -> Anchor:
    return ledger.supersede_image(record_key=record_key, **_new_version(label))


def test_a_rival_recorders_refused_attempts_leave_the_firsts_verdict_intact(
    xray: XrayLedger, accounts: dict[str, LocalAccount], tmp_path: Path
) -> None:
    """The issue's check, as a verdict: after the rival's supersede and retire revert, the
    verifier still finds the owner's version, intact, with the owner as its recorder."""
    (image,) = dicom_fixtures.ct_series(tmp_path, 1, rows=8, cols=8)
    pseudonym_key = b"p" * 32
    with image.open("rb") as stream:
        fp, header = fingerprint_and_header(stream)
    record_key = keys.record_key(pseudonym_key, header.sop_instance_uid)
    xray.as_account(accounts["owner"]).record_image(
        record_key=record_key, patient_key=key("patient:ken"), digest=fp.digest,
        pixel_digest=fp.pixel_digest, body_part="CHEST", modality="CT",
    )  # fmt: skip
    forger = xray.as_account(accounts["rival"])
    with pytest.raises(errors.XrayNotOwner):
        forger.supersede_image(
            record_key=record_key, patient_key=key("patient:ken"), digest=key("forged"),
            pixel_digest=key("forged px"), body_part="CHEST", modality="CT",
        )  # fmt: skip
    with pytest.raises(errors.XrayNotOwner):
        forger.retire_image(record_key=record_key, reason="withdrawn")

    verdict = Verifier(ledger=xray, pseudonym_key=pseudonym_key).file(image)
    assert verdict.status == "intact", verdict
    assert verdict.evidence.recorder == accounts["owner"].address
    assert verdict.evidence.version == 1 and verdict.evidence.foreign_claims == []


def test_a_grant_is_kept_with_keys_listed_under_its_patient_and_study_and_revoked_once(
    xray: XrayLedger, accounts: dict[str, LocalAccount]
) -> None:
    doctor = xray.as_account(accounts["doctor"])
    now = xray.block_time(xray.head_block())
    with pytest.raises(errors.XrayGrantExpiry):
        doctor.grant_access(grantee=key("g"), patient_key=key("p"), study_key=None, expires_at=now)
    with pytest.raises(errors.XrayZeroValue):
        doctor.grant_access(
            grantee=bytes(32), patient_key=key("p"), study_key=None, expires_at=FAR_FUTURE
        )
    study_grant, _ = doctor.grant_access(
        grantee=key("g"), patient_key=key("p"), study_key=key("s"), expires_at=FAR_FUTURE
    )
    patient_grant, _ = doctor.grant_access(
        grantee=key("g"), patient_key=key("p"), study_key=None, expires_at=FAR_FUTURE
    )
    assert xray.grants_of(key("p")) == [study_grant, patient_grant]
    assert xray.grants_of(key("s")) == [study_grant]
    kept = xray.grant_of(study_grant)
    assert (kept.grantee, kept.patient_key, kept.study_key, kept.expires_at) == (
        key("g"), key("p"), key("s"), FAR_FUTURE,
    )  # fmt: skip
    assert kept.granter == accounts["doctor"].address and kept.revoked_by is None
    assert xray.grant_of(patient_grant).study_key is None
    xray.revoke_access(study_grant)  # the admin may revoke another's grant
    assert xray.grant_of(study_grant).revoked_by == xray.sender.address  # type: ignore[union-attr]
    with pytest.raises(errors.XrayGrantRevoked):
        doctor.revoke_access(study_grant)
    with pytest.raises(errors.XrayUnknownGrant):
        doctor.revoke_access(99)
    (revocation,) = xray.events("AccessRevoked")
    assert revocation.args["grantId"] == study_grant
