"""Running code in an E2B sandbox: Bash, JavaScript and fresh Python as commands
(``commands.run``), stateful Python as cells of the template's Jupyter kernel
(``run_code``), each giving what every provider's ``run``/``execute`` gives: output
streamed and capped, exit codes, timeouts at our timeout, rich results as MIME bundles.
The provider (e2b.py) connects, keeps E2B's timeout ahead and maps the SDK's errors."""

from __future__ import annotations

import json
import secrets
import shlex
import threading
import time

from ..agent_client import MAX_RESULTS_BYTES, CappedStream
from ..errors import AgentUnreachable
from .base import Cancel, OutputCallback, ResultCallback

# Code up to this size goes on the command line; longer code is written to a file first
# (one argument may hold at most 128 KiB on Linux).
INLINE_CODE_BYTES = 100_000
COMMANDS = {"bash": None, "python": "python3", "javascript": "node"}
RUN_MARK = "NEXUS_RUN"  # the environment variable each process of a run inherits
SUFFIXES = {"python": ".py", "javascript": ".js", "bash": ".sh"}
# The SDK's run_code deadline, with its pyqwest transport, is twice the timeout it is
# given (read and write phases add up: measured, PROTOCOL.md §4).  A test asserts a
# cell times out at our timeout, so an SDK that changes this fails loudly.
RUN_CODE_DEADLINE_FACTOR = 2.0
# The code interpreter's result keys and the MIME types they are (its `extra` holds the rest).
RESULT_MIME_TYPES = {
    "text": "text/plain",
    "html": "text/html",
    "markdown": "text/markdown",
    "svg": "image/svg+xml",
    "png": "image/png",
    "jpeg": "image/jpeg",
    "pdf": "application/pdf",
    "latex": "text/latex",
    "json": "application/json",
    "javascript": "application/javascript",
}


class _OutputFlood(Exception):
    """Raised from an output callback to stop reading a cell that writes without end;
    its message says what overflowed."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _streams(limit: int, on_stdout: OutputCallback | None, on_stderr: OutputCallback | None) -> dict:
    """A run's two output streams, kept and capped as the local agent's client keeps them."""
    return {"stdout": CappedStream("stdout", limit, on_stdout), "stderr": CappedStream("stderr", limit, on_stderr)}


def result_bundle(result) -> dict:
    """An E2B ``Result`` as the local runtime's rich output: a MIME bundle, is_main_result."""
    data = {mime: getattr(result, key) for key, mime in RESULT_MIME_TYPES.items() if getattr(result, key, None)}
    for mime, value in (getattr(result, "extra", None) or {}).items():
        data.setdefault(mime, value)
    return {"data": data, "metadata": {}, "is_main_result": bool(result.is_main_result)}


def run_command(
    e2b,
    sandbox,
    language: str,
    code: str,
    *,
    timeout: float,
    max_output_chars: int,
    env: dict | None = None,
    on_stdout: OutputCallback | None = None,
    on_stderr: OutputCallback | None = None,
    cancel: Cancel | None = None,
) -> dict:
    """Run ``code`` in a fresh process of ``sandbox`` (the SDK's ``Sandbox``; ``e2b`` the SDK module)."""
    streams = _streams(max_output_chars, on_stdout, on_stderr)
    outcome = {"exit_code": 0, "timed_out": False, "oom_killed": False}
    started = time.monotonic()
    # Every process of the run carries this mark, so ending the run ends them all: envd
    # signals the command's own pid only, and a child (node's execSync, a pipeline) would stay.
    mark = secrets.token_hex(8)
    command, script = _command(language, code)
    if script is not None:
        sandbox.files.write(script, code)
    handle = sandbox.commands.run(
        command,
        background=True,
        envs={**(env or {}), RUN_MARK: mark},
        timeout=timeout,  # envd kills the command at this deadline (connect-timeout-ms)
        retain_output=False,  # kept (and capped) by our streams instead
    )
    if cancel is not None:
        cancel.on_cancel(lambda: _end_run(sandbox, handle.pid, mark))
    try:
        outcome["exit_code"] = _wait(handle, streams).exit_code
    except e2b.CommandExitException as exc:
        outcome["exit_code"] = exc.exit_code
    except e2b.TimeoutException as exc:
        # A network failure or a paused sandbox raise this too: only the deadline is a timeout.
        if isinstance(exc, e2b.SandboxUnreachableException) or time.monotonic() - started < timeout * 0.95:
            _end_run(sandbox, handle.pid, mark)
            if isinstance(exc, e2b.SandboxNotRunningException):
                raise
            raise AgentUnreachable(f"the sandbox did not answer: {first_line(exc)}") from None
        outcome["timed_out"] = True
        outcome["exit_code"] = 124
        _end_run(sandbox, handle.pid, mark)
    except BaseException:  # an interrupted caller (Ctrl-C, a notebook's stop button)
        _end_run(sandbox, handle.pid, mark)  # envd keeps a process its client left
        raise
    if cancel is not None and cancel.cancelled:
        raise AgentUnreachable("the run was cancelled")
    for stream in streams.values():
        stream.close()
    outcome.update(
        stdout=streams["stdout"].text(),
        stderr=streams["stderr"].text(),
        execution_time=round(time.monotonic() - started, 6),
    )
    return outcome


def _wait(handle, streams: dict):
    """The command's result.  The SDK waits in native code, where a signal cannot reach
    Python, so it waits in a thread and this one stays interruptible (Ctrl-C, a kernel's
    interrupt)."""
    done = threading.Event()
    ended: dict = {}

    def wait():
        try:
            ended["result"] = handle.wait(on_stdout=streams["stdout"].add, on_stderr=streams["stderr"].add)
        except BaseException as exc:
            ended["error"] = exc
        finally:
            done.set()

    threading.Thread(target=wait, name="e2b-command", daemon=True).start()
    while not done.wait(0.1):
        pass
    if "error" in ended:
        raise ended["error"]
    return ended["result"]


def _command(language: str, code: str) -> tuple[str, str | None]:
    """The shell command that runs ``code`` in a fresh process, and the file to write the
    code to first (None when it fits on the command line)."""
    program = COMMANDS[language]
    flag = "-c" if language == "python" else "-e"
    inline = code if program is None else f"{program} {flag} {shlex.quote(code)}"
    if len(inline.encode("utf-8")) <= INLINE_CODE_BYTES:  # measured as sent: quoting adds to it
        return inline, None
    script = f"/tmp/.nexus-run-{secrets.token_hex(6)}{SUFFIXES[language]}"
    runner = f"{program or 'bash'} {script}"
    return f"{runner}; status=$?; rm -f {script}; exit $status", script


def _end_run(sandbox, pid: int, mark: str) -> None:
    """Kill the run's command and every process that carries its mark."""
    sweep = (
        f"for p in $(grep -lsxz {RUN_MARK}={mark} /proc/[0-9]*/environ | cut -d/ -f3); do "
        "kill -9 $p 2>/dev/null; done; true"
    )
    for end in (lambda: sandbox.commands.kill(pid), lambda: sandbox.commands.run(sweep, timeout=10)):
        try:
            end()
        except Exception:
            pass  # ended by itself, or the sandbox did: nothing left to kill


def run_cell(
    e2b,
    sandbox,
    code: str,
    *,
    timeout: float,
    max_output_chars: int,
    on_stdout: OutputCallback | None = None,
    on_stderr: OutputCallback | None = None,
    on_result: ResultCallback | None = None,
) -> dict:
    """Run a cell in the template's Jupyter kernel (its state kept between cells)."""
    streams = _streams(max_output_chars, on_stdout, on_stderr)
    results: list[dict] = []
    outcome = {"exit_code": 0, "timed_out": False, "oom_killed": False, "error": None}

    received = {"chars": 0, "results_bytes": 0}
    ceiling = 8 * max_output_chars + (1 << 20)

    def output(stream: str):
        def arrived(message) -> None:
            received["chars"] += len(message.line)
            if received["chars"] > ceiling:  # the SDK keeps every line too: stop reading
                raise _OutputFlood(f"the cell wrote over {ceiling} characters")
            streams[stream].add(message.line)

        return arrived

    def result_arrived(result) -> None:
        bundle = result_bundle(result)
        received["results_bytes"] += len(json.dumps(bundle))
        if received["results_bytes"] > MAX_RESULTS_BYTES:
            streams["stderr"].add(f"\n[nexus: rich outputs over {MAX_RESULTS_BYTES} bytes were dropped]\n")
            if received["results_bytes"] > 4 * MAX_RESULTS_BYTES:
                raise _OutputFlood(f"the cell displayed over {4 * MAX_RESULTS_BYTES} bytes of rich outputs")
            return
        results.append(bundle)
        if on_result is not None:
            on_result(bundle)

    started = time.monotonic()
    try:
        execution = sandbox.run_code(
            code,
            # The client hanging up at the deadline makes the template's server
            # interrupt the cell (its state stays), as our own runtime does.
            timeout=timeout / RUN_CODE_DEADLINE_FACTOR,
            on_stdout=output("stdout"),
            on_stderr=output("stderr"),
            on_result=result_arrived,
        )
    except _OutputFlood as flood:
        # Leaving the stream makes the template's server interrupt the cell.
        streams["stderr"].add(f"\n[nexus: {flood} and was interrupted]\n")
        outcome["exit_code"] = 1
        execution = None
    except e2b.TimeoutException as exc:
        if "Execution timed out" not in str(exc):  # the sandbox is gone, or a request timed out
            raise AgentUnreachable(f"the sandbox did not answer: {first_line(exc)}") from None
        outcome.update(timed_out=True, exit_code=124)
        execution = None
    if execution is not None and execution.error is not None:
        error = execution.error
        traceback = error.traceback.splitlines() if error.traceback else [f"{error.name}: {error.value}"]
        outcome["error"] = {"name": error.name, "value": error.value, "traceback": traceback}
        outcome["exit_code"] = 1
        # The local runtime shows the traceback on stderr too; so does this one.
        streams["stderr"].add("\n".join(traceback) + "\n")
    for stream in streams.values():
        stream.close()
    outcome.update(
        stdout=streams["stdout"].text(),
        stderr=streams["stderr"].text(),
        results=results,
        execution_time=round(time.monotonic() - started, 6),
    )
    return outcome
