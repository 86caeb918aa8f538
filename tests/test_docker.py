"""What only the Docker provider has: hardened containers, resource options, the engine's errors.

The conformance and isolation suites also run on Docker when
NEXUS_TEST_PROVIDERS names it (test.sh starts an engine and builds the image).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest

from conftest import PROVIDERS
from nexus_jupyter import ProviderUnavailable, SandboxManager, SandboxTimeout
from nexus_jupyter.providers.agent_box import BOX_UID_BASE, BOX_UID_SPAN

pytestmark = pytest.mark.skipif(
    "docker" not in PROVIDERS, reason="NEXUS_TEST_PROVIDERS does not name docker (./test.sh always does)"
)


@pytest.fixture
def docker_nx(data_dir) -> SandboxManager:
    return SandboxManager(data_dir, provider="docker")


def container_of(nx: SandboxManager, sandbox_id: str):
    backend = nx.provider("docker")
    return backend.client.containers.get(nx.store.get(sandbox_id)["provider_state"]["container_id"])


def test_containers_are_hardened_by_default(docker_nx):
    record = docker_nx.sandbox_create("hardened")
    container = container_of(docker_nx, record["sandbox_id"])
    host = container.attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    uid, gid = map(int, container.attrs["Config"]["User"].split(":"))
    assert uid == gid and BOX_UID_BASE <= uid < BOX_UID_BASE + BOX_UID_SPAN  # no real user's uid
    assert host["Init"] is True
    assert host["PidsLimit"] == 256
    assert host["Memory"] == host["MemorySwap"] == 1024 << 20
    assert host["NanoCpus"] == 1_000_000_000
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert set(host["Tmpfs"]) == {"/tmp", "/home/user"}
    # the agent's socket directory: a small tmpfs on this machine, only the box's uid inside
    run_dir = docker_nx.provider("docker").box_dir(record["sandbox_id"]) / "run"
    assert os.path.ismount(run_dir) and run_dir.stat().st_uid == uid
    # the config (env, key) was read and removed: only the agent's and the Python runtime's files are left
    assert "agent.sock" in os.listdir(run_dir)
    assert set(os.listdir(run_dir)) <= {"agent.sock", "kernel.sock", "kernel.lock", "python.log"}
    assert container.labels["nexus.sandbox_id"] == record["sandbox_id"]
    assert container.labels["nexus.user_id"] == record["user_id"]


def test_resource_options_and_env_from_the_cli(nexus, data_dir):
    result = nexus(
        "sandbox",
        "create",
        "sized",
        "--provider",
        "docker",
        "--cpus",
        "0.5",
        "--memory",
        "256",
        "--env",
        "API_TOKEN=s3cret-value",
        "--json",
    )
    assert result.returncode == 0, result
    sandbox = result.json()["sandbox_id"]
    nx = SandboxManager(data_dir)
    container = container_of(nx, sandbox)
    assert container.attrs["HostConfig"]["NanoCpus"] == 500_000_000
    assert container.attrs["HostConfig"]["Memory"] == 256 << 20
    run = nexus("sandbox", "run", sandbox, "-l", "bash", "-c", "echo $API_TOKEN")
    assert run.stdout == "s3cret-value\n"
    # the value is never shown back: not by status or list, not in the container's definition
    shown = nexus("sandbox", "status", sandbox, "--json").stdout + nexus("sandbox", "list", "--json").stdout
    assert "s3cret-value" not in shown
    assert "s3cret-value" not in str(container.attrs["Config"])


def test_allow_internet_joins_the_fenced_network(docker_nx):
    online = docker_nx.sandbox_create("online", allow_internet_access=True)["sandbox_id"]
    assert container_of(docker_nx, online).attrs["HostConfig"]["NetworkMode"] == "nexus-internet"
    network = docker_nx.provider("docker").client.networks.get("nexus-internet")
    assert network.attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"  # boxes cannot reach each other
    rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=True).stdout
    assert "-A INPUT -i nexus-inet0 -j REJECT" in rules
    assert "-A DOCKER-USER -d 10.0.0.0/8 -i nexus-inet0 -j REJECT" in rules


def test_a_container_removed_behind_our_back_shows_as_stopped(docker_nx):
    sandbox = docker_nx.sandbox_create("doomed")["sandbox_id"]
    container_of(docker_nx, sandbox).remove(force=True)
    [entry] = docker_nx.sandbox_list(verify_status=True)["sandboxes"]
    assert (entry["status"], entry["verified"], entry["provider_status"]) == ("active", True, "stopped")
    assert docker_nx.sandbox_status(sandbox)["status"] == "stopped"


def test_stop_removes_the_container_at_once(docker_nx):
    sandbox = docker_nx.sandbox_create("quick-stop")["sandbox_id"]
    container = container_of(docker_nx, sandbox)
    started = time.monotonic()
    docker_nx.sandbox_stop(sandbox)
    assert time.monotonic() - started < 5  # no 10 s graceful stop
    from docker.errors import NotFound

    with pytest.raises(NotFound):
        container.reload()


def test_local_and_docker_sandboxes_share_one_store_without_harm(data_dir):
    local = SandboxManager(data_dir, provider="local")
    on_local = local.sandbox_create("on-local")["sandbox_id"]
    on_docker = local.sandbox_create("on-docker", provider="docker")["sandbox_id"]
    local.sandbox_pause(on_docker)
    report = local.reap()
    assert report["orphans"] == [] and report["vanished"] == []
    assert {s["provider"] for s in local.sandbox_list(verify_status=True)["sandboxes"]} == {"local", "docker"}
    local.sandbox_resume(on_docker)
    assert local.sandbox_run(on_local, "bash", "echo local")["stdout"] == "local\n"
    assert local.sandbox_run(on_docker, "bash", "echo docker")["stdout"] == "docker\n"


def test_an_unreachable_engine_is_one_clear_line(nexus):
    result = nexus(
        "sandbox", "create", "x", "--provider", "docker", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    )
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: cannot reach the Docker engine at unix:///nonexistent/docker.sock")
    assert "DOCKER_HOST" in line and "dockerd" in line


def test_a_missing_image_says_how_to_build_it(docker_nx):
    with pytest.raises(ProviderUnavailable, match="nexus sandbox template build"):
        docker_nx.sandbox_create("x", template_id="nexus-no-such-image:1")
    assert docker_nx.sandbox_list()["sandboxes"] == []


def test_an_image_without_python_fails_its_create_with_a_clear_error(docker_nx):
    # The base image the template is built from: Debian, no Python.
    with pytest.raises(ProviderUnavailable) as caught:
        docker_nx.sandbox_create("no-python", template_id="nexus-debian:bookworm")
    message = str(caught.value)
    assert message.startswith("the sandbox did not start") and "exited with code 127" in message, message
    assert "the image needs python3" in message and "\n" not in message
    assert docker_nx.sandbox_list()["sandboxes"] == []
    [row] = docker_nx.store.select(include_stopped=True)
    assert row["status"] == "failed"
    assert docker_nx.provider("docker").box_ids() == set()  # no container left behind


def test_template_build_reports_progress(nexus):
    # The image already exists (test.sh built it): this checks the command and its cache.
    result = nexus("sandbox", "template", "build", timeout=600)
    assert result.returncode == 0, result
    assert "Step 1/" in result.stdout and "built nexus-jupyter-sandbox:latest" in result.stdout


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)  # pass half-closes on: docker's exec relies on them
    except OSError:
        pass


@pytest.fixture
def tcp_engine(monkeypatch):
    """The local engine reached over TCP, as a remote one is: a loopback proxy to its socket."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    engine_socket = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://")

    def serve():
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX)
            engine.connect(engine_socket)
            threading.Thread(target=_pump, args=(client, engine), daemon=True).start()
            threading.Thread(target=_pump, args=(engine, client), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.delenv("NEXUS_DOCKER_TRANSPORT", raising=False)
    yield
    listener.close()


def test_a_remote_engine_works_through_docker_exec(tcp_engine, data_dir, tmp_path):
    nx = SandboxManager(data_dir, provider="docker")
    sandbox = nx.sandbox_create("remote", env={"TOKEN": "s3cret"})["sandbox_id"]
    # Nothing of the box is on this machine: the agent's code comes from a read-only volume,
    # its config through standard input, requests through exec.
    assert nx.store.get(sandbox)["provider_state"]["transport"] == "exec"
    container = container_of(nx, sandbox)
    assert [m["RW"] for m in container.attrs["Mounts"]] == [False]
    assert "s3cret" not in str(container.attrs)
    writes = nx.sandbox_run(
        sandbox,
        "bash",
        "touch /opt/nexus/x 2>/dev/null && echo CODE-WRITABLE; "
        "head -c 100M /dev/zero > /run/nexus/f; echo rc=$?; rm /run/nexus/f",
    )
    assert writes["stdout"] == "rc=1\n", writes
    assert nx.sandbox_run(sandbox, "python", "print(6 * 7)")["stdout"] == "42\n"
    assert nx.sandbox_run(sandbox, "javascript", "console.log(await Promise.resolve('js'))")["stdout"] == "js\n"
    streamed = []
    nx.sandbox_run(sandbox, "bash", "for i in 1 2; do echo $i; sleep 0.2; done", on_stdout=streamed.append)
    assert "".join(streamed) == "1\n2\n"
    payload = os.urandom(300_000)
    nx.sandbox_write_file(sandbox, "blob.bin", payload)
    assert nx.sandbox_read_file(sandbox, "blob.bin") == payload
    with pytest.raises(SandboxTimeout):
        nx.sandbox_run(sandbox, "bash", "sleep 30", timeout=1)
    nx.sandbox_pause(sandbox)
    assert nx.sandbox_list(verify_status=True)["sandboxes"][0]["provider_status"] == "paused"
    nx.sandbox_resume(sandbox)
    assert nx.sandbox_run(sandbox, "bash", "echo back")["stdout"] == "back\n"
    nx.sandbox_stop(sandbox)
    assert sandbox not in nx.provider("docker").box_ids()  # container and volume are gone


def wait_for_pool(backend, size: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(backend._pool_containers()) != size and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(backend._pool_containers()) == size


@pytest.fixture
def warm_pool(data_dir):
    """A manager whose Docker provider keeps ``size`` started containers; drained afterwards."""
    made = []

    def make(size: int):
        nx = SandboxManager(data_dir, provider="docker", warm_pool=size)
        backend = nx.provider("docker")
        made.append(backend)
        backend.fill_pool()
        wait_for_pool(backend, size)
        return nx, backend

    yield make
    for backend in made:
        backend.pool_size = 0
        backend.drain_pool()
        assert backend._pool_containers(running=False) == []


def test_the_warm_pool_hands_out_started_containers_and_refills(warm_pool):
    nx, backend = warm_pool(2)
    record = nx.sandbox_create("from-pool", memory_mb=2048, env={"GREETING": "hello"})
    sandbox = record["sandbox_id"]
    state = nx.store.get(sandbox)["provider_state"]
    assert state["pool_slot"].startswith("pool-")
    container = container_of(nx, sandbox)
    assert container.name.endswith(sandbox)
    assert container.attrs["HostConfig"]["Memory"] == 2048 << 20  # updated on claim
    assert nx.sandbox_run(sandbox, "bash", "echo $GREETING")["stdout"] == "hello\n"
    # the Python runtime started with the pool container, before the claim: it has the claim's env too
    assert nx.sandbox_run(sandbox, "python", "import os; print(os.environ['GREETING'])")["stdout"] == "hello\n"
    wait_for_pool(backend, 2)  # refilled in the background
    # a pool container is not an orphan, and a claimed one is a sandbox like any other
    report = nx.reap()
    assert report["orphans"] == [] and report["pruned"] == []
    assert nx.sandbox_stop(sandbox)["status"] == "stopped"
    assert sandbox not in backend.box_ids()
    # creates the pool cannot serve (network, disk) start cold
    online = nx.sandbox_create("online", allow_internet_access=True)["sandbox_id"]
    assert "pool_slot" not in nx.store.get(online)["provider_state"]


def test_ended_pool_containers_are_pruned_by_reap(warm_pool):
    nx, backend = warm_pool(1)
    [spare] = backend._pool_containers()
    spare.kill()  # as its agent does when nobody claims it for an hour
    spare.wait()
    assert nx.reap()["pruned"] == [spare.name.removeprefix(f"nexus-{backend.store}-")]
    assert backend._pool_containers(running=False) == []
