"""The Docker provider: a box is one hardened container on a Docker engine.

The container runs the same in-box agent as the local provider (mounted
read-only from this package, so the image need not match the package
version); the agent's socket lives in a host directory bind-mounted into
the container, so a run costs no ``docker exec`` (~64 ms here).  That
directory is a small tmpfs of its own (root only), so nothing the box writes
there lands on the host's disk; elsewhere (a remote engine, or not root)
the agent is reached through ``docker exec`` and the directory is a tmpfs
inside the container.  Each container runs as an unprivileged uid of its
own, from a range no real user has.

Containers are found again from their labels (``nexus.store`` names the
data directory, ``nexus.sandbox_id`` the sandbox), never from memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import tarfile
import threading
import time
from pathlib import Path

from ..agent_client import AgentClient, new_agent_key
from ..errors import ProviderUnavailable, SandboxError
from ..settings import POOL_SETTINGS
from . import network
from .agent_box import (
    BOX_AGENT,
    BOX_CODE,
    BOX_CODE_FILES,
    BOX_CODE_SOURCE,
    BOX_RUN,
    AgentProvider,
    agent_command,
    box_environment,
    box_host_uid,
)
from .base import BoxSpec, Feature, filesystem_usage, private_dir, process_tree
from .docker_relay import connect_through_exec, send_config_through_attach

DEFAULT_IMAGE = "nexus-jupyter-sandbox:latest"
BOX_HOME = "/home/user"
RUN_DIR_MB = 16  # the agent's socket directory: sockets, the kernel's connection file and log
SHM_MB = 64
MS_NOSUID, MS_NODEV = 2, 4
MNT_DETACH = 2
LABEL_STORE = "nexus.store"
# A pool container's maker (its data dir): hosts of a fleet share a store id, not their spares,
# whose socket directories live in the maker's data dir.
LABEL_POOL_HOST = "nexus.pool_host"
LABEL_SANDBOX = "nexus.sandbox_id"
LABEL_USER = "nexus.user_id"
LABEL_POOL = "nexus.pool"  # on warm-pool containers: the image they were started from
LABEL_TRANSPORT = "nexus.transport"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
POOL_IDLE_SECONDS = 3600  # an unclaimed pool container ends itself after this
# The shape of pool containers; creates that differ only in memory, CPU or
# process limits still take one (the limits are updated on claim).
POOL_SHAPE = BoxSpec(sandbox_id="", idle_timeout_seconds=POOL_IDLE_SECONDS)
# Docker's states, in the provider's words.
STATUS = {"running": "active", "created": "active", "restarting": "active", "paused": "paused"}


def _poolable(spec: BoxSpec) -> bool:
    """Network and disk are fixed when a container is made: only such creates can take one."""
    return spec.allow_internet == POOL_SHAPE.allow_internet and spec.disk_mb == POOL_SHAPE.disk_mb


def choose_transport() -> str:
    """``socket`` (the agent's socket bind-mounted from this machine) for a local engine,
    ``exec`` (a relay through docker exec) for a remote one; NEXUS_DOCKER_TRANSPORT overrides."""
    forced = os.environ.get("NEXUS_DOCKER_TRANSPORT", "").strip().lower()
    if forced in ("socket", "exec"):
        return forced
    if forced:
        raise ProviderUnavailable(f"NEXUS_DOCKER_TRANSPORT must be socket or exec, not {forced!r}")
    # The bind-mounted socket directory is a tmpfs we mount, which takes root.
    local = engine_address().startswith("unix://") and os.geteuid() == 0
    return "socket" if local else "exec"


def _code_archive() -> tuple[bytes, str]:
    """A tar of the box-side code (the agent and the kernel driver), and a digest naming it."""
    buffer = io.BytesIO()
    digest = hashlib.sha256()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in BOX_CODE_FILES:
            data = (BOX_CODE_SOURCE / name).read_bytes()
            digest.update(name.encode() + b"\0" + data)
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(data), 0o444
            tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue(), digest.hexdigest()[:16]


def disk_split(disk_mb: int) -> dict[str, int]:
    """How one disk budget is shared by the container's tmpfs mounts (Docker cannot
    give two paths one tmpfs): the agent's directory, /dev/shm, a quarter for /tmp,
    the rest for the home."""
    run = min(RUN_DIR_MB, max(disk_mb // 8, 2))
    shm = min(SHM_MB, max(disk_mb // 8, 2))
    tmp = max(disk_mb // 4, 4)
    return {"run": run, "shm": shm, "tmp": tmp, "home": max(disk_mb - run - shm - tmp, 4)}


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def store_label(data_dir: Path) -> str:
    return hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


class DockerProvider(AgentProvider):
    """Boxes that are containers: all capabilities dropped, no new privileges, a
    non-root user, an init process, pids/memory/CPU limits, no network unless
    allowed, a read-only root with a size-limited writable home and /tmp."""

    name = "docker"
    display_name = "Docker"
    features = AgentProvider.features | {Feature.WARM_POOL}

    def __init__(self, data_dir: Path):
        super().__init__(data_dir)
        self.root = self.data_dir / "boxes" / self.name
        self._client = None
        # Containers kept started per template so create hands one out at once.
        # Off by default (a CLI process would not live to refill it); a server turns it on.
        self.pool_size = POOL_SETTINGS["docker"].from_environment()
        self._pool_lock = threading.Lock()
        self._info: dict | None = None
        self._code_volume: str | None = None

    @property
    def store(self) -> str:
        """The label of this store's containers: a shared database's id (every host of a fleet
        finds the fleet's containers on an engine they share), else the data dir's."""
        return self.store_id or store_label(self.data_dir)

    def reachable(self, state: dict) -> bool:
        # Through docker exec, on the same engine (its ID, whatever address each host calls it by).
        if state.get("transport") != "exec" or not state.get("engine_id"):
            return False
        try:
            return self._engine_info().get("ID") == state["engine_id"]
        except ProviderUnavailable:
            return False

    def fleet_wide(self) -> bool:
        # A remote engine (every host of the fleet names it); a local one is this machine's.
        return not engine_address().startswith("unix://")

    @property
    def client(self):
        """A connected docker client, or ProviderUnavailable naming DOCKER_HOST."""
        if self._client is None:
            import docker
            from docker.errors import DockerException

            try:
                client = docker.from_env(timeout=120)
                client.ping()
            except DockerException as exc:
                reason = str(exc).split("(")[0].strip() or type(exc).__name__
                raise ProviderUnavailable(
                    f"cannot reach the Docker engine at {engine_address()} ({reason}): start it "
                    "('sudo systemctl start docker', or 'sudo dockerd &' where there is no systemd) "
                    "or point DOCKER_HOST at a running engine"
                ) from None
            self._client = client
        return self._client

    def _container(self, sandbox_id: str, state: dict):
        """The box's container, or None if it is gone."""
        from docker.errors import NotFound

        try:
            return self.client.containers.get(state.get("container_id") or self._name(sandbox_id))
        except NotFound:
            return None

    def _name(self, sandbox_id: str) -> str:
        return f"nexus-{self.store}-{sandbox_id}"

    def box_dir(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id

    def agent(self, sandbox_id: str, state: dict) -> AgentClient:
        connect = None
        box_uid = state.get("host_uid")
        if state.get("transport") == "exec":
            container_id = state.get("container_id") or self._name(sandbox_id)
            relay = ["python3", "-I", "-S", BOX_AGENT, "--relay", f"{BOX_RUN}/agent.sock"]
            connect = lambda wait: connect_through_exec(self.client, container_id, relay)  # noqa: E731
            box_uid = None  # the relay's end of the socket is ours
        elif state.get("remapped_uids", True) and self._remapped_uids():
            box_uid = None  # the engine maps container uids: the host sees others
        return AgentClient(
            self.box_dir(sandbox_id) / "run" / "agent.sock",
            state.get("agent_key"),
            box_uid=box_uid,
            agent_pid=state.get("agent_pid") if box_uid is not None else None,
            is_alive=lambda: self.inspect(sandbox_id, state) != "stopped",
            explain=lambda: self._why_stopped(sandbox_id, state),
            connect=connect,
        )

    def _engine_info(self) -> dict:
        if self._info is None:
            self._info = self.client.info()
        return self._info

    def _remapped_uids(self) -> bool:
        return any("name=userns" in option for option in self._engine_info().get("SecurityOptions") or [])

    def memory_capacity_mb(self) -> int | None:
        return int(self._engine_info().get("MemTotal") or 0) >> 20 or None

    def _why_stopped(self, sandbox_id: str, state: dict) -> str:
        """What a container that ended said: its exit code and last line of output."""
        container = self._container(sandbox_id, state)
        if container is None or container.status in ("running", "paused"):
            return ""
        code = container.attrs.get("State", {}).get("ExitCode")
        lines = container.logs(tail=3).decode(errors="replace").strip().splitlines()
        image = state.get("image") or "the image"
        said = f": {lines[-1]}" if lines else ""
        return f"the container of {image} exited with code {code}{said}; the image needs python3 for the agent"

    # ---- lifecycle
    def create(self, spec: BoxSpec) -> dict:
        image = spec.template_id or DEFAULT_IMAGE
        try:
            # Any process claims a spare container, whoever started it (a notebook
            # kernel claims the Jupyter server's); pool_size is what this one keeps.
            if _poolable(spec):
                claimed = self._claim_from_pool(spec, image)
                if claimed is not None:
                    return claimed
            return self._start_container(spec.sandbox_id, spec, image, pool=False)
        finally:
            if self.pool_size > 0:
                self.refill_pool_in_background(image)

    def keep_warm(self) -> None:
        if self.pool_size > 0:
            self.refill_pool_in_background()

    def _start_container(self, box_id: str, spec: BoxSpec, image: str, pool: bool) -> dict:
        """Create and start one hardened container for ``box_id`` (a sandbox id, or a pool slot)."""
        from docker.errors import APIError, ImageNotFound
        from docker.types import LogConfig

        client = self.client
        transport = choose_transport()
        uid = box_host_uid(box_id)
        key = new_agent_key()
        config = json.dumps(
            {
                "interpreters": {"python": "python3", "javascript": "node", "bash": "/bin/bash"},
                "env": box_environment(SYSTEM_PATH, spec.env),
                "limits": {"file_size_bytes": spec.disk_mb << 20, "open_files": 1024},
                "key": key,
            }
        )
        labels = {LABEL_STORE: self.store, LABEL_TRANSPORT: transport}
        labels.update(
            {LABEL_POOL: image, LABEL_POOL_HOST: store_label(self.data_dir)}
            if pool
            else {LABEL_SANDBOX: box_id, LABEL_USER: spec.owner}
        )
        sizes = disk_split(spec.disk_mb)
        tmpfs_options = "nosuid,nodev"
        tmpfs = {
            "/tmp": f"size={sizes['tmp']}m,mode=1777,{tmpfs_options}",
            BOX_HOME: f"size={sizes['home']}m,uid={uid},gid={uid},mode=0700,{tmpfs_options}",
        }
        box = private_dir(self.box_dir(box_id))
        (box / "agent.key").write_text(key)  # for a pool slot: read back when it is claimed
        (box / "agent.key").chmod(0o600)
        if transport == "socket":
            volumes = self._host_run_dir(box_id, config, uid, sizes["run"])
            command = agent_command("python3", spec.idle_timeout_seconds, BOX_HOME)
        else:
            # The engine is elsewhere (or we cannot mount): the code comes from a read-only
            # volume, the socket directory is a tmpfs of the container's, the config comes
            # through the container's standard input.
            volumes = {self._ensure_code_volume(image): {"bind": BOX_CODE, "mode": "ro,nocopy"}}
            tmpfs[BOX_RUN] = f"size={sizes['run']}m,uid={uid},gid={uid},mode=0700,{tmpfs_options}"
            command = agent_command("python3", spec.idle_timeout_seconds, BOX_HOME)
            command[command.index("--config-file") + 1] = "-"
        memory = f"{spec.memory_mb}m"
        try:
            container = client.containers.create(
                image,
                command,
                name=self._name(box_id),
                hostname="sandbox",
                labels=labels,
                user=f"{uid}:{uid}",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                init=True,
                pids_limit=spec.max_processes,
                mem_limit=memory,
                memswap_limit=memory,  # memory plus swap equal to memory: no swap
                nano_cpus=int(spec.cpus * 1e9),
                network_mode=self._internet_network() if spec.allow_internet else "none",
                read_only=True,
                tmpfs=tmpfs,
                shm_size=f"{sizes['shm']}m",
                volumes=volumes,
                working_dir=BOX_HOME,
                environment={"HOME": BOX_HOME},
                ipc_mode="private",
                # What reaches the container's output (its init's descriptors are the box's
                # to write to) is kept on this machine's disk: 1 MiB of it at most.
                log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
                stdin_open=transport == "exec",
            )
            if transport == "exec":
                send_config_through_attach(client, container.id, config, container.start)
            else:
                container.start()
                (box / "agent.pid").write_text(str(self._agent_host_pid(container)))
        except ImageNotFound:
            # containers.create never pulls (containers.run would try a registry).
            raise ProviderUnavailable(
                f"the image {image} is not on the Docker engine: build it with 'nexus sandbox template build'"
            ) from None
        except APIError as exc:
            raise ProviderUnavailable(f"Docker could not start the sandbox: {exc.explanation or exc}") from None
        state = {
            "container_id": container.id,
            "image": image,
            "transport": transport,
            "host_uid": uid,
            "agent_key": key,
        }
        if transport == "exec":  # reachable from every host of the fleet that uses this engine
            state["engine_id"] = self._engine_info().get("ID")
        if transport == "socket":
            state["agent_pid"] = int((box / "agent.pid").read_text())
            # Known now, so a later run needs no call to the engine (nor its SDK: ~0.3 s a CLI call).
            state["remapped_uids"] = self._remapped_uids()
        return state

    def _internet_network(self) -> str:
        """The network of containers allowed online: a bridge of ours whose containers reach
        the internet but neither each other nor this machine and its networks (iptables).
        A remote engine's host is not ours to fence: there the engine's own bridge is used,
        and its network policy is that engine's (the README says so)."""
        from docker.errors import NotFound

        if not engine_address().startswith("unix://") or os.geteuid() != 0:
            return "bridge"
        try:
            self.client.networks.get(network.DOCKER_NETWORK)
        except NotFound:
            self.client.networks.create(
                network.DOCKER_NETWORK,
                driver="bridge",
                options={
                    "com.docker.network.bridge.name": network.DOCKER_BRIDGE,
                    "com.docker.network.bridge.enable_icc": "false",
                },
                labels={"nexus.network": "internet"},
            )
        network.fence_docker_bridge()
        return network.DOCKER_NETWORK

    @staticmethod
    def _agent_host_pid(container) -> int:
        """The agent's pid on this machine: the child of the container's init (0 if unseen)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            container.reload()
            init = container.attrs.get("State", {}).get("Pid") or 0
            try:
                with open(f"/proc/{init}/task/{init}/children") as children:
                    found = children.read().split()
            except OSError:
                return 0
            if found:
                return int(found[0])
            time.sleep(0.005)
        return 0

    def _ensure_code_volume(self, image: str) -> str:
        """A volume holding this version of the box-side code, made once per engine, mounted
        read-only into every box (so nothing a box writes lands in a volume)."""
        from docker.errors import NotFound

        archive, digest = _code_archive()
        name = f"nexus-agent-{digest}"
        if self._code_volume == name:
            return name
        try:
            self.client.volumes.get(name)
        except NotFound:
            self.client.volumes.create(name=name, labels={"nexus.agent_code": digest})
        # Filled once per process (a fill cut short is mended by the next), by a container
        # that is never started; "nocopy": nothing of the image at that path enters the
        # volume, so no image can plant files beside the agent for later boxes.
        filler = self.client.containers.create(image, "true", volumes={name: {"bind": BOX_CODE, "mode": "rw,nocopy"}})
        try:
            filler.put_archive(BOX_CODE, archive)
        finally:
            filler.remove(force=True)
        self._code_volume = name
        return name

    # ---- the warm pool: containers started ahead, handed out by create
    def _pool_containers(self, image: str | None = None, running: bool = True) -> list:
        filters = {
            "label": [
                f"{LABEL_STORE}={self.store}",
                f"{LABEL_POOL_HOST}={store_label(self.data_dir)}",
                LABEL_POOL + (f"={image}" if image else ""),
            ],
            "name": f"nexus-{self.store}-pool-",
        }
        if running:
            filters["status"] = "running"
        return self.client.containers.list(all=not running, filters=filters)

    def _claim_from_pool(self, spec: BoxSpec, image: str) -> dict | None:
        from docker.errors import APIError

        for container in self._pool_containers(image):
            slot = container.name.removeprefix(f"nexus-{self.store}-")
            try:
                # Renaming by the old name is the claim: of two processes, only one succeeds.
                self.client.api.rename(container.name, self._name(spec.sandbox_id))
            except APIError:
                continue
            transport = container.labels.get(LABEL_TRANSPORT, "socket")
            # The bind mount follows the directory, whatever it is called now.
            self.box_dir(slot).rename(self.box_dir(spec.sandbox_id))
            state = {
                "container_id": container.id,
                "image": image,
                "transport": transport,
                "pool_slot": slot,
                "host_uid": box_host_uid(slot),
                "agent_key": (self.box_dir(spec.sandbox_id) / "agent.key").read_text(),
            }
            if transport == "exec":
                state["engine_id"] = self._engine_info().get("ID")
            if transport == "socket":
                state["agent_pid"] = int((self.box_dir(spec.sandbox_id) / "agent.pid").read_text())
                state["remapped_uids"] = self._remapped_uids()
            if (spec.memory_mb, spec.cpus, spec.max_processes) != (
                POOL_SHAPE.memory_mb,
                POOL_SHAPE.cpus,
                POOL_SHAPE.max_processes,
            ):
                self._update_limits(container.id, spec)
            self.agent(spec.sandbox_id, state).touch(
                spec.idle_timeout_seconds, env=box_environment(SYSTEM_PATH, spec.env)
            )
            return state
        return None

    def _update_limits(self, container_id: str, spec: BoxSpec) -> None:
        # The engine's update endpoint takes NanoCpus and PidsLimit; docker-py's
        # update_container() does not pass them, so the endpoint is called directly.
        api = self.client.api
        memory = spec.memory_mb << 20
        body = {
            "Memory": memory,
            "MemorySwap": memory,
            "NanoCpus": int(spec.cpus * 1e9),
            "PidsLimit": spec.max_processes,
        }
        api._result(api._post_json(api._url("/containers/{0}/update", container_id), data=body), True)

    def fill_pool(self, image: str = DEFAULT_IMAGE) -> int:
        """Start pool containers until ``pool_size`` run; returns how many were started."""
        with self._pool_lock:
            missing = self.pool_size - len(self._pool_containers(image))
            for _ in range(max(missing, 0)):
                self._start_container(f"pool-{secrets.token_hex(6)}", POOL_SHAPE, image, pool=True)
            return max(missing, 0)

    def refill_pool_in_background(self, image: str = DEFAULT_IMAGE) -> threading.Thread:
        thread = threading.Thread(target=self._refill_quietly, args=(image,), daemon=True)
        thread.start()
        return thread

    def _refill_quietly(self, image: str) -> None:
        try:
            self.fill_pool(image)
        except SandboxError:
            pass  # the next create starts cold and tries again

    def prune(self) -> list[str]:
        """Remove pool containers that ended (their agent's idle time ran out)."""
        pruned = []
        for container in self._pool_containers(running=False):
            if container.status not in ("running", "created", "restarting", "paused"):
                slot = container.name.removeprefix(f"nexus-{self.store}-")
                self.destroy(slot, {"container_id": container.id})
                pruned.append(slot)
        return pruned

    def drain_pool(self) -> None:
        """Remove every pool container (a server shutting down, a test ending), after a fill
        under way in this process."""
        with self._pool_lock:
            for container in self._pool_containers(running=False):
                self.destroy(container.name.removeprefix(f"nexus-{self.store}-"), {"container_id": container.id})

    def _host_run_dir(self, sandbox_id: str, config: str, uid: int, size_mb: int) -> dict:
        """The agent's socket directory on this machine, bind-mounted into the container:
        a tmpfs of its own size (root only), so a box cannot fill the host's disk through it,
        inside the box's 0700 directory, owned by the box's uid."""
        run_dir = self.box_dir(sandbox_id) / "run"
        run_dir.mkdir(exist_ok=True)
        if not os.path.ismount(run_dir):
            options = f"size={size_mb}m,mode=0700,uid={uid},gid={uid}".encode()
            if _libc().mount(b"nexus-run", str(run_dir).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
                raise ProviderUnavailable(f"cannot mount the sandbox's socket directory ({run_dir})")
        config_file = run_dir / "config.json"
        with open(os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(config)
        os.chown(config_file, uid, uid)
        return {
            str(run_dir): {"bind": BOX_RUN, "mode": "rw"},
            str(BOX_CODE_SOURCE): {"bind": BOX_CODE, "mode": "ro"},
        }

    def destroy(self, sandbox_id: str, state: dict) -> None:
        from docker.errors import APIError, NotFound

        container = self._container(sandbox_id, state)
        try:
            if container is not None:
                container.remove(force=True)  # ephemeral: no graceful stop
            self.client.volumes.get(self._name(sandbox_id)).remove(force=True)
        except NotFound:
            pass
        except APIError as exc:
            if "already in progress" not in str(exc):
                raise SandboxError(f"Docker could not remove the sandbox: {exc.explanation or exc}") from None
        run_dir = self.box_dir(sandbox_id) / "run"
        if os.path.ismount(run_dir):
            _libc().umount2(str(run_dir).encode(), MNT_DETACH)
        shutil.rmtree(self.box_dir(sandbox_id), ignore_errors=True)

    def pause(self, sandbox_id: str, state: dict) -> None:
        self._require_container(sandbox_id, state).pause()

    def resume(self, sandbox_id: str, state: dict) -> None:
        self._require_container(sandbox_id, state).unpause()

    def _require_container(self, sandbox_id: str, state: dict):
        container = self._container(sandbox_id, state)
        if container is None:
            raise SandboxError(f"the container of sandbox {sandbox_id} is gone")
        return container

    def inspect(self, sandbox_id: str, state: dict) -> str:
        container = self._container(sandbox_id, state)
        if container is None:
            return "stopped"
        return STATUS.get(container.status, "stopped")

    def metrics(self, sandbox_id: str, state: dict) -> dict:
        container = self._container(sandbox_id, state)
        if container is None:
            return {}
        try:
            stats = container.stats(stream=False, one_shot=True)  # one sample: no second's wait
        except TypeError:  # a docker SDK without one_shot
            stats = container.stats(stream=False)
        memory = stats.get("memory_stats") or {}
        cpu = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
        usage = {
            "cpu_seconds": cpu / 1e9 if isinstance(cpu, int) else None,
            "memory_bytes": memory.get("usage"),
            "memory_peak_bytes": memory.get("max_usage"),
            "memory_limit_bytes": memory.get("limit"),
            "processes": (stats.get("pids_stats") or {}).get("current"),
        }
        pids = self.host_pids(sandbox_id, state)
        if pids and os.geteuid() == 0:
            # The container's own tmpfs mounts, seen through its init's root (a local engine, as root).
            root = f"/proc/{pids[0]}/root"
            usage["disk_used_bytes"], usage["disk_limit_bytes"] = filesystem_usage(
                [root + BOX_HOME, root + "/tmp", root + "/dev/shm"]
            )
        return usage

    def host_pids(self, sandbox_id: str, state: dict) -> list[int]:
        container = self._container(sandbox_id, state)
        pid = container.attrs.get("State", {}).get("Pid") if container is not None else None
        if not pid or not engine_address().startswith("unix://"):
            return []  # a remote engine's pids are another machine's
        return process_tree(pid)

    def box_ids(self) -> set[str]:
        """Sandbox ids of this store's containers, volumes and directories (pool slots are not sandboxes)."""
        mine = {"label": f"{LABEL_STORE}={self.store}"}
        prefix = f"nexus-{self.store}-"
        names = {c.name for c in self.client.containers.list(all=True, filters=mine)}
        names |= {v.name for v in self.client.volumes.list(filters=mine)}
        ids = {name.removeprefix(prefix) for name in names if name.startswith(prefix)}
        try:
            ids |= {entry.name for entry in os.scandir(self.root) if entry.is_dir()}
        except FileNotFoundError:
            pass
        return {box_id for box_id in ids if not box_id.startswith("pool-")}
