"""``xray-gateway backup DEST``: a consistent copy of the index while the gateway runs.

SQLite: ``VACUUM INTO`` writes the database as one read transaction saw it (a plain SQLite
file, opened like any index). PostgreSQL: ``pg_dump`` in its custom format (one
repeatable-read snapshot; ``pg_restore`` puts it into an empty database). The copy is
written beside ``DEST``, fsynced, then renamed: ``DEST`` is either whole or absent, and
an existing ``DEST`` is never overwritten. The password never appears on ``pg_dump``'s
command line (it goes in its environment) nor in an error.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import psycopg

from gateway.errors import BackupFailed
from gateway.index.engine import describe, is_postgres
from gateway.redact import redact_text

_PG_BIN = Path("/usr/lib/postgresql")


def backup(location: Path | str, dest: Path) -> int:
    """Copy the index at ``location`` to ``dest``; returns the copy's size in bytes.

    Raises
    ------
    BackupFailed
        ``dest`` exists, there is no index, or the copy could not be taken.
    """
    if dest.exists():
        raise BackupFailed(f"{dest} exists; a backup never overwrites a file")
    partial = dest.with_name(f".{dest.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        if is_postgres(location):
            _pg_dump(str(location), partial)
        else:
            _vacuum_into(Path(location), partial)
        with partial.open("rb") as copy:
            os.fsync(copy.fileno())
        partial.rename(dest)
        directory = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        partial.unlink(missing_ok=True)
    return dest.stat().st_size


def _vacuum_into(path: Path, dest: Path) -> None:
    if not path.is_file():
        raise BackupFailed(f"no index at {path}")
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 30000")
        db.execute("VACUUM INTO ?", (str(dest),))
    except sqlite3.Error as exc:
        raise BackupFailed(f"cannot copy the index at {path}: {exc}") from exc
    finally:
        db.close()


def pg_tool(name: str) -> str:
    """Debian's ``pg_dump``/``pg_restore`` of the newest installed server version.

    It must be at least the server's major version; the version-named directory is used
    rather than ``/usr/bin``'s wrapper, which wants a configured cluster.
    """
    versions = sorted(
        (p for p in _PG_BIN.glob(f"*/bin/{name}") if p.parent.parent.name.isdigit()),
        key=lambda p: int(p.parent.parent.name),
    )
    found = str(versions[-1]) if versions else shutil.which(name)
    if found is None:
        raise BackupFailed(f"{name} is not installed (Debian: apt-get install postgresql-client)")
    return found


def pg_environment(url: str) -> tuple[str, dict[str, str]]:
    """A connection string without the password for a PostgreSQL tool's ``--dbname``, and
    the environment that carries the password (``PGPASSWORD``)."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    password = params.pop("password", None)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()}), env


def _pg_dump(url: str, dest: Path) -> None:
    dbname, env = pg_environment(url)
    argv = [pg_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={dest}",
            f"--dbname={dbname}"]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        said = redact_text(done.stderr.strip()[-500:])
        raise BackupFailed(f"pg_dump of the index at {describe(url)} failed: {said}")
