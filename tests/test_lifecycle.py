"""TTL, reaping, orphans, ownership and the store, against real boxes and a real SQLite file."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from nexus_jupyter import PermissionDenied, SandboxManager, SandboxNotFound
from nexus_jupyter.store import SCHEMA_VERSION


def expire_now(nx: SandboxManager, sandbox_id: str) -> None:
    """Move the sandbox's expiry into the past, as if its idle time had run out."""
    nx.store.update(sandbox_id, {"expires_at": time.time() - 1})


def ends_within(backend, sandbox_id: str, state: dict, seconds: float) -> bool:
    """Whether the provider sees the box gone within ``seconds``."""
    deadline = time.monotonic() + seconds
    while backend.inspect(sandbox_id, state) != "stopped" and time.monotonic() < deadline:
        time.sleep(0.2)
    return backend.inspect(sandbox_id, state) == "stopped"


def test_ttl_is_an_idle_timeout_refreshed_by_every_run(nx):
    record = nx.sandbox_create("ttl", ttl_minutes=5)
    sandbox = record["sandbox_id"]
    row = nx.store.get(sandbox)
    assert row["expires_at"] - row["last_active_at"] == pytest.approx(300, abs=1)
    time.sleep(1.1)
    nx.sandbox_run(sandbox, "python", "print(1)")
    later = nx.store.get(sandbox)
    assert later["last_active_at"] > row["last_active_at"]
    assert later["expires_at"] - later["last_active_at"] == pytest.approx(300, abs=1)


def test_expired_sandboxes_are_stopped_lazily_by_any_call(nx):
    sandbox = nx.sandbox_create("expiring", ttl_minutes=1)["sandbox_id"]
    nx.sandbox_run(sandbox, "bash", "echo hi")
    expire_now(nx, sandbox)
    assert nx.sandbox_list()["sandboxes"] == []
    status = nx.sandbox_status(sandbox)
    assert status["status"] == "stopped"
    assert nx.store.get(sandbox)["stop_reason"] == "expired"
    # a read leaves the box's removal to a pass in the background
    assert ends_within(nx.provider(status["provider"]), sandbox, {}, 60)


def test_a_read_never_waits_on_destroying_an_expired_box(nx):
    sandbox = nx.sandbox_create("expiring")["sandbox_id"]
    row = nx.store.get(sandbox)
    backend = nx.provider(row["provider"])
    expire_now(nx, sandbox)

    def refuse(*args, **kwargs):
        raise AssertionError("a read destroyed a box in the reader's process")

    backend.destroy = refuse  # this process's provider only: the background pass has its own
    try:
        assert nx.sandbox_list()["sandboxes"] == []
        assert nx.sandbox_status(sandbox)["status"] == "stopped"
    finally:
        del backend.destroy
    assert nx.store.get(sandbox)["stop_reason"] == "expired"
    assert ends_within(backend, sandbox, row["provider_state"], 60)
    deadline = time.monotonic() + 60
    while sandbox in backend.box_ids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sandbox not in backend.box_ids()  # nothing left: directory, cgroup, container


def test_paused_sandboxes_do_not_expire(nx):
    sandbox = nx.sandbox_create("paused", ttl_minutes=1)["sandbox_id"]
    nx.sandbox_pause(sandbox)
    nx.store.update(sandbox, {"last_active_at": time.time() - 3600})
    assert nx.reap()["expired"] == []
    assert nx.sandbox_status(sandbox)["status"] == "paused"
    resumed = nx.sandbox_resume(sandbox)
    assert resumed["status"] == "active"
    assert nx.sandbox_run(sandbox, "python", "print('back')")["stdout"] == "back\n"


def test_reap_stops_expired_fixes_vanished_and_destroys_orphans(nx, nexus):
    expired = nx.sandbox_create("expired")["sandbox_id"]
    vanished = nx.sandbox_create("vanished")["sandbox_id"]
    orphan = nx.sandbox_create("orphan")["sandbox_id"]
    keeper = nx.sandbox_create("keeper")["sandbox_id"]
    backend = nx.provider(nx.sandbox_status(keeper)["provider"])
    expire_now(nx, expired)
    backend.destroy(vanished, nx.store.get(vanished)["provider_state"])
    # a box whose row is gone (e.g. the store was restored from a backup)
    nx.store._execute("DELETE FROM sandboxes WHERE sandbox_id = ?", [orphan])  # whichever database holds it
    assert orphan in backend.box_ids()

    report = nexus("sandbox", "reap", "--json").json()
    assert report["expired"] == [expired]
    assert report["vanished"] == [vanished]
    assert report["orphans"] == [orphan]
    assert orphan not in backend.box_ids()
    assert nx.sandbox_status(keeper)["status"] == "active"
    assert nx.sandbox_run(keeper, "python", "print('kept')")["stdout"] == "kept\n"


def test_a_create_that_never_finished_is_reaped(nx):
    sandbox = nx.sandbox_create("half-made")["sandbox_id"]
    nx.store.update(sandbox, {"status": "creating", "created_at": time.time() - 3600})
    assert nx.reap()["failed_creates"] == [sandbox]
    assert nx.sandbox_status(sandbox)["status"] == "stopped"


def test_the_box_ends_itself_when_idle_even_with_no_manager_running(nx):
    sandbox = nx.sandbox_create("self-expiring")["sandbox_id"]
    row = nx.store.get(sandbox)
    backend = nx.provider(row["provider"])
    backend.touch(sandbox, row["provider_state"], idle_timeout_seconds=1)
    assert ends_within(backend, sandbox, row["provider_state"], 15)


def test_code_in_the_box_cannot_keep_it_from_ending_itself(nx):
    # The kernel keeps a thread that connects to the agent over and over, proving nothing.
    sandbox = nx.sandbox_create("clinging")["sandbox_id"]
    nx.sandbox_run(
        sandbox,
        "python",
        "import socket, threading, time\n"
        "def cling():\n"
        "    while True:\n"
        "        s = socket.socket(socket.AF_UNIX)\n"
        "        try:\n"
        "            s.connect('/run/nexus/agent.sock')\n"
        "        except OSError:\n"
        "            pass\n"
        "        time.sleep(0.3)\n"
        "threading.Thread(target=cling, daemon=True).start()",
    )
    row = nx.store.get(sandbox)
    backend = nx.provider(row["provider"])
    backend.touch(sandbox, row["provider_state"], idle_timeout_seconds=1)
    assert ends_within(backend, sandbox, row["provider_state"], 15)


def test_other_users_sandboxes_read_as_not_found(data_dir, provider):
    alice = SandboxManager(data_dir, provider=provider, user_id="alice")
    bob = SandboxManager(data_dir, provider=provider, user_id="bob")
    sandbox = alice.sandbox_create("alice-box")["sandbox_id"]
    for action in (bob.sandbox_status, bob.sandbox_pause, bob.sandbox_resume, bob.sandbox_stop):
        with pytest.raises(SandboxNotFound):
            action(sandbox)
    with pytest.raises(SandboxNotFound):
        bob.sandbox_run(sandbox, "python", "print(1)")
    with pytest.raises(SandboxNotFound):
        bob.sandbox_read_file(sandbox, "x")
    with pytest.raises(SandboxNotFound):
        bob.sandbox_run("alice-box", "python", "print(1)")  # nor by name
    assert bob.sandbox_list()["sandboxes"] == []
    with pytest.raises(PermissionDenied):
        bob.sandbox_list(context={"user": "alice"})
    assert [s["sandbox_id"] for s in alice.sandbox_list()["sandboxes"]] == [sandbox]


def test_admins_see_and_operate_other_users_sandboxes(data_dir, provider):
    alice = SandboxManager(data_dir, provider=provider, user_id="alice")
    admin = SandboxManager(data_dir, provider=provider, user_id="ops", is_admin=True)
    sandbox = alice.sandbox_create("alice-box")["sandbox_id"]
    listed = admin.sandbox_list(context={"user": "alice"})["sandboxes"]
    assert [s["sandbox_id"] for s in listed] == [sandbox]
    assert admin.sandbox_run(sandbox, "bash", "echo admin")["stdout"] == "admin\n"
    assert admin.sandbox_stop(sandbox)["status"] == "stopped"


def test_nexus_user_environment_variable_sets_the_owner(nexus):
    sandbox = nexus("sandbox", "create", "mine", "--json", env={"NEXUS_USER": "carol"}).json()
    assert sandbox["user_id"] == "carol"
    assert nexus("sandbox", "list", "--json", env={"NEXUS_USER": "dave"}).json() == {"sandboxes": []}
    assert nexus("sandbox", "status", sandbox["sandbox_id"], env={"NEXUS_USER": "dave"}).returncode != 0
    nexus("sandbox", "stop", sandbox["sandbox_id"], env={"NEXUS_USER": "carol"})


def test_the_store_is_wal_mode_with_a_schema_version(data_dir, nx):
    if os.environ.get("NEXUS_DATABASE_URL"):
        pytest.skip("SQLite's own file (test_store.py covers PostgreSQL's schema)")
    nx.sandbox_list()
    conn = sqlite3.connect(data_dir / "nexus.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_store_from_the_previous_schema_is_upgraded_in_place_keeping_its_sandboxes(data_dir, provider):
    if os.environ.get("NEXUS_DATABASE_URL"):
        pytest.skip("SQLite's own file (test_store.py covers PostgreSQL's schema)")
    before = SandboxManager(data_dir, provider=provider)
    sandbox = before.sandbox_create("made-by-schema-1")["sandbox_id"]
    del before
    conn = sqlite3.connect(data_dir / "nexus.db")  # as nexus-jupyter 0.1 left it: no notebook column
    conn.execute("ALTER TABLE sandboxes DROP COLUMN notebook")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    after = SandboxManager(data_dir, provider=provider)
    assert after.sandbox_status(sandbox)["status"] == "active" and "notebook" not in after.sandbox_status(sandbox)
    assert after.sandbox_run(sandbox, "bash", "echo still here")["stdout"] == "still here\n"
    made = after.sandbox_create("made-by-a-notebook", notebook="/srv/notebooks/a.ipynb")
    assert after.sandbox_status(made["sandbox_id"])["notebook"] == "/srv/notebooks/a.ipynb"
    conn = sqlite3.connect(data_dir / "nexus.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    conn.close()
    after.sandbox_stop(sandbox)
    after.sandbox_stop(made["sandbox_id"])


def test_the_store_survives_restarts(data_dir, provider):
    first = SandboxManager(data_dir, provider=provider)
    sandbox = first.sandbox_create("durable")["sandbox_id"]
    first.sandbox_run(sandbox, "bash", "echo persisted > f")
    del first
    second = SandboxManager(data_dir, provider=provider)
    assert second.sandbox_run(sandbox, "bash", "cat f")["stdout"] == "persisted\n"


def test_a_failed_create_leaves_no_active_row_and_no_box(nx, monkeypatch):
    backend = nx.provider(nx.default_provider)

    def broken_create(spec):
        raise RuntimeError("engine exploded")

    monkeypatch.setattr(backend, "create", broken_create)
    with pytest.raises(RuntimeError):
        nx.sandbox_create("doomed")
    assert nx.sandbox_list()["sandboxes"] == []
    [row] = nx.sandbox_list(include_stopped=True)["sandboxes"]
    assert row["status"] == "stopped"
    assert row["sandbox_id"] not in backend.box_ids()


def test_a_provider_that_cannot_pause_says_so(data_dir, provider):
    from nexus_jupyter import ProviderNotSupported
    from nexus_jupyter.providers.base import Feature
    from nexus_jupyter.providers.local import LocalProvider

    class NoPauseProvider(LocalProvider):
        """The local provider as a cloud provider without pause would behave."""

        name = "nopause"
        display_name = "NoPause"
        features = LocalProvider.features - {Feature.PAUSE}

    nx = SandboxManager(data_dir, provider="nopause")
    nx._providers["nopause"] = NoPauseProvider(data_dir)
    sandbox = nx.sandbox_create("no-pause")["sandbox_id"]
    with pytest.raises(ProviderNotSupported, match=r"^NoPause doesn't support pause/resume\. Use stop"):
        nx.sandbox_pause(sandbox)
    assert nx.sandbox_status(sandbox)["status"] == "active"
    assert nx.sandbox_run(sandbox, "python", "print('still running')")["stdout"] == "still running\n"
    assert nx.sandbox_stop(sandbox)["status"] == "stopped"
