"""The Jupyter server extension, through a real ``jupyter server`` on loopback: the REST API,
its auth, its errors, streaming, the reaper and the warm pool it hosts."""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from jupyter_servers import OPENAPI, JupyterServer, schema_errors

from conftest import destroy_everything_in, host_processes_matching
from nexus_jupyter import SandboxManager
from nexus_jupyter.handlers import route_table

pytestmark = pytest.mark.skipif("local" not in os.environ.get("NEXUS_TEST_PROVIDERS", "local"), reason="local only")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    data_dir = root / "data"
    running = JupyterServer(
        root,
        data_dir,
        ["--NexusSandboxApp.reap_interval=1", "--SandboxService.default_ttl=42"],
        # Docker as a provider that cannot work here: the 503 test.
        env={"DOCKER_HOST": f"unix://{root}/no-docker.sock"},
    )
    yield running
    running.stop()
    destroy_everything_in(data_dir)


@pytest.fixture
def sandbox(server):
    created = server.request("POST", "sandboxes", json={"name": "rest"})
    assert created.status_code == 201, created.text
    sandbox_id = created.json()["sandbox_id"]
    yield sandbox_id
    server.request("POST", f"sandboxes/{sandbox_id}/stop")


def run_events(server, sandbox_id: str, **body) -> list[dict]:
    response = server.request("POST", f"sandboxes/{sandbox_id}/run", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/x-ndjson"
    events = [json.loads(line) for line in response.text.splitlines()]
    for event in events:
        assert not schema_errors(event, "RunEvent"), (event, schema_errors(event, "RunEvent"))
    return events


def raw_request(server, method: str, path: str, body: bytes, length: int | None = None) -> socket.socket:
    """A request on a plain socket, so the test can walk away from it mid-answer (or mid-body)."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    raw.sendall(
        f"{method} /nexus/api/{path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: token {server.token}\r\nContent-Length: {length or len(body)}\r\n\r\n".encode()
        + body
    )
    return raw


def cli_json(server, *args) -> dict | list:
    done = subprocess.run(
        [sys.executable, "-m", "nexus_jupyter", "sandbox", *args, "--json"],
        env={**os.environ, "NEXUS_DATA_DIR": str(server.data_dir), "NEXUS_LOCAL_POOL_SIZE": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def cli_error(server, *args) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "nexus_jupyter", "sandbox", *args],
        env={**os.environ, "NEXUS_DATA_DIR": str(server.data_dir), "NEXUS_LOCAL_POOL_SIZE": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    return done.stderr.strip().removeprefix("Error: ")


# ---- installed, enabled, described
def test_pip_install_enables_the_extension_with_no_other_step():
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"], capture_output=True, text=True, timeout=120
    )
    text = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)
    assert re.search(r"nexus_jupyter\s+enabled", text), text
    assert re.search(r"nexus_jupyter 0\.\d+\.\d+\s+OK", text), text


def test_every_route_is_in_the_openapi_description_and_every_described_route_is_served():
    served = set()
    for pattern, handler in route_table("nexus/api"):
        path = pattern.removeprefix("nexus/api").rstrip("?").rstrip("/")
        path = re.sub(r"\(\?P<action>([a-z|]+)\)", "{action}", path)
        path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path)
        methods = {m.lower() for m in ("GET", "POST", "PUT", "DELETE", "PATCH") if m.lower() in vars(handler)}
        for method in methods:
            if "{action}" in path:
                served |= {(path.replace("{action}", action), method) for action in ("pause", "resume", "stop")}
            else:
                served.add((path, method))
    described = {(path, method) for path, item in OPENAPI["paths"].items() for method in item if method != "parameters"}
    assert served == described


def test_the_openapi_description_is_valid_openapi():
    from openapi_spec_validator import validate  # a test dependency (pyproject's "test" extra)

    validate(OPENAPI)


# ---- the API does what the CLI does, with the CLI's JSON
def test_create_status_list_run_stop_answer_the_clis_json(server):
    created = server.request("POST", "sandboxes", json={"name": "from rest", "agent_id": "agent-7"})
    assert created.status_code == 201
    record = created.json()
    assert not schema_errors(record, "Sandbox")
    assert created.headers["Location"] == f"/nexus/api/sandboxes/{record['sandbox_id']}"
    assert server.request("GET", "whoami").json() == {"user_id": getpass.getuser(), "is_admin": False}
    # the server's user is the sandbox owner, and its settings apply (--SandboxService.default_ttl=42)
    assert (record["user_id"], record["ttl_minutes"], record["agent_id"]) == (getpass.getuser(), 42, "agent-7")
    sandbox_id = record["sandbox_id"]

    by_rest = server.request("GET", f"sandboxes/{sandbox_id}").json()
    by_cli = cli_json(server, "status", sandbox_id)
    assert by_rest.keys() == by_cli.keys()
    assert {k: v for k, v in by_rest.items() if k != "uptime_seconds"} == {
        k: v for k, v in by_cli.items() if k != "uptime_seconds"
    }

    listed = server.request("GET", "sandboxes").json()
    assert not schema_errors(listed, "SandboxList")
    assert sandbox_id in [r["sandbox_id"] for r in listed["sandboxes"]]
    verified = server.request("GET", "sandboxes", params={"verify": "1"}).json()["sandboxes"]
    assert [r["provider_status"] for r in verified if r["sandbox_id"] == sandbox_id] == ["active"]

    events = run_events(server, sandbox_id, code="x = 41\nprint(x + 1)\nx")
    kinds = [e["type"] for e in events]
    assert [kind for i, kind in enumerate(kinds) if kinds[i - 1 : i] != [kind]] == ["start", "stdout", "result", "end"]
    assert "".join(e["text"] for e in events if e["type"] == "stdout") == "42\n"
    end = events[-1]["result"]
    assert (end["stdout"], end["exit_code"], end["results"][0]["data"]["text/plain"]) == ("42\n", 0, "41")
    again = run_events(server, sandbox_id, code="print(x)")  # state kept between requests
    assert again[-1]["result"]["stdout"] == "41\n"

    stopped = server.request("POST", f"sandboxes/{sandbox_id}/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert sandbox_id not in [r["sandbox_id"] for r in server.request("GET", "sandboxes").json()["sandboxes"]]
    everything = server.request("GET", "sandboxes", params={"all": "1"}).json()["sandboxes"]
    assert [r["status"] for r in everything if r["sandbox_id"] == sandbox_id] == ["stopped"]


def test_a_notebooks_kernel_names_its_sandbox_and_records_give_the_notebook_as_lab_names_it(server):
    root = server.root
    inside = server.request("POST", "sandboxes", json={"name": "nb", "notebook": str(root / "work" / "a.ipynb")}).json()
    outside = server.request("POST", "sandboxes", json={"name": "far", "notebook": "/elsewhere/b.ipynb"}).json()
    assert (inside["notebook"], inside["notebook_path"]) == (str(root / "work" / "a.ipynb"), "work/a.ipynb")
    assert outside["notebook"] == "/elsewhere/b.ipynb" and "notebook_path" not in outside
    sneaky = server.request("POST", "sandboxes", json={"name": "up", "notebook": f"{root}/../x.ipynb"}).json()
    assert "notebook_path" not in sneaky  # ".." leaves the root: no path under it is made up

    kernel = "5b0e9a53-2f44-4c55-8d8e-0c0a1b2c3d4e"
    attached = server.request("POST", f"sandboxes/{inside['sandbox_id']}/attach", json={"kernel_id": kernel})
    assert attached.status_code == 200 and attached.json()["kernel_id"] == kernel
    assert not schema_errors(attached.json(), "Sandbox")
    mine = server.request("GET", "sandboxes", params={"kernel_id": kernel}).json()["sandboxes"]
    assert [r["sandbox_id"] for r in mine] == [inside["sandbox_id"]]
    # %sandbox use: the kernel's cells move to another sandbox, which the lookup then finds
    server.request("POST", f"sandboxes/{outside['sandbox_id']}/attach", json={"kernel_id": kernel})
    mine = server.request("GET", "sandboxes", params={"kernel_id": kernel}).json()["sandboxes"]
    assert [r["sandbox_id"] for r in mine] == [outside["sandbox_id"]]
    assert "kernel_id" not in server.request("GET", f"sandboxes/{inside['sandbox_id']}").json()

    missing = server.request("POST", f"sandboxes/{inside['sandbox_id']}/attach", json={"notebook": "/x"})
    assert (missing.status_code, missing.json()["message"]) == (400, "kernel_id is required (the body's 'kernel_id')")
    for record in (inside, outside, sneaky):
        server.request("POST", f"sandboxes/{record['sandbox_id']}/stop")
    stopped = server.request("POST", f"sandboxes/{inside['sandbox_id']}/attach", json={"kernel_id": kernel})
    assert stopped.status_code == 409, stopped.text
    assert server.request("GET", f"sandboxes/{inside['sandbox_id']}").json()["stop_reason"] == "stopped"


def test_a_run_streams_each_line_as_it_is_printed_and_ends_with_the_error(server, sandbox):
    code = "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second', flush=True)\n1/0"
    arrived = {}
    with server.request("POST", f"sandboxes/{sandbox}/run", json={"code": code}, stream=True) as response:
        for line in response.iter_lines():
            event = json.loads(line)
            if event["type"] == "stdout" and event["text"].strip():
                arrived[event["text"].strip()] = time.monotonic()
            last = event
            if event["type"] == "error":
                assert (event["name"], event["value"]) == ("ZeroDivisionError", "division by zero")
    assert arrived["second"] - arrived["first"] > 1.0  # the first line came while the code still slept
    assert last["type"] == "end" and last["result"]["exit_code"] == 1


def test_a_run_past_its_timeout_ends_with_the_seeds_message_and_the_sandbox_still_works(server, sandbox):
    events = run_events(server, sandbox, code="import time\nprint('started', flush=True)\ntime.sleep(30)", timeout=1)
    end = events[-1]
    assert end["timed_out"] is True
    assert end["message"] == "Code execution exceeded 1 second timeout"
    assert end["result"]["stdout"] == "started\n"
    assert run_events(server, sandbox, code="print('fine')")[-1]["result"]["stdout"] == "fine\n"


def test_a_client_that_goes_away_cancels_its_run_and_the_next_cell_does_not_wait(server, sandbox):
    code = "import time\nfor i in range(600):\n    n = i\n    print(i, flush=True)\n    time.sleep(0.1)"
    with raw_request(server, "POST", f"sandboxes/{sandbox}/run", json.dumps({"code": code}).encode()) as raw:
        received = b""
        while received.count(b'"stdout"') < 3:
            chunk = raw.recv(4096)
            assert chunk, received
            received += chunk
    started = time.monotonic()
    events = run_events(server, sandbox, code="print(n)")
    waited = time.monotonic() - started
    assert waited < 10, f"the next run waited {waited:.1f} s: the abandoned one was not cancelled"
    n = int(events[-1]["result"]["stdout"])
    assert 2 <= n < 100  # interrupted early, its state kept
    # a fresh process is killed too, not left to run out its minute
    marker = "61.2345"  # sleep's command line: the process is findable on the host
    body = json.dumps({"code": f"echo go; sleep {marker}", "language": "bash"}).encode()
    with raw_request(server, "POST", f"sandboxes/{sandbox}/run", body) as raw:
        received = b""
        while b'"go' not in received:
            received += raw.recv(4096)
        deadline = time.monotonic() + 10
        while not host_processes_matching(marker) and time.monotonic() < deadline:
            time.sleep(0.05)  # bash forks sleep just after the echo
        assert host_processes_matching(marker)
    deadline = time.monotonic() + 15
    while host_processes_matching(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not host_processes_matching(marker)


def test_a_long_silent_run_keeps_the_server_active_for_idle_culling(server, sandbox):
    response = {}

    def last_activity() -> float:
        status = requests.get(f"{server.url}/api/status", headers=server.headers(), timeout=10).json()
        from datetime import datetime

        return datetime.fromisoformat(status["last_activity"].replace("Z", "+00:00")).timestamp()

    runner = threading.Thread(
        target=lambda: response.update(events=run_events(server, sandbox, code="import time; time.sleep(4)"))
    )
    runner.start()
    time.sleep(3.5)
    seen = last_activity()
    runner.join(30)
    assert response["events"][-1]["result"]["exit_code"] == 0
    # /api/status itself does not count as activity: only the run (marked each reaper pass) moved it
    assert time.time() - seen < 2.5


# ---- errors: a status that says what happened and the CLI's one line
def test_errors_have_the_status_and_the_clis_one_line(server, sandbox):
    bad_ttl = server.request("POST", "sandboxes", json={"name": "x", "ttl_minutes": 0})
    assert bad_ttl.status_code == 400
    assert bad_ttl.json()["message"] == cli_error(server, "create", "x", "--ttl", "0")
    assert not schema_errors(bad_ttl.json(), "Error")

    assert server.request("POST", "sandboxes", data="{not json").status_code == 400
    assert server.request("POST", "sandboxes", json=["a"]).status_code == 400
    unknown = server.request("POST", "sandboxes", json={"name": "x", "colour": "red"})
    assert (unknown.status_code, unknown.json()["message"]) == (
        400,
        "unknown field 'colour' (allowed: agent_id, allow_internet, cpus, disk_mb, env, max_processes, memory, "
        "memory_mb, name, notebook, provider, template_id, tenant_id, ttl_minutes)",
    )
    assert server.request("POST", "sandboxes", json={"ttl_minutes": 5}).status_code == 400
    assert server.request("POST", "sandboxes", json={"name": "x", "provider": "nope"}).status_code == 400
    assert (
        server.request("POST", f"sandboxes/{sandbox}/run", json={"code": "1", "language": "cobol"}).status_code == 400
    )
    assert server.request("POST", f"sandboxes/{sandbox}/run", json={"code": "1", "timeout": -1}).status_code == 400
    assert server.request("GET", "sandboxes", params={"verify": "maybe"}).status_code == 400

    missing = server.request("GET", "sandboxes/sb_doesnotexist0000")
    assert (missing.status_code, missing.json()["message"]) == (404, "Sandbox not found: sb_doesnotexist0000")
    assert missing.json()["message"] == cli_error(server, "status", "sb_doesnotexist0000")
    assert server.request("POST", "sandboxes/sb_doesnotexist0000/run", json={"code": "1"}).status_code == 404
    assert server.request("GET", f"sandboxes/{sandbox}/files/no/such/file").status_code == 404

    assert server.request("POST", f"sandboxes/{sandbox}/pause").status_code == 200
    paused_run = server.request("POST", f"sandboxes/{sandbox}/run", json={"code": "1"})
    assert (paused_run.status_code, paused_run.json()["message"]) == (
        409,
        f"Sandbox {sandbox} is paused: resume it first",
    )
    assert server.request("POST", f"sandboxes/{sandbox}/pause").status_code == 409
    assert server.request("POST", f"sandboxes/{sandbox}/resume").status_code == 200

    no_docker = server.request("POST", "sandboxes", json={"name": "d", "provider": "docker"})
    assert no_docker.status_code == 503, no_docker.text
    assert "docker" in no_docker.json()["message"].lower()
    # none of these left a live sandbox behind
    names = [r["name"] for r in server.request("GET", "sandboxes").json()["sandboxes"]]
    assert names == ["rest"]
    assert "Traceback" not in server.log()


# ---- auth
def test_no_token_is_403_and_a_cookie_write_without_xsrf_is_403(server):
    for method, path in (("GET", "sandboxes"), ("POST", "sandboxes"), ("GET", "sandboxes/x/metrics")):
        assert requests.request(method, f"{server.api}/{path}", timeout=30).status_code == 403
    assert server.request("GET", "sandboxes", headers=server.headers("wrong-token")).status_code == 403

    browser = requests.Session()
    assert browser.get(f"{server.url}/api/me", params={"token": server.token}, timeout=30).status_code == 200
    browser.get(f"{server.url}/login", timeout=30)  # what a page load does: the _xsrf cookie
    assert browser.get(f"{server.api}/sandboxes", timeout=30).status_code == 200  # a read needs the cookie only
    forged = browser.post(f"{server.api}/sandboxes", json={"name": "csrf"}, timeout=30)
    assert forged.status_code == 403
    with_xsrf = browser.post(
        f"{server.api}/sandboxes",
        json={"name": "cookie"},
        headers={"X-XSRFToken": browser.cookies["_xsrf"]},
        timeout=60,
    )
    assert with_xsrf.status_code == 201
    server.request("POST", f"sandboxes/{with_xsrf.json()['sandbox_id']}/stop")
    names = [r["name"] for r in server.request("GET", "sandboxes", params={"all": "1"}).json()["sandboxes"]]
    assert "csrf" not in names


# ---- files and metrics
def test_files_stream_both_ways_and_a_cut_upload_leaves_nothing(server, sandbox):
    payload = os.urandom(3 << 20)
    written = server.request("PUT", f"sandboxes/{sandbox}/files/data/blob.bin", data=payload)
    assert written.status_code == 201, written.text
    assert written.json() == {"path": "/home/user/data/blob.bin", "size": len(payload)}
    read = server.request("GET", f"sandboxes/{sandbox}/files/data/blob.bin")
    assert read.status_code == 200 and read.content == payload
    assert read.headers["Content-Disposition"] == "attachment; filename*=UTF-8''blob.bin"
    listing = server.request("GET", f"sandboxes/{sandbox}/files", params={"path": "data"}).json()
    assert [(e["name"], e["size"]) for e in listing] == [("blob.bin", len(payload))]
    assert not schema_errors(listing[0], "FileEntry")
    # the code in the box sees what was uploaded
    events = run_events(server, sandbox, code="print(len(open('data/blob.bin','rb').read()))")
    assert events[-1]["result"]["stdout"] == f"{len(payload)}\n"

    with raw_request(server, "PUT", f"sandboxes/{sandbox}/files/data/cut.bin", os.urandom(1 << 20), 4 << 20):
        time.sleep(0.5)  # then the client is gone, 3 MiB short
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        names = [e["name"] for e in server.request("GET", f"sandboxes/{sandbox}/files", params={"path": "data"}).json()]
        if names == ["blob.bin"]:
            break
        time.sleep(0.2)
    assert names == ["blob.bin"]  # neither cut.bin nor its partial

    to_nowhere = server.request("PUT", "sandboxes/sb_doesnotexist0000/files/x.bin", data=payload)
    assert to_nowhere.status_code == 404
    with raw_request(server, "PUT", f"sandboxes/{sandbox}/files/huge.bin", b"", 300 << 20) as raw:
        answer = raw.recv(4096)  # before any of the body was sent
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"over the 256 MiB limit of a transfer (max_file_mb)" in answer


def test_metrics_count_what_the_sandbox_uses(server, sandbox):
    run_events(server, sandbox, code="blob = bytearray(64 << 20)")
    metrics = server.request("GET", f"sandboxes/{sandbox}/metrics").json()
    assert not schema_errors(metrics, "Metrics")
    assert metrics["memory_peak_bytes"] >= 64 << 20
    assert metrics["processes"] >= 1 and metrics["cpu_seconds"] > 0


# ---- the reaper lives in the server
def test_the_server_reaps_expired_vanished_and_orphaned_boxes_with_no_client_calling(server):
    other = SandboxManager(server.data_dir, user_id=getpass.getuser(), warm_pool=0)
    expiring = other.sandbox_create("expiring")["sandbox_id"]
    vanishing = other.sandbox_create("vanishing")["sandbox_id"]
    orphaned = other.sandbox_create("orphaned")["sandbox_id"]
    pids = {sid: other.provider("local").host_pids(sid, other.store.get(sid)["provider_state"]) for sid in
            (expiring, vanishing, orphaned)}  # fmt: skip
    other.store.update(expiring, {"expires_at": time.time() - 1})
    for pid in pids[vanishing]:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    other.store.update(orphaned, {"status": "stopped", "stopped_at": time.time(), "expires_at": None})

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = {sid: other.store.get(sid) for sid in pids}
        alive = [pid for sid in pids for pid in pids[sid] if _alive(pid)]
        if all(row["status"] == "stopped" for row in rows.values()) and not alive:
            break
        time.sleep(0.3)
    assert rows[expiring]["stop_reason"] == "expired"
    assert rows[vanishing]["stop_reason"] == "vanished"
    assert not alive, f"box processes outlived the reaper: {alive}"
    assert not (server.data_dir / "boxes" / "local" / orphaned).exists()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def team_server(root, keys_file, *settings: str) -> JupyterServer:
    """A Jupyter server whose users are API keys (as nexus serve's), its sandboxes in ``root/data``."""
    return JupyterServer(
        root,
        root / "data",
        [
            "--ServerApp.identity_provider_class=nexus_jupyter.auth.ApiKeyIdentityProvider",
            "--ServerApp.authorizer_class=nexus_jupyter.auth.SandboxesOnlyAuthorizer",
            f"--ApiKeyIdentityProvider.keys_file={keys_file}",
            *settings,
        ],
    )


# ---- one user never sees another's (API keys: users the server can tell apart)
def test_users_with_their_own_keys_see_and_touch_only_their_own_sandboxes(tmp_path):
    keys = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef", "root": "admin-0123456789abcdef"}
    keys_file = tmp_path / "keys"
    keys_file.write_text(
        f"{keys['alice']} alice\n"
        f"sha256:{__import__('hashlib').sha256(keys['bob'].encode()).hexdigest()} bob  # stored hashed\n"
        f"{keys['root']} ops admin\n"
    )
    team = team_server(tmp_path, keys_file, "--SandboxService.max_sandboxes_per_user=1")
    try:

        def as_user(user, method, path, **kwargs):
            return team.request(method, path, headers={"Authorization": f"Bearer {keys[user]}"}, **kwargs)

        mine = as_user("alice", "POST", "sandboxes", json={"name": "alices"}).json()
        assert mine["user_id"] == "alice"
        second = as_user("alice", "POST", "sandboxes", json={"name": "one too many"})
        assert (second.status_code, second.json()["message"]) == (
            429,
            "alice already has 1 live sandbox, the most a user may hold (max_sandboxes_per_user): stop one first",
        )
        assert [r["name"] for r in as_user("bob", "GET", "sandboxes").json()["sandboxes"]] == []
        for method, path in (
            ("GET", f"sandboxes/{mine['sandbox_id']}"),
            ("POST", f"sandboxes/{mine['sandbox_id']}/stop"),
            ("GET", f"sandboxes/{mine['sandbox_id']}/files/x"),
        ):
            assert as_user("bob", method, path).status_code == 404
        assert as_user("bob", "GET", "sandboxes", params={"user": "alice"}).status_code == 403
        assert as_user("bob", "POST", f"sandboxes/{mine['sandbox_id']}/run", json={"code": "1"}).status_code == 404
        assert as_user("root", "GET", "whoami").json() == {"user_id": "ops", "is_admin": True}
        assert as_user("bob", "GET", "whoami").json() == {"user_id": "bob", "is_admin": False}
        admin_view = as_user("root", "GET", "sandboxes", params={"user": "alice"}).json()["sandboxes"]
        assert [r["sandbox_id"] for r in admin_view] == [mine["sandbox_id"]]
        everyone = as_user("root", "GET", "sandboxes", params={"all_users": "1"}).json()["sandboxes"]
        assert [(r["user_id"], r["name"]) for r in everyone] == [("alice", "alices")]
        refused = as_user("bob", "GET", "sandboxes", params={"all_users": "1"})
        assert (refused.status_code, refused.json()["message"]) == (
            403,
            "only admins can list every user's sandboxes (you are bob)",
        )
        assert team.request("GET", "sandboxes", headers={"Authorization": "Bearer not-a-key-at-all"}).status_code == 403
        assert team.request("GET", "sandboxes", headers=team.headers()).status_code == 403  # Jupyter's token: no
        assert keys["alice"] not in team.log()
    finally:
        team.stop()
        destroy_everything_in(tmp_path / "data")


# ---- the warm pool the server keeps, claimed by another process
def test_the_server_keeps_a_warm_box_that_a_kernel_claims_and_refills_it(tmp_path):
    data_dir = tmp_path / "data"
    pooled = JupyterServer(tmp_path, data_dir, ["--NexusSandboxApp.reap_interval=1", "--LocalProvider.pool_size=1"])
    try:
        pool_dir = data_dir / "boxes" / "local"

        def ready_slots():
            return sorted(p.name for p in pool_dir.glob("pool-*") if (p / "pool.json").exists())

        deadline = time.monotonic() + 60
        while not ready_slots() and time.monotonic() < deadline:
            time.sleep(0.2)
        slots = ready_slots()
        assert len(slots) == 1, "the server did not start a warm box"
        # a notebook kernel: its own process, its own manager, pool off for itself
        kernel = SandboxManager(data_dir, warm_pool=0)
        started = time.monotonic()
        record = kernel.sandbox_create("notebook:analysis.ipynb")
        result = kernel.sandbox_run(record["sandbox_id"], "python", "print(6 * 7)")
        first_cell = time.monotonic() - started
        assert result["stdout"] == "42\n"
        assert kernel.store.get(record["sandbox_id"])["provider_state"]["cgroup"] == slots[0]
        assert first_cell < 5  # a cold box would be ~0.5 s here; this is a sanity bound, not a benchmark
        deadline = time.monotonic() + 60
        while (not ready_slots() or ready_slots() == slots) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready_slots() and ready_slots() != slots, "the server did not refill its pool"
        assert kernel.sandbox_list()["sandboxes"][0]["sandbox_id"] == record["sandbox_id"]  # pool boxes never count
        spare = ready_slots()
        pooled.stop()
        # the spare box went with the server; the kernel's sandbox, which has an owner, did not
        assert not any(p.name.startswith("pool-") for p in pool_dir.iterdir()), sorted(pool_dir.iterdir())
        assert not [pid for slot in spare for pid in host_processes_matching(str(pool_dir / slot))]
        assert kernel.sandbox_run(record["sandbox_id"], "python", "print('still here')")["stdout"] == "still here\n"
    finally:
        pooled.stop()
        destroy_everything_in(data_dir)


# ---- one user cannot starve the others
def test_one_users_stuck_calls_and_stalled_uploads_do_not_hold_up_another_user(tmp_path):
    keys = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef"}
    keys_file = tmp_path / "keys"
    keys_file.write_text("".join(f"{key} {user}\n" for user, key in keys.items()))
    team = team_server(
        tmp_path,
        keys_file,
        "--NexusSandboxApp.max_workers=4",
        "--NexusSandboxApp.max_streams=4",
        "--NexusSandboxApp.per_user_calls=2",
        "--NexusSandboxApp.per_user_streams=2",
        "--NexusSandboxApp.transfer_idle_timeout=3",
    )
    stalled: list[socket.socket] = []
    try:

        def as_user(user, method, path, **kwargs):
            return team.request(method, path, headers={"Authorization": f"Bearer {keys[user]}"}, **kwargs)

        alices = as_user("alice", "POST", "sandboxes", json={"name": "a"}).json()["sandbox_id"]
        bobs = as_user("bob", "POST", "sandboxes", json={"name": "b"}).json()["sandbox_id"]
        # bob's uploads that never finish: more than the whole streaming pool
        for n in range(6):
            raw = socket.create_connection(("127.0.0.1", team.port), timeout=30)
            raw.sendall(
                f"PUT /nexus/api/sandboxes/{bobs}/files/slow{n} HTTP/1.1\r\nHost: 127.0.0.1:{team.port}\r\n"
                f"Authorization: Bearer {keys['bob']}\r\nContent-Length: 1000\r\n\r\nabc".encode()
            )
            stalled.append(raw)
        time.sleep(1)
        started = time.monotonic()
        answer = as_user("alice", "POST", f"sandboxes/{alices}/run", json={"code": "print('mine')"})
        assert answer.status_code == 200 and '"mine\\n"' in answer.text
        assert time.monotonic() - started < 5, "alice waited behind bob's stalled uploads"
        # bob's own run waits for his slots, which his stalled uploads give up after 3 s
        started = time.monotonic()
        own = as_user("bob", "POST", f"sandboxes/{bobs}/run", json={"code": "print('bob')"})
        assert own.status_code == 200 and time.monotonic() - started < 20
        # bob's box with its agent's socket moved away: each call on it waits out the connect
        as_user(
            "bob",
            "POST",
            f"sandboxes/{bobs}/run",
            json={"code": "mv /run/nexus/agent.sock /run/nexus/gone", "language": "bash"},
        )

        hanging = [
            threading.Thread(target=as_user, args=("bob", "GET", f"sandboxes/{bobs}/files"), daemon=True)
            for _ in range(8)
        ]
        for thread in hanging:
            thread.start()
        time.sleep(1)
        started = time.monotonic()
        listed = as_user("alice", "GET", "sandboxes")
        assert listed.status_code == 200 and time.monotonic() - started < 5, "alice waited behind bob's stuck box"
    finally:
        for raw in stalled:
            raw.close()
        team.stop()
        destroy_everything_in(tmp_path / "data")


# ---- bad input: 400 with one line, never a 500
def test_malformed_bodies_and_values_are_400s_with_one_line(server, sandbox):
    cases = [
        ("POST", "sandboxes", '{"name": "x", "provider": ["local"]}', "provider must be text, got list"),
        ("POST", "sandboxes", '{"name": "\\ud800"}', "the sandbox name is not valid text: it holds a lone surrogate"),
        ("POST", "sandboxes", '{"name": "x", "agent_id": {"a": 1}}', "agent_id must be text, got dict"),
        (
            "POST",
            "sandboxes",
            '{"name": "x", "tenant_id": "\\udfff"}',
            "tenant_id is not valid text: it holds a lone surrogate",
        ),
        ("POST", "sandboxes", '{"name": ' + "[" * 100000 + "]" * 100000 + "}", "the request body is nested too deeply"),
        (
            "POST",
            f"sandboxes/{sandbox}/run",
            '{"code": "print(1)\\ud800"}',
            "code is not valid text: it holds a lone surrogate",
        ),
        ("POST", f"sandboxes/{sandbox}/run", '{"code": "1", "filename": 7}', "filename must be text"),
    ]
    for method, path, body, message in cases:
        answer = server.request(
            method, path, data=body.encode(), headers={**server.headers(), "Content-Type": "application/json"}
        )
        assert (answer.status_code, answer.json()["message"]) == (400, message), body[:60]
    assert run_events(server, sandbox, code="print('still fine')")[-1]["result"]["stdout"] == "still fine\n"
    assert "Traceback" not in server.log()


# ---- a cancelled run that was still waiting its turn never runs
def test_a_run_cancelled_while_it_waited_for_the_previous_one_never_runs(server, sandbox):

    first = threading.Thread(target=run_events, args=(server, sandbox), kwargs={"code": "import time; time.sleep(3)"})
    first.start()
    time.sleep(0.5)
    queued = json.dumps({"code": "open('queued-ran', 'w').write('ran')"}).encode()
    with raw_request(server, "POST", f"sandboxes/{sandbox}/run", queued):
        time.sleep(1)  # it waits behind the first; then its client goes
    first.join(30)
    time.sleep(1)
    after = run_events(server, sandbox, code="import os; print(os.path.exists('queued-ran'))")
    assert after[-1]["result"]["stdout"] == "False\n"
