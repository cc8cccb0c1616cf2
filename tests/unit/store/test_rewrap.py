"""KEK rotation over a real filesystem store: every header re-wrapped, no segment touched."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from gateway.core.keys import Kek, Keyring
from gateway.core.seal import open_sealed, read_seal_header, seal
from gateway.errors import SealKeyMissing
from gateway.store.fs import FilesystemStore
from gateway.store.rewrap import rewrap_store

OLD = Kek("kek-20261101-aaaaaaaa", bytes(range(32)))
NEW = Kek("kek-20261205-bbbbbbbb", bytes(range(32, 64)))


def put_sealed(store: FilesystemStore, n: int, plaintext: bytes, *, kek: Kek) -> tuple[str, bytes]:
    """Seal ``plaintext`` under ``kek`` as object ``n``; its name and sealed bytes."""
    record_key, digest = bytes([n]) * 32, bytes([n + 100]) * 32
    sealed = io.BytesIO()
    seal(io.BytesIO(plaintext), sealed, record_key=record_key, digest=digest, kek=kek,
         segment_size=4096)  # fmt: skip
    name = f"{record_key.hex()}/{digest.hex()}"
    store.put(name, io.BytesIO(sealed.getvalue()), length=len(sealed.getvalue()))
    return name, sealed.getvalue()


def test_every_object_is_rewrapped_and_its_segments_kept_byte_for_byte(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "objects")
    plaintexts = [b"first image " * 1000, b"second image " * 3000]
    before = [put_sealed(store, n, p, kek=OLD) for n, p in enumerate(plaintexts)]

    assert rewrap_store(store, keyring=Keyring.of(NEW, OLD), new_kek=NEW) == 2

    for (name, old_bytes), plaintext in zip(before, plaintexts, strict=True):
        with store.open(name) as stream:
            new_bytes = stream.read()
        new_header = read_seal_header(io.BytesIO(new_bytes))
        assert new_header.kek_id == NEW.kek_id
        old_size = read_seal_header(io.BytesIO(old_bytes)).size
        assert new_bytes[new_header.size :] == old_bytes[old_size:]
        out = io.BytesIO()  # the new KEK alone opens it now
        record_key, digest = (bytes.fromhex(part) for part in name.split("/"))
        open_sealed(io.BytesIO(new_bytes), out, record_key=record_key, digest=digest,
                    keyring=Keyring.of(NEW))  # fmt: skip
        assert out.getvalue() == plaintext


def test_an_object_under_a_kek_the_keyring_lacks_stops_the_rotation(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "objects")
    name, sealed = put_sealed(store, 1, b"image " * 100, kek=OLD)

    with pytest.raises(SealKeyMissing):
        rewrap_store(store, keyring=Keyring.of(NEW), new_kek=NEW)

    with store.open(name) as stream:
        assert stream.read() == sealed  # left as it was


def test_an_empty_store_rewraps_nothing(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "objects")
    assert rewrap_store(store, keyring=Keyring.of(NEW), new_kek=NEW) == 0
