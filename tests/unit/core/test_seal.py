"""Sealed objects: round trips, tamper detection, KEK rotation without re-encryption."""

from __future__ import annotations

import io
import itertools
import os
import stat
from datetime import date
from pathlib import Path
from typing import BinaryIO, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import filemap
from gateway.core.keys import Kek, Keyring, init_keys, load_keyring, rotate_kek
from gateway.core.seal import (
    MAGIC,
    TAG_SIZE,
    Opener,
    Sealer,
    SealHeader,
    open_sealed,
    read_seal_header,
    rewrap_file,
    rewrap_header,
    seal,
)
from gateway.errors import (
    KeyringError,
    SealCorrupt,
    SealError,
    SealKeyMissing,
    SealUnsupported,
)

SEG = 4096  # small segments keep multi-segment objects small and the tests fast
KEK_A = Kek("kek-20261121-aaaaaaaa", bytes(range(32)))
KEK_B = Kek("kek-20261122-bbbbbbbb", bytes(range(32, 64)))
RECORD_KEY = bytes.fromhex("11" * 32)
DIGEST = bytes.fromhex("22" * 32)
KEYRING_A = Keyring.of(KEK_A)


def sealed(
    plaintext: bytes,
    *,
    kek: Kek = KEK_A,
    segment_size: int = SEG,
    record_key: bytes = RECORD_KEY,
    digest: bytes = DIGEST,
) -> bytes:
    out = io.BytesIO()
    written = seal(
        io.BytesIO(plaintext),
        out,
        record_key=record_key,
        digest=digest,
        kek=kek,
        segment_size=segment_size,
    )
    assert written == len(out.getvalue())
    return out.getvalue()


def opened(
    blob: bytes,
    *,
    keyring: Keyring = KEYRING_A,
    record_key: bytes = RECORD_KEY,
    digest: bytes = DIGEST,
) -> bytes:
    out = io.BytesIO()
    written = open_sealed(
        io.BytesIO(blob), out, record_key=record_key, digest=digest, keyring=keyring
    )
    assert written == len(out.getvalue())
    return out.getvalue()


def segments(blob: bytes, segment_size: int = SEG) -> tuple[bytes, list[bytes]]:
    """Split a sealed object into its header and its sealed segments."""
    size = read_seal_header(io.BytesIO(blob)).size
    body = blob[size:]
    step = segment_size + TAG_SIZE
    return blob[:size], [body[i : i + step] for i in range(0, len(body), step)]


def flip(blob: bytes, offset: int, bit: int = 0) -> bytes:
    changed = bytearray(blob)
    changed[offset] ^= 1 << bit
    return bytes(changed)


def plaintext_of(size: int) -> bytes:
    return os.urandom(size)


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG, 3 * SEG + 5, 5 * SEG]
)  # fmt: skip
def test_round_trip(size: int) -> None:
    plaintext = plaintext_of(size)
    assert opened(sealed(plaintext)) == plaintext


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG + 5])
def test_size_follows_the_format(size: int) -> None:
    # Full segments of S plaintext bytes, then exactly one final segment of 0..S bytes:
    # an empty plaintext still gets a (tag-only) final segment.
    full, rest = divmod(size, SEG)
    if rest == 0 and full > 0:
        full, rest = full - 1, SEG
    blob = sealed(plaintext_of(size))
    header, parts = segments(blob)
    assert header.startswith(MAGIC)
    assert len(header) == 21 + len(KEK_A.kek_id) + 40
    assert [len(part) for part in parts] == [SEG + TAG_SIZE] * full + [rest + TAG_SIZE]


def test_default_segment_size_round_trip() -> None:
    plaintext = plaintext_of((1 << 20) * 2 + 3)
    blob = sealed(plaintext, segment_size=1 << 20)
    assert read_seal_header(io.BytesIO(blob)).segment_size == 1 << 20
    assert opened(blob) == plaintext


@pytest.mark.parametrize("chunk", [1, 7, SEG - 1, SEG, SEG + 1, 10_000])
def test_streaming_sealer_and_opener_with_odd_chunks(chunk: int) -> None:
    plaintext = plaintext_of(3 * SEG + 123)
    sealer = Sealer(record_key=RECORD_KEY, digest=DIGEST, kek=KEK_A, segment_size=SEG)
    blob = (
        b"".join(sealer.update(plaintext[i : i + chunk]) for i in range(0, len(plaintext), chunk))
        + sealer.finish()
    )
    assert opened(blob) == plaintext

    opener = Opener(record_key=RECORD_KEY, digest=DIGEST, keyring=KEYRING_A)
    back = b"".join(opener.update(blob[i : i + chunk]) for i in range(0, len(blob), chunk))
    assert back + opener.finish() == plaintext


def test_streaming_with_a_reused_buffer() -> None:
    # A receive loop refills one bytearray; whatever the sealer keeps must be a copy.
    plaintext = plaintext_of(2 * SEG + 999)
    buffer = bytearray(1000)
    sealer = Sealer(record_key=RECORD_KEY, digest=DIGEST, kek=KEK_A, segment_size=SEG)
    parts = []
    for i in range(0, len(plaintext), len(buffer)):
        piece = plaintext[i : i + len(buffer)]
        buffer[: len(piece)] = piece
        parts.append(sealer.update(memoryview(buffer)[: len(piece)]))
        buffer[:] = b"\xff" * len(buffer)
    parts.append(sealer.finish())
    assert opened(b"".join(parts)) == plaintext


class Trickle(io.RawIOBase):
    """Hands out at most 1000 bytes per readinto, like a socket."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._data.readinto(memoryview(buffer)[:1000])


class ReadOnly:
    """Has read() and nothing else, with short reads."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 999))


@pytest.mark.parametrize("stream", [Trickle, ReadOnly])
def test_short_reads_still_round_trip(stream: type[Trickle | ReadOnly]) -> None:
    plaintext = plaintext_of(3 * SEG + 17)
    out = io.BytesIO()
    seal(
        cast(BinaryIO, stream(plaintext)),
        out,
        record_key=RECORD_KEY,
        digest=DIGEST,
        kek=KEK_A,
        segment_size=SEG,
    )
    back = io.BytesIO()
    open_sealed(
        cast(BinaryIO, stream(out.getvalue())),
        back,
        record_key=RECORD_KEY,
        digest=DIGEST,
        keyring=KEYRING_A,
    )
    assert back.getvalue() == plaintext


def test_sealed_bytes_hide_the_plaintext() -> None:
    plaintext = b"DOE^JANE 19700101 " * 1000
    blob = sealed(plaintext)
    assert b"DOE^JANE" not in blob
    assert sealed(plaintext) != blob  # fresh data key and nonce prefix every time


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=5 * 64 + 10),
    segment_size=st.integers(min_value=1, max_value=64),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    copy=st.booleans(),
)
def test_round_trip_property(data: bytes, segment_size: int, cuts: list[int], copy: bool) -> None:
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    sealer = Sealer(record_key=RECORD_KEY, digest=DIGEST, kek=KEK_A, segment_size=segment_size)
    blob = b"".join(sealer.update(bytearray(c) if copy else c) for c in chunks) + sealer.finish()

    opener = Opener(record_key=RECORD_KEY, digest=DIGEST, keyring=KEYRING_A)
    blob_bounds = sorted({0, len(blob), *(c for c in cuts if c < len(blob))})
    pieces = [blob[a:b] for a, b in itertools.pairwise(blob_bounds)]
    assert b"".join(opener.update(p) for p in pieces) + opener.finish() == data
    assert opened(blob) == data


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=300), position=st.floats(0, 1), bit=st.integers(0, 7)
)
def test_any_flipped_bit_fails_property(size: int, position: float, bit: int) -> None:
    blob = sealed(bytes(size), segment_size=64)
    offset = min(int(position * len(blob)), len(blob) - 1)
    with pytest.raises(SealError):
        opened(flip(blob, offset, bit))


# --- tampering -------------------------------------------------------------------------


def region_offsets(blob: bytes) -> dict[str, int]:
    header, parts = segments(blob)
    id_at, key_at = 21, 21 + len(KEK_A.kek_id)
    first = len(header)
    final = len(blob) - len(parts[-1])
    return {
        "magic": 3,
        "version": 8,
        "segment size": 11,
        "nonce prefix": 15,
        "kek id length": 20,
        "kek id": id_at + 5,
        "wrapped key": key_at + 17,
        "first segment body": first + 100,
        "first segment tag": first + SEG + TAG_SIZE - 1,
        "middle segment body": first + SEG + TAG_SIZE + 7,
        "final segment body": final + 3,
        "final segment tag": len(blob) - 1,
    }


@pytest.mark.parametrize("region", list(region_offsets(sealed(bytes(3 * SEG + 50)))))
@pytest.mark.parametrize("bit", [0, 7])
def test_a_flipped_bit_in_any_region_fails(region: str, bit: int) -> None:
    blob = sealed(plaintext_of(3 * SEG + 50))
    with pytest.raises(SealError):
        opened(flip(blob, region_offsets(blob)[region], bit))


def test_every_header_bit_is_protected() -> None:
    blob = sealed(plaintext_of(SEG + 10))
    size = read_seal_header(io.BytesIO(blob)).size
    for offset in range(size):
        for bit in range(8):
            with pytest.raises(SealError):
                opened(flip(blob, offset, bit))


def test_bad_magic_says_so() -> None:
    with pytest.raises(SealCorrupt, match="not a sealed object"):
        opened(b"\x00" * 200)


def test_unknown_version_is_unsupported() -> None:
    blob = bytearray(sealed(b"x"))
    blob[8] = 3  # 1 is KEK-wrapped, 2 study-key-wrapped (test_seal_study.py)
    with pytest.raises(SealUnsupported, match="version 3"):
        opened(bytes(blob))


@pytest.mark.parametrize("keep", [0, 5, 30, 60])
def test_truncated_header_fails(keep: int) -> None:
    with pytest.raises(SealCorrupt, match=r"truncated|magic"):
        opened(sealed(b"x")[:keep])


@pytest.mark.parametrize("cut", [1, TAG_SIZE - 1, TAG_SIZE, TAG_SIZE + 1, 40])
def test_truncated_final_segment_fails(cut: int) -> None:
    blob = sealed(plaintext_of(2 * SEG + 50))
    with pytest.raises(SealCorrupt):
        opened(blob[:-cut])


@pytest.mark.parametrize("size", [3 * SEG + 50, 3 * SEG])
def test_dropped_final_segment_fails(size: int) -> None:
    blob = sealed(plaintext_of(size))
    header, parts = segments(blob)
    with pytest.raises(SealCorrupt, match=f"final segment {len(parts) - 2} "):
        opened(header + b"".join(parts[:-1]))


def test_truncation_at_every_segment_boundary_fails() -> None:
    blob = sealed(plaintext_of(4 * SEG))
    header, parts = segments(blob)
    for keep in range(len(parts)):
        with pytest.raises(SealCorrupt):
            opened(header + b"".join(parts[:keep]))


def test_swapped_segments_fail() -> None:
    blob = sealed(plaintext_of(3 * SEG + 50))
    header, parts = segments(blob)
    parts[0], parts[1] = parts[1], parts[0]
    with pytest.raises(SealCorrupt, match="segment 0"):
        opened(header + b"".join(parts))


def test_appended_bytes_fail() -> None:
    blob = sealed(plaintext_of(SEG + 50))
    with pytest.raises(SealCorrupt):
        opened(blob + b"\x00")


def test_duplicated_segment_fails() -> None:
    blob = sealed(plaintext_of(3 * SEG))
    header, parts = segments(blob)
    with pytest.raises(SealCorrupt):
        opened(header + parts[0] + parts[0] + parts[1] + parts[2])


def test_another_record_key_fails() -> None:
    blob = sealed(b"pixels")
    with pytest.raises(SealCorrupt, match="record_key and digest"):
        opened(blob, record_key=bytes(32))


def test_another_digest_fails() -> None:
    blob = sealed(b"pixels")
    with pytest.raises(SealCorrupt, match="record_key and digest"):
        opened(blob, digest=bytes(32))


def test_a_header_from_another_object_fails() -> None:
    # Same name, same KEK, but another data key: the wrapped key unwraps fine and the
    # segments still refuse to open.
    _, parts_a = segments(sealed(plaintext_of(SEG + 1)))
    header_b, _ = segments(sealed(plaintext_of(SEG + 1)))
    with pytest.raises(SealCorrupt):
        opened(header_b + b"".join(parts_a))


def test_opened_plaintext_stops_at_the_first_bad_segment() -> None:
    # Segments before the bad one were authenticated and written; nothing of the bad one
    # is, which is why callers open into a temporary file and discard it on error.
    plaintext = plaintext_of(4 * SEG)
    blob = sealed(plaintext)
    header, parts = segments(blob)
    parts[2] = flip(parts[2], 10)
    out = io.BytesIO()
    with pytest.raises(SealCorrupt, match="segment 2"):
        open_sealed(
            io.BytesIO(header + b"".join(parts)),
            out,
            record_key=RECORD_KEY,
            digest=DIGEST,
            keyring=KEYRING_A,
        )
    assert out.getvalue() == plaintext[: 2 * SEG]


def test_a_failed_opener_refuses_more_input() -> None:
    opener = Opener(record_key=RECORD_KEY, digest=DIGEST, keyring=KEYRING_A)
    with pytest.raises(SealCorrupt):
        opener.update(b"NOTSEALED")
    with pytest.raises(SealError, match="already failed"):
        opener.update(b"")


def test_an_empty_stream_is_not_an_object() -> None:
    opener = Opener(record_key=RECORD_KEY, digest=DIGEST, keyring=KEYRING_A)
    with pytest.raises(SealCorrupt, match="truncated"):
        opener.finish()


def test_names_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Sealer(record_key=b"short", digest=DIGEST, kek=KEK_A)
    with pytest.raises(ValueError, match="32 bytes"):
        Opener(record_key=RECORD_KEY, digest=DIGEST + b"x", keyring=KEYRING_A)


@pytest.mark.parametrize("size", [0, (1 << 26) + 1])
def test_segment_size_is_bounded(size: int) -> None:
    with pytest.raises(ValueError, match="segment size"):
        Sealer(record_key=RECORD_KEY, digest=DIGEST, kek=KEK_A, segment_size=size)


# --- keys and rotation -------------------------------------------------------------------


def test_header_names_the_kek() -> None:
    header = read_seal_header(io.BytesIO(sealed(b"x", kek=KEK_B)))
    assert isinstance(header, SealHeader)
    assert header.kek_id == KEK_B.kek_id
    assert header.segment_size == SEG
    assert KEK_B.key.hex() not in repr(header)


def test_missing_kek_is_a_keyring_error_naming_it() -> None:
    blob = sealed(b"x", kek=KEK_B)
    with pytest.raises(KeyringError, match=KEK_B.kek_id) as caught:
        opened(blob, keyring=KEYRING_A)
    assert isinstance(caught.value, SealKeyMissing)
    assert caught.value.kek_id == KEK_B.kek_id


def test_rewrap_changes_only_the_header(tmp_path: Path) -> None:
    plaintext = plaintext_of(3 * SEG + 77)
    path = tmp_path / "object"
    path.write_bytes(sealed(plaintext, kek=KEK_A))
    path.chmod(0o640)
    before = path.read_bytes()
    old_header, old_parts = segments(before)
    both = Keyring.of(KEK_B, KEK_A)

    with path.open("rb") as src:
        new_header_bytes, offset = rewrap_header(src, keyring=both, new_kek=KEK_B)
    assert offset == len(old_header)

    header = rewrap_file(path, keyring=both, new_kek=KEK_B)
    after = path.read_bytes()
    new_header, new_parts = segments(after)
    assert header.kek_id == KEK_B.kek_id == read_seal_header(io.BytesIO(after)).kek_id
    assert new_parts == old_parts  # not one segment re-encrypted
    assert after == new_header_bytes + before[offset:]
    assert new_header[:20] == old_header[:20]  # magic, version, size, nonce prefix kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["object"]

    # The new KEK alone opens it; the old KEK alone no longer does, and says which it needs.
    assert opened(after, keyring=Keyring.of(KEK_B)) == plaintext
    with pytest.raises(SealKeyMissing, match=KEK_B.kek_id):
        opened(after, keyring=KEYRING_A)
    # Before the rewrap it was the other way round.
    with pytest.raises(SealKeyMissing, match=KEK_A.kek_id):
        opened(before, keyring=Keyring.of(KEK_B))


def test_rewrap_under_the_same_kek_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(sealed(b"x", kek=KEK_B))
    inode = path.stat().st_ino
    rewrap_file(path, keyring=Keyring.of(KEK_B), new_kek=KEK_B)
    assert path.stat().st_ino == inode


def test_rewrap_needs_the_old_kek(tmp_path: Path) -> None:
    path = tmp_path / "object"
    blob = sealed(b"x", kek=KEK_A)
    path.write_bytes(blob)
    with pytest.raises(SealKeyMissing, match=KEK_A.kek_id):
        rewrap_file(path, keyring=Keyring.of(KEK_B), new_kek=KEK_B)
    assert path.read_bytes() == blob
    assert [p.name for p in tmp_path.iterdir()] == ["object"]


def test_rewrap_refuses_an_altered_wrapped_key() -> None:
    blob = sealed(b"x", kek=KEK_A)
    key_at = 21 + len(KEK_A.kek_id)
    with pytest.raises(SealCorrupt, match="does not unwrap"):
        rewrap_header(io.BytesIO(flip(blob, key_at)), keyring=KEYRING_A, new_kek=KEK_B)


def test_rotation_through_the_key_directory(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    init_keys(keys_dir, today=date(2026, 11, 21))
    first = load_keyring(keys_dir)
    plaintext = plaintext_of(2 * SEG + 1)
    path = tmp_path / "object"
    path.write_bytes(sealed(plaintext, kek=first.current))

    new = rotate_kek(keys_dir, today=date(2026, 11, 22))
    keyring = load_keyring(keys_dir)
    assert keyring.current == new
    assert opened(path.read_bytes(), keyring=keyring) == plaintext  # old KEK still held

    rewrap_file(path, keyring=keyring, new_kek=keyring.current)
    assert read_seal_header(io.BytesIO(path.read_bytes())).kek_id == new.kek_id
    assert opened(path.read_bytes(), keyring=Keyring.of(new)) == plaintext


def test_files_are_sealed_and_opened_through_maps_window_by_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a small window makes one object span several maps: segments stay whole and in order
    monkeypatch.setattr(filemap, "WINDOW", 3 << 20)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom((10 << 20) + 12345))
    kek = Kek(kek_id="kek-test", key=os.urandom(32))
    keys = {"record_key": b"\x01" * 32, "digest": b"\x02" * 32}
    with plain.open("rb") as source, (tmp_path / "sealed").open("wb") as out:
        seal(source, out, kek=kek, **keys)
    with (tmp_path / "sealed").open("rb") as sealed, (tmp_path / "opened").open("wb") as out:
        open_sealed(sealed, out, keyring=Keyring.of(kek), **keys)
    assert (tmp_path / "opened").read_bytes() == plain.read_bytes()
    with plain.open("rb") as stream:
        stream.seek(5)
        views = filemap.chunks(stream, 1 << 20)
        assert views is not None and stream.tell() == plain.stat().st_size
        assert b"".join(bytes(v) for v in views) == plain.read_bytes()[5:]
    assert filemap.chunks(io.BytesIO(b"abc"), 2) is None
