"""Which grant lets a grantee read a study, and why a read is refused (index on SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.access import grantee_key, study_key, who_key
from gateway.errors import AccessDenied, GrantNotStanding, UnknownGrant
from gateway.index import grants as rows
from gateway.index.db import Index
from gateway.index.grants import GrantRow
from gateway.trust.grants import Grants

KEY = bytes(range(32))
NOW = 1_800_000_000.0
PATIENT, OTHER_PATIENT = b"p" * 32, b"q" * 32
DR = "tok-dr"  # the id of the token issued to "dr"


def populate(index: Index) -> Index:
    """Three studies: two of one patient, one of another."""
    for n, (study, patient) in enumerate([("1.2.1", PATIENT), ("1.2.2", PATIENT),
                                          ("1.2.3", OTHER_PATIENT)]):  # fmt: skip
        row = index.add_received(
            entry_id=f"e{n}", sop_instance_uid=f"{study}.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            calling_aet="CT", size=1,
        )  # fmt: skip
        index.update(row, study_instance_uid=study, patient_key=patient)
    return index


@pytest.fixture
def index(tmp_path: Path) -> Index:
    return populate(Index(tmp_path / "index.sqlite"))


def _grant(
    grant_id: int, *, study: str | None = "1.2.1", expires: float = NOW + 60,
    revoked: bool = False, grantee: str = "dr", grantee_id: str | None = DR,
) -> GrantRow:  # fmt: skip
    return GrantRow(
        id=grant_id, grantee=grantee, grantee_kind="token",
        grantee_key=grantee_key(KEY, grantee_id or "name:" + grantee),  # as the grant binds it
        patient_key=PATIENT, study_instance_uid=study,
        study_key=study_key(KEY, study) if study else None, expires_at=expires,
        granted_at=NOW - 60, granted_by="admin", tx_hash="0x1", block_number=1,
        revoked_at=NOW - 1 if revoked else None, revoked_by="admin" if revoked else None,
        revoke_tx="0x2" if revoked else None, grantee_id=grantee_id or "",
    )  # fmt: skip


def _grants(index: Index) -> Grants:
    return Grants(index=index, ledger=None, pseudonym_key=KEY, clock=lambda: NOW)


def _reason(grants: Grants, study: str, grantee: str = DR) -> str:
    with pytest.raises(AccessDenied) as denied:
        grants.check(grantee, study)
    return denied.value.reason


def test_a_study_grant_covers_that_study_only_and_only_for_its_grantee(index: Index) -> None:
    rows.add(index, _grant(1))
    grants = _grants(index)
    assert grants.check(DR, "1.2.1").id == 1
    assert _reason(grants, "1.2.2") == "not-granted"  # the same patient's other study
    assert _reason(grants, "1.2.1", grantee="someone-else") == "not-granted"
    assert grants.studies(DR) == ["1.2.1"]


def test_a_patient_grant_covers_each_study_of_that_patient(index: Index) -> None:
    rows.add(index, _grant(1, study=None))
    grants = _grants(index)
    assert grants.check(DR, "1.2.1").id == grants.check(DR, "1.2.2").id == 1
    assert _reason(grants, "1.2.3") == "not-granted"
    assert grants.studies(DR) == ["1.2.1", "1.2.2"]


def test_the_refusal_says_expired_or_revoked_after_the_newest_grant(index: Index) -> None:
    grants = _grants(index)
    rows.add(index, _grant(1, expires=NOW))  # expires at the very second: no longer holds
    assert _reason(grants, "1.2.1") == "grant-expired"
    rows.add(index, _grant(2, revoked=True))
    assert _reason(grants, "1.2.1") == "grant-revoked"
    assert grants.studies(DR) == []
    rows.add(index, _grant(3))  # a new grant opens it again
    assert grants.check(DR, "1.2.1").id == 3


def test_a_revocation_is_kept_once_and_an_unknown_grant_is_said(index: Index) -> None:
    rows.add(index, _grant(1))
    rows.revoke(index, 1, at=NOW, by="admin", tx_hash="0xa")
    rows.revoke(index, 1, at=NOW + 5, by="other", tx_hash="0xb")  # already revoked: unchanged
    kept = _grants(index).get(1)
    assert (kept.revoked_at, kept.revoked_by, kept.revoke_tx) == (NOW, "admin", "0xa")
    assert kept.state(NOW) == "revoked"
    with pytest.raises(UnknownGrant):
        _grants(index).get(2)
    with pytest.raises(UnknownGrant):
        _grants(index).revoke(2, by="admin")


def test_the_chain_names_a_grantee_by_key_never_by_name() -> None:
    address = "0x" + "Ab" * 20
    assert grantee_key(KEY, address) == bytes(12) + bytes.fromhex("ab" * 20)
    assert grantee_key(KEY, DR) == who_key(KEY, "token-id", DR)  # by the token's id
    assert grantee_key(KEY, "tok-other") != grantee_key(KEY, DR)
    # a token from before ids keeps the key its grants had: the reader key of its name
    assert grantee_key(KEY, "name:dr") == who_key(KEY, "token", "dr")
    assert b"dr" not in grantee_key(KEY, DR)


def test_a_grant_binds_the_token_id_so_a_new_token_of_the_name_inherits_nothing(
    index: Index,
) -> None:
    rows.add(index, _grant(1))  # to "dr" while its token was tok-dr
    grants = _grants(index)
    assert grants.check(DR, "1.2.1").id == 1
    assert _reason(grants, "1.2.1", grantee="tok-dr-again") == "not-granted"
    assert grants.studies("tok-dr-again") == []
    assert grants.get(1).grantee_id == DR


def test_a_row_from_before_ids_binds_the_legacy_id_of_its_name(index: Index) -> None:
    rows.add(index, _grant(1, grantee_id=None))  # written before schema step "grantee_id"
    grants = _grants(index)
    assert grants.get(1).grantee_id == "name:dr"
    assert grants.check("name:dr", "1.2.1").id == 1  # the token issued then, with no id
    assert _reason(grants, "1.2.1") == "not-granted"  # a token issued with an id since


def test_a_token_holders_grant_needs_the_tokens_id(index: Index) -> None:
    with pytest.raises(ValueError, match="has no token"):
        _grants(index).grant(to="dr", until=NOW + 60, by="admin", study_instance_uid="1.2.1")


def test_a_grant_is_carried_on_only_while_it_stands_and_only_to_its_patients_study(
    index: Index,
) -> None:
    rows.add(index, _grant(1, revoked=True))
    rows.add(index, _grant(2, expires=NOW - 1))
    rows.add(index, _grant(3, study=None))  # a patient grant
    rows.add(index, _grant(4))  # a study grant on 1.2.1
    grants = _grants(index)
    with pytest.raises(GrantNotStanding) as revoked:
        grants.replace(1, by="admin", until=NOW + 600)
    with pytest.raises(GrantNotStanding) as expired:
        grants.replace(2, by="admin", until=NOW + 600)
    assert (revoked.value.state, expired.value.state) == ("revoked", "expired")
    with pytest.raises(ValueError, match="in the future"):
        grants.replace(3, by="admin", until=NOW)
    with pytest.raises(ValueError, match="give a new expiry"):
        grants.replace(3, by="admin")
    with pytest.raises(ValueError, match="not one of the grant's patient's"):
        grants.replace(3, by="admin", study_instance_uid="1.2.3")
    with pytest.raises(ValueError, match="only be narrowed to its own study"):
        grants.replace(4, by="admin", study_instance_uid="1.2.2")
    with pytest.raises(UnknownGrant):
        grants.replace(9, by="admin", until=NOW + 600)
    # each refusal came before any write: no grant was added or revoked
    assert [(g.id, g.state(NOW)) for g in grants.listed()] == [
        (1, "revoked"), (2, "expired"), (3, "active"), (4, "active"),
    ]  # fmt: skip


def test_the_zero_address_is_no_grantee(index: Index) -> None:
    """The contract refuses it (XrayZeroValue): the grant is refused before any send."""
    with pytest.raises(ValueError, match="zero address"):
        _grants(index).grant(
            to="0x" + "0" * 40, until=NOW + 60, by="admin", study_instance_uid="1.2.1"
        )
