"""Several hosts over one PostgreSQL database: two ``nexus serve`` (hosts alpha and beta, a data
dir each, as two machines would have) share the database.  A local box is reachable only from
its own host, so a request that reaches the other server is forwarded to the holder's server
and streamed back; a host with no server answering is named in one line; the reaper does the
fleet's work once per interval between both servers, while each host cleans its own boxes;
a server killed mid-operation leaves nothing the others cannot reconcile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from jupyter_servers import NexusServe

from conftest import PROVIDERS
from nexus_jupyter import ProviderUnavailable, SandboxManager

pytestmark = pytest.mark.skipif("local" not in os.environ.get("NEXUS_TEST_PROVIDERS", "local"), reason="local only")

KEY = "fleet-test-key-" + "k" * 24


class Fleet:
    """The servers of hosts alpha and beta (``start``/``kill`` them), and the CLI as each host runs it."""

    def __init__(self, database: str, root: Path):
        self.database = database
        self.root = root
        self.servers: dict[str, NexusServe] = {}
        self.team: list[str] = []  # "<key> <user>" lines every server takes, besides alice's KEY

    def add_user(self, user: str, key: str) -> None:
        self.team.append(f"{key} {user}")
        for server in self.servers.values():
            server.keys_file.write_text("\n".join(self.team) + "\n")

    def env(self, host: str) -> dict:
        return {"NEXUS_DATABASE_URL": self.database, "NEXUS_HOST_ID": host, "NEXUS_USER": "alice"}

    def data_dir(self, host: str) -> Path:
        return self.root / host / "data"

    def start(self, host: str) -> NexusServe:
        server = NexusServe(
            self.data_dir(host), "--NexusSandboxApp.reap_interval=1", "--keys-file", "-", key=KEY, env=self.env(host)
        )
        server.keys_file.write_text("".join(f"{line}\n" for line in self.team))
        self.servers[host] = server
        return server

    def kill(self, host: str) -> None:
        """SIGKILL: no withdrawal, no clean-up, as a crashed machine's server."""
        server = self.servers.pop(host)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)

    def call(self, host: str, method: str, path: str, key: str = KEY, **kwargs) -> requests.Response:
        url = f"{self.servers[host].url}/nexus/api{path}"
        return requests.request(method, url, headers={"Authorization": f"Bearer {key}"}, timeout=120, **kwargs)

    def run(self, host: str, sandbox_id: str, code: str, **fields) -> dict:
        """A run through ``host``'s REST API: its events, each with the time it arrived."""
        started = time.monotonic()
        answer = self.call(host, "POST", f"/sandboxes/{sandbox_id}/run", json={"code": code, **fields}, stream=True)
        assert answer.status_code == 200, answer.text
        events = []
        for line in answer.iter_lines():
            events.append({**json.loads(line), "at": time.monotonic() - started})
        return {"events": events, "end": events[-1]}

    def cli(self, host: str, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
        env.update({"NEXUS_DATA_DIR": str(self.data_dir(host)), **self.env(host)})
        return subprocess.run(
            [sys.executable, "-m", "nexus_jupyter", "sandbox", *args], env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip

    def row(self, sandbox_id: str) -> dict:
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.database, row_factory=dict_row) as conn:
            return conn.execute("SELECT * FROM sandboxes WHERE sandbox_id = %s", [sandbox_id]).fetchone()

    def set_row(self, sandbox_id: str, **fields) -> None:
        import psycopg

        assignments = ", ".join(f"{name} = %s" for name in fields)
        with psycopg.connect(self.database, autocommit=True) as conn:
            conn.execute(f"UPDATE sandboxes SET {assignments} WHERE sandbox_id = %s", [*fields.values(), sandbox_id])

    def box_dir(self, host: str, sandbox_id: str) -> Path:
        return self.data_dir(host) / "boxes" / "local" / sandbox_id


@pytest.fixture
def fleet(postgres, tmp_path, monkeypatch):
    database = postgres.create_database(f"fleet_{os.getpid()}_{time.monotonic_ns()}")
    fleet = Fleet(database, tmp_path)
    fleet.start("alpha")
    fleet.start("beta")
    yield fleet
    for host in list(fleet.servers):
        fleet.servers.pop(host).stop()
    # Each host destroys what it holds, as its own process would.
    monkeypatch.setenv("NEXUS_DATABASE_URL", database)
    for host in ("alpha", "beta"):
        monkeypatch.setenv("NEXUS_HOST_ID", host)
        cleanup = SandboxManager(fleet.data_dir(host), is_admin=True, warm_pool=0)
        for row in cleanup.store.select(include_stopped=False):
            if row.get("host") == host:
                cleanup.sandbox_stop(row["sandbox_id"])
        cleanup.reap()


def until(condition, seconds: float = 30.0, every: float = 0.2):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    return condition()


def test_a_sandbox_made_on_one_host_is_listed_run_and_stopped_from_the_other(fleet):
    made = fleet.call("alpha", "POST", "/sandboxes", json={"name": "shared", "provider": "local"})
    assert made.status_code == 201, made.text
    box = made.json()
    assert box["host"] == "alpha"
    sandbox_id = box["sandbox_id"]

    listed = fleet.call("beta", "GET", "/sandboxes").json()["sandboxes"]
    assert [(r["sandbox_id"], r["host"]) for r in listed] == [(sandbox_id, "alpha")]

    # One kernel, whichever server is asked: state set through alpha is read through beta.
    assert fleet.run("alpha", sandbox_id, "x = 41")["end"]["result"]["exit_code"] == 0
    assert fleet.run("beta", sandbox_id, "print(x + 1)")["end"]["result"]["stdout"] == "42\n"
    # Streamed as it happens, through both servers: the first line long before the last.
    slow = fleet.run("beta", sandbox_id, "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(1)")
    printed = [e for e in slow["events"] if e["type"] == "stdout"]
    assert "".join(e["text"] for e in printed) == "0\n1\n2\n"
    assert printed[0]["at"] < slow["end"]["at"] - 1.5

    # The database's URL (and so its password) never reaches the code in a box, whichever process is seen.
    password = fleet.database.split(":")[2].split("@")[0]
    seen = fleet.run("beta", sandbox_id, "cat /proc/*/environ | tr '\\0' '\\n'", language="bash")
    environ = seen["end"]["result"]["stdout"]
    assert "PATH=" in environ and "NEXUS_DATABASE_URL" not in environ and password not in environ

    # Files both ways, and the holder's view of the state.
    payload = bytes(range(256)) * 1000
    put = fleet.call("beta", "PUT", f"/sandboxes/{sandbox_id}/files/data/blob.bin", data=payload)
    assert put.status_code == 201, put.text
    assert fleet.call("alpha", "GET", f"/sandboxes/{sandbox_id}/files/data/blob.bin").content == payload
    assert fleet.call("beta", "GET", f"/sandboxes/{sandbox_id}/files/data/blob.bin").content == payload
    names = [
        e["name"] for e in fleet.call("beta", "GET", f"/sandboxes/{sandbox_id}/files", params={"path": "data"}).json()
    ]
    assert names == ["blob.bin"]
    metrics = fleet.call("beta", "GET", f"/sandboxes/{sandbox_id}/metrics").json()
    assert metrics["processes"] >= 1 and metrics["memory_bytes"] > 0

    assert fleet.call("beta", "POST", f"/sandboxes/{sandbox_id}/pause").json()["status"] == "paused"
    assert fleet.call("alpha", "GET", f"/sandboxes/{sandbox_id}").json()["status"] == "paused"
    assert fleet.call("beta", "POST", f"/sandboxes/{sandbox_id}/resume").json()["status"] == "active"

    # The CLI on host beta: the HOST column, and a run forwarded to alpha's server.
    table = fleet.cli("beta", "list")
    assert table.returncode == 0, table.stderr
    header, line = table.stdout.splitlines()
    assert line[header.index(" HOST ") + 1 :].split()[0] == "alpha"
    ran = fleet.cli("beta", "run", sandbox_id, "--code", "print(x * 2)")
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "82\n", "")

    stopped = fleet.call("beta", "POST", f"/sandboxes/{sandbox_id}/stop")
    assert stopped.json()["status"] == "stopped"
    # Alpha destroyed it: no box directory is left on alpha.
    assert not fleet.box_dir("alpha", sandbox_id).exists()


def test_a_host_whose_server_is_gone_is_named_in_one_line_and_its_box_is_reachable_again_later(fleet):
    sandbox_id = fleet.call("alpha", "POST", "/sandboxes", json={"name": "lonely"}).json()["sandbox_id"]
    fleet.run("alpha", sandbox_id, "kept = 'still here'")
    dead_url = fleet.servers["alpha"].url
    fleet.kill("alpha")

    began = time.monotonic()
    refused = fleet.call("beta", "POST", f"/sandboxes/{sandbox_id}/run", json={"code": "print(kept)"})
    assert time.monotonic() - began < 10
    assert refused.status_code == 503
    assert refused.json()["message"].startswith(
        f"Sandbox {sandbox_id} is on host alpha, whose server at {dead_url} is not answering ("
    )
    cli = fleet.cli("beta", "stop", sandbox_id)
    assert cli.returncode != 0 and len(cli.stderr.strip().splitlines()) == 1 and "host alpha" in cli.stderr
    assert fleet.row(sandbox_id)["status"] == "active"  # nothing changed that alpha could not undo

    # Alpha again (at another port): the box outlived its server, with its kernel's state.
    fleet.start("alpha")
    ran = fleet.run("beta", sandbox_id, "print(kept)")
    assert ran["end"]["result"]["stdout"] == "still here\n"

    # Its new server stopped cleanly and withdrew: only the dead one is left to name.
    fleet.servers.pop("alpha").stop()
    refused = fleet.call("beta", "POST", f"/sandboxes/{sandbox_id}/stop")
    assert refused.status_code == 503
    assert refused.json()["message"].startswith(
        f"Sandbox {sandbox_id} is on host alpha, whose server at {dead_url} is not answering ("
    )

    # A host that never ran a server (only its CLI): said so.
    made = fleet.cli("gamma", "create", "cli-only", "--json")
    assert made.returncode == 0, made.stderr
    gamma_id = json.loads(made.stdout)["sandbox_id"]
    try:
        refused = fleet.call("beta", "POST", f"/sandboxes/{gamma_id}/stop")
        assert refused.status_code == 503
        assert refused.json()["message"] == (
            f"Sandbox {gamma_id} is on host gamma, where no nexus server is running: start one there "
            "(nexus serve, or a Jupyter server with the extension) or act on it from gamma"
        )
    finally:
        assert fleet.cli("gamma", "stop", gamma_id).returncode == 0
    assert not fleet.box_dir("gamma", gamma_id).exists()


def fleet_counts(fleet, host: str) -> dict[str, tuple[int, int]]:
    servers = fleet.call(host, "GET", "/fleet").json()["servers"]
    return {s["host"]: (s["host_passes"], s["fleet_passes"]) for s in servers}


def test_the_fleet_is_reaped_once_per_interval_and_each_host_cleans_its_own_boxes(fleet):
    view = fleet.call("beta", "GET", "/fleet").json()
    assert view["host"] == "beta" and view["shared"] is True
    assert sorted(s["host"] for s in view["servers"]) == ["alpha", "beta"]
    assert all("secret" not in s for s in view["servers"])

    before = fleet_counts(fleet, "alpha")
    time.sleep(8)
    after = fleet_counts(fleet, "alpha")
    host_passes = {host: after[host][0] - before[host][0] for host in after}
    fleet_passes = sum(after[host][1] - before[host][1] for host in after)
    # Each server goes round every second; between them, the fleet's share is done about
    # once a second too, not twice.
    assert all(5 <= passes <= 10 for passes in host_passes.values()), host_passes
    assert 5 <= fleet_passes <= 10, (fleet_passes, host_passes)

    # A box of alpha expires (its idle time is made to run out): stopped once, by whichever
    # server's pass saw it first, and alpha's own pass destroys the box.
    sandbox_id = fleet.call("alpha", "POST", "/sandboxes", json={"name": "idle"}).json()["sandbox_id"]
    assert fleet.box_dir("alpha", sandbox_id).exists()
    fleet.set_row(sandbox_id, expires_at=time.time() - 1)
    assert until(lambda: fleet.row(sandbox_id)["status"] == "stopped", 15)
    assert fleet.row(sandbox_id)["stop_reason"] == "expired"
    assert until(lambda: not fleet.box_dir("alpha", sandbox_id).exists(), 15)

    # Alpha dies: beta alone does the fleet's share from then on.
    fleet.kill("alpha")
    before = fleet_counts(fleet, "beta")["beta"][1]
    time.sleep(5)
    assert fleet_counts(fleet, "beta")["beta"][1] - before >= 3


def test_a_create_cut_short_by_a_killed_server_is_failed_by_the_fleet_and_swept_by_its_host(fleet):
    sandbox_id = fleet.call("alpha", "POST", "/sandboxes", json={"name": "cut"}).json()["sandbox_id"]
    # As if alpha died between starting the box and marking it active, long ago.
    fleet.kill("alpha")
    fleet.set_row(sandbox_id, status="creating", created_at=time.time() - 600)
    # Beta's pass fails the create; it cannot reach alpha's box, so the box waits for alpha.
    assert until(lambda: fleet.row(sandbox_id)["status"] == "failed", 15)
    assert fleet.row(sandbox_id)["stop_reason"] == "create did not finish"
    assert fleet.box_dir("alpha", sandbox_id).exists()
    # Alpha back: its first pass destroys the box no live row claims.
    fleet.start("alpha")
    assert until(lambda: not fleet.box_dir("alpha", sandbox_id).exists(), 15)


def test_only_a_servers_own_fleet_key_lets_a_request_act_for_another_user(fleet, tmp_path):
    sandbox_id = fleet.call("alpha", "POST", "/sandboxes", json={"name": "alices"}).json()["sandbox_id"]
    url = f"{fleet.servers['alpha'].url}/nexus/api/sandboxes/{sandbox_id}/run"
    as_mallory = {"X-Nexus-Fleet-User": "mallory", "X-Nexus-Fleet-Admin": "1"}
    # Alice's API key, a made-up key, no key: a forwarded request needs the server's own key.
    for authorization in (f"Bearer {KEY}", "Bearer " + "x" * 43, None):
        headers = {**as_mallory, **({"Authorization": authorization} if authorization else {})}
        refused = requests.post(url, json={"code": "print('in')"}, headers=headers, timeout=60)
        assert refused.status_code == 403, refused.text
        assert refused.json()["message"] == "a forwarded request without this server's fleet key"
    # Beta's key is beta's: alpha does not take it.
    import psycopg

    with psycopg.connect(fleet.database) as conn:
        beta_key = conn.execute("SELECT secret FROM nexus_servers WHERE host = 'beta'").fetchone()[0]
    refused = requests.post(url, json={"code": "1"}, headers={**as_mallory, "Authorization": f"Bearer {beta_key}"})
    assert refused.status_code == 403
    # A server with one machine's store is in no fleet: it takes no forwarded request at all.
    alone = NexusServe(tmp_path / "alone" / "data", key=KEY)
    try:
        refused = requests.get(f"{alone.url}/nexus/api/sandboxes", headers={**as_mallory, "Authorization": "Bearer "})
        assert refused.status_code == 403
        assert requests.get(f"{alone.url}/nexus/api/fleet", headers={"Authorization": f"Bearer {KEY}"}).json() == {
            "host": (tmp_path / "alone" / "data" / "host-id").read_text().strip(),
            "shared": False,
            "servers": [],
        }
    finally:
        alone.stop()
    # Nothing ran in alice's box.
    assert fleet.call("alpha", "GET", f"/sandboxes/{sandbox_id}/files").json() == []


def test_a_shared_engines_sandboxes_are_every_hosts_and_one_pass_sweeps_the_fleets_orphans(
    postgres, e2b_double, tmp_path, monkeypatch
):
    """E2B (here its local double) answers every host: no forwarding, no server needed."""
    from e2b_code_interpreter import Sandbox

    monkeypatch.setenv("NEXUS_DATABASE_URL", postgres.create_database(f"e2b_{os.getpid()}_{time.monotonic_ns()}"))
    for key, value in e2b_double.env().items():
        monkeypatch.setenv(key, value)
    hosts = {}
    for host in ("alpha", "beta"):  # each host's process, as its own environment makes it
        monkeypatch.setenv("NEXUS_HOST_ID", host)
        hosts[host] = SandboxManager(tmp_path / host, provider="e2b", user_id="alice")
        assert hosts[host].service.fleet.host_id == host
    alpha, beta = hosts["alpha"], hosts["beta"]

    made = alpha.sandbox_create("cloud")
    sandbox_id = made["sandbox_id"]
    try:
        assert made["host"] == "alpha"
        alpha.sandbox_run(sandbox_id, "python", "y = 7")
        assert beta.sandbox_run(sandbox_id, "python", "print(y * 6)")["stdout"] == "42\n"  # no alpha server
        # Both hosts label E2B sandboxes with the database's id, not their data dir's.
        store_id = alpha.service.store.store_id
        e2b_id = alpha.service.store.get(sandbox_id)["provider_state"]["e2b_id"]
        assert Sandbox.get_info(e2b_id).metadata["nexus_store"] == store_id == beta.service.store.store_id

        # An E2B sandbox of this fleet's with no row (a create cut short on alpha): beta's pass sweeps it,
        # and a second pass within the interval leaves the fleet's share alone.
        lost = Sandbox.create(metadata={"nexus_store": store_id, "nexus_sandbox_id": "sb_lostonalpha0000"})
        first = beta.service.reap(fleet_interval=60)
        assert first["fleet"] is True and "sb_lostonalpha0000" in first["orphans"]
        assert not lost.is_running()
        assert alpha.service.reap(fleet_interval=60)["fleet"] is False
        assert alpha.sandbox_status(sandbox_id)["status"] == "active"  # the live one untouched
    finally:
        beta.sandbox_stop(sandbox_id)
    assert alpha.sandbox_status(sandbox_id)["status"] == "stopped"
    assert e2b_id not in {listed.sandbox_id for listed in Sandbox.list().next_items()}


@pytest.mark.skipif("docker" not in PROVIDERS, reason="NEXUS_TEST_PROVIDERS does not name docker (./test.sh does)")
def test_a_docker_engine_the_hosts_share_is_reached_from_each_and_a_socket_box_is_forwarded(
    postgres, tmp_path, monkeypatch
):
    """Through ``docker exec`` on one engine (its ID) a container is every host's; a container
    reached through a socket in its host's data dir is that host's alone."""
    monkeypatch.setenv("NEXUS_DATABASE_URL", postgres.create_database(f"dk_{os.getpid()}_{time.monotonic_ns()}"))
    monkeypatch.setenv("NEXUS_DOCKER_TRANSPORT", "exec")
    monkeypatch.setenv("NEXUS_DOCKER_POOL_SIZE", "0")
    hosts = {}
    for host in ("alpha", "beta"):
        monkeypatch.setenv("NEXUS_HOST_ID", host)
        hosts[host] = SandboxManager(tmp_path / host, provider="docker", user_id="alice")
        assert hosts[host].service.fleet.host_id == host
    alpha, beta = hosts["alpha"], hosts["beta"]
    shared = alpha.sandbox_create("over-exec")["sandbox_id"]
    try:
        alpha.sandbox_run(shared, "python", "z = 6")
        assert beta.sandbox_run(shared, "python", "print(z * 7)")["stdout"] == "42\n"
        assert beta.service.fleet.holds(beta.service.store.get(shared))
    finally:
        beta.sandbox_stop(shared)
    assert alpha.sandbox_status(shared)["status"] == "stopped"

    # Spares are their maker's: beta neither sees nor takes the one alpha keeps warm.
    alpha_docker, beta_docker = alpha.service.provider("docker"), beta.service.provider("docker")
    alpha_docker.pool_size = 1
    try:
        assert alpha_docker.fill_pool() == 1
        assert len(alpha_docker._pool_containers()) == 1 and beta_docker._pool_containers() == []
    finally:
        alpha_docker.drain_pool()

    monkeypatch.setenv("NEXUS_DOCKER_TRANSPORT", "socket")
    mounted = alpha.sandbox_create("over-socket")["sandbox_id"]
    try:
        with pytest.raises(ProviderUnavailable, match=f"^Sandbox {mounted} is on host alpha, where no nexus server"):
            beta.sandbox_run(mounted, "python", "print(1)")
    finally:
        alpha.sandbox_stop(mounted)


def test_a_client_leaving_a_forwarded_run_cancels_it_on_the_holder_and_verify_names_the_host(fleet):
    sandbox_id = fleet.call("alpha", "POST", "/sandboxes", json={"name": "cancel-me"}).json()["sandbox_id"]
    code = "import time\nfor i in range(600):\n    n = i\n    print(i, flush=True)\n    time.sleep(0.1)"
    answer = fleet.call("beta", "POST", f"/sandboxes/{sandbox_id}/run", json={"code": code}, stream=True)
    lines = answer.iter_lines()
    printed = 0
    while printed < 3:
        printed += json.loads(next(lines))["type"] == "stdout"
    answer.close()  # the notebook's stop button: beta hangs up on alpha, alpha interrupts the cell
    started = time.monotonic()
    after = fleet.run("alpha", sandbox_id, "print(n)")
    waited = time.monotonic() - started
    assert waited < 10, f"the next run waited {waited:.1f} s: the forwarded one was not cancelled"
    assert 2 <= int(after["end"]["result"]["stdout"]) < 100  # interrupted early, its state kept

    # `list --verify` on beta: alpha's box is alpha's to check, and it says so.
    verified = fleet.cli("beta", "list", "--verify", "--json")
    (record,) = json.loads(verified.stdout)["sandboxes"]
    assert (record["verified"], record["provider_status"]) == (False, "on host alpha")
    assert json.loads(fleet.cli("alpha", "list", "--verify", "--json").stdout)["sandboxes"][0]["verified"] is True


def test_each_user_acts_as_themselves_through_forwarding_whatever_their_name(fleet):
    zoe, bob = "zoe-" + "z" * 24, "bob-" + "b" * 24
    fleet.add_user("zoë", zoe)  # a name outside ASCII crosses as percent-encoded UTF-8
    fleet.add_user("bob", bob)
    made = fleet.call("alpha", "POST", "/sandboxes", key=zoe, json={"name": "hers"})
    assert made.status_code == 201 and made.json()["user_id"] == "zoë"
    sandbox_id = made.json()["sandbox_id"]
    ran = fleet.call("beta", "POST", f"/sandboxes/{sandbox_id}/run", key=zoe, json={"code": "print('mine')"})
    assert ran.status_code == 200 and json.loads(ran.text.splitlines()[-1])["result"]["stdout"] == "mine\n"
    # Bob, through either server: another user's sandbox is not found, forwarded or not.
    for host in ("beta", "alpha"):
        refused = fleet.call(host, "POST", f"/sandboxes/{sandbox_id}/run", key=bob, json={"code": "print(1)"})
        assert refused.status_code == 404 and refused.json()["message"] == f"Sandbox not found: {sandbox_id}"
    assert fleet.call("beta", "POST", f"/sandboxes/{sandbox_id}/stop", key=zoe).json()["status"] == "stopped"
