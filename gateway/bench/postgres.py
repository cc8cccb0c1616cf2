"""A throwaway PostgreSQL cluster for the tests and the bench: Debian's server, a temp dir,
a free port.

``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres`` user
(Debian's package creates it) and its commands run through ``runuser``. The server
listens on 127.0.0.1 and on a Unix socket inside the cluster's own directory, never on
the default port or socket. It is stopped through ``pg_ctl`` on its own data directory,
which signals the postmaster whose pid that directory records: the process this module
started, never another one.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.procs import free_port

BIN = Path("/usr/lib/postgresql/15/bin")


def _as_owner(argv: Sequence[str]) -> list[str]:
    """``argv`` run as the cluster's owner: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return list(argv)


@dataclass
class PostgresCluster:
    """One cluster in ``root``: ``start()``, ``create_database()``, ``url()``, ``stop()``."""

    root: Path
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    superuser: str = "xray"
    passwords: dict[str, str] = field(default_factory=dict)  # roles made by create_role

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    def start(self) -> PostgresCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.root, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        secret = self.root / "pwfile"
        secret.write_text(self.password + "\n")
        secret.chmod(0o600)
        if os.geteuid() == 0:
            os.chown(secret, pwd.getpwnam("postgres").pw_uid, -1)
        self._run(
            [
                str(BIN / "initdb"), "-D", str(self.data), "-U", self.superuser,
                f"--pwfile={secret}", "--auth=scram-sha-256", "--encoding=UTF8",
                "--locale=C.UTF-8",
            ]
        )  # fmt: skip
        secret.unlink()
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=on -c max_connections=200"
        )
        self._run(
            [
                str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                "-o", options, "-w", "-t", "60", "start",
            ]
        )  # fmt: skip
        return self

    def stop(self) -> None:
        """Stop the postmaster of this data directory (fast: clients are cut) and forget it."""
        if (self.data / "postmaster.pid").exists():
            self._run([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", *, user: str | None = None) -> str:
        """A ``postgresql://`` URL for ``database`` (the superuser unless ``user`` is given)."""
        name = user or self.superuser
        password = self.password if user is None else self.passwords[name]
        return f"postgresql://{name}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (a fresh name unless given); its superuser URL."""
        import psycopg

        name = name or f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def create_role(self, name: str) -> str:
        """A login role with a fresh password and no privileges; its password."""
        import psycopg
        from psycopg import sql

        password = secrets.token_urlsafe(16)
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
        self.passwords[name] = password
        return password

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(
            _as_owner(argv), capture_output=True, text=True, timeout=120, cwd=self.root
        )
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.strip()}\n{tail}")
