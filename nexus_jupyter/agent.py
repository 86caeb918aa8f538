"""The in-box agent: the one long-lived process inside every sandbox.

It is started inside the isolation boundary (bubblewrap, a container) and
listens on a Unix socket in the sandbox's state directory, so any host
process can operate the sandbox by connecting to that socket; no host
process has to stay alive for the sandbox to work.

Protocol: newline-delimited JSON.  A client sends one request line
(``{"op": "run", ...}``), the agent answers with event lines and a final
line whose ``ev`` is ``end`` (or ``error``).  See ``nexus_jupyter.agent_client``.

This file is stdlib-only and must keep working on any Python >= 3.8 that a
box may contain: it is mounted read-only into boxes, not imported there.
"""

import asyncio
import base64
import codecs
import ctypes
import json
import os
import resource
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
READ_CHUNK = 65536
FILE_CHUNK = 256 * 1024
TIMEOUT_EXIT_CODE = 124
# Loaded once at start: dlopen after fork() is not safe.
LIBC = ctypes.CDLL(None, use_errno=True)

# The interpreter for each language and how it is given the code file.
# JavaScript is wrapped in an async function so top-level `await` works
# while `require` stays available (CommonJS); the wrapper opens on the
# code's first line so line numbers in tracebacks stay right.
LANGUAGES = {
    "python": {"suffix": ".py"},
    "javascript": {"suffix": ".js"},
    "bash": {"suffix": ".sh"},
}


class Config:
    """What the box was started with (from argv, never from the network)."""

    def __init__(self, argv):
        self.socket_path = "/run/nexus/agent.sock"
        self.workdir = "/home/user"
        self.code_dir = "/tmp/.nexus"
        self.idle_timeout = 0.0  # seconds; 0 disables self-expiry
        self.interpreters = {"python": sys.executable, "javascript": "node", "bash": "/bin/bash"}
        self.env = {}
        self.limits = {}
        args = iter(argv)
        for flag in args:
            value = next(args)
            if flag == "--socket":
                self.socket_path = value
            elif flag == "--workdir":
                self.workdir = value
            elif flag == "--idle-timeout":
                self.idle_timeout = float(value)
            elif flag == "--config":
                extra = json.loads(value)
                self.interpreters.update(extra.get("interpreters", {}))
                self.env = extra.get("env", {})
                self.limits = extra.get("limits", {})
            else:
                raise SystemExit("agent: unknown flag " + flag)


# --------------------------------------------------------------------------
# The per-run supervisor.  It runs in a forked child of the agent and never
# returns to the event loop.  It is a child subreaper, so every process the
# run starts, even one that double-forks or calls setsid, stays its
# descendant and can be killed when the run ends or times out.
# --------------------------------------------------------------------------


def _children_map():
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z":
            continue  # zombies hold no resources; waitpid reaps the ones that are ours
        children.setdefault(int(fields[1]), []).append(int(name))
    return children


def _descendants(root):
    children = _children_map()
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _reap_all():
    statuses = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return statuses
        if pid == 0:
            return statuses
        statuses[pid] = status


def _kill_tree():
    """SIGKILL every descendant until none is left (a fork bomb included)."""
    me = os.getpid()
    for _ in range(1000):
        pids = _descendants(me)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap_all()
        time.sleep(0.002)
    _reap_all()


def _exit_code(status):
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _apply_limits(limits, timeout):
    def setlimit(which, value):
        if value is None:
            return
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass

    # CPU seconds bound a run even if the wall-clock deadline were missed.
    setlimit(resource.RLIMIT_CPU, int(timeout) + 5)
    setlimit(resource.RLIMIT_CORE, 0)
    setlimit(resource.RLIMIT_FSIZE, limits.get("file_size_bytes"))
    setlimit(resource.RLIMIT_NOFILE, limits.get("open_files", 1024))
    # Where no cgroup bounds the box, these are the only process and memory limits.
    setlimit(resource.RLIMIT_NPROC, limits.get("nproc"))
    setlimit(resource.RLIMIT_AS, limits.get("address_space_bytes"))
    try:
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("1000")  # the OOM killer takes run processes before the agent
    except OSError:
        pass


def supervise(argv, env, cwd, stdout_w, stderr_w, status_w, timeout, limits):
    """Body of the forked supervisor: start the run, wait, kill leftovers, report."""
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, signal.SIGTERM})
        LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        started = time.monotonic()
        child = os.fork()
        if child == 0:
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                os.setsid()
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.dup2(stdout_w, 1)
                os.dup2(stderr_w, 2)
                os.chdir(cwd)
                _apply_limits(limits, timeout)
                os.execvpe(argv[0], argv, env)
            except BaseException as exc:  # noqa: BLE001 - report any exec failure
                os.write(2, ("nexus: cannot start %s: %s\n" % (argv[0], exc)).encode())
            finally:
                os._exit(127)
        os.close(stdout_w)
        os.close(stderr_w)
        outcome = {"exit_code": None, "timed_out": False, "cancelled": False}
        deadline = started + timeout
        while outcome["exit_code"] is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome["timed_out"] = True
                break
            info = signal.sigtimedwait({signal.SIGCHLD, signal.SIGTERM}, remaining)
            if info is not None and info.si_signo == signal.SIGTERM:
                outcome["cancelled"] = True
                break
            statuses = _reap_all()
            if child in statuses:
                outcome["exit_code"] = _exit_code(statuses[child])
        elapsed = time.monotonic() - started
        # Background processes the run left behind die with it: a run's
        # processes never outlive the run.
        _kill_tree()
        if outcome["exit_code"] is None:
            outcome["exit_code"] = TIMEOUT_EXIT_CODE if outcome["timed_out"] else 130
        outcome["execution_time"] = round(elapsed, 4)
        os.write(status_w, json.dumps(outcome).encode())
    finally:
        os._exit(0)


# --------------------------------------------------------------------------
# The asyncio server.
# --------------------------------------------------------------------------


class OutputStream:
    """One of a run's output pipes: decoded as UTF-8, capped, sent as events."""

    def __init__(self, name, limit):
        self.name = name
        self.limit = limit
        self.sent = 0
        self.dropped = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data, final=False):
        text = self.decoder.decode(data, final)
        room = self.limit - self.sent
        if len(text) > room:
            self.dropped += len(text) - max(room, 0)
            text = text[: max(room, 0)]
        self.sent += len(text)
        return text

    def marker(self):
        if not self.dropped:
            return ""
        return "\n[nexus: %s truncated: %d characters over the %d-character limit were dropped]\n" % (
            self.name,
            self.dropped,
            self.limit,
        )


def _read_pipe(fd):
    try:
        return os.read(fd, READ_CHUNK)
    except BlockingIOError:
        return None
    except OSError:
        return b""


class Agent:
    def __init__(self, config):
        self.config = config
        self.active = 0
        self.last_activity = time.monotonic()
        self.run_counter = 0
        os.makedirs(config.code_dir, exist_ok=True)

    # ---- plumbing
    async def send(self, writer, event):
        writer.write((json.dumps(event) + "\n").encode())
        await writer.drain()

    async def handle(self, reader, writer):
        self.active += 1
        self.last_activity = time.monotonic()
        try:
            line = await reader.readline()
            if not line:
                return
            try:
                request = json.loads(line)
                op = request["op"]
                handler = getattr(self, "op_" + op.replace(".", "_"))
            except (ValueError, KeyError, TypeError, AttributeError):
                await self.send(writer, {"ev": "error", "message": "bad request"})
                return
            try:
                await handler(request, reader, writer)
            except (OSError, ValueError) as exc:
                await self.send(writer, {"ev": "error", "message": _os_error_text(exc)})
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            self.last_activity = time.monotonic()
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the peer may already be gone
                pass

    # ---- operations
    async def op_ping(self, request, reader, writer):
        await self.send(writer, {"ev": "end", "pid": os.getpid(), "active": self.active - 1})

    async def op_touch(self, request, reader, writer):
        if "idle_timeout" in request:
            self.config.idle_timeout = float(request["idle_timeout"])
        await self.send(writer, {"ev": "end"})

    async def op_run(self, request, reader, writer):
        language = request.get("language")
        if language not in LANGUAGES:
            await self.send(writer, {"ev": "error", "message": "unsupported language: %r" % language})
            return
        code = request.get("code", "")
        timeout = float(request.get("timeout", 30))
        limit = int(request.get("max_output_chars", 1 << 20))
        self.run_counter += 1
        path = os.path.join(
            self.config.code_dir, "run-%d-%d%s" % (os.getpid(), self.run_counter, LANGUAGES[language]["suffix"])
        )
        if language == "javascript":
            code = "(async () => {" + code + "\n})();\n"
        with open(path, "w", encoding="utf-8") as script:
            script.write(code)
        argv = [self.config.interpreters[language], path]
        env = dict(self.config.env)
        env.update(request.get("env") or {})
        try:
            await self._run_process(argv, env, timeout, limit, writer)
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass

    async def _run_process(self, argv, env, timeout, limit, writer):
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status_r, status_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(out_r)
            os.close(err_r)
            os.close(status_r)
            supervise(argv, env, self.config.workdir, out_w, err_w, status_w, timeout, self.config.limits)
        for fd in (out_w, err_w, status_w):
            os.close(fd)
        streams = {out_r: OutputStream("stdout", limit), err_r: OutputStream("stderr", limit)}
        status_chunks = []
        open_fds = {out_r, err_r, status_r}
        done = loop.create_future()
        queue = []  # events to send, filled by the pipe readers
        flush_pending = [False]
        wake = asyncio.Event()

        def on_readable(fd):
            data = _read_pipe(fd)
            if data is None:
                return
            if data == b"":
                loop.remove_reader(fd)
                os.close(fd)
                open_fds.discard(fd)
                if fd in streams:
                    tail = streams[fd].feed(b"", final=True)
                    if tail:
                        queue.append({"ev": streams[fd].name, "data": tail})
                if not open_fds and not done.done():
                    done.set_result(None)
            elif fd == status_r:
                status_chunks.append(data)
            else:
                text = streams[fd].feed(data)
                if text:
                    queue.append({"ev": streams[fd].name, "data": text})
            if queue and not flush_pending[0]:
                flush_pending[0] = True
                wake.set()

        for fd in open_fds:
            os.set_blocking(fd, False)
            loop.add_reader(fd, on_readable, fd)
        peer_gone = False
        try:
            while not done.done() or queue:
                if not queue:
                    waiter = asyncio.ensure_future(wake.wait())
                    await asyncio.wait({waiter, done}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                wake.clear()
                flush_pending[0] = False
                batch, queue[:] = list(queue), []
                for event in _coalesce(batch):
                    if not peer_gone:
                        try:
                            await self.send(writer, event)
                        except (ConnectionError, RuntimeError):
                            # The client went away: cancel the run, keep draining.
                            peer_gone = True
                            _signal(pid, signal.SIGTERM)
        except asyncio.CancelledError:
            _signal(pid, signal.SIGTERM)
            raise
        finally:
            for fd in list(open_fds):
                loop.remove_reader(fd)
                os.close(fd)
            await _wait_child(pid)
        outcome = json.loads(b"".join(status_chunks) or b'{"exit_code": 1, "execution_time": 0}')
        for stream in streams.values():
            marker = stream.marker()
            if marker and not peer_gone:
                await self.send(writer, {"ev": stream.name, "data": marker})
        outcome["truncated"] = any(stream.dropped for stream in streams.values())
        outcome["ev"] = "end"
        if not peer_gone:
            await self.send(writer, outcome)

    # ---- files (paths are relative to the working directory unless absolute)
    def _path(self, request):
        path = request.get("path") or "."
        if "\0" in path:
            raise ValueError("path contains a NUL byte")
        return os.path.join(self.config.workdir, path)

    async def op_files_write(self, request, reader, writer):
        path = self._path(request)
        if request.get("make_parents", True):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        total = 0
        tmp = path + ".nexus-partial"
        with open(tmp, "wb") as target:
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionError("client went away during upload")
                message = json.loads(line)
                if message.get("eof"):
                    break
                chunk = base64.b64decode(message["chunk"])
                target.write(chunk)
                total += len(chunk)
        os.replace(tmp, path)
        await self.send(writer, {"ev": "end", "path": path, "size": total})

    async def op_files_read(self, request, reader, writer):
        path = self._path(request)
        with open(path, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            await self.send(writer, {"ev": "start", "path": path, "size": size})
            while True:
                chunk = source.read(FILE_CHUNK)
                if not chunk:
                    break
                await self.send(writer, {"ev": "chunk", "chunk": base64.b64encode(chunk).decode()})
        await self.send(writer, {"ev": "end"})

    async def op_files_list(self, request, reader, writer):
        path = self._path(request)
        entries = []
        with os.scandir(path) as listing:
            for entry in listing:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                kind = "dir" if entry.is_dir(follow_symlinks=False) else (
                    "symlink" if entry.is_symlink() else "file"
                )
                entries.append(
                    {"name": entry.name, "path": os.path.join(path, entry.name), "type": kind,
                     "size": info.st_size, "modified": info.st_mtime}
                )
        entries.sort(key=lambda item: item["name"])
        await self.send(writer, {"ev": "end", "path": path, "entries": entries})

    async def op_files_remove(self, request, reader, writer):
        path = self._path(request)
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)
        await self.send(writer, {"ev": "end", "path": path})

    # ---- self-expiry: the box ends itself if nobody uses it past its idle timeout,
    # so an expired sandbox dies even when no manager or reaper is running.
    async def watch_idle(self):
        tick = 1.0
        last_tick = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - last_tick > 5 * tick:
                # We were frozen (pause): the time spent frozen is not idleness.
                self.last_activity = now
            last_tick = now
            timeout = self.config.idle_timeout
            if timeout > 0 and self.active == 0 and now - self.last_activity > timeout:
                sys.stderr.write("agent: idle for %.0f s, ending the box\n" % timeout)
                os._exit(0)


def _coalesce(events):
    merged = []
    for event in events:
        if merged and merged[-1]["ev"] == event["ev"] and "data" in event:
            merged[-1] = {"ev": event["ev"], "data": merged[-1]["data"] + event["data"]}
        else:
            merged.append(event)
    return merged


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


async def _wait_child(pid):
    # Polled rather than waited in a thread: the agent forks, and forking a
    # process with threads is unsafe.
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        await asyncio.sleep(0.002)


def _os_error_text(exc):
    if isinstance(exc, OSError) and exc.strerror:
        name = exc.filename if exc.filename is not None else ""
        return ("%s: %s" % (exc.strerror, name)).rstrip(": ")
    return str(exc)


async def serve(config):
    agent = Agent(config)
    try:
        os.unlink(config.socket_path)
    except FileNotFoundError:
        pass
    server = await asyncio.start_unix_server(agent.handle, path=config.socket_path, limit=64 << 20)
    os.chmod(config.socket_path, 0o600)
    asyncio.ensure_future(agent.watch_idle())
    async with server:
        await server.serve_forever()


def main(argv=None):
    config = Config(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
