"""The provider interface and registry.

A provider knows how to start, freeze, thaw, destroy and find boxes of one
kind.  It finds its resources from what the store holds (``provider_state``)
and from the resources themselves (cgroups, container labels), never from
a dict in memory, so any process can operate any sandbox.

Running code and moving files is the same for every box that runs the
in-box agent (``nexus_jupyter.agent``): that part lives here.
"""

from __future__ import annotations

import importlib
import os
import pwd
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # the client (sockets, hmac) is loaded by the providers that use it, not by every CLI call
    from ..agent_client import AgentClient

from ..errors import AgentUnreachable, InvalidArgument, ProviderNotSupported, ProviderUnavailable

OutputCallback = Callable[[str], None]
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


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat):
    with its pid, what tells it from a later process that reused the pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it, read from /proc (host pids)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [root], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            tree.append(child)
            todo.append(child)
    return tree


def private_dir(path: Path) -> Path:
    """Make ``path`` (and missing parents) a directory only its owner can enter."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_uid == os.geteuid():
        path.chmod(0o700)
    return path


def pool_size_setting(variable: str, default: int) -> int:
    """A warm pool's size from the environment: a whole number from 0 (off) to 64."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) > 64:
        raise InvalidArgument(f"{variable} must be a whole number from 0 (no pool) to 64, not {raw!r}")
    return int(raw)


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


class BoxSpec:
    """What a provider needs to start one box.  (A plain class: ``dataclasses`` costs
    every CLI call ~10 ms of imports.)"""

    def __init__(
        self,
        sandbox_id: str,
        template_id: str | None = None,
        allow_internet: bool = False,
        memory_mb: int = 1024,
        cpus: float = 1.0,
        max_processes: int = 256,
        disk_mb: int = 512,
        env: dict | None = None,
        owner: str = "",
        idle_timeout_seconds: float = 0.0,
    ):
        self.sandbox_id = sandbox_id
        self.template_id = template_id
        self.allow_internet = allow_internet
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.max_processes = max_processes
        self.disk_mb = disk_mb
        self.env = env if env is not None else {}
        self.owner = owner
        self.idle_timeout_seconds = idle_timeout_seconds

    def __repr__(self) -> str:
        return f"BoxSpec({self.__dict__!r})"


class Provider(ABC):
    """One kind of box.  Every method is safe to call from any process."""

    name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""  # how messages name it ("E2B"); defaults to ``name``
    supports_pause: ClassVar[bool] = True

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        if not self.display_name:
            self.display_name = self.name

    # ---- lifecycle (each provider's own)
    @abstractmethod
    def create(self, spec: BoxSpec) -> dict:
        """Start a box; returns the provider state to store with the row."""

    @abstractmethod
    def destroy(self, sandbox_id: str, state: dict) -> None:
        """Remove every process and file of the box.  Succeeds if it is already gone."""

    @abstractmethod
    def pause(self, sandbox_id: str, state: dict) -> None:
        """Freeze every process of the box."""

    @abstractmethod
    def resume(self, sandbox_id: str, state: dict) -> None:
        """Thaw the box."""

    @abstractmethod
    def inspect(self, sandbox_id: str, state: dict) -> str:
        """What the provider sees: ``active``, ``paused`` or ``stopped`` (gone)."""

    @abstractmethod
    def box_ids(self) -> set[str]:
        """Ids of every box this provider holds for this data dir (live or not)."""

    def host_pids(self, sandbox_id: str, state: dict) -> list[int]:
        """This machine's pids of the box's processes (to measure or attack it); [] where
        they do not run on this machine."""
        return []

    def prune(self) -> list[str]:
        """Remove spare resources that ended on their own (e.g. warm-pool containers); returns their names."""
        return []

    def notices(self) -> list[str]:
        """Warnings about weaker isolation on this machine (shown by create)."""
        return []

    def memory_capacity_mb(self) -> int | None:
        """The most memory one box can be given here (the machine's), or None if unknown."""
        return None

    def check_started(self, sandbox_id: str, state: dict) -> None:
        """Return once the new box answers; raise ProviderUnavailable saying why it cannot start.

        A box whose runtime is missing (an image without Python, an interpreter
        the box cannot see) must fail its create, not vanish at its first run.
        """
        try:
            self.agent(sandbox_id, state).ping(wait=START_SECONDS)
        except AgentUnreachable as exc:
            raise ProviderUnavailable(f"the sandbox did not start: {exc}") from None

    # ---- code and files, through the in-box agent
    def agent(self, sandbox_id: str, state: dict) -> AgentClient:
        raise ProviderNotSupported(f"the {self.name} provider has no in-box agent")

    def run(self, sandbox_id: str, state: dict, language: str, code: str, timeout: float, **kwargs) -> dict:
        """Run code in a fresh process; returns stdout, stderr, exit_code, execution_time, timed_out, oom_killed.

        ``kwargs``: env, max_output_chars, on_stdout, on_stderr (see AgentClient.run).
        """
        return self._through_agent(sandbox_id, state, "run", language, code, timeout, **kwargs)

    def execute(self, sandbox_id: str, state: dict, code: str, timeout: float, **kwargs) -> dict:
        """Run a Python cell in the box's kernel; the result adds ``results`` and ``error``."""
        return self._through_agent(sandbox_id, state, "execute", code, timeout, **kwargs)

    def _through_agent(self, sandbox_id: str, state: dict, method: str, *args, **kwargs) -> dict:
        result = self._call_agent(sandbox_id, state, method, *args, **kwargs)
        if result.get("oom_killed"):
            result["stderr"] += OOM_NOTE
            if kwargs.get("on_stderr") is not None:
                kwargs["on_stderr"](OOM_NOTE)
        return result

    def _call_agent(self, sandbox_id: str, state: dict, method: str, *args, **kwargs) -> dict:
        return getattr(self.agent(sandbox_id, state), method)(*args, **kwargs)

    def touch(self, sandbox_id: str, state: dict, idle_timeout_seconds: float) -> None:
        """Tell the box it was used (its own idle clock restarts)."""
        self.agent(sandbox_id, state).touch(idle_timeout_seconds)

    def write_file(self, sandbox_id: str, state: dict, path: str, source) -> dict:
        return self.agent(sandbox_id, state).write_file(path, source)

    def read_file_chunks(self, sandbox_id: str, state: dict, path: str, max_bytes: int) -> Iterator[bytes]:
        return self.agent(sandbox_id, state).read_file_chunks(path, max_bytes)

    def list_files(self, sandbox_id: str, state: dict, path: str) -> dict:
        return self.agent(sandbox_id, state).list_files(path)


BUILTIN_PROVIDERS = {
    "local": "nexus_jupyter.providers.local:LocalProvider",
    "docker": "nexus_jupyter.providers.docker:DockerProvider",
}
ENTRY_POINT_GROUP = "nexus_jupyter.providers"


def provider_class(name: str) -> type[Provider]:
    """The provider class called ``name``: built in, or from the entry-point group."""
    target = BUILTIN_PROVIDERS.get(name)
    if target is None:
        from importlib.metadata import entry_points

        for entry in entry_points(group=ENTRY_POINT_GROUP):
            if entry.name == name:
                return entry.load()
        known = sorted(set(BUILTIN_PROVIDERS) | {e.name for e in entry_points(group=ENTRY_POINT_GROUP)})
        raise InvalidArgument(f"unknown provider {name!r} (choose from: {', '.join(known)})")
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
