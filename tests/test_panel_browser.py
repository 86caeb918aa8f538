"""The widget panel in a real browser: JupyterLab on loopback, driven by Chromium (Playwright).

What a user does: show the panel in a notebook, leave it refreshing, reload
the tab, pause and resume a sandbox from it, stop one.  Needs /usr/bin/chromium and the
``playwright`` package (test.sh installs both); skipped, saying why, without them.
"""

from __future__ import annotations

import time

from conftest import BROWSER_TESTS
from nexus_jupyter import SandboxManager

pytestmark = BROWSER_TESTS


def open_panel(page, lab) -> None:
    url, token, _ = lab
    page.goto(f"{url}/lab/tree/panel.ipynb?token={token}")
    editor = page.locator(".jp-Cell .cm-content").first
    editor.wait_for(timeout=120_000)
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)  # the kernel is connected
    editor.click()
    page.keyboard.press("Shift+Enter")


def test_the_panel_renders_again_after_a_reload_and_stop_asks_first(page, lab):
    _, _, data_dir = lab
    nx = SandboxManager(data_dir)
    kept = nx.sandbox_create("seen-in-the-browser")["sandbox_id"]
    doomed = nx.sandbox_create("stopped-from-the-browser")["sandbox_id"]
    open_panel(page, lab)
    output = page.locator(".jp-OutputArea-output")
    output.get_by_text(kept).wait_for(timeout=60_000)
    time.sleep(4)  # a few refreshes (one a second)
    buttons = output.locator("button.jupyter-button")
    count = buttons.count()
    # every button shows its whole label
    for index in range(count):
        assert buttons.nth(index).evaluate("b => b.scrollWidth <= b.clientWidth + 1"), buttons.nth(index).inner_text()
    page.keyboard.press("Control+s")  # the notebook keeps the panel's output, as a user's would
    page.wait_for_timeout(1500)
    started = time.monotonic()
    page.reload()
    output.get_by_text(kept).wait_for(timeout=60_000)
    assert time.monotonic() - started < 60
    assert "model not found" not in page.content().lower()
    assert output.get_by_text("Loading widget").count() == 0
    assert buttons.count() == count  # refreshes updated the rows; they made no new ones
    # Pause changes the sandbox, and its row says so
    row_buttons = output.locator(
        f"xpath=//div[contains(@class, 'widget-html')][contains(., '{kept}')]"
        "/following-sibling::div[contains(@class, 'widget-hbox')][1]"
    )
    row_buttons.locator("button", has_text="Pause").click()
    deadline = time.monotonic() + 30
    while nx.sandbox_status(kept)["status"] != "paused" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert nx.sandbox_status(kept)["status"] == "paused"
    status = "/following-sibling::div[contains(@class, 'widget-html')][contains(., '{}')]"
    row_html = f"xpath=//div[contains(@class, 'widget-html')][contains(., '{kept}')]"
    output.locator(row_html + status.format("paused")).first.wait_for(timeout=10_000)
    row_buttons.locator("button", has_text="Resume").click()
    output.locator(row_html + status.format("active")).first.wait_for(timeout=10_000)
    assert nx.sandbox_status(kept)["status"] == "active"
    # Stop asks before it destroys anything
    row_stop = output.locator(
        f"xpath=//div[contains(@class, 'widget-html')][contains(., '{doomed}')]"
        "/following-sibling::div[contains(@class, 'widget-hbox')][1]//button[contains(., 'Stop')]"
    )
    row_stop.click()
    output.get_by_text("Its processes, files and state are destroyed").wait_for(timeout=10_000)
    assert nx.sandbox_status(doomed)["status"] == "active"
    output.get_by_role("button", name="Stop it").click()
    deadline = time.monotonic() + 30
    while nx.sandbox_status(doomed)["status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert nx.sandbox_status(doomed)["status"] == "stopped"
    assert nx.sandbox_status(kept)["status"] == "active"
    row_stop.wait_for(state="detached", timeout=10_000)  # its row is gone from the panel


def test_jupyter_lab_loads_the_server_extension_and_the_browser_session_reaches_its_api(page, lab):
    url, token, data_dir = lab
    mine = SandboxManager(data_dir).sandbox_create("seen-over-rest")["sandbox_id"]
    page.goto(f"{url}/lab?token={token}")
    page.locator(".jp-LabShell").wait_for(timeout=60_000)
    # what the sidebar will do: a fetch with the page's cookie, and the XSRF token on a write
    listed = page.evaluate("async () => (await fetch('/nexus/api/sandboxes')).json()")
    assert mine in [record["sandbox_id"] for record in listed["sandboxes"]]
    forged = page.evaluate("async () => (await fetch('/nexus/api/sandboxes', {method: 'POST', body: '{}'})).status")
    assert forged == 403
    xsrf = "document.cookie.split('; ').find(c => c.startsWith('_xsrf=')).slice(6)"
    stopped = page.evaluate(
        f"async () => (await fetch('/nexus/api/sandboxes/{mine}/stop', "
        f"{{method: 'POST', headers: {{'X-XSRFToken': {xsrf}}}}})).json()"
    )
    assert stopped["status"] == "stopped"
