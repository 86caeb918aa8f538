"""Host side of the agent protocol: talk to the agent inside a box over its Unix socket."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import SandboxError

FILE_CHUNK = 256 * 1024
OutputCallback = Callable[[str], None]
ResultCallback = Callable[[dict], None]
KERNEL_START_SECONDS = 180


class AgentUnreachable(SandboxError):
    """The box's agent does not answer (the box died or never started)."""


class AgentClient:
    """Sends requests to one box's agent.  Holds no state between requests."""

    def __init__(
        self,
        socket_path: Path,
        is_alive: Callable[[], bool] | None = None,
        explain: Callable[[], str] | None = None,
        connect: Callable[[float], socket.socket] | None = None,
    ):
        self.socket_path = Path(socket_path)
        self.is_alive = is_alive
        self.explain = explain
        # Another way to reach the agent (a relay through `docker exec`) instead of its socket.
        self.connect = connect

    def _unreachable(self, message: str) -> AgentUnreachable:
        detail = self.explain() if self.explain is not None else ""
        return AgentUnreachable(f"{message} ({detail})" if detail else message)

    # ---- connection
    def _connect(self, wait: float) -> socket.socket:
        """Connect, waiting up to ``wait`` seconds for a box that is still starting."""
        deadline = time.monotonic() + wait
        delay = 0.001
        # A socket path is limited to 108 bytes; going through an O_PATH
        # descriptor of its directory keeps deep data dirs working.
        try:
            dir_fd = os.open(self.socket_path.parent, os.O_PATH)
        except FileNotFoundError as exc:
            raise AgentUnreachable("the sandbox's state directory is gone") from exc
        try:
            address = f"/proc/self/fd/{dir_fd}/{self.socket_path.name}"
            while True:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(address)
                    return sock
                except (FileNotFoundError, ConnectionRefusedError) as exc:
                    sock.close()
                    if time.monotonic() > deadline:
                        raise self._unreachable("the sandbox's agent did not answer") from exc
                    if self.is_alive is not None and not self.is_alive():
                        raise self._unreachable("the sandbox is no longer running") from exc
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
        finally:
            os.close(dir_fd)

    def _events(
        self, request: dict, wait: float = 15.0, timeout: float | None = None, body: Iterator[dict] | None = None
    ) -> Iterator[dict]:
        sock = self.connect(wait) if self.connect is not None else self._connect(wait)
        try:
            sock.settimeout(timeout)
            stream = sock.makefile("rwb", buffering=1 << 16)
            stream.write(json.dumps(request).encode() + b"\n")
            for message in body or ():
                stream.write(json.dumps(message).encode() + b"\n")
            stream.flush()
            while True:
                line = stream.readline()
                if not line:
                    raise AgentUnreachable("the sandbox's agent closed the connection")
                try:
                    event = json.loads(line)
                except ValueError:
                    raise self._unreachable(f"the sandbox's agent answered garbage: {line[:80]!r}") from None
                if event["ev"] == "error":
                    raise SandboxError(event.get("message", "agent error"))
                yield event
                if event["ev"] == "end":
                    return
        except TimeoutError as exc:
            raise AgentUnreachable("the sandbox's agent stopped answering") from exc
        finally:
            sock.close()

    def _single(self, request: dict, **kwargs) -> dict:
        """The final event of a request whose other events carry nothing."""
        events = list(self._events(request, **kwargs))
        return events[-1] if events else {}

    # ---- operations
    def ping(self, wait: float = 15.0) -> dict:
        return self._single({"op": "ping"}, wait=wait, timeout=5)

    def touch(self, idle_timeout: float | None = None, env: dict | None = None) -> None:
        """Note activity; optionally give the box a new idle timeout and run environment."""
        request: dict = {"op": "touch"}
        if idle_timeout is not None:
            request["idle_timeout"] = idle_timeout
        if env is not None:
            request["env"] = env
        self._single(request, timeout=5)

    def run(
        self,
        language: str,
        code: str,
        timeout: float,
        *,
        env: dict | None = None,
        max_output_chars: int = 1 << 20,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_result: ResultCallback | None = None,
    ) -> dict:
        """Run code in a fresh process; returns stdout, stderr, exit_code, execution_time, timed_out."""
        request = {
            "op": "run",
            "language": language,
            "code": code,
            "timeout": timeout,
            "env": env or {},
            "max_output_chars": max_output_chars,
        }
        # The agent enforces the deadline itself; the socket timeout only
        # guards against an agent that died without closing the socket.
        return self._collect(request, timeout + 30, on_stdout, on_stderr, on_result)

    def execute(
        self,
        code: str,
        timeout: float,
        *,
        max_output_chars: int = 1 << 20,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_result: ResultCallback | None = None,
    ) -> dict:
        """Run a cell in the box's Python kernel (state persists between cells).

        Returns stdout, stderr, exit_code, execution_time, timed_out, restarted,
        ``results`` (display outputs and the cell's value as MIME bundles) and
        ``error`` (name, value, traceback; its text is also in stderr).
        """
        request = {"op": "execute", "code": code, "timeout": timeout, "max_output_chars": max_output_chars}
        # The first cell also waits for the kernel to start.
        return self._collect(request, timeout + KERNEL_START_SECONDS, on_stdout, on_stderr, on_result)

    def _collect(self, request: dict, socket_timeout: float, on_stdout, on_stderr, on_result) -> dict:
        collected: dict[str, list[str]] = {"stdout": [], "stderr": []}
        callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        results: list[dict] = []
        error = None
        end: dict = {}
        for event in self._events(request, timeout=socket_timeout):
            kind = event["ev"]
            if kind in collected:
                collected[kind].append(event["data"])
                if callbacks[kind] is not None:
                    callbacks[kind](event["data"])
            elif kind in ("display", "result"):
                result = {
                    "data": event["data"],
                    "metadata": event.get("metadata", {}),
                    "is_main_result": kind == "result",
                }
                results.append(result)
                if on_result is not None:
                    on_result(result)
            elif kind == "exception":
                error = {"name": event["ename"], "value": event["evalue"], "traceback": event["traceback"]}
                text = "\n".join(event["traceback"]) + "\n"
                collected["stderr"].append(text)
                if on_stderr is not None:
                    on_stderr(text)
            elif kind == "end":
                end = event
        end["stdout"] = "".join(collected["stdout"])
        end["stderr"] = "".join(collected["stderr"])
        end["results"] = results
        end["error"] = error
        return end

    def write_file(self, path: str, source) -> dict:
        """Write ``source`` (bytes or a binary file object) to ``path`` inside the box."""

        def chunks():
            if isinstance(source, (bytes, bytearray, memoryview)):
                data = bytes(source)
                for start in range(0, len(data), FILE_CHUNK):
                    yield {"chunk": base64.b64encode(data[start : start + FILE_CHUNK]).decode()}
            else:
                while True:
                    block = source.read(FILE_CHUNK)
                    if not block:
                        break
                    yield {"chunk": base64.b64encode(block).decode()}
            yield {"eof": True}

        return self._single({"op": "files.write", "path": path}, timeout=120, body=chunks())

    def read_file_chunks(self, path: str) -> Iterator[bytes]:
        """Yield the file's bytes in chunks, never holding it whole."""
        for event in self._events({"op": "files.read", "path": path}, timeout=120):
            if event["ev"] == "chunk":
                yield base64.b64decode(event["chunk"])

    def list_files(self, path: str) -> dict:
        return self._single({"op": "files.list", "path": path}, timeout=30)

    def remove_file(self, path: str) -> dict:
        return self._single({"op": "files.remove", "path": path}, timeout=30)
