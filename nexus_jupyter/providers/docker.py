"""The Docker provider: a box is one hardened container on a Docker engine.

The container runs the same in-box agent as the local provider (mounted
read-only from this package, so the image need not match the package
version); the agent's socket lives in a host directory bind-mounted into
the container, so a run costs no ``docker exec`` (~64 ms here).

Containers are found again from their labels (``nexus.store`` names the
data directory, ``nexus.sandbox_id`` the sandbox), never from memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

from ..agent_client import AgentClient
from ..errors import ProviderUnavailable, SandboxError
from .base import AGENT_SOURCE, BOX_AGENT, BOX_RUN, BoxSpec, Provider, agent_command, box_environment
from .docker_relay import connect_through_exec

DEFAULT_IMAGE = "nexus-jupyter-sandbox:latest"
EXEC_AGENT = f"{BOX_RUN}/agent.py"  # where the exec transport puts the agent (in the box's volume)
BOX_UID = 1000
BOX_HOME = "/home/user"
LABEL_STORE = "nexus.store"
LABEL_SANDBOX = "nexus.sandbox_id"
LABEL_USER = "nexus.user_id"
# Docker's states, in the provider's words.
STATUS = {"running": "active", "created": "active", "restarting": "active", "paused": "paused"}


def choose_transport() -> str:
    """``socket`` (the agent's socket bind-mounted from this machine) for a local engine,
    ``exec`` (a relay through docker exec) for a remote one; NEXUS_DOCKER_TRANSPORT overrides."""
    forced = os.environ.get("NEXUS_DOCKER_TRANSPORT", "").strip().lower()
    if forced in ("socket", "exec"):
        return forced
    if forced:
        raise ProviderUnavailable(f"NEXUS_DOCKER_TRANSPORT must be socket or exec, not {forced!r}")
    return "socket" if engine_address().startswith("unix://") else "exec"


def _agent_archive(config: str) -> bytes:
    """A tar of /run/nexus for the container: the agent, its config, a directory its user owns."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        directory = tarfile.TarInfo("nexus")
        directory.type, directory.mode, directory.uid, directory.gid = tarfile.DIRTYPE, 0o755, BOX_UID, BOX_UID
        tar.addfile(directory)
        for name, data, mode, owner in (
            ("agent.py", AGENT_SOURCE.read_bytes(), 0o444, 0),
            ("config.json", config.encode(), 0o600, BOX_UID),
        ):
            member = tarfile.TarInfo(f"nexus/{name}")
            member.size, member.mode, member.uid, member.gid = len(data), mode, owner, owner
            tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def store_label(data_dir: Path) -> str:
    return hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


class DockerProvider(Provider):
    """Boxes that are containers: all capabilities dropped, no new privileges, a
    non-root user, an init process, pids/memory/CPU limits, no network unless
    allowed, a read-only root with a size-limited writable home and /tmp."""

    name = "docker"
    display_name = "Docker"
    supports_pause = True

    def __init__(self, data_dir: Path):
        super().__init__(data_dir)
        self.root = self.data_dir / "boxes" / self.name
        self.store = store_label(self.data_dir)
        self._client = None

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
        if state.get("transport") == "exec":
            container_id = state.get("container_id") or self._name(sandbox_id)
            relay = ["python3", "-I", "-S", EXEC_AGENT, "--relay", f"{BOX_RUN}/agent.sock"]
            connect = lambda wait: connect_through_exec(self.client, container_id, relay)  # noqa: E731
        return AgentClient(
            self.box_dir(sandbox_id) / "run" / "agent.sock",
            is_alive=lambda: self.inspect(sandbox_id, state) != "stopped",
            connect=connect,
        )

    # ---- lifecycle
    def create(self, spec: BoxSpec) -> dict:
        from docker.errors import APIError, ImageNotFound

        image = spec.template_id or DEFAULT_IMAGE
        client = self.client
        try:
            # Checked first: containers.run would try to pull it from a registry.
            client.images.get(image)
        except ImageNotFound:
            raise ProviderUnavailable(
                f"the image {image} is not on the Docker engine: build it with 'nexus sandbox template build'"
            ) from None
        transport = choose_transport()
        config = json.dumps(
            {
                "interpreters": {"python": "python3", "javascript": "node", "bash": "/bin/bash"},
                "env": box_environment("/usr/local/bin:/usr/bin:/bin", spec.env),
                "limits": {"file_size_bytes": spec.disk_mb << 20, "open_files": 1024},
            }
        )
        labels = {LABEL_STORE: self.store, LABEL_SANDBOX: spec.sandbox_id, LABEL_USER: spec.owner}
        if transport == "socket":
            volumes = self._host_run_dir(spec.sandbox_id, config)
            command = agent_command("python3", spec.idle_timeout_seconds, BOX_HOME)
        else:
            # The engine is elsewhere: the agent and its config travel in a volume of its own.
            volume = client.volumes.create(name=self._name(spec.sandbox_id), labels=labels)
            volumes = {volume.name: {"bind": "/run", "mode": "rw"}}
            command = agent_command("python3", spec.idle_timeout_seconds, BOX_HOME, agent=EXEC_AGENT)
        memory = f"{spec.memory_mb}m"
        tmpfs_options = f"size={spec.disk_mb}m,mode=1777,nosuid,nodev"
        try:
            container = client.containers.create(
                image,
                command,
                name=self._name(spec.sandbox_id),
                hostname="sandbox",
                labels=labels,
                user=f"{BOX_UID}:{BOX_UID}",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                init=True,
                pids_limit=spec.max_processes,
                mem_limit=memory,
                memswap_limit=memory,  # memory plus swap equal to memory: no swap
                nano_cpus=int(spec.cpus * 1e9),
                network_mode="bridge" if spec.allow_internet else "none",
                read_only=True,
                tmpfs={"/tmp": tmpfs_options, BOX_HOME: f"{tmpfs_options},uid={BOX_UID},gid={BOX_UID},mode=0755"},
                volumes=volumes,
                working_dir=BOX_HOME,
                environment={"HOME": BOX_HOME},
                ipc_mode="private",
            )
            if transport == "exec":
                container.put_archive("/run", _agent_archive(config))
            container.start()
        except APIError as exc:
            raise ProviderUnavailable(f"Docker could not start the sandbox: {exc.explanation or exc}") from None
        return {"container_id": container.id, "image": image, "transport": transport}

    def _host_run_dir(self, sandbox_id: str, config: str) -> dict:
        """The agent's socket directory on this machine, bind-mounted into the container."""
        run_dir = self.box_dir(sandbox_id) / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        config_file = run_dir / "config.json"
        config_file.write_text(config)
        config_file.chmod(0o600)
        # The container's user must be able to create the agent's socket here.
        if os.geteuid() == 0:
            os.chown(run_dir, BOX_UID, BOX_UID)
            os.chown(config_file, BOX_UID, BOX_UID)
        else:
            run_dir.chmod(0o777)
            config_file.chmod(0o644)
        return {
            str(run_dir): {"bind": BOX_RUN, "mode": "rw"},
            str(AGENT_SOURCE): {"bind": BOX_AGENT, "mode": "ro"},
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

    def box_ids(self) -> set[str]:
        mine = {"label": f"{LABEL_STORE}={self.store}"}
        ids = {c.labels.get(LABEL_SANDBOX) for c in self.client.containers.list(all=True, filters=mine)}
        ids |= {v.attrs.get("Labels", {}).get(LABEL_SANDBOX) for v in self.client.volumes.list(filters=mine)}
        ids.discard(None)
        try:
            ids |= {entry.name for entry in os.scandir(self.root) if entry.is_dir()}
        except FileNotFoundError:
            pass
        return ids
