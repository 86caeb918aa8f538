"""The in-box agent: the one long-lived process inside every sandbox.

It is started inside the isolation boundary (bubblewrap, a container) and
listens on a Unix socket in the sandbox's state directory, so any host
process can operate the sandbox by connecting to that socket; no host
process has to stay alive for the sandbox to work.

Protocol: newline-delimited JSON.  A client sends one request line
(``{"op": "run", ...}``), the agent answers with event lines and a final
line whose ``ev`` is ``end`` (or ``error``).  See ``nexus_jupyter.agent_client``.

Each connection is served by a forked child: requests run in parallel, a
slow client holds up nobody, and no threads are ever mixed with fork().
asyncio is avoided on purpose: importing it costs ~70 ms of every box's
start on a small machine, against ~20 ms for everything used here.

This file is stdlib-only and must keep working on any Python >= 3.8 that a
box may contain: it is mounted read-only into boxes, not imported there.
"""

import binascii
import codecs
import ctypes
import errno
import gc
import hashlib
import hmac
import json
import os
import resource
import selectors
import signal
import socket
import stat
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
PR_SET_DUMPABLE = 4
READ_CHUNK = 65536
FILE_CHUNK = 256 * 1024
MAX_REQUEST_LINE = 64 << 20
FIRST_LINE_SECONDS = 30
TIMEOUT_EXIT_CODE = 124
CANCELLED_EXIT_CODE = 130
# Loaded once at start: dlopen after fork() is not safe.
LIBC = ctypes.CDLL(None, use_errno=True)

SUFFIXES = {"python": ".py", "javascript": ".js", "bash": ".sh"}
# Runs and the kernel start through this, so the OOM killer takes them before
# the agent.  Set after an exec, not before: until then the process is a
# non-dumpable copy of the agent (the key in its memory), and /proc/self is
# not its own to write.
OOM_FIRST = ["/bin/sh", "-c", 'echo 1000 > /proc/self/oom_score_adj 2>/dev/null; exec "$@"', "sh"]


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
        self.key = ""
        args = iter(argv)
        for flag in args:
            value = next(args)
            if flag == "--socket":
                self.socket_path = value
            elif flag == "--workdir":
                self.workdir = value
            elif flag == "--idle-timeout":
                self.idle_timeout = float(value)
            elif flag == "--config-file":
                # A file (or "-": one line on standard input), not argv: environment
                # values and the key must not show in `ps` or `docker inspect`.
                # Read once, then removed.
                if value == "-":
                    extra = json.loads(_read_line(0))
                else:
                    with open(value) as config_file:
                        extra = json.load(config_file)
                    os.unlink(value)
                self.interpreters.update(extra.get("interpreters", {}))
                self.env = extra.get("env", {})
                self.limits = extra.get("limits", {})
                # The box's secret: requests must prove it, and answers prove it back.
                self.key = extra.get("key", "")
            else:
                raise SystemExit("agent: unknown flag " + flag)


def _read_line(fd):
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.decode()


class ClientGone(Exception):
    pass


class Connection:
    """One client connection, served by a forked child of the agent."""

    def __init__(self, sock, config, control_fd):
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.config = config
        self.control_fd = control_fd

    def send(self, event):
        try:
            self.sock.sendall((json.dumps(event) + "\n").encode())
        except OSError as exc:
            raise ClientGone() from exc

    def serve(self):
        # A connection that never proves itself ends: it holds nothing and keeps nothing alive.
        self.sock.settimeout(FIRST_LINE_SECONDS)
        try:
            line = self.reader.readline(MAX_REQUEST_LINE)
        except OSError:
            return
        self.sock.settimeout(None)
        if not line:
            return
        try:
            request = json.loads(line)
            handler = getattr(self, "op_" + request["op"].replace(".", "_"))
            nonce = str(request["nonce"])
            auth = str(request["auth"])
        except (ValueError, KeyError, TypeError, AttributeError):
            self.send({"ev": "error", "message": "bad request"})
            return
        # Only the host holds this box's key: a request made for another box
        # (its socket swapped for ours) or by code in the box is refused.
        if not self.config.key or not hmac.compare_digest(auth, _mac(self.config.key, "host", nonce)):
            self.send({"ev": "error", "message": "this is not the agent of the sandbox the request was made for"})
            return
        self.send({"ev": "hello", "proof": _mac(self.config.key, "agent", nonce)})
        # Only a request the host made counts as use of the box (its idle clock).
        _write_all(self.control_fd, (json.dumps({"serving": os.getpid()}) + "\n").encode())
        try:
            handler(request)
        except (OSError, ValueError) as exc:
            # errno lets the host tell "no such file" (a 404 over REST) from other failures.
            self.send({"ev": "error", "message": _error_text(exc), "errno": getattr(exc, "errno", None)})

    # ---- housekeeping
    def op_ping(self, request):
        self.send({"ev": "end", "pid": os.getppid()})

    def op_touch(self, request):
        """Note activity; optionally set a new idle timeout and run environment.

        The change is for the agent itself (this is a forked child): it goes
        to the parent through the control pipe, one JSON line.
        """
        change = {}
        if "idle_timeout" in request:
            change["idle_timeout"] = float(request["idle_timeout"])
        if isinstance(request.get("env"), dict):
            change["env"] = {str(k): str(v) for k, v in request["env"].items()}
            # The runtime started with the box (a warm-pool box: before it was claimed).
            runtime = _running_runtime(self.config)
            if runtime is not None:
                with runtime:
                    runtime.sendall((json.dumps({"op": "environ", "env": change["env"]}) + "\n").encode())
        _write_all(self.control_fd, (json.dumps(change) + "\n").encode())
        self.send({"ev": "end"})

    # ---- runs
    def op_run(self, request):
        language = request.get("language")
        if language not in SUFFIXES:
            self.send({"ev": "error", "message": "unsupported language: %r" % (language,)})
            return
        code = request.get("code", "")
        if language == "javascript":
            # An async wrapper makes top-level `await` work while `require`
            # stays available; it opens on the code's first line so line
            # numbers in stack traces stay right.
            code = "(async () => {" + code + "\n})();\n"
        path = os.path.join(self.config.code_dir, "run-%d%s" % (os.getpid(), SUFFIXES[language]))
        try:
            os.makedirs(self.config.code_dir, exist_ok=True)
            with open(path, "w", encoding="utf-8") as script:
                script.write(code)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or language == "javascript":
                raise
            # The box's disk is full: the code goes in memory instead, so the box can
            # still run the command that frees space.  (Node cannot run from a memfd.)
            try:
                os.unlink(path)
            except OSError:
                pass
            memory = os.memfd_create("nexus-run", 0)
            os.set_inheritable(memory, True)
            _write_all(memory, code.encode("utf-8"))
            path = "/proc/self/fd/%d" % memory
        env = dict(self.config.env)
        env.update(request.get("env") or {})
        try:
            Run(
                self,
                [self.config.interpreters[language], path],
                env,
                float(request.get("timeout", 30)),
                int(request.get("max_output_chars", 1 << 20)),
            ).execute()
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass

    # ---- stateful Python: forwarded to the runtime (python_runtime.py), started with the box
    def op_execute(self, request):
        runtime = self._runtime_connection()
        # The runtime's socket is in reach of the box's code: it gets no proof to replay.
        forward = {key: value for key, value in request.items() if key not in ("nonce", "auth")}
        try:
            runtime.sendall((json.dumps(forward) + "\n").encode())
            selector = selectors.DefaultSelector()
            selector.register(runtime, selectors.EVENT_READ)
            selector.register(self.sock, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is runtime:
                        data = runtime.recv(READ_CHUNK)
                        if not data:
                            return
                        try:
                            self.sock.sendall(data)
                        except OSError:
                            return  # the client went away: closing the runtime's side cancels the cell
                    elif not self.sock.recv(1):
                        return
        finally:
            runtime.close()

    def _runtime_connection(self):
        """A connection to the Python runtime; started again if box code ended it."""
        path = _runtime_socket(self.config)
        started = False
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            connection = _try_connect(path)
            if connection is not None:
                return connection
            if start_runtime(self.config):
                if started:  # it ended before it listened
                    raise OSError(errno.ECHILD, "the Python runtime could not start: " + self._runtime_log_line())
                started = True
                self.send({"ev": "starting"})  # the host allows for its start, once
                # The box started one with itself: if it is gone, something ended it (box code
                # killing it), and what it held is lost.
                self.send(
                    {
                        "ev": "stderr",
                        "data": "[nexus: the Python runtime had ended and was restarted: its state was lost]\n",
                    }
                )
            time.sleep(0.01)
        raise OSError(errno.ETIMEDOUT, "the Python runtime did not start in time: " + self._runtime_log_line())

    def _runtime_log_line(self):
        return _last_line(_runtime_log(self.config))

    # ---- files (relative paths are relative to the working directory)
    def _path(self, request):
        path = request.get("path") or "."
        if "\0" in path:
            raise ValueError("path contains a NUL byte")
        if path.rstrip("/") == ".":
            return self.config.workdir  # its entries are "/home/user/a.txt", not "/home/user/./a.txt"
        return os.path.join(self.config.workdir, path)

    def op_files_write(self, request):
        path = self._path(request)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        partial = path + ".nexus-partial"
        total = 0
        try:
            os.unlink(partial)  # left by a transfer that was cut off
        except FileNotFoundError:
            pass
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as target:
                while True:
                    line = self.reader.readline(MAX_REQUEST_LINE)
                    if not line:
                        raise ClientGone()
                    message = json.loads(line)
                    if message.get("eof"):
                        break
                    chunk = binascii.a2b_base64(message["chunk"])
                    target.write(chunk)
                    total += len(chunk)
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        self.send({"ev": "end", "path": path, "size": total})

    def op_files_read(self, request):
        """Regular files only (a FIFO would block, /dev/zero never ends), up to max_bytes."""
        path = self._path(request)
        limit = int(request.get("max_bytes", 256 << 20))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO must not block
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise ValueError("%s is not a regular file" % path)
        with os.fdopen(fd, "rb") as source:
            if info.st_size > limit:
                raise ValueError(
                    "%s is %d bytes, over the %d-byte transfer limit (NEXUS_MAX_FILE_MB)" % (path, info.st_size, limit)
                )
            os.set_blocking(fd, True)
            self.send({"ev": "start", "path": path, "size": info.st_size})
            sent = 0
            while sent <= limit:
                chunk = source.read(FILE_CHUNK)
                if not chunk:
                    break
                sent += len(chunk)
                self.send({"ev": "chunk", "chunk": binascii.b2a_base64(chunk, newline=False).decode()})
        if sent > limit:
            raise ValueError("%s grew past the %d-byte transfer limit while being read" % (path, limit))
        self.send({"ev": "end"})

    def op_files_list(self, request):
        path = self._path(request)
        entries = []
        with os.scandir(path) as listing:
            for entry in listing:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if entry.is_symlink():
                    kind = "symlink"
                elif entry.is_dir(follow_symlinks=False):
                    kind = "dir"
                else:
                    kind = "file"
                entries.append(
                    {
                        "name": entry.name,
                        "path": os.path.join(path, entry.name),
                        "type": kind,
                        "size": info.st_size,
                        "modified": info.st_mtime,
                    }
                )
        entries.sort(key=lambda item: item["name"])
        self.send({"ev": "end", "path": path, "entries": entries})

    def op_files_remove(self, request):
        path = self._path(request)
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)
        self.send({"ev": "end", "path": path})


class OutputStream:
    """One of a run's output pipes: decoded as UTF-8, capped."""

    def __init__(self, name, limit):
        self.name = name
        self.limit = limit
        self.sent = 0
        self.dropped = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data, final=False):
        text = self.decoder.decode(data, final)
        room = max(self.limit - self.sent, 0)
        if len(text) > room:
            self.dropped += len(text) - room
            text = text[:room]
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


class Run:
    """One run of code.  The serving process is a child subreaper, so every
    process the code starts, even one that double-forks or calls setsid,
    stays its descendant and is killed when the run ends or times out."""

    def __init__(self, connection, argv, env, timeout, limit):
        self.connection = connection
        self.argv = argv
        self.env = env
        self.timeout = timeout
        self.limits = connection.config.limits
        self.workdir = connection.config.workdir
        self.streams = {}
        self.limit = limit

    def _start_child(self, out_w, err_w):
        pid = os.fork()
        if pid:
            return pid
        try:
            for sig in (signal.SIGPIPE, signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)  # an ignored signal would stay ignored across exec
            signal.set_wakeup_fd(-1)
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.chdir(self.workdir)
            _apply_limits(self.limits, self.timeout)
            os.execvpe(OOM_FIRST[0], OOM_FIRST + self.argv, self.env)
        except BaseException as exc:
            os.write(2, ("nexus: cannot start %s: %s\n" % (self.argv[0], exc)).encode())
        finally:
            os._exit(127)

    def execute(self):
        LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        oom_kills_before = _oom_kills()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        started = time.monotonic()
        child = self._start_child(out_w, err_w)
        os.close(out_w)
        os.close(err_w)
        self.streams = {out_r: OutputStream("stdout", self.limit), err_r: OutputStream("stderr", self.limit)}
        selector = selectors.DefaultSelector()
        for fd in self.streams:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        selector.register(self.connection.sock, selectors.EVENT_READ)
        deadline = started + self.timeout
        exit_code, ended, outcome = None, None, "ok"
        open_pipes = set(self.streams)
        try:
            while open_pipes or exit_code is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    outcome = "timeout"
                    break
                for key, _ in selector.select(remaining):
                    fd = key.fd
                    if fd == wake_r:
                        _drain(wake_r)
                    elif key.fileobj is self.connection.sock:
                        if not self.connection.sock.recv(1):
                            raise ClientGone()  # the client went away: cancel the run
                    elif not self._pump(fd):
                        selector.unregister(fd)
                        open_pipes.discard(fd)
                if exit_code is None:
                    status = _reap(child)
                    if status is not None:
                        exit_code, ended = status, time.monotonic()
                        if open_pipes:
                            # Background processes still hold the output open:
                            # a run's processes never outlive the run.
                            _kill_tree()
        except ClientGone:
            outcome = "cancelled"
        if ended is None:
            ended = time.monotonic()
        _kill_tree()
        if outcome != "cancelled":
            for fd in open_pipes:
                os.set_blocking(fd, True)
                while self._pump(fd):
                    pass
        for fd in [*self.streams, wake_r, wake_w]:
            os.close(fd)
        if outcome == "cancelled":
            return
        if exit_code is None:
            exit_code = TIMEOUT_EXIT_CODE
        for stream in self.streams.values():
            marker = stream.marker()
            if marker:
                self.connection.send({"ev": stream.name, "data": marker})
        self.connection.send(
            {
                "ev": "end",
                "exit_code": exit_code,
                "execution_time": round(ended - started, 4),
                "timed_out": outcome == "timeout",
                "truncated": any(stream.dropped for stream in self.streams.values()),
                "oom_killed": _oom_kills() > oom_kills_before,
            }
        )

    def _pump(self, fd):
        """Forward what the pipe holds; False at end of file."""
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return True
        stream = self.streams[fd]
        text = stream.feed(data, final=not data)
        if text:
            self.connection.send({"ev": stream.name, "data": text})
        return bool(data)


def _runtime_socket(config):
    return os.path.join(os.path.dirname(config.socket_path), "kernel.sock")


def _runtime_log(config):
    return os.path.join(os.path.dirname(config.socket_path), "python.log")


def _open_runtime_lock(config):
    """The file whose lock the runtime's supervisor holds for life (see start_runtime)."""
    return os.open(os.path.join(os.path.dirname(config.socket_path), "kernel.lock"), os.O_RDWR | os.O_CREAT, 0o600)


def _running_runtime(config):
    """A connection to the Python runtime if one runs (waiting for it to listen if it is
    starting), else None: one started later is a fork of a process that has the news."""
    import fcntl

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        connection = _try_connect(_runtime_socket(config))
        if connection is not None:
            return connection
        lock = _open_runtime_lock(config)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None  # nobody holds it: no runtime
        except OSError:
            time.sleep(0.01)  # it runs, and is about to listen
        finally:
            os.close(lock)
    return None


def start_runtime(config):
    """Start the stateful Python runtime unless one runs (or is starting); True if started.

    Its supervisor is a fork of the agent (it shares the agent's memory pages:
    ~1 MiB of its own instead of ~8 for a new interpreter), not dumpable like
    the agent, and it execs only the shell.  Whoever holds ``kernel.lock`` is
    the runtime: the supervisor inherits the locked file from here and keeps
    it for life, so of two starts (the box's own at boot, an execute after
    box code killed it) only one runs."""
    import fcntl

    lock = _open_runtime_lock(config)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # it runs
        child = os.fork()
        if child == 0:
            try:
                os.setsid()
                if os.fork():
                    os._exit(0)
                _become_runtime(config, lock)
            finally:
                os._exit(127)
        os.waitpid(child, 0)
        return True
    finally:
        os.close(lock)


def _become_runtime(config, lock):
    # The agent's objects stay shared with it: the collector would write to every page that holds one.
    gc.freeze()
    # Nothing of the agent's but the lock: not its listening socket (a dead agent's
    # socket must refuse), not its control pipe, not its key.
    os.closerange(3, lock)
    os.closerange(lock + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    config.key = ""
    log = os.open(_runtime_log(config), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.chdir(config.workdir)
    for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    # A client that hung up is an EPIPE to handle, never the end of the runtime.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _apply_kernel_limits(config.limits)
    # The runtime's `from agent import ...` is this very module, not a second copy.
    sys.modules.setdefault("agent", sys.modules[__name__])
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "python_runtime.py")
    spec = importlib.util.spec_from_file_location("python_runtime", path)
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    runtime.Supervisor(
        _runtime_socket(config), _runtime_log(config), config.interpreters["python"], config.workdir, config.env, lock
    ).serve()


def _apply_limits(limits, timeout):
    def setlimit(which, value):
        if value is not None:
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


# Where the box can see its own memory cgroup (a container can), the OOM
# killer's count tells a memory kill from any other SIGKILL.
OOM_COUNTERS = ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events")


def _oom_kills():
    for path in OOM_COUNTERS:
        try:
            with open(path) as counters:
                for line in counters:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


def _apply_kernel_limits(limits):
    """The long-lived kernel gets the run limits but CPU time (it lives across runs).

    Where no cgroup bounds the box, memory is bounded by RLIMIT_DATA rather than
    RLIMIT_AS: a kernel reserves far more address space than it uses.
    """
    for which, value in (
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, limits.get("file_size_bytes")),
        (resource.RLIMIT_NOFILE, limits.get("open_files", 1024)),
        (resource.RLIMIT_NPROC, limits.get("nproc")),
        (resource.RLIMIT_DATA, limits.get("address_space_bytes")),
    ):
        if value is not None:
            try:
                resource.setrlimit(which, (value, value))
            except (ValueError, OSError):
                pass


def _processes():
    """(pid, state, parent pid) of every process this box's /proc shows."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as stat_file:
                fields = stat_file.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        found.append((int(name), fields[0], int(fields[1])))
    return found


def _children_map():
    children = {}
    for pid, state, parent in _processes():
        if state != b"Z":  # zombies hold nothing; the ones that are ours get reaped
            children.setdefault(parent, []).append(pid)
    return children


def _descendants(root):
    children = _children_map()
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _reap(child=None):
    """Reap every exited child; return ``child``'s exit code if it was among them."""
    result = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return result
        if pid == 0:
            return result
        if pid == child:
            result = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _kill_tree(spare=(), reap=None):
    """SIGKILL every descendant but ``spare`` until none is left (a fork bomb included);
    ``reap`` collects the dead (default: every exited child of ours)."""
    reap = reap or _reap
    me = os.getpid()
    for _ in range(1000):
        pids = [pid for pid in _descendants(me) if pid not in spare]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reap()
        time.sleep(0.001)
    reap()


def _try_connect(path):
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(path)
        return connection
    except (FileNotFoundError, ConnectionRefusedError):
        connection.close()
        return None


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as stat_file:
            return stat_file.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _last_line(path):
    try:
        with open(path, errors="replace") as log:
            lines = [line.strip() for line in log if line.strip()]
        return lines[-1] if lines else "no output"
    except OSError:
        return "no output"


def _drain(fd):
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _error_text(exc):
    if isinstance(exc, OSError) and exc.strerror:
        name = exc.filename if exc.filename is not None else ""
        return ("%s: %s" % (exc.strerror, name)).rstrip(": ")
    return str(exc)


def serve(config):
    """Accept connections forever; end the box when idle past its timeout."""
    try:
        os.unlink(config.socket_path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(config.socket_path)
    os.chmod(config.socket_path, 0o600)
    listener.listen(128)
    os.makedirs(config.code_dir, exist_ok=True)  # also where IPython and matplotlib keep their files
    if config.interpreters.get("python"):
        start_runtime(config)  # in the background: a first Python run usually finds it ready
    control_r, control_w = os.pipe()
    os.set_blocking(control_r, False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(control_r, selectors.EVENT_READ)
    children = set()  # connection children, to reap
    serving = set()  # those serving a request the host proved: only they keep the box in use
    tick = 1.0
    last_activity = last_tick = time.monotonic()
    while True:
        ready = selector.select(tick)
        now = time.monotonic()
        if now - last_tick > 5 * tick:
            # We were frozen (pause): time spent frozen is not idleness.
            last_activity = now
        last_tick = now
        # Reaps connection children, and orphans too where the agent is PID 1.
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                serving.clear()
                break
            if pid == 0:
                break
            children.discard(pid)
            if pid in serving:
                serving.discard(pid)
                last_activity = now
        for key, _ in ready:
            if key.fileobj is listener:
                conn = accept(listener)
                if conn is None:
                    continue
                pid = os.fork()
                if pid == 0:
                    try:
                        selector.close()
                        listener.close()
                        os.close(control_r)
                        Connection(conn, config, control_w).serve()
                    except ClientGone:
                        pass
                    finally:
                        os._exit(0)
                conn.close()
                children.add(pid)
            else:
                for line in _read_all(control_r).splitlines():
                    change = json.loads(line)
                    if change.get("serving") in children:
                        serving.add(change["serving"])
                    config.idle_timeout = change.get("idle_timeout", config.idle_timeout)
                    config.env = change.get("env", config.env)
                last_activity = now
        if config.idle_timeout > 0 and not serving and now - last_activity > config.idle_timeout:
            sys.stderr.write("agent: idle for %.0f s, ending the box\n" % config.idle_timeout)
            return


def accept(listener):
    """The next connection, or None when a client gave up before we took it."""
    try:
        return listener.accept()[0]
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EINTR, errno.ECONNABORTED):
            return None
        raise


def _read_all(fd):
    chunks = []
    try:
        while True:
            data = os.read(fd, 4096)
            if not data:
                break
            chunks.append(data)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode()


def relay(socket_path):
    """Join standard input and output to the agent's socket: how a host reaches a
    box on a remote Docker engine (through ``docker exec``), where it cannot
    reach the socket itself."""
    deadline = time.monotonic() + 15
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(socket_path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            conn.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # the agent is still starting
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ)
    selector.register(conn, selectors.EVENT_READ)
    stdin_open = True
    while True:
        for key, _ in selector.select():
            if key.fd == 0:
                data = os.read(0, READ_CHUNK)
                if data:
                    conn.sendall(data)
                else:
                    # The host hung up: so does the relay (a run in progress is cancelled).
                    selector.unregister(0)
                    stdin_open = False
                    conn.shutdown(socket.SHUT_WR)
            else:
                data = conn.recv(READ_CHUNK)
                if not data:
                    return
                _write_all(1, data)
        if not stdin_open and not selector.get_map():
            return


def _mac(key, purpose, nonce):
    return hmac.new(key.encode(), ("nexus-%s:%s" % (purpose, nonce)).encode(), hashlib.sha256).hexdigest()


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--relay"]:
        relay(args[1])
        return
    config = Config(args)
    # Not dumpable: code in the box runs as the same user, but cannot ptrace the
    # agent or read its memory (the key) through /proc.
    LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    serve(config)


if __name__ == "__main__":
    main()
