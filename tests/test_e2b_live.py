"""The E2B provider against E2B's real cloud.

Runs only when ``E2B_API_KEY`` is set and the SDK is not pointed elsewhere (no
``E2B_API_URL``/``E2B_SANDBOX_URL``); otherwise every test here shows as skipped.
It creates one sandbox on the key's team (a few cents of E2B time) and stops it.
"""

from __future__ import annotations

import os

import pytest

from nexus_jupyter import SandboxError, SandboxManager

LIVE = bool(os.environ.get("E2B_API_KEY")) and not (os.environ.get("E2B_API_URL") or os.environ.get("E2B_SANDBOX_URL"))
pytestmark = pytest.mark.skipif(
    not LIVE, reason="needs E2B_API_KEY (a real E2B key) and network access to E2B; the double covers the rest"
)
SEED_PAUSE_MESSAGE = "E2B doesn't support pause/resume. Use stop to destroy the sandbox."


def test_a_live_e2b_sandbox_runs_code_keeps_state_moves_files_and_stops(tmp_path):
    from e2b_code_interpreter import Sandbox

    nx = SandboxManager(tmp_path / "data", provider="e2b")
    sandbox = nx.sandbox_create("live-check", ttl_minutes=5)["sandbox_id"]
    e2b_id = nx.store.get(sandbox)["provider_state"]["e2b_id"]
    try:
        nx.sandbox_run(sandbox, "python", "x = 41")
        assert nx.sandbox_run(sandbox, "python", "print(x + 1)")["stdout"] == "42\n"
        value = nx.sandbox_run(sandbox, "python", "6 * 7")["results"]
        assert value[0]["data"]["text/plain"] == "42" and value[0]["is_main_result"]
        assert nx.sandbox_run(sandbox, "bash", "echo hi; exit 3")["exit_code"] == 3
        assert nx.sandbox_run(sandbox, "javascript", "console.log(1 + 1)")["stdout"] == "2\n"
        nx.sandbox_write_file(sandbox, "data/in.txt", b"payload")
        assert nx.sandbox_read_file(sandbox, "data/in.txt") == b"payload"
        [listed] = nx.sandbox_list(verify_status=True)["sandboxes"]
        assert listed["provider_status"] == "active"
        try:
            nx.sandbox_pause(sandbox)
            nx.sandbox_resume(sandbox)
            assert nx.sandbox_run(sandbox, "python", "print(x)")["stdout"] == "41\n"
        except SandboxError as exc:  # a plan without pause
            assert str(exc) == SEED_PAUSE_MESSAGE
    finally:
        nx.sandbox_stop(sandbox)
    assert e2b_id not in {listed.sandbox_id for listed in Sandbox.list().next_items()}
