"""A real Jupyter server on loopback, as a subprocess, for the tests that talk to it over HTTP."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

OPENAPI = json.loads((Path(__file__).parent.parent / "nexus_jupyter" / "openapi.json").read_text())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(process: subprocess.Popen, url: str, log_path: Path, seconds: float = 120) -> None:
    """Until the server at ``url`` answers anything (a 403 too: it serves), or say why not."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            requests.get(f"{url}/api/status", timeout=5)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not start: {log_path.read_text(errors='replace')[-2000:]}")


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


class JupyterServer:
    """``jupyter server`` with the nexus_jupyter extension (enabled by the installed config)."""

    def __init__(self, root: Path, data_dir: Path, args: list[str] = (), env: dict | None = None, app="server"):
        self.root = root
        self.data_dir = data_dir
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/nexus/api"
        self.log_path = root / "server.log"
        environment = {
            **os.environ,
            "NEXUS_DATA_DIR": str(data_dir),
            "NEXUS_LOCAL_POOL_SIZE": "0",
            "NEXUS_DOCKER_POOL_SIZE": "0",
            **(env or {}),
        }
        for name in ("NEXUS_USER", "NEXUS_ADMIN", "NEXUS_SANDBOX_PROVIDER", "NEXUS_URL", "NEXUS_API_KEY"):
            if name not in (env or {}):
                environment.pop(name, None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyter", app, "--no-browser", "--allow-root", f"--port={self.port}",
             "--ip=127.0.0.1", f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
             *args],
            env=environment, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "wb"),
        )  # fmt: skip
        wait_until_serving(self.process, self.url, self.log_path)

    def headers(self, token: str | None = None) -> dict:
        return {"Authorization": f"token {token or self.token}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("headers", self.headers())
        kwargs.setdefault("timeout", 120)
        return requests.request(method, f"{self.api}/{path}", **kwargs)

    def stop(self) -> None:
        stop_process(self.process)


def schema_errors(instance, schema_name: str) -> list[str]:
    """What in ``instance`` breaks the OpenAPI description's schema ``schema_name`` (empty: it fits)."""
    import jsonschema

    schema = {**OPENAPI["components"]["schemas"][schema_name], "components": OPENAPI["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(instance)]


class NexusServe:
    """``nexus serve`` on loopback, its sandboxes in ``data_dir``: under a key of its own
    (``key``), or with none (``key=None``, the server makes one)."""

    def __init__(self, data_dir: Path, *args: str, key: str | None = "", env: dict | None = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = secrets.token_urlsafe(24) if key == "" else key
        environment = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
        environment.update(
            {
                "NEXUS_DATA_DIR": str(data_dir),
                "NEXUS_LOCAL_POOL_SIZE": "0",
                "NEXUS_DOCKER_POOL_SIZE": "0",
                **(env or {}),
            }
        )
        if self.key:
            environment["NEXUS_API_KEY"] = self.key
        self.keys_file = data_dir.parent / f"nexus-serve-{self.port}.keys"
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.keys_file.write_text("")
        if "--keys-file" in args:
            args = (*args[: args.index("--keys-file")], *args[args.index("--keys-file") + 2 :])
            args = (*args, "--keys-file", str(self.keys_file))
        self.log_path = data_dir.parent / f"nexus-serve-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nexus_jupyter", "serve", "--port", str(self.port), *args],
            env=environment,
            stdout=open(self.log_path, "wb"),
            stderr=subprocess.STDOUT,
        )
        wait_until_serving(self.process, self.url, self.log_path)

    def add_user(self, user: str) -> str:
        """A new key for ``user`` in the server's keys file (read again as it changes)."""
        key = secrets.token_urlsafe(24)
        with open(self.keys_file, "a") as keys:
            keys.write(f"{key} {user}\n")
        return key

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)
