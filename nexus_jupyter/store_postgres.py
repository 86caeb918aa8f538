"""The state of every sandbox in one PostgreSQL database (``NEXUS_DATABASE_URL``), shared by
every process of every host that names it: the same rows and compare-and-set transitions as
the SQLite store (store.py holds the queries), through psycopg 3: one connection in a short
process (the CLI), a small pool besides it in a long-lived one whose threads need more.

A user's quota count and a kernel's attachment are serialised by transaction-scoped advisory
locks (SQLite gets the same from its one writer); the schema is created and migrated once,
under an advisory lock, and a database written by a newer nexus-jupyter is refused.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import StoreError
from .store import SandboxStore, default_data_dir, make_data_dir_private

# Its own numbering: 2 as SQLite's schema 2; 3 adds the fleet (rows' host, the servers, the store id).
SCHEMA_VERSION = 3
CONNECT_TIMEOUT_SECONDS = 10
POOL_SIZE = 8  # connections a process adds to its first when its threads need more at once

SCHEMA = """
CREATE TABLE IF NOT EXISTS nexus_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS sandboxes (
    sandbox_id text PRIMARY KEY,
    name text NOT NULL,
    user_id text NOT NULL,
    agent_id text,
    tenant_id text NOT NULL,
    provider text NOT NULL,
    template_id text,
    status text NOT NULL,
    created_at double precision NOT NULL,
    last_active_at double precision,
    paused_at double precision,
    stopped_at double precision,
    ttl_minutes integer NOT NULL,
    expires_at double precision,
    options text,
    provider_state text,
    stop_reason text,
    notebook text,
    kernel_id text
);
CREATE INDEX IF NOT EXISTS sandboxes_user_status ON sandboxes (user_id, status);
CREATE INDEX IF NOT EXISTS sandboxes_status_expires ON sandboxes (status, expires_at);
CREATE INDEX IF NOT EXISTS sandboxes_name ON sandboxes (name);
ALTER TABLE sandboxes ADD COLUMN IF NOT EXISTS host text;
CREATE TABLE IF NOT EXISTS nexus_servers (
    host text NOT NULL,
    url text NOT NULL,
    secret text NOT NULL,
    pid integer,
    started_at double precision NOT NULL,
    heartbeat_at double precision NOT NULL,
    host_passes integer NOT NULL DEFAULT 0,
    fleet_passes integer NOT NULL DEFAULT 0,
    PRIMARY KEY (host, url)  -- two machines may both call themselves http://127.0.0.1:2026
);
INSERT INTO nexus_meta (key, value)
    VALUES ('store_id', substr(md5(random()::text || clock_timestamp()::text), 1, 12)) ON CONFLICT DO NOTHING;
INSERT INTO nexus_meta (key, value) VALUES ('fleet_pass_at', '0') ON CONFLICT DO NOTHING;
"""
FLEET_LOCK = "nexus_jupyter:fleet-reaper"


def describe(url: str) -> str:
    """The database a URL names, for messages: ``postgresql://user@host:port/db``, never the password."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path or '/'}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _Result:
    """What a statement gave, read before its connection goes back to the pool."""

    def __init__(self, rows: list[dict], rowcount: int):
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> dict | None:
        return self._rows[0] if self._rows else None

    def __iter__(self):
        return iter(self._rows)


class PostgresStore(SandboxStore):
    """Rows of sandboxes in a PostgreSQL database.  Safe to share between threads."""

    shared = True

    def __init__(self, url: str, data_dir: Path | str | None = None):
        try:
            import psycopg
            from psycopg.rows import dict_row

            if importlib.util.find_spec("psycopg_pool") is None:  # imported when a pool is first needed
                raise ImportError("psycopg_pool")
        except ImportError:
            raise StoreError(
                "NEXUS_DATABASE_URL names a PostgreSQL database, which needs psycopg: "
                "pip install 'nexus-jupyter[postgres]'"
            ) from None
        self._psycopg = psycopg
        # The boxes of the local provider still live on this host, under its data dir: its
        # owner's alone, as with SQLite.
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.url = url
        self.where = describe(url)
        self._local = threading.local()
        self._connect_kwargs = {"autocommit": True, "row_factory": dict_row, "connect_timeout": CONNECT_TIMEOUT_SECONDS}
        self._pool = None  # made when a second thread wants a connection while the first is busy
        self._pool_lock = threading.Lock()
        try:
            # The first connection, in this thread: its error is the user's (bad password, no database).
            self._first = psycopg.connect(url, **self._connect_kwargs)
            self._migrate(self._first)
        except psycopg.Error as exc:
            raise StoreError(f"cannot use the state database {self.where}: {_first_line(exc)}") from None
        self._first_lock = threading.Lock()
        try:
            make_data_dir_private(self.data_dir, self.data_dir / "host-id", self.data_dir / "boxes")
        except OSError as exc:
            raise StoreError(f"cannot use the data directory {self.data_dir}: {exc.strerror}") from None
        self.store_id = self._execute("SELECT value FROM nexus_meta WHERE key = 'store_id'").fetchone()["value"]

    def _migrate(self, conn) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('nexus_jupyter:schema'))")
            exists = conn.execute("SELECT to_regclass('nexus_meta') IS NOT NULL AS found").fetchone()["found"]
            version = 0
            if exists:
                row = conn.execute("SELECT value FROM nexus_meta WHERE key = 'schema_version'").fetchone()
                version = int(row["value"]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.where} was written by a newer nexus-jupyter (schema {version}); upgrade nexus-jupyter"
                )
            if version < SCHEMA_VERSION:
                conn.execute(SCHEMA)
                conn.execute(
                    "INSERT INTO nexus_meta (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    [str(SCHEMA_VERSION)],
                )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self._first.close()

    @contextmanager
    def _connection(self):
        """A connection for one statement or transaction: the process's first one when it is free
        (a CLI call never opens another), else one from a pool made on first contention (a
        server's threads)."""
        if self._first_lock.acquire(blocking=False):
            try:
                if self._first.closed or self._first.broken:  # the server restarted: connect again
                    self._first = self._psycopg.connect(self.url, **self._connect_kwargs)
                yield self._first
            finally:
                self._first_lock.release()
            return
        with self._pool_lock:
            if self._pool is None:
                from psycopg_pool import ConnectionPool

                self._pool = ConnectionPool(
                    self.url, min_size=0, max_size=POOL_SIZE, kwargs=self._connect_kwargs, name="nexus-store"
                )
        with self._pool.connection(timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            yield conn

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> _Result:
        sql = sql.replace("?", "%s")  # the queries' placeholders (no literal ? in them)
        try:
            held = getattr(self._local, "conn", None)
            if held is not None:  # inside _transaction
                return self._run(held, sql, params)
            with self._connection() as conn:
                return self._run(conn, sql, params)
        except self._psycopg.Error as exc:
            raise StoreError(f"state database error ({self.where}): {_first_line(exc)}") from None
        except Exception as exc:  # the pool's own (PoolTimeout: the server went away)
            if type(exc).__module__.startswith("psycopg_pool"):
                raise StoreError(f"cannot reach the state database {self.where}: {_first_line(exc)}") from None
            raise

    @staticmethod
    def _run(conn, sql: str, params: Iterable[Any]) -> _Result:
        cursor = conn.execute(sql, tuple(params))
        rows = cursor.fetchall() if cursor.description is not None else []
        return _Result(rows, cursor.rowcount)

    @contextmanager
    def _transaction(self, lock: str | None = None):
        if getattr(self._local, "conn", None) is not None:  # already in one: it covers this too
            yield
            return
        try:
            with self._connection() as conn, conn.transaction():
                self._local.conn = conn
                try:
                    if lock is not None:
                        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"nexus_jupyter:{lock}"])
                    yield
                finally:
                    self._local.conn = None
        except self._psycopg.Error as exc:
            raise StoreError(f"state database error ({self.where}): {_first_line(exc)}") from None

    # ---- the fleet
    def advertise(self, url: str, host: str, secret: str, pid: int) -> None:
        now = time.time()
        self._execute(
            "INSERT INTO nexus_servers (url, host, secret, pid, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (host, url) DO UPDATE SET secret = EXCLUDED.secret, pid = EXCLUDED.pid, "
            "started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, host_passes = 0, fleet_passes = 0",
            [url, host, secret, pid, now, now],
        )

    def heartbeat(self, host: str, url: str, fleet_pass: bool) -> bool:
        return (
            self._execute(
                "UPDATE nexus_servers SET heartbeat_at = ?, host_passes = host_passes + 1, "
                "fleet_passes = fleet_passes + ? WHERE host = ? AND url = ?",
                [time.time(), int(fleet_pass), host, url],
            ).rowcount
            == 1
        )

    def withdraw(self, host: str, url: str) -> None:
        self._execute("DELETE FROM nexus_servers WHERE host = ? AND url = ?", [host, url])

    def servers(self, host: str | None = None) -> list[dict]:
        sql = "SELECT * FROM nexus_servers"
        params = []
        if host is not None:
            sql += " WHERE host = ?"
            params.append(host)
        return list(self._execute(sql + " ORDER BY heartbeat_at DESC", params))

    def forget_servers(self, silent_since: float) -> None:
        self._execute("DELETE FROM nexus_servers WHERE heartbeat_at < ?", [silent_since])

    @contextmanager
    def fleet_turn(self, interval: float):
        """A session lock held for the pass (ended with its process if it dies), and the time
        of the fleet's last pass compare-and-set: several servers' loops make one pass per
        interval between them, never two at once."""
        try:
            with self._connection() as conn:
                got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s)) AS got", [FLEET_LOCK]).fetchone()
                if not got["got"]:
                    yield False
                    return
                try:
                    # The database's clock, not the hosts': one whose clock runs ahead cannot
                    # hold the others off.  Nine tenths: a server's own next pass, a little
                    # early, still takes its turn.
                    won = conn.execute(
                        "UPDATE nexus_meta SET value = extract(epoch FROM clock_timestamp())::text "
                        "WHERE key = 'fleet_pass_at' AND value::float8 <= extract(epoch FROM clock_timestamp()) - %s",
                        [0.9 * interval],
                    ).rowcount
                    yield won == 1
                finally:
                    if not conn.closed:
                        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", [FLEET_LOCK])
        except self._psycopg.Error as exc:
            raise StoreError(f"state database error ({self.where}): {_first_line(exc)}") from None
