"""The double's HTTP face: E2B's control plane, the sandbox proxy, envd's HTTP API and
the code interpreter's ``/execute``, on one port (PROTOCOL.md §1: the SDK is pointed at
it with ``E2B_API_URL`` and ``E2B_SANDBOX_URL``; sandbox requests name their sandbox in
``E2b-Sandbox-Id``)."""

from __future__ import annotations

import json
import queue
import re
import select
import socket
import threading
import time
from urllib.parse import parse_qs, unquote

from werkzeug.formparser import parse_form_data
from werkzeug.wrappers import Request, Response

from nexus_jupyter.errors import PathNotFound, SandboxError
from nexus_jupyter.providers.base import Cancel

from .cloud import Cloud, CloudError, CloudSandbox, Team
from .envd import FOREVER_SECONDS, MAX_OUTPUT_CHARS, envd_apps

KEEPALIVE_SECONDS = 5.0  # the code interpreter's KEEPALIVE_INTERVAL
# The code interpreter's result keys for the MIME types it knows; others go under "extra".
RESULT_KEYS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
}
CONTROL_ROUTES = [
    ("POST", re.compile(r"/v2/sandboxes"), "create"),
    ("GET", re.compile(r"/v2/sandboxes"), "list"),
    ("GET", re.compile(r"/sandboxes/([^/]+)"), "info"),
    ("DELETE", re.compile(r"/sandboxes/([^/]+)"), "kill"),
    ("POST", re.compile(r"/sandboxes/([^/]+)/timeout"), "timeout"),
    ("POST", re.compile(r"/sandboxes/([^/]+)/pause"), "pause"),
    ("POST", re.compile(r"/v2/sandboxes/([^/]+)/connect"), "connect"),
    ("GET", re.compile(r"/sandboxes/([^/]+)/metrics"), "metrics"),
    ("POST", re.compile(r"/_double/plan"), "plan"),  # the double's own: a test changes its team's plan
]
# What a proxy in front of E2B answers when E2B itself fails: a page, not E2B's JSON.
GARBLED_PAGE = "<html><body><h1>500 Internal Server Error</h1></body></html>"


def error(status: int, message: str, **extra) -> Response:
    return Response(json.dumps({"code": status, "message": message, **extra}), status, mimetype="application/json")


def as_json(value, status: int = 200) -> Response:
    return Response(json.dumps(value), status, mimetype="application/json")


def client_gone(sock: socket.socket | None) -> bool:
    """The client closed its end (the SDK's timeout fired, or it was killed)."""
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class DoubleApp:
    """The WSGI application."""

    def __init__(self, cloud: Cloud):
        self.cloud = cloud
        self.envd = envd_apps(cloud)

    def __call__(self, environ, start_response):
        sandbox_id = environ.get("HTTP_E2B_SANDBOX_ID")
        if sandbox_id is None:
            return self.control_plane(Request(environ))(environ, start_response)
        found = self.cloud.sandboxes.get(sandbox_id)
        if found is None or found.state != "running":
            # What E2B's edge proxy answers for a sandbox that ended (or sleeps, without auto-resume).
            return error(502, f"The sandbox {sandbox_id} was not found", sandboxId=sandbox_id)(environ, start_response)
        path = environ.get("PATH_INFO", "")
        # /contexts and /health carry no token (PROTOCOL.md, pitfall 8)
        if not path.startswith(("/contexts", "/health")) and environ.get("HTTP_X_ACCESS_TOKEN") != found.access_token:
            return error(401, "unauthorized access, please provide a valid access token")(environ, start_response)
        for prefix, app in self.envd.items():
            if path.startswith(prefix):
                return app(environ, start_response)
        return self.sandbox_http(Request(environ), found)(environ, start_response)

    # ---- control plane
    def control_plane(self, request: Request) -> Response:
        found = [(pattern.fullmatch(request.path), name) for method, pattern, name in CONTROL_ROUTES
                 if method == request.method]  # fmt: skip
        match, name = next(((match, name) for match, name in found if match), (None, ""))
        if match is None:
            return error(404, f"no route {request.method} {request.path}")
        try:
            team = self.cloud.team(request.headers.get("X-API-KEY"))
            if name == "create" and team.garbled:
                return Response(GARBLED_PAGE, 500, mimetype="text/html")
            if name == "create":
                return as_json(self.cloud.create(team, request.get_json(force=True)).as_sandbox(), 201)
            if name == "list":
                return self.list(request, team)
            if name == "plan":
                self.cloud.change_plan(team, bool(request.get_json(force=True)["pause"]))
                return Response(status=204)
            sandbox = self.cloud.sandbox(team, match.group(1))
            return getattr(self, name)(request, sandbox)
        except CloudError as exc:
            return error(exc.status, exc.message)

    def list(self, request: Request, team: Team) -> Response:
        metadata = {}
        if request.args.get("metadata"):
            # The SDK quotes keys and values, then encodes the query: decode twice (PROTOCOL.md §2).
            for key, values in parse_qs(request.args["metadata"], keep_blank_values=True).items():
                metadata[unquote(key)] = unquote(values[-1])
        states = set((request.args.get("state") or "running,paused").split(","))
        found = self.cloud.listed(team, metadata, states)
        start = int(request.args.get("nextToken") or 0)
        limit = int(request.args.get("limit") or 100)
        page = found[start : start + limit]
        response = as_json([sandbox.as_listed() for sandbox in page])
        if start + limit < len(found):
            response.headers["x-next-token"] = str(start + limit)
        return response

    def info(self, request: Request, sandbox: CloudSandbox) -> Response:
        return as_json(sandbox.as_listed())

    def kill(self, request: Request, sandbox: CloudSandbox) -> Response:
        self.cloud.kill(sandbox)
        return Response(status=204)

    def timeout(self, request: Request, sandbox: CloudSandbox) -> Response:
        self.cloud.set_timeout(sandbox, int(request.get_json(force=True)["timeout"]))
        return Response(status=204)

    def pause(self, request: Request, sandbox: CloudSandbox) -> Response:
        if not self.cloud.pause(sandbox):
            return error(409, f"sandbox {sandbox.sandbox_id} is already paused")
        return Response(status=204)

    def connect(self, request: Request, sandbox: CloudSandbox) -> Response:
        body = request.get_json(force=True, silent=True) or {}
        resumed = self.cloud.connect(sandbox, body.get("timeout"))
        return as_json(sandbox.as_sandbox(), 201 if resumed else 200)

    def metrics(self, request: Request, sandbox: CloudSandbox) -> Response:
        if sandbox.state != "running":
            return as_json([])
        return as_json(self.cloud.metrics(sandbox))

    # ---- inside a sandbox
    def sandbox_http(self, request: Request, sandbox: CloudSandbox) -> Response:
        route = (request.method, request.path)
        if route == ("GET", "/health"):
            return Response(status=204)
        if route == ("POST", "/files"):
            return self.write_files(request, sandbox)
        if route == ("GET", "/files"):
            return self.read_file(request, sandbox)
        if route == ("POST", "/execute"):
            return self.execute(request, sandbox)
        return error(404, f"no route {request.method} {request.path} in the double")

    def write_files(self, request: Request, sandbox: CloudSandbox) -> Response:
        if request.mimetype == "application/octet-stream":  # one file, streamed (envd >= 0.5.7)
            if request.headers.get("Content-Encoding", "identity") != "identity":
                return error(400, "the double takes no compressed uploads")
            uploads = [(request.args.get("path", ""), request.stream)]
        else:
            _, _, files = parse_form_data(request.environ)
            uploads = [(request.args.get("path") or part.filename, part.stream) for part in files.getlist("file")]
        written = []
        for path, stream in uploads:
            try:
                done = self.cloud.provider.write_file(sandbox.sandbox_id, sandbox.box_state, path, stream)
            except SandboxError as exc:
                return error(400, str(exc))
            name = done["path"].rsplit("/", 1)[-1]
            written.append({"name": name, "type": "file", "path": done["path"]})
        if not written:
            return error(400, "no file in the request")
        return as_json(written)

    def read_file(self, request: Request, sandbox: CloudSandbox) -> Response:
        path = request.args.get("path", "")
        chunks = self.cloud.provider.read_file_chunks(sandbox.sandbox_id, sandbox.box_state, path, 1 << 40)
        try:
            first = next(chunks, b"")
        except PathNotFound:
            return error(404, f"path '{path}' does not exist")
        except SandboxError as exc:
            return error(400, str(exc))

        def body():
            yield first
            yield from chunks

        return Response(body(), 200, mimetype="application/octet-stream")

    def execute(self, request: Request, sandbox: CloudSandbox) -> Response:
        body = request.get_json(force=True)
        if body.get("language") not in (None, "python") or body.get("context_id") or body.get("env_vars"):
            return error(400, "the double runs Python in the default context only")
        code = body["code"]
        events: queue.Queue = queue.Queue()
        cancel = Cancel()
        agent = self.cloud.provider.agent(sandbox.sandbox_id, sandbox.box_state)
        # Our box's runtime stands in for the template's Jupyter kernel: its raw events
        # map one to one onto the code interpreter's output lines.
        request_ = {"op": "execute", "code": code, "timeout": FOREVER_SECONDS, "max_output_chars": MAX_OUTPUT_CHARS}

        def work():
            try:
                for event in agent._events(request_, FOREVER_SECONDS, ceiling=1 << 30, cancel=cancel):
                    events.put(event)
            except SandboxError as exc:
                events.put({"ev": "failed", "message": str(exc)})
            events.put(None)

        threading.Thread(target=work, name="e2b-double-execute", daemon=True).start()
        sock = request.environ.get("werkzeug.socket")

        def lines():
            quiet_since = time.monotonic()
            try:
                while True:
                    try:
                        event = events.get(timeout=0.1)
                    except queue.Empty:
                        if client_gone(sock):
                            return
                        if time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                            quiet_since = time.monotonic()
                            yield b'{"type": "keepalive"}\n'  # as the template's server does
                        continue
                    quiet_since = time.monotonic()
                    if event is None:
                        return
                    if event.get("ev") == "failed" and sandbox.sandbox_id not in self.cloud.sandboxes:
                        # The VM is gone: the connection drops, no line says why (werkzeug closes it).
                        raise ConnectionAbortedError(f"the sandbox {sandbox.sandbox_id} was killed")
                    for line in self._output_lines(event, sandbox):
                        yield (json.dumps(line) + "\n").encode()
            finally:
                cancel.cancel()  # a client that went away interrupts the cell; its state stays

        return Response(lines(), 200, mimetype="application/x-ndjson")

    @staticmethod
    def _output_lines(event: dict, sandbox: CloudSandbox) -> list[dict]:
        kind = event.get("ev")
        now_ns = time.time_ns()
        if kind in ("stdout", "stderr"):
            return [{"type": kind, "text": event["data"], "timestamp": now_ns}]
        if kind in ("display", "result"):
            line: dict = {"type": "result", "is_main_result": kind == "result"}
            extra = {}
            for mime, value in event["data"].items():
                if mime in RESULT_KEYS:
                    line[RESULT_KEYS[mime]] = value  # a string, but for application/json's object
                else:
                    extra[mime] = value
            if extra:
                line["extra"] = extra
            return [line]
        if kind == "exception":
            return [
                {
                    "type": "error",
                    "name": event["ename"],
                    "value": event["evalue"],
                    "traceback": "\n".join(event["traceback"]),
                }
            ]
        if kind == "end":
            sandbox.executions += 1
            return [
                {"type": "number_of_executions", "execution_count": sandbox.executions},
                {"type": "end_of_execution"},
            ]
        if kind == "failed":
            return [{"type": "error", "name": "SandboxError", "value": event["message"], "traceback": ""}]
        return []
