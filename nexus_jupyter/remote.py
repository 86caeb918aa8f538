"""The seed's remote mode: the service's API over a nexus server's REST API.

With ``NEXUS_URL`` (e.g. ``http://localhost:2026``, a ``nexus serve`` or a Jupyter
server with the extension) and ``NEXUS_API_KEY`` set, ``SandboxManager()``, the
CLI and the magics act through ``RemoteService`` instead of a local store: the
same methods, models, messages and exit codes, output streamed as the server
sends it, files streamed both ways.  The server decides who the caller is (its
key's user), so the ``Caller`` passed in is not sent.

Plain ``http.client``: one keep-alive connection per thread, and nothing a CLI
call would wait ~100 ms to import.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from typing import IO
from urllib.parse import quote, urlencode, urlsplit

from .errors import (
    InvalidArgument,
    PathNotFound,
    PermissionDenied,
    ProviderNotSupported,
    ProviderUnavailable,
    QuotaExceeded,
    SandboxError,
    SandboxNotFound,
    SandboxStateError,
    SandboxTimeout,
)
from .models import FileEntry, Metrics, RunResult, Sandbox
from .service import SandboxService
from .settings import Settings

CALL_SECONDS = 120.0  # any one call but a run or a transfer
CHUNK = 1 << 16
ERROR_OF_STATUS = {
    400: InvalidArgument,
    403: PermissionDenied,
    404: SandboxNotFound,
    409: SandboxStateError,
    429: QuotaExceeded,
    503: ProviderUnavailable,
}


class RemoteService:
    """SandboxService's methods, answered by the server at ``url`` for the user of ``api_key``."""

    def __init__(self, url: str, api_key: str | None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument(f"NEXUS_URL must be an http(s) URL like http://localhost:2026, not {url!r}")
        if not api_key:
            raise InvalidArgument(f"NEXUS_URL is set ({url}) but NEXUS_API_KEY is not: set the server's key")
        if any(ch.isspace() or not ch.isprintable() for ch in api_key):
            raise InvalidArgument(
                "NEXUS_API_KEY holds a space or a control character (a line break?): check how it was set"
            )
        self.url = url.rstrip("/")
        self.api_key = api_key
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._base = parts.path.rstrip("/") + "/nexus/api"
        self._local = threading.local()
        self.settings = Settings()  # defaults the server applies are its own; these only shape requests
        self.default_provider = None  # the server's

    # ---- HTTP
    def _connection(self, fresh: bool = False):
        import http.client

        connection = getattr(self._local, "connection", None)
        if connection is None or fresh:
            if connection is not None:
                connection.close()
            kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            connection = kind(self._host, self._port, timeout=CALL_SECONDS)
            self._local.connection = connection
        return connection

    def _send(self, method: str, path: str, body=None, headers: dict | None = None, query: dict | None = None):
        """The response to one request (its body not yet read); connection failures as one line."""
        target = self._target(path, query)
        headers = {"Authorization": f"Bearer {self.api_key}", **(headers or {})}
        import http.client

        for attempt in (1, 2):
            connection = self._connection(fresh=attempt == 2)
            try:
                connection.request(method, target, body=body, headers=headers)
                return connection.getresponse()
            except (ConnectionResetError, BrokenPipeError, http.client.HTTPException) as exc:
                # A kept-alive connection the server closed (or one left mid-answer by a caller
                # that stopped reading): once more on a new one, if the body can be sent again.
                if attempt == 2 or not (body is None or isinstance(body, bytes)):
                    raise self._unreachable(exc) from None
            except OSError as exc:
                connection.close()
                self._local.connection = None
                raise self._unreachable(exc) from None
        raise AssertionError("unreachable")

    def _target(self, path: str, query: dict | None = None) -> str:
        return self._base + path + (f"?{urlencode(query)}" if query else "")

    def _unreachable(self, exc: Exception) -> ProviderUnavailable:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return ProviderUnavailable(
            f"cannot reach the nexus server at {self.url}: {reason} (is it running? check NEXUS_URL)"
        )

    def _fail(self, response, path: str) -> SandboxError:
        """The error an error response stands for, with the server's own message."""
        raw = response.read()
        try:
            message = json.loads(raw).get("message") or ""
        except (ValueError, AttributeError):
            message = raw[:200].decode("utf-8", "replace").strip()
        status = response.status
        if status == 403 and message in ("", "Forbidden"):
            return PermissionDenied(f"the nexus server at {self.url} refused the API key: check NEXUS_API_KEY")
        if status == 404 and "/files" in path and not message.startswith("Sandbox not found"):
            return PathNotFound(message)
        if status == 400 and message.endswith("Use stop to destroy the sandbox."):
            return ProviderNotSupported(message)
        kind = ERROR_OF_STATUS.get(status)
        if kind is None:
            return SandboxError(f"the nexus server at {self.url} answered {status} {response.reason}: {message}")
        return kind(message or f"{status} {response.reason}")

    def _json(self, method: str, path: str, payload=None, query: dict | None = None, expect=(200, 201)):
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        response = self._send(method, path, body, headers, query)
        if response.status not in expect:
            raise self._fail(response, path)
        return json.loads(response.read())

    @staticmethod
    def _id(sandbox_id: str) -> str:
        if not isinstance(sandbox_id, str) or not sandbox_id.strip():
            raise InvalidArgument("a sandbox id is required")
        return quote(sandbox_id, safe="")

    # ---- the service's API
    def whoami(self) -> tuple[str, bool]:
        """(user id, admin) as the server sees this key; asked once."""
        if getattr(self, "_whoami", None) is None:
            answer = self._json("GET", "/whoami")
            self._whoami = (answer["user_id"], bool(answer["is_admin"]))
        return self._whoami

    def provider(self, name: str):
        raise ProviderNotSupported(f"providers run on the nexus server at {self.url}, not here")

    def prepare(self, provider: str | None = None) -> None:
        return None  # the server's providers are ready on the server

    def notices(self, provider: str) -> list[str]:
        return []  # the server's machine, not this one

    def create(self, caller, name: str, ttl_minutes: int | None = None, template_id: str | None = None, *,
               provider: str | None = None, agent_id: str | None = None, tenant_id: str | None = None,
               allow_internet_access: bool = False, memory_mb: int | None = None, cpus: float = 1.0,
               max_processes: int = 256, disk_mb: int | None = None, env: dict | None = None,
               notebook: str | None = None) -> Sandbox:  # fmt: skip
        fields = {
            "name": name,
            "ttl_minutes": ttl_minutes,
            "template_id": template_id,
            "provider": provider,
            "agent_id": agent_id,
            "tenant_id": tenant_id,
            "allow_internet": bool(allow_internet_access),
            "memory_mb": memory_mb,
            "cpus": cpus,
            "max_processes": max_processes,
            "disk_mb": disk_mb,
            "env": env,
            "notebook": notebook,
        }
        body = {key: value for key, value in fields.items() if value is not None}
        return Sandbox.from_dict(self._json("POST", "/sandboxes", body))

    def run(self, caller, sandbox_id: str, language: str, code: str, timeout: float | None = None, *,
            fresh: bool = False, on_stdout: Callable | None = None, on_stderr: Callable | None = None,
            on_result: Callable | None = None, env: dict | None = None, filename: str | None = None,
            execution_count: int | None = None, cancel=None, on_start=None) -> RunResult:  # fmt: skip
        body = {"language": language, "code": code, "fresh": fresh}
        if timeout is not None:
            body["timeout"] = timeout
        if env:
            body["env"] = env
        if filename:
            body["filename"] = filename
        if execution_count is not None:
            body["execution_count"] = execution_count
        path = f"/sandboxes/{self._id(sandbox_id)}/run"
        response = self._send("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        if response.status != 200:
            raise self._fail(response, path)
        # The server ends the run itself; this only guards against one that stops answering.
        self._connection().sock.settimeout(None if timeout is None else float(timeout) + CALL_SECONDS)
        handlers = {"stdout": on_stdout, "stderr": on_stderr}
        try:
            for line in response:
                event = json.loads(line)
                kind = event.get("type")
                if kind in handlers and handlers[kind] is not None:
                    handlers[kind](event["text"])
                elif kind == "result" and on_result is not None:
                    on_result({key: event[key] for key in ("data", "metadata", "is_main_result")})
                elif kind == "start" and on_start is not None:
                    on_start()
                elif kind == "failed":
                    raise ERROR_OF_STATUS.get(event.get("status"), SandboxError)(event["message"])
                elif kind == "end":
                    response.read()  # the rest of the answer, so the connection serves the next request
                    if event.get("timed_out"):
                        raise SandboxTimeout(event["message"], event["result"])
                    return RunResult.from_dict(event["result"])
        except SandboxTimeout:
            raise
        except BaseException:
            self._connection(fresh=True)  # closing the old one is how the server learns to cancel the run
            raise
        raise SandboxError(f"the nexus server at {self.url} ended the run's answer early")

    def _record(self, method: str, path: str) -> Sandbox:
        return Sandbox.from_dict(self._json(method, path))

    def pause(self, caller, sandbox_id: str) -> Sandbox:
        return self._record("POST", f"/sandboxes/{self._id(sandbox_id)}/pause")

    def resume(self, caller, sandbox_id: str) -> Sandbox:
        return self._record("POST", f"/sandboxes/{self._id(sandbox_id)}/resume")

    def stop(self, caller, sandbox_id: str) -> Sandbox:
        return self._record("POST", f"/sandboxes/{self._id(sandbox_id)}/stop")

    def status(self, caller, sandbox_id: str) -> Sandbox:
        return self._record("GET", f"/sandboxes/{self._id(sandbox_id)}")

    def list_sandboxes(self, caller, context: dict | None = None, verify_status: bool = False,
                       include_stopped: bool = False) -> list[Sandbox]:  # fmt: skip
        query = {"verify": int(bool(verify_status)), "all": int(bool(include_stopped))}
        for key, value in (context or {}).items():
            if value is not None:
                query["user" if key == "user_id" else key] = int(value) if isinstance(value, bool) else value
        return [Sandbox.from_dict(r) for r in self._json("GET", "/sandboxes", query=query)["sandboxes"]]

    def attach(self, caller, sandbox_id: str, kernel_id: str, notebook: str | None = None) -> Sandbox:
        body = {"kernel_id": kernel_id, **({"notebook": notebook} if notebook is not None else {})}
        return Sandbox.from_dict(self._json("POST", f"/sandboxes/{self._id(sandbox_id)}/attach", body))

    def metrics(self, caller, sandbox_id: str) -> Metrics:
        return Metrics.from_dict(self._json("GET", f"/sandboxes/{self._id(sandbox_id)}/metrics"))

    def reap(self) -> dict:
        raise ProviderNotSupported(f"the nexus server at {self.url} reaps its sandboxes itself")

    # ---- files
    def max_file_bytes(self) -> int:
        return self.settings.max_file_bytes

    def write_file(self, caller, sandbox_id: str, path: str, content: bytes | str | IO[bytes]) -> dict:
        if isinstance(content, str):
            content = content.encode("utf-8")
        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(content, (bytes, bytearray)):
            headers["Content-Length"] = str(len(content))
            body = bytes(content)
        else:
            body = _chunks_of(content)  # sent chunked (no length given): the file is never held whole
        target = f"/sandboxes/{self._id(sandbox_id)}/files/{_file_path(path)}"
        response = self._send("PUT", target, body, headers)
        if response.status != 201:
            raise self._fail(response, target)
        return json.loads(response.read())

    def read_file_chunks(self, caller, sandbox_id: str, path: str) -> Iterator[bytes]:
        target = f"/sandboxes/{self._id(sandbox_id)}/files/{_file_path(path)}"
        response = self._send("GET", target)
        if response.status != 200:
            raise self._fail(response, target)
        finished = False
        try:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    finished = True
                    return
                yield chunk
        finally:
            if not finished:  # the reader stopped early: this connection is mid-answer
                self._connection(fresh=True)

    def list_files(self, caller, sandbox_id: str, path: str = ".") -> list[FileEntry]:
        entries = self._json("GET", f"/sandboxes/{self._id(sandbox_id)}/files", query={"path": path})
        return [FileEntry.from_dict(entry) for entry in entries]

    # The same over any service: they call write_file and read_file_chunks.
    upload_file = SandboxService.upload_file
    read_file = SandboxService.read_file
    download_file = SandboxService.download_file


def _file_path(path: str) -> str:
    """A path as the files route takes it: an absolute one keeps its leading slash (as %2F)."""
    if not isinstance(path, str) or not path:
        raise InvalidArgument("a file path is required")
    quoted = quote(path, safe="/")
    return "%2F" + quoted[1:] if quoted.startswith("/") else quoted


def _chunks_of(source: IO[bytes]) -> Iterator[bytes]:
    while True:
        block = source.read(CHUNK)
        if not block:
            return
        yield block


def remote_from_environment() -> RemoteService | None:
    """The remote service ``NEXUS_URL`` names, or None when it is not set."""
    url = os.environ.get("NEXUS_URL", "").strip()
    if not url:
        return None
    return RemoteService(url, os.environ.get("NEXUS_API_KEY", "").strip())
