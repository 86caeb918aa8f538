"""Attacks from the hardening review: on the host's trust in what a box writes, on other
users' files, on the limits.  Each test tries the attack.

Runs once per provider in NEXUS_TEST_PROVIDERS (and on the unshare fallback), like
test_isolation.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import host_processes_matching, process_status
from nexus_jupyter import SandboxError, SandboxManager, SandboxStateError, SandboxTimeout
from nexus_jupyter.agent_client import AgentImpostor, AgentUnresponsive
from nexus_jupyter.providers.agent_box import BOX_UID_BASE, BOX_UID_SPAN


def socket_dir(nx: SandboxManager, sandbox: str) -> Path:
    """Where the host finds the box's agent socket."""
    row = nx.store.get(sandbox)
    return Path(nx.provider(row["provider"]).agent(sandbox, row["provider_state"]).socket_path).parent


def in_background(nx, sandbox, code, timeout=60, language="python"):
    """Start a run that keeps going; returns (thread, ready) where ready is set once it printed."""
    ready = threading.Event()
    outcome = {}

    def target():
        try:
            outcome["result"] = nx.sandbox_run(
                sandbox, language, code, timeout=timeout, fresh=True, on_stdout=lambda _: ready.set()
            )
        except SandboxError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(60), outcome
    return thread, outcome


# Box code that puts its own server where the agent's socket was (keeping the real one aside).
SWAP_SOCKET = """
import os, socket, threading, time
os.rename('/run/nexus/agent.sock', '/run/nexus/real.sock')
server = socket.socket(socket.AF_UNIX)
server.bind('/run/nexus/agent.sock')
server.listen(8)
print('ready', flush=True)
"""


# Box code that puts its own server where the Python runtime's socket was, and reads one cell.
TAKE_RUNTIME_SOCKET = """
import json, os, socket, time
while not os.path.exists('/run/nexus/kernel.sock'):  # the runtime starts with the box
    time.sleep(0.01)
os.unlink('/run/nexus/kernel.sock')
server = socket.socket(socket.AF_UNIX)
server.bind('/run/nexus/kernel.sock')
server.listen(1)
print('ready', flush=True)
conn, _ = server.accept()
conn.makefile('rb').readline()
"""


def box_host_pids(nx, sandbox) -> list[int]:
    """Host pids of every process inside the box."""
    row = nx.store.get(sandbox)
    found = nx.provider(row["provider"]).host_pids(sandbox, row["provider_state"])
    inside = []
    for pid in found:
        fields = process_status(pid)
        if fields and len(fields["NSpid"].split()) > 1:
            inside.append(pid)
    return inside


# ---- the host never trusts what a box writes


def test_a_symlink_in_place_of_the_agent_socket_is_refused(nx, sandbox):
    victim = nx.sandbox_create("victim")["sandbox_id"]
    nx.sandbox_run(victim, "bash", "echo untouched > marker")
    for target in [str(socket_dir(nx, victim) / "agent.sock"), "/var/run/docker.sock", "/etc/shadow"]:
        nx.sandbox_run(
            sandbox,
            "bash",
            f"rm -f /run/nexus/agent.sock.saved; ln /run/nexus/agent.sock /run/nexus/agent.sock.saved "
            f"&& ln -sfn {target} /run/nexus/agent.sock.new && mv -T /run/nexus/agent.sock.new /run/nexus/agent.sock",
        )
        started = time.monotonic()
        with pytest.raises(SandboxStateError, match=r"replaced \(a symlink\): refusing"):
            nx.sandbox_run(sandbox, "bash", "echo pwned > marker")
        assert time.monotonic() - started < 5
        # the box's own socket back (a hard link kept it), for the next round
        restore = socket_dir(nx, sandbox)
        os.replace(restore / "agent.sock.saved", restore / "agent.sock")
    assert nx.sandbox_run(victim, "bash", "cat marker")["stdout"] == "untouched\n"
    assert nx.sandbox_run(sandbox, "bash", "echo still mine")["stdout"] == "still mine\n"


def test_a_fifo_in_place_of_the_agent_socket_does_not_block_the_host(nx, sandbox):
    nx.sandbox_run(sandbox, "bash", "rm /run/nexus/agent.sock && mkfifo /run/nexus/agent.sock")
    started = time.monotonic()
    with pytest.raises(SandboxStateError, match="not the agent's socket"):
        nx.sandbox_list_files(sandbox)
    assert time.monotonic() - started < 5
    assert nx.sandbox_status(sandbox)["status"] == "active"  # the row stays consistent
    nx.sandbox_stop(sandbox)  # stop needs no agent


def test_a_fake_agent_is_refused_and_sent_no_file(nx, sandbox):
    # Code in the box swaps the agent's socket for its own server, which records what
    # it is sent on two connections, then puts the real socket back.
    fake = (
        SWAP_SOCKET
        + """
for attempt in range(2):
    conn, _ = server.accept()
    conn.settimeout(3)
    received = b''
    try:
        conn.sendall(b'{"ev": "hello", "proof": "forged"}\\n')
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
    except OSError:
        pass
    open('/tmp/received-%d' % attempt, 'wb').write(received)
    conn.close()
os.replace('/run/nexus/real.sock', '/run/nexus/agent.sock')
"""
    )
    thread, _ = in_background(nx, sandbox, fake)
    # The host knows its agent's pid: the fake is refused before anything is sent.
    with pytest.raises(SandboxStateError, match="held by another process of the sandbox"):
        nx.sandbox_write_file(sandbox, "secret.txt", b"TOP-SECRET " * 1000)
    # Where the host cannot see the peer (a relay through docker exec), the key's proof refuses it.
    row = nx.store.get(sandbox)
    blind = nx.provider(row["provider"]).agent(sandbox, {**row["provider_state"], "agent_pid": None})
    with pytest.raises(AgentImpostor, match="failed the agent's proof"):
        blind.write_file("secret.txt", b"TOP-SECRET " * 1000)
    thread.join(30)
    assert nx.sandbox_read_file(sandbox, "/tmp/received-0") == b""
    received = nx.sandbox_read_file(sandbox, "/tmp/received-1")
    assert b'"op": "files.write"' in received  # it saw the request line...
    assert b"TOP-SECRET" not in received and b"VE9QLVNFQ1JFV" not in received  # ...never the file


def test_another_boxs_agent_refuses_a_request_made_for_this_box(nx, sandbox):
    other = nx.sandbox_create("other")["sandbox_id"]
    nx.sandbox_run(other, "bash", "echo untouched > marker")
    mine = nx.store.get(sandbox)["provider_state"]
    theirs = nx.store.get(other)["provider_state"]
    backend = nx.provider(nx.store.get(sandbox)["provider"])
    # What the host would do if this box's socket led to the other box's agent:
    client = backend.agent(other, {**theirs, "agent_key": mine["agent_key"]})
    with pytest.raises(AgentImpostor, match="refused this sandbox's key"):
        client.run("bash", "echo pwned > marker", 10, max_output_chars=1000)
    assert nx.sandbox_run(other, "bash", "cat marker")["stdout"] == "untouched\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="stopping the box's agent from outside needs root")
def test_a_wedged_agent_cannot_hang_the_host(nx, sandbox, nexus, data_dir):
    # The agent still accepts connections (the kernel queues them) but never answers.
    agent = nx.store.get(sandbox)["provider_state"]["agent_pid"]
    os.kill(agent, signal.SIGSTOP)
    try:
        started = time.monotonic()
        run = nexus("sandbox", "run", sandbox, "-l", "bash", "-c", "echo hi", "--timeout", "1")
        assert run.returncode != 0 and "did not answer" in run.stderr and "unresponsive" in run.stderr, run
        assert time.monotonic() - started < 40  # the 1 s timeout plus the grace, not forever
        started = time.monotonic()
        listing = nexus("sandbox", "files", sandbox)
        assert listing.returncode != 0 and "did not answer" in listing.stderr, listing
        assert time.monotonic() - started < 30
        started = time.monotonic()
        (data_dir.parent / "up.txt").write_text("x" * 1000)
        upload = nexus("sandbox", "upload", sandbox, str(data_dir.parent / "up.txt"), env={"NEXUS_FILE_TIMEOUT": "2"})
        assert upload.returncode != 0 and "did not answer" in upload.stderr, upload
        assert time.monotonic() - started < 20
        # the row is consistent: still active, as the box is
        assert nexus("sandbox", "status", sandbox, "--json").json()["status"] == "active"
    finally:
        os.kill(agent, signal.SIGCONT)
    assert nexus("sandbox", "run", sandbox, "-l", "bash", "-c", "echo back").stdout == "back\n"


def test_a_hostile_socket_holder_cannot_hang_the_host(nx, sandbox):
    # Where the host cannot see who holds the socket (a relay through docker exec), what
    # answers one byte every 10 s, forever, is given up on all the same.
    drip = (
        SWAP_SOCKET
        + """
def drip(conn):
    try:
        while True:
            conn.sendall(b'x')
            time.sleep(10)
    except OSError:
        pass
while True:
    conn, _ = server.accept()
    threading.Thread(target=drip, args=(conn,), daemon=True).start()
"""
    )
    in_background(nx, sandbox, drip, timeout=120)
    row = nx.store.get(sandbox)
    blind = nx.provider(row["provider"]).agent(sandbox, {**row["provider_state"], "agent_pid": None})
    started = time.monotonic()
    with pytest.raises(AgentUnresponsive, match="within 10 s"):
        blind.list_files(".")
    assert time.monotonic() - started < 25
    started = time.monotonic()
    with pytest.raises(AgentUnresponsive, match="within 16 s"):
        blind.run("bash", "echo hi", 1, max_output_chars=1000)
    assert time.monotonic() - started < 30
    assert nx.sandbox_stop(sandbox)["status"] == "stopped"  # stop needs no agent


def test_a_flood_through_a_fake_python_runtime_is_capped_on_the_host(nx, sandbox):
    # Code in the box takes the Python runtime's socket (the agent forwards what it sends)
    # and answers the next cell with 300 MB of output.
    flood = (
        TAKE_RUNTIME_SOCKET
        + """
line = (json.dumps({"ev": "stdout", "data": "y" * (1 << 20)}) + "\\n").encode()
try:
    for _ in range(300):
        conn.sendall(line)
    conn.sendall(b'{"ev": "end", "exit_code": 0, "execution_time": 1}\\n')
except OSError:
    pass
"""
    )
    in_background(nx, sandbox, flood)
    started = time.monotonic()
    with pytest.raises(SandboxStateError, match="sent more than"):
        nx.sandbox_run(sandbox, "python", "1", timeout=60)
    assert time.monotonic() - started < 60


def test_a_malformed_answer_is_one_clear_error(nx, sandbox):
    fake_runtime = (
        TAKE_RUNTIME_SOCKET
        + """
conn.sendall(b'{"ev": "exception", "ename": "X", "evalue": "y", "traceback": 7}\\n')
"""
    )
    in_background(nx, sandbox, fake_runtime)
    with pytest.raises(SandboxStateError, match="sent a malformed execute event"):
        nx.sandbox_run(sandbox, "python", "1", timeout=30)


def test_what_a_box_writes_in_its_socket_directory_stays_within_its_disk_limit(nx):
    sandbox = nx.sandbox_create("fill-run-dir", memory_mb=512, disk_mb=64)["sandbox_id"]
    host_dir = socket_dir(nx, sandbox)
    before = os.statvfs("/")
    result = nx.sandbox_run(sandbox, "bash", "head -c 300M /dev/zero > /run/nexus/filler; echo rc=$?", timeout=60)
    assert "rc=1" in result["stdout"], result
    after = os.statvfs("/")
    # not on the host's disk: the directory is a small tmpfs of the box's own
    assert (before.f_bfree - after.f_bfree) * before.f_frsize < 32 << 20
    usage = os.statvfs(host_dir)
    assert usage.f_blocks * usage.f_frsize <= 64 << 20
    assert nx.sandbox_run(sandbox, "bash", "rm /run/nexus/filler; echo fine")["stdout"] == "fine\n"


# ---- nothing a box does touches host files or other users


def test_box_processes_and_files_are_never_host_root(nx, sandbox):
    nx.sandbox_run(sandbox, "python", "open('made-here.txt', 'w').write('x')")
    in_background(nx, sandbox, "import time\nprint('up', flush=True)\ntime.sleep(30)")
    pids = box_host_pids(nx, sandbox)
    assert len(pids) >= 3  # the agent, the Python runtime, the run
    uids = {int(process_status(pid)["Uid"].split()[0]) for pid in pids}
    [uid] = uids
    assert uid != 0 and (os.geteuid() != 0 or BOX_UID_BASE <= uid < BOX_UID_BASE + BOX_UID_SPAN), uids
    assert nx.store.get(sandbox)["provider_state"]["host_uid"] == uid
    if nx.store.get(sandbox)["provider"] == "local":
        made = Path(nx.store.get(sandbox)["provider_state"]["dir"]) / "fs" / "home" / "made-here.txt"
        assert made.stat().st_uid == uid


def test_each_box_has_its_own_host_uid(nx, sandbox):
    other = nx.sandbox_create("other")["sandbox_id"]
    assert nx.store.get(sandbox)["provider_state"]["host_uid"] != nx.store.get(other)["provider_state"]["host_uid"]


@pytest.fixture
def shared_parent_nx(provider, tmp_path):
    """A manager whose data dir sits in a directory every user can enter (as ~/.local/share is),
    so only the data dir's own permissions keep other users out."""
    parent = Path(tempfile.mkdtemp(prefix="nexus-shared-", dir="/tmp"))
    parent.chmod(0o755)
    nx = SandboxManager(parent / "data", provider=provider)
    yield nx
    for row in nx.store.select(include_stopped=False):
        nx.sandbox_stop(row["sandbox_id"])
    shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="trying as another OS user needs root to become one")
def test_another_os_user_can_read_no_state_and_reach_no_box(shared_parent_nx):
    nx = shared_parent_nx
    data_dir = nx.data_dir
    sandbox = nx.sandbox_create("private", env={"API_TOKEN": "s3cret"})["sandbox_id"]
    nx.sandbox_run(sandbox, "bash", "echo private > notes.txt")
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for name in ("nexus.db", "nexus.db-wal", "nexus.db-shm"):
        if (data_dir / name).exists():
            assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
    box = nx.provider(nx.store.get(sandbox)["provider"]).box_dir(sandbox)
    assert stat.S_IMODE(box.stat().st_mode) == 0o700
    sock = socket_dir(nx, sandbox) / "agent.sock"
    probe = f"""
cat {data_dir}/nexus.db >/dev/null 2>&1 && echo READ-DB
ls {data_dir}/boxes >/dev/null 2>&1 && echo LISTED
ls {box} >/dev/null 2>&1 && echo ENTERED
test -e {sock} && echo SAW-SOCKET
grep -l s3cret /proc/[0-9]*/environ 2>/dev/null && echo READ-ENV
echo done
"""
    # uid 1000 is a real person on many machines (and was the Docker boxes' uid): it sees nothing
    for uid in ("1000", "65534"):
        seen = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "/bin/sh", "-c", probe],
            capture_output=True,
            text=True,
        )
        assert seen.stdout == "done\n", (uid, seen)


def test_a_box_cannot_write_dev_and_its_shm_shares_the_disk_budget(nx):
    sandbox = nx.sandbox_create("dev", memory_mb=512, disk_mb=64)["sandbox_id"]
    result = nx.sandbox_run(
        sandbox,
        "bash",
        "touch /dev/evil 2>/dev/null && echo DEV-WRITABLE; head -c 300M /dev/zero > /dev/shm/big; echo rc=$?; "
        "du -m /dev/shm/big | cut -f1",
        timeout=60,
    )
    assert "DEV-WRITABLE" not in result["stdout"]
    assert "rc=1" in result["stdout"] and int(result["stdout"].split()[-1]) <= 64, result


# ---- files in and out


def test_download_never_writes_through_a_planted_symlink(nx, sandbox, tmp_path):
    nx.sandbox_write_file(sandbox, "report.txt", b"from the sandbox")
    victim = tmp_path / "victim.txt"
    victim.write_text("must stay")
    local = tmp_path / "report.txt"
    (tmp_path / "report.txt.partial").symlink_to(victim)  # the old fixed temporary name
    local.symlink_to(victim)
    nx.sandbox_download_file(sandbox, "report.txt", local)
    assert victim.read_text() == "must stay"
    assert not local.is_symlink() and local.read_bytes() == b"from the sandbox"


def test_special_files_are_refused_at_once(nx, sandbox):
    nx.sandbox_run(sandbox, "bash", "ln -s /dev/zero zeros; mkfifo pipe; mkdir folder")
    for name in ("zeros", "pipe", "folder"):
        started = time.monotonic()
        with pytest.raises(SandboxError, match="is not a regular file"):
            nx.sandbox_read_file(sandbox, name)
        assert time.monotonic() - started < 5, name
    assert nx.sandbox_run(sandbox, "bash", "echo usable")["stdout"] == "usable\n"


def test_a_file_over_the_transfer_limit_is_refused_and_nothing_is_written(nexus, sandbox, tmp_path):
    assert nexus("sandbox", "run", sandbox, "-l", "bash", "-c", "head -c 3M /dev/urandom > big").returncode == 0
    target = tmp_path / "out"
    target.mkdir()
    local = target / "big"
    result = nexus("sandbox", "download", sandbox, "big", str(local), env={"NEXUS_MAX_FILE_MB": "1"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: cannot read big: /home/user/big is {3 << 20} bytes, over the {1 << 20}-byte transfer limit "
        "(NEXUS_MAX_FILE_MB)"
    ]
    assert os.listdir(target) == []


def _bytes_written_to_an_unnamed_file(pid: int, directory: Path) -> int:
    """How far the process has written the O_TMPFILE it holds in ``directory`` (0 if none yet)."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(f"{directory}/#"):
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    return int(info.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def test_a_killed_download_leaves_no_partial_file(nexus, data_dir, provider, sandbox, tmp_path):
    assert nexus("sandbox", "run", sandbox, "-l", "bash", "-c", "head -c 250M /dev/urandom > big").returncode == 0
    target = tmp_path / "out"
    target.mkdir()
    env = {**os.environ, "NEXUS_DATA_DIR": str(data_dir), "NEXUS_MAX_FILE_MB": "1024"}
    download = subprocess.Popen(
        [sys.executable, "-m", "nexus_jupyter", "sandbox", "download", sandbox, "big", str(target / "big")], env=env
    )
    deadline = time.monotonic() + 60
    while _bytes_written_to_an_unnamed_file(download.pid, target) < (8 << 20):  # part-way through
        assert download.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    download.send_signal(signal.SIGKILL)
    download.wait()
    assert os.listdir(target) == []


# ---- limits that hold without losing data


def test_filling_home_and_tmp_hits_enospc_and_the_box_keeps_its_files(nx):
    sandbox = nx.sandbox_create("full", memory_mb=512)["sandbox_id"]  # its files get 256 MiB
    nx.sandbox_run(sandbox, "bash", "echo kept > precious.txt")
    result = nx.sandbox_run(
        sandbox,
        "bash",
        "head -c 400M /dev/zero > home.bin; echo home=$?; head -c 400M /dev/zero > /tmp/tmp.bin; echo tmp=$?",
        timeout=120,
    )
    assert "home=1" in result["stdout"] and "tmp=1" in result["stdout"], result
    assert "No space left" in result["stderr"]
    # nothing was killed: the box, its files and its row are as they were
    assert nx.sandbox_run(sandbox, "bash", "cat precious.txt")["stdout"] == "kept\n"
    [entry] = [s for s in nx.sandbox_list(verify_status=True)["sandboxes"] if s["sandbox_id"] == sandbox]
    assert (entry["status"], entry["provider_status"]) == ("active", "active")


def test_processes_a_python_cell_started_die_with_its_timeout(nx, sandbox):
    marker = f"nexus_cell_{time.time_ns()}"
    code = f"""
import subprocess, time
subprocess.Popen(['setsid', 'bash', '-c', 'exec -a {marker}-setsid sleep 1000'])
subprocess.Popen(['bash', '-c', '(exec -a {marker}-orphan sleep 1000 &)'])
time.sleep(1)
print('started', flush=True)
time.sleep(1000)
"""
    with pytest.raises(SandboxTimeout):
        nx.sandbox_run(sandbox, "python", code, timeout=3)
    time.sleep(0.5)
    assert host_processes_matching(marker) == []
    assert nx.sandbox_run(sandbox, "python", "print('kernel alive')")["stdout"] == "kernel alive\n"


def test_processes_a_cancelled_python_cell_started_die_with_it(nx, sandbox):
    marker = f"nexus_cancel_{time.time_ns()}"
    code = f"""
import subprocess, time
subprocess.Popen(['setsid', 'bash', '-c', 'exec -a {marker} sleep 1000'])
time.sleep(0.5)
print('started', flush=True)
time.sleep(1000)
"""

    class Cancel(Exception):
        pass

    def cancel(_text):
        raise Cancel  # as a kernel interrupt does: the host hangs up mid-run

    with pytest.raises(Cancel):
        nx.sandbox_run(sandbox, "python", code, timeout=60, on_stdout=cancel)
    deadline = time.monotonic() + 10
    while host_processes_matching(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert host_processes_matching(marker) == []


def test_a_process_a_cell_leaves_running_after_a_normal_end_lives_on(nx, sandbox):
    # Notebook semantics: a server started in one cell is used by the next.
    marker = f"nexus_server_{time.time_ns()}"
    nx.sandbox_run(
        sandbox,
        "python",
        f"import subprocess\nserver = subprocess.Popen(['bash', '-c', 'exec -a {marker} sleep 1000'])",
    )
    time.sleep(0.3)
    assert host_processes_matching(marker)
    assert nx.sandbox_run(sandbox, "python", "print(server.poll())")["stdout"] == "None\n"
    nx.sandbox_stop(sandbox)
    time.sleep(0.3)
    assert host_processes_matching(marker) == []


def test_a_stop_killed_midway_is_reported_and_finished_by_reap(nx, sandbox):
    backend = nx.provider(nx.store.get(sandbox)["provider"])
    # The row says stopped, the box still runs: what a stop killed between the two leaves.
    nx.store.update(sandbox, {"status": "stopped", "stopped_at": time.time(), "expires_at": None})
    [entry] = nx.sandbox_list(verify_status=True, include_stopped=True)["sandboxes"]
    assert (entry["status"], entry["verified"], entry["provider_status"]) == ("stopped", False, "active")
    assert sandbox in nx.reap()["orphans"]
    assert backend.inspect(sandbox, nx.store.get(sandbox)["provider_state"]) == "stopped"
    [entry] = nx.sandbox_list(verify_status=True, include_stopped=True)["sandboxes"]
    assert (entry["verified"], entry["provider_status"]) == (True, "stopped")


def test_stopping_again_finishes_a_stop_killed_midway(nx, sandbox):
    backend = nx.provider(nx.store.get(sandbox)["provider"])
    nx.store.update(sandbox, {"status": "stopped", "stopped_at": time.time(), "expires_at": None})
    assert backend.inspect(sandbox, nx.store.get(sandbox)["provider_state"]) == "active"
    assert nx.sandbox_stop(sandbox)["status"] == "stopped"
    assert backend.inspect(sandbox, nx.store.get(sandbox)["provider_state"]) == "stopped"


def test_clients_that_hang_up_on_the_python_runtime_do_not_end_it(nx, sandbox):
    # Box code can reach the runtime's socket: requests it abandons, or makes no sense of,
    # leave the runtime (and its state) as it was.
    nx.sandbox_run(sandbox, "python", "kept = 'state'")
    attack = (
        "import socket\n"
        'lines = [b\'{"op": "ping"}\', b\'{"op": "environ", "env": {}}\', b\'{"op": 7}\', b\'nonsense\', b\'\']\n'
        "for line in lines:\n"
        "    for _ in range(20):\n"
        "        s = socket.socket(socket.AF_UNIX)\n"
        "        s.connect('/run/nexus/kernel.sock')\n"
        "        s.sendall(line + b'\\n')\n"
        "        s.close()\n"
        "print('done')\n"
    )
    assert nx.sandbox_run(sandbox, "python", attack, fresh=True)["stdout"] == "done\n"
    result = nx.sandbox_run(sandbox, "python", "print(kept)")
    assert (result["stdout"], result["stderr"]) == ("state\n", "")


def test_box_code_that_kills_the_python_runtime_gets_a_new_one_and_is_told(nx, sandbox):
    nx.sandbox_run(sandbox, "python", "lost = True")
    # box code finds the shell by its command line and kills its parent, the supervisor
    kill = (
        "import os, signal\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        cmdline = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
        "        parent = int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])\n"
        "    except OSError:\n"
        "        continue\n"
        "    if b'python_shell.py' in cmdline:\n"
        "        os.kill(parent, signal.SIGKILL)\n"
        "        print('killed')\n"
    )
    killed = nx.sandbox_run(sandbox, "python", kill, fresh=True)["stdout"]
    assert "killed" in killed, killed
    result = nx.sandbox_run(sandbox, "python", "print('lost' in globals())")
    assert result["stdout"] == "False\n" and result["exit_code"] == 0
    assert "had ended and was restarted: its state was lost" in result["stderr"]
    assert nx.sandbox_run(sandbox, "python", "print(1)")["stderr"] == ""  # said once


def test_a_box_whose_disk_is_full_still_runs_the_command_that_frees_it(nx):
    sandbox = nx.sandbox_create("brim-full", memory_mb=512)["sandbox_id"]
    # filled from the stateful runtime (no run's own script is freed after it), to the last page
    fill = (
        "n = 0\n"
        "try:\n"
        "    with open('big.bin', 'wb') as f:\n"
        "        while True:\n"
        "            f.write(b'0' * (1 << 20))\n"
        "            f.flush()\n"
        "except OSError:\n"
        "    pass\n"
        "try:\n"
        "    while True:\n"
        "        with open('/tmp/small%d' % n, 'wb') as f:\n"
        "            f.write(b'x' * 4096)\n"
        "        n += 1\n"
        "except OSError as exc:\n"
        "    print('full', exc.errno == 28)\n"
    )
    assert nx.sandbox_run(sandbox, "python", fill, timeout=120)["stdout"] == "full True\n"
    freed = nx.sandbox_run(sandbox, "bash", "rm -f big.bin /tmp/small*; echo freed")
    assert (freed["stdout"], freed["exit_code"]) == ("freed\n", 0)
    assert nx.sandbox_run(sandbox, "python", "print('room again')", fresh=True)["stdout"] == "room again\n"
