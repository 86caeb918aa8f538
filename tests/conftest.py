"""Fixtures: a fresh data dir per test, a manager on it, the providers to test, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nexus_jupyter import SandboxManager
from nexus_jupyter.providers.local import LocalProvider

PROVIDERS = [name.strip() for name in os.environ.get("NEXUS_TEST_PROVIDERS", "local").split(",") if name.strip()]
# The provider suites also run on the local provider's unshare fallback (root only).
ISOLATION_SUITES = {"test_conformance", "test_isolation", "test_hardening"}


def _unshare_available() -> bool:
    return os.geteuid() == 0 and all(shutil.which(tool) for tool in ("unshare", "setpriv", "mount", "pivot_root"))


# The attacks also run on boxes handed out by the local warm pool.
POOL_SUITES = {"test_isolation"}
# The CLI and API suites also run in the seed's remote mode: through a real `nexus serve`
# (NEXUS_URL, NEXUS_API_KEY) on the local provider.
REMOTE_SUITES = {"test_cli", "test_conformance"}
# The conformance suite also runs on the E2B provider, against the local double of E2B's
# cloud (tests/e2b_double: the real SDK over HTTP, each sandbox a local box).
E2B_SUITES = {"test_conformance"}
# The lifecycle and CLI suites also run with the state in PostgreSQL (NEXUS_DATABASE_URL, a
# database of their own per test in a throwaway cluster) on the local provider.
POSTGRES_SUITES = {"test_lifecycle", "test_cli"}
# Suites about one provider run once, with that provider.
SINGLE_PROVIDER_SUITES = {
    "test_local": "local",
    "test_local_degraded": "local",
    "test_local_pool": "local",
    "test_docker": "docker",
}


def pytest_generate_tests(metafunc):
    if "provider" in metafunc.fixturenames:
        module = metafunc.module.__name__
        variants = list(PROVIDERS)
        if module in SINGLE_PROVIDER_SUITES:
            variants = [SINGLE_PROVIDER_SUITES[module]]
        elif module in ISOLATION_SUITES and "local" in PROVIDERS and _unshare_available():
            variants.append("local+unshare")
        if module in POOL_SUITES and "local" in PROVIDERS:
            variants.append("local+pool")
        if module in REMOTE_SUITES and "local" in PROVIDERS:
            variants.append("local+remote")
        if module in E2B_SUITES and "local" in PROVIDERS:
            variants.append("e2b")
        if module in POSTGRES_SUITES and "local" in PROVIDERS:
            variants.append("local+postgres")
        metafunc.parametrize("provider", variants, indirect=True)


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("NEXUS_DATA_DIR", str(path))
    for name in ("NEXUS_USER", "NEXUS_ADMIN", "NEXUS_SANDBOX_PROVIDER", "NEXUS_URL", "NEXUS_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    # The local warm pool is on by default; the suites that are not about it run without
    # (a pool box per test would double the boxes on a 2-core machine): test_local_pool.py.
    monkeypatch.setenv("NEXUS_LOCAL_POOL_SIZE", "0")
    yield path
    destroy_everything_in(path)


def destroy_everything_in(data_dir: Path) -> None:
    """Whatever a test left running is destroyed, so no box outlives its test: every user's
    sandboxes, orphans, and the local warm pool (after waiting for a refill under way)."""
    if (data_dir / "nexus.db").exists() or os.environ.get("NEXUS_DATABASE_URL"):
        cleanup = SandboxManager(data_dir, is_admin=True)
        for row in cleanup.store.select(include_stopped=False):
            cleanup.sandbox_stop(row["sandbox_id"])
        cleanup.reap()
    if (data_dir / "boxes" / "local").exists():
        LocalProvider(data_dir).pool.drain()


@pytest.fixture
def provider(request, monkeypatch, data_dir) -> str:
    """The provider's name; ``local+unshare`` is the local provider built with unshare instead of
    bwrap, ``local+pool`` the local provider whose creates take boxes from its warm pool."""
    name, _, variant = request.param.partition("+")
    monkeypatch.setenv("NEXUS_LOCAL_ISOLATION", "unshare" if variant == "unshare" else "auto")
    if variant == "pool":
        monkeypatch.setenv("NEXUS_LOCAL_POOL_SIZE", "1")
    if name == "e2b":
        for key, value in request.getfixturevalue("e2b_double").env().items():
            monkeypatch.setenv(key, value)
    if variant == "postgres":
        database = request.getfixturevalue("postgres").create_database(f"t_{os.getpid()}_{time.monotonic_ns()}")
        monkeypatch.setenv("NEXUS_DATABASE_URL", database)
    if variant != "remote":
        yield name
        return
    server = request.getfixturevalue("nexus_server")
    monkeypatch.setenv("NEXUS_URL", server.url)
    # A user of its own per test, as each test has a data dir of its own locally.
    monkeypatch.setenv("NEXUS_API_KEY", server.add_user(f"user-{os.urandom(4).hex()}"))
    yield name
    # What the test left on the server goes with it, as a local test's boxes do.
    cleanup = SandboxManager(server.data_dir, is_admin=True, warm_pool=0)
    for row in cleanup.store.select(include_stopped=False):
        cleanup.sandbox_stop(row["sandbox_id"])


@pytest.fixture(scope="session")
def nexus_server(tmp_path_factory):
    """A real `nexus serve` on loopback for the remote-mode variants (started once, on first use)."""
    from jupyter_servers import NexusServe

    root = tmp_path_factory.mktemp("nexus-serve")
    server = NexusServe(root / "data", "--keys-file", "-")  # keys added per test (add_user)
    yield server
    server.stop()
    destroy_everything_in(root / "data")


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster on loopback (started once, on first use; removed after)."""
    from postgres_cluster import PostgresCluster, unavailable

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = PostgresCluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def e2b_double(tmp_path_factory):
    """The local double of E2B's cloud (started once, on first use)."""
    from e2b_double import E2BDouble

    double = E2BDouble(tmp_path_factory.mktemp("e2b-double") / "data")
    yield double
    double.stop()


def remote(nx) -> bool:
    """Whether ``nx`` acts through a nexus server (the remote-mode variant)."""
    from nexus_jupyter.remote import RemoteService

    return isinstance(nx.service, RemoteService)


def needs_the_store(nx) -> None:
    """Skip a test that reaches into the local store or a provider, in the remote-mode variant
    (there the store and the boxes are the server's)."""
    if remote(nx):
        pytest.skip("reaches into the store or a provider: the server's in remote mode")


@pytest.fixture
def nx(data_dir, provider) -> SandboxManager:
    if os.environ.get("NEXUS_URL"):
        return SandboxManager(provider=provider)  # the remote-mode variant
    manager = SandboxManager(data_dir, provider=provider)
    if provider == "local" and os.environ["NEXUS_LOCAL_POOL_SIZE"] != "0":
        manager.provider("local").pool.fill(1)  # the next create takes a warm box
    return manager


@pytest.fixture
def sandbox(nx) -> str:
    """A fresh sandbox's id, stopped after the test."""
    record = nx.sandbox_create("test-sandbox", ttl_minutes=10)
    yield record["sandbox_id"]
    nx.sandbox_stop(record["sandbox_id"])


class CLIResult:
    def __init__(self, completed: subprocess.CompletedProcess):
        self.returncode = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr

    def json(self):
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"<exit {self.returncode} stdout={self.stdout[-500:]!r} stderr={self.stderr[-500:]!r}>"


@pytest.fixture
def nexus(data_dir, provider):
    """Run the real ``nexus`` command in a subprocess: ``nexus("sandbox", "list", "--json")``."""

    def run(*args: str, input: str | bytes | None = None, timeout: float = 120, env: dict | None = None) -> CLIResult:
        full_env = {**os.environ, "NEXUS_DATA_DIR": str(data_dir), "NEXUS_SANDBOX_PROVIDER": provider, **(env or {})}
        completed = subprocess.run(
            [sys.executable, "-m", "nexus_jupyter", *args],
            input=input,
            capture_output=True,
            text=not isinstance(input, bytes),
            timeout=timeout,
            env=full_env,
        )
        if isinstance(input, bytes):
            completed.stdout = completed.stdout.decode("utf-8", "replace")
            completed.stderr = completed.stderr.decode("utf-8", "replace")
        return CLIResult(completed)

    return run


def host_processes_matching(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker`` (other than this test process)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if marker.encode() in cmdline.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def process_status(pid: int) -> dict[str, str] | None:
    """The fields of /proc/PID/status (Uid, State, NSpid...), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return {key: value.strip() for key, _, value in (line.partition(":") for line in status)}
    except OSError:
        return None


def processes_of_uid(uid: int) -> list[int]:
    """Host pids of live (not zombie) processes whose real uid is ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        fields = process_status(int(entry)) if entry.isdigit() else None
        if fields and not fields["State"].startswith("Z") and int(fields["Uid"].split()[0]) == uid:
            found.append(int(entry))
    return found


# ---- JupyterLab in a real browser (test_panel_browser.py, test_sidebar_browser.py)

CHROMIUM = "/usr/bin/chromium"
BROWSER_TESTS = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Chromium (apt-get install chromium)"),
    pytest.mark.skipif(shutil.which("jupyter-lab") is None, reason="needs JupyterLab (pip install jupyterlab)"),
]


def start_lab(root: Path, env: dict, *args: str) -> tuple[subprocess.Popen, str, str]:
    """``jupyter lab`` on a free loopback port serving ``root``; (process, url, token) once it answers."""
    import secrets
    import socket
    import time

    from jupyter_servers import free_port

    port, token = free_port(), secrets.token_hex(16)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}",
         "--ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--notebook-dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         # a workspace of its own: no notebook another test opened is restored into this one's page
         f"--LabApp.workspaces_dir={root / '.workspaces'}", *args],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    return server, f"http://127.0.0.1:{port}", token


PANEL_CELL = "import nexus_jupyter\npanel = nexus_jupyter.panel(refresh_seconds=1)\npanel"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on loopback with a notebook that shows the panel; its sandboxes in a fresh data dir."""
    root = tmp_path_factory.mktemp("lab")
    data_dir = root / "data"
    notebook = {
        "cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": PANEL_CELL}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (root / "panel.ipynb").write_text(json.dumps(notebook))
    server, url, token = start_lab(root, {"NEXUS_DATA_DIR": str(data_dir), "NEXUS_SANDBOX_PROVIDER": "local"})
    yield url, token, data_dir
    server.terminate()
    server.wait(30)
    destroy_everything_in(data_dir)  # the warm pool the kernel kept too (on, as for a user)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on its test (``item.report_call``): the page fixture keeps a failed
    test's screenshot."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


# A failed browser test's page, kept for whoever reads the CI log.
FAILED_PAGES_DIR = Path(os.environ.get("NEXUS_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


@pytest.fixture
def page(lab, request, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        opened = browser.new_page(viewport={"width": 1400, "height": 900})
        yield opened
        if os.environ.get("NEXUS_TEST_SCREENSHOTS"):
            opened.screenshot(path=os.path.join(os.environ["NEXUS_TEST_SCREENSHOTS"], request.node.name + ".png"))
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            FAILED_PAGES_DIR.mkdir(parents=True, exist_ok=True)
            shot = FAILED_PAGES_DIR / f"{request.node.name}.png"
            opened.screenshot(path=str(shot))
            print(f"\nthe page as the test failed: {shot}")
        browser.close()
