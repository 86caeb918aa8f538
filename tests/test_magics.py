"""The magics in a real Jupyter kernel (ipykernel, driven with jupyter_client as a notebook is).

Each test sends cells to the kernel and reads what a notebook would show:
stream text, display_data and execute_result bundles, errors.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import time

import pytest
from jupyter_client.manager import KernelManager

from conftest import PROVIDERS, destroy_everything_in, host_processes_matching


class Cell:
    """What one cell produced, as a notebook receives it."""

    def __init__(self):
        self.streams: list[tuple[str, str, float]] = []
        self.displays: list[dict] = []
        self.results: list[dict] = []
        self.status = None
        self.reply: dict = {}
        self.error: dict | None = None

    def text(self, name: str = "stdout") -> str:
        return "".join(text for stream, text, _ in self.streams if stream == name)


def run_cell(client, code: str, timeout: float = 120, interrupt_after: float | None = None, manager=None) -> Cell:
    cell = Cell()
    msg_id = client.execute(code)
    deadline = time.monotonic() + timeout
    interrupt_at = time.monotonic() + interrupt_after if interrupt_after else None
    while time.monotonic() < deadline:
        if interrupt_at and time.monotonic() > interrupt_at:
            manager.interrupt_kernel()
            interrupt_at = None
        try:
            message = client.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            continue
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = message["msg_type"], message["content"]
        if kind == "stream":
            cell.streams.append((content["name"], content["text"], time.monotonic()))
        elif kind == "display_data":
            cell.displays.append(content["data"])
        elif kind == "execute_result":
            cell.results.append(content["data"])
        elif kind == "error":
            cell.error = content
        elif kind == "status" and content["execution_state"] == "idle":
            break
    # This cell's own reply: wait_for_ready, under load, may leave a second kernel_info
    # reply on the shell channel, and taking it for this cell's would shift every reply by one.
    reply = client.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = client.get_shell_msg(timeout=30)
    cell.status = reply["content"]["status"]
    cell.reply = reply["content"]
    return cell


# The notebook's cells also run on E2B, against the local double of its cloud.
NOTEBOOK_PROVIDERS = PROVIDERS + (["e2b"] if "local" in PROVIDERS else [])


@pytest.fixture(scope="module", params=NOTEBOOK_PROVIDERS)
def notebook(request, tmp_path_factory):
    """A notebook kernel with the extension loaded, its sandboxes in a fresh data dir."""
    data_dir = tmp_path_factory.mktemp("magics") / "data"
    manager = KernelManager(kernel_name="python3")
    env = {"NEXUS_DATA_DIR": str(data_dir), "NEXUS_SANDBOX_PROVIDER": request.param, "PATH": "/usr/bin:/bin"}
    if request.param == "e2b":
        env.update(request.getfixturevalue("e2b_double").env())
    manager.start_kernel(env={**__import__("os").environ, **env})
    client = manager.blocking_client()
    client.start_channels()
    client.wait_for_ready(timeout=120)
    assert run_cell(client, "%load_ext nexus_jupyter").status == "ok"
    yield client, manager, data_dir, request.param
    run_cell(
        client,
        "for r in __import__('nexus_jupyter').SandboxManager().sandbox_list()['sandboxes']:\n"
        "    __import__('nexus_jupyter').SandboxManager().sandbox_stop(r['sandbox_id'])",
    )
    client.stop_channels()
    manager.shutdown_kernel(now=True)
    destroy_everything_in(data_dir)  # the warm pool the kernel kept too (on, as for a user)


def current_sandbox(client) -> str:
    cell = run_cell(client, "print(get_ipython().magics_manager.registry['SandboxMagics'].current)")
    return cell.text().strip()


def test_python_cells_share_state_like_a_notebook(notebook):
    client, *_ = notebook
    assert run_cell(client, "%%sandbox python --timeout 120\nx = 41").status == "ok"
    cell = run_cell(client, "%%sandbox\nprint(x + 1)")
    assert (cell.status, cell.text()) == ("ok", "42\n")


def test_the_last_expression_and_display_calls_come_back_rich(notebook):
    client, *_ = notebook
    cell = run_cell(
        client,
        "%%sandbox\nimport pandas as pd\n"
        "display(pd.Series([1, 2]).to_frame('n'))\npd.DataFrame({'a': [1, 2], 'b': [3, 4]})",
    )
    assert cell.status == "ok"
    assert "text/html" in cell.displays[0]
    [value] = cell.results
    assert "<table" in value["text/html"] and "text/plain" in value


def test_a_matplotlib_figure_appears_as_an_image(notebook):
    client, *_ = notebook
    cell = run_cell(client, "%%sandbox\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    assert cell.status == "ok", cell.error
    assert any("image/png" in bundle for bundle in cell.displays)


def test_output_streams_into_the_cell_as_it_is_produced(notebook):
    client, *_ = notebook
    cell = run_cell(client, "%%sandbox\nimport time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.5)")
    assert cell.text() == "0\n1\n2\n"
    stamps = [stamp for name, _, stamp in cell.streams if name == "stdout"]
    assert len(stamps) >= 2 and stamps[-1] - stamps[0] >= 0.5


def test_an_exception_fails_the_cell_with_the_sandbox_traceback(notebook):
    client, *_ = notebook
    cell = run_cell(client, "%%sandbox\ndef f():\n    return 1 / 0\nf()")
    assert cell.status == "error", (cell.streams, cell.results, cell.reply)  # "Run All" stops here
    assert "ZeroDivisionError: division by zero" in cell.text("stderr")
    assert "return 1 / 0" in cell.text("stderr")
    # the cell's own error is that last line, not an empty "SandboxCellError: "
    assert cell.error["traceback"] == ["ZeroDivisionError: division by zero"]
    # the traceback numbers the cell as the notebook does (on E2B its kernel numbers them)
    number = cell.reply["execution_count"] if notebook[3] != "e2b" else r"\d+"
    assert re.search(rf"Cell In ?\[{number}\], line 3", cell.text("stderr"))


def test_a_timeout_says_so_and_keeps_the_state(notebook):
    client, *_ = notebook
    run_cell(client, "%%sandbox\nkept = 'still here'")
    cell = run_cell(client, "%%sandbox --timeout 2\nimport time\ntime.sleep(60)")
    assert cell.status == "error"
    assert "Code execution exceeded 2 second timeout" in json.dumps(cell.error)
    assert run_cell(client, "%%sandbox\nprint(kept)").text() == "still here\n"


ANSWERS = {"python": "print('responsive')", "javascript": "console.log('responsive')", "bash": "echo responsive"}


@pytest.mark.parametrize(
    "language, endless",
    [
        ("python", "import time  # MARKER\ntime.sleep(60)"),
        ("python", "import subprocess\nsubprocess.run(['bash', '-c', 'exec -a MARKER sleep 60'])"),
        ("javascript", "require('child_process').execSync(\"bash -c 'exec -a MARKER sleep 60'\")"),
        ("bash", "bash -c 'exec -a MARKER sleep 60'"),
    ],
)
def test_interrupting_the_kernel_stops_the_sandboxed_code(notebook, language, endless):
    client, manager, *_ = notebook
    marker = f"nexus_interrupted_{time.time_ns()}"
    started = time.monotonic()
    code = f"%%sandbox {language} --timeout 120\n{endless.replace('MARKER', marker)}"
    cell = run_cell(client, code, interrupt_after=3, manager=manager)
    # one line, not the host's call stack
    assert cell.status == "error" and cell.error["traceback"] == ["KeyboardInterrupt: the sandboxed code was stopped"]
    assert time.monotonic() - started < 30
    # what the user notices: the code is gone, and the next cell does not wait
    deadline = time.monotonic() + 5
    while host_processes_matching(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert host_processes_matching(marker) == []
    # the next cell runs at once (it used to wait for the interrupted code's 60 s)
    started = time.monotonic()
    assert run_cell(client, f"%%sandbox {language}\n{ANSWERS[language]}").text() == "responsive\n"
    assert time.monotonic() - started < 3


def test_javascript_and_bash_cells(notebook):
    client, *_ = notebook
    assert run_cell(client, "%%sandbox javascript\nconsole.log([1, 2].map(x => x * 21).join(','))").text() == "21,42\n"
    assert run_cell(client, "%%sandbox bash\necho $((6 * 7))").text() == "42\n"
    failed = run_cell(client, "%%sandbox bash\necho nope >&2\nexit 3")
    assert failed.status == "error" and "nope" in failed.text("stderr")
    assert "bash exited with code 3" in json.dumps(failed.error)


def test_out_stores_the_run_result(notebook):
    client, *_ = notebook
    run_cell(client, "%%sandbox --out result\nprint(5)\n6")
    cell = run_cell(client, "print(result['stdout'], result['exit_code'], result['results'][0]['data']['text/plain'])")
    assert cell.text() == "5\n 0 6\n"


def test_fresh_runs_in_a_new_process(notebook):
    client, *_ = notebook
    run_cell(client, "%%sandbox\nonly_in_kernel = 1")
    cell = run_cell(client, "%%sandbox --fresh\nprint('only_in_kernel' in globals())")
    assert cell.text() == "False\n"


def test_the_cli_sees_the_state_the_notebook_made(notebook, request):
    client, _, data_dir, provider = notebook
    e2b = request.getfixturevalue("e2b_double").env() if provider == "e2b" else {}
    run_cell(client, "%%sandbox\nshared = 'from the notebook'")
    sandbox = current_sandbox(client)
    completed = subprocess.run(
        [sys.executable, "-m", "nexus_jupyter", "sandbox", "run", sandbox, "-c", "print(shared)"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "NEXUS_DATA_DIR": str(data_dir), **e2b},
        check=False,
    )
    assert completed.stdout == "from the notebook\n", completed.stderr


def test_line_magics_manage_sandboxes(notebook, tmp_path):
    client, *_ = notebook
    created = run_cell(client, "%sandbox create analysis --ttl 15")
    assert created.status == "ok" and "Created sandbox sb_" in created.text()
    listed = run_cell(client, "%sandbox list")
    assert "analysis" in listed.results[0]["text/html"]
    assert run_cell(client, "%sandbox pause").text().startswith("Paused sandbox")
    assert run_cell(client, "%sandbox resume").text().startswith("Resumed sandbox")
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    assert run_cell(client, f"%sandbox upload {tmp_path / 'data.csv'}").status == "ok"
    assert run_cell(client, "%%sandbox bash\nwc -l < data.csv").text() == "2\n"
    run_cell(client, "%%sandbox\nopen('report.txt', 'w').write('done')")
    assert run_cell(client, f"%sandbox download report.txt {tmp_path / 'report.txt'}").status == "ok"
    assert (tmp_path / "report.txt").read_text() == "done"
    status = run_cell(client, "%sandbox status")
    assert "'name': 'analysis'" in status.results[0]["text/plain"]
    assert run_cell(client, "%sandbox use analysis").status == "ok"
    assert run_cell(client, "%sandbox stop").text().startswith("Stopped sandbox")


def test_mistakes_are_one_line_usage_errors(notebook):
    client, *_ = notebook
    for line in (
        "%sandbox frobnicate",
        "%sandbox status sb_nosuchbox",
        "%%sandbox cobol\nx",
        "%sandbox create",
        "%%sandbox --timeout soon\nx",
    ):
        cell = run_cell(client, line)
        assert cell.status == "error" and cell.reply["ename"] == "UsageError", (line, cell.reply)
        [message] = cell.text("stderr").strip().splitlines()  # one line, no traceback
        assert message.startswith("UsageError: "), message


def test_config_sets_the_default_timeout(notebook):
    client, *_ = notebook
    run_cell(client, "%config SandboxMagics.default_timeout = 1.5")
    try:
        cell = run_cell(client, "%%sandbox\nimport time\ntime.sleep(20)")
        assert "exceeded 1.5 second timeout" in json.dumps(cell.error)
    finally:
        run_cell(client, "%config SandboxMagics.default_timeout = 60")


def test_config_sets_the_services_settings_too(notebook):
    client, *_ = notebook
    listed = run_cell(client, "%config SandboxService")
    assert "SandboxService.default_ttl=<Int>" in listed.text() and "NEXUS_DEFAULT_TTL" in listed.text()
    run_cell(client, "%config SandboxService.default_memory_mb = 512")
    try:
        cell = run_cell(client, "%sandbox create configured")
        assert cell.status == "ok", cell.error
        sandbox = current_sandbox(client)
        figures = run_cell(client, f"print(__import__('nexus_jupyter').SandboxManager().sandbox_metrics({sandbox!r}))")
        assert f"'memory_limit_bytes': {512 << 20}" in figures.text()
        bad = run_cell(client, "%config SandboxService.default_ttl = 0")  # IPython logs what %config refused
        assert "SandboxService.default_ttl must be a whole number from 1 to 10080, got 0" in bad.text("stderr")
        kept = run_cell(client, "print(get_ipython().magics_manager.registry['SandboxMagics'].settings.default_ttl)")
        assert kept.text() == "10\n"  # the setting in force is unchanged
        run_cell(client, "%sandbox stop")
    finally:
        run_cell(client, "%config SandboxService.default_memory_mb = 1024")


def test_the_panel_magic_shows_the_widget(notebook):
    client, *_ = notebook
    cell = run_cell(client, "%sandbox panel --refresh 0")
    assert cell.status == "ok", cell.reply
    assert any("application/vnd.jupyter.widget-view+json" in bundle for bundle in cell.results + cell.displays)


def test_a_paused_default_sandbox_is_reported_not_replaced(notebook):
    client, *_ = notebook
    run_cell(client, "%%sandbox\nbefore_pause = 1")
    sandbox = current_sandbox(client)
    run_cell(client, "%sandbox pause")
    cell = run_cell(client, "%%sandbox\nprint(before_pause)")
    assert cell.status == "error" and cell.reply["ename"] == "UsageError"
    assert "paused: run %sandbox resume" in cell.text("stderr")
    run_cell(client, "%sandbox resume")
    assert current_sandbox(client) == sandbox
    assert run_cell(client, "%%sandbox\nprint(before_pause)").text() == "1\n"
