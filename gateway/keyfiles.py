"""Secret files: created 0600 inside a 0700 directory, never overwritten by accident."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gateway.errors import ConfigError


def write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data`` with mode 0600; refuse to replace an existing file.

    The file is written and fsynced under a temporary name, then linked into place, so a
    crash never leaves a half-written key behind.
    """
    tmp = _write_temp(path, data, os.O_EXCL)
    try:
        os.link(tmp, path)  # fails if path exists: keys are never silently replaced
    finally:
        tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def replace_secret(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` (mode 0600), for deliberate rotations."""
    os.replace(_write_temp(path, data, os.O_TRUNC), path)


def _write_temp(path: Path, data: bytes, mode_flag: int) -> Path:
    """Write ``data`` to a 0600 temp file beside ``path`` and fsync it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | mode_flag, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def read_secret(path: Path) -> bytes:
    """Read a secret file, refusing one that other users can read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"key file {path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"key file {path} is readable by others (mode {mode & 0o777:o}); chmod 600 it"
        )
    return path.read_bytes()
