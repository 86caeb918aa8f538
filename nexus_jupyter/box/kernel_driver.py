"""Inside a box: one IPython kernel kept alive and driven with jupyter_client.

The agent starts this driver on the first stateful Python run (then forwards
every ``execute`` request to its Unix socket).  The driver starts a real
ipykernel over IPC sockets in the box's run directory (no network needed),
executes cells one at a time, and streams what the kernel publishes as
newline-delimited JSON events:

    {"ev": "stdout"|"stderr", "data": text}
    {"ev": "display", "data": {mime: ...}, "metadata": {...}}       display_data
    {"ev": "result", "data": {...}, "metadata": {...}}              execute_result
    {"ev": "exception", "ename": ..., "evalue": ..., "traceback": [...]}
    {"ev": "end", "exit_code": 0|1|..., "execution_time": s, "timed_out": bool, "restarted": bool}

On timeout the kernel is interrupted (state kept); a kernel that does not
stop, or that died, is restarted with a visible message (state lost).

Needs jupyter_client and ipykernel in the box's Python: the local provider
runs the host's environment, the default Docker image installs them.
"""

import ctypes
import json
import os
import queue
import re
import signal
import socket
import sys
import threading
import time

# The agent sits beside this file (the driver runs without -I, so its directory is on sys.path).
from agent import _kill_tree, _oom_kills, _processes
from jupyter_client.manager import KernelManager

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
INTERRUPT_GRACE = 5.0  # seconds an interrupted cell has to stop before the kernel is restarted
PR_SET_CHILD_SUBREAPER = 36


class Driver:
    def __init__(self, run_dir, workdir):
        self.run_dir = run_dir
        self.workdir = workdir
        self.lock = threading.Lock()  # one cell at a time, as a kernel runs them
        self.manager = None
        self.client = None
        self.start()

    # ---- the kernel
    def start(self):
        env = dict(os.environ)
        # Figures go to the notebook as images (the inline backend), not to Agg.
        env.pop("MPLBACKEND", None)
        self.manager = KernelManager(
            transport="ipc",
            ip=os.path.join(self.run_dir, "kernel"),
            connection_file=os.path.join(self.run_dir, "kernel.json"),
        )
        self.manager.start_kernel(
            cwd=self.workdir, env=env, extra_arguments=["--HistoryManager.enabled=False", "--colors=NoColor"]
        )
        self.client = self.manager.blocking_client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=120)

    def restart(self):
        try:
            self.client.stop_channels()
            self.manager.shutdown_kernel(now=True)
        except Exception:  # the old kernel may be beyond saving
            pass
        self.start()

    def kernel_pid(self):
        provisioner = getattr(self.manager, "provisioner", None)
        process = getattr(provisioner, "process", None)
        return getattr(process, "pid", None)

    def kill_cell_processes(self):
        """Processes a timed-out or cancelled cell started die with it (the kernel itself lives on).

        The driver is a child subreaper, so a process the cell started that
        double-forked or called setsid is still our descendant, not the agent's."""
        _kill_tree(spare={self.kernel_pid()}, reap=self.reap_orphans)

    def reap_orphans(self):
        """Collect exited orphans that were handed to us (never the kernel: its manager waits for it)."""
        kernel = self.kernel_pid()
        for pid in _zombie_children(os.getpid()):
            if pid != kernel:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    # ---- one cell
    def execute(self, request, send, client_gone):
        code = request.get("code", "")
        timeout = float(request.get("timeout", 30))
        limit = int(request.get("max_output_chars", 1 << 20))
        with self.lock:
            started = time.monotonic()
            oom_kills_before = _oom_kills()
            self._drain_iopub()
            msg_id = self.client.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
            sent = {"stdout": 0, "stderr": 0}
            dropped = {"stdout": 0, "stderr": 0}
            outcome = {"exit_code": 0, "timed_out": False, "restarted": False}
            deadline = started + timeout
            interrupted_at = None
            while True:
                now = time.monotonic()
                if interrupted_at is None and (now > deadline or client_gone.is_set()):
                    outcome["timed_out"] = not client_gone.is_set()
                    self.manager.interrupt_kernel()
                    self.kill_cell_processes()
                    interrupted_at = now
                if interrupted_at is not None and now - interrupted_at > INTERRUPT_GRACE:
                    send(
                        {
                            "ev": "stderr",
                            "data": "\n[nexus: the Python kernel did not stop when interrupted and "
                            "was restarted: its state was lost]\n",
                        }
                    )
                    send({"ev": "starting"})  # the host allows for the new kernel's start
                    self.kill_cell_processes()
                    self.restart()
                    outcome["restarted"] = True
                    break
                if not self.manager.is_alive():
                    out_of_memory = _oom_kills() > oom_kills_before
                    send({"ev": "stderr", "data": self._death_note()})
                    send({"ev": "starting"})
                    self.kill_cell_processes()
                    outcome["oom_killed"] = out_of_memory
                    outcome["exit_code"] = 137
                    self.restart()
                    outcome["restarted"] = True
                    break
                try:
                    message = self.client.get_iopub_msg(timeout=0.05)
                except queue.Empty:
                    continue
                if message["parent_header"].get("msg_id") != msg_id:
                    continue
                kind = message["msg_type"]
                content = message["content"]
                if kind == "stream":
                    name = content["name"] if content["name"] in sent else "stdout"
                    text = content["text"]
                    room = max(limit - sent[name], 0)
                    if len(text) > room:
                        dropped[name] += len(text) - room
                        text = text[:room]
                    sent[name] += len(text)
                    if text:
                        send({"ev": name, "data": text})
                elif kind in ("display_data", "update_display_data"):
                    send({"ev": "display", "data": content.get("data", {}), "metadata": content.get("metadata", {})})
                elif kind == "execute_result":
                    send(
                        {
                            "ev": "result",
                            "data": content.get("data", {}),
                            "metadata": content.get("metadata", {}),
                            "execution_count": content.get("execution_count"),
                        }
                    )
                elif kind == "error" and interrupted_at is not None and content.get("ename") == "KeyboardInterrupt":
                    continue  # our own interrupt (timeout, cancel): the caller is told so, not shown a traceback
                elif kind == "error":
                    outcome["exit_code"] = 1
                    traceback = [ANSI.sub("", line) for line in content.get("traceback", [])]
                    send(
                        {
                            "ev": "exception",
                            "ename": content.get("ename"),
                            "evalue": content.get("evalue"),
                            "traceback": traceback,
                        }
                    )
                elif kind == "status" and content.get("execution_state") == "idle":
                    break
            for name, count in dropped.items():
                if count:
                    send(
                        {
                            "ev": name,
                            "data": "\n[nexus: %s truncated: %d characters over the %d-character "
                            "limit were dropped]\n" % (name, count, limit),
                        }
                    )
            if outcome["timed_out"]:
                outcome["exit_code"] = 124
            outcome["execution_time"] = round(time.monotonic() - started, 4)
            outcome["ev"] = "end"
            send(outcome)
            self.reap_orphans()  # what the cell left behind and ended since (after the answer: off its time)

    def _drain_iopub(self):
        while True:
            try:
                self.client.get_iopub_msg(timeout=0)
            except queue.Empty:
                return

    def _death_note(self):
        process = getattr(getattr(self.manager, "provisioner", None), "process", None)
        status = process.poll() if process is not None else None
        how = "killed by signal %d" % -status if status is not None and status < 0 else "exited (%s)" % status
        return "\n[nexus: the Python kernel %s and was restarted: its state was lost]\n" % how


def _zombie_children(parent):
    return [pid for pid, state, ppid in _processes() if state == b"Z" and ppid == parent]


def serve_connection(driver, conn):
    reader = conn.makefile("rb")
    client_gone = threading.Event()
    lock = threading.Lock()

    def send(event):
        with lock:
            try:
                conn.sendall((json.dumps(event) + "\n").encode())
            except OSError:
                client_gone.set()

    def watch():
        # A client that hangs up cancels its cell (as the kernel's stop button does).
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        client_gone.set()

    try:
        request = json.loads(reader.readline() or b"{}")
        op = request.get("op")
        if op == "execute":
            threading.Thread(target=watch, daemon=True).start()
            driver.execute(request, send, client_gone)
        elif op == "ping":
            send({"ev": "end", "kernel_pid": driver.kernel_pid()})
        elif op == "restart":
            with driver.lock:
                driver.restart()
            send({"ev": "end"})
        else:
            send({"ev": "error", "message": "bad request"})
    except (OSError, ValueError):
        pass
    finally:
        conn.close()


def main():
    args = {flag: sys.argv[i + 1] for i, flag in enumerate(sys.argv) if flag.startswith("--")}
    socket_path = args["--socket"]
    # Orphans of the cells (setsid, double fork) are handed to us, not to the
    # agent, so a timeout or cancel can kill every process a cell started.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    driver = Driver(os.path.dirname(socket_path), args.get("--workdir", os.getcwd()))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    partial = socket_path + ".starting"
    if os.path.exists(partial):
        os.unlink(partial)
    listener.bind(partial)
    listener.listen(16)
    os.rename(partial, socket_path)  # the socket appears only once the kernel is ready
    signal.signal(signal.SIGTERM, lambda *_: (driver.manager.shutdown_kernel(now=True), os._exit(0)))
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(driver, conn), daemon=True).start()


if __name__ == "__main__":
    main()
