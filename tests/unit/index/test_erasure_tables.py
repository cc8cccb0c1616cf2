"""The erasure part's index tables: study keys made once, destroyed for good, re-wrapped."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.core.keys import Kek, Keyring
from gateway.core.seal import open_sealed, seal
from gateway.errors import KeyShredded, SealError, SealKeyMissing
from gateway.index.db import Index
from gateway.index.erasure import StudyKeys, erasure, log_plan, mark

KEK = Kek("kek-20261121-aaaaaaaa", bytes(range(32)))
KEK_NEW = Kek("kek-20261122-bbbbbbbb", bytes(range(32, 64)))
REF = b"\x05" * 32
OTHER = b"\x06" * 32
NAME = b"\x11" * 32


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    found = Index(tmp_path / "index.sqlite")
    yield found
    found.close()


def sealed_under(keys: StudyKeys, ref: bytes) -> bytes:
    key, _ = keys.for_study(ref)
    out = io.BytesIO()
    seal(io.BytesIO(b"pixels" * 100), out, record_key=NAME, digest=NAME, kek=key)
    return out.getvalue()


def opened(blob: bytes, keys: StudyKeys) -> bytes:
    out = io.BytesIO()
    open_sealed(
        io.BytesIO(blob), out, record_key=NAME, digest=NAME, keyring=keys.keyring,
        study_keys=keys,
    )  # fmt: skip
    return out.getvalue()


def test_a_study_gets_one_key_however_often_it_is_asked(index: Index) -> None:
    keys = StudyKeys(index, Keyring.of(KEK))
    first, kek_id = keys.for_study(REF)
    assert keys.for_study(REF)[0] == first and kek_id == KEK.kek_id
    assert keys.for_study(OTHER)[0].key_id != first.key_id
    # the table holds no key in the clear
    ((wrapped,),) = index.query("SELECT wrapped_key FROM study_keys WHERE study_ref = ?", (REF,))
    assert first.key not in bytes(wrapped)


def test_a_destroyed_study_key_shreds_its_objects_and_only_those(index: Index) -> None:
    keys = StudyKeys(index, Keyring.of(KEK))
    erased, kept = sealed_under(keys, REF), sealed_under(keys, OTHER)
    assert keys.destroy([REF]) == 1
    with pytest.raises(KeyShredded):
        opened(erased, keys)
    with pytest.raises(KeyShredded):
        keys.for_study(REF)  # nothing new is sealed for an erased study
    assert opened(kept, keys) == b"pixels" * 100
    ((wrapped,),) = index.query("SELECT wrapped_key FROM study_keys WHERE study_ref = ?", (REF,))
    assert wrapped is None
    assert keys.destroy([REF]) == 0  # a second erasure finds nothing left to destroy


def test_kek_rotation_rewraps_study_keys_and_objects_still_open(index: Index) -> None:
    keys = StudyKeys(index, Keyring.of(KEK))
    blob = sealed_under(keys, REF)
    assert keys.rewrap(KEK_NEW) == 1
    rotated = StudyKeys(index, Keyring.of(KEK_NEW))  # the old KEK retired
    assert opened(blob, rotated) == b"pixels" * 100
    with pytest.raises(SealKeyMissing):
        opened(blob, keys)  # the old ring alone no longer unwraps it


def test_an_unknown_study_key_is_missing(index: Index) -> None:
    with pytest.raises(SealError):
        StudyKeys(index, Keyring.of(KEK)).study_key("study-0000000000000000")


def test_the_erasure_log_keeps_a_plan_once_and_its_state(index: Index) -> None:
    plan = {"studies": ["ab"], "instances": 2}
    first = log_plan(index, plan_hash="h1", reason="gdpr_art17", asked_by="admin", plan=plan)
    again = log_plan(index, plan_hash="h1", reason="gdpr_art17", asked_by="other", plan=plan)
    assert again == first and first.state == "planned" and first.plan == plan
    mark(index, "h1", "erasing", by="admin")
    mark(index, "h1", "done")
    found = erasure(index, "h1")
    assert found is not None and found.state == "done" and found.confirmed_by == "admin"
