"""The JupyterLab sidebar "Sandboxes" (labextension/) in a real browser: JupyterLab on
loopback, driven by Chromium (Playwright), as a user clicks through it.

Set NEXUS_TEST_SCREENSHOTS=DIR to keep a screenshot of each test's page.
"""

from __future__ import annotations

import os
import time

import pytest

from nexus_jupyter import SandboxManager
from test_panel_browser import CHROMIUM, lab, page, pytestmark  # noqa: F401  (the same JupyterLab and browser)

SIDEBAR = "#nexus-sandboxes"


def open_sidebar(page, lab):
    url, token, _ = lab
    page.goto(f"{url}/lab?token={token}")
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
