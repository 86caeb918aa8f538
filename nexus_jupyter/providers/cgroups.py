"""Control groups for local boxes: limits, freeze/thaw, and kill-everything.

Supports cgroup v1 (one hierarchy per controller, as on this project's CI)
and cgroup v2 (one unified hierarchy).  Each data directory gets its own
parent group (``nexus-<hash>``) so two stores on one machine never mistake
each other's boxes for orphans.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "freezer", "cpu")
# Where cpu and cpuacct are separate v1 hierarchies (as on this project's CI), a box
# joins cpuacct too, for its CPU time (metrics); without it the box still works.
V1_OPTIONAL = ("cpuacct",)
CPU_PERIOD_US = 100_000


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _read(path: Path) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            # The group is being removed (a stop in another process): as good as gone.
            raise FileNotFoundError(errno.ENOENT, "cgroup removed", str(path)) from None
        raise


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in _read(path).split()]
    except FileNotFoundError:
        return []


class Cgroups:
    """The cgroups of one store's boxes.  ``detect()`` returns None where none can be made."""

    def __init__(self, version: int, group: str):
        self.version = version
        self.group = group
        self.controllers: tuple[str, ...] = V1_CONTROLLERS
        if version == 1:
            separate = [
                c
                for c in V1_OPTIONAL
                if (CGROUP_ROOT / c).is_dir()
                and not (CGROUP_ROOT / "cpu" / f"{c}.usage").exists()
                and os.access(CGROUP_ROOT / c, os.W_OK)
            ]
            self.controllers = V1_CONTROLLERS + tuple(separate)

    @classmethod
    def detect(cls, data_dir: Path) -> tuple[Cgroups | None, str]:
        """Returns (cgroups or None, a reason when None)."""
        group = "nexus-" + hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
        if (CGROUP_ROOT / "cgroup.controllers").exists():
            candidate = cls(2, group)
        elif all((CGROUP_ROOT / c).is_dir() for c in V1_CONTROLLERS):
            candidate = cls(1, group)
        else:
            return None, "no cgroup v1 or v2 hierarchy with memory, pids, freezer and cpu is mounted"
        # Checked without creating anything: listing and reaping must leave no trace.
        writable = [p.parent for p in candidate._parents() if not os.access(p.parent, os.W_OK)]
        if writable:
            return None, f"cgroups are not writable here ({writable[0]})"
        if candidate.version == 2:
            wanted = {"memory", "pids", "cpu"}
            missing = wanted - set(_read(CGROUP_ROOT / "cgroup.controllers").split())
            if missing:
                return None, f"cgroup v2 controllers missing: {', '.join(sorted(missing))}"
        return candidate, ""

    # ---- layout
    def _parents(self) -> list[Path]:
        if self.version == 2:
            return [CGROUP_ROOT / self.group]
        return [CGROUP_ROOT / c / self.group for c in self.controllers]

    def _dir(self, controller: str, box_id: str) -> Path:
        if self.version == 2:
            return CGROUP_ROOT / self.group / box_id
        return CGROUP_ROOT / controller / self.group / box_id

    def _prepare(self) -> None:
        for parent in self._parents():
            parent.mkdir(exist_ok=True)
        if self.version == 2:
            wanted = {"memory", "pids", "cpu"}
            for path in (CGROUP_ROOT, CGROUP_ROOT / self.group):
                enabled = set(_read(path / "cgroup.subtree_control").split())
                if not wanted <= enabled:
                    _write(path / "cgroup.subtree_control", " ".join("+" + c for c in sorted(wanted - enabled)))

    def procs_files(self, box_id: str) -> list[str]:
        """The files a process writes its pid to, to join the box's groups."""
        if self.version == 2:
            return [str(self._dir("", box_id) / "cgroup.procs")]
        return [str(self._dir(c, box_id) / "cgroup.procs") for c in self.controllers]

    # ---- lifecycle
    def create(self, box_id: str, memory_bytes: int, max_processes: int, cpus: float, background: bool = False) -> None:
        """Make the box's groups.  ``background``: the lowest CPU weight (a warm-pool box
        starting up yields the CPU to every sandbox at work); ``set_limits`` restores it."""
        for attempt in range(3):
            try:
                self._prepare()  # another process may have just removed the empty parent
                self._create(box_id, memory_bytes, max_processes, cpus)
                if background:
                    self._set_weight(box_id, background=True)
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise

    def _create(self, box_id: str, memory_bytes: int, max_processes: int, cpus: float) -> None:
        if self.version == 2:
            self._dir("", box_id).mkdir(exist_ok=True)
        else:
            for controller in self.controllers:
                self._dir(controller, box_id).mkdir(exist_ok=True)
        self.set_limits(box_id, memory_bytes, max_processes, cpus)

    def set_limits(self, box_id: str, memory_bytes: int, max_processes: int, cpus: float) -> None:
        """Bound the group's memory (no swap), processes and CPU time (also of a running box)."""
        quota = max(int(cpus * CPU_PERIOD_US), 1000)
        if self.version == 2:
            path = self._dir("", box_id)
            _write(path / "memory.max", str(memory_bytes))
            if (path / "memory.swap.max").exists():
                _write(path / "memory.swap.max", "0")
            _write(path / "pids.max", str(max_processes))
            _write(path / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            self._set_weight(box_id, background=False)
            return
        memory = self._dir("memory", box_id)
        memsw = memory / "memory.memsw.limit_in_bytes"
        # Memory plus swap equal to memory: the box cannot swap its way past the limit.  v1
        # refuses a memory limit above memsw's and a memsw limit below memory's, so the
        # order depends on the direction of the change.
        current = int(_read(memory / "memory.limit_in_bytes"))
        order = ["memory.limit_in_bytes", memsw.name]
        for name in order if memory_bytes < current else reversed(order):
            if (memory / name).exists():
                _write(memory / name, str(memory_bytes))
        _write(self._dir("pids", box_id) / "pids.max", str(max_processes))
        cpu = self._dir("cpu", box_id)
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(quota))
        self._set_weight(box_id, background=False)

    def _set_weight(self, box_id: str, background: bool) -> None:
        if self.version == 2:
            _write(self._dir("", box_id) / "cpu.weight", "1" if background else "100")
        else:
            _write(self._dir("cpu", box_id) / "cpu.shares", "2" if background else "1024")

    def pids(self, box_id: str) -> list[int]:
        controller = "" if self.version == 2 else "pids"
        return _read_pids(self._dir(controller, box_id) / "cgroup.procs")

    def exists(self, box_id: str) -> bool:
        return self._dir("" if self.version == 2 else "pids", box_id).is_dir()

    def freeze(self, box_id: str) -> None:
        self._set_frozen(box_id, True)

    def thaw(self, box_id: str) -> None:
        self._set_frozen(box_id, False)

    def is_frozen(self, box_id: str) -> bool:
        try:
            if self.version == 2:
                return "frozen 1" in _read(self._dir("", box_id) / "cgroup.events")
            return _read(self._dir("freezer", box_id) / "freezer.state").strip() != "THAWED"
        except FileNotFoundError:
            return False

    def _set_frozen(self, box_id: str, frozen: bool) -> None:
        if self.version == 2:
            _write(self._dir("", box_id) / "cgroup.freeze", "1" if frozen else "0")
        else:
            _write(self._dir("freezer", box_id) / "freezer.state", "FROZEN" if frozen else "THAWED")
        # Freezing is asynchronous: wait until every task has stopped (or runs again).
        deadline = time.monotonic() + 5
        while self._freezer_state(box_id) != ("FROZEN" if frozen else "THAWED") and time.monotonic() < deadline:
            time.sleep(0.001)

    def _freezer_state(self, box_id: str) -> str:
        try:
            if self.version == 2:
                return "FROZEN" if "frozen 1" in _read(self._dir("", box_id) / "cgroup.events") else "THAWED"
            return _read(self._dir("freezer", box_id) / "freezer.state").strip()
        except FileNotFoundError:
            return "THAWED"

    def usage(self, box_id: str) -> dict:
        """What the box uses now: ``cpu_seconds`` (since it started), ``memory_bytes``,
        ``memory_peak_bytes``, ``memory_limit_bytes``, ``processes``; None for what this
        kernel does not count."""

        def number(controller: str, name: str, key: str | None = None) -> int | None:
            try:
                text = _read(self._dir(controller, box_id) / name)
            except OSError:
                return None
            if key is not None:
                fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
                text = fields.get(key, "")
            text = text.strip()
            return int(text) if text.isdigit() else None

        if self.version == 2:
            cpu_us = number("", "cpu.stat", "usage_usec")
            return {
                "cpu_seconds": cpu_us / 1e6 if cpu_us is not None else None,
                "memory_bytes": number("", "memory.current"),
                "memory_peak_bytes": number("", "memory.peak"),
                "memory_limit_bytes": number("", "memory.max"),
                "processes": number("", "pids.current"),
            }
        cpu_ns = number("cpuacct" if "cpuacct" in self.controllers else "cpu", "cpuacct.usage")
        return {
            "cpu_seconds": cpu_ns / 1e9 if cpu_ns is not None else None,
            "memory_bytes": number("memory", "memory.usage_in_bytes"),
            "memory_peak_bytes": number("memory", "memory.max_usage_in_bytes"),
            "memory_limit_bytes": number("memory", "memory.limit_in_bytes"),
            "processes": number("pids", "pids.current"),
        }

    def reset_peak(self, box_id: str) -> None:
        """Start the memory peak again from now (a claimed pool box); where the kernel cannot
        (cgroup v2 before 6.12), the peak keeps counting from the box's start."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            _write(self._dir("memory", box_id) / name, "0")
        except OSError:
            pass

    def oom_kills(self, box_id: str) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in _read(self._dir("memory", box_id) / name).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (FileNotFoundError, ValueError):
            pass
        return 0

    def kill(self, box_id: str) -> None:
        """Kill every process of the box; returns once the group is empty."""
        if not self.exists(box_id):
            return
        kill_file = self._dir("", box_id) / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            _write(kill_file, "1")
            deadline = time.monotonic() + 10
            while self.pids(box_id) and time.monotonic() < deadline:
                time.sleep(0.002)
            return
        # Frozen processes cannot fork between our reading the list and the
        # kill; a round is repeated in case one was caught mid-fork anyway.
        deadline = time.monotonic() + 10
        while self.pids(box_id) and time.monotonic() < deadline:
            try:
                self.freeze(box_id)
                for pid in self.pids(box_id):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.thaw(box_id)
            except FileNotFoundError:
                return  # the group went away meanwhile (its box ended, or another stop removed it)
            settle = time.monotonic() + 0.5
            while self.pids(box_id) and time.monotonic() < settle:
                time.sleep(0.002)

    def remove(self, box_id: str) -> None:
        controllers = [""] if self.version == 2 else self.controllers
        for controller in controllers:
            path = self._dir(controller, box_id)
            for _ in range(200):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
                    time.sleep(0.005)
        # The store's parent group goes too once its last box is gone, so
        # test runs and short-lived data dirs leave nothing behind.
        for parent in self._parents():
            try:
                parent.rmdir()
            except OSError:
                pass  # other boxes still live in it

    def box_ids(self) -> set[str]:
        parent = self._parents()[0] if self.version == 2 else CGROUP_ROOT / "pids" / self.group
        try:
            return {entry.name for entry in os.scandir(parent) if entry.is_dir()}
        except FileNotFoundError:
            return set()
