"""The double's cloud: teams, sandboxes and their lifecycle, each sandbox a real local box.

E2B runs a sandbox as a Firecracker VM; here it is a box of our local provider
(bubblewrap), made and ended by ``LocalProvider`` in this process, so code
really runs, streams, times out and keeps its state.  What E2B's control plane
decides (who may do what, when a sandbox ends, what a listing shows) is kept
here in memory, as the control plane keeps it in its database.
"""

from __future__ import annotations

import secrets
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from nexus_jupyter.providers.base import BoxSpec
from nexus_jupyter.providers.local import LocalProvider

ENVD_VERSION = "0.6.4"  # the newest the pinned SDK gates features on (PROTOCOL.md, pitfall 7)
TEMPLATES = {"code-interpreter-v1": "code-interpreter-v1", "base": "base"}
DEFAULT_TIMEOUT_SECONDS = 300  # E2B's, when a create sends none
MAX_TIMEOUT_SECONDS = 24 * 3600  # E2B's Pro plan (Hobby: 1 h)
BOX_MEMORY_MB = 512  # each local box; E2B's smallest sandbox has 512 MiB too
EXPIRY_TICK_SECONDS = 0.2
# The local box's own idle clock ends it this long after E2B's timeout would have,
# should this process die without ending it.
BOX_GRACE_SECONDS = 120
STALL_SECONDS = 5.0  # how long a slow team's create stalls: past the request timeout its tests set


class CloudError(Exception):
    """An answer of the control plane other than success: ``status`` and E2B's JSON message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


class Team:
    """Who an API key is.  Keys name their team's abilities, so a test picks one by key:
    ``e2b_…`` a team on a plan with pause, ``e2b_nopause_…`` one without; and how E2B
    fails it on create: ``e2b_busy_…`` E2B is busy (503), ``e2b_slow_…`` E2B stalls for
    STALL_SECONDS, ``e2b_garbled_…`` something in front of E2B answers 500 with a page
    that is not E2B's JSON.  A team's plan can change later (``Cloud.change_plan``)."""

    def __init__(self, api_key: str):
        self.key = api_key
        self.can_pause = not api_key.startswith("e2b_nopause")
        self.busy = api_key.startswith("e2b_busy_")
        self.slow = api_key.startswith("e2b_slow_")
        self.garbled = api_key.startswith("e2b_garbled_")


class CloudSandbox:
    def __init__(self, team: Team, template: str, metadata: dict, env_vars: dict, timeout: int, allow_internet: bool):
        self.team = team
        self.sandbox_id = "i" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(19))
        self.template = template
        self.metadata = metadata
        self.env_vars = env_vars
        self.allow_internet = allow_internet
        self.access_token = secrets.token_hex(16)
        self.started_at = time.time()
        self.end_at = self.started_at + timeout
        self.state = "running"
        self.box_state: dict = {}
        self.executions = 0
        self.cpu_mark: tuple[float, float] | None = None  # (cpu seconds, when) at the last metrics read
        self.lock = threading.Lock()  # one lifecycle change at a time

    def as_sandbox(self) -> dict:
        """The ``Sandbox`` answer of create and connect."""
        return {
            "templateID": self.template,
            "sandboxID": self.sandbox_id,
            "clientID": "6532622b",
            "envdVersion": ENVD_VERSION,
            "envdAccessToken": self.access_token,
            "domain": None,
            "alias": TEMPLATES.get(self.template),
        }

    def as_listed(self) -> dict:
        """``ListedSandbox`` / ``SandboxDetail``: every required key."""
        return {
            "templateID": self.template,
            "alias": TEMPLATES.get(self.template),
            "sandboxID": self.sandbox_id,
            "clientID": "6532622b",
            "startedAt": iso(self.started_at),
            "endAt": iso(self.end_at),
            "cpuCount": 1,
            "memoryMB": BOX_MEMORY_MB,
            "diskSizeMB": BOX_MEMORY_MB // 2,
            "state": self.state,
            "envdVersion": ENVD_VERSION,
            "metadata": self.metadata,
            "allowInternetAccess": self.allow_internet,
        }


class Cloud:
    """Every sandbox of every team, and the clock that ends them at their timeout."""

    def __init__(self, data_dir: Path, max_sandboxes_per_team: int = 20):
        self.provider = LocalProvider(data_dir)
        self.provider.pool_size = 0
        self.max_sandboxes_per_team = max_sandboxes_per_team
        self.sandboxes: dict[str, CloudSandbox] = {}
        self.teams: dict[str, Team] = {}  # kept, as E2B keeps them, so a plan can change
        self.lock = threading.Lock()
        self._stopping = threading.Event()
        self._clock = threading.Thread(target=self._expire_loop, name="e2b-double-clock", daemon=True)
        self._clock.start()

    # ---- auth
    def team(self, api_key: str | None) -> Team:
        if not api_key:
            raise CloudError(401, "Missing API key")
        if not api_key.startswith("e2b_"):
            raise CloudError(401, "Invalid API key, it must start with 'e2b_'")
        with self.lock:
            return self.teams.setdefault(api_key, Team(api_key))

    def change_plan(self, team: Team, can_pause: bool) -> None:
        """The team moves to a plan with pause or without (its sandboxes, paused or not, stay)."""
        team.can_pause = can_pause

    def sandbox(self, team: Team, sandbox_id: str) -> CloudSandbox:
        found = self.sandboxes.get(sandbox_id)
        if found is None or found.team.key != team.key:
            raise CloudError(404, f"sandbox \"{sandbox_id}\" doesn't exist or you don't have access to it")
        return found

    # ---- lifecycle
    def create(self, team: Team, body: dict) -> CloudSandbox:
        if team.busy:
            raise CloudError(503, "Service is busy, please try again later")
        if team.slow:
            time.sleep(STALL_SECONDS)  # the client gave up meanwhile: nothing is made
            raise CloudError(504, "the request took too long")
        template = body.get("templateID") or "base"
        if template not in TEMPLATES:
            raise CloudError(404, f"template '{template}' not found")
        with self.lock:
            live = sum(1 for s in self.sandboxes.values() if s.team.key == team.key)
            if live >= self.max_sandboxes_per_team:
                raise CloudError(
                    429,
                    f"You have reached the maximum number of concurrent E2B sandboxes "
                    f"({self.max_sandboxes_per_team}). If you need more, please contact us at "
                    "'https://e2b.dev/docs/getting-help'",
                )
        timeout = int(body.get("timeout") or DEFAULT_TIMEOUT_SECONDS)
        if timeout > MAX_TIMEOUT_SECONDS:
            raise CloudError(400, f"Timeout cannot be greater than {MAX_TIMEOUT_SECONDS // 3600} hours")
        sandbox = CloudSandbox(
            team,
            template,
            metadata={str(k): str(v) for k, v in (body.get("metadata") or {}).items()},
            env_vars={str(k): str(v) for k, v in (body.get("envVars") or {}).items()},
            timeout=timeout,
            # E2B's sandboxes reach the internet unless told not to.
            allow_internet=body.get("allow_internet_access", True) is not False,
        )
        spec = BoxSpec(
            sandbox.sandbox_id,
            allow_internet=sandbox.allow_internet,
            memory_mb=BOX_MEMORY_MB,
            disk_mb=BOX_MEMORY_MB // 2,
            env=sandbox.env_vars,
            idle_timeout_seconds=timeout + BOX_GRACE_SECONDS,
        )
        try:
            sandbox.box_state = self.provider.create(spec)
            self.provider.check_started(sandbox.sandbox_id, sandbox.box_state)
        except Exception as exc:
            self.provider.destroy(sandbox.sandbox_id, sandbox.box_state)
            raise CloudError(500, f"failed to start the sandbox: {exc}") from None
        with self.lock:
            self.sandboxes[sandbox.sandbox_id] = sandbox
        return sandbox

    def kill(self, sandbox: CloudSandbox) -> None:
        with self.lock:
            if self.sandboxes.pop(sandbox.sandbox_id, None) is None:
                return
        self.provider.destroy(sandbox.sandbox_id, sandbox.box_state)

    def set_timeout(self, sandbox: CloudSandbox, seconds: int) -> None:
        if seconds > MAX_TIMEOUT_SECONDS:
            raise CloudError(400, f"Timeout cannot be greater than {MAX_TIMEOUT_SECONDS // 3600} hours")
        sandbox.end_at = time.time() + seconds
        if sandbox.state == "running":
            self.provider.touch(sandbox.sandbox_id, sandbox.box_state, seconds + BOX_GRACE_SECONDS)

    def pause(self, sandbox: CloudSandbox) -> bool:
        """False if it was paused already (E2B's 409)."""
        if not sandbox.team.can_pause:
            raise CloudError(403, "Pausing sandboxes is not available on your team's plan")
        with sandbox.lock:
            if sandbox.state == "paused":
                return False
            self.provider.pause(sandbox.sandbox_id, sandbox.box_state)
            sandbox.state = "paused"
        return True

    def connect(self, sandbox: CloudSandbox, timeout: int | None) -> bool:
        """Resume a paused sandbox (True) or attach to a running one (False); a timeout only extends."""
        if timeout and timeout > MAX_TIMEOUT_SECONDS:
            raise CloudError(400, f"Timeout cannot be greater than {MAX_TIMEOUT_SECONDS // 3600} hours")
        with sandbox.lock:
            resumed = sandbox.state == "paused"
            if resumed and not sandbox.team.can_pause:  # a team whose plan lost pause since
                raise CloudError(403, "Resuming sandboxes is not available on your team's plan")
            if resumed:
                self.provider.resume(sandbox.sandbox_id, sandbox.box_state)
                sandbox.state = "running"
                sandbox.end_at = time.time() + (timeout or DEFAULT_TIMEOUT_SECONDS)
            elif timeout:
                sandbox.end_at = max(sandbox.end_at, time.time() + timeout)
        if sandbox.state == "running":
            self.provider.touch(sandbox.sandbox_id, sandbox.box_state, sandbox.end_at - time.time() + BOX_GRACE_SECONDS)
        return resumed

    def listed(self, team: Team, metadata: dict, states: set[str]) -> list[CloudSandbox]:
        with self.lock:
            mine = [s for s in self.sandboxes.values() if s.team.key == team.key and s.state in states]
        return sorted(
            (s for s in mine if all(s.metadata.get(k) == v for k, v in metadata.items())),
            key=lambda s: (s.started_at, s.sandbox_id),
        )

    def metrics(self, sandbox: CloudSandbox) -> list[dict]:
        usage = self.provider.metrics(sandbox.sandbox_id, sandbox.box_state)
        now = time.time()
        cpu_seconds = usage.get("cpu_seconds") or 0.0
        last = sandbox.cpu_mark or (0.0, sandbox.started_at)
        sandbox.cpu_mark = (cpu_seconds, now)
        percent = max(0.0, min(100.0, 100.0 * (cpu_seconds - last[0]) / max(now - last[1], 1e-3)))
        return [
            {
                "timestamp": iso(now),
                "timestampUnix": int(now),
                "cpuCount": 1,
                "cpuUsedPct": round(percent, 2),
                "memUsed": usage.get("memory_bytes") or 0,
                "memTotal": usage.get("memory_limit_bytes") or BOX_MEMORY_MB << 20,
                "memCache": 0,
                "diskUsed": usage.get("disk_used_bytes") or 0,
                "diskTotal": usage.get("disk_limit_bytes") or (BOX_MEMORY_MB // 2) << 20,
            }
        ]

    # ---- the clock
    def _expire_loop(self) -> None:
        while not self._stopping.wait(EXPIRY_TICK_SECONDS):
            now = time.time()
            with self.lock:
                due = [s for s in self.sandboxes.values() if s.state == "running" and s.end_at <= now]
            for sandbox in due:
                try:
                    self.kill(sandbox)  # the default lifecycle: on timeout, kill
                except Exception as exc:  # a box that will not die: try again next tick
                    print(f"e2b double: could not end {sandbox.sandbox_id}: {exc}", flush=True)

    def close(self) -> None:
        """End the clock and every sandbox (the double is stopping)."""
        self._stopping.set()
        for sandbox in list(self.sandboxes.values()):
            try:
                self.kill(sandbox)
            except Exception as exc:
                print(f"e2b double: could not end {sandbox.sandbox_id}: {exc}", flush=True)
        self.provider.drain_pool()
