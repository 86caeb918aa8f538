"""What only the local provider has: a network helper of its own (slirp4netns), and
interpreters wherever they live."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nexus_jupyter import SandboxManager


def test_the_network_helper_ends_with_the_box(nx):
    sandbox = nx.sandbox_create("online", allow_internet_access=True)["sandbox_id"]
    box = Path(nx.store.get(sandbox)["provider_state"]["dir"])
    slirp = int((box / "net.pid").read_text())
    assert b"slirp4netns" in Path(f"/proc/{slirp}/cmdline").read_bytes()
    nx.sandbox_stop(sandbox)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{slirp}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{slirp}").exists() or b"slirp4netns" not in Path(f"/proc/{slirp}/cmdline").read_bytes()


def test_a_python_environment_under_tmp_runs_in_the_box(tmp_path_factory, data_dir):
    # CI runners and throwaway venvs live in /tmp, which a box mounts a tmpfs of its own over.
    venv = Path(f"/tmp/nexus-venv-{secrets.token_hex(4)}")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
        python = str(venv / "bin" / "python")
        env = {**os.environ, "NEXUS_DATA_DIR": str(data_dir)}

        def nexus(*args):
            return subprocess.run([python, "-m", "nexus_jupyter", *args], capture_output=True, text=True, env=env)

        created = nexus("sandbox", "create", "venv-in-tmp", "--json")
        assert created.returncode == 0, created
        sandbox = created.stdout.split('"sandbox_id": "')[1].split('"')[0]
        run = nexus("sandbox", "run", sandbox, "-c", "import sys; print(sys.prefix)", "--fresh")
        assert (run.returncode, run.stdout) == (0, f"{venv}\n"), run
        assert nexus("sandbox", "run", sandbox, "-c", "x = 6 * 7\nprint(x)").stdout == "42\n"
    finally:
        SandboxManager(data_dir, is_admin=True).reap()
        shutil.rmtree(venv, ignore_errors=True)


def test_without_slirp4netns_an_online_box_is_refused_with_install_advice(nexus, tmp_path, data_dir):
    # A PATH with everything a box needs but the network helper.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sh", "env", "setsid", "bwrap", "node", "bash", "nsenter", "ip", "unshare", "setpriv", "mount"):
        found = shutil.which(name)
        if found:
            (bin_dir / name).symlink_to(found)
    result = nexus("sandbox", "create", "online", "--allow-internet", env={"PATH": str(bin_dir)})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: slirp4netns not found: install slirp4netns ('apt-get install slirp4netns') "
        "to give local sandboxes internet access"
    )
    assert SandboxManager(data_dir).sandbox_list()["sandboxes"] == []
    assert SandboxManager(data_dir).provider("local").box_ids() == set()  # nothing left behind
