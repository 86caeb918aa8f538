"""The REST API under ``{base_url}nexus/api/``: a thin layer over the server's SandboxService.

Each handler checks who is asking (Jupyter's identity provider: a token, or a
cookie plus the XSRF token for writes), calls the service off the event loop as
that user, and answers the JSON of the CLI's ``--json``.  Errors are the
service's one-line messages with a status that says what went wrong: 400 bad
input, 403 not allowed, 404 unknown (or another user's), 409 wrong state, 503
provider or store unavailable.  ``openapi.json`` describes every route here; a
test holds the two together.

A run answers newline-delimited JSON events as they happen (``stdout``,
``stderr``, ``result``, then ``error`` for a Python exception, then ``end``
with the run's JSON); a client that disconnects cancels its run.  File
transfers stream both ways without holding a file whole.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import quote

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.call_context import CallContext
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web
from tornado.iostream import StreamClosedError

from .errors import (
    InvalidArgument,
    PathNotFound,
    PermissionDenied,
    ProviderNotSupported,
    ProviderUnavailable,
    QuotaExceeded,
    RunCancelled,
    SandboxError,
    SandboxNotFound,
    SandboxStateError,
    SandboxTimeout,
    StoreError,
)
from .fleet import USER_HEADER
from .formatting import printable
from .providers.base import Cancel

SANDBOX_ID = r"(?P<sandbox_id>[^/]+)"
CREATE_FIELDS = {
    "name": "name",
    "ttl_minutes": "ttl_minutes",
    "provider": "provider",
    "template_id": "template_id",
    "agent_id": "agent_id",
    "tenant_id": "tenant_id",
    "memory": "memory_mb",
    "memory_mb": "memory_mb",
    "cpus": "cpus",
    "max_processes": "max_processes",
    "disk_mb": "disk_mb",
    "env": "env",
    "allow_internet": "allow_internet_access",
    "notebook": "notebook",
}
RUN_FIELDS = ("language", "code", "timeout", "fresh", "env", "filename", "execution_count")
# (error class, HTTP status): the first that matches wins, so subclasses come first.
STATUS_OF_ERROR = (
    (InvalidArgument, 400),
    (PermissionDenied, 403),
    (SandboxNotFound, 404),
    (PathNotFound, 404),
    (ProviderNotSupported, 400),
    (QuotaExceeded, 429),
    (SandboxStateError, 409),
    (RunCancelled, 409),
    (ProviderUnavailable, 503),
    (StoreError, 503),
    (SandboxError, 400),
)
UPLOAD_QUEUE_CHUNKS = 8  # chunks of a request body held between the socket and the box
EVENTS_BUFFERED = 64  # a run's events held for a client that reads slowly


def status_of(error: SandboxError) -> int:
    return next(status for kind, status in STATUS_OF_ERROR if isinstance(error, kind))


class NexusHandler(ExtensionHandlerMixin, APIHandler):
    """Who is asking, the service, and errors as JSON with the service's message."""

    auth_resource = "nexus_sandboxes"

    @property
    def app(self):
        return self.extensionapp

    async def prepare(self, *args, **kwargs):
        # A request another server of the fleet forwarded (fleet.py): this server's own key says
        # so, and names the user it acts for; Jupyter's identity provider knows neither.
        if USER_HEADER in self.request.headers:
            CallContext.set(CallContext.JUPYTER_HANDLER, self)
            self.current_user = self._jupyter_current_user = self.app.fleet_user(self.request.headers)
            return None
        return await super().prepare(*args, **kwargs)

    @property
    def caller(self):
        return self.app.caller_for(self.current_user)

    async def call(self, function, *args, **kwargs):
        """The service's ``function(caller, ...)`` off the event loop; its errors as HTTP errors."""
        try:
            caller = self.caller
            return await self.app.off_loop(function, caller, *args, for_user=caller.user_id, **kwargs)
        except SandboxError as exc:
            raise web.HTTPError(status_of(exc), printable(exc)) from None

    def json_body(self, allowed) -> dict:
        """The request's JSON object, every key one of ``allowed`` (a 400 names the one that is not)."""
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPError(400, "the request body is not valid JSON") from None
        except RecursionError:
            raise web.HTTPError(400, "the request body is nested too deeply") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the request body must be a JSON object")
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            raise web.HTTPError(400, f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
        return body

    def flag(self, name: str) -> bool:
        value = self.get_query_argument(name, "0").strip().lower()
        if value not in ("0", "1", "true", "false", "yes", "no", ""):
            raise web.HTTPError(400, f"{name} must be 1 or 0, not {value!r}")
        return value in ("1", "true", "yes")

    async def records(self, records) -> list[dict]:
        """Sandbox records, with what the sidebar needs beyond the CLI's: why one stopped
        (``stop_reason``), the kernel whose default sandbox it is (``kernel_id``), and its
        notebook as a path under this server's root (``notebook_path``, as Lab names files):
        the kernel's notebook as this server's sessions know it now (a renamed notebook
        keeps its sandbox), else the path the notebook had when it chose the sandbox."""
        sessions = {}
        if any(record.kernel_id for record in records):
            try:
                listed = await self.serverapp.session_manager.list_sessions()
                sessions = {s["kernel"]["id"]: s["path"] for s in listed if s.get("kernel") and s.get("path")}
            except Exception:  # no sessions here (or none readable): the stored path still serves
                sessions = {}
        root = os.path.join(os.path.normpath(self.serverapp.root_dir), "")
        replies = []
        for record in records:
            data = record.to_dict()
            if record.stop_reason:
                data["stop_reason"] = record.stop_reason
            if record.kernel_id:
                data["kernel_id"] = record.kernel_id
            if record.kernel_id in sessions:
                data["notebook_path"] = sessions[record.kernel_id]
            elif record.notebook:
                notebook = os.path.normpath(record.notebook)
                if notebook.startswith(root):
                    data["notebook_path"] = notebook[len(root) :].replace(os.sep, "/")
            replies.append(data)
        return replies

    async def record(self, record) -> dict:
        return (await self.records([record]))[0]

    def reply(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


class WhoAmIHandler(NexusHandler):
    """``GET whoami``: the user this request acts as (the owner of what it creates)."""

    @web.authenticated
    @authorized
    async def get(self):
        caller = self.caller
        self.reply({"user_id": caller.user_id, "is_admin": caller.is_admin})


class FleetHandler(NexusHandler):
    """``GET fleet``: this server's host and the servers sharing its database (none with SQLite)."""

    @web.authenticated
    @authorized
    async def get(self):
        servers = await self.app.off_loop(self.app.service.store.servers)
        now = time.time()
        self.reply(
            {
                "host": await self.app.off_loop(lambda: self.app.service.fleet.host_id),
                "shared": self.app.service.store.shared,
                "servers": [
                    {
                        "host": server["host"],
                        "url": server["url"],
                        "up_seconds": round(now - server["started_at"], 1),
                        "heard_seconds_ago": round(now - server["heartbeat_at"], 1),
                        "host_passes": server["host_passes"],
                        "fleet_passes": server["fleet_passes"],
                    }
                    for server in servers
                ],
            }
        )


class SandboxesHandler(NexusHandler):
    """``GET sandboxes`` (list) and ``POST sandboxes`` (create)."""

    @web.authenticated
    @authorized
    async def get(self):
        context = {
            key: self.get_query_argument(key)
            for key in ("user", "agent_id", "tenant_id", "name", "notebook", "kernel_id")
            if self.get_query_argument(key, None)
        }
        if self.flag("all_users"):
            context["all_users"] = True
        records = await self.call(
            self.app.service.list_sandboxes,
            context,
            verify_status=self.flag("verify"),
            include_stopped=self.flag("all"),
        )
        self.reply({"sandboxes": await self.records(records)})

    @web.authenticated
    @authorized
    async def post(self):
        body = self.json_body(CREATE_FIELDS)
        if "name" not in body:
            raise web.HTTPError(400, "a sandbox name is required (the body's 'name')")
        options = {CREATE_FIELDS[key]: value for key, value in body.items() if key != "name"}
        if "allow_internet_access" in options and not isinstance(options["allow_internet_access"], bool):
            raise web.HTTPError(400, "allow_internet must be true or false")
        record = await self.call(self.app.service.create, body["name"], **options)
        self.set_header("Location", self.app.api_url("sandboxes", record.sandbox_id))
        self.reply(await self.record(record), status=201)


class SandboxHandler(NexusHandler):
    """``GET sandboxes/{id}``: its record."""

    @web.authenticated
    @authorized
    async def get(self, sandbox_id):
        self.reply(await self.record(await self.call(self.app.service.status, sandbox_id)))


class ActionHandler(NexusHandler):
    """``POST sandboxes/{id}/pause|resume|stop``: the record after the change."""

    @web.authenticated
    @authorized
    async def post(self, sandbox_id, action):
        self.json_body(())  # no body expected: a stray one is a mistake worth saying
        operation = {"pause": self.app.service.pause, "resume": self.app.service.resume}.get(
            action, self.app.service.stop
        )
        self.reply(await self.record(await self.call(operation, sandbox_id)))


class AttachHandler(NexusHandler):
    """``POST sandboxes/{id}/attach`` ``{kernel_id, notebook}``: make it a notebook kernel's default
    sandbox (what the magics do when a notebook makes or chooses one)."""

    @web.authenticated
    @authorized
    async def post(self, sandbox_id):
        body = self.json_body(("kernel_id", "notebook"))
        if not isinstance(body.get("kernel_id"), str):
            raise web.HTTPError(400, "kernel_id is required (the body's 'kernel_id')")
        record = await self.call(self.app.service.attach, sandbox_id, body["kernel_id"], body.get("notebook"))
        self.reply(await self.record(record))


class MetricsHandler(NexusHandler):
    """``GET sandboxes/{id}/metrics``: CPU seconds, memory now and peak, processes, disk."""

    @web.authenticated
    @authorized
    async def get(self, sandbox_id):
        self.reply((await self.call(self.app.service.metrics, sandbox_id)).to_dict())


class RunHandler(NexusHandler):
    """``POST sandboxes/{id}/run``: newline-delimited JSON events, as the code produces them."""

    @web.authenticated
    @authorized
    async def post(self, sandbox_id):
        body = self.json_body(RUN_FIELDS)
        if "code" not in body:
            raise web.HTTPError(400, "no code to run (the body's 'code')")
        if not isinstance(body.get("fresh", False), bool):
            raise web.HTTPError(400, "fresh must be true or false")
        if not isinstance(body.get("filename", ""), str) or "\0" in body.get("filename", ""):
            raise web.HTTPError(400, "filename must be text")
        count = body.get("execution_count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise web.HTTPError(400, "execution_count must be a whole number")
        loop = asyncio.get_running_loop()
        # Bounded: a client that does not read slows its own run (the box waits to write)
        # instead of piling the run's output up in the server's memory.
        events: asyncio.Queue = asyncio.Queue(EVENTS_BUFFERED)
        self._cancel = Cancel()

        def emit(event: dict) -> None:  # called on the service's thread
            _wait_on_loop(events.put(event), loop, lambda: self._cancel.cancelled)

        def run():
            try:
                result = self.app.service.run(
                    self.caller,
                    sandbox_id,
                    body.get("language", "python"),
                    body["code"],
                    body.get("timeout"),
                    fresh=body.get("fresh", False),
                    env=body.get("env"),
                    filename=body.get("filename"),
                    execution_count=body.get("execution_count"),
                    on_stdout=lambda text: emit({"type": "stdout", "text": text}),
                    on_stderr=lambda text: emit({"type": "stderr", "text": text}),
                    on_result=lambda result: emit({"type": "result", **result}),
                    cancel=self._cancel,
                    on_start=lambda: emit({"type": "start", "sandbox_id": sandbox_id}),
                )
                return result.to_dict(), None
            except SandboxTimeout as exc:
                return exc.result, printable(exc)

        self.app.runs_in_flight += 1
        self.app.mark_active()
        job = asyncio.ensure_future(self.app.streaming(run, for_user=self.caller.user_id))
        try:
            await self._stream(job, events)
        finally:
            self.app.runs_in_flight -= 1
            self.app.mark_active()

    async def _stream(self, job: asyncio.Future, events: asyncio.Queue) -> None:
        started = False
        while True:
            getter = asyncio.ensure_future(events.get())
            await asyncio.wait({getter, job}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                if events.empty():
                    break  # the run is over and every event it sent is written
                continue
            batch = [getter.result()]
            while not events.empty():  # what came meanwhile goes out in the same write
                batch.append(events.get_nowait())
            if not started and batch[0]["type"] == "start":
                started = True
                self.set_header("Content-Type", "application/x-ndjson")
                self.set_header("X-Accel-Buffering", "no")  # a proxy must pass events on as they come
            if not await self._send(batch):
                return
        try:
            result, timeout_message = job.result()
        except SandboxError as exc:
            if not started:
                raise web.HTTPError(status_of(exc), printable(exc)) from None
            # The stream began with 200: a failure of the run itself is its last event.
            await self._send([{"type": "failed", "status": status_of(exc), "message": printable(exc)}], last=True)
            return
        end = {"type": "end", "result": result}
        if timeout_message:
            end["timed_out"] = True
            end["message"] = timeout_message
        error = [{"type": "error", **result["error"]}] if result.get("error") else []
        await self._send([*error, end], last=True)

    async def _send(self, events: list[dict], last: bool = False) -> bool:
        """Write event lines now (``last``: and end the answer); False if the client has gone
        (its run is cancelled)."""
        self.app.mark_active()
        try:
            self.write("".join(json.dumps(event) + "\n" for event in events))
            await (self.finish() if last else self.flush())
            return True
        except StreamClosedError:
            self._cancel.cancel()
            return False

    def on_connection_close(self) -> None:
        cancel = getattr(self, "_cancel", None)
        if cancel is not None:
            cancel.cancel()  # the box interrupts the code; a Python cell keeps its state


class FileListHandler(NexusHandler):
    """``GET sandboxes/{id}/files?path=``: a directory's entries."""

    @web.authenticated
    @authorized
    async def get(self, sandbox_id):
        path = self.get_query_argument("path", ".")
        entries = await self.call(self.app.service.list_files, sandbox_id, path)
        self.reply([entry.to_dict() for entry in entries])


@web.stream_request_body
class FileHandler(NexusHandler):
    """``GET|PUT sandboxes/{id}/files/{path}``: a file's bytes, streamed both ways."""

    async def prepare(self):
        await super().prepare()
        self._upload: _UploadPipe | None = None
        self._gone = False
        if self.request.method != "PUT":
            return
        # The body streams in after this: who may send it is settled first.
        if not self.current_user:
            raise web.HTTPError(403)
        if not self.authorizer.is_authorized(self, self.current_user, "write", self.auth_resource):
            raise web.HTTPError(403)
        limit = self.app.service.max_file_bytes()
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise web.HTTPError(413, f"the file is over the {limit >> 20} MiB limit of a transfer (max_file_mb)")
        self.request.connection.set_max_body_size(limit)
        sandbox_id, path = self.path_kwargs["sandbox_id"], self.path_kwargs["path"]
        self._upload = _UploadPipe(asyncio.get_running_loop(), self.app.transfer_idle_timeout)
        caller = self.caller
        self._upload.job = asyncio.ensure_future(
            self.app.streaming(
                self.app.service.write_file, caller, sandbox_id, path, self._upload, for_user=caller.user_id
            )
        )

    async def data_received(self, chunk: bytes) -> None:
        if self._upload is not None:
            await self._upload.feed(chunk)

    @web.authenticated
    @authorized
    async def put(self, sandbox_id, path):
        await self._upload.feed(b"")
        try:
            done = await self._upload.job
        except SandboxError as exc:
            raise web.HTTPError(status_of(exc), printable(exc)) from None
        self.reply(done, status=201)

    def on_connection_close(self) -> None:
        self._gone = True
        if getattr(self, "_upload", None) is not None:
            self._upload.abort()

    @web.authenticated
    @authorized
    async def get(self, sandbox_id, path):
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue = asyncio.Queue(UPLOAD_QUEUE_CHUNKS)

        def read() -> None:  # on the service's thread: each chunk waits for room (backpressure)
            for chunk in self.app.service.read_file_chunks(self.caller, sandbox_id, path):
                if not _wait_on_loop(chunks.put(chunk), loop, lambda: self._gone):
                    return  # the client went: leaving the loop ends the transfer from the box

        job = asyncio.ensure_future(self.app.streaming(read, for_user=self.caller.user_id))
        started = False
        while True:
            getter = asyncio.ensure_future(chunks.get())
            await asyncio.wait({getter, job}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                if chunks.empty():
                    break
                continue
            if not started:
                started = True
                name = path.rstrip("/").rsplit("/", 1)[-1] or "download"
                self.set_header("Content-Type", "application/octet-stream")
                self.set_header("Content-Disposition", f"attachment; filename*=UTF-8''{quote(name)}")
            try:
                self.write(getter.result())
                await self.flush()
            except StreamClosedError:
                self._gone = True
                return
        try:
            job.result()
        except SandboxError as exc:
            if not started:
                raise web.HTTPError(status_of(exc), printable(exc)) from None
            # Headers and some bytes are out: cutting the connection is how HTTP says "incomplete".
            self.request.connection.close()
            return
        if not started:
            self.set_header("Content-Type", "application/octet-stream")  # an empty file
        self.finish()


class _UploadPipe:
    """A request body as a file object for the service's thread: ``read`` waits for the
    next chunk from the socket; ``feed`` waits for room, so a slow box slows the client."""

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout: float):
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.queue: asyncio.Queue = asyncio.Queue(UPLOAD_QUEUE_CHUNKS)
        self.job: asyncio.Future | None = None
        self.buffer = b""
        self.ended = False
        self.aborted = False
        self.fed_at = time.monotonic()

    async def feed(self, chunk: bytes) -> None:
        self.fed_at = time.monotonic()
        if self.job is not None and self.job.done():
            return  # the write already failed (say, no such sandbox): the rest is dropped
        put = asyncio.ensure_future(self.queue.put(chunk))
        await asyncio.wait({put, self.job}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()

    def abort(self) -> None:
        self.aborted = True
        if not self.queue.full():
            self.queue.put_nowait(None)

    def read(self, size: int = -1) -> bytes:  # on the service's thread
        while not self.ended and (size < 0 or len(self.buffer) < size):
            chunk = self._next()
            if chunk is None and not self.aborted:
                raise InvalidArgument(f"the upload stalled: nothing came for {self.idle_timeout:g} s")
            if chunk is None:
                raise InvalidArgument("the upload was cut off before its end")
            if chunk == b"":
                self.ended = True
            self.buffer += chunk
        taken = self.buffer if size < 0 else self.buffer[:size]
        self.buffer = self.buffer[len(taken) :]
        return taken

    def _next(self) -> bytes | None:
        got: list = []

        async def get() -> None:
            got.append(await self.queue.get())

        def given_up() -> bool:
            stalled = time.monotonic() - self.fed_at > self.idle_timeout
            return self.queue.empty() and (self.aborted or stalled)

        if not _wait_on_loop(get(), self.loop, given_up):
            return None
        return got[0]


def _wait_on_loop(coroutine, loop: asyncio.AbstractEventLoop, given_up: Callable[[], bool]) -> bool:
    """Run ``coroutine`` on the event loop from a worker thread and wait for it, checking
    ``given_up`` each second; False (the coroutine cancelled) once it says so."""
    future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    while True:
        try:
            future.result(timeout=1)
            return True
        except FutureTimeout:
            if given_up():
                future.cancel()
                return False


def route_table(prefix: str) -> list[tuple[str, type, dict] | tuple[str, type]]:
    """The routes, relative to the server's base_url."""
    sandbox = rf"{prefix}/sandboxes/{SANDBOX_ID}"
    return [
        (rf"{prefix}/whoami", WhoAmIHandler),
        (rf"{prefix}/fleet", FleetHandler),
        (rf"{prefix}/sandboxes/?", SandboxesHandler),
        (rf"{sandbox}/?", SandboxHandler),
        (rf"{sandbox}/(?P<action>pause|resume|stop)", ActionHandler),
        (rf"{sandbox}/run", RunHandler),
        (rf"{sandbox}/attach", AttachHandler),
        (rf"{sandbox}/metrics", MetricsHandler),
        (rf"{sandbox}/files/?", FileListHandler),
        (rf"{sandbox}/files/(?P<path>.+)", FileHandler),
    ]
