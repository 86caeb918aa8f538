"""The JupyterLab sidebar "Sandboxes" (labextension/) in a real browser: JupyterLab on
loopback, driven by Chromium (Playwright), as a user clicks through it.

Set NEXUS_TEST_SCREENSHOTS=DIR to keep a screenshot of each test's page.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from conftest import BROWSER_TESTS, destroy_everything_in, start_lab
from nexus_jupyter import SandboxManager

pytestmark = BROWSER_TESTS

SIDEBAR = "#nexus-sandboxes"


def open_sidebar(page, lab, prefix: str = ""):
    url, token, _ = lab
    page.goto(f"{url}{prefix}/lab?token={token}")
    tab = page.locator('.jp-SideBar [data-id="nexus-sandboxes"]')
    tab.wait_for(timeout=60_000)
    sidebar = page.locator(SIDEBAR)
    page.wait_for_timeout(1000)  # the layout restored (the sidebar may be open already)
    if not sidebar.is_visible():
        tab.click()
    sidebar.wait_for(state="visible", timeout=30_000)
    return sidebar


def row(sidebar, sandbox_id: str):
    return sidebar.locator(f'[data-sandbox-id="{sandbox_id}"]')


def wait_for_status(nx, sandbox_id: str, status: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while nx.sandbox_status(sandbox_id)["status"] != status and time.monotonic() < deadline:
        time.sleep(0.2)
    assert nx.sandbox_status(sandbox_id)["status"] == status


def open_section(page, sidebar, sandbox_id: str, label: str) -> None:
    """Open a row's menu and choose one of its items (Console, Files, Metrics, Copy Sandbox Id)."""
    row(sidebar, sandbox_id).get_by_role("button", name="More actions").click()
    page.locator(".jp-NexusSandboxes-menu .lm-Menu-item", has_text=label).click()


def test_the_sidebar_shows_sandboxes_made_anywhere_and_pauses_resumes_and_stops_them(page, lab):
    _, _, data_dir = lab
    nx = SandboxManager(data_dir)
    before = nx.sandbox_create("made-before")["sandbox_id"]
    sidebar = open_sidebar(page, lab)
    row(sidebar, before).wait_for(timeout=30_000)
    assert "made-before" in row(sidebar, before).inner_text()
    # made while the page is open: it appears without a reload
    later = nx.sandbox_create("made-later")["sandbox_id"]
    row(sidebar, later).wait_for(timeout=30_000)
    # the time left counts down by itself
    left = row(sidebar, later).locator(".jp-NexusSandboxes-timeLeft")
    first = left.inner_text()
    page.wait_for_timeout(2200)
    assert left.inner_text() != first, first
    if os.environ.get("NEXUS_TEST_SCREENSHOTS"):  # the README's picture of the sidebar
        page.locator(".jp-SideBar.jp-mod-left, #nexus-sandboxes").first.page.screenshot(
            path=os.path.join(os.environ["NEXUS_TEST_SCREENSHOTS"], "sidebar.png"),
            clip={"x": 0, "y": 0, "width": 520, "height": 300},
        )

    row(sidebar, later).get_by_role("button", name="Pause").click()
    row(sidebar, later).locator(".jp-NexusSandboxes-status", has_text="paused").wait_for(timeout=30_000)
    wait_for_status(nx, later, "paused")
    row(sidebar, later).get_by_role("button", name="Resume").click()
    row(sidebar, later).locator(".jp-NexusSandboxes-status", has_text="active").wait_for(timeout=30_000)
    wait_for_status(nx, later, "active")

    row(sidebar, later).get_by_role("button", name="Stop").click()
    dialog = page.locator(".jp-Dialog")
    dialog.get_by_text("will be destroyed").wait_for(timeout=10_000)
    assert nx.sandbox_status(later)["status"] == "active"  # asked first
    dialog.get_by_role("button", name="Stop").click()
    row(sidebar, later).wait_for(state="detached", timeout=30_000)
    wait_for_status(nx, later, "stopped")
    assert nx.sandbox_status(before)["status"] == "active"
    nx.sandbox_stop(before)


def test_new_sandbox_makes_one_from_its_dialog(page, lab):
    _, _, data_dir = lab
    nx = SandboxManager(data_dir)
    sidebar = open_sidebar(page, lab)
    sidebar.get_by_role("button", name="New sandbox").click()
    dialog = page.locator(".jp-Dialog")
    dialog.locator('input[name="name"]').fill("from-the-dialog")
    dialog.locator('input[name="ttl"]').fill("7")
    dialog.get_by_role("button", name="Create").click()
    sidebar.get_by_text("from-the-dialog").wait_for(timeout=30_000)
    [made] = [s for s in nx.sandbox_list()["sandboxes"] if s["name"] == "from-the-dialog"]
    assert made["ttl_minutes"] == 7 and made["status"] == "active"
    nx.sandbox_stop(made["sandbox_id"])


def test_a_sandboxs_console_streams_the_output_of_its_runs(page, lab):
    _, _, data_dir = lab
    nx = SandboxManager(data_dir)
    sandbox = nx.sandbox_create("with-a-console")["sandbox_id"]
    nx.sandbox_run(sandbox, "python", "kept = 41")
    sidebar = open_sidebar(page, lab)
    item = row(sidebar, sandbox)
    open_section(page, sidebar, sandbox, "Console")
    item.locator("textarea").fill("print('first', flush=True)\nimport time\ntime.sleep(2)\nprint(kept + 1)")
    item.get_by_role("button", name="Run").click()
    output = item.locator(".jp-NexusSandboxes-output")
    output.get_by_text("first").wait_for(timeout=30_000)
    assert "42" not in output.inner_text()  # streamed: the first line before the run ended
    output.get_by_text("[exit code 0]").wait_for(timeout=30_000)
    assert output.inner_text().splitlines()[:2] == ["first", "42"]  # the sandbox's own Python state
    item.locator("select").select_option("bash")
    item.locator("textarea").fill("echo oops >&2; exit 3")
    item.get_by_role("button", name="Run").click()
    output.get_by_text("[exit code 3]").wait_for(timeout=30_000)
    assert item.locator(".jp-NexusSandboxes-output .jp-mod-stderr", has_text="oops").count() == 1
    nx.sandbox_stop(sandbox)


def test_a_sandboxs_files_are_browsed_downloaded_and_uploaded_by_dropping_them(page, lab, tmp_path):
    _, _, data_dir = lab
    nx = SandboxManager(data_dir)
    sandbox = nx.sandbox_create("with-files")["sandbox_id"]
    nx.sandbox_write_file(sandbox, "results/table.csv", "a,b\n1,2\n")
    sidebar = open_sidebar(page, lab)
    open_section(page, sidebar, sandbox, "Files")
    files = row(sidebar, sandbox).locator(".jp-NexusSandboxes-files")
    files.locator(".jp-NexusSandboxes-dir", has_text="results/").click()
    files.locator(".jp-NexusSandboxes-cwd", has_text="~/results").wait_for(timeout=30_000)
    csv = files.locator(".jp-NexusSandboxes-download", has_text="table.csv")
    assert files.locator('[data-path="results/table.csv"] .jp-NexusSandboxes-size').inner_text() == "8 B"
    with page.expect_download(timeout=30_000) as download:
        csv.click()
    saved = tmp_path / "table.csv"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "table.csv" and saved.read_bytes() == b"a,b\n1,2\n"

    # a file dropped on the list from the desktop lands in the directory shown
    dropped = page.evaluate_handle(
        """() => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array([0, 1, 2, 255]), 'x'.repeat(2000)], 'dropped.bin'));
            return transfer;
        }"""
    )
    files.dispatch_event("dragover", {"dataTransfer": dropped})
    files.dispatch_event("drop", {"dataTransfer": dropped})
    files.locator(".jp-NexusSandboxes-note", has_text="uploaded results/dropped.bin").wait_for(timeout=30_000)
    files.locator(".jp-NexusSandboxes-download", has_text="dropped.bin").wait_for(timeout=30_000)
    assert nx.sandbox_read_file(sandbox, "results/dropped.bin") == bytes([0, 1, 2, 255]) + b"x" * 2000
    files.get_by_role("button", name="↑").click()
    files.locator(".jp-NexusSandboxes-dir", has_text="results/").wait_for(timeout=30_000)
    nx.sandbox_stop(sandbox)


def test_a_sandboxs_metrics_are_drawn_live(page, lab):
    _, _, data_dir = lab
    nx = SandboxManager(data_dir)
    sandbox = nx.sandbox_create("with-metrics")["sandbox_id"]
    spin = "import threading\ndef spin():\n    while True: pass\nthreading.Thread(target=spin, daemon=True).start()"
    nx.sandbox_run(sandbox, "python", spin)  # the session's thread keeps a core busy between runs
    sidebar = open_sidebar(page, lab)
    open_section(page, sidebar, sandbox, "Metrics")
    metrics = row(sidebar, sandbox).locator(".jp-NexusSandboxes-metrics")
    cpu = metrics.locator('[data-metric="CPU"] .jp-NexusSandboxes-metricValue')
    page.wait_for_function("element => /^[0-9]+%$/.test(element.textContent)", arg=cpu.element_handle(), timeout=30_000)
    assert int(cpu.inner_text().rstrip("%")) >= 30, cpu.inner_text()  # the loop's core, as the box counts it
    memory = metrics.locator('[data-metric="Memory"] .jp-NexusSandboxes-metricValue').inner_text()
    assert memory.endswith("/ 1.0 GB") and "B /" in memory, memory  # used / the box's limit
    processes = metrics.locator('[data-metric="Processes"] .jp-NexusSandboxes-metricValue').inner_text()
    assert int(processes) >= 2, processes
    assert metrics.locator('[data-metric="Disk"] .jp-NexusSandboxes-metricValue').inner_text().endswith("/ 512 MB")
    # several readings: a line, not a point
    points = metrics.locator('[data-metric="Memory"] polyline').get_attribute("points")
    assert len(points.split()) >= 2, points
    nx.sandbox_stop(sandbox)


def notebook_with(path, *sources: str) -> None:
    cells = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}
             for source in sources]  # fmt: skip
    kernel = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    path.write_text(json.dumps({"cells": cells, "metadata": kernel, "nbformat": 4, "nbformat_minor": 5}))


def test_a_notebooks_toolbar_shows_the_sandbox_its_cells_use_and_opens_its_row(page, lab):
    url, token, data_dir = lab
    nx = SandboxManager(data_dir)
    unrelated = nx.sandbox_create("not-this-notebooks")["sandbox_id"]
    notebook_with(data_dir.parent / "toolbar.ipynb", "%load_ext nexus_jupyter", "%%sandbox python\nprint('in the box')")
    page.goto(f"{url}/lab/tree/toolbar.ipynb?token={token}")
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")  # other notebooks may be restored, hidden
    state = notebook.locator(".jp-NexusNotebookSandbox-state")
    state.wait_for(timeout=120_000)
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
    sidebar = page.locator(SIDEBAR)
    if not sidebar.is_visible():
        page.locator('.jp-SideBar [data-id="nexus-sandboxes"]').click()
    row(sidebar, unrelated).wait_for(timeout=30_000)  # the list was read: another sandbox is not this one's
    assert state.inner_text() == "none yet"
    notebook.locator(".jp-Cell").first.click()  # the notebook is the current widget: Run acts on it
    page.locator(".lm-MenuBar-item", has_text="Run").click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    output = notebook.locator(".jp-OutputArea-output", has_text="in the box")
    choose = page.locator(".jp-Dialog", has_text="Select Kernel")
    deadline = time.monotonic() + 120
    while not output.is_visible() and time.monotonic() < deadline:
        if choose.is_visible():  # Lab asks when the run came before the notebook's session was up
            choose.get_by_role("button", name="Select").click()
        page.wait_for_timeout(250)
    output.wait_for(timeout=1000)
    page.wait_for_function("element => element.textContent === 'active'", arg=state.element_handle(), timeout=30_000)
    [made] = [s for s in nx.sandbox_list()["sandboxes"] if s.get("notebook")]
    assert made["notebook"] == str(data_dir.parent / "toolbar.ipynb")
    item = row(sidebar, made["sandbox_id"])
    item.locator(".jp-NexusSandboxes-notebook", has_text="toolbar.ipynb").wait_for(timeout=30_000)

    # renamed, the notebook keeps its sandbox: the item follows the kernel, the row the new name
    page.locator(".lm-TabBar-tab", has_text="toolbar.ipynb").click(button="right")
    page.locator(".lm-Menu-item", has_text="Rename Notebook").click()
    page.locator(".jp-Dialog input").fill("renamed.ipynb")
    page.keyboard.press("Enter")
    page.locator(".lm-TabBar-tab", has_text="renamed.ipynb").wait_for(timeout=30_000)
    item.locator(".jp-NexusSandboxes-notebook", has_text="renamed.ipynb").wait_for(timeout=30_000)
    assert state.inner_text() == "active"

    # a click shows its row in the sidebar
    sidebar.get_by_role("button", name="Refresh").click()  # the sidebar may be closed or open: a click opens it
    state.click()
    item.wait_for(state="visible", timeout=30_000)
    assert "jp-mod-revealed" in item.get_attribute("class")

    nx.sandbox_pause(made["sandbox_id"])
    page.wait_for_function("element => element.textContent === 'paused'", arg=state.element_handle(), timeout=30_000)
    nx.sandbox_resume(made["sandbox_id"])
    nx.store.update(made["sandbox_id"], {"expires_at": time.time() - 1})  # its idle time ran out
    nx.reap()
    page.wait_for_function("element => element.textContent === 'expired'", arg=state.element_handle(), timeout=30_000)
    nx.sandbox_stop(unrelated)


@pytest.fixture(scope="module")
def lab_without_the_server_extension(tmp_path_factory):
    """JupyterLab with the nexus_jupyter server extension turned off (the lab extension still loads)."""
    root = tmp_path_factory.mktemp("lab-off")
    flag = "--ServerApp.jpserver_extensions=nexus_jupyter=False"
    server, url, token = start_lab(root, {"NEXUS_DATA_DIR": str(root / "data")}, flag)
    yield url, token, root / "data"
    server.terminate()
    server.wait(30)


def test_without_the_server_extension_the_sidebar_says_how_to_enable_it(page, lab_without_the_server_extension):
    sidebar = open_sidebar(page, lab_without_the_server_extension)
    message = sidebar.locator(".jp-NexusSandboxes-error")
    message.wait_for(timeout=30_000)
    assert "server extension is not enabled" in message.inner_text()
    assert "jupyter server extension enable nexus_jupyter" in message.inner_text()


@pytest.fixture(scope="module")
def admins_lab_under_a_prefix(tmp_path_factory):
    """JupyterLab under /nexus-prefix/, its owner an admin, the sidebar refreshing once an hour
    (a user setting), so only the buttons refresh it."""
    root = tmp_path_factory.mktemp("lab-prefix")
    settings = root / "settings" / "nexus-jupyter"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"refreshInterval": 3600}))
    env = {"NEXUS_DATA_DIR": str(root / "data"), "JUPYTERLAB_SETTINGS_DIR": str(root / "settings")}
    flags = ("--ServerApp.base_url=/nexus-prefix/", "--NexusSandboxApp.admin_users=root")
    server, url, token = start_lab(root, env, *flags)
    yield url, token, root / "data"
    server.terminate()
    server.wait(30)
    destroy_everything_in(root / "data")


def test_under_a_base_url_an_admin_sees_every_users_sandboxes_and_a_failed_action_says_why(
    page, admins_lab_under_a_prefix
):
    _, _, data_dir = admins_lab_under_a_prefix
    nx = SandboxManager(data_dir, user_id="root")
    mine = nx.sandbox_create("mine")["sandbox_id"]
    bobs = SandboxManager(data_dir, user_id="bob").sandbox_create("bobs")["sandbox_id"]
    sidebar = open_sidebar(page, admins_lab_under_a_prefix, prefix="/nexus-prefix")
    row(sidebar, mine).wait_for(timeout=30_000)
    assert row(sidebar, bobs).count() == 0  # mine by default
    sidebar.get_by_label("Whose sandboxes").select_option("all")
    row(sidebar, bobs).wait_for(timeout=30_000)
    assert row(sidebar, bobs).locator(".jp-NexusSandboxes-user").inner_text() == "bob"
    sidebar.get_by_label("Whose sandboxes").select_option("mine")
    row(sidebar, bobs).wait_for(state="detached", timeout=30_000)

    # stopped behind the sidebar's back (it refreshes hourly): Pause fails and says why
    nx.sandbox_stop(mine)
    row(sidebar, mine).get_by_role("button", name="Pause").click()
    error = sidebar.locator(".jp-NexusSandboxes-error")
    error.wait_for(timeout=30_000)
    assert error.inner_text().startswith("pause failed: "), error.inner_text()
    assert "stopped" in error.inner_text(), error.inner_text()
    row(sidebar, mine).wait_for(state="detached", timeout=30_000)  # the list read again after the failure


@pytest.fixture(scope="module")
def fleet_lab(tmp_path_factory, postgres):
    """JupyterLab as host alpha of a fleet (its sandboxes' state in a PostgreSQL database):
    (url, token, root, database URL)."""
    root = tmp_path_factory.mktemp("lab-fleet")
    database = postgres.create_database(f"lab_{os.getpid()}_{time.monotonic_ns()}")
    env = {"NEXUS_DATA_DIR": str(root / "data"), "NEXUS_DATABASE_URL": database, "NEXUS_HOST_ID": "alpha"}
    server, url, token = start_lab(root, env)
    yield url, token, root, database
    server.terminate()
    server.wait(30)


def test_in_a_fleet_each_row_names_its_host_and_an_unreachable_one_says_which(page, fleet_lab, monkeypatch):
    url, token, root, database = fleet_lab
    monkeypatch.setenv("NEXUS_DATABASE_URL", database)
    managers = {}
    for host, data_dir in (("alpha", root / "data"), ("beta", root / "beta-data")):
        # alpha's own CLI, and that of a host that runs no server
        monkeypatch.setenv("NEXUS_HOST_ID", host)
        managers[host] = SandboxManager(data_dir, warm_pool=0)
        assert managers[host].service.fleet.host_id == host
    here = managers["alpha"].sandbox_create("here")["sandbox_id"]
    there = managers["beta"].sandbox_create("there")["sandbox_id"]
    try:
        sidebar = open_sidebar(page, (url, token, root))
        row(sidebar, there).wait_for(timeout=30_000)
        assert row(sidebar, here).locator(".jp-NexusSandboxes-provider").inner_text() == "local on alpha"
        assert row(sidebar, there).locator(".jp-NexusSandboxes-provider").inner_text() == "local on beta"
        row(sidebar, there).get_by_role("button", name="Pause").click()
        error = sidebar.locator(".jp-NexusSandboxes-error")
        error.wait_for(timeout=30_000)
        assert error.inner_text() == (
            f"pause failed: Sandbox {there} is on host beta, where no nexus server is running: start one there "
            "(nexus serve, or a Jupyter server with the extension) or act on it from beta"
        )
        row(sidebar, here).get_by_role("button", name="Pause").click()
        row(sidebar, here).locator(".jp-NexusSandboxes-status", has_text="paused").wait_for(timeout=30_000)
    finally:
        managers["alpha"].sandbox_stop(here)
        managers["beta"].sandbox_stop(there)
