"""The state of every sandbox, in one SQLite file shared by every process.

The store is the single source of truth: the CLI, a notebook kernel and the
Jupyter server each open the same file; nothing about a sandbox lives only
in a process's memory.  WAL mode lets readers and one writer work at once;
state changes are compare-and-set UPDATEs, so two processes racing to stop
or reap the same sandbox cannot both win.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import StoreError

SCHEMA_VERSION = 2  # 2: the notebook and kernel whose default sandbox it is
BUSY_TIMEOUT_SECONDS = 30.0

JSON_FIELDS = ("options", "provider_state")
LIVE_STATUSES = ("creating", "active", "paused")


def default_data_dir() -> Path:
    """``$NEXUS_DATA_DIR``, else ``nexus/`` in the Jupyter data dir (as jupyter_core computes it on Linux)."""
    if os.environ.get("NEXUS_DATA_DIR"):
        return Path(os.environ["NEXUS_DATA_DIR"]).expanduser()
    if os.environ.get("JUPYTER_DATA_DIR"):
        return Path(os.environ["JUPYTER_DATA_DIR"]).expanduser() / "nexus"
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(xdg) / "jupyter" / "nexus"


def _wal_mode(conn: sqlite3.Connection) -> None:
    """Switch a new store to WAL.  The switch wants the file to itself and SQLite does not wait
    for it (no busy handler): processes opening a fresh store at once retry here instead."""
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _migrate(conn: sqlite3.Connection) -> None:
    # sqlite-utils is imported only here: it imports numpy when numpy is
    # installed (~250 ms), which the CLI cannot afford on every call.
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    sandboxes = db["sandboxes"]
    sandboxes.create(
        {
            "sandbox_id": str,
            "name": str,
            "user_id": str,
            "agent_id": str,
            "tenant_id": str,
            "provider": str,
            "template_id": str,
            "status": str,
            "created_at": float,
            "last_active_at": float,
            "paused_at": float,
            "stopped_at": float,
            "ttl_minutes": int,
            "expires_at": float,
            "options": str,
            "provider_state": str,
            "stop_reason": str,
            "notebook": str,
            "kernel_id": str,
        },
        pk="sandbox_id",
        not_null={"name", "user_id", "tenant_id", "provider", "status", "created_at", "ttl_minutes"},
        if_not_exists=True,
    )
    for column in ("notebook", "kernel_id"):  # a schema 1 store: its rows have none
        if column not in sandboxes.columns_dict:
            sandboxes.add_column(column, str)
    sandboxes.create_index(["user_id", "status"], if_not_exists=True)
    sandboxes.create_index(["status", "expires_at"], if_not_exists=True)
    sandboxes.create_index(["name"], if_not_exists=True)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def make_data_dir_private(data_dir: Path, *marks: Path) -> None:
    """Make the data dir its owner's alone (0700), tightened only when it is ours: new, or
    holding one of ``marks`` (never a folder of the user's that NEXUS_DATA_DIR happens to name)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = data_dir.stat()
    ours = any(mark.exists() for mark in marks) or not any(data_dir.iterdir())
    if ours and info.st_uid == os.geteuid() and info.st_mode & 0o077:
        data_dir.chmod(0o700)


class SandboxStore(ABC):
    """The queries of the store, whichever database holds it: a backend gives ``_execute``
    (``?`` placeholders; rows readable by column name) and ``_transaction``."""

    data_dir: Path
    # Whether other hosts share it (PostgreSQL): rows then name the host holding their box,
    # servers advertise themselves, and one reaper pass at a time does the fleet's work.
    shared = False
    # A shared database's own id, which providers label their boxes with (None: their data dir's).
    store_id: str | None = None

    @abstractmethod
    def _execute(self, sql: str, params: Iterable[Any] = ()): ...

    @abstractmethod
    def _transaction(self, lock: str | None = None):
        """A context in which ``_execute`` calls commit together; ``lock`` names what two
        processes must not do at once (a user's quota count)."""

    @staticmethod
    def _row(row: sqlite3.Row | None) -> dict | None:
        if row is None:
            return None
        data = dict(row)
        for field in JSON_FIELDS:
            data[field] = json.loads(data[field]) if data.get(field) else {}
        return data

    # ---- the fleet: servers that share the database (nothing to share in one machine's file)
    def advertise(self, url: str, host: str, secret: str, pid: int) -> None:
        """Say that a server of ``host`` answers at ``url`` (its forwarding ``secret`` with it)."""
        return None  # one machine's file: no other host to tell

    def heartbeat(self, host: str, url: str, fleet_pass: bool) -> bool:
        """A server's reaper went round (``fleet_pass``: it did the fleet's work too); False
        when its advertisement is gone (say it again)."""
        return True

    def withdraw(self, host: str, url: str) -> None:
        """The server of ``host`` at ``url`` is stopping."""
        return None

    def servers(self, host: str | None = None) -> list[dict]:
        """Servers advertised (of ``host``), the most recently heard from first."""
        return []

    def forget_servers(self, silent_since: float) -> None:
        """Drop the advertisements of servers not heard from since then (killed, never withdrawn)."""
        return None

    @contextmanager
    def fleet_turn(self, interval: float):
        """Whether this reaper pass does the fleet's work (expiry, failed creates, shared
        engines): one pass at a time, at most once per ``interval``.  One machine's file has
        no fleet: every pass does it (a file lock keeps background passes apart)."""
        yield True

    # ---- writes
    def insert(self, row: dict, max_live_of_user: int = 0) -> bool:
        """Add a row; with ``max_live_of_user``, only while its user has fewer live sandboxes
        (counted and inserted in one statement, so two racing creates cannot both pass).
        Returns whether it was added."""
        data = dict(row)
        for field in JSON_FIELDS:
            data[field] = json.dumps(data.get(field) or {})
        columns = ", ".join(data)
        marks = ", ".join("?" for _ in data)
        if not max_live_of_user:
            self._execute(f"INSERT INTO sandboxes ({columns}) VALUES ({marks})", data.values())
            return True
        # Counted and inserted under the user's lock: two racing creates cannot both pass.
        with self._transaction(lock=f"user:{data['user_id']}"):
            cursor = self._execute(
                f"INSERT INTO sandboxes ({columns}) SELECT {marks} WHERE "
                f"(SELECT COUNT(*) FROM sandboxes WHERE user_id = ? AND status IN {LIVE_STATUSES}) < ?",
                [*data.values(), data["user_id"], max_live_of_user],
            )
            return cursor.rowcount == 1

    def attach_kernel(self, sandbox_id: str, user_id: str, kernel_id: str, notebook: str | None) -> None:
        """Make ``sandbox_id`` the one sandbox of ``user_id`` that names ``kernel_id`` (the default
        sandbox of that kernel's notebook); another user's rows are never touched."""
        with self._transaction(lock=f"kernel:{kernel_id}"):
            self._execute(
                "UPDATE sandboxes SET kernel_id = NULL WHERE kernel_id = ? AND user_id = ? AND sandbox_id != ?",
                [kernel_id, user_id, sandbox_id],
            )
            self._execute(
                "UPDATE sandboxes SET kernel_id = ?, notebook = coalesce(?, notebook) WHERE sandbox_id = ?",
                [kernel_id, notebook, sandbox_id],
            )

    def update(self, sandbox_id: str, fields: dict, expect_status: Iterable[str] | None = None) -> bool:
        """Set ``fields``; with ``expect_status``, only if the row is in one of those states.

        Returns whether the row was changed (compare-and-set).
        """
        data = dict(fields)
        for field in JSON_FIELDS:
            if field in data:
                data[field] = json.dumps(data[field] or {})
        assignments = ", ".join(f"{column} = ?" for column in data)
        sql = f"UPDATE sandboxes SET {assignments} WHERE sandbox_id = ?"
        params = [*data.values(), sandbox_id]
        if expect_status is not None:
            statuses = tuple(expect_status)
            sql += f" AND status IN ({', '.join('?' for _ in statuses)})"
            params.extend(statuses)
        return self._execute(sql, params).rowcount == 1

    # ---- reads
    def get(self, sandbox_id: str) -> dict | None:
        return self._row(self._execute("SELECT * FROM sandboxes WHERE sandbox_id = ?", [sandbox_id]).fetchone())

    def find_by_name(self, name: str, user_id: str | None) -> list[dict]:
        """Live sandboxes called ``name`` (of ``user_id`` unless None), newest first."""
        sql = f"SELECT * FROM sandboxes WHERE name = ? AND status IN {LIVE_STATUSES}"
        params: list[Any] = [name]
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        return [self._row(r) for r in self._execute(sql + " ORDER BY created_at DESC", params)]

    def select(
        self,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        tenant_id: str | None = None,
        provider: str | None = None,
        name: str | None = None,
        notebook: str | None = None,
        kernel_id: str | None = None,
        include_stopped: bool = False,
    ) -> list[dict]:
        clauses, params = [], []
        for column, value in (
            ("name", name),
            ("notebook", notebook),
            ("kernel_id", kernel_id),
            ("user_id", user_id),
            ("agent_id", agent_id),
            ("tenant_id", tenant_id),
            ("provider", provider),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if not include_stopped:
            clauses.append(f"status IN {LIVE_STATUSES}")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return [self._row(r) for r in self._execute(f"SELECT * FROM sandboxes {where} ORDER BY created_at", params)]

    def expired(self, now: float) -> list[dict]:
        return [
            self._row(r)
            for r in self._execute(
                "SELECT * FROM sandboxes WHERE status = 'active' AND expires_at IS NOT NULL AND expires_at < ?", [now]
            )
        ]

    def stale_creating(self, before: float) -> list[dict]:
        return [
            self._row(r)
            for r in self._execute("SELECT * FROM sandboxes WHERE status = 'creating' AND created_at < ?", [before])
        ]

    def live_ids(self, provider: str) -> set[str]:
        rows = self._execute(
            f"SELECT sandbox_id FROM sandboxes WHERE provider = ? AND status IN {LIVE_STATUSES}", [provider]
        )
        return {r["sandbox_id"] for r in rows}


class Store(SandboxStore):
    """Rows of sandboxes in ``<data_dir>/nexus.db`` (SQLite, the default).  Safe to share between threads."""

    def __init__(self, data_dir: Path | str | None = None):
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.path = self.data_dir / "nexus.db"
        self._local = threading.local()
        self.connection()  # fail now, with a clear message, if the file is unusable

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            self._make_private()
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
            conn.row_factory = sqlite3.Row
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path} was written by a newer nexus-jupyter (schema {version}); upgrade nexus-jupyter"
                    )
                _wal_mode(conn)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                        _migrate(conn)
                    if conn.in_transaction:
                        conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot use the state database {self.path}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"cannot use the data directory {self.data_dir}: {exc.strerror}") from exc

    def _make_private(self) -> None:
        """The data dir is its owner's alone (0700) and the database 0600: other users of
        the machine must not read sandboxes' state or reach their boxes' directories.
        SQLite gives its -wal and -shm files the database's own mode."""
        make_data_dir_private(self.data_dir, self.path)
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            if self.path.stat().st_uid == os.geteuid() and self.path.stat().st_mode & 0o077:
                self.path.chmod(0o600)

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        try:
            return self.connection().execute(sql, tuple(params))
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"state database error ({self.path}): {exc}") from exc

    @contextmanager
    def _transaction(self, lock: str | None = None):
        # One writer at a time for the whole file: ``lock`` (a name another backend locks) is moot.
        conn = self.connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"state database error ({self.path}): {exc}") from exc
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def open_store(data_dir: Path | str | None = None, database_url: str = "") -> SandboxStore:
    """The store a service uses: PostgreSQL when ``database_url`` names one, else SQLite in the data dir."""
    if database_url:
        from .store_postgres import PostgresStore  # psycopg is imported only then

        return PostgresStore(database_url, data_dir)
    return Store(data_dir)
