"""The double's envd: the process and filesystem services, on the SDK's own generated
Connect modules (``e2b.envd.*_connect``, ``*_pb``), so every message is one the pinned
SDK itself defines and parses.

A process runs in the sandbox's local box through the local provider's ``run``
(bash, as envd runs ``/bin/bash -l -c <cmd>``).  As envd does, a process outlives
a client that stops listening (``CommandHandle.disconnect``) and ends on
``SendSignal`` or when the request's deadline (``connect-timeout-ms``) passes.
"""

from __future__ import annotations

import itertools
import queue
import shlex
import threading
from datetime import datetime, timezone

import protobuf
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.filesystem import filesystem_pb as fs
from e2b.envd.filesystem.filesystem_connect import FilesystemSync, FilesystemWSGIApplication
from e2b.envd.process import process_pb as pb
from e2b.envd.process.process_connect import ProcessSync, ProcessWSGIApplication

from nexus_jupyter.errors import PathNotFound, SandboxError
from nexus_jupyter.providers.base import Cancel

from .cloud import Cloud, CloudSandbox

FOREVER_SECONDS = 24 * 3600.0
MAX_OUTPUT_CHARS = 10_000_000
ENTRY_TYPES = {"file": fs.FileType.FILE, "dir": fs.FileType.DIRECTORY, "symlink": fs.FileType.SYMLINK}


def _event(**oneof) -> pb.StartResponse:
    ((field, value),) = oneof.items()
    return pb.StartResponse(event=pb.ProcessEvent(event=protobuf.Oneof(field, value)))


def bash_line(cmd: str, args: list[str], cwd: str) -> str:
    """The bash code that runs ``cmd args`` as envd would (a login shell's ``-c`` as is)."""
    if cmd in ("/bin/bash", "bash") and len(args) == 3 and args[:2] == ["-l", "-c"]:
        line = args[2]
    else:
        line = "exec " + shlex.join([cmd, *args])
    return f"cd {shlex.quote(cwd)} || exit 1\n{line}" if cwd else line


class _Process:
    def __init__(self, pid: int):
        self.pid = pid
        self.cancel = Cancel()
        self.events: queue.Queue = queue.Queue()
        self.listening = True


class ProcessService(ProcessSync):
    """``process.Process``: Start (server stream) and SendSignal; the rest answer UNIMPLEMENTED."""

    def __init__(self, cloud: Cloud):
        self.cloud = cloud
        self.pids = itertools.count(1000)
        self.processes: dict[tuple[str, int], _Process] = {}
        self.lock = threading.Lock()

    def _sandbox(self, ctx) -> CloudSandbox:
        sandbox = self.cloud.sandboxes.get(ctx.request_headers.get("e2b-sandbox-id", ""))
        if sandbox is None:  # ended between the proxy's check and here
            raise ConnectError(Code.UNAVAILABLE, "The sandbox was not found")
        return sandbox

    def start(self, request: pb.StartRequest, ctx):
        sandbox = self._sandbox(ctx)
        spec = request.process
        code = bash_line(spec.cmd, list(spec.args), spec.cwd or "")
        deadline_ms = ctx.timeout_ms
        process = _Process(next(self.pids))
        key = (sandbox.sandbox_id, process.pid)
        with self.lock:
            self.processes[key] = process

        def forward(stream: str):
            return lambda text: process.events.put(("data", stream, text))

        def work():
            try:
                outcome = self.cloud.provider.run(
                    sandbox.sandbox_id,
                    sandbox.box_state,
                    "bash",
                    code,
                    timeout=deadline_ms / 1000 if deadline_ms else FOREVER_SECONDS,
                    max_output_chars=MAX_OUTPUT_CHARS,
                    env={**sandbox.env_vars, **dict(spec.envs)},
                    on_stdout=forward("stdout"),
                    on_stderr=forward("stderr"),
                    cancel=process.cancel,
                )
                process.events.put(("end", outcome, None))
            except SandboxError as exc:  # killed by SendSignal, or the box ended
                process.events.put(("end", {"exit_code": -9, "error": str(exc)}, None))
            finally:
                with self.lock:
                    self.processes.pop(key, None)

        yield _event(start=pb.ProcessEvent.StartEvent(pid=process.pid))
        threading.Thread(target=work, name=f"e2b-double-process-{process.pid}", daemon=True).start()
        try:
            while True:
                kind, first, second = process.events.get()
                if kind == "data":
                    data = second.encode("utf-8")
                    yield _event(data=pb.ProcessEvent.DataEvent(output=protobuf.Oneof(first, data)))
                    continue
                outcome = first
                if sandbox.sandbox_id not in self.cloud.sandboxes:
                    # The sandbox was killed under the process: the proxy's answer, as for any request to it.
                    raise ConnectError(Code.UNAVAILABLE, f"The sandbox {sandbox.sandbox_id} was not found")
                exit_code = outcome["exit_code"]
                yield _event(
                    end=pb.ProcessEvent.EndEvent(
                        exit_code=exit_code,
                        exited=exit_code >= 0,
                        status=f"exit status {exit_code}" if exit_code >= 0 else "signal: killed",
                        error=outcome.get("error") or "",
                    )
                )
                return
        finally:
            process.listening = False  # a client that hung up leaves the process running, as envd does

    def send_signal(self, request: pb.SendSignalRequest, ctx) -> pb.SendSignalResponse:
        sandbox = self._sandbox(ctx)
        selector = request.process.selector  # a oneof: pid or tag
        pid = selector.value if selector is not None and selector.field == "pid" else None
        with self.lock:
            process = self.processes.get((sandbox.sandbox_id, pid))
        if process is None:
            raise ConnectError(Code.NOT_FOUND, f"process with pid {pid} not found")
        process.cancel.cancel()  # our box ends a run whose connection closes: SIGKILL and SIGTERM alike
        return pb.SendSignalResponse()


class FilesystemService(FilesystemSync):
    """``filesystem.Filesystem``: ListDir; the rest answer UNIMPLEMENTED."""

    def __init__(self, cloud: Cloud):
        self.cloud = cloud

    def list_dir(self, request: fs.ListDirRequest, ctx) -> fs.ListDirResponse:
        sandbox = self.cloud.sandboxes.get(ctx.request_headers.get("e2b-sandbox-id", ""))
        if sandbox is None:
            raise ConnectError(Code.UNAVAILABLE, "The sandbox was not found")
        try:
            listing = self.cloud.provider.list_files(sandbox.sandbox_id, sandbox.box_state, request.path)
        except PathNotFound:
            raise ConnectError(Code.NOT_FOUND, f"path not found: {request.path}") from None
        except SandboxError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None
        return fs.ListDirResponse(
            entries=[
                fs.EntryInfo(
                    name=entry["name"],
                    type=ENTRY_TYPES.get(entry["type"], fs.FileType.UNSPECIFIED),
                    path=entry["path"],
                    size=int(entry["size"]),
                    modified_time=protobuf.wkt.Timestamp.from_datetime(
                        datetime.fromtimestamp(entry["modified"], timezone.utc)
                    ),
                )
                for entry in listing["entries"]
            ]
        )


def envd_apps(cloud: Cloud) -> dict:
    """The Connect WSGI apps by path prefix."""
    return {
        "/process.Process/": ProcessWSGIApplication(ProcessService(cloud)),
        "/filesystem.Filesystem/": FilesystemWSGIApplication(FilesystemService(cloud)),
    }
