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
import posixpath
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..atomic_file import read_or_write_once
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
from .e2b_code import first_line, run_cell, run_command

KEY_REQUIRED = (
    "E2B API key required: set E2B_API_KEY to a key from https://e2b.dev/dashboard?tab=keys "
    "(export E2B_API_KEY=e2b_...)"
)
PAUSE_REFUSED = "E2B doesn't support pause/resume. Use stop to destroy the sandbox."  # the seed's words
DEFAULT_TEMPLATE = "code-interpreter-v1"  # the SDK's Sandbox.default_template
HOME = "/home/user"
FILE_TYPES = {"file": "file", "dir": "dir", "symlink": "symlink"}
# E2B ends a sandbox at most this long after its last use, whatever our TTL (24 h on
# its Pro plan, 1 h on Hobby: a Hobby team keeps TTLs under an hour).
E2B_MAX_TIMEOUT_SECONDS = 24 * 3600
# Seconds a file transfer may keep a sandbox alive beyond its idle TTL.
FILE_SECONDS = 300


def _where() -> str:
    """Where the SDK sends control-plane calls, for messages (no credentials from the URL)."""
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("E2B_API_URL") or "")
    return (
        f"{url.scheme}://{url.hostname}{f':{url.port}' if url.port else ''}"
        if url.hostname
        else (f"api.{os.environ.get('E2B_DOMAIN') or 'e2b.app'}")
    )


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
                raise SandboxError(f"E2B could not {doing}: {first_line(exc)}") from None
            raise not_found from None
        except e2b.AuthenticationException:
            raise ProviderUnavailable(
                f"E2B rejected the API key (E2B_API_KEY) when asked to {doing}: "
                "check it at https://e2b.dev/dashboard?tab=keys"
            ) from None
        except e2b.RateLimitException as exc:
            raise QuotaExceeded(
                f"E2B refused to {doing}: {first_line(exc)} (the team's rate limit or concurrent-sandbox quota): "
                "stop a sandbox or wait, then try again"
            ) from None
        except e2b.ServiceBusyException:
            raise ProviderUnavailable(f"E2B is busy and could not {doing}: try again shortly") from None
        except (e2b.SandboxNotRunningException, e2b.SandboxUnreachableException) as exc:
            raise AgentUnreachable(f"the sandbox is no longer running on E2B ({first_line(exc)})") from None
        except httpx.TimeoutException:
            raise ProviderUnavailable(
                f"E2B did not answer in time when asked to {doing}: check the network "
                "(and https://status.e2b.dev), then try again"
            ) from None
        except httpx.TransportError as exc:
            where = _where()
            raise ProviderUnavailable(
                f"cannot reach E2B ({where}) to {doing}: {first_line(exc)}; check the network or E2B_DOMAIN"
            ) from None
        except e2b.SandboxException as exc:
            status = getattr(exc, "status_code", None)
            if template is not None and status == 404:
                raise InvalidArgument(
                    f"E2B has no template {template!r}: check --template or E2B_TEMPLATE_ID"
                ) from None
            if refused is not None and status in (403, 501):
                raise refused from None
            raise SandboxError(f"E2B could not {doing}: {first_line(exc)}") from None
        except ValueError as exc:  # JSONDecodeError and kin: the SDK read an answer that is not E2B's JSON
            raise SandboxError(
                f"E2B could not {doing}: its answer was not what E2B sends (a proxy or an outage page?): "
                f"{type(exc).__name__}: {first_line(exc)}"
            ) from None
        except Exception as exc:  # the SDK's own (a Connect error, an odd body): still one line
            raise SandboxError(f"E2B could not {doing}: {type(exc).__name__}: {first_line(exc)}") from None

    def _connect(self, state: dict):
        """The SDK's handle on a running sandbox: connected once per process, then reused."""
        e2b_id, key = state["e2b_id"], self._api_key()
        with self._lock:
            sandbox = self._connected.get(e2b_id)
        if sandbox is None or sandbox.connection_config.api_key != key:  # new, or the key changed
            with self._errors("reach the sandbox", not_found=AgentUnreachable("the sandbox is no longer on E2B")):
                sandbox = self._sdk().Sandbox.connect(e2b_id, api_key=key)
            with self._lock:
                self._connected[e2b_id] = sandbox
        return sandbox

    def _forget(self, state: dict) -> None:
        with self._lock:
            self._connected.pop(state.get("e2b_id"), None)

    def reachable(self, state: dict) -> bool:
        return True  # E2B's cloud answers every host with the team's key

    def fleet_wide(self) -> bool:
        return True

    def _store_id(self) -> str:
        """This store's id, carried in every sandbox's metadata (the orphan sweep's key).
        Made once per data dir; random, so no host path is shown to E2B."""
        if self.store_id:  # a shared database's: every host of the fleet sweeps the same sandboxes
            return self.store_id
        path = self.data_dir / "e2b-store-id"
        try:  # reading too: a directory or an unreadable file in its place is one line, not a traceback
            return read_or_write_once(path, secrets.token_hex(8))
        except OSError as exc:
            raise ProviderUnavailable(f"cannot keep the E2B store id in {path}: {exc.strerror or exc}") from None

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
        timeout = min(int(spec.idle_timeout_seconds), E2B_MAX_TIMEOUT_SECONDS)
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
        key = self._api_key()  # first: a reaping pass without a key does not pay the SDK's import
        e2b = self._sdk()
        query = e2b.SandboxQuery(
            metadata={"nexus_store": self._store_id()},
            state=[e2b.SandboxState.RUNNING, e2b.SandboxState.PAUSED],
        )
        found: dict[str, str] = {}
        with self._errors("list sandboxes"):
            pages = e2b.Sandbox.list(query=query, limit=100, api_key=key)
            while pages.has_next:
                for listed in pages.next_items():
                    ours = (listed.metadata or {}).get("nexus_sandbox_id")
                    if ours:
                        found[ours] = listed.sandbox_id
        self._found = found
        return set(found)

    def touch(self, sandbox_id: str, state: dict, idle_timeout_seconds: float) -> None:
        """Push E2B's timeout to at least ``idle_timeout_seconds`` from now.  Through ``connect``,
        whose timeout only ever extends: ``set_timeout`` would let a short run cut the time of
        a long one under way in another process."""
        seconds = max(1, min(int(idle_timeout_seconds), E2B_MAX_TIMEOUT_SECONDS))
        with self._errors("extend the sandbox's timeout"):
            self._sdk().Sandbox.connect(state["e2b_id"], timeout=seconds, api_key=self._api_key())

    @contextmanager
    def _timeout_pushed(self, state: dict, run_seconds: float):
        """E2B's timeout is pushed past the run (or transfer) and the idle time after it,
        alongside it (one round trip hidden behind the code's own); a failure is the run's
        to report."""
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
        sandbox = self._connect(state)
        with self._timeout_pushed(state, timeout), self._errors("run the code"):
            return run_command(
                self._sdk(),
                sandbox,
                language,
                code,
                timeout=timeout,
                max_output_chars=max_output_chars,
                env=env,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                cancel=cancel,
            )

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
        # E2B's kernel names and numbers its cells itself: no file name, no count of ours.
        sandbox = self._connect(state)
        with self._timeout_pushed(state, timeout), self._errors("run the code"):
            return run_cell(
                self._sdk(),
                sandbox,
                code,
                timeout=timeout,
                max_output_chars=max_output_chars,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                on_result=on_result,
            )

    # ---- files
    @staticmethod
    def _path(path: str) -> str:
        """A path in the sandbox: relative ones are under the home, as in every provider."""
        return posixpath.normpath(posixpath.join(HOME, path))

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

        with self._timeout_pushed(state, FILE_SECONDS), self._errors(f"write {path}"):
            written = sandbox.files.write(self._path(path), counted())
        return {"path": written.path, "size": size}

    def read_file_chunks(self, sandbox_id: str, state: dict, path: str, max_bytes: int) -> Iterator[bytes]:
        sandbox = self._connect(state)
        received = 0
        with (
            self._timeout_pushed(state, FILE_SECONDS),
            self._errors(f"read {path}", not_found=PathNotFound(f"no such file or directory: {path}")),
            sandbox.files.read(self._path(path), format="stream") as reader,  # closed however we leave
        ):
            for chunk in reader:
                received += len(chunk)
                if received > max_bytes:
                    raise SandboxError(f"the file is over the {max_bytes}-byte transfer limit")
                yield chunk

    def list_files(self, sandbox_id: str, state: dict, path: str) -> dict:
        sandbox = self._connect(state)
        target = self._path(path)
        with (
            self._timeout_pushed(state, 0),
            self._errors(f"list {path}", not_found=PathNotFound(f"no such file or directory: {path}")),
        ):
            entries = sandbox.files.list(target, depth=1)
        return {
            "path": target,
            "entries": sorted(
                (
                    {
                        "name": entry.name,
                        "path": entry.path,
                        "type": "symlink"
                        if entry.symlink_target
                        else FILE_TYPES.get(getattr(entry.type, "value", None), "file"),
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
