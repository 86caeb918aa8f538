"""What only the local provider has: internet through the box's own network namespace, and
interpreters wherever they live."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nexus_jupyter import SandboxManager
from nexus_jupyter.providers.network import host_networks

ATTEMPT = """
import socket
for family, address in {targets!r}:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(3)
    try:
        sock.connect(address if family == socket.AF_INET else address.encode())
        print('REACHED', address)
    except OSError as exc:
        print('refused', address)
    finally:
        sock.close()
"""


def test_an_allowed_network_is_the_boxs_own_not_the_hosts(nx):
    listeners = []
    targets = []
    # services of this machine: on its loopback, on its own addresses, on an abstract Unix socket
    loopback = socket.create_server(("127.0.0.1", 0))
    listeners.append(loopback)
    targets.append((socket.AF_INET, ("127.0.0.1", loopback.getsockname()[1])))
    targets.append((socket.AF_INET, ("10.0.2.2", loopback.getsockname()[1])))  # slirp's gateway = host loopback?
    for network in host_networks():
        if network.endswith("/32"):
            server = socket.create_server((network[:-3], 0))
            listeners.append(server)
            targets.append((socket.AF_INET, (network[:-3], server.getsockname()[1])))
    abstract = socket.socket(socket.AF_UNIX)
    name = f"\0nexus-test-{secrets.token_hex(4)}"
    abstract.bind(name)
    abstract.listen()
    listeners.append(abstract)
    targets.append((socket.AF_UNIX, name))
    targets.append((socket.AF_INET, ("169.254.169.254", 80)))  # a cloud's metadata service
    try:
        sandbox = nx.sandbox_create("online", allow_internet_access=True)["sandbox_id"]
        plain = [(int(family), address) for family, address in targets]
        result = nx.sandbox_run(sandbox, "python", ATTEMPT.format(targets=plain), fresh=True, timeout=60)
        assert "REACHED" not in result["stdout"], result
        assert result["stdout"].count("refused") == len(targets) >= 5
    finally:
        for listener in listeners:
            listener.close()


@pytest.fixture
def test_host():
    """A host of our own beyond this machine: a network namespace behind a veth pair, reached
    through a route, serving one TCP port on 198.51.100.77 (a documentation address)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("a test host needs root and iproute2 (CI has both)")
    tag = secrets.token_hex(3)
    namespace, host_end, far_end = f"nexus-th-{tag}", f"nxh{tag}", f"nxp{tag}"
    setup = [
        ["ip", "netns", "add", namespace],
        ["ip", "link", "add", host_end, "type", "veth", "peer", "name", far_end],
        ["ip", "link", "set", far_end, "netns", namespace],
        ["ip", "addr", "add", "198.51.100.1/30", "dev", host_end],
        ["ip", "link", "set", host_end, "up"],
        ["ip", "netns", "exec", namespace, "ip", "addr", "add", "198.51.100.2/30", "dev", far_end],
        ["ip", "netns", "exec", namespace, "ip", "link", "set", far_end, "up"],
        ["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"],
        ["ip", "netns", "exec", namespace, "ip", "addr", "add", "198.51.100.77/32", "dev", "lo"],
        ["ip", "route", "add", "198.51.100.77/32", "via", "198.51.100.2"],
    ]
    server = None
    try:
        for command in setup:
            subprocess.run(command, check=True, capture_output=True)
        serve = (
            "import socket\n"
            "server = socket.create_server(('198.51.100.77', 8080))\n"
            "print('up', flush=True)\n"
            "while True:\n"
            "    conn, _ = server.accept()\n"
            "    conn.sendall(b'hello from the test host')\n"
            "    conn.close()\n"
        )
        server = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", serve], stdout=subprocess.PIPE, text=True
        )
        assert server.stdout.readline() == "up\n"
        yield ("198.51.100.77", 8080)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "route", "del", "198.51.100.77/32"], capture_output=True)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def test_an_allowed_network_reaches_hosts_beyond_this_machine(nx, test_host):
    online = nx.sandbox_create("online", allow_internet_access=True)["sandbox_id"]
    offline = nx.sandbox_create("offline")["sandbox_id"]
    fetch = f"import socket\nprint(socket.create_connection({test_host!r}, timeout=5).recv(100).decode())"
    assert nx.sandbox_run(online, "python", fetch)["stdout"] == "hello from the test host\n"
    result = nx.sandbox_run(offline, "python", fetch)
    assert result["error"]["name"] == "OSError" and "unreachable" in result["error"]["value"]


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
