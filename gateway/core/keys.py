"""The key directory: the pseudonym key, the KEKs that wrap data keys, and the keyed names.

Layout of ``keys_dir`` (directories 0700, files 0600, written by :mod:`gateway.keyfiles`)::

    pseudonym.key       32 random bytes, hex: keys record_key and patient_key
    kek/<kek_id>.key    32 random bytes, hex: one key-encryption key per id, deleted only
                        by ``keys rotate --retire-old`` once nothing is wrapped under it
    kek/current         the id of the KEK that wraps data keys of new objects
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import MappingProxyType

from gateway.errors import ConfigError, KeyringError
from gateway.keyfiles import read_secret, replace_secret, write_secret

KEY_SIZE = 32
PSEUDONYM_FILE = "pseudonym.key"
KEK_DIR = "kek"
CURRENT_FILE = "current"

# A KEK id becomes a file name and travels in every sealed header as ASCII, so it is kept
# to characters that are safe in both; no leading dot, so it never hides among temp files.
_KEK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_STUDY_KEY_ID = re.compile(r"study-[0-9a-f]{16}")
# DICOM pads string values to even length with a trailing space (UI: a trailing NUL).
_DICOM_PADDING = " \x00"


@dataclass(frozen=True)
class Kek:
    """A key-encryption key: wraps the data keys of sealed objects.

    Attributes
    ----------
    kek_id:
        Its name in the key directory and in sealed headers, e.g. ``kek-20261121-1a2b3c4d``.
    key:
        32 bytes of AES-256 key; kept out of ``repr``.
    """

    kek_id: str
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _KEK_ID.fullmatch(self.kek_id):
            raise ValueError(f"KEK id {self.kek_id!r} is not 1-255 of [A-Za-z0-9._-]")
        if len(self.key) != KEY_SIZE:
            raise ValueError(f"KEK {self.kek_id} must be {KEY_SIZE} bytes, not {len(self.key)}")


@dataclass(frozen=True)
class StudyKey:
    """A study's own key: wraps the data keys of that study's sealed objects (format v2).

    It is kept wrapped under a KEK in the index, and destroying it is what erasure
    does: every object of the study then stays sealed for good (crypto-shredding).

    Attributes
    ----------
    key_id:
        ``study-`` and 16 random hex digits: names it in sealed headers; no UID in it.
    key:
        32 bytes of AES-256 key; kept out of ``repr``.
    """

    key_id: str
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _STUDY_KEY_ID.fullmatch(self.key_id):
            raise ValueError(f"study key id {self.key_id!r} is not study-<16 hex digits>")
        if len(self.key) != KEY_SIZE:
            raise ValueError(f"study key must be {KEY_SIZE} bytes, not {len(self.key)}")


def new_study_key() -> StudyKey:
    """A fresh random study key with a fresh random id."""
    return StudyKey(f"study-{secrets.token_hex(8)}", _random_key())


@dataclass(frozen=True)
class Keyring:
    """Every KEK the gateway knows, by id, and the current one that seals new objects.

    Attributes
    ----------
    current:
        The KEK for new objects; always also in ``keks``.
    keks:
        Every KEK by id, read-only; old ones stay so objects sealed under them still open.
    """

    current: Kek
    keks: Mapping[str, Kek] = field(default_factory=dict)

    def __post_init__(self) -> None:
        keks = dict(self.keks)
        for kek_id, kek in keks.items():
            if kek_id != kek.kek_id:
                raise ValueError(f"KEK {kek.kek_id} is filed under {kek_id!r}")
        if keks.setdefault(self.current.kek_id, self.current) != self.current:
            raise ValueError(f"two different KEKs share the id {self.current.kek_id}")
        object.__setattr__(self, "keks", MappingProxyType(keks))

    @classmethod
    def of(cls, current: Kek, *older: Kek) -> Keyring:
        """Build a keyring from its current KEK and any older ones."""
        return cls(current, {kek.kek_id: kek for kek in older})

    def get(self, kek_id: str) -> Kek:
        """Return the KEK with id ``kek_id``.

        Raises
        ------
        KeyringError
            No KEK has that id; ``.kek_id`` names it.
        """
        try:
            return self.keks[kek_id]
        except KeyError:
            held = ", ".join(sorted(self.keks))
            raise KeyringError(
                f"KEK {kek_id!r} is not in the keyring (it holds: {held})", kek_id=kek_id
            ) from None

    @property
    def ids(self) -> tuple[str, ...]:
        """Every KEK id, sorted."""
        return tuple(sorted(self.keks))


@dataclass(frozen=True)
class KeyStatus:
    """What :func:`init_keys` found and made.

    Attributes
    ----------
    keys_dir:
        The key directory.
    pseudonym_created, kek_created:
        Whether this call created the pseudonym key, and a KEK (made current).
    current_kek_id:
        The KEK that seals new objects.
    kek_ids:
        Every KEK id in the directory, sorted.
    """

    keys_dir: Path
    pseudonym_created: bool
    kek_created: bool
    current_kek_id: str
    kek_ids: tuple[str, ...]


def new_kek_id(today: date | None = None) -> str:
    """Name a new KEK ``kek-<YYYYMMDD>-<8 hex>``.

    Parameters
    ----------
    today:
        The date in the id; UTC today if omitted. The random suffix keeps two rotations
        on one day apart.
    """
    day = today or datetime.now(UTC).date()
    return f"kek-{day:%Y%m%d}-{secrets.token_hex(4)}"


def init_keys(keys_dir: Path, *, today: date | None = None) -> KeyStatus:
    """Create the pseudonym key and a first KEK where missing; never overwrite a key.

    Idempotent: on an initialised directory it only reports. If ``kek/current`` is
    missing, a new KEK is created and made current (older KEK files are kept, so nothing
    sealed under them is lost).

    Parameters
    ----------
    keys_dir:
        The key directory (``settings.keys_dir``); created 0700 if missing.
    today:
        Date for a new KEK's id; UTC today if omitted.

    Returns
    -------
    KeyStatus
        What was there and what this call created.

    Raises
    ------
    KeyringError
        ``kek/current`` names a KEK whose file is missing.
    ConfigError
        A key file is malformed or readable by others.
    """
    _make_private_dir(keys_dir)
    _make_private_dir(keys_dir / KEK_DIR)

    pseudonym_created = _create_once(keys_dir / PSEUDONYM_FILE, _encode_key(_random_key()))

    kek_created = False
    current_file = keys_dir / KEK_DIR / CURRENT_FILE
    if not current_file.exists():
        kek = _new_kek(keys_dir, today=today)
        # Losing this race to another `keys init` leaves our KEK unused but harmless.
        kek_created = _create_once(current_file, kek.kek_id.encode("ascii") + b"\n")

    keyring = load_keyring(keys_dir)
    load_pseudonym_key(keys_dir)  # a malformed file should fail here, not at first ingest
    return KeyStatus(
        keys_dir=keys_dir,
        pseudonym_created=pseudonym_created,
        kek_created=kek_created,
        current_kek_id=keyring.current.kek_id,
        kek_ids=keyring.ids,
    )


def rotate_kek(keys_dir: Path, *, today: date | None = None) -> Kek:
    """Create a new KEK and make it current; older KEKs stay so old objects still open.

    Objects sealed before the rotation keep naming their old KEK until
    :func:`gateway.core.seal.rewrap_file` (or ``rewrap_header``) re-wraps their data keys.

    Parameters
    ----------
    keys_dir:
        The key directory.
    today:
        Date for the new KEK's id; UTC today if omitted.

    Returns
    -------
    Kek
        The new current KEK.
    """
    _make_private_dir(keys_dir)
    _make_private_dir(keys_dir / KEK_DIR)
    kek = _new_kek(keys_dir, today=today)
    replace_secret(keys_dir / KEK_DIR / CURRENT_FILE, kek.kek_id.encode("ascii") + b"\n")
    return kek


def destroy_old_keks(keys_dir: Path, *, keep: str) -> list[str]:
    """Destroy every KEK but ``keep`` (the current one): each file is overwritten with zeros
    and fsynced, then removed. Returns the ids destroyed.

    Only for when nothing is wrapped under them any more (``keys rotate --retire-old``
    checks): a copy of an object sealed under one of them then opens with no key here.
    """
    kek_dir = keys_dir / KEK_DIR
    destroyed = []
    for path in sorted(kek_dir.glob("*.key")):
        kek_id = path.name.removesuffix(".key")
        if kek_id == keep or path.name.startswith("."):
            continue
        with path.open("r+b") as stream:
            stream.write(bytes(path.stat().st_size))
            stream.flush()
            os.fsync(stream.fileno())
        path.unlink()
        destroyed.append(kek_id)
    return destroyed


def load_keyring(keys_dir: Path) -> Keyring:
    """Read every KEK in ``keys_dir/kek`` and which one is current.

    Raises
    ------
    ConfigError
        The directory is not initialised, or a key file is malformed or readable by others.
    KeyringError
        ``kek/current`` names a KEK whose file is missing.
    """
    kek_dir = keys_dir / KEK_DIR
    current_file = kek_dir / CURRENT_FILE
    if not current_file.exists():
        raise ConfigError(f"no current KEK in {kek_dir}: run `xray-gateway keys init`")
    current_id = read_secret(current_file).decode("ascii", "replace").strip()
    # Dot files are keyfiles' half-written temporaries, never KEKs.
    paths = [path for path in sorted(kek_dir.glob("*.key")) if not path.name.startswith(".")]
    keks = [_read_kek(path) for path in paths]
    by_id = {kek.kek_id: kek for kek in keks}
    if current_id not in by_id:
        raise KeyringError(
            f"{current_file} names KEK {current_id!r}, but {kek_dir} has no {current_id}.key",
            kek_id=current_id,
        )
    return Keyring(by_id[current_id], by_id)


def load_pseudonym_key(keys_dir: Path) -> bytes:
    """Read the 32-byte pseudonym key.

    Raises
    ------
    ConfigError
        The file is missing, malformed, or readable by others.
    """
    return load_key_file(keys_dir / PSEUDONYM_FILE)


def load_key_file(path: Path) -> bytes:
    """Read a 32-byte key file (hex, mode 0600), e.g. a pseudonym key handed to an auditor."""
    return _decode_key(path)


def record_key(pseudonym_key: bytes, sop_instance_uid: str) -> bytes:
    """Name an image without PHI: HMAC-SHA256(pseudonym key, ``"sop:" + SOPInstanceUID``).

    Trailing spaces and NULs (DICOM's padding to even length) are stripped from the UID
    first, so the value as read from any file or network hop gives the same key; the
    result is UTF-8 encoded.

    Parameters
    ----------
    pseudonym_key:
        The site's 32-byte pseudonym key.
    sop_instance_uid:
        The image's SOP Instance UID.

    Raises
    ------
    ValueError
        The UID is empty once padding is stripped.
    """
    uid = _unpad(sop_instance_uid)
    if not uid:
        raise ValueError("SOP Instance UID is empty")
    return _hmac(pseudonym_key, b"sop:" + uid.encode("utf-8"))


def patient_key(pseudonym_key: bytes, issuer: str, patient_id: str) -> bytes:
    """Name a patient without PHI.

    HMAC-SHA256(pseudonym key, ``"patient:" + IssuerOfPatientID + "|" + PatientID``), the
    values UTF-8 encoded after trailing spaces and NULs (DICOM padding) are stripped.
    Leading spaces are kept: they are part of the value as the modality sent it.

    Parameters
    ----------
    pseudonym_key:
        The site's 32-byte pseudonym key.
    issuer:
        Issuer of Patient ID (0010,0021); ``""`` when absent.
    patient_id:
        Patient ID (0010,0020).
    """
    message = b"patient:" + _unpad(issuer).encode("utf-8") + b"|"
    return _hmac(pseudonym_key, message + _unpad(patient_id).encode("utf-8"))


def study_ref(pseudonym_key: bytes, study_instance_uid: str) -> bytes:
    """Name a study without PHI: HMAC-SHA256(pseudonym key, ``"study:" + StudyInstanceUID``).

    What the index files a study's key under, so the key table holds no UID in the clear.
    Padding is stripped as in :func:`record_key`.

    Raises
    ------
    ValueError
        The UID is empty once padding is stripped.
    """
    uid = _unpad(study_instance_uid)
    if not uid:
        raise ValueError("Study Instance UID is empty")
    return _hmac(pseudonym_key, b"study:" + uid.encode("utf-8"))


def _hmac(key: bytes, message: bytes) -> bytes:
    if len(key) != KEY_SIZE:
        raise ValueError(f"pseudonym key must be {KEY_SIZE} bytes, not {len(key)}")
    return hmac.new(key, message, hashlib.sha256).digest()


def _unpad(value: str) -> str:
    return value.rstrip(_DICOM_PADDING)


def _random_key() -> bytes:
    return secrets.token_bytes(KEY_SIZE)


def _encode_key(key: bytes) -> bytes:
    return key.hex().encode("ascii") + b"\n"


def _decode_key(path: Path) -> bytes:
    text = read_secret(path).decode("ascii", "replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"key file {path} does not hold hex") from None
    if len(key) != KEY_SIZE:
        raise ConfigError(f"key file {path} holds {len(key)} bytes, not {KEY_SIZE}")
    return key


def _read_kek(path: Path) -> Kek:
    try:
        return Kek(path.name.removesuffix(".key"), _decode_key(path))
    except ValueError as error:
        raise ConfigError(f"key file {path}: {error}") from None


def _new_kek(keys_dir: Path, *, today: date | None) -> Kek:
    # The 32-bit suffix makes a clash on one day unlikely; write_secret refuses to
    # replace a file, so a clash costs a retry instead of a key.
    for _ in range(8):
        kek = Kek(new_kek_id(today), _random_key())
        if _create_once(keys_dir / KEK_DIR / f"{kek.kek_id}.key", _encode_key(kek.key)):
            return kek
    raise ConfigError(f"could not find a free KEK id in {keys_dir / KEK_DIR}")


def _create_once(path: Path, data: bytes) -> bool:
    """Write a new secret file; False if it already exists."""
    if path.exists():
        return False
    try:
        write_secret(path, data)
    except FileExistsError:
        return False
    return True


def _make_private_dir(path: Path) -> None:
    # mkdir(parents=True) gives parents the default mode, so each private level is made
    # on its own with 0700; an existing directory is left as the operator set it.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
