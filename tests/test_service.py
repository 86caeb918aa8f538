"""One long-lived service, the caller passed per call: what a server hosting many users relies on."""

from __future__ import annotations

import pytest

from nexus_jupyter import InvalidArgument, PermissionDenied, SandboxManager, SandboxNotFound
from nexus_jupyter.models import FileEntry, RunResult, Sandbox, SandboxStatus
from nexus_jupyter.service import Caller, SandboxService


@pytest.fixture
def service(data_dir, provider) -> SandboxService:
    return SandboxService(data_dir, default_provider=provider)


def test_one_service_serves_many_callers_each_seeing_only_their_own(service):
    alice, bob, admin = Caller("alice"), Caller("bob"), Caller("ops", is_admin=True)
    mine = service.create(alice, "alice-box")
    backend = service.provider(mine.provider)
    theirs = service.create(bob, "bob-box")
    assert isinstance(mine, Sandbox) and mine.status is SandboxStatus.ACTIVE and mine.user_id == "alice"
    assert service.provider(mine.provider) is backend  # providers (clients, pools) live with the service
    assert [s.sandbox_id for s in service.list_sandboxes(alice)] == [mine.sandbox_id]
    assert {s.sandbox_id for s in service.list_sandboxes(admin, {"user": "bob"})} == {theirs.sandbox_id}
    with pytest.raises(SandboxNotFound):
        service.run(bob, mine.sandbox_id, "python", "print('not yours')")
    with pytest.raises(SandboxNotFound):
        service.stop(bob, mine.sandbox_id)
    result = service.run(alice, mine.sandbox_id, "python", "x = 41\nx + 1")
    assert isinstance(result, RunResult) and result.exit_code == 0
    assert [r.data["text/plain"] for r in result.results if r.is_main_result] == ["42"]
    service.write_file(alice, mine.sandbox_id, "notes.txt", "hi")
    [entry] = [e for e in service.list_files(alice, mine.sandbox_id) if e.name == "notes.txt"]
    assert isinstance(entry, FileEntry) and entry.path == "/home/user/notes.txt" and entry.size == 2
    assert service.stop(admin, theirs.sandbox_id).status is SandboxStatus.STOPPED
    assert service.stop(alice, mine.sandbox_id).status is SandboxStatus.STOPPED


def test_a_manager_is_the_service_bound_to_one_caller_with_the_seeds_dicts(service, data_dir):
    alice = SandboxManager(service=service, user_id="alice")
    bob = SandboxManager(service=service, user_id="bob")
    assert alice.store is bob.store is service.store
    record = alice.sandbox_create("shared-service")
    again = service.status(Caller("alice"), record["sandbox_id"]).to_dict()
    assert {**record, "uptime_seconds": 0} == {**again, "uptime_seconds": 0}  # uptime counts on
    assert bob.sandbox_list()["sandboxes"] == []
    run = alice.sandbox_run(record["sandbox_id"], "python", "1/0")
    assert list(run) == ["stdout", "stderr", "exit_code", "execution_time", "results", "error"]
    assert run["error"]["name"] == "ZeroDivisionError"
    # a manager built the usual way, in another process's manner, sees the same sandbox
    assert SandboxManager(data_dir, user_id="alice").sandbox_status(record["sandbox_id"])["status"] == "active"
    alice.sandbox_stop(record["sandbox_id"])


@pytest.mark.parametrize("user", ["", "   ", None])
def test_a_caller_needs_a_user(user):
    with pytest.raises(InvalidArgument, match="a user id is required"):
        Caller(user)


def test_a_user_holds_at_most_max_sandboxes_per_user_even_when_creates_race(data_dir, provider):
    import concurrent.futures

    from nexus_jupyter import QuotaExceeded
    from nexus_jupyter.settings import Settings

    service = SandboxService(data_dir, default_provider=provider, settings=Settings(max_sandboxes_per_user=2))
    alice, bob = Caller("alice"), Caller("bob")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        attempts = [pool.submit(service.create, alice, f"race-{n}") for n in range(4)]
    made = [a.result() for a in attempts if a.exception() is None]
    refused = [a.exception() for a in attempts if a.exception() is not None]
    assert len(made) == 2 and len(refused) == 2
    assert all(isinstance(e, QuotaExceeded) for e in refused)
    assert str(refused[0]) == (
        "alice already has 2 live sandboxes, the most a user may hold (max_sandboxes_per_user): stop one first"
    )
    assert len(service.list_sandboxes(alice, include_stopped=True)) == 2  # a refused create leaves no row
    assert service.create(bob, "bobs").user_id == "bob"  # per user
    service.stop(alice, made[0].sandbox_id)
    assert service.create(alice, "after-a-stop").status is SandboxStatus.ACTIVE


def test_a_sandbox_remembers_the_notebook_it_was_made_for_and_why_it_stopped(service):
    alice, admin = Caller("alice"), Caller("ops", is_admin=True)
    made = service.create(alice, "from-a-notebook", notebook="/home/alice/work/analysis.ipynb")
    other = service.create(alice, "from-the-cli")
    assert made.to_dict()["notebook"] == "/home/alice/work/analysis.ipynb"
    assert "notebook" not in other.to_dict() and len(other.to_dict()) == 15  # the seed's record, unchanged
    found = service.list_sandboxes(alice, {"notebook": "/home/alice/work/analysis.ipynb"})
    assert [s.sandbox_id for s in found] == [made.sandbox_id]
    assert [s.sandbox_id for s in service.list_sandboxes(admin, {"all_users": True})] == [
        made.sandbox_id,
        other.sandbox_id,
    ]
    with pytest.raises(PermissionDenied):
        service.list_sandboxes(alice, {"all_users": True})
    # a notebook's kernel names one sandbox of its user at a time, whatever anyone else names
    kernel = "0f6c2a0e-4d4b-4e0b-9a8e-3d1c2b4a5f60"
    mallory = service.create(Caller("mallory"), "mallorys")
    service.attach(Caller("mallory"), mallory.sandbox_id, kernel, "/home/alice/work/analysis.ipynb")
    service.attach(alice, made.sandbox_id, kernel, "/home/alice/work/analysis.ipynb")
    assert service.status(alice, made.sandbox_id).kernel_id == kernel
    service.attach(alice, other.sandbox_id, kernel, "/home/alice/work/renamed.ipynb")  # %sandbox use
    assert service.status(alice, made.sandbox_id).kernel_id is None
    assert [s.sandbox_id for s in service.list_sandboxes(alice, {"kernel_id": kernel})] == [other.sandbox_id]
    assert service.status(alice, other.sandbox_id).notebook == "/home/alice/work/renamed.ipynb"
    assert service.status(Caller("mallory"), mallory.sandbox_id).kernel_id == kernel  # not alice's to clear
    with pytest.raises(SandboxNotFound):
        service.attach(alice, mallory.sandbox_id, kernel)  # nor hers to take
    service.stop(Caller("mallory"), mallory.sandbox_id)
    stopped = service.stop(alice, made.sandbox_id)
    assert stopped.stop_reason == "stopped" and "stop_reason" not in stopped.to_dict()
    service.stop(alice, other.sandbox_id)
    with pytest.raises(InvalidArgument, match="notebook"):
        service.create(alice, "bad", notebook="x\0y")
