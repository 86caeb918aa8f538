"""Benchmark of what the JupyterLab sidebar costs and how soon it answers.

    python benchmarks/bench_sidebar.py [--repeat 30]

Prints medians (ms):
- the sidebar's poll, ``GET nexus/api/sandboxes`` with 10, 100 and 1,000 sandboxes in the
  store, beside Jupyter's own cheapest API call (``/api/status``) and the file browser's
  poll (``/api/contents``, a directory of 10 files), same server, same session;
- a click on a row's Pause (and then Resume) in Chromium until the row shows the new status,
  beside the same REST call from Python and a click that makes no request (the row's menu
  opening: what Playwright's click and wait cost by themselves);
- a sandbox made by the CLI until its row appears in the open sidebar (the poll's interval,
  5 s by default, bounds it), beside the CLI call itself.
Needs Chromium (/usr/bin/chromium) and Playwright.  Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from bench_store import fill
from jupyter_servers import JupyterServer

from nexus_jupyter import SandboxManager
from nexus_jupyter.store import Store

USER = "bench"
CHROMIUM = "/usr/bin/chromium"


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f}"


def timed_gets(session, url: str, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = session.get(url, timeout=30)
        samples.append(time.perf_counter() - started)
        assert response.ok, response.text
    return samples


def bench_poll(repeat: int) -> None:
    import requests

    with tempfile.TemporaryDirectory() as tmp:
        root, data_dir = Path(tmp), Path(tmp) / "data"
        for i in range(10):
            (root / f"file-{i}.txt").write_text("x")
        server = JupyterServer(root, data_dir, env={"NEXUS_USER": USER})
        try:
            session = requests.Session()
            session.headers.update(server.headers())
            status = timed_gets(session, f"{server.url}/api/status", repeat)
            contents = timed_gets(session, f"{server.url}/api/contents", repeat)
            print("\nThe sidebar's poll (ms, medians):")
            print(f"  {'GET nexus/api/sandboxes':<38} {'ms':>7}   baseline")
            made = 0
            for count in (10, 100, 1000):
                fill(Store(data_dir), count - made, start=made, user=USER)
                made = count
                listing = session.get(f"{server.api}/sandboxes", timeout=30).json()["sandboxes"]
                assert len(listing) == count, len(listing)
                samples = timed_gets(session, f"{server.api}/sandboxes", repeat)
                print(
                    f"  {f'{count} sandboxes':<38} {median_ms(samples):>7}   /api/status {median_ms(status)}, "
                    f"/api/contents (10 files) {median_ms(contents)}"
                )
        finally:
            server.stop()


def bench_clicks(repeat: int) -> None:
    import requests
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root, data_dir = Path(tmp), Path(tmp) / "data"
        server = JupyterServer(root, data_dir, env={"NEXUS_USER": USER}, app="lab")
        nx = SandboxManager(data_dir, user_id=USER, warm_pool=0)
        sandbox = nx.sandbox_create("clicked")["sandbox_id"]
        session = requests.Session()
        session.headers.update(server.headers())
        rest = {"pause": [], "resume": []}
        for _ in range(repeat):
            for action in ("pause", "resume"):
                started = time.perf_counter()
                assert session.post(f"{server.api}/sandboxes/{sandbox}/{action}", timeout=60).ok
                rest[action].append(time.perf_counter() - started)
        clicks = {"pause": [], "resume": [], "menu": []}
        appear, cli = [], []
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(f"{server.url}/lab?token={server.token}")
                tab = page.locator('.jp-SideBar [data-id="nexus-sandboxes"]')
                tab.wait_for(timeout=120_000)
                page.wait_for_timeout(1000)
                sidebar = page.locator("#nexus-sandboxes")
                if not sidebar.is_visible():
                    tab.click()
                row = sidebar.locator(f'[data-sandbox-id="{sandbox}"]')
                row.wait_for(timeout=60_000)
                for _ in range(repeat):
                    for action, shown in (("pause", "paused"), ("resume", "active")):
                        button = row.get_by_role("button", name=action.capitalize())
                        status = row.locator(".jp-NexusSandboxes-status", has_text=shown)
                        started = time.perf_counter()
                        button.click()
                        status.wait_for(timeout=60_000)
                        clicks[action].append(time.perf_counter() - started)
                for _ in range(repeat):  # Playwright's own floor: a click, and a wait for what it shows
                    started = time.perf_counter()
                    row.get_by_role("button", name="More actions").click()
                    page.locator(".jp-NexusSandboxes-menu").wait_for(timeout=60_000)
                    clicks["menu"].append(time.perf_counter() - started)
                    page.keyboard.press("Escape")
                    page.locator(".jp-NexusSandboxes-menu").wait_for(state="detached", timeout=60_000)
                env = {**os.environ, "NEXUS_DATA_DIR": str(data_dir), "NEXUS_USER": USER}
                for i in range(max(3, repeat // 6)):
                    started = time.perf_counter()
                    made = subprocess.run(
                        [sys.executable, "-m", "nexus_jupyter", "sandbox", "create", f"from-cli-{i}", "--json"],
                        capture_output=True,
                        env=env,
                        check=True,
                    )
                    cli.append(time.perf_counter() - started)
                    made_id = made.stdout.decode().split('"sandbox_id": "')[1].split('"')[0]
                    sidebar.locator(f'[data-sandbox-id="{made_id}"]').wait_for(timeout=60_000)
                    appear.append(time.perf_counter() - started)
                    nx.sandbox_stop(made_id)
                    time.sleep(0.7 * (i + 1) % 5)  # not in step with the poll
                browser.close()
        finally:
            nx.sandbox_stop(sandbox)
            server.stop()
        print("\nClicks in the sidebar (ms, medians), Chromium, until the row shows it:")
        for action in ("pause", "resume"):
            print(
                f"  {action.capitalize():<38} {median_ms(clicks[action]):>7}   "
                f"the REST call alone {median_ms(rest[action])}; a click opening the row's menu "
                f"(no request) {median_ms(clicks['menu'])}"
            )
        print(
            f"  {'CLI create until its row appears':<38} {median_ms(appear):>7}   "
            f"the CLI call alone {median_ms(cli)} (poll every 5 s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    bench_poll(args.repeat)
    bench_clicks(max(5, args.repeat // 3))


if __name__ == "__main__":
    main()
