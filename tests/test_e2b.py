"""The E2B provider: what is E2B's own (keys, quotas, templates, its timeout, pause on its
plans, its listing), through the real SDK against the local double of E2B's cloud
(tests/e2b_double).  What every provider does is in test_conformance.py, which runs on
E2B too; the live test against E2B itself is test_e2b_live.py.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import httpx
import pytest
from e2b_double import NO_PAUSE_KEY, E2BDouble
from jupyter_servers import free_port

from conftest import PROVIDERS
from nexus_jupyter import SandboxError, SandboxManager, SandboxTimeout
from nexus_jupyter.agent_client import MAX_RESULTS_BYTES
from nexus_jupyter.errors import ProviderUnavailable

pytestmark = pytest.mark.skipif("local" not in PROVIDERS, reason="the double runs its sandboxes on the local provider")
SEED_PAUSE_MESSAGE = "E2B doesn't support pause/resume. Use stop to destroy the sandbox."


@pytest.fixture
def e2b(data_dir, e2b_double, monkeypatch):
    """The environment of a user of E2B: the key, and the SDK pointed at the double."""
    for key, value in e2b_double.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("NEXUS_SANDBOX_PROVIDER", "e2b")
    monkeypatch.delenv("E2B_TEMPLATE_ID", raising=False)
    return e2b_double


@pytest.fixture
def nx(e2b, data_dir) -> SandboxManager:
    return SandboxManager(data_dir, provider="e2b")


def nexus(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real CLI, with this test's environment (and ``env`` on top)."""
    return subprocess.run(
        [sys.executable, "-m", "nexus_jupyter", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def e2b_sandbox(nx: SandboxManager, sandbox_id: str):
    """What E2B itself says about our sandbox (``Sandbox.get_info``, through the SDK)."""
    from e2b_code_interpreter import Sandbox

    return Sandbox.get_info(nx.store.get(sandbox_id)["provider_state"]["e2b_id"])


def one_line_error(completed: subprocess.CompletedProcess) -> str:
    assert completed.returncode != 0, completed
    assert "Traceback" not in completed.stderr, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    return lines[0]


# ---- errors: one line, the store consistent


def test_no_key_gives_the_seed_message_and_leaves_no_live_row(e2b, data_dir):
    created = nexus("sandbox", "create", "keyless", env={"E2B_API_KEY": ""})
    line = one_line_error(created)
    assert line.startswith("Error: E2B API key required")
    assert "E2B_API_KEY" in line.removeprefix("Error: E2B API key required")  # and how to set it
    assert json.loads(nexus("sandbox", "list", "--json").stdout)["sandboxes"] == []
    [row] = json.loads(nexus("sandbox", "list", "--all", "--json").stdout)["sandboxes"]
    assert row["status"] == "stopped"  # a failed create, kept in the history


@pytest.mark.parametrize(
    ("env", "args", "expected", "exit_code"),
    [
        ({"E2B_API_KEY": "not-a-key"}, [], "Error: E2B rejected the API key (E2B_API_KEY)", 1),
        ({}, ["--template", "no-such-template"], "Error: E2B has no template 'no-such-template'", 2),
        ({"E2B_TEMPLATE_ID": "no-such-template"}, [], "Error: E2B has no template 'no-such-template'", 2),
    ],
    ids=["bad-key", "unknown-template", "unknown-template-from-env"],
)
def test_a_refused_create_is_one_line_and_leaves_no_live_row(e2b, env, args, expected, exit_code):
    created = nexus("sandbox", "create", "refused", *args, env=env)
    assert one_line_error(created).startswith(expected)
    assert created.returncode == exit_code
    assert json.loads(nexus("sandbox", "list", "--json").stdout)["sandboxes"] == []


def a_key(plan: str) -> str:
    """A key of a team of its own on the double, whose prefix names how E2B treats it (e2b_double.cloud.Team)."""
    return f"e2b_{plan}_{secrets.token_hex(16)}"


def change_plan(e2b, key: str, *, pause: bool) -> None:
    """The team of ``key`` moves to a plan with pause, or without (a knob of the double's own)."""
    answer = httpx.post(f"{e2b.url}/_double/plan", json={"pause": pause}, headers={"X-API-KEY": key})
    assert answer.status_code == 204, answer.text


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        ("busy", "Error: E2B is busy and could not create a sandbox: try again shortly"),
        (
            "garbled",
            "Error: E2B could not create a sandbox: its answer was not what E2B sends (a proxy or an outage page?): "
            "JSONDecodeError: ",
        ),
    ],
    ids=["busy", "unreadable-answer"],
)
def test_a_failing_e2b_is_one_line_and_leaves_no_live_row(e2b, plan, expected):
    created = nexus("sandbox", "create", "failed", env={"E2B_API_KEY": a_key(plan)})
    assert one_line_error(created).startswith(expected)
    assert json.loads(nexus("sandbox", "list", "--json").stdout)["sandboxes"] == []


def test_an_e2b_that_stalls_is_one_line_saying_it_did_not_answer_in_time(e2b, nx, monkeypatch):
    import e2b.connection_config

    # The SDK's request timeout is 60 s (the provider keeps it); the double's slow team stalls 5 s.
    monkeypatch.setattr(e2b.connection_config, "REQUEST_TIMEOUT", 1.0)
    monkeypatch.setenv("E2B_API_KEY", a_key("slow"))
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as failed:
        nx.sandbox_create("stalled")
    assert time.monotonic() - started < 4.5  # the SDK's deadline (twice its timeout), not the stall
    assert str(failed.value).startswith("E2B did not answer in time when asked to create a sandbox: ")
    assert len(str(failed.value).splitlines()) == 1
    assert nx.sandbox_list()["sandboxes"] == []


def test_an_unwritable_store_id_is_one_line_and_leaves_no_live_row(e2b, data_dir):
    (data_dir / "e2b-store-id").mkdir(parents=True)  # root writes through chmod: a directory in its place
    created = nexus("sandbox", "create", "no-store-id")
    assert one_line_error(created).startswith(f"Error: cannot keep the E2B store id in {data_dir / 'e2b-store-id'}: ")
    assert json.loads(nexus("sandbox", "list", "--json").stdout)["sandboxes"] == []


def test_an_unreachable_e2b_is_one_line_saying_so(e2b):
    dead = f"http://127.0.0.1:{free_port()}"
    created = nexus("sandbox", "create", "offline", env={"E2B_API_URL": dead, "E2B_SANDBOX_URL": dead})
    assert one_line_error(created).startswith(f"Error: cannot reach E2B ({dead}) to create a sandbox")


def test_the_teams_sandbox_quota_is_one_line_and_the_first_sandbox_keeps_working(tmp_path, data_dir, monkeypatch):
    double = E2BDouble(tmp_path / "small-team", max_sandboxes_per_team=1)
    try:
        for key, value in double.env().items():
            monkeypatch.setenv(key, value)
        nx = SandboxManager(data_dir, provider="e2b")
        first = nx.sandbox_create("first")["sandbox_id"]
        second = nexus("sandbox", "create", "second", "--provider", "e2b")
        line = one_line_error(second)
        assert "E2B refused to create a sandbox: " in line and "maximum number of concurrent E2B sandboxes" in line
        assert nx.sandbox_run(first, "python", "print('still here')")["stdout"] == "still here\n"
        assert [s["name"] for s in nx.sandbox_list()["sandboxes"]] == ["first"]
        nx.sandbox_stop(first)
    finally:
        double.stop()


def test_pause_refused_by_the_plan_gives_the_seed_message_and_leaves_the_row(e2b, nx, monkeypatch):
    monkeypatch.setenv("E2B_API_KEY", NO_PAUSE_KEY)
    sandbox = nx.sandbox_create("no-pause")["sandbox_id"]
    nx.sandbox_run(sandbox, "python", "kept = 1")
    before = nx.store.get(sandbox)
    paused = nexus("sandbox", "pause", sandbox)
    assert one_line_error(paused) == f"Error: {SEED_PAUSE_MESSAGE}"
    assert nx.store.get(sandbox) == before  # unchanged
    assert nx.sandbox_run(sandbox, "python", "print(kept)")["stdout"] == "1\n"
    nx.sandbox_stop(sandbox)


def test_resume_refused_by_the_plan_gives_the_seed_message_and_the_sandbox_stays_paused(e2b, nx, monkeypatch):
    key = a_key("test")
    monkeypatch.setenv("E2B_API_KEY", key)
    sandbox = nx.sandbox_create("downgraded")["sandbox_id"]
    nx.sandbox_run(sandbox, "python", "kept = 1")
    nx.sandbox_pause(sandbox)
    change_plan(e2b, key, pause=False)  # the team moved to a plan without pause meanwhile
    before = nx.store.get(sandbox)
    resumed = nexus("sandbox", "resume", sandbox)
    assert one_line_error(resumed) == f"Error: {SEED_PAUSE_MESSAGE}"
    assert nx.store.get(sandbox) == before and before["status"] == "paused"
    assert e2b_sandbox(nx, sandbox).state.value == "paused"
    change_plan(e2b, key, pause=True)
    nx.sandbox_resume(sandbox)
    assert nx.sandbox_run(sandbox, "python", "print(kept)")["stdout"] == "1\n"
    nx.sandbox_stop(sandbox)


def test_the_api_key_is_never_stored_logged_or_shown(e2b, nx, data_dir):
    key = os.environ["E2B_API_KEY"]
    outputs = [nexus("sandbox", "create", "secret-keeper", "--json")]
    sandbox = json.loads(outputs[0].stdout)["sandbox_id"]
    outputs += [
        nexus("sandbox", "run", sandbox, "-c", "print('hi')"),
        nexus("sandbox", "status", sandbox, "--json"),
        nexus("sandbox", "list", "--verify"),
        nexus("sandbox", "create", "bad", env={"E2B_API_KEY": key + "x"}),
        nexus("sandbox", "stop", sandbox),
        nexus("sandbox", "reap"),
    ]
    for completed in outputs:
        assert key not in completed.stdout + completed.stderr
    stored = [path for path in data_dir.rglob("*") if path.is_file() and key.encode() in path.read_bytes()]
    assert stored == []


# ---- E2B's timeout mirrors the TTL; what E2B ends shows as ended


def end_at(nx, sandbox) -> float:
    return e2b_sandbox(nx, sandbox).end_at.timestamp()


def test_e2bs_timeout_follows_the_ttl_and_every_run_pushes_it(e2b, nx):
    sandbox = nx.sandbox_create("mirrored", ttl_minutes=10)["sandbox_id"]
    expires = nx.store.get(sandbox)["expires_at"]
    assert expires + 55 <= end_at(nx, sandbox) <= expires + 65  # the TTL and the grace a box gets
    time.sleep(2)
    nx.sandbox_run(sandbox, "bash", "true", timeout=30)
    expires = nx.store.get(sandbox)["expires_at"]
    assert expires + 55 <= end_at(nx, sandbox) <= expires + 30 + 65  # and the run's time, pushed before it
    nx.sandbox_stop(sandbox)


def test_a_ttl_beyond_e2bs_longest_timeout_asks_e2b_for_its_longest(e2b, nx):
    sandbox = nx.sandbox_create("long-lived", ttl_minutes=3 * 24 * 60)["sandbox_id"]
    assert abs(end_at(nx, sandbox) - (time.time() + 24 * 3600)) < 60  # E2B ends it after 24 h idle at most
    nx.sandbox_run(sandbox, "python", "1")  # and a run's push stays within it too
    assert nx.sandbox_run(sandbox, "python", "print('alive')")["stdout"] == "alive\n"
    nx.sandbox_stop(sandbox)


def test_a_short_run_never_cuts_the_time_of_a_long_one(e2b, nx):
    sandbox = nx.sandbox_create("overlapping", ttl_minutes=1)["sandbox_id"]
    long_run = threading.Thread(target=nx.sandbox_run, args=(sandbox, "bash", "sleep 3"), kwargs={"timeout": 600})
    long_run.start()
    time.sleep(1)
    nx.sandbox_run(sandbox, "bash", "true", timeout=1)  # pushes TTL + 1 s: less than the long run's push
    assert end_at(nx, sandbox) >= time.time() + 600  # E2B's deadline did not move back
    long_run.join()
    nx.sandbox_stop(sandbox)


def test_file_transfers_push_e2bs_timeout_too(e2b, nx):
    sandbox = nx.sandbox_create("files-only", ttl_minutes=1)["sandbox_id"]
    before = end_at(nx, sandbox)
    time.sleep(1.5)
    nx.sandbox_write_file(sandbox, "a.txt", b"x")
    assert end_at(nx, sandbox) >= before + 1
    assert [entry["name"] for entry in nx.sandbox_list_files(sandbox, ".")] == ["a.txt"]
    nx.sandbox_stop(sandbox)


def test_an_expired_e2b_sandbox_out_of_reach_does_not_break_other_commands(e2b, nx, monkeypatch):
    sandbox = nx.sandbox_create("soon-expired", ttl_minutes=1)["sandbox_id"]
    nx.store.update(sandbox, {"expires_at": time.time() - 1})  # its idle time ran out
    monkeypatch.setenv("E2B_API_KEY", "")  # a shell without the key
    local = SandboxManager(nx.data_dir, provider="local")
    other = local.sandbox_create("local-box")["sandbox_id"]  # expires it first, and is not broken by that
    assert local.sandbox_status(sandbox)["status"] == "stopped"
    local.sandbox_stop(other)
    monkeypatch.setenv("E2B_API_KEY", e2b.env()["E2B_API_KEY"])
    assert sandbox in nx.reap()["orphans"]  # the orphan sweep ends it on E2B


def test_a_sandbox_e2b_ended_shows_stopped_on_verify_and_its_row_is_fixed(e2b, nx):
    from e2b_code_interpreter import Sandbox

    sandbox = nx.sandbox_create("ended-by-e2b")["sandbox_id"]
    # E2B's clock runs out (no process of ours had to be alive for it).
    Sandbox.set_timeout(nx.store.get(sandbox)["provider_state"]["e2b_id"], 1)
    time.sleep(2.5)
    [listed] = nx.sandbox_list(verify_status=True)["sandboxes"]
    assert (listed["verified"], listed["provider_status"]) == (True, "stopped")
    assert nx.sandbox_status(sandbox)["status"] == "stopped"  # the row, fixed
    assert nx.store.get(sandbox)["stop_reason"] == "vanished"
    with pytest.raises(SandboxError, match="is stopped"):
        nx.sandbox_run(sandbox, "python", "1")


def test_killed_behind_our_back_mid_use_is_a_clear_error(e2b, nx):
    from e2b_code_interpreter import Sandbox

    sandbox = nx.sandbox_create("killed")["sandbox_id"]
    nx.sandbox_run(sandbox, "python", "1")  # this process is connected to it
    Sandbox.kill(nx.store.get(sandbox)["provider_state"]["e2b_id"])
    with pytest.raises(SandboxError, match=f"^Sandbox {sandbox} is not running"):
        nx.sandbox_run(sandbox, "python", "1")
    assert nx.store.get(sandbox)["status"] == "stopped"


def test_the_reaper_kills_this_stores_orphans_on_e2b_and_no_one_elses(e2b, nx):
    from e2b_code_interpreter import Sandbox

    nx.sandbox_stop(nx.sandbox_create("first")["sandbox_id"])
    store_id = (nx.data_dir / "e2b-store-id").read_text().strip()  # made by the first create
    ours = Sandbox.create(metadata={"nexus_store": store_id, "nexus_sandbox_id": "sb_lostrow00000000"})
    theirs = Sandbox.create(metadata={"nexus_store": "another-store", "nexus_sandbox_id": "sb_theirs000000000"})
    try:
        report = nx.reap()
        assert "sb_lostrow00000000" in report["orphans"] and "sb_theirs000000000" not in report["orphans"]
        assert not ours.is_running() and theirs.is_running()
    finally:
        theirs.kill()
        ours.kill()


def test_a_stop_that_fails_leaves_the_sandbox_for_the_reaper(e2b, nx, monkeypatch):
    sandbox = nx.sandbox_create("stubborn")["sandbox_id"]
    e2b_id = nx.store.get(sandbox)["provider_state"]["e2b_id"]
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("E2B_API_URL", dead)
    with pytest.raises(SandboxError, match=r"^cannot reach E2B"):
        nx.sandbox_stop(sandbox)
    monkeypatch.setenv("E2B_API_URL", e2b.url)
    from e2b_code_interpreter import Sandbox

    assert Sandbox.get_info(e2b_id).state.value == "running"  # still on E2B, still billed
    assert sandbox in nx.reap()["orphans"]
    assert e2b_id not in {listed.sandbox_id for listed in Sandbox.list().next_items()}


# ---- code: what E2B does its own way


def test_a_cell_times_out_at_its_timeout_and_keeps_its_state(e2b, nx):
    sandbox = nx.sandbox_create("slow")["sandbox_id"]
    nx.sandbox_run(sandbox, "python", "kept = 'yes'")
    started = time.monotonic()
    with pytest.raises(SandboxTimeout, match=r"^Code execution exceeded 2 second timeout$"):
        nx.sandbox_run(sandbox, "python", "import time\ntime.sleep(30)", timeout=2)
    waited = time.monotonic() - started
    # at our timeout, not at the SDK's own deadline (twice it, with its transport)
    assert 1.9 <= waited < 3.9, waited
    assert nx.sandbox_run(sandbox, "python", "print(kept)")["stdout"] == "yes\n"  # interrupted, not restarted
    nx.sandbox_stop(sandbox)


def test_a_cell_that_floods_its_output_is_interrupted_and_the_sandbox_keeps_working(e2b, data_dir, monkeypatch):
    monkeypatch.setenv("NEXUS_MAX_OUTPUT_CHARS", "1024")
    nx = SandboxManager(data_dir, provider="e2b")
    sandbox = nx.sandbox_create("flood")["sandbox_id"]
    nx.sandbox_run(sandbox, "python", "kept = 'yes'")
    started = time.monotonic()
    flooded = nx.sandbox_run(sandbox, "python", "while True:\n    print('y' * 65536)", timeout=60)
    assert time.monotonic() - started < 30  # ended by the flood, not by the timeout
    assert flooded["exit_code"] == 1
    kept, marker = flooded["stdout"].rsplit("\n[nexus: stdout: ", 1)
    assert len(kept) <= 1024 + 4096 and marker.endswith(" more characters than the limit were dropped]\n")
    assert flooded["stderr"].endswith(
        f"[nexus: the cell wrote over {8 * 1024 + (1 << 20)} characters and was interrupted]\n"
    )
    assert nx.sandbox_run(sandbox, "python", "print(kept)")["stdout"] == "yes\n"  # interrupted, not restarted
    nx.sandbox_stop(sandbox)


def test_rich_outputs_over_the_limit_are_dropped_as_the_local_provider_drops_them(e2b, nx):
    # Displays of 1 MiB each, a few more than MAX_RESULTS_BYTES holds.
    code = f"for _ in range({(MAX_RESULTS_BYTES >> 20) + 2}):\n    display({{'text/plain': 'r' * (1 << 20)}}, raw=True)"
    marker = f"[nexus: rich outputs over {MAX_RESULTS_BYTES} bytes were dropped]"
    outcomes = {}
    for provider in ("e2b", "local"):
        manager = SandboxManager(nx.data_dir, provider=provider)
        sandbox = manager.sandbox_create(f"rich-{provider}")["sandbox_id"]
        result = manager.sandbox_run(sandbox, "python", code, timeout=120)
        outcomes[provider] = (len(result["results"]), result["stderr"].count(marker), result["exit_code"])
        assert manager.sandbox_run(sandbox, "python", "print('after')")["stdout"] == "after\n"
        manager.sandbox_stop(sandbox)
    # The first 63 fit (each is 1 MiB and its JSON around it), the last 3 are dropped, each saying so.
    assert outcomes["e2b"] == outcomes["local"] == ((MAX_RESULTS_BYTES >> 20) - 1, 3, 0)


def test_a_cell_that_displays_without_end_is_interrupted_saying_so(e2b, nx, monkeypatch):
    from nexus_jupyter.providers import e2b_code

    monkeypatch.setattr(e2b_code, "MAX_RESULTS_BYTES", 1 << 20)  # a smaller limit: the test stays fast
    sandbox = nx.sandbox_create("displays")["sandbox_id"]
    flooded = nx.sandbox_run(
        sandbox, "python", "while True:\n    display({'text/plain': 'r' * 65536}, raw=True)", timeout=60
    )
    assert flooded["exit_code"] == 1 and 0 < len(flooded["results"]) <= 16
    assert flooded["stderr"].endswith(
        f"[nexus: the cell displayed over {4 << 20} bytes of rich outputs and was interrupted]\n"
    )
    assert nx.sandbox_run(sandbox, "python", "print('after')")["stdout"] == "after\n"
    nx.sandbox_stop(sandbox)


def test_a_plot_and_a_table_come_back_as_the_local_provider_gives_them(e2b, nx):
    sandbox = nx.sandbox_create("rich")["sandbox_id"]
    plot = nx.sandbox_run(sandbox, "python", "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    assert [sorted(r["data"]) for r in plot["results"]] == [["image/png", "text/plain"]]
    assert plot["results"][0]["is_main_result"] is False
    table = nx.sandbox_run(sandbox, "python", "import pandas as pd\npd.DataFrame({'a': [1, 2]})")
    [value] = table["results"]
    assert value["is_main_result"] is True and "<table" in value["data"]["text/html"]
    nx.sandbox_stop(sandbox)


def test_metrics_are_e2bs_memory_and_disk(e2b, nx):
    sandbox = nx.sandbox_create("measured")["sandbox_id"]
    nx.sandbox_run(sandbox, "bash", "head -c 30000000 /dev/zero > ~/big.bin")
    metrics = nx.sandbox_metrics(sandbox)
    assert metrics["memory_bytes"] > 0 and metrics["memory_limit_bytes"] > metrics["memory_bytes"]
    assert metrics["disk_used_bytes"] >= 30_000_000 and metrics["disk_limit_bytes"] >= metrics["disk_used_bytes"]
    assert (metrics["cpu_seconds"], metrics["processes"], metrics["memory_peak_bytes"]) == (None, None, None)
    nx.sandbox_stop(sandbox)


def test_metadata_names_the_sandbox_its_user_agent_and_tenant(e2b, nx):
    created = nx.sandbox_create("labelled", agent_id="agent-7", tenant_id="acme")
    metadata = e2b_sandbox(nx, created["sandbox_id"]).metadata
    assert {k: v for k, v in metadata.items() if k != "nexus_store"} == {
        "nexus_sandbox_id": created["sandbox_id"],
        "nexus_name": "labelled",
        "nexus_user": created["user_id"],
        "nexus_agent": "agent-7",
        "nexus_tenant": "acme",
    }
    started = e2b_sandbox(nx, created["sandbox_id"]).started_at
    assert abs(started.timestamp() - datetime.now(timezone.utc).timestamp()) < 60
    nx.sandbox_stop(created["sandbox_id"])


def test_internet_is_off_unless_asked_for(e2b, nx):
    closed = nx.sandbox_create("offline")["sandbox_id"]
    assert e2b_sandbox(nx, closed).allow_internet_access is False
    opened = nx.sandbox_create("online", allow_internet_access=True)["sandbox_id"]
    assert e2b_sandbox(nx, opened).allow_internet_access is True
    for sandbox in (closed, opened):
        nx.sandbox_stop(sandbox)


# ---- every front end: the REST API in a Jupyter server, the panel (the CLI and the
# notebook's %%sandbox are above and in test_magics.py)


def test_the_rest_api_runs_e2b_sandboxes_and_says_why_it_cannot_pause_them(e2b, tmp_path):
    from jupyter_servers import JupyterServer

    env = {**e2b.env(NO_PAUSE_KEY), "NEXUS_SANDBOX_PROVIDER": "e2b"}
    server = JupyterServer(tmp_path, tmp_path / "data", env=env)
    try:
        created = server.request("POST", "sandboxes", json={"name": "via-rest", "provider": "e2b"})
        assert created.status_code == 201, created.text
        sandbox = created.json()["sandbox_id"]
        assert created.json()["provider"] == "e2b"
        response = server.request("POST", f"sandboxes/{sandbox}/run", json={"code": "print('streamed')\n6 * 7"})
        events = [json.loads(line) for line in response.text.splitlines()]
        # print writes its text and its newline apart: how they are split into events is E2B's affair
        assert "".join(event["text"] for event in events if event["type"] == "stdout") == "streamed\n"
        [result] = [event for event in events if event["type"] == "result"]
        assert result["data"] == {"text/plain": "42"} and result["is_main_result"]
        paused = server.request("POST", f"sandboxes/{sandbox}/pause")
        assert (paused.status_code, paused.json()["message"]) == (400, SEED_PAUSE_MESSAGE)
        assert server.request("GET", f"sandboxes/{sandbox}").json()["status"] == "active"
        assert server.request("POST", f"sandboxes/{sandbox}/stop").json()["status"] == "stopped"
        assert NO_PAUSE_KEY not in server.log()
    finally:
        server.stop()


def test_the_panel_pauses_resumes_and_stops_an_e2b_sandbox(e2b, nx):
    from nexus_jupyter.panel import SandboxPanel

    sandbox = nx.sandbox_create("clicked")["sandbox_id"]
    panel = SandboxPanel(nx, refresh_seconds=0)
    try:
        panel.buttons[("pause", sandbox)].click()
        assert (nx.sandbox_status(sandbox)["status"], e2b_sandbox(nx, sandbox).state.value) == ("paused", "paused")
        panel.buttons[("resume", sandbox)].click()
        assert (nx.sandbox_status(sandbox)["status"], e2b_sandbox(nx, sandbox).state.value) == ("active", "running")
        panel.buttons[("stop", sandbox)].click()
        panel.confirm_button.click()
        assert nx.sandbox_status(sandbox)["status"] == "stopped"
    finally:
        panel.close()
