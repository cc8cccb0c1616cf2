"""Signed checkpoints of the log: C2SP ``tlog-checkpoint`` in a C2SP ``signed-note`` (pure).

A checkpoint is three lines, each ending in a newline: the log's origin, its size in
decimal, and its root in standard base64. A signed note appends a blank line and one
signature line per signer: an em dash (U+2014), a space, the key name, a space, and
base64(4-byte key id ‖ 64-byte Ed25519 signature of the text). The key id is the first 4
bytes of SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key); the text a verifier is given
(the *vkey*) is ``<name>+<hex key id>+<base64(0x01 ‖ public key)>``.

Specs: https://c2sp.org/tlog-checkpoint and https://c2sp.org/signed-note. The gateway
signs with one Ed25519 key whose name is the origin (:func:`init_log_key`); an auditor
verifies with the vkey they were handed, never with a key found inside a receipt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.errors import CheckpointInvalid, ConfigError
from gateway.keyfiles import read_secret, write_secret

ED25519 = 0x01  # the signed-note signature type of Ed25519
EM_DASH = "\u2014"
#: The log key's file in the keys dir: the 32-byte Ed25519 private key, hex, mode 0600.
LOG_KEY_FILE = "log-ed25519.key"


@dataclass(frozen=True)
class Checkpoint:
    """The log at one size: who (origin), how many leaves, and their root."""

    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        """The checkpoint body: origin, size, base64 root, each line ending in a newline."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode('ascii')}\n"


@dataclass(frozen=True)
class NoteVerifier:
    """A note verifier: a key name and its Ed25519 public key (from a vkey)."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    def vkey(self) -> str:
        """The text an auditor is handed: ``name+hex(key id)+base64(0x01 ‖ key)``."""
        encoded = base64.b64encode(bytes([ED25519]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{encoded}"


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key id: SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:4]


def check_name(name: str) -> None:
    """Refuse a key name (origin) that the signed-note spec does not allow."""
    if not name or "+" in name or any(c.isspace() for c in name):
        raise ConfigError(f"log origin {name!r}: a non-empty name without spaces or '+'")


def sign(checkpoint: Checkpoint, private_key: Ed25519PrivateKey) -> str:
    """The checkpoint as a signed note, signed by ``private_key`` under its origin's name."""
    return sign_note(checkpoint.text(), name=checkpoint.origin, private_key=private_key)


def sign_note(text: str, *, name: str, private_key: Ed25519PrivateKey) -> str:
    """``text`` (ending in a newline) as a signed note with one Ed25519 signature line."""
    check_name(name)
    if not text.endswith("\n") or "\n\n" in text:
        raise ValueError("a note's text ends in a newline and holds no blank line")
    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signature = private_key.sign(text.encode())
    blob = base64.b64encode(key_id(name, public) + signature).decode("ascii")
    return f"{text}\n{EM_DASH} {name} {blob}\n"


def parse_vkey(vkey: str) -> NoteVerifier:
    """Parse a vkey (``name+hex id+base64 key``); raises CheckpointInvalid on a bad one."""
    parts = vkey.strip().split("+", 2)  # the base64 key may hold a "+" itself
    if len(parts) != 3:
        raise CheckpointInvalid("a log key (vkey) is name+keyid+key")
    name, id_hex, encoded = parts
    try:
        raw = base64.b64decode(encoded, validate=True)
        stated = bytes.fromhex(id_hex)
    except (binascii.Error, ValueError):
        raise CheckpointInvalid("the log key (vkey) is not name+hex+base64") from None
    if len(raw) != 33 or raw[0] != ED25519:
        raise CheckpointInvalid("the log key (vkey) is not an Ed25519 key")
    verifier = NoteVerifier(name=name, public_key=raw[1:])
    if verifier.key_id != stated:
        raise CheckpointInvalid("the log key (vkey) states a key id that is not its key's")
    return verifier


def open_checkpoint(note: str, verifier: NoteVerifier) -> Checkpoint:
    """The checkpoint in ``note`` once ``verifier``'s signature on it checks out.

    Raises
    ------
    CheckpointInvalid
        The note is malformed, carries no signature by the verifier's key (name and key
        id), its signature does not verify, or its origin is not the key's name.
    """
    checkpoint = parse_checkpoint(open_note(note, verifier))
    if checkpoint.origin != verifier.name:
        raise CheckpointInvalid(
            f"the checkpoint's origin {checkpoint.origin!r} is not the key's {verifier.name!r}"
        )
    return checkpoint


def open_note(note: str, verifier: NoteVerifier) -> str:
    """The text of ``note`` once ``verifier``'s signature on it checks out.

    Lines signed by other keys are ignored, as the spec says; the first line by the
    verifier's key (name and key id) decides. Raises CheckpointInvalid otherwise.
    """
    if "\n\n" not in note or not note.endswith("\n"):
        raise CheckpointInvalid("not a signed note (text, blank line, signature lines)")
    cut = note.rindex("\n\n")
    text, signatures = note[: cut + 1], note[cut + 2 :].splitlines()
    for line in signatures:
        blob = _signature_by(line, verifier)
        if blob is None:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(verifier.public_key).verify(blob, text.encode())
        except InvalidSignature:
            raise CheckpointInvalid(f"the signature of {verifier.name} does not verify") from None
        return text
    raise CheckpointInvalid(f"no signature by the log key {verifier.name}+{verifier.key_id.hex()}")


def _signature_by(line: str, verifier: NoteVerifier) -> bytes | None:
    """The 64-byte signature of a signature line made by ``verifier``'s key, else ``None``."""
    fields = line.split(" ")
    if len(fields) != 3 or fields[0] != EM_DASH:
        raise CheckpointInvalid("a signature line is '— name base64'")
    try:
        blob = base64.b64decode(fields[2], validate=True)
    except binascii.Error:
        raise CheckpointInvalid("a signature line's signature is not base64") from None
    if fields[1] != verifier.name or blob[:4] != verifier.key_id:
        return None  # another signer's line: ignored, as the spec says
    if len(blob) != 4 + 64:
        raise CheckpointInvalid("an Ed25519 signature line holds a key id and 64 bytes")
    return blob[4:]


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint body (origin, size, base64 root, optional extension lines)."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise CheckpointInvalid("a checkpoint is origin, size and root, each on its line")
    origin, size, root = lines[:3]
    if not size.isdigit() or (size.startswith("0") and size != "0"):
        raise CheckpointInvalid("a checkpoint's size is a decimal number")
    try:
        raw = base64.b64decode(root, validate=True)
    except binascii.Error:
        raise CheckpointInvalid("a checkpoint's root is not base64") from None
    if len(raw) != 32:
        raise CheckpointInvalid("a checkpoint's root is 32 bytes")
    return Checkpoint(origin=origin, size=int(size), root=raw)


def init_log_key(keys_dir: Path) -> bool:
    """Create the log's Ed25519 key in ``keys_dir`` (0600) if missing; True if created."""
    path = keys_dir / LOG_KEY_FILE
    if path.exists():
        return False
    raw = Ed25519PrivateKey.generate().private_bytes_raw()
    try:
        write_secret(path, raw.hex().encode("ascii") + b"\n")
    except FileExistsError:
        return False
    return True


def load_log_key(keys_dir: Path) -> Ed25519PrivateKey:
    """Read the log's Ed25519 key; ConfigError if missing, malformed or readable by others."""
    path = keys_dir / LOG_KEY_FILE
    text = read_secret(path).decode("ascii", "replace").strip()
    try:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text))
    except ValueError:
        raise ConfigError(f"key file {path} does not hold a 32-byte Ed25519 key in hex") from None


def verifier_of(private_key: Ed25519PrivateKey, name: str) -> NoteVerifier:
    """The verifier (and so the vkey) of ``private_key`` signing as ``name``."""
    check_name(name)
    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return NoteVerifier(name=name, public_key=public)


__all__ = [
    "LOG_KEY_FILE",
    "Checkpoint",
    "NoteVerifier",
    "init_log_key",
    "key_id",
    "load_log_key",
    "open_checkpoint",
    "open_note",
    "parse_checkpoint",
    "parse_vkey",
    "sign",
    "sign_note",
    "verifier_of",
]
