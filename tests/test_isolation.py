"""Attacks on a sandbox: each test tries what untrusted code must not be able to do.

Runs once per provider in NEXUS_TEST_PROVIDERS, like test_conformance.py.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import host_processes_matching
from nexus_jupyter import SandboxManager, SandboxTimeout
from nexus_jupyter.providers.network import host_networks


def run(nx, sandbox, code, language="python", timeout=30):
    return nx.sandbox_run(sandbox, language, code, timeout=timeout)


def test_host_files_are_not_readable(nx, sandbox, data_dir):
    secret = data_dir.parent / "host-secret.txt"
    secret.write_text("top secret")
    code = f"""
import os
for path in [{str(secret)!r}, {str(data_dir / "nexus.db")!r}, '/etc/shadow', '/root/.bashrc',
             '/root/.ssh', {os.path.expanduser("~")!r} + '/.bash_history', '/work', '/home/user/../../etc/shadow']:
    try:
        open(path).read()
        print('READ', path)
    except OSError as exc:
        print('denied', path, type(exc).__name__)
print(sorted(os.listdir('/home')))
"""
    result = run(nx, sandbox, code)
    assert "READ" not in result["stdout"], result
    assert result["stdout"].count("denied") == 8
    assert result["stdout"].splitlines()[-1] == "['user']"


def test_the_hosts_environment_and_paths_are_not_visible(data_dir, provider, monkeypatch):
    # The creating process holds a secret in its environment, as a notebook kernel may.
    monkeypatch.setenv("NEXUS_TEST_SECRET", "hunter2")
    nx = SandboxManager(data_dir, provider=provider)
    sandbox = nx.sandbox_create("env")["sandbox_id"]
    code = f"""
import glob
found = []
for path in glob.glob('/proc/[0-9]*/environ') + glob.glob('/proc/[0-9]*/cmdline'):
    try:
        found.append(open(path, 'rb').read().decode(errors='replace'))
    except OSError:
        pass
text = '\\n'.join(found)
print('hunter2' in text, 'NEXUS_TEST_SECRET' in text, {str(data_dir)!r} in text)
"""
    assert run(nx, sandbox, code)["stdout"] == "False False False\n"


def test_writes_land_only_in_the_sandbox(nx, sandbox):
    code = """
for path in ['/usr/evil', '/etc/evil', '/evil', '/opt/nexus/agent.py', '/root/evil']:
    try:
        open(path, 'w').write('x')
        print('WROTE', path)
    except OSError as exc:
        print('denied', path)
open('/home/user/fine.txt', 'w').write('ok')
open('/tmp/fine.txt', 'w').write('ok')
print('home and tmp writable')
"""
    result = run(nx, sandbox, code)
    assert "WROTE" not in result["stdout"], result
    assert result["stdout"].count("denied") == 5
    assert "home and tmp writable" in result["stdout"]


def test_no_network_by_default(nx, sandbox):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        code = f"""
import socket
for host, port in [('127.0.0.1', {port}), ('1.1.1.1', 80), ('8.8.8.8', 53)]:
    try:
        socket.create_connection((host, port), timeout=2).close()
        print('CONNECTED', host)
    except OSError as exc:
        print('blocked', host)
"""
        result = run(nx, sandbox, code)
        assert "CONNECTED" not in result["stdout"], result
        assert result["stdout"].count("blocked") == 3
    finally:
        listener.close()


def test_allow_internet_access_opts_in_to_the_network(nx):
    # A default route exists only where a network is attached: checked without sending traffic.
    code = "print(any(line.split()[1] == '00000000' for line in open('/proc/net/route').readlines()[1:]))"
    online = nx.sandbox_create("online", allow_internet_access=True)["sandbox_id"]
    offline = nx.sandbox_create("offline")["sandbox_id"]
    assert run(nx, online, code)["stdout"] == "True\n"
    assert run(nx, offline, code)["stdout"] == "False\n"


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
    reached = nx.sandbox_run(online, "python", fetch)
    assert reached["stdout"] == "hello from the test host\n", reached  # (the error, if any: seen once in CI)
    result = nx.sandbox_run(offline, "python", fetch)
    assert result["error"]["name"] == "OSError" and "unreachable" in result["error"]["value"]


def test_host_processes_are_invisible(nx, sandbox):
    code = f"""
import os
pids = [int(p) for p in os.listdir('/proc') if p.isdigit()]
print(len(pids) < 20)
try:
    os.kill({os.getpid()}, 0)
    print('HOST PID VISIBLE')
except ProcessLookupError:
    print('host pid invisible')
"""
    result = run(nx, sandbox, code)
    assert result["stdout"] == "True\nhost pid invisible\n", result


def test_code_runs_unprivileged_and_cannot_regain_privileges(nx, sandbox):
    code = """
import os, subprocess
status = dict(line.split(':', 1) for line in open('/proc/self/status'))
print(os.getuid() != 0, int(status['CapEff'], 16), int(status['CapBnd'], 16))
print(subprocess.run(['mount', '-t', 'tmpfs', 'x', '/tmp'], capture_output=True).returncode != 0)
print(subprocess.run(['unshare', '-U', 'true'], capture_output=True).returncode != 0)
"""
    not_root, mount_refused, userns_refused = run(nx, sandbox, code)["stdout"].splitlines()
    assert not_root == "True 0 0"  # no capabilities, and none to be had back
    assert mount_refused == "True"
    if nx.store.get(sandbox)["provider_state"].get("isolation") == "bwrap":
        # bubblewrap also forbids nested user namespaces; the unshare fallback cannot (see README)
        assert userns_refused == "True"


def test_timeout_kills_the_whole_process_tree(nx, sandbox):
    marker = f"nexus_orphan_{time.time_ns()}"
    # exec -a tags each process's command line so the host can look for it
    code = f"""
bash -c 'exec -a {marker}-child sleep 1000' &
setsid bash -c 'exec -a {marker}-setsid sleep 1000' &
( bash -c 'exec -a {marker}-double-fork sleep 1000' & ) &
echo started
sleep 1000
"""
    with pytest.raises(SandboxTimeout):
        run(nx, sandbox, code, language="bash", timeout=2)
    time.sleep(0.2)
    assert host_processes_matching(marker) == []
    assert run(nx, sandbox, "print('ok')")["stdout"] == "ok\n"


def test_background_processes_do_not_outlive_their_run(nx, sandbox):
    marker = f"nexus_bg_{time.time_ns()}"
    result = run(nx, sandbox, f"bash -c 'exec -a {marker} sleep 1000' &\necho done", language="bash")
    assert result["stdout"] == "done\n"
    time.sleep(0.2)
    assert host_processes_matching(marker) == []


@pytest.mark.slow
def test_memory_bomb_ends_cleanly(nx, sandbox):
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 * 1024))\n"
    result = run(nx, sandbox, code, timeout=60)
    assert result["exit_code"] != 0
    assert "out of memory" in result["stderr"] or "MemoryError" in result["stderr"], result
    assert run(nx, sandbox, "print('survived')")["stdout"] == "survived\n"


@pytest.mark.slow
def test_fork_bomb_ends_cleanly(nx, sandbox):
    with pytest.raises(SandboxTimeout):
        run(nx, sandbox, ":(){ :|:& };:\nsleep 30", language="bash", timeout=5)
    result = run(nx, sandbox, "import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]) < 20)")
    assert result["stdout"] == "True\n"
    # and the host can still start processes
    assert os.system("true") == 0


def test_process_count_is_limited(nx, sandbox):
    code = """
import subprocess
procs = []
try:
    for _ in range(400):
        procs.append(subprocess.Popen(['sleep', '30']))
    print('started all', len(procs))
except (OSError, BlockingIOError) as exc:
    print('limited at', len(procs))
for p in procs:
    p.kill()
"""
    result = run(nx, sandbox, code, timeout=60)
    assert result["stdout"].startswith("limited at"), result
    assert int(result["stdout"].split()[-1]) <= 256


@pytest.mark.slow
def test_output_flood_is_capped_with_a_visible_marker(nx, sandbox):
    code = "import sys\nchunk = 'y' * 65536\nfor _ in range(200 * 16):\n    sys.stdout.write(chunk)\n"
    result = run(nx, sandbox, code, timeout=120)
    assert result["exit_code"] == 0
    assert len(result["stdout"]) < (1 << 20) + 500
    assert "[nexus: stdout truncated" in result["stdout"]
    assert run(nx, sandbox, "print('ok')")["stdout"] == "ok\n"


def test_disk_fill_is_bounded(nx):
    record = nx.sandbox_create("disk", disk_mb=32)
    sandbox = record["sandbox_id"]
    try:
        result = run(nx, sandbox, "head -c 100M /dev/zero > big; echo rc=$?; du -m big | cut -f1", language="bash")
        assert "rc=1" in result["stdout"], result
        assert int(result["stdout"].split()[-1]) <= 32
        assert "No space left" in result["stderr"] or "File too large" in result["stderr"]
        assert run(nx, sandbox, "rm big && echo ok > small && cat small", language="bash")["stdout"] == "ok\n"
    finally:
        nx.sandbox_stop(sandbox)


def test_cpu_is_limited_to_the_sandbox_share(nx):
    record = nx.sandbox_create("cpu", cpus=0.5)
    sandbox = record["sandbox_id"]
    code = """
import os, time, multiprocessing
def spin(seconds):
    end = time.time() + seconds
    while time.time() < end:
        pass
start = time.time()
procs = [multiprocessing.Process(target=spin, args=(1.5,)) for _ in range(2)]
[p.start() for p in procs]
[p.join() for p in procs]
print(os.times().children_user + os.times().children_system, time.time() - start)
"""
    try:
        cpu, wall = map(float, run(nx, sandbox, code, timeout=60)["stdout"].split())
        # two spinning processes get half a core between them, not two cores
        assert cpu < 0.75 * wall, (cpu, wall)
    finally:
        nx.sandbox_stop(sandbox)


def test_cpu_spin_ends_at_the_timeout(nx, sandbox):
    started = time.monotonic()
    with pytest.raises(SandboxTimeout, match="exceeded 2 second"):
        run(nx, sandbox, "while True:\n    pass\n", timeout=2)
    assert time.monotonic() - started < 20
    assert run(nx, sandbox, "print('ok')")["stdout"] == "ok\n"


def test_concurrent_runs_do_not_kill_each_other(nx, sandbox):
    outcome = {}

    def long_run():
        outcome["long"] = run(nx, sandbox, "import time\ntime.sleep(2)\nprint('long done')")

    thread = threading.Thread(target=long_run)
    thread.start()
    time.sleep(0.3)
    with pytest.raises(SandboxTimeout):
        run(nx, sandbox, "import time\ntime.sleep(10)", timeout=1)
    thread.join()
    assert outcome["long"]["stdout"] == "long done\n"
