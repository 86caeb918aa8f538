"""Inside a box: the stateful Python runtime's supervisor.

The agent starts this as soon as the box starts (a fork of the agent that
loads this file; ``python -I -S python_runtime.py --socket .../kernel.sock``
runs it alone).  It starts the shell (an IPython
``InteractiveShell`` in its own process, ``python_shell.py``) and listens on
``kernel.sock`` for the agent's ``execute`` requests, which it runs one at a
time:

- the request's connection is passed to the shell (SCM_RIGHTS), which writes
  the cell's events to it directly; when the shell says the cell is done, the
  supervisor writes the final ``end`` event (exit code, time, timed out,
  restarted, out of memory) and closes it;
- on the deadline, or when the client hangs up (the kernel's stop button, a
  CLI killed), the shell is interrupted (SIGINT: state kept) and the processes
  the cell started are killed; a shell that does not stop within
  INTERRUPT_GRACE is killed and started again, with a visible note;
- a shell that dies (``os._exit``, the OOM killer, a crash) is started again
  with a note saying how it ended; its exit status is the run's exit code.

The supervisor is the shell's parent (only a parent learns how a process
ended) and a child subreaper, so a process a cell started and orphaned
(double fork, setsid) is still within reach of a timeout.

Stdlib only, like the agent: it runs with ``-I -S``.
"""

import collections
import json
import os
import selectors
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from agent import LIBC, OOM_FIRST, PR_SET_CHILD_SUBREAPER, _kill_tree, _last_line, _oom_kills, accept

INTERRUPT_GRACE = 3.0  # seconds an interrupted cell has to stop before the shell is started again
TIMEOUT_EXIT_CODE = 124
MAX_REQUEST_LINE = 64 << 20
SHELL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "python_shell.py")


class Shell:
    """The shell process and our end of its control socket."""

    def __init__(self, python, workdir, env, log_fd):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.control = ours
        self.buffer = b""
        self.ready = False
        self.open = True  # its control socket: closed once it said goodbye or died
        self.end_expected = False  # killed by us (it stopped reading): no note
        # The pipes behind the shell's fds 1 and 2.  It reads them itself; we keep
        # their read ends too, for what is left in them when it dies (os._exit).
        pipes = {"stdout": os.pipe(), "stderr": os.pipe()}
        self.outputs = {name: read_end for name, (read_end, _) in pipes.items()}
        self.pid = os.fork()
        if self.pid == 0:
            try:
                ours.close()
                os.dup2(log_fd, 1)
                os.dup2(log_fd, 2)
                os.chdir(workdir)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.set_wakeup_fd(-1)
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                argv = [python, SHELL, "--control-fd", str(theirs.fileno())]
                for fd in [theirs.fileno(), *(fd for pair in pipes.values() for fd in pair)]:
                    os.set_inheritable(fd, True)
                for name, (read_end, write_end) in pipes.items():
                    argv += ["--" + name, "%d,%d" % (read_end, write_end)]
                # The OOM killer takes the shell (where a cell's memory is) first.
                os.execvpe(OOM_FIRST[0], OOM_FIRST + argv, env)
            except BaseException as exc:
                os.write(2, ("cannot start %s: %s\n" % (python, exc)).encode())
            finally:
                os._exit(127)
        theirs.close()
        for read_end, write_end in pipes.values():
            os.close(write_end)
            os.set_blocking(read_end, False)

    def leftover_output(self):
        """What the shell's output pipes still hold (it died before it read them); closes them."""
        left = {}
        for name, fd in self.outputs.items():
            data = b""
            try:
                while len(data) < (1 << 20):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    data += chunk
            except BlockingIOError:
                pass
            os.close(fd)
            if data:
                left[name] = data.decode("utf-8", "replace")
        self.outputs = {}
        return left

    def send(self, message, fd=None):
        data = (json.dumps(message) + "\n").encode()
        if fd is None:
            self.control.sendall(data)
        else:
            sent = self.control.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))])
            self.control.sendall(data[sent:])  # a stream socket takes a long cell in parts

    def messages(self):
        """What the shell said since last time (an empty read: it is gone)."""
        try:
            data = self.control.recv(65536)
        except OSError:
            data = b""
        if not data:
            return [{"gone": True}]
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


class Cell:
    """One execute request, from the moment the shell has it to its ``end``."""

    def __init__(self, conn, request):
        self.conn = conn
        self.request = request
        self.started = time.monotonic()
        self.deadline = self.started + float(request.get("timeout", 30))
        self.oom_kills_before = _oom_kills()
        self.interrupted_at = None
        self.reason = None  # "timeout" or "cancelled", once interrupted
        self.killed = False  # the shell would not stop: we killed it (the cell was told)
        self.restarted = False
        self.exit_code = 0
        self.oom_killed = False

    def send(self, event):
        try:
            self.conn.sendall((json.dumps(event) + "\n").encode())
        except OSError:
            pass  # the client left: the cell still ends properly


class Supervisor:
    def __init__(self, socket_path, log_path, python, workdir, env, lock_fd=None):
        self.socket_path = socket_path
        self.python = python
        self.workdir = workdir
        self.env = env
        if lock_fd is not None:
            os.set_inheritable(lock_fd, False)  # held for life (see the agent's start_runtime), not by the shell
        self.log_path = log_path
        self.log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.selector = selectors.DefaultSelector()
        self.waiting = collections.deque()  # (conn, request) for the shell, in arrival order
        self.reading = {}  # conn -> bytes of its request line so far
        self.cell = None
        self.shell = None
        self.note = None  # how the shell ended while idle: told with the next cell
        self.failed = None  # why the shell could not start (told to what waits, until asked again)

    # ---- the shell's life
    def start_shell(self):
        self.shell = Shell(self.python, self.workdir, self.env, self.log_fd)
        # Read only when readable; a send (a cell's code, up to megabytes) goes to an idle
        # shell that reads it, and a shell that does not is as good as dead.
        self.shell.control.settimeout(30)
        self.selector.register(self.shell.control, selectors.EVENT_READ, "shell")

    def shell_ended(self, status):
        """The shell process is gone (its status from waitpid)."""
        shell, self.shell = self.shell, None
        self._close_control(shell)
        leftover = shell.leftover_output()
        if not shell.ready and not shell.end_expected:
            self.failed = "the Python runtime could not start: " + _last_line(self.log_path)
            for conn, _ in self.waiting:
                self._refuse(conn, self.failed)
            self.waiting.clear()
            if self.cell is not None:  # it was being started again for this cell
                self.cell.send({"ev": "stderr", "data": self.failed + "\n"})
                self._finish(self.cell, exit_code=self.cell.exit_code or 1)
            return
        if os.WIFSIGNALED(status):
            code, how = 128 + os.WTERMSIG(status), "was killed by signal %d" % os.WTERMSIG(status)
        else:
            code, how = os.WEXITSTATUS(status), "exited with code %d" % os.WEXITSTATUS(status)
        cell = self.cell
        if shell.end_expected or (cell is not None and cell.killed):
            pass  # we killed it: whoever waits was told why
        elif cell is not None:
            for name, text in leftover.items():
                cell.send({"ev": name, "data": text})
            out_of_memory = _oom_kills() > cell.oom_kills_before
            if out_of_memory:
                how = "was killed: the sandbox ran out of memory"
            cell.send(
                {
                    "ev": "stderr",
                    "data": "\n[nexus: the Python process %s and was restarted: its state was lost]\n" % how,
                }
            )
            cell.exit_code = 137 if out_of_memory else code
            cell.oom_killed = out_of_memory
        else:
            self.note = "[nexus: the Python process %s while idle and was restarted: its state was lost]\n" % how
        self.kill_cell_processes()
        self.start_shell()
        if cell is not None:
            cell.restarted = True
            cell.send({"ev": "starting"})  # the host allows for the new shell's start

    def kill_cell_processes(self):
        spare = {self.shell.pid} if self.shell is not None else set()
        _kill_tree(spare=spare, reap=self.reap_orphans)

    def reap_orphans(self):
        """Collect exited children: orphans handed to us, and the shell (started again)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.shell is not None and pid == self.shell.pid:
                self.shell_ended(status)

    # ---- requests
    def accept(self, listener):
        conn = accept(listener)
        if conn is None:
            return
        conn.setblocking(False)
        self.reading[conn] = b""
        self.selector.register(conn, selectors.EVENT_READ, "request")

    def read_request(self, conn):
        data = _receive(conn)
        if data is None:
            return
        if not data or len(self.reading[conn]) > MAX_REQUEST_LINE:
            self._drop(conn)
            return
        line = self.reading[conn] + data
        if b"\n" not in line:
            self.reading[conn] = line
            return
        del self.reading[conn]
        self.selector.unregister(conn)
        conn.setblocking(True)
        try:
            request = json.loads(line.split(b"\n", 1)[0])
            op = request["op"]
        except (ValueError, KeyError, TypeError):
            self._refuse(conn, "bad request")
            return
        if op == "ping":
            ready = self.shell is not None and self.shell.ready
            self._answer(conn, {"ev": "end", "kernel_pid": self.shell.pid if ready else None, "ready": ready})
        elif op in ("execute", "environ"):
            if self.shell is None:
                self.failed = None
                self.start_shell()  # asked again after a failed start: try again
            if op == "execute" and not self.shell.ready:
                Cell(conn, request).send({"ev": "starting"})  # the host allows for the shell's start, once
            self.waiting.append((conn, request))
        else:
            self._refuse(conn, "bad request")

    def next_request(self):
        """Hand the next waiting request to the shell, if it is free."""
        while self.cell is None and self.waiting and self.shell is not None and self.shell.ready:
            conn, request = self.waiting.popleft()
            op = request["op"]
            if op == "environ":
                env = {str(key): str(value) for key, value in (request.get("env") or {}).items()}
                self.env = dict(self.env, **env)  # a shell started again keeps it
                self.shell.send({"op": "environ", "env": env})
                self._answer(conn, {"ev": "end"})
                continue
            if op == "execute" and _hung_up(conn):
                conn.close()  # cancelled while it waited: it must not run later, unseen
                continue
            cell = Cell(conn, request)
            if self.note:
                cell.send({"ev": "stderr", "data": self.note})
                self.note = None
            forward = {
                key: request[key]
                for key in ("code", "max_output_chars", "execution_count", "filename")
                if key in request
            }
            forward["op"] = "execute"
            try:
                self.shell.send(forward, fd=conn.fileno())
            except OSError:
                # Dying, or not reading: the next shell gets the cell.
                self.waiting.appendleft((conn, request))
                self.shell.ready = False
                self.shell.end_expected = True
                os.kill(self.shell.pid, signal.SIGKILL)
                return
            self.cell = cell
            self.selector.register(conn, selectors.EVENT_READ, "client")

    def shell_said(self):
        for message in self.shell.messages():
            if message.get("gone"):
                self._close_control(self.shell)  # it is ending: its exit status comes with SIGCHLD
                return
            if message.get("ready"):
                self.shell.ready = True
                if self.cell is not None and self.cell.restarted:
                    self._finish(self.cell, exit_code=self.cell.exit_code)
            elif "done" in message and self.cell is not None:
                exit_code = int(message.get("exit_code", 0))
                if self.cell.reason == "timeout":
                    exit_code = TIMEOUT_EXIT_CODE
                self._finish(self.cell, exit_code=exit_code)

    def client_said(self, conn):
        """The client wrote (nothing is expected) or hung up: a hang-up cancels the cell."""
        data = _receive(conn)
        if data is None:
            return
        if not data and self.cell is not None and self.cell.conn is conn and self.cell.interrupted_at is None:
            self.selector.unregister(conn)
            self.interrupt(self.cell, "cancelled")

    def interrupt(self, cell, reason):
        cell.reason = reason
        cell.interrupted_at = time.monotonic()
        if self.shell is not None and self.shell.ready:
            os.kill(self.shell.pid, signal.SIGINT)
        self.kill_cell_processes()

    def check_time(self):
        cell = self.cell
        if cell is None or cell.restarted:
            return
        now = time.monotonic()
        if cell.interrupted_at is None and now >= cell.deadline:
            self.interrupt(cell, "timeout")
        elif cell.interrupted_at is not None and now - cell.interrupted_at >= INTERRUPT_GRACE:
            cell.send(
                {
                    "ev": "stderr",
                    "data": "\n[nexus: the Python process did not stop when interrupted and "
                    "was restarted: its state was lost]\n",
                }
            )
            cell.exit_code = TIMEOUT_EXIT_CODE if cell.reason == "timeout" else 130
            cell.killed = True
            cell.restarted = True  # no more deadlines: it ends when the new shell is ready
            os.kill(self.shell.pid, signal.SIGKILL)

    def _finish(self, cell, exit_code):
        self.kill_cell_processes() if cell.reason else self.reap_orphans()
        try:
            self.selector.unregister(cell.conn)
        except (KeyError, ValueError):
            pass
        if cell.reason != "cancelled":
            cell.send(
                {
                    "ev": "end",
                    "exit_code": exit_code,
                    "execution_time": round(time.monotonic() - cell.started, 4),
                    "timed_out": cell.reason == "timeout",
                    "restarted": cell.restarted,
                    "oom_killed": cell.oom_killed or _oom_kills() > cell.oom_kills_before,
                }
            )
        cell.conn.close()
        self.cell = None

    def _close_control(self, shell):
        if shell.open:
            shell.open = False
            self.selector.unregister(shell.control)
            shell.control.close()

    def _answer(self, conn, event):
        try:
            conn.sendall((json.dumps(event) + "\n").encode())
        except OSError:
            pass
        conn.close()

    def _refuse(self, conn, message):
        self._answer(conn, {"ev": "error", "message": message})

    def _drop(self, conn):
        self.selector.unregister(conn)
        self.reading.pop(conn, None)
        conn.close()

    # ---- the loop
    def serve(self):
        LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        partial = self.socket_path + ".starting"
        if os.path.exists(partial):
            os.unlink(partial)
        listener.bind(partial)
        listener.listen(64)
        listener.setblocking(False)
        os.rename(partial, self.socket_path)
        self.selector.register(listener, selectors.EVENT_READ, "listener")
        self.selector.register(wake_r, selectors.EVENT_READ, "wake")
        self.start_shell()
        while True:
            timeout = None
            if self.cell is not None and not self.cell.restarted:
                due = (
                    self.cell.deadline
                    if self.cell.interrupted_at is None
                    else (self.cell.interrupted_at + INTERRUPT_GRACE)
                )
                timeout = max(due - time.monotonic(), 0)
            for key, _ in self.selector.select(timeout):
                if key.data == "listener":
                    self.accept(listener)
                elif key.data == "wake":
                    try:
                        while os.read(wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap_orphans()
                elif key.data == "request":
                    self.read_request(key.fileobj)
                elif key.data == "shell":
                    if self.shell is not None and key.fileobj is self.shell.control:
                        self.shell_said()
                elif key.data == "client":
                    self.client_said(key.fileobj)
            self.check_time()
            self.next_request()


def _hung_up(conn):
    """Whether the client of a waiting request has gone (its end of the connection closed)."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _receive(conn):
    """What a non-blocking socket holds: None if nothing yet, b"" at its end (or an error)."""
    try:
        return conn.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def main():
    args = {sys.argv[i]: sys.argv[i + 1] for i in range(1, len(sys.argv) - 1, 2)}
    # Run alone (not forked by the agent): SIGPIPE is ignored, as Python leaves it.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    python, workdir = args.get("--python", sys.executable), args.get("--workdir", os.getcwd())
    log = args.get("--log", "/dev/stderr")  # run alone: its log is its own stderr
    Supervisor(args["--socket"], log, python, workdir, dict(os.environ)).serve()


if __name__ == "__main__":
    main()
