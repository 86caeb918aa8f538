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
        self.wait_until_serving()

    def wait_until_serving(self, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log()[-2000:]}")
            try:
                requests.get(f"{self.url}/api/status", timeout=5)  # any answer (a 403 too): it serves
                return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not start: {self.log()[-2000:]}")

    def headers(self, token: str | None = None) -> dict:
        return {"Authorization": f"token {token or self.token}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("headers", self.headers())
        kwargs.setdefault("timeout", 120)
        return requests.request(method, f"{self.api}/{path}", **kwargs)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def schema_errors(instance, schema_name: str) -> list[str]:
    """What in ``instance`` breaks the OpenAPI description's schema ``schema_name`` (empty: it fits)."""
    import jsonschema

    schema = {**OPENAPI["components"]["schemas"][schema_name], "components": OPENAPI["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(instance)]


class NexusServe:
    """``nexus serve`` on loopback under a key of its own, its sandboxes in ``data_dir``."""

    def __init__(self, data_dir: Path, *args: str, env: dict | None = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = secrets.token_urlsafe(24)
        environment = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
        environment.update(
            {"NEXUS_DATA_DIR": str(data_dir), "NEXUS_API_KEY": self.key, "NEXUS_LOCAL_POOL_SIZE": "0", **(env or {})}
        )
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir.parent / "nexus-serve.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nexus_jupyter", "serve", "--port", str(self.port), *args],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "wb"),
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nexus serve exited: {self.log_path.read_text()[-2000:]}")
            try:
                requests.get(f"{self.url}/api/status", timeout=5)
                return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError("nexus serve did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
