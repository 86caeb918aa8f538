"""A local test double of E2B's cloud, for the E2B provider's tests and benchmark.

It speaks the parts of E2B's wire protocol that the pinned SDK uses for what the
provider does (PROTOCOL.md): the control plane, the sandbox proxy, envd (on the
SDK's own generated Connect modules) and the code interpreter's ``/execute``.
Each sandbox is a real local-provider box, so code runs, streams and times out
for real.  ``E2BDouble`` runs it as a process of its own, as the cloud is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent
# A key names its team's plan (cloud.Team): pausing allowed, or refused.
TEAM_KEY = "e2b_test_" + "0" * 32
NO_PAUSE_KEY = "e2b_nopause_" + "0" * 29


class E2BDouble:
    """The double in a subprocess on a free loopback port."""

    def __init__(self, data_dir: Path, max_sandboxes_per_team: int = 20):
        self.data_dir = Path(data_dir)
        path = [str(TESTS_DIR), os.environ.get("PYTHONPATH")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
        command = [sys.executable, "-m", "e2b_double", "--data-dir", str(self.data_dir)]
        self.process = subprocess.Popen(
            [*command, "--max-sandboxes-per-team", str(max_sandboxes_per_team)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.process.kill()
            raise RuntimeError(f"the E2B double did not start (it printed {line!r})")
        self.url = line.split()[-1]

    def env(self, api_key: str = TEAM_KEY) -> dict[str, str]:
        """What points the SDK (and so the provider) at the double."""
        return {"E2B_API_KEY": api_key, "E2B_API_URL": self.url, "E2B_SANDBOX_URL": self.url}

    def stop(self) -> None:
        """End every sandbox of the double and the double."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
