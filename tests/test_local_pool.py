"""The local provider's warm pool: boxes started ahead with their Python runtime warm,
handed out by create, refilled by a detached process, never handed out twice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import process_status, processes_of_uid
from nexus_jupyter import SandboxManager


@pytest.fixture
def pooled(data_dir, monkeypatch):
    """A manager whose local provider keeps one warm box (the default outside the test suite)."""
    monkeypatch.setenv("NEXUS_LOCAL_POOL_SIZE", "1")
    nx = SandboxManager(data_dir, provider="local")
    backend = nx.provider("local")
    backend.pool.fill(1)
    return nx, backend


def wait_for_slots(backend, count: int) -> list[str]:
    deadline = time.monotonic() + 60
    while len(backend.pool.slots()) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    slots = backend.pool.slots()
    assert len(slots) == count, (
        slots,
        (backend.root / "pool.log").read_text() if (backend.root / "pool.log").exists() else "",
    )
    return slots


def group_pids(backend, group: str) -> set[int]:
    return set(backend.cgroups.pids(group))


def shell_pid(backend, group: str) -> int:
    """The host pid of the box's Python shell (the runtime's interpreter), once it runs."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for pid in group_pids(backend, group):
            try:
                if b"python_shell" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError("the pool box's Python runtime never started")


def alive(pid: int) -> bool:
    status = process_status(pid)
    return status is not None and not status["State"].startswith("Z")


def memory_limit(backend, group: str) -> int:
    cgroups = backend.cgroups
    name = "memory.max" if cgroups.version == 2 else "memory.limit_in_bytes"
    return int((cgroups._dir("memory", group) / name).read_text())


def cpu_weight(backend, group: str) -> int:
    cgroups = backend.cgroups
    name = "cpu.weight" if cgroups.version == 2 else "cpu.shares"
    return int((cgroups._dir("cpu", group) / name).read_text())


def test_a_create_takes_a_warm_box_and_the_pool_refills(pooled):
    nx, backend = pooled
    [slot] = backend.pool.slots()
    shell = shell_pid(backend, slot)  # the runtime started with the pool box, before any create
    assert cpu_weight(backend, slot) <= 2  # a waiting pool box yields the CPU to sandboxes at work
    record = nx.sandbox_create("warm", ttl_minutes=7, memory_mb=2048, max_processes=64)
    sandbox = record["sandbox_id"]
    state = nx.store.get(sandbox)["provider_state"]
    assert state["pool_slot"] == slot and state["cgroup"] == slot
    assert Path(state["dir"]) == backend.box_dir(sandbox) and not backend.box_dir(slot).exists()
    # reshaped to what the create asked
    assert memory_limit(backend, slot) == 2048 << 20
    assert (backend.cgroups._dir("pids", slot) / "pids.max").read_text().strip() == "64"
    assert cpu_weight(backend, slot) in (100, 1024)  # a sandbox's own share again
    assert nx.sandbox_run(sandbox, "bash", "echo $HOME")["stdout"] == "/home/user\n"
    # the warm runtime ran the first cell: no interpreter was started for it
    result = nx.sandbox_run(sandbox, "python", "import os; print(2 + 2, os.environ['HOME'])")
    assert result["stdout"] == "4 /home/user\n"
    # its metrics count from the claim, not from the pool's wait (the runtime's start and warm-up)
    assert nx.sandbox_metrics(sandbox)["cpu_seconds"] < 0.5
    assert alive(shell) and shell in group_pids(backend, slot)
    # a new warm box replaces it, started by a detached process
    [refill] = wait_for_slots(backend, 1)
    assert refill != slot
    # pool boxes are neither sandboxes nor orphans; the claimed one is a sandbox like any other
    assert not any(box.startswith("pool-") for box in backend.box_ids())
    report = nx.reap()
    assert report["orphans"] == [] and report["pruned"] == []
    assert nx.sandbox_status(sandbox)["status"] == "active"
    assert [row["sandbox_id"] for row in nx.sandbox_list(verify_status=True)["sandboxes"]] == [sandbox]
    nx.sandbox_stop(sandbox)
    assert not alive(shell)
    assert not backend.cgroups.exists(slot) and not backend.box_dir(sandbox).exists()


def test_a_pool_box_never_carries_a_previous_sandboxs_state(pooled):
    nx, backend = pooled
    first = nx.sandbox_create("first")["sandbox_id"]
    nx.sandbox_run(first, "python", "secret = 'kept in the runtime'; open('/home/user/left.txt', 'w').write('x')")
    nx.sandbox_run(first, "bash", "sleep 1000 >/dev/null 2>&1 &")
    first_state = nx.store.get(first)["provider_state"]
    nx.sandbox_stop(first)
    wait_for_slots(backend, 1)
    second = nx.sandbox_create("second")["sandbox_id"]
    second_state = nx.store.get(second)["provider_state"]
    assert second_state["pool_slot"] != first_state["pool_slot"]
    assert second_state["host_uid"] != first_state["host_uid"]  # each box its own host uid
    code = "import os; print('secret' in globals(), os.path.exists('/home/user/left.txt'))"
    assert nx.sandbox_run(second, "python", code)["stdout"] == "False False\n"
    assert "sleep 1000" not in nx.sandbox_run(second, "bash", "ps -eo args")["stdout"]


def test_creates_the_pool_cannot_serve_start_cold_and_leave_it_alone(pooled):
    nx, backend = pooled
    [slot] = backend.pool.slots()
    small = nx.sandbox_create("small", memory_mb=256)["sandbox_id"]  # its disk: 128 MiB, not the pool's 512
    other_disk = nx.sandbox_create("disk", disk_mb=100)["sandbox_id"]
    # variables like PYTHONPATH act when an interpreter starts: the pool's started before the claim
    with_env = nx.sandbox_create("env", env={"PYTHONPATH": "/home/user/lib"})["sandbox_id"]
    assert "/home/user/lib" in nx.sandbox_run(with_env, "python", "import sys; print(sys.path)")["stdout"]
    for sandbox in (small, other_disk, with_env):
        assert "pool_slot" not in nx.store.get(sandbox)["provider_state"]
    assert backend.pool.slots() == [slot]
    assert nx.sandbox_run(small, "python", "print('cold')")["stdout"] == "cold\n"


def test_an_ended_pool_box_is_never_handed_out_and_is_pruned(pooled):
    nx, backend = pooled
    [slot] = backend.pool.slots()
    backend.cgroups.kill(slot)  # as when its agent's idle time runs out
    sandbox = nx.sandbox_create("after-an-ended-one")["sandbox_id"]
    assert nx.store.get(sandbox)["provider_state"].get("pool_slot") is None
    assert not backend.box_dir(slot).exists() and not backend.cgroups.exists(slot)
    assert nx.sandbox_run(sandbox, "python", "print('ok')")["stdout"] == "ok\n"
    # and reap prunes one that ended while nobody created
    [refill] = wait_for_slots(backend, 1)
    backend.cgroups.kill(refill)
    assert nx.reap()["pruned"] == [refill]
    assert not backend.box_dir(refill).exists() and not backend.cgroups.exists(refill)


def test_two_processes_creating_at_once_get_different_warm_boxes(pooled, data_dir):
    nx, backend = pooled
    backend.pool.fill(2)
    slots = set(wait_for_slots(backend, 2))
    env = {**os.environ, "NEXUS_DATA_DIR": str(data_dir), "NEXUS_LOCAL_POOL_SIZE": "2"}
    creates = [
        subprocess.Popen(
            [sys.executable, "-m", "nexus_jupyter", "sandbox", "create", f"racer-{n}", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in range(2)
    ]
    made = []
    for create in creates:
        out, err = create.communicate(timeout=120)
        assert create.returncode == 0, err
        made.append(json.loads(out)["sandbox_id"])
    claimed = {nx.store.get(sandbox)["provider_state"]["pool_slot"] for sandbox in made}
    assert claimed == slots
    for sandbox in made:
        assert nx.sandbox_run(sandbox, "python", "print('mine')")["stdout"] == "mine\n"


def test_the_cli_alone_keeps_the_pool_warm(nexus, data_dir, monkeypatch):
    # Each CLI call is a process that exits at once: the refill must outlive it.
    monkeypatch.setenv("NEXUS_LOCAL_POOL_SIZE", "1")
    first = nexus("sandbox", "create", "first", "--json")
    assert first.returncode == 0, first.stderr
    backend = SandboxManager(data_dir).provider("local")
    [slot] = wait_for_slots(backend, 1)
    second = nexus("sandbox", "create", "second", "--json")
    assert second.returncode == 0, second.stderr
    sandbox = second.json()["sandbox_id"]
    assert SandboxManager(data_dir).store.get(sandbox)["provider_state"]["pool_slot"] == slot
    run = nexus("sandbox", "run", sandbox, "-c", "print(2 + 2)")
    assert (run.returncode, run.stdout) == (0, "4\n")


def test_drain_leaves_no_box_group_or_process(pooled):
    _, backend = pooled
    [slot] = backend.pool.slots()
    shell = shell_pid(backend, slot)
    state = json.loads((backend.box_dir(slot) / "pool.json").read_text())
    assert backend.pool.drain() == [slot]
    assert backend.pool.slots() == [] and not backend.box_dir(slot).exists()
    assert not backend.cgroups.exists(slot)
    assert not alive(shell)
    assert processes_of_uid(state["host_uid"]) == []


@pytest.mark.parametrize("value", ["-1", "many", "65"])
def test_a_bad_pool_size_is_one_clear_line(nexus, value):
    result = nexus("sandbox", "create", "x", env={"NEXUS_LOCAL_POOL_SIZE": value})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"Error: NEXUS_LOCAL_POOL_SIZE must be a whole number from 0 (no pool) to 64, not {value!r}"
    ]
    assert "Traceback" not in result.stderr


def test_a_pool_box_made_otherwise_or_tampered_with_is_never_claimed(pooled):
    nx, backend = pooled
    [slot] = backend.pool.slots()
    record = backend.box_dir(slot) / "pool.json"
    state = json.loads(record.read_text())
    # made by another Python, venv or version of the package: left alone
    record.write_text(json.dumps({**state, "made_of": "another python"}))
    first = nx.sandbox_create("not-that-one")["sandbox_id"]
    assert "pool_slot" not in nx.store.get(first)["provider_state"]
    # a record naming a group that is not its own: never claimed, never acted on
    record.write_text(json.dumps({**state, "cgroup": "../../../system.slice"}))
    second = nx.sandbox_create("nor-that-one")["sandbox_id"]
    assert "pool_slot" not in nx.store.get(second)["provider_state"]
    assert backend._group(slot, {}) == slot
    assert backend._group("sb_whatever", {"cgroup": "../../x"}) == "sb_whatever"
    assert backend.pool.drain() == [slot]
    assert not backend.cgroups.exists(slot) and not backend.box_dir(slot).exists()


def test_a_claimed_box_whose_directory_went_is_still_found_and_ended(pooled, tmp_path):
    # As when a stop's kill timed out and its directory was removed anyway: the box's
    # processes run on in the group it kept from its slot, which nothing else names.
    nx, backend = pooled
    sandbox = nx.sandbox_create("lost")["sandbox_id"]
    group = nx.store.get(sandbox)["provider_state"]["cgroup"]
    shell = shell_pid(backend, group)
    moved = tmp_path / "moved-away"
    os.rename(backend.box_dir(sandbox), moved)  # gone from the store's boxes, still running
    nx.store.update(sandbox, {"status": "stopped"})
    try:
        # Any prune ends it: the reaper's, or the refill's own (the create started one).
        deadline = time.monotonic() + 60
        while backend.cgroups.exists(group) and time.monotonic() < deadline:
            nx.reap()
            time.sleep(0.2)
        assert not alive(shell) and not backend.cgroups.exists(group)
        wait_for_slots(backend, 1)  # the pool's own box is kept
    finally:
        subprocess.run(["umount", "-l", str(moved / "fs")], check=False)
        shutil.rmtree(moved, ignore_errors=True)
