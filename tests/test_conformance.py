"""Provider conformance: the Python API's behaviour, the same for every provider.

Every test here runs once per provider in NEXUS_TEST_PROVIDERS (default:
local).  A new provider is done when this file and test_isolation.py pass.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from conftest import needs_the_store, remote
from nexus_jupyter import SandboxError, SandboxManager, SandboxTimeout


def not_on_e2b(provider: str, why: str) -> None:
    """Skip what E2B's template does its own way (its kernel is IPython's in Jupyter, not our runtime)."""
    if provider == "e2b":
        pytest.skip(f"E2B: {why}")


def test_seed_quick_start(nx):
    sandbox = nx.sandbox_create(name="my-python-sandbox", ttl_minutes=20)
    sandbox_id = sandbox["sandbox_id"]
    result = nx.sandbox_run(
        sandbox_id=sandbox_id,
        language="python",
        code='import sys\nprint(f"Python {sys.version}")\nprint("2 + 2 =", 2 + 2)\n',
        timeout=30,
    )
    assert result["exit_code"] == 0
    assert result["stdout"].splitlines()[1] == "2 + 2 = 4"
    assert result["execution_time"] > 0
    stopped = nx.sandbox_stop(sandbox_id=sandbox_id)
    assert stopped["status"] == "stopped"


def test_multi_language_tasks(nx, sandbox):
    tasks = [
        ("javascript", "console.log(JSON.stringify({result: 42}))", '{"result":42}\n'),
        ("python", "print(sum([1, 2, 3, 4, 5]))", "15\n"),
        ("bash", "echo $USER && pwd", "user\n/home/user\n"),
    ]
    for language, code, expected in tasks:
        result = nx.sandbox_run(sandbox_id=sandbox, language=language, code=code, timeout=30)
        assert (result["stdout"], result["exit_code"]) == (expected, 0), result


def test_error_handling_returns_the_traceback(nx, sandbox):
    result = nx.sandbox_run(sandbox, "python", code="print(1/0)")
    assert result["exit_code"] != 0
    assert "ZeroDivisionError: division by zero" in result["stderr"]


def test_timeout_raises_with_the_partial_output_and_the_sandbox_stays_usable(nx, sandbox):
    with pytest.raises(SandboxTimeout, match=r"^Code execution exceeded 2 second timeout$") as caught:
        nx.sandbox_run(sandbox, "python", "import time\nprint('started', flush=True)\ntime.sleep(10)", timeout=2)
    assert caught.value.result["stdout"] == "started\n"
    assert nx.sandbox_run(sandbox, "python", "print('usable')")["stdout"] == "usable\n"


def test_output_streams_to_callbacks_while_the_code_runs(nx, sandbox):
    arrivals = []
    code = "import time\nfor i in range(3):\n    print(i)\n    time.sleep(0.4)\n"
    started = time.monotonic()
    result = nx.sandbox_run(sandbox, "python", code, on_stdout=lambda text: arrivals.append(time.monotonic()))
    assert result["stdout"] == "0\n1\n2\n"
    assert len(arrivals) >= 2
    # the first line arrived well before the run ended: it was streamed, not buffered
    assert arrivals[0] - started < (time.monotonic() - started) - 0.5


def test_stderr_streams_to_its_own_callback(nx, sandbox):
    seen = []
    result = nx.sandbox_run(sandbox, "bash", "echo oops >&2", on_stderr=seen.append)
    assert "".join(seen) == "oops\n" == result["stderr"]


def test_state_on_disk_persists_between_runs_and_languages(nx, sandbox):
    nx.sandbox_run(sandbox, "bash", "mkdir -p out && echo hello > out/greeting.txt")
    assert nx.sandbox_run(sandbox, "python", "print(open('out/greeting.txt').read().strip())")["stdout"] == "hello\n"


def test_files_round_trip(nx, sandbox, tmp_path):
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    assert nx.sandbox_write_file(sandbox, "data/blob.bin", payload)["size"] == len(payload)
    assert nx.sandbox_read_file(sandbox, "data/blob.bin") == payload
    entries = nx.sandbox_list_files(sandbox, "data")
    assert [(e["name"], e["type"], e["size"]) for e in entries] == [("blob.bin", "file", len(payload))]
    nx.sandbox_write_file(sandbox, "sales.csv", "region,amount\nnorth,3\n")
    code = "import csv\nrows = list(csv.DictReader(open('sales.csv')))\nprint(rows[0]['amount'])"
    assert nx.sandbox_run(sandbox, "python", code)["stdout"] == "3\n"
    local = tmp_path / "copy.bin"
    assert nx.sandbox_download_file(sandbox, "data/blob.bin", local)["size"] == len(payload)
    assert local.read_bytes() == payload
    (tmp_path / "up.txt").write_text("uploaded")
    nx.sandbox_upload_file(sandbox, tmp_path / "up.txt", "in/up.txt")
    assert nx.sandbox_run(sandbox, "bash", "cat in/up.txt")["stdout"] == "uploaded"


def test_one_megabyte_of_code_runs(nx, sandbox):
    code = "data = '" + "x" * (1 << 20) + "'\nprint(len(data))\n"
    assert nx.sandbox_run(sandbox, "python", code)["stdout"] == f"{1 << 20}\n"


def test_code_is_never_passed_on_a_command_line(nx, sandbox):
    from conftest import host_processes_matching

    marker = "MARKER_" + str(time.time_ns())
    thread = threading.Thread(
        target=nx.sandbox_run, args=(sandbox, "python", f"import time\ntime.sleep(1.5)  # {marker}")
    )
    thread.start()
    time.sleep(0.7)
    try:
        assert host_processes_matching(marker) == []
    finally:
        thread.join()


def test_pause_freezes_running_code_and_resume_thaws_it(nx, sandbox):
    code = "import time\nfor i in range(8):\n    print(time.time(), flush=True)\n    time.sleep(0.25)\n"
    outcome = {}
    printing = threading.Event()
    runner = threading.Thread(
        target=lambda: outcome.update(
            nx.sandbox_run(sandbox, "python", code, timeout=60, on_stdout=lambda _: printing.set())
        )
    )
    runner.start()
    assert printing.wait(60)
    time.sleep(0.3)
    nx.sandbox_pause(sandbox)
    time.sleep(2.0)
    nx.sandbox_resume(sandbox)
    runner.join(30)
    stamps = [float(line) for line in outcome["stdout"].split()]
    assert len(stamps) == 8
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    assert max(gaps) >= 1.8  # nothing ran while it was paused


def test_pause_keeps_files_and_stops_the_ttl(nx, sandbox):
    nx.sandbox_run(sandbox, "bash", "echo kept > state.txt")
    paused = nx.sandbox_pause(sandbox)
    assert paused["status"] == "paused" and paused["expires_at"] is None and paused["paused_at"]
    assert nx.sandbox_list(verify_status=True)["sandboxes"][0]["provider_status"] == "paused"
    resumed = nx.sandbox_resume(sandbox)
    assert resumed["status"] == "active" and resumed["expires_at"] and resumed["paused_at"] is None
    assert nx.sandbox_run(sandbox, "bash", "cat state.txt")["stdout"] == "kept\n"


def test_stop_destroys_everything_and_is_final(nx):
    needs_the_store(nx)
    record = nx.sandbox_create("short-lived")
    sandbox = record["sandbox_id"]
    nx.sandbox_run(sandbox, "bash", "echo x > f")
    nx.sandbox_stop(sandbox)
    backend = nx.provider(record["provider"])
    assert backend.inspect(sandbox, {}) == "stopped"
    assert sandbox not in backend.box_ids()
    status = nx.sandbox_status(sandbox)
    assert status["status"] == "stopped" and status["stopped_at"] and status["expires_at"] is None


def test_any_process_can_operate_a_sandbox_another_created(nx, data_dir, provider, nexus):
    sandbox = nexus("sandbox", "create", "from-cli", "--json").json()["sandbox_id"]
    # a different manager (as a notebook kernel or a server would be) sees and drives it
    other = SandboxManager(provider=provider) if remote(nx) else SandboxManager(data_dir, provider=provider)
    assert other.sandbox_run(sandbox, "python", "print('from another process')")["stdout"] == "from another process\n"
    other.sandbox_pause(sandbox)
    assert nexus("sandbox", "status", sandbox, "--json").json()["status"] == "paused"
    assert nexus("sandbox", "resume", sandbox, "--json").json()["status"] == "active"
    nx.sandbox_stop(sandbox)


def test_list_verify_notices_a_box_that_vanished(nx, sandbox):
    needs_the_store(nx)
    backend = nx.provider(nx.sandbox_status(sandbox)["provider"])
    backend.destroy(sandbox, nx.store.get(sandbox)["provider_state"])  # killed behind our back
    [entry] = nx.sandbox_list(verify_status=True)["sandboxes"]
    assert (entry["verified"], entry["provider_status"]) == (True, "stopped")
    assert nx.sandbox_status(sandbox)["status"] == "stopped"  # and the row was fixed


def test_python_state_persists_between_runs_and_rich_outputs_come_back(nx, sandbox):
    assert nx.sandbox_run(sandbox, "python", "x = 41")["results"] == []
    result = nx.sandbox_run(sandbox, "python", "print(x + 1)\nx * 2")
    assert result["stdout"] == "42\n"
    [value] = result["results"]
    assert value["is_main_result"] and value["data"]["text/plain"] == "82"
    shown = nx.sandbox_run(sandbox, "python", "from IPython.display import display, HTML\ndisplay(HTML('<b>hi</b>'))")
    assert shown["results"][0]["data"]["text/html"] == "<b>hi</b>" and not shown["results"][0]["is_main_result"]
    fresh = nx.sandbox_run(sandbox, "python", "print('x' in globals())", fresh=True)
    assert fresh["stdout"] == "False\n" and fresh["results"] == []


def test_an_exception_comes_back_as_error_and_stderr(nx, sandbox):
    result = nx.sandbox_run(sandbox, "python", "raise ValueError('bad value')")
    assert result["exit_code"] == 1
    assert (result["error"]["name"], result["error"]["value"]) == ("ValueError", "bad value")
    assert "ValueError: bad value" in result["stderr"]


def test_a_wedged_kernel_is_restarted_with_a_clear_message(nx, sandbox, provider):
    not_on_e2b(provider, "its server interrupts a cell at the timeout but never restarts the kernel")
    nx.sandbox_run(sandbox, "python", "lost = True")
    wedge = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.1)"
    with pytest.raises(SandboxTimeout) as caught:
        nx.sandbox_run(sandbox, "python", wedge, timeout=2)
    assert "was restarted: its state was lost" in caught.value.result["stderr"]
    after = nx.sandbox_run(sandbox, "python", "print('lost' in globals())")
    assert after["stdout"] == "False\n"


def test_stopping_a_sandbox_mid_run_ends_the_run_with_a_clear_error(nx, sandbox):
    outcome = {}
    printing = threading.Event()

    def long_run():
        try:
            nx.sandbox_run(sandbox, "bash", "echo started; sleep 30", timeout=60, on_stdout=lambda _: printing.set())
        except Exception as exc:  # what the caller of the run gets
            outcome["error"] = exc

    runner = threading.Thread(target=long_run)
    runner.start()
    assert printing.wait(30)
    (SandboxManager() if remote(nx) else SandboxManager(nx.data_dir)).sandbox_stop(sandbox)  # another process
    runner.join(30)
    assert isinstance(outcome.get("error"), SandboxError), outcome
    assert f"Sandbox {sandbox} is not running" in str(outcome["error"])


# ---- a stateful run behaves as `python script.py` would


def test_sys_exit_gives_its_code_and_keeps_the_state(nx, sandbox, provider):
    not_on_e2b(provider, "sys.exit in a Jupyter cell is an error, not an exit code")
    nx.sandbox_run(sandbox, "python", "kept = 'yes'")
    result = nx.sandbox_run(sandbox, "python", "import sys\nprint('before')\nsys.exit(3)\nprint('after')")
    assert (result["exit_code"], result["stdout"], result["stderr"], result["error"]) == (3, "before\n", "", None)
    assert nx.sandbox_run(sandbox, "python", "import sys; sys.exit(0)")["exit_code"] == 0
    assert nx.sandbox_run(sandbox, "python", "raise SystemExit")["exit_code"] == 0
    assert nx.sandbox_run(sandbox, "python", "exit(4)")["exit_code"] == 4
    message = nx.sandbox_run(sandbox, "python", "import sys; sys.exit('bad input')")
    assert (message["exit_code"], message["stderr"]) == (1, "bad input\n")  # Python's own rule, no IPython noise
    assert nx.sandbox_run(sandbox, "python", "print(kept)")["stdout"] == "yes\n"


def test_os_exit_gives_its_code_and_says_the_state_was_lost(nx, sandbox, provider):
    not_on_e2b(provider, "a kernel that exits is Jupyter's to restart")
    nx.sandbox_run(sandbox, "python", "lost = 1")
    result = nx.sandbox_run(sandbox, "python", "import os\nprint('bye', flush=True)\nos._exit(5)")
    assert (result["exit_code"], result["stdout"]) == (5, "bye\n")
    assert "exited with code 5 and was restarted: its state was lost" in result["stderr"]
    after = nx.sandbox_run(sandbox, "python", "print('lost' in globals())")
    assert (after["stdout"], after["exit_code"]) == ("False\n", 0)


def test_binary_output_stdin_and_subprocess_output_as_in_a_script(nx, sandbox):
    code = (
        "import os, sys\n"
        "sys.stdout.buffer.write(b'\\xff raw bytes\\n')\n"
        "sys.stdout.flush()\n"
        "sys.stderr.buffer.write(b'to stderr\\n')\n"
        "os.system('echo from a subprocess; echo its error >&2')\n"
        "try:\n    input()\nexcept EOFError:\n    print('EOF')\n"
    )
    result = nx.sandbox_run(sandbox, "python", code)
    assert result["stdout"] == "\ufffd raw bytes\nfrom a subprocess\nEOF\n"
    assert result["stderr"] == "to stderr\nits error\n"
    assert result["exit_code"] == 0


def test_code_from_a_file_runs_as_that_script(nx, sandbox, provider):
    not_on_e2b(provider, "run_code has no file name for a cell")
    code = "print(__name__, __file__)\ndef f():\n    raise ValueError('from the script')\n'no value shown'\nf()\n"
    result = nx.sandbox_run(sandbox, "python", code, filename="/somewhere/on/the/host/job.py")
    assert result["stdout"] == "__main__ /home/user/job.py\n"
    assert result["results"] == []
    assert "job.py:5" in result["stderr"] and "/somewhere" not in result["stderr"]  # ~/job.py: the box home
    assert result["error"]["value"] == "from the script" and result["exit_code"] == 1
    # and a cell is a cell again after it
    assert nx.sandbox_run(sandbox, "python", "6 * 7")["results"][0]["data"]["text/plain"] == "42"


def test_tracebacks_name_no_host_or_runtime_paths(nx, sandbox):
    assert nx.sandbox_run(sandbox, "python", "import sys; sys.exit(2)")["stderr"] == ""
    result = nx.sandbox_run(sandbox, "python", "def f():\n    return undefined\nf()")
    assert result["error"]["name"] == "NameError"
    text = result["stderr"]
    for leak in ("/opt/nexus", "python_shell", "interactiveshell", "site-packages", "UserWarning"):
        assert leak not in text, text


def test_a_first_run_finds_the_runtime_started_with_the_box(nx):
    sandbox = nx.sandbox_create("prestarted")["sandbox_id"]
    time.sleep(3)  # the box starts its Python runtime by itself
    started = time.monotonic()
    assert nx.sandbox_run(sandbox, "python", "print(2 + 2)")["stdout"] == "4\n"
    assert time.monotonic() - started < 1.5  # no interpreter start left to wait for (~10 ms here)


def test_metrics_count_what_the_code_uses(nx, sandbox, provider):
    not_on_e2b(provider, "E2B reports CPU percent, memory and disk only (test_e2b.py)")
    before = nx.sandbox_metrics(sandbox)
    assert before["sandbox_id"] == sandbox
    assert before["memory_limit_bytes"] == 1024 << 20
    assert before["processes"] >= 1 and before["memory_bytes"] > 0
    busy = "import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end:\n    pass\n"
    nx.sandbox_run(sandbox, "python", busy + "blob = b'x' * (200 << 20)")  # kept by the runtime
    nx.sandbox_run(sandbox, "bash", "head -c 50000000 /dev/zero > ~/big.bin")
    after = nx.sandbox_metrics(sandbox)
    assert after["cpu_seconds"] >= before["cpu_seconds"] + 0.8
    assert after["memory_bytes"] >= before["memory_bytes"] + (150 << 20)
    assert after["memory_peak_bytes"] >= after["memory_bytes"]
    # as root every file the box writes is in size-limited tmpfs the host can measure
    assert after["disk_used_bytes"] >= before["disk_used_bytes"] + 45_000_000
    assert after["disk_limit_bytes"] >= 256 << 20
    if not remote(nx):  # a read: the idle timeout does not restart
        used = nx.store.get(sandbox)["last_active_at"]
        nx.sandbox_metrics(sandbox)
        assert nx.store.get(sandbox)["last_active_at"] == used
    nx.sandbox_pause(sandbox)
    assert nx.sandbox_metrics(sandbox)["memory_bytes"] >= 150 << 20  # a paused box keeps its memory
    nx.sandbox_resume(sandbox)


def test_metrics_of_a_stopped_sandbox_are_a_clear_error(nx):
    sandbox = nx.sandbox_create("gone")["sandbox_id"]
    nx.sandbox_stop(sandbox)
    with pytest.raises(SandboxError, match=rf"^Sandbox {sandbox} is stopped$"):
        nx.sandbox_metrics(sandbox)
