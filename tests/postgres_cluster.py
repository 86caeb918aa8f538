"""A throwaway PostgreSQL cluster for the tests: its own data dir and port on loopback, run as
the unprivileged ``postgres`` user (PostgreSQL refuses root), password authentication, removed
after.  Needs Debian's postgresql package (scripts/ensure-postgres.sh installs it)."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from jupyter_servers import free_port

USER = "nexus"


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def unavailable() -> str | None:
    """Why no cluster can be started here (None: one can)."""
    if binaries() is None:
        return "needs PostgreSQL (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return "needs psycopg and psycopg-pool (pip install 'nexus-jupyter[postgres]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "needs the postgres OS user (made by Debian's postgresql package)"
    return None


class PostgresCluster:
    """``url(database)`` names a database of the running cluster; ``create_database`` makes one."""

    def __init__(self):
        self.bin = binaries()
        self.dir = Path(tempfile.mkdtemp(prefix="nexus-pg-"))
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.host = "127.0.0.1"
        as_root = os.geteuid() == 0
        if as_root:
            owner = pwd.getpwnam("postgres")
            os.chmod(self.dir, 0o755)
            shutil.chown(self.dir, owner.pw_uid, owner.pw_gid)
        (self.dir / "pw").write_text(self.password + "\n")
        if as_root:
            shutil.chown(self.dir / "pw", owner.pw_uid, owner.pw_gid)
        self._as_owner = (lambda cmd: ["runuser", "-u", "postgres", "--", *cmd]) if as_root else (lambda cmd: cmd)
        data = self.dir / "data"
        self._run(
            [str(self.bin / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={self.dir / 'pw'}",
             "-A", "scram-sha-256", "--no-sync", "-E", "UTF8"]
        )  # fmt: skip
        options = f"-p {self.port} -k {self.dir} -c listen_addresses={self.host} -c fsync=off -c max_connections=200"
        self._run(
            [str(self.bin / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(self.dir / "log"), "-w", "start"]
        )
        self.create_database("nexus")

    def _run(self, command: list[str]) -> None:
        done = subprocess.run(self._as_owner(command), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stderr.strip() or done.stdout.strip()}")

    def url(self, database: str = "nexus", password: str | None = None) -> str:
        return f"postgresql://{USER}:{password or self.password}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
