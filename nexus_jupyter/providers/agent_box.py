"""Boxes that run our in-box agent (``nexus_jupyter/box/agent.py``): local and Docker.

Running code and moving files is the same for every such box: the host
connects to the agent's Unix socket (``nexus_jupyter.agent_client``).  What
differs per provider (how the box starts, where its socket is, how it is
frozen or destroyed) is the subclass's.  Also here: what every agent box
shares, its host uid, the environment of its runs and how its agent starts.
"""

from __future__ import annotations

import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the client (sockets, hmac) is loaded by the providers that use it, not by every CLI call
    from ..agent_client import AgentClient

from ..errors import AgentUnreachable, ProviderUnavailable
from .base import Cancel, Feature, OutputCallback, Provider, ResultCallback

OOM_NOTE = "[nexus: a process was killed: the sandbox ran out of memory]\n"
BOX_CODE = "/opt/nexus"  # where the box-side code (nexus_jupyter/box) is mounted read-only
BOX_AGENT = f"{BOX_CODE}/agent.py"
BOX_RUN = "/run/nexus"
BOX_CODE_SOURCE = Path(__file__).resolve().parent.parent / "box"
BOX_CODE_FILES = ("agent.py", "python_runtime.py", "python_shell.py")
# How long create waits for a new box's agent to answer.
START_SECONDS = 30.0
# Host uids for boxes: one per box, from a range no real user has (above the
# subordinate-id ranges that rootless containers use, below 2^31).
BOX_UID_BASE = 2_000_000_000
BOX_UID_SPAN = 100_000_000


def _subordinate_ranges() -> list[tuple[int, int]]:
    ranges = []
    for name in ("/etc/subuid", "/etc/subgid"):
        try:
            with open(name) as listing:
                for line in listing:
                    parts = line.strip().split(":")
                    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                        ranges.append((int(parts[1]), int(parts[1]) + int(parts[2])))
        except OSError:
            continue
    return ranges


def box_host_uid(sandbox_id: str) -> int:
    """The unprivileged host uid (and gid) a box's processes and files have: derived from
    its id, skipping any uid a user or a subordinate-id range already has."""
    import hashlib  # here: OpenSSL's module costs every CLI call ~5 ms to load

    taken = _subordinate_ranges()
    uid = BOX_UID_BASE + int(hashlib.sha256(sandbox_id.encode()).hexdigest()[:12], 16) % BOX_UID_SPAN
    for _ in range(1000):
        if not any(low <= uid < high for low, high in taken):
            try:
                pwd.getpwuid(uid)
            except KeyError:
                return uid
        uid = BOX_UID_BASE + (uid - BOX_UID_BASE + 1) % BOX_UID_SPAN
    raise ProviderUnavailable("no free host uid for the sandbox in the range nexus-jupyter uses")


def box_environment(path: str, extra: dict | None = None) -> dict:
    """The environment every run starts with: nothing from the host's, plus the sandbox's own."""
    env = {
        "PATH": path,
        "HOME": "/home/user",
        "USER": "user",
        "LOGNAME": "user",
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "dumb",
        "TMPDIR": "/tmp",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLBACKEND": "Agg",
        # Tools' caches and profiles go to /tmp, not into the user's files.
        "IPYTHONDIR": "/tmp/.nexus/ipython",
        "MPLCONFIGDIR": "/tmp/.nexus/matplotlib",
    }
    env.update(extra or {})
    return env


def agent_command(
    python: str, idle_timeout_seconds: float, workdir: str = "/home/user", agent: str = BOX_AGENT
) -> list[str]:
    """How a box starts its agent: the agent file mounted at BOX_AGENT, its config
    written to ``config.json`` in the socket directory beforehand."""
    return [
        python,
        "-I",
        "-S",
        agent,
        "--socket",
        f"{BOX_RUN}/agent.sock",
        "--workdir",
        workdir,
        "--idle-timeout",
        str(idle_timeout_seconds),
        "--config-file",
        f"{BOX_RUN}/config.json",
    ]


class AgentProvider(Provider):
    """A provider whose boxes run our agent: code, files and liveness go through it."""

    features = frozenset(
        {
            Feature.PAUSE,
            Feature.FILES,
            Feature.STATEFUL_PYTHON,
            Feature.NETWORK_POLICY,
            Feature.LIMITS,
            Feature.METRICS,
        }
    )

    def agent(self, sandbox_id: str, state: dict) -> AgentClient:
        """A client for the box's agent (the subclass knows where its socket is)."""
        raise NotImplementedError

    def check_started(self, sandbox_id: str, state: dict) -> None:
        # A box whose runtime is missing (an image without Python, an interpreter the
        # box cannot see) must fail its create, not vanish at its first run.
        try:
            self.agent(sandbox_id, state).ping(wait=START_SECONDS)
        except AgentUnreachable as exc:
            raise ProviderUnavailable(f"the sandbox did not start: {exc}") from None

    def run(
        self,
        sandbox_id: str,
        state: dict,
        language: str,
        code: str,
        *,
        timeout: float,
        max_output_chars: int,
        env: dict | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        cancel: Cancel | None = None,
    ) -> dict:
        def call(agent: AgentClient) -> dict:
            return agent.run(
                language,
                code,
                timeout,
                env=env,
                max_output_chars=max_output_chars,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                cancel=cancel,
            )

        return self._with_oom_note(sandbox_id, state, call, on_stderr)

    def execute(
        self,
        sandbox_id: str,
        state: dict,
        code: str,
        *,
        timeout: float,
        max_output_chars: int,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_result: ResultCallback | None = None,
        filename: str | None = None,
        execution_count: int | None = None,
        cancel: Cancel | None = None,
    ) -> dict:
        def call(agent: AgentClient) -> dict:
            return agent.execute(
                code,
                timeout,
                max_output_chars=max_output_chars,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                on_result=on_result,
                filename=filename,
                execution_count=execution_count,
                cancel=cancel,
            )

        return self._with_oom_note(sandbox_id, state, call, on_stderr)

    def _with_oom_note(self, sandbox_id: str, state: dict, call, on_stderr: OutputCallback | None) -> dict:
        result = self._call_agent(sandbox_id, state, call)
        if result.get("oom_killed"):
            result["stderr"] += OOM_NOTE
            if on_stderr is not None:
                on_stderr(OOM_NOTE)
        return result

    def _call_agent(self, sandbox_id: str, state: dict, call) -> dict:
        """``call(agent)``; a subclass that can tell the OOM killer ended a run says so here."""
        return call(self.agent(sandbox_id, state))

    def touch(self, sandbox_id: str, state: dict, idle_timeout_seconds: float) -> None:
        self.agent(sandbox_id, state).touch(idle_timeout_seconds)

    def write_file(self, sandbox_id: str, state: dict, path: str, source) -> dict:
        return self.agent(sandbox_id, state).write_file(path, source)

    def read_file_chunks(self, sandbox_id: str, state: dict, path: str, max_bytes: int) -> Iterator[bytes]:
        return self.agent(sandbox_id, state).read_file_chunks(path, max_bytes)

    def list_files(self, sandbox_id: str, state: dict, path: str) -> dict:
        return self.agent(sandbox_id, state).list_files(path)
