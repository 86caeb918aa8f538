"""Inside a box: the stateful Python shell, one IPython ``InteractiveShell``.

Started by the supervisor (``python_runtime.py``), which hands it one cell at
a time with the client's connection; the shell writes the cell's events to
that connection itself (no relay):

    {"ev": "stdout"|"stderr", "data": text}
    {"ev": "display", "data": {mime: ...}, "metadata": {...}}     display()
    {"ev": "result", "data": {...}, "metadata": {...}}            the cell's value
    {"ev": "exception", "ename": ..., "evalue": ..., "traceback": [...]}

and tells the supervisor ``{"done": true, "exit_code": n}``; the supervisor
writes the ``end``.  This is the engine ipykernel wraps, without ipykernel's
ZMQ sockets and message envelopes: the same display hooks, MIME bundles,
``%matplotlib inline`` (matplotlib-inline), magics and tracebacks.

A cell behaves as a script would: ``sys.exit(n)`` ends the cell with exit
code n (its message on stderr, the state kept), ``sys.stdout.buffer`` works,
``input()`` reads end of file.  File descriptors 1 and 2 are pipes read here,
so what subprocesses and C code write reaches the cell's output too.
"""

import codecs
import ctypes
import fcntl
import io
import json
import os
import select
import signal
import socket
import struct
import sys
import termios
import threading
import types
import warnings

PR_SET_PDEATHSIG = 1
READ_CHUNK = 65536


class Channel:
    """The current cell's connection, and the pipes behind fds 1 and 2.

    Every event goes out under one lock, after whatever the pipes hold, so
    output keeps its order: ``print(1); display(x); print(2)`` arrives so.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.conn = None
        self.pipes = {}  # read end -> stream name
        self.limit = 1 << 20
        self.sent = {}
        self.dropped = {}
        self.decoders = {}

    def capture(self, pipes):
        """From now on fds 1 and 2 are the supervisor's pipes, read here (until now: the runtime's log)."""
        for name, fd in (("stdout", 1), ("stderr", 2)):
            read_end, write_end = pipes[name]
            os.set_inheritable(read_end, False)
            os.dup2(write_end, fd)
            os.close(write_end)
            os.set_blocking(read_end, False)
            self.pipes[read_end] = name
        os.register_at_fork(after_in_child=self._after_fork)
        threading.Thread(target=self._read_pipes, daemon=True).start()

    def _read_pipes(self):
        # Interrupts are for the cell (the main thread), never for this thread.
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
        poller = select.poll()
        for fd in self.pipes:
            poller.register(fd, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                with self.lock:
                    self._read(fd, send=True)

    def _after_fork(self):
        # A child the cell forked (multiprocessing) has none of our threads: a lock
        # one of them held would never be released there.
        self.lock = threading.Lock()

    def start(self, conn, limit):
        with self.lock:
            self._drain(send=False)  # what background processes wrote between cells
            self.conn = conn
            self.limit = limit
            self.sent = {"stdout": 0, "stderr": 0}
            self.dropped = {"stdout": 0, "stderr": 0}
            self.decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in self.sent}

    def finish(self):
        """Flush everything the cell wrote; returns whether output was dropped."""
        flush_python_streams()
        with self.lock:
            self._drain(send=True)
            for name, decoder in self.decoders.items():
                self._stream(name, decoder.decode(b"", True))
            for name, count in self.dropped.items():
                if count:
                    self._send(
                        {
                            "ev": name,
                            "data": "\n[nexus: %s truncated: %d characters over the %d-character "
                            "limit were dropped]\n" % (name, count, self.limit),
                        }
                    )
            self.conn = None

    def send(self, event):
        flush_python_streams()
        with self.lock:
            self._drain(send=True)
            self._send(event)

    def _drain(self, send):
        for fd in self.pipes:
            while self._read(fd, send) and _pending(fd):
                pass

    def _read(self, fd, send):
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return False
        if send and self.conn is not None:
            name = self.pipes[fd]
            self._stream(name, self.decoders[name].decode(data))
        return bool(data)

    def _stream(self, name, text):
        room = max(self.limit - self.sent[name], 0)
        if len(text) > room:
            self.dropped[name] += len(text) - room
            text = text[:room]
        if text:
            self.sent[name] += len(text)
            self._send({"ev": name, "data": text})

    def _send(self, event):
        if self.conn is None:
            return
        try:
            self.conn.sendall((json.dumps(event) + "\n").encode())
        except OSError:
            self.conn = None  # the client left; the supervisor interrupts the cell
        except (TypeError, ValueError):
            # A MIME bundle that is not JSON (a library's bug): say so rather than fail the cell.
            self._send({"ev": "stderr", "data": "[nexus: an output could not be sent: not JSON]\n"})


def _pending(fd):
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0] > 0


def flush_python_streams():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _import_ipython():
    """Import IPython's shell without the terminal application its package
    ``__init__`` also loads (prompt_toolkit and more: half the start-up time
    and ~6 MiB), and without jedi (completion, which nobody asks of a
    sandbox: a third of the rest).  ``import IPython`` in a cell still gives
    the whole package: its ``__init__`` runs at the first use of a name it
    defines.  Any surprise from another IPython version: the plain import.
    """
    import importlib.util

    spec = importlib.util.find_spec("IPython")

    class DeferredPackage(types.ModuleType):
        def __getattr__(self, name):
            del type(self).__getattr__  # once
            exec(spec.loader.get_code("IPython"), self.__dict__)
            return getattr(self, name)

    package = DeferredPackage("IPython")
    package.__spec__, package.__path__, package.__file__ = spec, spec.submodule_search_locations, spec.origin
    package.__loader__, package.__package__ = spec.loader, "IPython"
    sys.modules["IPython"] = package
    try:
        from IPython.core.getipython import get_ipython

        package.get_ipython = get_ipython
        from IPython.core.interactiveshell import InteractiveShell
    except Exception:
        for name in [name for name in sys.modules if name == "IPython" or name.startswith("IPython.")]:
            del sys.modules[name]
        from IPython.core.interactiveshell import InteractiveShell
    return InteractiveShell


class _WithoutJedi:
    """While the shell is made, jedi cannot be imported: IPython's completer (imported
    when the shell starts) then does without it.  A cell's own ``import jedi`` works."""

    def __enter__(self):
        self.blocked = "jedi" not in sys.modules
        if self.blocked:
            sys.modules["jedi"] = None

    def __exit__(self, *exc):
        if self.blocked:
            del sys.modules["jedi"]


def make_shell(channel):
    with _WithoutJedi():
        return _make_shell(channel)


def _make_shell(channel):
    InteractiveShell = _import_ipython()
    from IPython.core.compilerop import CachingCompiler
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from traitlets.config import Config

    class Publisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            channel.send({"ev": "display", "data": data, "metadata": metadata or {}})

        def clear_output(self, wait=False):
            pass  # outputs are a list that only grows

    class ResultHook(DisplayHook):
        """The cell's value as a ``result`` event (ipykernel's execute_result), not ``Out[n]:`` text."""

        def start_displayhook(self):
            self.bundle = {}

        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            self.bundle = {"data": format_dict, "metadata": md_dict or {}}

        def finish_displayhook(self):
            if self.bundle:
                channel.send(dict(self.bundle, ev="result", execution_count=self.prompt_count))
            self.bundle = {}

    class ScriptNames(CachingCompiler):
        """A cell run from a file is named after it in tracebacks (``File script.py:3``)."""

        script = None

        def get_code_name(self, raw_code, transformed_code, number):
            if self.script:
                return self.script
            return super().get_code_name(raw_code, transformed_code, number)

        def cache(self, *args, **kwargs):
            name = super().cache(*args, **kwargs)
            if name == self.script:
                self._filename_map.pop(name, None)  # not a numbered cell: a file
            return name

    class SandboxShell(InteractiveShell):
        display_pub_class = Publisher
        displayhook_class = ResultHook

        exit_code = 0
        interrupted = False  # by the supervisor (timeout, cancel): no traceback for it

        def showtraceback(self, exc_tuple=None, *args, **kwargs):
            _, value, _ = exc_tuple or sys.exc_info()
            if isinstance(value, SystemExit):
                self.exit_code = _exit_status(value)
                return
            if isinstance(value, KeyboardInterrupt) and self.interrupted:
                return
            self.exit_code = 1
            super().showtraceback(exc_tuple, *args, **kwargs)

        def _showtraceback(self, etype, evalue, stb):
            channel.send({"ev": "exception", "ename": etype.__name__, "evalue": _text(evalue), "traceback": stb})

    config = Config()
    config.HistoryManager.enabled = False  # no SQLite file, no history thread
    config.InteractiveShell.colors = "NoColor"
    shell = SandboxShell.instance(config=config, compiler_class=ScriptNames)
    # IPython warns "To exit: use 'exit', 'quit', or Ctrl-D." after a SystemExit, naming its own file.
    warnings.filterwarnings("ignore", message="To exit: use 'exit', 'quit', or Ctrl-D.")
    exiter = Exit()
    shell.user_ns.update(exit=exiter, quit=exiter)
    shell.user_ns_hidden.update(exit=exiter, quit=exiter)
    return shell


class Exit:
    """``exit(3)`` as in a script (IPython's own exit asks a kernel to shut down)."""

    def __repr__(self):
        return "Use exit() to end the run."

    def __call__(self, code=None):
        raise SystemExit(code)


def _exit_status(exc):
    """Python's own rule for ``sys.exit(code)``, message on stderr included."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(str(code) + "\n")
    return 1


def _text(value):
    try:
        return str(value)
    except Exception:
        return "<unprintable %s>" % type(value).__name__


class Server:
    def __init__(self, control, pipes):
        self.control = control
        self.received = b""
        self.fds = []  # passed with execute messages, in their order
        self.channel = Channel()
        self.shell = make_shell(self.channel)  # a failed start still writes to the log
        self.channel.capture(pipes)
        self.armed = False
        signal.signal(signal.SIGINT, self._on_interrupt)

    def _on_interrupt(self, signum, frame):
        # Only a running cell is interrupted, and once per signal: one that lands
        # between cells, or as a cell ends, finds nothing to stop.
        if self.armed:
            self.armed = False
            self.shell.interrupted = True
            raise KeyboardInterrupt

    def serve(self):
        self.control.sendall(b'{"ready": true}\n')
        self.warm_up()
        while True:
            message = self.receive()
            if message is None:
                return  # the supervisor is gone
            if message.get("op") == "environ":
                os.environ.update({str(k): str(v) for k, v in message.get("env", {}).items()})
            elif message.get("op") == "execute":
                conn = socket.socket(fileno=self.fds.pop(0))
                exit_code = self.execute(message, conn)
                conn.close()
                self.control.sendall((json.dumps({"done": True, "exit_code": exit_code}) + "\n").encode())

    def warm_up(self):
        """Pay the first cell's one-time costs while no cell waits: compiling and running a
        cell, formatting a value, and above all the first traceback (its formatter's imports
        take ~0.2 s).  Nothing is sent (no cell's connection) and no history is kept; a
        request that arrives meanwhile is served after the step under way."""
        shell = self.shell
        steps = (
            lambda: shell.run_cell("pass", store_history=False, silent=True),
            lambda: shell.display_formatter.format(0),
            lambda: shell.run_cell("1/0", store_history=False, silent=True),
        )
        for step in steps:
            if b"\n" in self.received or select.select([self.control], [], [], 0)[0]:
                return
            step()
        shell.exit_code = 0
        for name in ("last_type", "last_value", "last_traceback", "last_exc"):
            sys.__dict__.pop(name, None)  # the warm-up's exception is no one's to inspect

    def receive(self):
        """The supervisor's next message.  The connection an execute message
        carries arrives with its first bytes (the kernel never merges data
        across a passed descriptor), so descriptors pair with messages in order."""
        while b"\n" not in self.received:
            data, ancillary, _, _ = self.control.recvmsg(READ_CHUNK, socket.CMSG_SPACE(4 * 4))
            if not data:
                return None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    count = len(payload) // 4
                    self.fds.extend(struct.unpack("%di" % count, payload[: count * 4]))
            self.received += data
        line, self.received = self.received.split(b"\n", 1)
        return json.loads(line)

    def execute(self, request, conn):
        shell = self.shell
        self.channel.start(conn, int(request.get("max_output_chars", 1 << 20)))
        shell.exit_code = 0
        shell.interrupted = False
        if isinstance(request.get("execution_count"), int):
            shell.execution_count = request["execution_count"]  # the notebook's own numbering
        script = request.get("filename")
        if isinstance(script, str) and script:
            script = os.path.join(os.getcwd(), os.path.basename(script))
            shell.user_ns["__file__"] = script
        shell.compile.script = script or None
        # A script shows no value for its last line; a cell does.
        shell.ast_node_interactivity = "none" if script else "last_expr"
        try:
            self.armed = True
            try:
                shell.run_cell(request.get("code", ""), store_history=True)
            finally:
                self.armed = False
        except KeyboardInterrupt:
            pass  # it landed as the cell ended (the handler disarmed itself)
        shell.compile.script = None
        self.channel.finish()
        return shell.exit_code


def main():
    args = {sys.argv[i]: sys.argv[i + 1] for i in range(1, len(sys.argv) - 1, 2)}
    control = socket.socket(fileno=int(args["--control-fd"]))
    # The shell does not outlive its supervisor (it would hold the box's memory for nobody).
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        return
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # input() reads end of file, as a script's would with nothing piped in
    os.close(devnull)
    # A cell's output goes straight to the pipes (no buffer to flush before a subprocess writes).
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), sys.stdout.encoding, sys.stdout.errors, write_through=True
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), sys.stderr.encoding, sys.stderr.errors, write_through=True
    )
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), sys.stdin.encoding, sys.stdin.errors)
    import importlib.util

    if importlib.util.find_spec("matplotlib_inline") is not None:
        # Figures come back as images, whatever the box's environment says (as ipykernel does).
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    pipes = {name: tuple(int(fd) for fd in args["--" + name].split(",")) for name in ("stdout", "stderr")}
    Server(control, pipes).serve()


if __name__ == "__main__":
    main()
