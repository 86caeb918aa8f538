"""The E2B provider: sandboxes in E2B's cloud, through the ``e2b-code-interpreter`` SDK.

A plugin on the provider boundary (registered by the ``nexus_jupyter.providers``
entry point): the store stays the truth and this module maps each operation onto
the SDK.  What a process needs to reach a sandbox is in the row's
``provider_state`` (E2B's sandbox id), so any process can operate any sandbox;
the per-sandbox access token E2B hands out is fetched by ``Sandbox.connect`` in
each process and never stored, and ``E2B_API_KEY`` is read from the environment
at each call and never stored, logged or shown.

- E2B's own timeout mirrors our expiry (the idle TTL plus the grace a local box's
  agent also gets), set at create and pushed forward before every run, so a
  sandbox whose row expired dies on E2B's side even if none of our processes is
  alive to reap it.
- Every sandbox carries metadata naming our store (``nexus_store``) and row; the
  reaper's orphan sweep kills E2B sandboxes of this store that have no live row.
- Stateful Python runs through ``run_code`` (the template's Jupyter kernel), its
  results mapped to MIME bundles as the local runtime makes them; Bash, JavaScript
  and fresh Python run through ``commands.run`` as processes with exit codes.
"""

from __future__ import annotations

import os
import secrets
import shlex
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..agent_client import CappedStream
from ..errors import (
    AgentUnreachable,
    InvalidArgument,
    PathNotFound,
    ProviderNotSupported,
    ProviderUnavailable,
    QuotaExceeded,
    SandboxError,
)
from .base import BoxSpec, Cancel, Feature, OutputCallback, Provider, ResultCallback

KEY_REQUIRED = (
    "E2B API key required: set E2B_API_KEY to a key from https://e2b.dev/dashboard?tab=keys "
    "(export E2B_API_KEY=e2b_...)"
)
PAUSE_REFUSED = "E2B doesn't support pause/resume. Use stop to destroy the sandbox."  # the seed's words
DEFAULT_TEMPLATE = "code-interpreter-v1"  # the SDK's Sandbox.default_template
HOME = "/home/user"
# Code up to this size goes on the command line; longer code is written to a file first
# (one argument may hold at most 128 KiB on Linux).
INLINE_CODE_BYTES = 100_000
COMMANDS = {"bash": None, "python": "python3", "javascript": "node"}
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
FILE_TYPES = {"file": "file", "dir": "dir"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def result_bundle(result) -> dict:
    """An E2B ``Result`` as the local runtime's rich output: a MIME bundle, is_main_result."""
    data = {mime: getattr(result, key) for key, mime in RESULT_MIME_TYPES.items() if getattr(result, key, None)}
    for mime, value in (getattr(result, "extra", None) or {}).items():
        data.setdefault(mime, value)
    return {"data": data, "metadata": {}, "is_main_result": bool(result.is_main_result)}


class E2BProvider(Provider):
    name = "e2b"
    display_name = "E2B"
    features = frozenset(
        {Feature.PAUSE, Feature.FILES, Feature.STATEFUL_PYTHON, Feature.NETWORK_POLICY, Feature.METRICS}
    )

    def __init__(self, data_dir: Path):
        super().__init__(data_dir)
        self._connected: dict[str, object] = {}  # E2B id -> the SDK's Sandbox, connected in this process
        self._found: dict[str, str] = {}  # our id -> E2B id, from the last listing
        self._lock = threading.Lock()

    # ---- the SDK, the key and errors
    @staticmethod
    def _sdk():
        """The SDK module (imported on first use: ~0.7 s, paid by E2B users only)."""
        import e2b_code_interpreter

        return e2b_code_interpreter

    @staticmethod
    def _api_key() -> str:
        key = os.environ.get("E2B_API_KEY", "").strip()
        if not key:
            raise ProviderUnavailable(KEY_REQUIRED)
        return key

    def prepare(self) -> None:
        self._sdk()

    @contextmanager
    def _errors(self, doing: str, *, template: str | None = None, not_found=None, refused=None):
        """SDK and network failures as one line each, saying what happened and what to do.
        ``not_found``: what to raise when E2B has no such sandbox or file; ``refused``:
        what to raise when E2B refuses the operation to this team (403, 501)."""
        import httpx

        e2b = self._sdk()
        try:
            yield
        except SandboxError:
            raise
        except e2b.NotFoundException as exc:
            if not_found is None:
                raise SandboxError(f"E2B could not {doing}: {_first_line(exc)}") from None
            raise not_found from None
        except e2b.AuthenticationException:
            raise ProviderUnavailable(
                f"E2B rejected the API key (E2B_API_KEY) when asked to {doing}: "
                "check it at https://e2b.dev/dashboard?tab=keys"
            ) from None
        except e2b.RateLimitException as exc:
            raise QuotaExceeded(
                f"E2B refused to {doing}: {_first_line(exc)} (the team's rate limit or concurrent-sandbox quota): "
                "stop a sandbox or wait, then try again"
            ) from None
        except e2b.ServiceBusyException:
            raise ProviderUnavailable(f"E2B is busy and could not {doing}: try again shortly") from None
        except (e2b.SandboxNotRunningException, e2b.SandboxUnreachableException) as exc:
            raise AgentUnreachable(f"the sandbox is no longer running on E2B ({_first_line(exc)})") from None
        except httpx.TimeoutException:
            raise ProviderUnavailable(
                f"E2B did not answer in time when asked to {doing}: check the network "
                "(and https://status.e2b.dev), then try again"
            ) from None
        except httpx.TransportError as exc:
            where = os.environ.get("E2B_API_URL") or f"api.{os.environ.get('E2B_DOMAIN') or 'e2b.app'}"
            raise ProviderUnavailable(
                f"cannot reach E2B ({where}) to {doing}: {_first_line(exc)}; check the network or E2B_DOMAIN"
            ) from None
        except e2b.SandboxException as exc:
            status = getattr(exc, "status_code", None)
            if template is not None and status == 404:
                raise InvalidArgument(
                    f"E2B has no template {template!r}: check --template or E2B_TEMPLATE_ID"
                ) from None
            if refused is not None and status in (403, 501):
                raise refused from None
            raise SandboxError(f"E2B could not {doing}: {_first_line(exc)}") from None

    def _connect(self, state: dict):
        """The SDK's handle on a running sandbox: connected once per process, then reused."""
        e2b_id = state["e2b_id"]
        with self._lock:
            sandbox = self._connected.get(e2b_id)
        if sandbox is None:
            with self._errors("reach the sandbox", not_found=AgentUnreachable("the sandbox is no longer on E2B")):
                sandbox = self._sdk().Sandbox.connect(e2b_id, api_key=self._api_key())
            with self._lock:
                self._connected[e2b_id] = sandbox
        return sandbox

    def _forget(self, state: dict) -> None:
        with self._lock:
            self._connected.pop(state.get("e2b_id"), None)

    def _store_id(self) -> str:
        """This store's id, carried in every sandbox's metadata (the orphan sweep's key).
        Made once per data dir; random, so no host path is shown to E2B."""
        path = self.data_dir / "e2b-store-id"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        made = secrets.token_hex(8)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(made + "\n")
        try:
            os.link(partial, path)  # the first process to link wins; the others read its id
        except FileExistsError:
            pass
        finally:
            partial.unlink()
        return path.read_text().strip()

    # ---- lifecycle
    def create(self, spec: BoxSpec) -> dict:
        e2b = self._sdk()
        key = self._api_key()
        template = spec.template_id or os.environ.get("E2B_TEMPLATE_ID") or DEFAULT_TEMPLATE
        metadata = {
            "nexus_store": self._store_id(),
            "nexus_sandbox_id": spec.sandbox_id,
            "nexus_name": spec.name,
            "nexus_user": spec.owner,
            "nexus_agent": spec.agent_id or "",
            "nexus_tenant": spec.tenant_id or "default",
        }
        timeout = int(spec.idle_timeout_seconds)
        with self._errors("create a sandbox", template=template):
            sandbox = e2b.Sandbox.create(
                template=template,
                timeout=timeout,
                metadata=metadata,
                envs=spec.env or None,
                allow_internet_access=spec.allow_internet,
                api_key=key,
            )
        with self._lock:
            self._connected[sandbox.sandbox_id] = sandbox
        return {"e2b_id": sandbox.sandbox_id, "template": template, "idle_timeout": timeout}

    def _e2b_id(self, sandbox_id: str, state: dict) -> str | None:
        """E2B's id of our sandbox: from its row, else from E2B's listing (an orphan's row has none)."""
        if state.get("e2b_id"):
            return state["e2b_id"]
        if sandbox_id not in self._found:
            self.box_ids()
        return self._found.get(sandbox_id)

    def destroy(self, sandbox_id: str, state: dict) -> None:
        e2b_id = self._e2b_id(sandbox_id, state)
        if e2b_id is None:
            return  # never created on E2B (a create that failed), or gone
        with self._errors("stop the sandbox"):
            self._sdk().Sandbox.kill(e2b_id, api_key=self._api_key())  # False: it was gone already
        self._forget({"e2b_id": e2b_id})

    def pause(self, sandbox_id: str, state: dict) -> None:
        with self._errors("pause the sandbox", refused=ProviderNotSupported(PAUSE_REFUSED)):
            self._sdk().Sandbox.pause(state["e2b_id"], api_key=self._api_key())  # False: paused already
        self._forget(state)

    def resume(self, sandbox_id: str, state: dict) -> None:
        gone = SandboxError(f"Sandbox {sandbox_id} is no longer on E2B: stop it and create a new one")
        with self._errors("resume the sandbox", refused=ProviderNotSupported(PAUSE_REFUSED), not_found=gone):
            # Connecting is how E2B resumes a paused sandbox; its timeout starts again.
            sandbox = self._sdk().Sandbox.connect(
                state["e2b_id"], timeout=state.get("idle_timeout"), api_key=self._api_key()
            )
        with self._lock:
            self._connected[state["e2b_id"]] = sandbox

    def inspect(self, sandbox_id: str, state: dict) -> str:
        e2b_id = self._e2b_id(sandbox_id, state)
        if e2b_id is None:
            return "stopped"
        try:
            with self._errors("look up the sandbox", not_found=LookupError()):
                info = self._sdk().Sandbox.get_info(e2b_id, api_key=self._api_key())
        except LookupError:
            return "stopped"
        return "paused" if str(getattr(info.state, "value", info.state)) == "paused" else "active"

    def box_ids(self) -> set[str]:
        e2b = self._sdk()
        query = e2b.SandboxQuery(
            metadata={"nexus_store": self._store_id()},
            state=[e2b.SandboxState.RUNNING, e2b.SandboxState.PAUSED],
        )
        found: dict[str, str] = {}
        with self._errors("list sandboxes"):
            pages = e2b.Sandbox.list(query=query, limit=100, api_key=self._api_key())
            while pages.has_next:
                for listed in pages.next_items():
                    ours = (listed.metadata or {}).get("nexus_sandbox_id")
                    if ours:
                        found[ours] = listed.sandbox_id
        self._found = found
        return set(found)

    def touch(self, sandbox_id: str, state: dict, idle_timeout_seconds: float) -> None:
        with self._errors("extend the sandbox's timeout"):
            self._sdk().Sandbox.set_timeout(state["e2b_id"], int(idle_timeout_seconds), api_key=self._api_key())

    @contextmanager
    def _timeout_pushed(self, state: dict, run_seconds: float):
        """E2B's timeout is pushed past the run and the idle time after it, alongside the
        run (one round trip hidden behind the code's own); a failure is the run's to report."""
        seconds = int(state.get("idle_timeout") or 0) + int(run_seconds) + 1

        def push():
            try:
                self.touch("", state, seconds)
            except SandboxError:
                pass

        pusher = threading.Thread(target=push, name="e2b-set-timeout", daemon=True)
        pusher.start()
        try:
            yield
        finally:
            pusher.join()

    # ---- code
    def run(
        self,
        sandbox_id: str,
        state: dict,
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
        e2b = self._sdk()
        sandbox = self._connect(state)
        streams = {"stdout": CappedStream("stdout", max_output_chars, on_stdout),
                   "stderr": CappedStream("stderr", max_output_chars, on_stderr)}  # fmt: skip
        outcome = {"exit_code": 0, "timed_out": False, "oom_killed": False}
        started = time.monotonic()
        with self._timeout_pushed(state, timeout), self._errors("run the code"):
            command, script = self._command(language, code)
            if script is not None:
                sandbox.files.write(script, code)
            handle = sandbox.commands.run(
                command,
                background=True,
                envs=env or None,
                timeout=timeout,  # envd kills the process at this deadline (connect-timeout-ms)
                retain_output=False,  # kept (and capped) by our streams instead
            )
            if cancel is not None:
                cancel.on_cancel(lambda: self._kill_quietly(sandbox, handle.pid))
            try:
                outcome["exit_code"] = self._wait(handle, streams).exit_code
            except e2b.CommandExitException as exc:
                outcome["exit_code"] = exc.exit_code
            except e2b.TimeoutException as exc:
                if isinstance(exc, e2b.SandboxNotRunningException):
                    raise
                outcome["timed_out"] = True
                outcome["exit_code"] = 124
                self._kill_quietly(sandbox, handle.pid)
            except BaseException:  # an interrupted caller (Ctrl-C, a notebook's stop button)
                self._kill_quietly(sandbox, handle.pid)  # envd keeps a process its client left
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

    @staticmethod
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

    @staticmethod
    def _command(language: str, code: str) -> tuple[str, str | None]:
        """The shell command that runs ``code`` in a fresh process, and the file to write the
        code to first (None when it fits on the command line)."""
        program = COMMANDS[language]
        if len(code.encode("utf-8")) <= INLINE_CODE_BYTES:
            if program is None:
                return code, None
            flag = "-c" if language == "python" else "-e"
            return f"{program} {flag} {shlex.quote(code)}", None
        script = f"/tmp/.nexus-run-{secrets.token_hex(6)}{SUFFIXES[language]}"
        runner = f"{program or 'bash'} {script}"
        return f"{runner}; status=$?; rm -f {script}; exit $status", script

    @staticmethod
    def _kill_quietly(sandbox, pid: int) -> None:
        try:
            sandbox.commands.kill(pid)
        except Exception:
            pass  # it ended by itself, or the sandbox did: nothing left to kill

    def execute(
        self,
        sandbox_id: str,
        state: dict,
        code: str,
        *,
        timeout: float,
        max_output_chars: int,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_result: ResultCallback | None = None,
        filename: str | None = None,
        execution_count: int | None = None,
        cancel: Cancel | None = None,
    ) -> dict:
        e2b = self._sdk()
        sandbox = self._connect(state)
        streams = {"stdout": CappedStream("stdout", max_output_chars, on_stdout),
                   "stderr": CappedStream("stderr", max_output_chars, on_stderr)}  # fmt: skip
        results: list[dict] = []
        outcome = {"exit_code": 0, "timed_out": False, "oom_killed": False, "error": None}

        def result_arrived(result) -> None:
            bundle = result_bundle(result)
            results.append(bundle)
            if on_result is not None:
                on_result(bundle)

        started = time.monotonic()
        with self._timeout_pushed(state, timeout), self._errors("run the code"):
            try:
                execution = sandbox.run_code(
                    code,
                    # The client hanging up at the deadline makes the template's server
                    # interrupt the cell (its state stays), as our own runtime does.
                    timeout=timeout / RUN_CODE_DEADLINE_FACTOR,
                    on_stdout=lambda message: streams["stdout"].add(message.line),
                    on_stderr=lambda message: streams["stderr"].add(message.line),
                    on_result=result_arrived,
                )
            except e2b.TimeoutException as exc:
                if "Execution timed out" not in str(
                    exc
                ):  # the sandbox is gone, or the request (not the code) timed out
                    raise AgentUnreachable(f"the sandbox did not answer: {_first_line(exc)}") from None
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

    # ---- files
    @staticmethod
    def _path(path: str) -> str:
        return path if path.startswith("/") else f"{HOME}/{path}".rstrip("/").replace("/./", "/")

    def write_file(self, sandbox_id: str, state: dict, path: str, source) -> dict:
        sandbox = self._connect(state)
        size = 0

        def counted():  # an iterable: the SDK streams it (octet-stream) rather than holding it
            nonlocal size
            if isinstance(source, (bytes, bytearray, memoryview)):
                size = len(source)
                yield bytes(source)
                return
            while block := source.read(1 << 20):
                size += len(block)
                yield block

        with self._errors(f"write {path}"):
            written = sandbox.files.write(self._path(path), counted())
        return {"path": written.path, "size": size}

    def read_file_chunks(self, sandbox_id: str, state: dict, path: str, max_bytes: int) -> Iterator[bytes]:
        sandbox = self._connect(state)
        received = 0
        with self._errors(f"read {path}", not_found=PathNotFound(f"no such file or directory: {path}")):
            for chunk in sandbox.files.read(self._path(path), format="stream"):
                received += len(chunk)
                if received > max_bytes:
                    raise SandboxError(f"the file is over the {max_bytes}-byte transfer limit")
                yield chunk

    def list_files(self, sandbox_id: str, state: dict, path: str) -> dict:
        sandbox = self._connect(state)
        target = self._path(path)
        with self._errors(f"list {path}", not_found=PathNotFound(f"no such file or directory: {path}")):
            entries = sandbox.files.list(target, depth=1)
        return {
            "path": target,
            "entries": sorted(
                (
                    {
                        "name": entry.name,
                        "path": entry.path,
                        "type": "symlink" if entry.symlink_target else FILE_TYPES.get(entry.type.value, "file"),
                        "size": entry.size,
                        "modified": entry.modified_time.timestamp(),
                    }
                    for entry in entries
                ),
                key=lambda entry: entry["name"],
            ),
        }

    def metrics(self, sandbox_id: str, state: dict) -> dict:
        with self._errors("read the sandbox's metrics"):
            samples = self._sdk().Sandbox.get_metrics(state["e2b_id"], api_key=self._api_key())
        latest = samples[-1] if samples else None
        return {
            "cpu_seconds": None,  # E2B reports a percentage, not time used
            "memory_bytes": latest.mem_used if latest else None,
            "memory_peak_bytes": None,
            "memory_limit_bytes": latest.mem_total if latest else None,
            "processes": None,
            "disk_used_bytes": latest.disk_used if latest else None,
            "disk_limit_bytes": latest.disk_total if latest else None,
        }
