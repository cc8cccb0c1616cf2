"""The object store contract, run here against the filesystem backend, plus its durability."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from gateway.errors import ConfigError, ObjectNotFound, StoreError, StoreUnavailable
from gateway.store import ObjectStore, open_store, validate_name
from gateway.store.fs import FilesystemStore

MiB = 1024 * 1024


def hexkey(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def name_of(record: str, digest: str = "d") -> str:
    return f"{hexkey(record)}/{hexkey(digest)}"


H = hexkey("x")
BAD_NAMES = [
    "",
    "../x",
    f"{H}/../{H}",
    f"../{H}/{H}",
    f"/{H}/{H}",
    f"{H}/{H}/",
    f"{H}/{H}/{H}",
    f"{H}{H}",
    f"{H.upper()}/{H}",
    f"{H}/{H[:-1]}A",
    f"{H[:-1]}/{H}",
    f"{H}/{H}0",
    f"{H}/{H}\n",
    f"{H}\\{H}",
    "DOE^JOHN/1.2.840.113619.2.55.3.604688119.969.1268071029.320",
    "patient-12345/ct-chest.dcm",
    f"{H}/{chr(0x0660) * 64}",  # Arabic-Indic zeros: digits to str.isdigit, not to us
]


class RandomSource(io.RawIOBase):
    """``length`` random bytes produced on demand (never all in memory), hashed as read."""

    def __init__(self, length: int) -> None:
        self.remaining = length
        self.sha256 = hashlib.sha256()
        self.position = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = self.remaining if size < 0 else min(size, self.remaining)
        data = os.urandom(n)
        self.sha256.update(data)
        self.remaining -= n
        self.position += n
        return data

    def tell(self) -> int:
        return self.position


class SpySource(io.BytesIO):
    """Bytes that call ``on_read`` before every read, to look at the store mid-put."""

    def __init__(self, data: bytes, on_read: Callable[[], None]) -> None:
        super().__init__(data)
        self.on_read = on_read

    def read(self, size: int | None = -1) -> bytes:
        self.on_read()
        return super().read(size)


def sha256_of(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    with stream:
        while chunk := stream.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


class StoreContract:
    """What every ObjectStore backend does; a subclass provides the ``store`` fixture.

    ``memory_budget`` bounds the traced peak while a 64 MiB object goes in, ``read_budget``
    while it comes out.
    """

    memory_budget = 8 * MiB
    read_budget = 8 * MiB

    def test_is_an_object_store(self, store: ObjectStore) -> None:
        assert isinstance(store, ObjectStore)

    def test_round_trip(self, store: ObjectStore) -> None:
        name, data = name_of("round-trip"), os.urandom(3 * MiB + 17)
        assert not store.exists(name)
        store.put(name, io.BytesIO(data), length=len(data))
        assert store.exists(name)
        assert store.size(name) == len(data)
        with store.open(name) as stream:
            assert stream.read() == data

    def test_empty_object(self, store: ObjectStore) -> None:
        name = name_of("empty")
        store.put(name, io.BytesIO(b""), length=0)
        assert store.size(name) == 0
        with store.open(name) as stream:
            assert stream.read() == b""

    def test_put_again_is_a_no_op_that_never_overwrites(self, store: ObjectStore) -> None:
        name = name_of("idempotent")
        store.put(name, io.BytesIO(b"first"), length=5)
        second = io.BytesIO(b"other")
        store.put(name, second, length=5)
        assert second.tell() == 0, "an existing object must not even read the new source"
        with store.open(name) as stream:
            assert stream.read() == b"first"

    def test_put_refuses_another_length_under_an_existing_name(self, store: ObjectStore) -> None:
        name = name_of("conflict")
        store.put(name, io.BytesIO(b"first"), length=5)
        with pytest.raises(StoreError, match="never overwritten"):
            store.put(name, io.BytesIO(b"longer!"), length=7)
        with store.open(name) as stream:
            assert stream.read() == b"first"

    @pytest.mark.parametrize(
        ("data", "length", "message"),
        [
            (b"x" * 100, 101, "short"),
            (b"x" * 100, 99, "more bytes"),
            (b"x", 0, "more bytes"),
            (b"x" * (6 * MiB), 6 * MiB - 1, "more bytes"),
        ],
        ids=["short", "long", "empty-but-not", "long-multipart"],
    )
    def test_a_source_of_the_wrong_length_stores_nothing(
        self, store: ObjectStore, data: bytes, length: int, message: str
    ) -> None:
        name = name_of(f"wrong-length-{length}")
        with pytest.raises(StoreError, match=message):
            store.put(name, io.BytesIO(data), length=length)
        assert not store.exists(name)
        assert list(store.names()) == []

    def test_names_are_listed_sorted_and_by_prefix(self, store: ObjectStore) -> None:
        names = sorted(name_of(f"r{i % 3}", f"d{i}") for i in range(7))
        for name in reversed(names):
            store.put(name, io.BytesIO(b"abc"), length=3)
        assert list(store.names()) == names
        record = names[0].split("/")[0]
        assert list(store.names(record + "/")) == [n for n in names if n.startswith(record)]
        assert list(store.names(record[:1])) == [n for n in names if n[0] == record[0]]
        assert list(store.names(names[-1])) == [names[-1]]
        assert list(store.names("f" * 64 + "/")) == [n for n in names if n[:64] == "f" * 64]

    def test_missing_object(self, store: ObjectStore) -> None:
        name = name_of("never-stored")
        assert not store.exists(name)
        assert store.size(name) is None
        with pytest.raises(ObjectNotFound):
            store.open(name)
        store.delete(name)  # deleting nothing is not an error

    def test_delete(self, store: ObjectStore) -> None:
        keep, drop = name_of("keep"), name_of("drop")
        for name in (keep, drop):
            store.put(name, io.BytesIO(b"abc"), length=3)
        store.delete(drop)
        assert not store.exists(drop)
        assert list(store.names()) == [keep]

    @pytest.mark.parametrize("bad", BAD_NAMES)
    def test_every_call_refuses_a_bad_name(self, store: ObjectStore, bad: str) -> None:
        for call in (
            lambda: store.put(bad, io.BytesIO(b"abc"), length=3),
            lambda: store.open(bad),
            lambda: store.exists(bad),
            lambda: store.size(bad),
            lambda: store.delete(bad),
        ):
            with pytest.raises(ValueError, match="object names are") as caught:
                call()
            assert not bad or bad not in str(caught.value), "the name may hold PHI"
        assert list(store.names()) == []

    @pytest.mark.parametrize("prefix", ["../", "A", f"{H}/{H}0", f"{H}x", "/"])
    def test_names_refuses_a_bad_prefix(self, store: ObjectStore, prefix: str) -> None:
        with pytest.raises(ValueError, match="prefix"):
            list(store.names(prefix))

    def test_check_passes_when_the_backend_is_up(self, store: ObjectStore) -> None:
        store.check()

    def test_a_large_object_streams_through_in_bounded_memory(self, store: ObjectStore) -> None:
        name, length = name_of("large"), 64 * MiB
        source = RandomSource(length)
        tracemalloc.start()
        try:
            store.put(name, source, length=length)  # type: ignore[arg-type]
            _, put_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            read_back = sha256_of(store.open(name))
            _, read_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert read_back == source.sha256.hexdigest()
        assert store.size(name) == length
        assert put_peak < self.memory_budget, f"put peaked at {put_peak / MiB:.1f} MiB"
        assert read_peak < self.read_budget, f"read peaked at {read_peak / MiB:.1f} MiB"


class TestFilesystemStore(StoreContract):
    memory_budget = 4 * MiB

    @pytest.fixture
    def store(self, tmp_path: Path) -> FilesystemStore:
        return FilesystemStore(tmp_path / "objects")


# Filesystem specifics: where files go and how they get there.


@pytest.fixture
def fs_store(tmp_path: Path) -> FilesystemStore:
    return FilesystemStore(tmp_path / "objects")


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_objects_live_under_a_sharded_path_with_private_modes(fs_store: FilesystemStore) -> None:
    record, digest = hexkey("r"), hexkey("d")
    fs_store.put(f"{record}/{digest}", io.BytesIO(b"sealed"), length=6)
    path = fs_store.root / record[:2] / record / digest
    assert files_under(fs_store.root) == [path]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_the_name_appears_only_once_the_bytes_are_complete(fs_store: FilesystemStore) -> None:
    name = name_of("atomic")
    final = fs_store.path_of(name)
    seen: list[tuple[bool, list[str]]] = []

    def look() -> None:
        temps = [p.name for p in final.parent.iterdir()] if final.parent.exists() else []
        seen.append((final.exists(), temps))

    data = os.urandom(3 * MiB)
    fs_store.put(name, SpySource(data, look), length=len(data))
    assert seen, "the source was never read"
    assert not any(exists for exists, _ in seen), "final name visible before put returned"
    assert all(len(temps) == 1 and temps[0].startswith(".") for _, temps in seen)
    assert files_under(fs_store.root) == [final], "a temp file was left behind"
    assert final.read_bytes() == data


def test_put_syncs_the_file_then_renames_then_syncs_the_directory(
    fs_store: FilesystemStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def rename(src: str | Path, dst: str | Path) -> None:
        events.append("rename")
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    fs_store.put(name_of("durable"), io.BytesIO(b"abc"), length=3)
    # New directories are synced into their parents first; then the object itself.
    assert events[-3:] == ["fsync-file", "rename", "fsync-dir"]
    assert events[:-3] and set(events[:-3]) == {"fsync-dir"}


def test_a_failing_source_leaves_nothing_behind(fs_store: FilesystemStore) -> None:
    class Broken(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() >= MiB:
                raise OSError("spool disk went away")
            return super().read(size)

    name = name_of("broken")
    with pytest.raises(OSError, match="spool disk"):
        fs_store.put(name, Broken(os.urandom(3 * MiB)), length=3 * MiB)
    assert files_under(fs_store.root) == []
    assert not fs_store.exists(name)


def test_names_skips_temp_files_and_strays(fs_store: FilesystemStore) -> None:
    name = name_of("listed")
    fs_store.put(name, io.BytesIO(b"abc"), length=3)
    record_dir = fs_store.path_of(name).parent
    (record_dir / ".put-abc123").write_bytes(b"half")
    (fs_store.root / "lost+found").mkdir()
    (fs_store.root / "README").write_text("not an object")
    assert list(fs_store.names()) == [name]


def test_check_fails_when_the_root_is_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StoreUnavailable):
        FilesystemStore(blocker).check()


def test_validate_name_returns_a_good_name() -> None:
    name = name_of("good")
    assert validate_name(name) == name


def test_open_store_file_url(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/objects", access_key=None, secret_key=None)
    assert isinstance(store, FilesystemStore)
    assert store.root == tmp_path / "objects"
    spaced = open_store(f"file://{tmp_path}/with%20space", access_key=None, secret_key=None)
    assert isinstance(spaced, FilesystemStore)
    assert spaced.root == tmp_path / "with space"


@pytest.mark.parametrize(
    "url",
    [
        "file://relative/path",
        "file:relative",
        "file:///var/../etc",
        "file:///var/objects?x=1",
        "ftp://host/bucket",
        "/var/objects",
        "",
    ],
)
def test_open_store_refuses_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        open_store(url, access_key=None, secret_key=None)


def test_adopt_makes_the_file_itself_the_object_without_a_copy(
    fs_store: FilesystemStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sealed = tmp_path / "entry.seal"
    sealed.write_bytes(b"sealed bytes")
    sealed.chmod(0o644)
    inode = sealed.stat().st_ino
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(
        os, "fsync",
        lambda fd: (events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode)
                                  else "fsync-file"), real_fsync(fd))[1],
    )  # fmt: skip
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append("rename"), real_rename(a, b))[1])
    name = name_of("adopted")

    assert fs_store.adopt(name, sealed, length=12)

    final = fs_store.path_of(name)
    assert files_under(fs_store.root) == [final] and not sealed.exists()
    assert final.stat().st_ino == inode  # renamed, not copied
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    assert events[-3:] == ["fsync-file", "rename", "fsync-dir"]
    with fs_store.open(name) as stream:
        assert stream.read() == b"sealed bytes"


def test_adopt_again_drops_the_file_and_refuses_another_length(
    fs_store: FilesystemStore, tmp_path: Path
) -> None:
    name = name_of("twice")
    fs_store.put(name, io.BytesIO(b"abc"), length=3)
    again = tmp_path / "again.seal"
    again.write_bytes(b"abc")
    assert fs_store.adopt(name, again, length=3)  # a crash after the rename, before the record
    assert not again.exists() and fs_store.path_of(name).read_bytes() == b"abc"

    other = tmp_path / "other.seal"
    other.write_bytes(b"abcd")
    with pytest.raises(StoreError):
        fs_store.adopt(name, other, length=4)  # never overwritten
    with pytest.raises(StoreError):
        fs_store.adopt(name_of("short"), other, length=9)  # not the announced length
    assert other.exists() and not fs_store.exists(name_of("short"))
