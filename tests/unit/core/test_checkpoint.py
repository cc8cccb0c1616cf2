"""Signed checkpoints: the C2SP signed-note and tlog-checkpoint formats, and the log key.

The note vector is golang.org/x/mod/sumdb/note's (note_test.go, the reference the C2SP
spec was written from): Ed25519 is deterministic, so signing its text with its key must
give its note byte for byte, and its vkey must open it.
"""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.core.checkpoint import (
    LOG_KEY_FILE,
    Checkpoint,
    init_log_key,
    load_log_key,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    parse_vkey,
    sign,
    sign_note,
    verifier_of,
)
from gateway.errors import CheckpointInvalid, ConfigError

GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n— PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def go_private_key() -> Ed25519PrivateKey:
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert seed[0] == 0x01
    return Ed25519PrivateKey.from_private_bytes(seed[1:])


def test_the_go_reference_note_is_signed_byte_for_byte_and_opens() -> None:
    key = go_private_key()
    assert sign_note(GO_TEXT, name="PeterNeumann", private_key=key) == GO_NOTE
    assert verifier_of(key, "PeterNeumann").vkey() == GO_VKEY
    assert open_note(GO_NOTE, parse_vkey(GO_VKEY)) == GO_TEXT


def test_an_edited_note_or_another_key_is_refused() -> None:
    with pytest.raises(CheckpointInvalid, match="does not verify"):
        open_note(GO_NOTE.replace("cryptography", "cryptographY"), parse_vkey(GO_VKEY))
    other = verifier_of(Ed25519PrivateKey.generate(), "PeterNeumann")
    with pytest.raises(CheckpointInvalid, match="no signature by the log key"):
        open_note(GO_NOTE, other)


def test_lines_by_other_signers_are_ignored() -> None:
    extra = "— witness.example AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n"
    assert open_note(GO_NOTE + extra, parse_vkey(GO_VKEY)) == GO_TEXT


def test_a_vkey_whose_key_id_is_not_its_keys_is_refused() -> None:
    with pytest.raises(CheckpointInvalid, match="key id"):
        parse_vkey(GO_VKEY.replace("c74f20a3", "c74f20a4"))
    for bad in ("PeterNeumann", "a+b+c", "PeterNeumann+c74f20a3+AAAA"):
        with pytest.raises(CheckpointInvalid):
            parse_vkey(bad)


def test_a_checkpoint_round_trips_through_its_signed_note() -> None:
    key = Ed25519PrivateKey.generate()
    checkpoint = Checkpoint(origin="xray-gateway/31337/0xabc", size=42, root=bytes(range(32)))
    note = sign(checkpoint, key)
    lines = note.split("\n")
    assert lines[:3] == [
        "xray-gateway/31337/0xabc",
        "42",
        base64.b64encode(bytes(range(32))).decode(),
    ]
    assert lines[3] == "" and lines[4].startswith("— xray-gateway/31337/0xabc ")
    assert open_checkpoint(note, verifier_of(key, checkpoint.origin)) == checkpoint


def test_a_checkpoint_signed_under_another_origin_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    note = sign_note(
        "other-log\n3\n" + base64.b64encode(bytes(32)).decode() + "\n", name="mine", private_key=key
    )
    with pytest.raises(CheckpointInvalid, match="origin"):
        open_checkpoint(note, verifier_of(key, "mine"))


def test_malformed_checkpoints_are_refused() -> None:
    root = base64.b64encode(bytes(32)).decode()
    for text in (
        "o\n01\n" + root + "\n",
        "o\n1\nnot-base64!\n",
        "o\n1\n" + base64.b64encode(b"x").decode() + "\n",
        "o\n1\n",
    ):
        with pytest.raises(CheckpointInvalid):
            parse_checkpoint(text)
    assert parse_checkpoint("o\n0\n" + root + "\nextension line\n").size == 0


def test_the_log_key_is_made_once_0600_and_read_back(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    assert init_log_key(keys)
    first = load_log_key(keys).private_bytes_raw()
    assert not init_log_key(keys)  # never replaced
    assert load_log_key(keys).private_bytes_raw() == first
    assert stat.S_IMODE((keys / LOG_KEY_FILE).stat().st_mode) == 0o600
    (keys / LOG_KEY_FILE).chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_log_key(keys)


def test_an_origin_with_a_space_or_plus_is_refused() -> None:
    with pytest.raises(ConfigError):
        verifier_of(Ed25519PrivateKey.generate(), "a b")
    with pytest.raises(ConfigError):
        verifier_of(Ed25519PrivateKey.generate(), "a+b")


def test_a_vkey_whose_base64_holds_a_plus_is_read() -> None:
    # transparency-dev/formats' note test key: the base64 of its key holds a '+'
    verifier = parse_vkey("TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6")
    assert verifier.name == "TEST" and len(verifier.public_key) == 32
