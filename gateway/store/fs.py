"""Filesystem object store: one file per object, written to a temp file, fsynced, renamed."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from gateway.errors import ObjectNotFound, StoreError, StoreUnavailable
from gateway.store.base import CHUNK_SIZE, ExactSource, validate_name, validate_prefix

# Errors a later attempt may not see again (a full disk is emptied, a mount returns):
# the pipeline retries these. Anything else (permissions, a file where a directory
# belongs) needs a person.
_TRANSIENT = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ESTALE, errno.ENOTCONN,
     errno.ETIMEDOUT, errno.EAGAIN, errno.ENOENT}
)  # fmt: skip

_TEMP_PREFIX = ".put-"


def _translate(exc: OSError, what: str) -> StoreError:
    if exc.errno in _TRANSIENT:
        return StoreUnavailable(f"{what}: {exc.strerror or exc}")
    return StoreError(f"{what}: {exc.strerror or exc}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemStore:
    """Objects as files under ``root``: ``<root>/<record_key[:2]>/<record_key>/<digest>``.

    The two-hex shard (256 directories) keeps a million-image archive at about four
    thousand entries per directory. Files are created 0600 and directories 0700: the content is sealed, but
    its size and timing are still nobody else's business.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FilesystemStore({str(self.root)!r})"

    def path_of(self, name: str) -> Path:
        """Where the object ``name`` lives (for diagnostics and tests)."""
        record_key, digest = validate_name(name).split("/")
        return self.root / record_key[:2] / record_key / digest

    def put(self, name: str, source: BinaryIO, *, length: int, replace: bool = False) -> None:
        """Store ``length`` bytes of ``source`` durably under ``name`` (see ``ObjectStore``)."""
        final = self.path_of(name)
        if not replace and self._idempotent_hit(final, length, name):
            return
        try:
            self._make_dirs(final.parent)
            # Same directory as the final name, so that the rename never crosses a device.
            fd, temp_name = tempfile.mkstemp(dir=final.parent, prefix=_TEMP_PREFIX)
        except OSError as exc:
            raise _translate(exc, f"cannot create a file under {self.root}") from exc
        temp = Path(temp_name)
        reader = ExactSource(source, length)
        try:
            try:
                with os.fdopen(fd, "wb", buffering=0) as out:
                    while chunk := reader.read(CHUNK_SIZE):
                        out.write(chunk)
                    reader.finish()
                    os.fsync(out.fileno())
                # The object appears under its name only once its bytes are on disk,
                # and the rename itself is made durable by syncing the directory.
                os.rename(temp, final)
                _fsync_dir(final.parent)
            except OSError as exc:
                if exc is reader.source_error:
                    raise
                raise _translate(exc, f"cannot write {name}") from exc
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise

    def adopt(self, name: str, path: Path, *, length: int) -> bool:
        """Store the finished file ``path`` under ``name`` by renaming it into place.

        The pipeline seals each image into a file of its own on the data dir's filesystem,
        so storing it needs no copy (10 MB read, written and fsynced again for a chest
        image): the file itself becomes the object (mode 0600), durable when this returns,
        like :meth:`put`. If ``name`` already holds ``length`` bytes (an earlier adopt that
        crashed before the caller recorded it), ``path`` is removed and nothing else done.

        Returns False, with ``path`` untouched, when it is on another filesystem than the
        store (a rename cannot cross devices): the caller puts a copy instead.

        Raises
        ------
        StoreError
            ``path`` does not hold ``length`` bytes, or ``name`` holds another length.
        StoreUnavailable
            A transient filesystem failure (full disk, I/O error); retry later.
        """
        final = self.path_of(name)
        try:
            if path.stat().st_size != length:
                raise StoreError(f"the file to store as {name} does not hold {length} bytes")
            if self._idempotent_hit(final, length, name):
                path.unlink(missing_ok=True)
                return True
            self._make_dirs(final.parent)
            if path.stat().st_dev != final.parent.stat().st_dev:
                return False
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fchmod(fd, 0o600)
                os.fsync(fd)  # already synced by its writer: then this costs nothing
            finally:
                os.close(fd)
            os.rename(path, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            raise _translate(exc, f"cannot store {name}") from exc
        return True

    def open(self, name: str) -> BinaryIO:
        """A buffered reader of the object; the caller closes it."""
        path = self.path_of(name)
        try:
            return open(path, "rb", buffering=CHUNK_SIZE)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object {name}") from exc
        except OSError as exc:
            raise _translate(exc, f"cannot open {name}") from exc

    def exists(self, name: str) -> bool:
        """True when an object is stored under ``name``."""
        return self.size(name) is not None

    def size(self, name: str) -> int | None:
        """The object's length, or None when absent."""
        path = self.path_of(name)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _translate(exc, f"cannot stat {name}") from exc

    def delete(self, name: str) -> None:
        """Remove the object if present (tests and repair only)."""
        path = self.path_of(name)
        try:
            path.unlink(missing_ok=True)
            # Empty directories stay: removing them would race a concurrent put into them.
            if path.parent.exists():
                _fsync_dir(path.parent)
        except OSError as exc:
            raise _translate(exc, f"cannot delete {name}") from exc

    def names(self, prefix: str = "") -> Iterator[str]:
        """Stored names starting with ``prefix``, sorted; temp files of puts in flight skipped."""
        validate_prefix(prefix)
        try:
            for shard in _sorted_dirs(self.root, prefix[:2]):
                for record in _sorted_dirs(shard, prefix[:64]):
                    if record.name[:2] != shard.name:
                        continue  # not where path_of would look: not an object of ours
                    for entry in sorted(os.listdir(record)):
                        name = f"{record.name}/{entry}"
                        if name.startswith(prefix) and _is_name(name):
                            yield name
        except OSError as exc:
            raise _translate(exc, f"cannot list {self.root}") from exc

    def check(self) -> None:
        """Raise StoreUnavailable unless the root is a writable directory."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"store root {self.root}: {exc.strerror or exc}") from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreUnavailable(f"store root {self.root} is not writable")

    def _idempotent_hit(self, final: Path, length: int, name: str) -> bool:
        try:
            existing = final.stat().st_size
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _translate(exc, f"cannot stat {name}") from exc
        if existing != length:
            raise StoreError(
                f"{name} already holds {existing} bytes, not {length}: objects are never "
                "overwritten"
            )
        try:
            # The earlier put may have renamed without reaching its directory fsync (it
            # crashed, or it is still running): make the entry durable before we say so.
            _fsync_dir(final.parent)
        except OSError as exc:
            raise _translate(exc, f"cannot sync {name}") from exc
        return True

    def _make_dirs(self, directory: Path) -> None:
        """Create missing directories down to ``directory``, making each new entry durable."""
        missing: list[Path] = []
        current = directory
        while not current.is_dir():
            missing.append(current)
            if current.parent == current:
                break
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                continue  # a concurrent put made it; its creator syncs the parent
            _fsync_dir(path.parent)


def _sorted_dirs(parent: Path, prefix: str) -> Iterator[Path]:
    try:
        entries = sorted(os.listdir(parent))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.startswith(prefix):
            path = parent / entry
            if path.is_dir():
                yield path


def _is_name(name: str) -> bool:
    try:
        validate_name(name)
    except ValueError:
        return False
    return True
