"""Sealed objects, format version 2: data keys under a destroyable study key (erasure)."""

from __future__ import annotations

import io

import pytest

from gateway.core.keys import Kek, Keyring, StudyKey, new_study_key
from gateway.core.seal import (
    FORMAT_VERSION,
    STUDY_KEY_VERSION,
    open_sealed,
    read_seal_header,
    reseal_v2,
    rewrap_header,
    seal,
)
from gateway.errors import KeyShredded, SealCorrupt, SealError, SealKeyMissing

SEG = 4096
KEK = Kek("kek-20261121-aaaaaaaa", bytes(range(32)))
KEK_NEW = Kek("kek-20261122-bbbbbbbb", bytes(range(32, 64)))
KEYRING = Keyring.of(KEK)
RECORD_KEY = bytes.fromhex("11" * 32)
DIGEST = bytes.fromhex("22" * 32)
PLAIN = bytes(range(256)) * 40  # several segments


class Keys:
    """Study keys by id, some destroyed: what the index's study key table answers."""

    def __init__(self, *keys: StudyKey) -> None:
        self.keys = {key.key_id: key for key in keys}
        self.destroyed: set[str] = set()

    def study_key(self, key_id: str) -> StudyKey:
        if key_id in self.destroyed:
            raise KeyShredded(f"study key {key_id} was destroyed by an erasure", key_id=key_id)
        try:
            return self.keys[key_id]
        except KeyError:
            raise SealKeyMissing(f"no study key {key_id}", kek_id=key_id) from None


def sealed(kek: Kek | StudyKey) -> bytes:
    out = io.BytesIO()
    seal(io.BytesIO(PLAIN), out, record_key=RECORD_KEY, digest=DIGEST, kek=kek, segment_size=SEG)
    return out.getvalue()


def opened(blob: bytes, *, keyring: Keyring = KEYRING, study_keys: Keys | None = None) -> bytes:
    out = io.BytesIO()
    open_sealed(
        io.BytesIO(blob), out, record_key=RECORD_KEY, digest=DIGEST, keyring=keyring,
        study_keys=study_keys,
    )  # fmt: skip
    return out.getvalue()


def test_a_study_key_seals_version_2_naming_the_study_key() -> None:
    key = new_study_key()
    header = read_seal_header(io.BytesIO(sealed(key)))
    assert header.version == STUDY_KEY_VERSION
    assert header.kek_id == key.key_id


def test_version_2_opens_with_its_study_key() -> None:
    key = new_study_key()
    assert opened(sealed(key), study_keys=Keys(key)) == PLAIN


def test_version_1_still_opens_with_the_kek() -> None:
    blob = sealed(KEK)
    assert read_seal_header(io.BytesIO(blob)).version == FORMAT_VERSION
    assert opened(blob) == PLAIN


def test_a_destroyed_study_key_is_key_shredded() -> None:
    key = new_study_key()
    keys = Keys(key)
    keys.destroyed.add(key.key_id)
    with pytest.raises(KeyShredded) as raised:
        opened(sealed(key), study_keys=keys)
    assert raised.value.key_id == key.key_id


def test_version_2_does_not_open_with_any_kek() -> None:
    key = new_study_key()
    # The KEK ring alone, even one holding a KEK filed under the study key's id, cannot
    # open it: the data key is under the study key only.
    impostor = Kek(key.key_id, KEK.key)
    with pytest.raises(SealKeyMissing):
        opened(sealed(key), keyring=Keyring.of(KEK, impostor))
    with pytest.raises(SealCorrupt):
        opened(sealed(key), study_keys=Keys(StudyKey(key.key_id, KEK.key)))


def test_version_2_does_not_open_with_another_study_key() -> None:
    key, other = new_study_key(), new_study_key()
    with pytest.raises(SealCorrupt):
        opened(sealed(key), study_keys=Keys(StudyKey(key.key_id, other.key)))


def test_an_unknown_study_key_is_missing() -> None:
    with pytest.raises(SealKeyMissing):
        opened(sealed(new_study_key()), study_keys=Keys())


def test_kek_rotation_leaves_version_2_headers_alone() -> None:
    key = new_study_key()
    blob = sealed(key)
    header, offset = rewrap_header(io.BytesIO(blob), keyring=KEYRING, new_kek=KEK_NEW)
    assert header + blob[offset:] == blob


def test_a_version_1_object_moves_to_version_2() -> None:
    key = new_study_key()
    out = io.BytesIO()
    reseal_v2(
        io.BytesIO(sealed(KEK)), out, record_key=RECORD_KEY, digest=DIGEST, keyring=KEYRING,
        study_key=key, segment_size=SEG,
    )  # fmt: skip
    moved = out.getvalue()
    assert read_seal_header(io.BytesIO(moved)).version == STUDY_KEY_VERSION
    assert opened(moved, study_keys=Keys(key)) == PLAIN
    with pytest.raises(SealError):
        opened(moved)  # no longer a KEK's to open


def test_study_key_ids_carry_no_uid() -> None:
    with pytest.raises(ValueError):
        StudyKey("study-1.2.840.113619", bytes(32))
