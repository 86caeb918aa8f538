"""The store on both backends: SQLite in the data dir (the default) and PostgreSQL
(``NEXUS_DATABASE_URL``, a throwaway cluster of the test run's own).  The same records, the
same compare-and-set transitions under races between processes, schema versioning, and one
clear line for every way a database URL can be wrong."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from nexus_jupyter.errors import StoreError
from nexus_jupyter.store import SCHEMA_VERSION, Store, open_store
from nexus_jupyter.store_postgres import SCHEMA_VERSION as POSTGRES_SCHEMA_VERSION

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path) -> tuple[str, str]:
    """(data dir, database URL: empty for SQLite): a fresh, empty store per test."""
    url = ""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").create_database(f"store_{os.getpid()}_{time.monotonic_ns()}")
    return str(tmp_path / "data"), url


def row(sandbox_id: str, user: str = "alice", **fields) -> dict:
    now = time.time()
    return {
        "sandbox_id": sandbox_id,
        "name": f"box-{sandbox_id}",
        "user_id": user,
        "tenant_id": "default",
        "provider": "local",
        "status": "active",
        "created_at": now,
        "last_active_at": now,
        "ttl_minutes": 10,
        "expires_at": now + 600,
        "options": {"memory_mb": 256, "env_keys": ["A"]},
        **fields,
    }


def test_rows_read_back_as_written_and_filters_select_them(store_url):
    store = open_store(*store_url)
    assert store.insert(row("sb_a", notebook="/n/a.ipynb"))
    assert store.insert(row("sb_b", user="bob", status="paused", expires_at=None))
    assert store.insert(row("sb_c", status="stopped", stopped_at=time.time()))
    got = store.get("sb_a")
    assert got["options"] == {"memory_mb": 256, "env_keys": ["A"]} and got["provider_state"] == {}
    assert (got["notebook"], got["kernel_id"], got["stop_reason"]) == ("/n/a.ipynb", None, None)
    assert store.get("sb_nope") is None
    assert [r["sandbox_id"] for r in store.select()] == ["sb_a", "sb_b"]
    assert [r["sandbox_id"] for r in store.select(include_stopped=True)] == ["sb_a", "sb_b", "sb_c"]
    assert [r["sandbox_id"] for r in store.select(user_id="bob")] == ["sb_b"]
    assert [r["sandbox_id"] for r in store.select(notebook="/n/a.ipynb")] == ["sb_a"]
    assert [r["sandbox_id"] for r in store.find_by_name("box-sb_b", "bob")] == ["sb_b"]
    assert store.find_by_name("box-sb_b", "alice") == []
    assert store.live_ids("local") == {"sb_a", "sb_b"}
    assert store.expired(time.time() + 3600) == [store.get("sb_a")]  # paused ones do not expire
    store.attach_kernel("sb_a", "alice", "kernel-1", None)
    assert store.get("sb_a")["kernel_id"] == "kernel-1" and store.get("sb_a")["notebook"] == "/n/a.ipynb"


def test_a_compare_and_set_change_happens_once(store_url):
    store = open_store(*store_url)
    store.insert(row("sb_once"))
    assert store.update("sb_once", {"status": "stopped", "stop_reason": "stopped"}, expect_status=["active"])
    assert not store.update("sb_once", {"status": "stopped", "stop_reason": "expired"}, expect_status=["active"])
    assert store.get("sb_once")["stop_reason"] == "stopped"


def test_one_store_serves_many_threads_at_once(store_url):
    """A server's threads share its store: a PostgreSQL store adds pooled connections to its first."""
    from concurrent.futures import ThreadPoolExecutor

    store = open_store(*store_url)

    def work(index: int) -> bool:
        store.insert(row(f"sb_t{index:02d}", user=f"user-{index % 4}"), max_live_of_user=100)
        with_pause = store.update(f"sb_t{index:02d}", {"status": "paused"}, expect_status=["active"])
        return with_pause and store.get(f"sb_t{index:02d}")["status"] == "paused"

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(work, range(48)))
    assert len(store.select()) == 48


def _stop_once(data_dir: str, url: str, sandbox_id: str, start: float, won) -> None:
    store = open_store(data_dir, url)
    time.sleep(max(0.0, start - time.time()))  # all at once
    if store.update(sandbox_id, {"status": "stopped", "stop_reason": f"pid {os.getpid()}"}, expect_status=["active"]):
        won.put(os.getpid())


def _create_within_quota(data_dir: str, url: str, index: int, start: float, added) -> None:
    store = open_store(data_dir, url)
    time.sleep(max(0.0, start - time.time()))
    if store.insert(row(f"sb_q{index:02d}", user="carol"), max_live_of_user=3):
        added.put(index)


def _race(target, store_url, *args) -> list:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start = time.time() + 3  # every process has opened its store by then
    processes = [context.Process(target=target, args=(*store_url, *args, i, start, results)) for i in range(16)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    found = []
    while not results.empty():
        found.append(results.get())
    return found


def _stop_race(data_dir, url, index, start, won):  # (index unused: one row, sixteen stoppers)
    _stop_once(data_dir, url, "sb_raced", start, won)


def test_sixteen_processes_stopping_one_sandbox_make_exactly_one_winner(store_url):
    open_store(*store_url).insert(row("sb_raced"))
    winners = _race(_stop_race, store_url)
    assert len(winners) == 1
    assert open_store(*store_url).get("sb_raced")["stop_reason"] == f"pid {winners[0]}"


def test_sixteen_processes_creating_at_once_never_pass_a_users_quota(store_url):
    added = _race(_create_within_quota, store_url)
    assert len(added) == 3
    store = open_store(*store_url)
    assert sorted(r["sandbox_id"] for r in store.select(user_id="carol")) == sorted(f"sb_q{i:02d}" for i in added)


def _open_fresh(data_dir, url, index, start, opened):
    time.sleep(max(0.0, start - time.time()))
    open_store(data_dir, url)
    opened.put(index)


def test_a_fresh_database_is_set_up_once_when_sixteen_processes_open_it_at_once(store_url):
    assert len(_race(_open_fresh, store_url)) == 16
    store = open_store(*store_url)
    assert store.insert(row("sb_after")) and store.select() == [store.get("sb_after")]


def set_schema_version(store_url, version: int) -> None:
    data_dir, url = store_url
    if url:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE nexus_meta SET value = %s WHERE key = 'schema_version'", [str(version)])
    else:
        import sqlite3

        conn = sqlite3.connect(os.path.join(data_dir, "nexus.db"))
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
        conn.close()


def nexus(*args: str, data_dir: str, url: str = "", user: str = "alice") -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "NEXUS_DATA_DIR": data_dir,
        "NEXUS_DATABASE_URL": url,
        "NEXUS_USER": user,
        "NEXUS_SANDBOX_PROVIDER": "local",
    }
    return subprocess.run([sys.executable, "-m", "nexus_jupyter", *args], capture_output=True, text=True, env=env)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in done.stderr, done
    return lines[0]


def test_a_store_written_by_a_newer_nexus_jupyter_is_refused_and_kept(store_url):
    store = open_store(*store_url)
    store.insert(row("sb_kept"))
    current = POSTGRES_SCHEMA_VERSION if store_url[1] else SCHEMA_VERSION
    set_schema_version(store_url, current + 1)
    with pytest.raises(StoreError, match="newer nexus-jupyter"):
        open_store(*store_url)
    assert "newer nexus-jupyter" in one_line_error(nexus("sandbox", "list", data_dir=store_url[0], url=store_url[1]))
    set_schema_version(store_url, current)
    assert open_store(*store_url).get("sb_kept") is not None


def test_a_postgresql_store_of_the_release_before_hosts_is_upgraded_in_place(postgres, tmp_path):
    import psycopg

    url = postgres.create_database(f"upgrade_{os.getpid()}_{time.monotonic_ns()}")
    open_store(tmp_path, url).insert(row("sb_old"))
    with psycopg.connect(url, autocommit=True) as conn:  # as schema 2 left it: no hosts, no servers
        conn.execute("ALTER TABLE sandboxes DROP COLUMN host")
        conn.execute("DROP TABLE nexus_servers")
        conn.execute("DELETE FROM nexus_meta WHERE key IN ('store_id', 'fleet_pass_at')")
        conn.execute("UPDATE nexus_meta SET value = '2' WHERE key = 'schema_version'")
    store = open_store(tmp_path, url)
    old = store.get("sb_old")
    assert old["host"] is None and old["name"] == "box-sb_old"  # no host: every host may reach it
    assert len(store.store_id) == 12 and store.servers() == []
    assert store.insert(row("sb_new", host="alpha")) and store.get("sb_new")["host"] == "alpha"
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT value FROM nexus_meta WHERE key = 'schema_version'").fetchone()[0] == "3"


@pytest.mark.parametrize(
    ("wrong", "expected"),
    [
        ("password", "password authentication failed"),
        ("database", 'database "nowhere" does not exist'),
        ("port", "Connection refused"),
        ("scheme", "must be a postgresql:// URL"),
    ],
)
def test_a_wrong_database_url_is_one_line_naming_it_without_its_password(postgres, tmp_path, wrong, expected):
    url = {
        "password": postgres.url(password="not-the-password"),
        "database": postgres.url("nowhere"),
        "port": postgres.url().replace(f":{postgres.port}/", ":1/"),
        "scheme": "mysql://nexus:secret@127.0.0.1/nexus",
    }[wrong]
    data_dir = tmp_path / "data"
    line = one_line_error(nexus("sandbox", "list", data_dir=str(data_dir), url=url))
    assert expected in line, line
    assert postgres.password not in line and "not-the-password" not in line and "secret" not in line
    if wrong != "scheme":
        assert f"127.0.0.1:{postgres.port if wrong != 'port' else 1}/" in line
    assert not (data_dir / "nexus.db").exists()  # nothing written locally by mistake


def test_the_cli_keeps_its_sandboxes_in_postgresql_and_another_process_sees_them(postgres, tmp_path):
    url = postgres.create_database(f"cli_{time.monotonic_ns()}")
    data_dir = str(tmp_path / "data")
    created = nexus("sandbox", "create", "shared", "--json", data_dir=data_dir, url=url)
    assert created.returncode == 0, created.stderr
    sandbox = json.loads(created.stdout)["sandbox_id"]
    try:
        ran = nexus("sandbox", "run", sandbox, "-c", "print(6 * 7)", data_dir=data_dir, url=url)
        assert ran.stdout == "42\n", ran
        listed = json.loads(nexus("sandbox", "list", "--json", data_dir=data_dir, url=url).stdout)["sandboxes"]
        assert [r["sandbox_id"] for r in listed] == [sandbox]
        assert not os.path.exists(os.path.join(data_dir, "nexus.db"))  # the state is in PostgreSQL only
        import psycopg

        with psycopg.connect(url) as conn:
            status = conn.execute("SELECT status FROM sandboxes WHERE sandbox_id = %s", [sandbox]).fetchone()[0]
        assert status == "active"
    finally:
        stopped = nexus("sandbox", "stop", sandbox, data_dir=data_dir, url=url)
        assert stopped.returncode == 0, stopped.stderr
    assert json.loads(nexus("sandbox", "list", "--json", data_dir=data_dir, url=url).stdout) == {"sandboxes": []}


def test_sqlite_stays_the_default(tmp_path):
    store = open_store(tmp_path / "data")
    assert isinstance(store, Store) and (tmp_path / "data" / "nexus.db").exists()


def test_without_psycopg_a_database_url_says_what_to_install(tmp_path):
    script = (
        "import sys; sys.modules['psycopg'] = None\n"  # as if it were not installed
        "from nexus_jupyter.cli import cli\n"
        "sys.exit(cli(['sandbox', 'list']))\n"
    )
    env = {**os.environ, "NEXUS_DATA_DIR": str(tmp_path / "data"), "NEXUS_DATABASE_URL": "postgresql://u:pw@db/nexus"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    line = one_line_error(done)
    assert "pip install 'nexus-jupyter[postgres]'" in line and "pw" not in line
    assert not (tmp_path / "data" / "nexus.db").exists()


def test_a_fresh_data_dir_is_its_owners_alone_on_either_backend(store_url, tmp_path):
    data_dir, url = store_url
    os.makedirs(data_dir, mode=0o755)
    os.chmod(data_dir, 0o755)  # as a server's serve-root made its parents, or mkdir -p did
    open_store(data_dir, url)
    assert os.stat(data_dir).st_mode & 0o777 == 0o700
    # A folder of the user's that NEXUS_DATA_DIR happens to name is left as it is.
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    (theirs / "notes.txt").write_text("mine")
    os.chmod(theirs, 0o755)
    if url:
        open_store(theirs, url)
        assert os.stat(theirs).st_mode & 0o777 == 0o755
