"""The local provider where isolation tools are missing: it degrades visibly or refuses.

Without cgroups (NEXUS_LOCAL_CGROUPS=off stands in for a machine that has
none) limits fall back to rlimits and pause to SIGSTOP, with a warning.
Without bubblewrap nothing runs at all.
"""

from __future__ import annotations

import itertools
import os
import threading
import time

import pytest

from conftest import host_processes_matching, processes_of_uid
from nexus_jupyter import ProviderUnavailable, SandboxManager, SandboxTimeout


@pytest.fixture
def degraded(data_dir, monkeypatch) -> SandboxManager:
    monkeypatch.setenv("NEXUS_LOCAL_CGROUPS", "off")
    return SandboxManager(data_dir, provider="local")


def test_without_cgroups_create_warns_and_everything_still_works(degraded, nexus):
    result = nexus("sandbox", "create", "degraded", "--json", env={"NEXUS_LOCAL_CGROUPS": "off"})
    assert result.returncode == 0, result
    assert "Warning: cgroups unavailable" in result.stderr
    sandbox = result.json()["sandbox_id"]
    for language, code, expected in [
        ("python", "print(6*7)", "42\n"),
        ("javascript", "console.log(6*7)", "42\n"),
        ("bash", "echo $((6*7))", "42\n"),
    ]:
        assert degraded.sandbox_run(sandbox, language, code)["stdout"] == expected


def test_without_cgroups_timeout_still_kills_the_tree(degraded):
    sandbox = degraded.sandbox_create("degraded")["sandbox_id"]
    marker = f"nexus_degraded_{time.time_ns()}"
    with pytest.raises(SandboxTimeout):
        degraded.sandbox_run(sandbox, "bash", f"setsid bash -c 'exec -a {marker} sleep 1000' &\nsleep 1000", timeout=1)
    time.sleep(0.2)
    assert host_processes_matching(marker) == []


def test_without_cgroups_memory_is_limited_per_process(degraded):
    sandbox = degraded.sandbox_create("degraded", memory_mb=256)["sandbox_id"]
    result = degraded.sandbox_run(sandbox, "python", "x = bytearray(512 * 1024 * 1024)", fresh=True)
    assert result["exit_code"] != 0 and "MemoryError" in result["stderr"]
    assert degraded.sandbox_run(sandbox, "python", "print('fine')", fresh=True)["stdout"] == "fine\n"


def test_without_cgroups_the_kernel_is_limited_too(degraded):
    sandbox = degraded.sandbox_create("degraded")["sandbox_id"]  # 1 GiB
    degraded.sandbox_run(sandbox, "python", "kept = 1")
    result = degraded.sandbox_run(sandbox, "python", "x = bytearray(2 * 1024 ** 3)")
    assert result["error"]["name"] == "MemoryError"
    assert degraded.sandbox_run(sandbox, "python", "print(kept)")["stdout"] == "1\n"  # the kernel lived on


def test_without_cgroups_pause_stops_and_resume_continues(degraded):
    sandbox = degraded.sandbox_create("degraded")["sandbox_id"]
    code = "import time\nfor i in range(6):\n    print(time.time(), flush=True)\n    time.sleep(0.25)\n"
    outcome = {}
    printing = threading.Event()
    runner = threading.Thread(
        target=lambda: outcome.update(degraded.sandbox_run(sandbox, "python", code, on_stdout=lambda _: printing.set()))
    )
    runner.start()
    assert printing.wait(60)
    time.sleep(0.3)
    degraded.sandbox_pause(sandbox)
    assert degraded.sandbox_list(verify_status=True)["sandboxes"][0]["provider_status"] == "paused"
    time.sleep(1.5)
    degraded.sandbox_resume(sandbox)
    runner.join(30)
    stamps = [float(line) for line in outcome["stdout"].split()]
    assert max(b - a for a, b in itertools.pairwise(stamps)) >= 1.3


def test_without_cgroups_stop_kills_every_process(degraded):
    record = degraded.sandbox_create("degraded")
    sandbox = record["sandbox_id"]
    degraded.sandbox_run(sandbox, "bash", "sleep 1000 &\nsetsid sleep 1000 &\necho warm", timeout=5)
    degraded.sandbox_run(sandbox, "python", "kept = 1")  # a kernel, too
    box_dir = degraded.provider("local").box_dir(sandbox)
    uid = degraded.store.get(sandbox)["provider_state"]["host_uid"]
    assert len(processes_of_uid(uid)) >= 3  # every process of the box runs as its own uid
    degraded.sandbox_stop(sandbox)
    time.sleep(0.2)
    assert processes_of_uid(uid) == []
    assert not box_dir.exists()


def test_without_bubblewrap_the_local_provider_refuses_with_install_advice(nexus, tmp_path, data_dir):
    # A PATH with everything but bwrap.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sh", "setsid", "node", "bash"):
        for directory in ("/usr/bin", "/bin"):
            if os.path.exists(f"{directory}/{name}"):
                (bin_dir / name).symlink_to(f"{directory}/{name}")
                break
    result = nexus("sandbox", "create", "no-bwrap", env={"PATH": str(bin_dir)})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "Error: bubblewrap (bwrap) is not installed, and the local provider never runs code unisolated: "
        "install bubblewrap with 'apt-get install bubblewrap' (Debian/Ubuntu) or 'dnf install bubblewrap' (Fedora) "
        "(as root, util-linux's unshare, setpriv, mount and pivot_root also do)"
    ]
    nx = SandboxManager(data_dir)
    assert nx.sandbox_list()["sandboxes"] == []


def test_without_bubblewrap_the_api_raises_provider_unavailable(data_dir, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ProviderUnavailable, match="apt-get install bubblewrap"):
        SandboxManager(data_dir).sandbox_create("no-bwrap")
