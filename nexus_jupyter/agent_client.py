"""Host side of the agent protocol: talk to the agent inside a box over its Unix socket.

The box's code can write to the directory that holds the agent's socket, so
nothing found there is trusted:

- the socket is opened without following symlinks (an ``O_PATH`` descriptor of
  the file itself, then ``connect`` through ``/proc/self/fd``), must be a socket
  owned by the box's user, and the peer's credentials must be the box's user;
- every request carries an HMAC of a fresh nonce under the box's own key (which
  the box's code cannot read: it is handed to the agent in a file the agent
  deletes, and the agent is not dumpable), and the agent's first answer proves
  it holds the same key before anything else is sent.  A socket swapped for
  another box's agent refuses the request; one swapped for anything else fails
  the proof;
- every call has an overall deadline (a run's timeout plus a grace, a fixed
  bound for the rest), so a wedged or hostile peer can delay a caller but never
  hang it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import hmac
import json
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .providers.base import Cancel

from .errors import AgentImpostor, AgentUnreachable, AgentUnresponsive, InvalidArgument, PathNotFound, SandboxError

FILE_CHUNK = 256 * 1024
OutputCallback = Callable[[str], None]
ResultCallback = Callable[[dict], None]
# How long a call may take, beyond what the caller asked for.
RUN_GRACE_SECONDS = 15.0  # after a run's timeout: the agent's own kill, a kernel's interrupt grace
KERNEL_START_SECONDS = 180.0  # added once, when the agent says the Python kernel is starting
CALL_SECONDS = 10.0  # ping, touch, list, remove
MAX_EVENT_BYTES = 16 << 20  # one event line; a 256 KiB file chunk is ~350 KiB of JSON
# What one answer may weigh, whatever sends it: the output caps (4 bytes a character,
# JSON escapes included) plus the rich outputs of a run, or a listing.
MAX_RESULTS_BYTES = 64 << 20
MAX_LISTING_BYTES = 64 << 20
PEERCRED = struct.Struct("3i")


def file_transfer_seconds() -> float:
    """The bound on one whole file transfer: ``NEXUS_FILE_TIMEOUT`` seconds (default 300)."""
    raw = os.environ.get("NEXUS_FILE_TIMEOUT", "").strip()
    if not raw:
        return 300.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise InvalidArgument(f"NEXUS_FILE_TIMEOUT must be a number of seconds above 0, got {raw!r}")
    return seconds


def new_agent_key() -> str:
    """A box's own secret: the host proves requests with it, the agent its answers."""
    return os.urandom(32).hex()  # what secrets.token_hex does, without its imports


def _mac(key: str, purpose: str, nonce: str) -> str:
    return hmac.new(key.encode(), f"nexus-{purpose}:{nonce}".encode(), hashlib.sha256).hexdigest()


class _Channel:
    """One connection with an overall deadline and a ceiling on what it may receive; reads whole lines."""

    def __init__(self, sock: socket.socket, deadline: float, describe: Callable[[], str], ceiling: int):
        self.sock = sock
        self.deadline = deadline
        self.describe = describe
        self.ceiling = ceiling
        self.received = 0
        self.buffer = b""

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise AgentUnresponsive(self.describe())
        return left

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self._remaining())
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise AgentUnresponsive(self.describe()) from None

    def readline(self) -> bytes:
        """The next line (without its newline), or b"" when the peer closed."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line, self.buffer = self.buffer[:end], self.buffer[end + 1 :]
                return line
            if len(self.buffer) > MAX_EVENT_BYTES:
                raise AgentImpostor("the sandbox's agent socket sent an over-long line")
            self.sock.settimeout(self._remaining())
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                raise AgentUnresponsive(self.describe()) from None
            if not chunk:
                return b""
            self.received += len(chunk)
            if self.received > self.ceiling:
                raise AgentImpostor(
                    f"the sandbox's agent sent more than {self.ceiling} bytes for one request: refusing"
                )
            self.buffer += chunk


class AgentClient:
    """Sends requests to one box's agent.  Holds no state between requests."""

    def __init__(
        self,
        socket_path: Path,
        key: str | None,
        *,
        box_uid: int | None = None,
        agent_pid: int | None = None,
        is_alive: Callable[[], bool] | None = None,
        explain: Callable[[], str] | None = None,
        connect: Callable[[float], socket.socket] | None = None,
    ):
        self.socket_path = Path(socket_path)
        self.key = key
        # The host uid the box's processes run as, where the host can know it:
        # the socket file and the peer must belong to it.
        self.box_uid = box_uid
        # The agent's host pid, where known: the peer must be the agent itself, not
        # code of the box listening in its place (and relaying to it).
        self.agent_pid = agent_pid
        self.is_alive = is_alive
        self.explain = explain
        # Another way to reach the agent (a relay through `docker exec`) instead of its socket.
        self.connect = connect

    def _unreachable(self, message: str) -> AgentUnreachable:
        detail = self.explain() if self.explain is not None else ""
        return AgentUnreachable(f"{message} ({detail})" if detail else message)

    # ---- connection
    def _open_socket_file(self, dir_fd: int) -> int:
        """An O_PATH descriptor of the socket file itself: a symlink is not followed, and
        what the descriptor names cannot be swapped before we connect through it."""
        fd = os.open(self.socket_path.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        info = os.fstat(fd)
        if not stat.S_ISSOCK(info.st_mode) or (self.box_uid is not None and info.st_uid != self.box_uid):
            os.close(fd)
            what = "a symlink" if stat.S_ISLNK(info.st_mode) else "not the agent's socket"
            raise AgentImpostor(f"the sandbox's agent socket was replaced ({what}): refusing to use it")
        return fd

    def _connect(self, wait: float) -> socket.socket:
        """Connect, waiting up to ``wait`` seconds for a box that is still starting."""
        started = time.monotonic()
        deadline = started + wait
        delay = 0.001
        try:
            # The directory is the host's own (the box only writes inside it).
            dir_fd = os.open(self.socket_path.parent, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise AgentUnreachable("the sandbox's state directory is gone") from exc
        except PermissionError as exc:
            raise AgentUnreachable(f"cannot open the sandbox's state directory ({exc.strerror})") from exc
        try:
            while True:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    file_fd = self._open_socket_file(dir_fd)
                    try:
                        # A socket path is limited to 108 bytes; this one is short whatever the data dir.
                        sock.settimeout(max(deadline - time.monotonic(), 1.0))
                        sock.connect(f"/proc/self/fd/{file_fd}")
                    finally:
                        os.close(file_fd)
                    self._check_peer(sock)
                    return sock
                except (FileNotFoundError, ConnectionRefusedError) as exc:
                    sock.close()
                    if time.monotonic() > deadline:
                        raise self._unreachable("the sandbox's agent did not answer") from exc
                    if self.is_alive is not None and not self.is_alive():
                        raise self._unreachable("the sandbox is no longer running") from exc
                    time.sleep(delay)
                    # A box starting takes ~0.1 s: poll finely at first, then back off.
                    delay = min(delay * 1.5, 0.002 if time.monotonic() - started < 0.5 else 0.05)
                except TimeoutError:
                    sock.close()
                    raise AgentUnresponsive("the sandbox's agent did not accept the connection") from None
                except BaseException:
                    sock.close()
                    raise
        finally:
            os.close(dir_fd)

    def _check_peer(self, sock: socket.socket) -> None:
        pid, uid, _gid = PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size))
        if self.box_uid is not None and uid != self.box_uid:
            raise AgentImpostor(f"the sandbox's agent socket is held by host uid {uid}, not the sandbox's: refusing")
        # pid 0: the peer is in no pid namespace of ours to name it by; its uid and key still count.
        if self.agent_pid and pid and pid != self.agent_pid:
            raise AgentImpostor("the sandbox's agent socket is held by another process of the sandbox: refusing")

    def _events(
        self,
        request: dict,
        seconds: float,
        wait: float = 15.0,
        body: Iterator[dict] | None = None,
        ceiling: int = 1 << 20,
        cancel: Cancel | None = None,
    ):
        """Send one request and yield its events, all within ``seconds`` (plus ``wait`` to connect)
        and ``ceiling`` bytes."""
        if not self.key:
            raise AgentImpostor("this sandbox was made by an older nexus-jupyter: stop it and create a new one")
        sock = self.connect(wait) if self.connect is not None else self._connect(wait)
        if cancel is not None:
            # Shutting the socket down wakes the read below: the agent sees the host go.
            cancel.on_cancel(lambda: sock.shutdown(socket.SHUT_RDWR))
        op = request["op"]
        channel = _Channel(
            sock,
            time.monotonic() + seconds,
            lambda: f"the sandbox's agent did not answer a {op} request within {seconds:g} s (unresponsive)",
            ceiling,
        )
        nonce = os.urandom(16).hex()
        extended = False
        try:
            channel.send(
                json.dumps({**request, "nonce": nonce, "auth": _mac(self.key, "host", nonce)}).encode() + b"\n"
            )
            hello = self._parse(channel.readline())
            if hello.get("ev") == "error":
                raise AgentImpostor(f"the sandbox's agent socket refused this sandbox's key: {hello.get('message')}")
            proof = hello.get("proof")
            if hello.get("ev") != "hello" or not isinstance(proof, str):
                raise AgentImpostor("what answered on the sandbox's socket is not its agent: refusing")
            if not hmac.compare_digest(proof, _mac(self.key, "agent", nonce)):
                raise AgentImpostor("what answered on the sandbox's socket failed the agent's proof: refusing")
            for message in body or ():  # streamed: a large upload is never held whole
                channel.send(json.dumps(message).encode() + b"\n")
            while True:
                event = self._parse(channel.readline())
                kind = event.get("ev")
                if kind == "error":
                    missing = event.get("errno") == errno.ENOENT
                    raise (PathNotFound if missing else SandboxError)(str(event.get("message", "agent error")))
                _check_shape(op, event)
                if kind == "starting" and not extended:
                    # The first Python cell also waits for the kernel to start.
                    channel.deadline += KERNEL_START_SECONDS
                    extended = True
                    continue
                yield event
                if kind == "end":
                    return
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise AgentUnreachable("the sandbox's agent closed the connection") from exc
        finally:
            sock.close()

    def _parse(self, line: bytes) -> dict:
        if not line:
            raise AgentUnreachable("the sandbox's agent closed the connection")
        try:
            event = json.loads(line)
        except ValueError:
            raise self._unreachable(f"the sandbox's agent answered garbage: {line[:80]!r}") from None
        if not isinstance(event, dict):
            raise self._unreachable(f"the sandbox's agent answered garbage: {line[:80]!r}")
        return event

    def _single(self, request: dict, seconds: float = CALL_SECONDS, **kwargs) -> dict:
        """The final event of a request whose other events carry nothing."""
        events = list(self._events(request, seconds, **kwargs))
        return events[-1] if events else {}

    # ---- operations
    def ping(self, wait: float = 15.0) -> dict:
        return self._single({"op": "ping"}, wait=wait)

    def touch(self, idle_timeout: float | None = None, env: dict | None = None) -> None:
        """Note activity; optionally give the box a new idle timeout and run environment."""
        request: dict = {"op": "touch"}
        if idle_timeout is not None:
            request["idle_timeout"] = idle_timeout
        if env is not None:
            request["env"] = env
        self._single(request)

    def run(
        self,
        language: str,
        code: str,
        timeout: float,
        *,
        env: dict | None = None,
        max_output_chars: int,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_result: ResultCallback | None = None,
        cancel: Cancel | None = None,
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
        # The agent enforces the deadline itself; ours guards against one that does not.
        return self._collect(request, timeout + RUN_GRACE_SECONDS, on_stdout, on_stderr, on_result, cancel)

    def execute(
        self,
        code: str,
        timeout: float,
        *,
        max_output_chars: int,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_result: ResultCallback | None = None,
        filename: str | None = None,
        execution_count: int | None = None,
        cancel: Cancel | None = None,
    ) -> dict:
        """Run a cell in the box's Python runtime (state persists between cells).

        Returns stdout, stderr, exit_code, execution_time, timed_out, restarted,
        ``results`` (display outputs and the cell's value as MIME bundles) and
        ``error`` (name, value, traceback; its text is also in stderr).
        ``filename``: the code is that script's (``__file__``, tracebacks, no
        value shown); ``execution_count``: the cell's number (a notebook's own).
        """
        request = {"op": "execute", "code": code, "timeout": timeout, "max_output_chars": max_output_chars}
        if filename:
            request["filename"] = filename
        if execution_count is not None:
            request["execution_count"] = execution_count
        return self._collect(request, timeout + RUN_GRACE_SECONDS, on_stdout, on_stderr, on_result, cancel)

    def _collect(self, request: dict, seconds: float, on_stdout, on_stderr, on_result, cancel=None) -> dict:
        """Gather a run's events; what is kept and passed on is capped here too, whatever
        the other end sends: each stream at the run's character limit, rich outputs at
        MAX_RESULTS_BYTES."""
        limit = int(request["max_output_chars"])
        streams = {
            "stdout": CappedStream("stdout", limit, on_stdout),
            "stderr": CappedStream("stderr", limit, on_stderr),
        }
        ceiling = 8 * limit + MAX_RESULTS_BYTES + (1 << 20)
        results: list[dict] = []
        results_bytes = 0
        error = None
        end: dict = {}
        for event in self._events(request, seconds, ceiling=ceiling, cancel=cancel):
            kind = event["ev"]
            if kind in streams:
                streams[kind].add(event["data"])
            elif kind in ("display", "result"):
                result = {
                    "data": event["data"],
                    "metadata": event.get("metadata", {}),
                    "is_main_result": kind == "result",
                }
                results_bytes += len(json.dumps(result))
                if results_bytes > MAX_RESULTS_BYTES:
                    streams["stderr"].add(f"\n[nexus: rich outputs over {MAX_RESULTS_BYTES} bytes were dropped]\n")
                    continue
                results.append(result)
                if on_result is not None:
                    on_result(result)
            elif kind == "exception":
                error = {"name": event["ename"], "value": event["evalue"], "traceback": event["traceback"]}
                streams["stderr"].add("\n".join(event["traceback"]) + "\n")
            elif kind == "end":
                end = event
        for stream in streams.values():
            stream.close()
        end["stdout"] = streams["stdout"].text()
        end["stderr"] = streams["stderr"].text()
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

        return self._single({"op": "files.write", "path": path}, file_transfer_seconds(), body=chunks())

    def read_file_chunks(self, path: str, max_bytes: int) -> Iterator[bytes]:
        """Yield the file's bytes in chunks, never holding it whole; a file over ``max_bytes`` is refused."""
        received = 0
        request = {"op": "files.read", "path": path, "max_bytes": max_bytes}
        # base64 is 4/3 of the bytes, plus each chunk's JSON
        for event in self._events(request, file_transfer_seconds(), ceiling=max_bytes * 3 // 2 + (1 << 20)):
            if event.get("ev") == "chunk":
                try:
                    chunk = base64.b64decode(event["chunk"], validate=True)
                except binascii.Error:
                    raise AgentImpostor("the sandbox's agent sent a file chunk that is not base64") from None
                received += len(chunk)
                if received > max_bytes:
                    raise SandboxError(f"the file is over the {max_bytes}-byte transfer limit")
                yield chunk

    def list_files(self, path: str) -> dict:
        return self._single({"op": "files.list", "path": path}, ceiling=MAX_LISTING_BYTES)

    def remove_file(self, path: str) -> dict:
        return self._single({"op": "files.remove", "path": path})


def _is_text_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _has_exit(event: dict) -> bool:
    return isinstance(event.get("exit_code"), int) and isinstance(event.get("execution_time"), (int, float))


# What each event must carry for the code that reads it; the end of each operation too.
EVENT_SHAPES: dict[str, Callable[[dict], bool]] = {
    "stdout": lambda e: isinstance(e.get("data"), str),
    "stderr": lambda e: isinstance(e.get("data"), str),
    "display": lambda e: isinstance(e.get("data"), dict) and isinstance(e.get("metadata", {}), dict),
    "result": lambda e: isinstance(e.get("data"), dict) and isinstance(e.get("metadata", {}), dict),
    "exception": lambda e: (
        isinstance(e.get("ename"), str) and isinstance(e.get("evalue"), str) and _is_text_list(e.get("traceback"))
    ),
    "chunk": lambda e: isinstance(e.get("chunk"), str),
}
END_SHAPES: dict[str, Callable[[dict], bool]] = {
    "run": _has_exit,
    "execute": _has_exit,
    "files.write": lambda e: isinstance(e.get("path"), str) and isinstance(e.get("size"), int),
    "files.list": lambda e: isinstance(e.get("entries"), list) and all(isinstance(x, dict) for x in e["entries"]),
}


def _check_shape(op: str, event: dict) -> None:
    """An event without its fields, a traceback that is not a list of lines: what answered
    is not speaking the protocol, and that is one clear error, not a KeyError later."""
    kind = event.get("ev")
    shape = END_SHAPES.get(op) if kind == "end" else EVENT_SHAPES.get(kind)
    if not isinstance(kind, str) or (shape is not None and not shape(event)):
        raise AgentImpostor(f"the sandbox's agent sent a malformed {op} event ({str(kind)[:20]!r})")


class CappedStream:
    """One output stream as the host keeps it: at most ``limit`` characters (the agent caps
    its own output; this holds whatever answers), with a marker where the rest was dropped."""

    def __init__(self, name: str, limit: int, callback: OutputCallback | None):
        self.name = name
        self.room = limit + 4096  # the agent's own truncation marker, a traceback's tail
        self.parts: list[str] = []
        self.dropped = 0
        self.callback = callback

    def add(self, text: str) -> None:
        if self.room <= 0:
            self.dropped += len(text)
            return
        if len(text) > self.room:
            self.dropped += len(text) - self.room
            text = text[: self.room]
        self.room -= len(text)
        self.parts.append(text)
        if self.callback is not None:
            self.callback(text)

    def close(self) -> None:
        if self.dropped:
            marker = f"\n[nexus: {self.name}: {self.dropped} more characters than the limit were dropped]\n"
            self.parts.append(marker)
            if self.callback is not None:
                self.callback(marker)

    def text(self) -> str:
        return "".join(self.parts)
