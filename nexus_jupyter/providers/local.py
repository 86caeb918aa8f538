"""The local provider: a box is a bubblewrap sandbox on this machine.

Each box gets its own user, mount, PID, IPC, UTS, cgroup and network
namespaces (internet access, when allowed, is attached to its own namespace:
``network.py``); no capabilities; an unprivileged host uid of its own; a
read-only view of the system directories and of the Python and Node.js
installations; one size-limited tmpfs for everything it writes (home, /tmp,
/dev/shm, the agent's socket dir); and a cgroup that bounds its memory,
processes and CPU and lets us freeze and kill it as a whole.  Inside runs
the agent (``nexus_jupyter.box.agent``).

The box is started detached (``setsid -f``) so it outlives the process that
created it; everything needed to find it again is on disk: its directory
under ``<data_dir>/boxes/local/<id>`` (0700: no other user may enter it), its
cgroups, and ``box.pid``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from ..agent_client import AgentClient, new_agent_key
from ..errors import ProviderUnavailable
from ..settings import POOL_SETTINGS
from .agent_box import (
    BOX_CODE_SOURCE,
    AgentProvider,
    agent_command,
    box_environment,
    box_host_uid,
)
from .base import (
    BoxSpec,
    Feature,
    filesystem_usage,
    private_dir,
    process_start_time,
    process_tree,
)
from .cgroups import Cgroups
from .local_pool import POOL_PREFIX, POOL_RECORD, SLOT_NAME, LocalPool, _read_private

BOX_UID = 1000  # the box's user inside bubblewrap's user namespace
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

# Joins the box's cgroups and records its pid before bubblewrap starts, so
# no process of the box ever runs outside its limits.
LAUNCHER = r"""
pidfile=$1; shift
while [ "$1" != "--" ]; do echo $$ > "$1" || exit 97; shift; done
shift
echo $$ > "$pidfile"
exec "$@"
"""

MS_NOSUID, MS_NODEV = 2, 4
MNT_DETACH = 2


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _runtime_paths() -> list[str]:
    """Directories outside /usr that the interpreters live in (bound read-only)."""
    import shutil

    candidates = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        str(Path(os.path.realpath(sys.executable)).parent.parent),
    }
    node = shutil.which("node")
    if node:
        candidates.add(str(Path(os.path.realpath(node)).parent.parent))
    paths = []
    for path in sorted(candidates):
        if path == "/usr" or path.startswith("/usr/") or not os.path.isdir(path):
            continue
        if any(path.startswith(kept + "/") for kept in paths):
            continue
        paths.append(path)
    return paths


def _interpreters() -> dict:
    import shutil

    return {"python": sys.executable, "javascript": shutil.which("node") or "node", "bash": "/bin/bash"}


class LocalProvider(AgentProvider):
    """Boxes made with bubblewrap and cgroups on this machine."""

    name = "local"
    features = AgentProvider.features | {Feature.WARM_POOL}

    def __init__(self, data_dir: Path):
        super().__init__(data_dir)
        self.root = self.data_dir / "boxes" / self.name
        self._cgroups: Cgroups | None = None
        self._cgroup_reason: str | None = None
        # Boxes kept started, their Python runtime warm, so create hands one out at once
        # (local_pool.py).  One by default: a pool box idles at ~45 MiB and ends itself.
        self.pool_size = POOL_SETTINGS["local"].from_environment()
        self.pool = LocalPool(self)

    # ---- machine capabilities
    @property
    def cgroups(self) -> Cgroups | None:
        if self._cgroup_reason is None:
            if os.environ.get("NEXUS_LOCAL_CGROUPS", "").lower() in ("0", "off", "false", "no"):
                self._cgroups, self._cgroup_reason = None, "turned off by NEXUS_LOCAL_CGROUPS"
            else:
                self._cgroups, self._cgroup_reason = Cgroups.detect(self.data_dir)
        return self._cgroups

    def notices(self) -> list[str]:
        notes = []
        if self.cgroups is None:
            notes.append(
                f"cgroups unavailable ({self._cgroup_reason}): memory and process limits apply "
                "per process (rlimits) and pause uses SIGSTOP"
            )
        if os.geteuid() != 0:
            notes.append(
                "not root: the sandbox home is a plain directory (each file is size-limited, the total is not)"
            )
        return notes

    def memory_capacity_mb(self) -> int | None:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20

    # ---- paths
    def box_dir(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id

    def agent(self, sandbox_id: str, state: dict) -> AgentClient:
        return AgentClient(
            self.box_dir(sandbox_id) / "fs" / "run" / "agent.sock",
            state.get("agent_key"),
            box_uid=state.get("host_uid"),
            agent_pid=state.get("agent_pid"),
            is_alive=lambda: self.inspect(sandbox_id, state) != "stopped",
            explain=lambda: self._log_tail(sandbox_id),
        )

    def _log_tail(self, sandbox_id: str) -> str:
        try:
            lines = (self.box_dir(sandbox_id) / "box.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    @staticmethod
    def box_env(extra: dict) -> dict:
        """The environment of the box's runs: this Python's bin directory first on PATH."""
        return box_environment(f"{Path(sys.executable).parent}:{SYSTEM_PATH}", extra)

    # ---- lifecycle
    def create(self, spec: BoxSpec) -> dict:
        # Any process claims a spare box that fits, whoever started it (a notebook
        # kernel claims the Jupyter server's); pool_size is what this one keeps.
        pooled = self.pool.fits(spec)
        try:
            state = self.pool.claim(spec) if pooled else None
            return state if state is not None else self.start_box(spec)
        finally:
            if pooled:
                self.keep_warm()

    def prepare(self) -> None:
        if self.cgroups is not None:  # found once: ~30 ms of probing the hierarchies
            self.pool.fingerprint()

    def keep_warm(self) -> None:
        if self.pool_size > 0:
            self.pool.refill_in_background(self.pool_size)

    def start_box(self, spec: BoxSpec, background: bool = False) -> dict:
        """Start a new box named ``spec.sandbox_id`` (a sandbox id, or a pool slot started
        in the ``background``: at the lowest CPU weight until it is claimed)."""
        # Here, not at the top: a run or a stop needs none of this (each CLI call loads it).
        import subprocess

        from . import network
        from .isolation import bwrap_command, choose_isolation, make_layout, unshare_command

        isolation = choose_isolation()
        if spec.allow_internet:
            network.require_tools()  # before anything is made
        as_root = os.geteuid() == 0
        # The host uid the box's processes and files have: one of its own, never
        # root's.  Not root, bubblewrap can only map the box to the caller's uid.
        host_uid = box_host_uid(spec.sandbox_id) if as_root else os.geteuid()
        uid = BOX_UID if isolation == "bwrap" else host_uid
        box = private_dir(self.box_dir(spec.sandbox_id))
        (box / "etc").mkdir(exist_ok=True)
        (box / "fs").mkdir(exist_ok=True)
        state = {
            "dir": str(box),
            "isolation": isolation,
            "uid": uid,
            "host_uid": host_uid,
            "agent_key": new_agent_key(),
            "tmpfs": self._mount_box_fs(box / "fs", spec.disk_mb, host_uid),
            "cgroup": spec.sandbox_id,
        }
        if as_root and not state["tmpfs"]:
            # Plain directories would put the box's files on this machine's disk, unbounded.
            raise ProviderUnavailable(f"cannot mount the sandbox's tmpfs at {box / 'fs'}")
        for sub, mode in (("home", 0o700), ("run", 0o700), ("tmp", 0o1777), ("shm", 0o1777)):
            (box / "fs" / sub).mkdir(exist_ok=True)
            os.chmod(box / "fs" / sub, mode)
            if as_root:
                os.chown(box / "fs" / sub, host_uid, host_uid)
        self._write_etc(box / "etc", uid, spec.allow_internet)
        cgroups = self.cgroups
        join = []
        if cgroups is not None:
            try:
                cgroups.create(spec.sandbox_id, spec.memory_mb << 20, spec.max_processes, spec.cpus, background)
            except OSError as exc:
                raise ProviderUnavailable(
                    f"cannot set up the sandbox's cgroup ({exc.strerror or exc}): fix the cgroup setup, or set "
                    "NEXUS_LOCAL_CGROUPS=off to run with per-process limits instead"
                ) from None
            join = cgroups.procs_files(spec.sandbox_id)
        state["cgroups"] = cgroups is not None
        limits = {"file_size_bytes": spec.disk_mb << 20, "open_files": 1024}
        if cgroups is None:
            limits.update(nproc=spec.max_processes, address_space_bytes=spec.memory_mb << 20)
        config = {
            "interpreters": _interpreters(),
            "env": self.box_env(spec.env),
            "limits": limits,
            "key": state["agent_key"],
        }
        config_file = box / "fs" / "run" / "config.json"
        with open(os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(json.dumps(config))
        if as_root:
            os.chown(config_file, host_uid, host_uid)
        agent = agent_command(sys.executable, spec.idle_timeout_seconds)
        layout = make_layout(
            box, _runtime_paths(), BOX_CODE_SOURCE, spec.disk_mb << 20, spec.allow_internet, state["tmpfs"]
        )
        if isolation == "bwrap":
            (box / "stage").mkdir(exist_ok=True)
            command = bwrap_command(layout, uid, host_uid if as_root else None, box / "stage", agent)
        else:
            (box / "rootfs").mkdir(exist_ok=True)
            command = unshare_command(layout, uid, box / "rootfs", agent)
        with open(box / "box.log", "ab") as log:
            subprocess.run(
                [*self._launcher(), str(box / "box.pid"), *join, "--", *command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                close_fds=True,
                check=True,
                start_new_session=True,
            )
        self._wait_launched(spec.sandbox_id)
        state["agent_pid"] = self._agent_pid(spec.sandbox_id)
        if spec.allow_internet:
            network.attach(state["agent_pid"], box, self._launcher())
        return state

    @staticmethod
    def _launcher() -> list[str]:
        """Starts a command detached: ``[*launcher, pidfile, cgroup files..., "--", command...]``."""
        import shutil

        setsid = ["setsid", "-f"] if shutil.which("setsid") else []
        return [*setsid, "/bin/sh", "-c", LAUNCHER, "sh"]

    def _agent_pid(self, sandbox_id: str) -> int:
        """The host pid of the box's PID 1 (its agent): a child of the box's outer process."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            outer = self._box_pid(sandbox_id)
            if outer is None:
                break
            for pid in process_tree(outer)[1:]:
                try:
                    with open(f"/proc/{pid}/status") as status:
                        fields = dict(line.split(":", 1) for line in status if ":" in line)
                except OSError:
                    continue
                if len(fields.get("NSpid", "").split()) > 1 and fields["NSpid"].split()[-1] == "1":
                    return pid
            time.sleep(0.002)
        raise ProviderUnavailable(f"the sandbox did not start: {self._log_tail(sandbox_id) or 'no box process'}")

    def _wait_launched(self, sandbox_id: str) -> None:
        """Wait until the launcher has joined the cgroups (it writes box.pid right after),
        then record the process's start time, so a reused pid is never taken for the box."""
        box = self.box_dir(sandbox_id)
        deadline = time.monotonic() + 10
        while True:
            try:
                pid = int((box / "box.pid").read_text())
                break
            except (OSError, ValueError):  # not there yet, or half written
                if time.monotonic() > deadline:
                    tail = self._log_tail(sandbox_id) or "no output"
                    raise ProviderUnavailable(f"the sandbox did not start: {tail}") from None
                time.sleep(0.0005)
        started = process_start_time(pid)
        (box / "box.started").write_text(str(started) if started is not None else "gone")

    def _mount_box_fs(self, where: Path, disk_mb: int, owner: int) -> bool:
        """One size-limited tmpfs for everything the box can write (home, /tmp, /dev/shm,
        the agent's socket directory): filling it cannot fill the host's disk, and
        its files share one budget that the memory limit leaves room for."""
        if os.geteuid() != 0 or os.path.ismount(where):
            return os.path.ismount(where)
        options = f"size={disk_mb}m,mode=0700,uid={owner},gid={owner}".encode()
        return _libc().mount(b"nexus-box", str(where).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) == 0

    @staticmethod
    def _write_etc(etc: Path, uid: int, allow_internet: bool) -> None:
        from . import network
        from .isolation import BOX_HOME

        (etc / "passwd").write_text(
            f"user:x:{uid}:{uid}:sandbox user:{BOX_HOME}:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        )
        (etc / "group").write_text(f"user:x:{uid}:\nnogroup:x:65534:\n")
        (etc / "hosts").write_text("127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost\n")
        if allow_internet:
            (etc / "resolv.conf").write_text(f"nameserver {network.SLIRP_DNS}\n")
        for name in os.listdir(etc):
            os.chmod(etc / name, 0o644)

    def _box_pid(self, sandbox_id: str) -> int | None:
        """The pid of the box's outermost process, if it still runs."""
        box = self.box_dir(sandbox_id)
        try:
            pid = int((box / "box.pid").read_text())
            recorded = (box / "box.started").read_text()
        except (OSError, ValueError):
            return None
        started = process_start_time(pid)
        if started is None or str(started) != recorded:
            return None  # gone, or the pid now belongs to another process
        return pid

    def _signal_tree(self, sandbox_id: str, sig: int) -> None:
        """Signal every process of the box, again until no new one appears (a process
        may fork between our reading the tree and signalling it)."""
        pid = self._box_pid(sandbox_id)
        if pid is None:
            return
        signalled: set[int] = set()
        for _ in range(100):
            members = set(process_tree(pid)) - signalled
            if not members:
                return
            for member in members:
                try:
                    os.kill(member, sig)
                except ProcessLookupError:
                    pass
            signalled |= members

    def _group(self, sandbox_id: str, state: dict) -> str:
        """The name of the box's cgroups: its sandbox id, or the pool slot it was started as
        (the record a claimed box keeps in its directory, for callers holding no state)."""
        name = state.get("cgroup")
        if not name:
            try:
                name = json.loads(_read_private(self.box_dir(sandbox_id) / POOL_RECORD))["cgroup"]
            except (OSError, ValueError, KeyError, TypeError):
                name = sandbox_id
        # Only a name of ours: the host writes to the group's files as root.
        return name if name == sandbox_id or SLOT_NAME.fullmatch(str(name)) else sandbox_id

    def destroy(self, sandbox_id: str, state: dict) -> None:
        import shutil

        cgroups, group = self.cgroups, self._group(sandbox_id, state)
        if cgroups is not None and cgroups.exists(group):
            cgroups.kill(group)
            cgroups.remove(group)
        else:
            self._signal_tree(sandbox_id, signal.SIGKILL)
        self._stop_network(sandbox_id)
        box = self.box_dir(sandbox_id)
        if os.path.ismount(box / "fs"):
            _libc().umount2(str(box / "fs").encode(), MNT_DETACH)
        shutil.rmtree(box, ignore_errors=True)

    def _stop_network(self, sandbox_id: str) -> None:
        """End the box's slirp4netns (found from its pid file and start time, as the box is)."""
        box = self.box_dir(sandbox_id)
        try:
            pid = int((box / "net.pid").read_text())
            recorded = (box / "net.started").read_text()
        except (OSError, ValueError):
            return
        if str(process_start_time(pid)) == recorded:  # not a reused pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def pause(self, sandbox_id: str, state: dict) -> None:
        cgroups, group = self.cgroups, self._group(sandbox_id, state)
        if cgroups is not None and cgroups.exists(group):
            cgroups.freeze(group)
        else:
            self._signal_tree(sandbox_id, signal.SIGSTOP)

    def resume(self, sandbox_id: str, state: dict) -> None:
        cgroups, group = self.cgroups, self._group(sandbox_id, state)
        if cgroups is not None and cgroups.exists(group):
            cgroups.thaw(group)
        else:
            self._signal_tree(sandbox_id, signal.SIGCONT)

    def inspect(self, sandbox_id: str, state: dict) -> str:
        cgroups, group = self.cgroups, self._group(sandbox_id, state)
        if cgroups is not None and cgroups.exists(group):
            if not cgroups.pids(group):
                return "stopped"
            return "paused" if cgroups.is_frozen(group) else "active"
        pid = self._box_pid(sandbox_id)
        if pid is None:
            return "stopped"
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                process_state = stat.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            return "stopped"
        return "paused" if process_state == b"T" else "active"

    def metrics(self, sandbox_id: str, state: dict) -> dict:
        cgroups, group = self.cgroups, self._group(sandbox_id, state)
        usage: dict = {}
        if cgroups is not None and cgroups.exists(group):
            usage = cgroups.usage(group)
            if usage.get("cpu_seconds") is not None:  # a pool box counts from its claim
                usage["cpu_seconds"] = max(usage["cpu_seconds"] - state.get("cpu_baseline", 0.0), 0.0)
        else:  # rlimits only: the box's processes, counted on the host
            usage = {"processes": max(len(self.host_pids(sandbox_id, state)) - 1, 0)}
        if state.get("tmpfs"):  # as root: every file the box writes is in this one tmpfs
            usage["disk_used_bytes"], usage["disk_limit_bytes"] = filesystem_usage(
                [str(self.box_dir(sandbox_id) / "fs")]
            )
        return usage

    def host_pids(self, sandbox_id: str, state: dict) -> list[int]:
        outer = self._box_pid(sandbox_id)
        return process_tree(outer) if outer is not None else []

    def box_ids(self) -> set[str]:
        """Sandbox ids of this store's boxes (pool slots, and the cgroups a claimed box
        kept from its slot, are the pool's: ``prune``)."""
        ids = set(self.cgroups.box_ids()) if self.cgroups is not None else set()
        try:
            ids |= {entry.name for entry in os.scandir(self.root) if entry.is_dir()}
        except FileNotFoundError:
            pass
        return {box_id for box_id in ids if not box_id.startswith(POOL_PREFIX)}

    def prune(self) -> list[str]:
        return self.pool.prune()

    def drain_pool(self) -> None:
        self.pool.drain()

    # ---- runs: say when the kernel's OOM killer ended one
    def _call_agent(self, sandbox_id: str, state: dict, call) -> dict:
        # The box cannot see its cgroup: the host reads the OOM killer's count.
        cgroups = self.cgroups if state.get("cgroups") else None
        group = self._group(sandbox_id, state)
        oom_before = cgroups.oom_kills(group) if cgroups is not None else 0
        result = super()._call_agent(sandbox_id, state, call)
        if cgroups is not None and cgroups.oom_kills(group) > oom_before:
            result["oom_killed"] = True
        return result
