"""The provider boundary and the registry of providers.

A provider knows how to start, run code in, move files to and from, freeze,
thaw, destroy and find boxes of one kind.  It finds its resources from what
the store holds (``provider_state``) and from the resources themselves
(cgroups, container labels), never from a dict in memory, so any process can
operate any sandbox.  The manager talks to providers only through this class,
with explicit parameters, and a provider's errors come from ``errors.py``: a
cloud provider implements it without touching the manager.  Providers whose
boxes run our in-box agent share ``agent_box.AgentProvider``.
"""

from __future__ import annotations

import importlib
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

from ..errors import InvalidArgument, ProviderNotSupported

OutputCallback = Callable[[str], None]
ResultCallback = Callable[[dict], None]


class Feature:
    """What a provider can do beyond create, run and stop (``Provider.features``)."""

    PAUSE = "pause"  # freeze and thaw a box, its memory kept
    FILES = "files"  # write, read and list files
    STATEFUL_PYTHON = "stateful_python"  # Python state kept between runs, rich results
    NETWORK_POLICY = "network_policy"  # no network unless allowed
    LIMITS = "limits"  # memory, CPU and process limits as asked
    WARM_POOL = "warm_pool"  # boxes started ahead, handed out by create
    METRICS = "metrics"  # CPU time, memory, processes and disk in use


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


def filesystem_usage(paths: list[str]) -> tuple[int | None, int | None]:
    """(bytes used, bytes in all) of the filesystems under ``paths``, each counted once;
    (None, None) if none can be read."""
    seen: dict[int, tuple[int, int]] = {}
    for path in paths:
        try:
            device = os.stat(path).st_dev
            info = os.statvfs(path)
        except OSError:
            continue
        seen[device] = ((info.f_blocks - info.f_bfree) * info.f_frsize, info.f_blocks * info.f_frsize)
    if not seen:
        return None, None
    return sum(used for used, _ in seen.values()), sum(total for _, total in seen.values())


def private_dir(path: Path) -> Path:
    """Make ``path`` (and missing parents) a directory only its owner can enter."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_uid == os.geteuid():
        path.chmod(0o700)
    return path


class Cancel:
    """Lets another thread end a run under way (a REST client that went away): the run's
    connection to the box is closed, which the box takes as an interrupt.  A Python cell's
    state is kept, as when a notebook interrupts it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._hooks: list[Callable[[], None]] = []
        self.cancelled = False

    def on_cancel(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` when cancelled (at once if it already was)."""
        with self._lock:
            if not self.cancelled:
                self._hooks.append(hook)
                return
        hook()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            try:
                hook()
            except OSError:
                pass  # the connection was already closed: the run has ended


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
        name: str = "",
        agent_id: str | None = None,
        tenant_id: str = "default",
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
        # Who and what the box is for: a cloud provider labels its sandboxes with them.
        self.name = name
        self.agent_id = agent_id
        self.tenant_id = tenant_id

    def __repr__(self) -> str:
        return f"BoxSpec({self.__dict__!r})"


class Provider(ABC):
    """One kind of box.  Every method is safe to call from any process."""

    name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""  # how messages name it ("E2B"); defaults to ``name``
    features: ClassVar[frozenset[str]] = frozenset()
    # A shared database's id (the service sets it): boxes carry it, so every host of a fleet
    # knows the fleet's boxes on an engine they share.  None: one data dir's store.
    store_id: str | None = None

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        if not self.display_name:
            self.display_name = self.name

    def supports(self, feature: str) -> bool:
        return feature in self.features

    # ---- the fleet (fleet.py)
    def reachable(self, state: dict) -> bool:
        """Whether this process can operate a box that another host of the fleet created (a
        cloud's, a shared engine's); if not, requests go to that host's server."""
        return False

    def fleet_wide(self) -> bool:
        """Whether boxes made here are reachable from every host of the fleet: then one reaper
        pass for the whole fleet sweeps their orphans, not every host's."""
        return False

    # ---- lifecycle
    @abstractmethod
    def create(self, spec: BoxSpec) -> dict:
        """Start a box; returns the provider state to store with the row."""

    def check_started(self, sandbox_id: str, state: dict) -> None:
        """Return once the new box answers; raise ProviderUnavailable saying why it cannot start."""
        return None  # a provider whose create returns a running box has nothing to wait for

    @abstractmethod
    def destroy(self, sandbox_id: str, state: dict) -> None:
        """Remove every process and file of the box.  Succeeds if it is already gone."""

    def pause(self, sandbox_id: str, state: dict) -> None:
        """Freeze every process of the box (with Feature.PAUSE)."""
        raise ProviderNotSupported(f"the {self.display_name} provider cannot pause sandboxes")

    def resume(self, sandbox_id: str, state: dict) -> None:
        """Thaw the box (with Feature.PAUSE)."""
        raise ProviderNotSupported(f"the {self.display_name} provider cannot resume sandboxes")

    @abstractmethod
    def inspect(self, sandbox_id: str, state: dict) -> str:
        """What the provider sees: ``active``, ``paused`` or ``stopped`` (gone)."""

    @abstractmethod
    def box_ids(self) -> set[str]:
        """Ids of every box this provider holds for this data dir (live or not)."""

    def touch(self, sandbox_id: str, state: dict, idle_timeout_seconds: float) -> None:
        """Tell the box it was used (its own idle clock, if it keeps one, restarts)."""
        return None  # the store's TTL is the truth: a box without a clock of its own needs no news

    # ---- code
    @abstractmethod
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
        """Run code in a fresh process; returns stdout, stderr, exit_code, execution_time,
        timed_out and oom_killed.  Output goes to the callbacks as it is produced; a
        ``cancel`` from another thread ends the run (AgentUnreachable or the provider's own)."""

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
        """Run a Python cell in the box's stateful runtime (with Feature.STATEFUL_PYTHON); as ``run``,
        plus ``results`` (MIME bundles) and ``error`` (name, value, traceback)."""
        raise ProviderNotSupported(f"the {self.display_name} provider has no stateful Python")

    # ---- files (with Feature.FILES)
    def write_file(self, sandbox_id: str, state: dict, path: str, source) -> dict:
        raise ProviderNotSupported(f"the {self.display_name} provider cannot write files")

    def read_file_chunks(self, sandbox_id: str, state: dict, path: str, max_bytes: int) -> Iterator[bytes]:
        raise ProviderNotSupported(f"the {self.display_name} provider cannot read files")

    def list_files(self, sandbox_id: str, state: dict, path: str) -> dict:
        raise ProviderNotSupported(f"the {self.display_name} provider cannot list files")

    def metrics(self, sandbox_id: str, state: dict) -> dict:
        """What the box uses now (with Feature.METRICS): cpu_seconds, memory_bytes,
        memory_peak_bytes, memory_limit_bytes, processes, disk_used_bytes,
        disk_limit_bytes; None for what this provider cannot count."""
        raise ProviderNotSupported(f"the {self.display_name} provider has no metrics")

    # ---- housekeeping and machine facts
    def prepare(self) -> None:
        """Load and probe what a create needs, ahead of it (a notebook kernel does this in the
        background when the extension loads, so its first cell does not wait for it)."""
        return None

    def keep_warm(self) -> None:
        """Start spare boxes up to the pool size, in the background (with Feature.WARM_POOL)."""
        return None  # a provider without a pool has nothing to start

    def drain_pool(self) -> None:
        """Remove every spare box (a server that kept the pool stopping, a test ending)."""
        return None

    def prune(self) -> list[str]:
        """Remove spare resources that ended on their own (e.g. warm-pool boxes); returns their names."""
        return []

    def notices(self) -> list[str]:
        """Warnings about weaker isolation on this machine (shown by create)."""
        return []

    def memory_capacity_mb(self) -> int | None:
        """The most memory one box can be given here (the machine's), or None if unknown."""
        return None

    def host_pids(self, sandbox_id: str, state: dict) -> list[int]:
        """This machine's pids of the box's processes (to measure or attack it); [] where
        they do not run on this machine."""
        return []


BUILTIN_PROVIDERS = {
    "local": "nexus_jupyter.providers.local:LocalProvider",
    "docker": "nexus_jupyter.providers.docker:DockerProvider",
}
ENTRY_POINT_GROUP = "nexus_jupyter.providers"


def provider_names() -> list[str]:
    """Every provider that can be named: the built-in ones and those of installed plugins
    (the entry-point group).  For help texts, choices and validation."""
    from importlib.metadata import entry_points

    return sorted(set(BUILTIN_PROVIDERS) | {entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)})


def provider_class(name: str) -> type[Provider]:
    """The provider class called ``name``: built in, or from the entry-point group."""
    target = BUILTIN_PROVIDERS.get(name)
    if target is None:
        from importlib.metadata import entry_points

        for entry in entry_points(group=ENTRY_POINT_GROUP):
            if entry.name == name:
                return entry.load()
        raise InvalidArgument(f"unknown provider {name!r} (choose from: {', '.join(provider_names())})")
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
