"""The key directory: private files, idempotent init, rotation, keyed names."""

from __future__ import annotations

import hashlib
import hmac
import re
import stat
from datetime import date
from pathlib import Path

import pytest

from gateway.core.keys import (
    Kek,
    Keyring,
    init_keys,
    load_keyring,
    load_pseudonym_key,
    new_kek_id,
    patient_key,
    record_key,
    rotate_kek,
)
from gateway.errors import ConfigError, KeyringError
from gateway.keyfiles import write_secret

TODAY = date(2026, 11, 21)
PSEUDONYM = bytes(range(32))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(keys_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(keys_dir)): p.read_bytes() for p in keys_dir.rglob("*") if p.is_file()
    }


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "var" / "keys"


def test_init_creates_private_files(keys_dir: Path) -> None:
    status = init_keys(keys_dir, today=TODAY)
    assert status.pseudonym_created and status.kek_created
    assert re.fullmatch(r"kek-20261121-[0-9a-f]{8}", status.current_kek_id)
    assert status.kek_ids == (status.current_kek_id,)

    assert mode(keys_dir) == 0o700
    assert mode(keys_dir / "kek") == 0o700
    files = sorted(p.relative_to(keys_dir).as_posix() for p in keys_dir.rglob("*") if p.is_file())
    assert files == ["kek/current", f"kek/{status.current_kek_id}.key", "pseudonym.key"]
    for name in files:
        assert mode(keys_dir / name) == 0o600, name
    assert (keys_dir / "kek" / "current").read_text().strip() == status.current_kek_id
    assert len(load_pseudonym_key(keys_dir)) == 32


def test_init_is_idempotent(keys_dir: Path) -> None:
    first = init_keys(keys_dir, today=TODAY)
    before = snapshot(keys_dir)
    second = init_keys(keys_dir, today=date(2027, 1, 1))
    assert not second.pseudonym_created and not second.kek_created
    assert second.current_kek_id == first.current_kek_id
    assert snapshot(keys_dir) == before


def test_init_never_overwrites_an_existing_pseudonym_key(keys_dir: Path) -> None:
    write_secret(keys_dir / "pseudonym.key", PSEUDONYM.hex().encode() + b"\n")
    status = init_keys(keys_dir, today=TODAY)
    assert not status.pseudonym_created and status.kek_created
    assert load_pseudonym_key(keys_dir) == PSEUDONYM


def test_init_makes_a_new_current_kek_and_keeps_the_old_ones(keys_dir: Path) -> None:
    first = init_keys(keys_dir, today=TODAY)
    (keys_dir / "kek" / "current").unlink()
    status = init_keys(keys_dir, today=TODAY)
    assert status.kek_created
    assert status.current_kek_id != first.current_kek_id
    assert set(status.kek_ids) == {first.current_kek_id, status.current_kek_id}


def test_init_does_not_paper_over_a_missing_current_kek(keys_dir: Path) -> None:
    status = init_keys(keys_dir, today=TODAY)
    (keys_dir / "kek" / f"{status.current_kek_id}.key").unlink()
    with pytest.raises(KeyringError, match=status.current_kek_id) as caught:
        init_keys(keys_dir, today=TODAY)
    assert caught.value.kek_id == status.current_kek_id


def test_rotate_makes_a_new_current_kek_and_keeps_the_old(keys_dir: Path) -> None:
    first = init_keys(keys_dir, today=TODAY)
    new = rotate_kek(keys_dir, today=date(2026, 12, 1))
    assert new.kek_id.startswith("kek-20261201-")
    keyring = load_keyring(keys_dir)
    assert keyring.current == new
    assert set(keyring.ids) == {first.current_kek_id, new.kek_id}
    assert keyring.get(first.current_kek_id).kek_id == first.current_kek_id
    assert mode(keys_dir / "kek" / "current") == 0o600
    assert mode(keys_dir / "kek" / f"{new.kek_id}.key") == 0o600


def test_two_rotations_on_one_day_get_distinct_ids(keys_dir: Path) -> None:
    init_keys(keys_dir, today=TODAY)
    ids = {rotate_kek(keys_dir, today=TODAY).kek_id for _ in range(5)}
    assert len(ids) == 5


def test_kek_id_defaults_to_utc_today() -> None:
    assert re.fullmatch(r"kek-\d{8}-[0-9a-f]{8}", new_kek_id())
    assert new_kek_id(TODAY).startswith("kek-20261121-")


def test_keyring_names_the_missing_id() -> None:
    keyring = Keyring.of(Kek("kek-a", bytes(32)))
    with pytest.raises(KeyringError, match="kek-b") as caught:
        keyring.get("kek-b")
    assert caught.value.kek_id == "kek-b"


def test_keyring_refuses_two_keys_under_one_id() -> None:
    with pytest.raises(ValueError, match="share the id"):
        Keyring.of(Kek("kek-a", bytes(32)), Kek("kek-a", b"\x01" * 32))


def test_kek_hides_its_key_and_checks_itself() -> None:
    kek = Kek("kek-a", b"\xab" * 32)
    assert "ab" * 4 not in repr(kek)
    with pytest.raises(ValueError, match="32 bytes"):
        Kek("kek-a", bytes(16))
    with pytest.raises(ValueError, match="KEK id"):
        Kek("../escape", bytes(32))


def test_uninitialised_directory_is_a_config_error(keys_dir: Path) -> None:
    with pytest.raises(ConfigError, match="keys init"):
        load_keyring(keys_dir)
    with pytest.raises(ConfigError, match="does not exist"):
        load_pseudonym_key(keys_dir)


def test_malformed_key_file_is_a_config_error(keys_dir: Path) -> None:
    write_secret(keys_dir / "pseudonym.key", b"not hex\n")
    with pytest.raises(ConfigError, match="hex"):
        load_pseudonym_key(keys_dir)


def test_readable_key_file_is_refused(keys_dir: Path) -> None:
    status = init_keys(keys_dir, today=TODAY)
    (keys_dir / "kek" / f"{status.current_kek_id}.key").chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_keyring(keys_dir)


# --- keyed names ---------------------------------------------------------------------


def test_record_key_is_the_design_hmac() -> None:
    uid = "1.2.826.0.1.3680043.8.498.1"
    expected = hmac.new(PSEUDONYM, b"sop:" + uid.encode(), hashlib.sha256).digest()
    assert record_key(PSEUDONYM, uid) == expected
    assert len(expected) == 32


def test_patient_key_is_the_design_hmac() -> None:
    expected = hmac.new(PSEUDONYM, "patient:HOSP|Müller-42".encode(), hashlib.sha256).digest()
    assert patient_key(PSEUDONYM, "HOSP", "Müller-42") == expected


def test_dicom_padding_is_stripped() -> None:
    assert record_key(PSEUDONYM, "1.2.3\x00") == record_key(PSEUDONYM, "1.2.3")
    assert patient_key(PSEUDONYM, "HOSP ", "42  ") == patient_key(PSEUDONYM, "HOSP", "42")
    assert patient_key(PSEUDONYM, "", " 42") != patient_key(PSEUDONYM, "", "42")


def test_keyed_names_differ_for_different_inputs() -> None:
    names = {
        record_key(PSEUDONYM, "1.2.3"),
        record_key(PSEUDONYM, "1.2.4"),
        record_key(b"\x01" * 32, "1.2.3"),
        patient_key(PSEUDONYM, "HOSP", "42"),
        patient_key(PSEUDONYM, "HOSP", "43"),
        patient_key(PSEUDONYM, "CLINIC", "42"),
        patient_key(PSEUDONYM, "", "42"),
    }
    assert len(names) == 7


def test_keyed_names_refuse_bad_inputs() -> None:
    with pytest.raises(ValueError, match="empty"):
        record_key(PSEUDONYM, " \x00")
    with pytest.raises(ValueError, match="32 bytes"):
        record_key(PSEUDONYM[:16], "1.2.3")
