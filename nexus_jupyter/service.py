"""SandboxService: every business rule, behind every front end (CLI, magics, panel, REST).

It owns ownership, TTL (an idle timeout refreshed by every use), state
transitions and validation.  It lives as long as its process (a CLI call, a
notebook kernel, a Jupyter server) and holds what is worth keeping: the store
and the provider instances (Docker's client, the warm pools).  Who is calling
is passed with every call (``Caller``), so one service serves many users.  It
keeps nothing about live sandboxes in memory: each call reads the store, so
any process can operate any sandbox.  Methods return ``models``;
``SandboxManager`` (manager.py) is the seed's API over it, bound to one caller.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import (
    AgentUnreachable,
    InvalidArgument,
    PathNotFound,
    PermissionDenied,
    ProviderNotSupported,
    QuotaExceeded,
    RunCancelled,
    SandboxError,
    SandboxNotFound,
    SandboxStateError,
    SandboxTimeout,
)
from .models import FileEntry, Metrics, RunResult, Sandbox
from .providers.base import BoxSpec, Cancel, Feature, OutputCallback, Provider, ResultCallback, provider_class
from .reaper import Reaper
from .settings import MAX_TIMEOUT_SECONDS, MAX_TTL_MINUTES, Settings
from .store import LIVE_STATUSES, open_store
from .validation import (
    check_code,
    check_env,
    check_path,
    check_text,
    normalize_language,
    positive_number,
    whole_number,
)

DEFAULT_DISK_MB = 512
# A box's files live in memory (tmpfs): they may use all of its memory limit but this.
MEMORY_FOR_PROCESSES_MB = 128
# The agent ends its box itself this long after the TTL, in case no reaper runs.
AGENT_EXPIRY_GRACE_SECONDS = 60
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


class Caller:
    """Who is calling: the user that owns what they create, and whether they see everyone's.
    ``forwarded``: another server of the fleet sent the request here (fleet.py)."""

    __slots__ = ("forwarded", "is_admin", "user_id")

    def __init__(self, user_id: str, is_admin: bool = False, forwarded: bool = False):
        if not isinstance(user_id, str) or not user_id.strip():
            raise InvalidArgument("a user id is required")
        self.user_id = user_id
        self.is_admin = bool(is_admin)
        self.forwarded = forwarded

    def __repr__(self) -> str:
        return f"Caller({self.user_id!r}, is_admin={self.is_admin})"


class SandboxService:
    """Create, run code in, list, pause, resume and stop sandboxes, for any caller.

    ``data_dir`` defaults to ``$NEXUS_DATA_DIR`` (else the Jupyter data dir).
    ``settings`` (settings.py): defaults, limits and pool sizes, each read from its
    environment variable unless a host (config.py) set it.  ``default_provider``
    overrides the setting of that name; ``warm_pool`` sets the pool size of every
    provider that keeps one.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        default_provider: str | None = None,
        warm_pool: int | None = None,
        settings: Settings | None = None,
    ):
        self.settings = settings if settings is not None else Settings()
        self.store = open_store(data_dir, self.settings.database_url)
        self.data_dir = self.store.data_dir
        self.warm_pool = warm_pool
        self._default_provider = default_provider
        self._providers: dict[str, Provider] = {}
        from .fleet import Fleet  # not at the top: it builds on remote.py, which builds on this

        self.fleet = Fleet(self)
        self.reaper = Reaper(self)

    @property
    def default_provider(self) -> str:
        return self._default_provider or self.settings.default_provider

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            backend = provider_class(name)(self.data_dir)
            backend.store_id = self.store.store_id  # a shared database's boxes carry its id on every host
            self._providers[name] = backend
        backend = self._providers[name]
        if backend.supports(Feature.WARM_POOL):
            # Read each time: a host may change it while the service lives (%config).
            size = self.warm_pool if self.warm_pool is not None else self.settings.pool_size(name)
            if size is not None:
                backend.pool_size = size
        return backend

    # ---- lookup and ownership
    def _resolve(self, caller: Caller, sandbox_ref: str, *, include_stopped: bool = True) -> dict:
        """The row for an id (or the unique live sandbox of that name) that the caller may see."""
        if not isinstance(sandbox_ref, str) or not sandbox_ref.strip():
            raise InvalidArgument("a sandbox id is required")
        row = self.store.get(sandbox_ref)
        if row is not None and not caller.is_admin and row["user_id"] != caller.user_id:
            row = None  # another user's sandbox reads as not found
        if row is None:
            named = self.store.find_by_name(sandbox_ref, None if caller.is_admin else caller.user_id)
            if len(named) > 1:
                ids = ", ".join(r["sandbox_id"] for r in named)
                raise InvalidArgument(f"more than one sandbox is named {sandbox_ref!r} ({ids}): use its id")
            row = named[0] if named else None
        if row is None:
            raise SandboxNotFound(f"Sandbox not found: {sandbox_ref}")
        if not include_stopped and row["status"] not in LIVE_STATUSES:
            raise SandboxStateError(f"Sandbox {row['sandbox_id']} is stopped")
        return row

    def _record(self, sandbox_id: str) -> Sandbox:
        """The sandbox's record as the store has it now."""
        return Sandbox.from_row(self.store.get(sandbox_id), time.time())

    def _require_active(self, row: dict) -> None:
        status = row["status"]
        if status == "paused":
            raise SandboxStateError(f"Sandbox {row['sandbox_id']} is paused: resume it first")
        if status == "creating":
            raise SandboxStateError(f"Sandbox {row['sandbox_id']} is still being created")
        if status != "active":
            raise SandboxStateError(f"Sandbox {row['sandbox_id']} is stopped")

    # ---- TTL and housekeeping (reaper.py)
    def _reap_expired(self) -> None:
        """Stop what expired before acting (cheap when nothing did)."""
        self.reaper.expire()

    def _expire_for_read(self) -> None:
        """A read shows expired sandboxes as stopped at once, and leaves destroying their
        boxes to a reaper in the background: it never waits on a container's removal."""
        if self.reaper.expire(destroy=False):
            self.reaper.reap_in_background()

    def reap(self, fleet_interval: float = 0.0) -> dict:
        """One housekeeping pass (see ``Reaper.reap``)."""
        return self.reaper.reap(fleet_interval)

    def _touch(self, row: dict, extra_seconds: float = 0.0) -> None:
        now = time.time()
        self.store.update(
            row["sandbox_id"],
            {"last_active_at": now, "expires_at": now + row["ttl_minutes"] * 60 + extra_seconds},
            expect_status=("active",),
        )

    # ---- create
    def create(
        self,
        caller: Caller,
        name: str,
        ttl_minutes: int | None = None,
        template_id: str | None = None,
        *,
        provider: str | None = None,
        agent_id: str | None = None,
        tenant_id: str | None = None,
        allow_internet_access: bool = False,
        memory_mb: int | None = None,
        cpus: float = 1.0,
        max_processes: int = 256,
        disk_mb: int | None = None,
        env: dict | None = None,
        notebook: str | None = None,
    ) -> Sandbox:
        """Create a sandbox for the caller; returns its record.

        ``ttl_minutes`` and ``memory_mb`` default to the settings ``default_ttl``
        and ``default_memory_mb`` (10 and 1024 unless configured).
        ``disk_mb`` bounds every file the sandbox writes (home, /tmp); they live in
        memory, so it defaults to 512 or half of ``memory_mb``, and may be at most
        ``memory_mb`` less 128.  Raises InvalidArgument for bad values (before
        anything is made) and ProviderUnavailable when the provider cannot run here
        or the sandbox does not start.  ``notebook`` is the path of the notebook whose
        cells made it (the magics give it), so a notebook's toolbar can find its sandbox.
        """
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgument("a sandbox name is required")
        if len(name) > 200 or any(ch in name for ch in "\0\n\r"):
            raise InvalidArgument("a sandbox name is one line of at most 200 characters")
        check_text(name, "the sandbox name")
        for value, what in ((provider, "provider"), (template_id, "template_id"), (agent_id, "agent_id"),
                            (tenant_id, "tenant_id")):  # fmt: skip
            if value is not None:
                check_text(value, what, max_length=500)
        if notebook is not None:
            check_text(notebook, "notebook", max_length=4096)  # a path
        if ttl_minutes is None:
            ttl_minutes = self.settings.default_ttl
        ttl = whole_number(ttl_minutes, "ttl_minutes", 1, MAX_TTL_MINUTES)
        provider_name = provider or self.default_provider
        backend = self.provider(provider_name)
        if memory_mb is None:
            memory_mb = self.settings.default_memory_mb
        memory = whole_number(memory_mb, "memory_mb", 64, backend.memory_capacity_mb() or 1 << 20)
        if disk_mb is None:
            disk = min(DEFAULT_DISK_MB, memory // 2)
        else:
            disk = whole_number(disk_mb, "disk_mb", 16, 1 << 30)
            if disk > memory - MEMORY_FOR_PROCESSES_MB:
                room = MEMORY_FOR_PROCESSES_MB
                raise InvalidArgument(
                    f"disk_mb {disk} is too large for memory_mb {memory}: a sandbox's files live in its memory, "
                    f"so disk_mb may be at most memory_mb - {room} ({memory - room})"
                )
        spec = BoxSpec(
            sandbox_id=_new_sandbox_id(),
            template_id=template_id,
            allow_internet=bool(allow_internet_access),
            memory_mb=memory,
            cpus=positive_number(cpus, "cpus", os.cpu_count() or 1),
            max_processes=whole_number(max_processes, "max_processes", 8, 1 << 16),
            disk_mb=disk,
            env=check_env(env),
            idle_timeout_seconds=ttl * 60 + AGENT_EXPIRY_GRACE_SECONDS,
            owner=caller.user_id,
            name=name,
            agent_id=agent_id,
            tenant_id=tenant_id or "default",
        )
        self._reap_expired()
        now = time.time()
        quota = self.settings.max_sandboxes_per_user
        # The row is written before the box exists, so a crash mid-create
        # leaves a row the reaper can find rather than an invisible box.
        added = self.store.insert(
            {
                "sandbox_id": spec.sandbox_id,
                "name": name,
                "user_id": caller.user_id,
                "agent_id": agent_id,
                "tenant_id": tenant_id or "default",
                "provider": provider_name,
                "template_id": template_id,
                "status": "creating",
                "created_at": now,
                "last_active_at": now,
                "ttl_minutes": ttl,
                "expires_at": now + ttl * 60,
                "notebook": notebook,
                **({"host": self.fleet.host_id} if self.store.shared else {}),
                "options": {
                    "allow_internet": spec.allow_internet,
                    "memory_mb": spec.memory_mb,
                    "cpus": spec.cpus,
                    "max_processes": spec.max_processes,
                    "disk_mb": spec.disk_mb,
                    "env_keys": sorted(spec.env),
                },
            },
            max_live_of_user=quota,
        )
        if not added:
            held = f"{quota} live sandbox{'es' if quota != 1 else ''}"
            raise QuotaExceeded(
                f"{caller.user_id} already has {held}, the most a user may hold "
                "(max_sandboxes_per_user): stop one first"
            )
        state: dict = {}
        try:
            state = backend.create(spec)
            backend.check_started(spec.sandbox_id, state)
        except BaseException as exc:
            self.store.update(
                spec.sandbox_id,
                {
                    "status": "failed",
                    "stopped_at": time.time(),
                    "expires_at": None,
                    "stop_reason": f"create failed: {exc}",
                },
            )
            try:
                backend.destroy(spec.sandbox_id, state)
            except Exception:
                pass
            raise
        now = time.time()
        self.store.update(
            spec.sandbox_id,
            {"status": "active", "provider_state": state, "last_active_at": now, "expires_at": now + ttl * 60},
            expect_status=("creating",),
        )
        return self._record(spec.sandbox_id)

    # ---- run
    def run(
        self,
        caller: Caller,
        sandbox_id: str,
        language: str,
        code: str,
        timeout: float | None = None,
        *,
        fresh: bool = False,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_result: ResultCallback | None = None,
        env: dict | None = None,
        filename: str | None = None,
        execution_count: int | None = None,
        cancel: Cancel | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> RunResult:
        """Run code; returns its stdout, stderr, exit_code, execution_time, results and error.

        Python runs in the sandbox's kernel, so state persists between runs
        (``x = 41`` then ``print(x + 1)``) and rich outputs come back in
        ``results`` (MIME bundles: display outputs and the value of the last
        expression) with ``error`` (name, value, traceback) for an exception.
        ``fresh=True`` (and JavaScript, Bash) run in a new process instead.
        A stateful run is a script's: ``sys.exit(n)`` gives exit code n (the
        state kept); with ``filename`` (the code is that file's) ``__file__``
        is set, tracebacks name the file and no value is shown;
        ``execution_count`` numbers the cell (``Cell In[n]``), as a notebook does.
        Output is passed to ``on_stdout``/``on_stderr``/``on_result`` as it is produced.
        ``cancel.cancel()`` from another thread ends the run (RunCancelled).
        ``on_start`` is called once the input is checked and the sandbox found, just
        before the code is sent (a streaming front end answers then: its errors before
        that point are the caller's, after it they are the run's).
        Raises SandboxTimeout (with ``.result``) when the run exceeds ``timeout``;
        an interrupted Python cell keeps the kernel's state.
        """
        language = normalize_language(language)
        code = check_code(code)
        if timeout is None:
            timeout = self.settings.default_timeout
        seconds = positive_number(timeout, "timeout", MAX_TIMEOUT_SECONDS, "seconds")
        max_output_chars = self.settings.max_output_chars
        stateful = language == "python" and not fresh
        if stateful and env:
            raise InvalidArgument("env applies to fresh runs: the kernel's environment is the sandbox's")
        self._reap_expired()
        row = self._resolve(caller, sandbox_id)
        self._require_active(row)
        peer = self.fleet.peer_for(caller, row)
        if peer is not None:  # another host's box: its server runs it, and streams it here
            return peer.run(caller, row["sandbox_id"], language, code, timeout, fresh=fresh, on_stdout=on_stdout,
                            on_stderr=on_stderr, on_result=on_result, env=env, filename=filename,
                            execution_count=execution_count, cancel=cancel, on_start=on_start)  # fmt: skip
        # Not expirable while it runs: the TTL counts idle time only.
        self._touch(row, extra_seconds=seconds + 30)
        backend = self.provider(row["provider"])
        if on_start is not None:
            on_start()
        try:
            if stateful:
                outcome = backend.execute(
                    row["sandbox_id"],
                    row["provider_state"],
                    code,
                    timeout=seconds,
                    max_output_chars=max_output_chars,
                    on_stdout=on_stdout,
                    on_stderr=on_stderr,
                    on_result=on_result,
                    filename=filename,
                    execution_count=execution_count,
                    cancel=cancel,
                )
            else:
                outcome = backend.run(
                    row["sandbox_id"],
                    row["provider_state"],
                    language,
                    code,
                    timeout=seconds,
                    max_output_chars=max_output_chars,
                    env=env,
                    on_stdout=on_stdout,
                    on_stderr=on_stderr,
                    cancel=cancel,
                )
        except AgentUnreachable as exc:
            if cancel is not None and cancel.cancelled:
                raise RunCancelled(f"the run in {row['sandbox_id']} was cancelled") from None
            raise self._unreachable(row, backend, exc) from None
        finally:
            self._touch(row)
        result = RunResult.from_outcome(outcome)
        if outcome.get("timed_out"):
            # The exception carries the seed's dict: what it printed before the timeout.
            raise SandboxTimeout(f"Code execution exceeded {timeout:g} second timeout", result.to_dict())
        return result

    def _unreachable(self, row: dict, backend: Provider, exc: AgentUnreachable) -> SandboxStateError:
        """The error for a box whose agent did not answer; if its provider no longer has
        the box, the row says so.  A box that is there but unresponsive stays as it is."""
        current = self.store.get(row["sandbox_id"])
        if current is not None and current["status"] not in LIVE_STATUSES:
            return SandboxStateError(f"Sandbox {row['sandbox_id']} is not running: it was stopped while the code ran")
        try:
            gone = backend.inspect(row["sandbox_id"], row["provider_state"]) == "stopped"
        except SandboxError:
            gone = False
        if gone and (row.get("host") is not None or not self.store.shared):  # else maybe another host's
            self.reaper.stop_row(row, reason="vanished")
            return SandboxStateError(f"Sandbox {row['sandbox_id']} is not running: {exc}")
        return SandboxStateError(f"Sandbox {row['sandbox_id']} did not answer: {exc}")

    # ---- state transitions
    def pause(self, caller: Caller, sandbox_id: str) -> Sandbox:
        """Freeze every process of the sandbox; it keeps its state and does not expire while paused."""
        self._reap_expired()
        row = self._resolve(caller, sandbox_id)
        if row["status"] == "paused":
            raise SandboxStateError(f"Sandbox {row['sandbox_id']} is already paused")
        self._require_active(row)
        if (peer := self.fleet.peer_for(caller, row)) is not None:
            return peer.pause(caller, row["sandbox_id"])
        backend = self.provider(row["provider"])
        if not backend.supports(Feature.PAUSE):
            raise ProviderNotSupported(
                f"{backend.display_name} doesn't support pause/resume. Use stop to destroy the sandbox."
            )
        backend.pause(row["sandbox_id"], row["provider_state"])
        if not self.store.update(
            row["sandbox_id"],
            {"status": "paused", "paused_at": time.time(), "expires_at": None},
            expect_status=("active",),
        ):
            backend.resume(row["sandbox_id"], row["provider_state"])
            raise SandboxStateError(f"Sandbox {row['sandbox_id']} changed state while pausing; try again")
        return self._record(row["sandbox_id"])

    def resume(self, caller: Caller, sandbox_id: str) -> Sandbox:
        """Thaw a paused sandbox; its idle timeout starts again."""
        self._reap_expired()
        row = self._resolve(caller, sandbox_id)
        if row["status"] == "active":
            raise SandboxStateError(f"Sandbox {row['sandbox_id']} is not paused")
        if row["status"] != "paused":
            self._require_active(row)
        if (peer := self.fleet.peer_for(caller, row)) is not None:
            return peer.resume(caller, row["sandbox_id"])
        backend = self.provider(row["provider"])
        if not backend.supports(Feature.PAUSE):
            raise ProviderNotSupported(
                f"{backend.display_name} doesn't support pause/resume. Create a new sandbox instead."
            )
        backend.resume(row["sandbox_id"], row["provider_state"])
        now = time.time()
        self.store.update(
            row["sandbox_id"],
            {"status": "active", "paused_at": None, "last_active_at": now, "expires_at": now + row["ttl_minutes"] * 60},
            expect_status=("paused",),
        )
        try:
            backend.touch(
                row["sandbox_id"], row["provider_state"], row["ttl_minutes"] * 60 + AGENT_EXPIRY_GRACE_SECONDS
            )
        except (SandboxError, OSError):
            pass  # the box's own idle clock also notices the freeze
        return self._record(row["sandbox_id"])

    def stop(self, caller: Caller, sandbox_id: str) -> Sandbox:
        """Destroy the sandbox and everything in it.  Stopping a stopped sandbox is not an error."""
        self._reap_expired()
        row = self._resolve(caller, sandbox_id)
        if row["status"] in LIVE_STATUSES and (peer := self.fleet.peer_for(caller, row)) is not None:
            return peer.stop(caller, row["sandbox_id"])  # its host destroys the box, then marks the row
        if (
            not self.reaper.stop_row(row, reason="stopped")
            and row["status"] not in LIVE_STATUSES
            and self.fleet.holds(row)
        ):
            # Stopped already: finish the job if an earlier stop was killed before its box was gone
            # (another host's box is its own host's reaper's to finish).
            backend = self.provider(row["provider"])
            if backend.inspect(row["sandbox_id"], row["provider_state"]) != "stopped":
                backend.destroy(row["sandbox_id"], row["provider_state"])
        return self._record(row["sandbox_id"])

    # ---- reading
    def attach(self, caller: Caller, sandbox_id: str, kernel_id: str, notebook: str | None = None) -> Sandbox:
        """Record that a notebook's kernel now runs its ``%%sandbox`` cells in this sandbox
        (the magics call it): Lab's notebook toolbar finds it by the kernel's id, whatever
        the notebook is called since.  The previous sandbox of that kernel is no longer named."""
        check_text(kernel_id, "kernel_id", max_length=200)
        if notebook is not None:
            check_text(notebook, "notebook", max_length=4096)
        row = self._resolve(caller, sandbox_id, include_stopped=False)
        self.store.attach_kernel(row["sandbox_id"], row["user_id"], kernel_id, notebook)
        return self._record(row["sandbox_id"])

    def status(self, caller: Caller, sandbox_id: str) -> Sandbox:
        """The sandbox's 15-field record."""
        self._expire_for_read()
        return Sandbox.from_row(self._resolve(caller, sandbox_id), time.time())

    def list_sandboxes(
        self,
        caller: Caller,
        context: dict | None = None,
        verify_status: bool = False,
        include_stopped: bool = False,
    ) -> list[Sandbox]:
        """The caller's sandboxes (all users' filtered ones for admins).

        ``context`` may hold ``user`` (or ``user_id``), ``agent_id``, ``tenant_id``, ``name``,
        ``notebook`` and ``kernel_id``; ``all_users`` (admins only) lists every user's.
        With ``verify_status`` each record gains ``verified`` and ``provider_status``
        and rows whose box vanished are corrected.
        """
        context = dict(context or {})
        user = context.get("user") or context.get("user_id")
        if user is not None and user != caller.user_id and not caller.is_admin:
            raise PermissionDenied(f"only admins can list another user's sandboxes (you are {caller.user_id})")
        every_user = bool(context.get("all_users")) and user is None
        if every_user and not caller.is_admin:
            raise PermissionDenied(f"only admins can list every user's sandboxes (you are {caller.user_id})")
        self._expire_for_read()
        rows = self.store.select(
            user_id=None if every_user else user or caller.user_id,
            notebook=context.get("notebook"),
            kernel_id=context.get("kernel_id"),
            agent_id=context.get("agent_id"),
            tenant_id=context.get("tenant_id"),
            name=context.get("name"),
            include_stopped=include_stopped,
        )
        now = time.time()
        records = []
        vanished = False
        for row in rows:
            record = Sandbox.from_row(row, now)
            if verify_status:
                verified, seen = self.reaper.verify(row, destroy=False)
                record = record.verified_as(verified, seen)
                vanished |= seen == "stopped" and row["status"] in ("active", "paused")
            records.append(record)
        if vanished:
            self.reaper.reap_in_background()  # what the vanished boxes left
        return records

    def prepare(self, provider: str | None = None) -> None:
        """Get the provider ready for a first create (imports, machine probes), ahead of it."""
        self.provider(provider or self.default_provider).prepare()

    def notices(self, provider: str) -> list[str]:
        """What a user should know about how ``provider`` runs here (e.g. limits it cannot apply)."""
        return self.provider(provider).notices()

    def metrics(self, caller: Caller, sandbox_id: str) -> Metrics:
        """What a live sandbox uses now: CPU time, memory (now, peak, limit), processes, disk.
        A read: it neither refreshes the idle timeout nor counts as use of the box."""
        self._expire_for_read()
        row = self._resolve(caller, sandbox_id)
        if row["status"] not in ("active", "paused"):
            self._require_active(row)
        if (peer := self.fleet.peer_for(caller, row)) is not None:
            return peer.metrics(caller, row["sandbox_id"])
        backend = self.provider(row["provider"])
        if not backend.supports(Feature.METRICS):
            raise ProviderNotSupported(f"{backend.display_name} does not report metrics")
        try:
            usage = backend.metrics(row["sandbox_id"], row["provider_state"])
        except OSError as exc:
            raise SandboxStateError(
                f"Sandbox {row['sandbox_id']} could not be measured: {exc.strerror or exc}"
            ) from None
        return Metrics.from_usage(row["sandbox_id"], usage, time.time())

    # ---- files
    def max_file_bytes(self) -> int:
        """The largest file a read or download takes from a box (the ``max_file_mb`` setting)."""
        return self.settings.max_file_bytes

    def _file_target(self, caller: Caller, sandbox_id: str):
        """The row, and the provider that reaches its box here or the server of the host that holds it."""
        self._reap_expired()
        row = self._resolve(caller, sandbox_id)
        self._require_active(row)
        peer = self.fleet.peer_for(caller, row)
        if peer is not None:
            return row, None, peer
        self._touch(row)
        return row, self.provider(row["provider"]), None

    @contextmanager
    def _file_errors(self, row: dict, backend: Provider, verb: str, path: str):
        """One message shape for every file operation's failures (an unreachable box as for runs)."""
        try:
            yield
        except AgentUnreachable as exc:
            raise self._unreachable(row, backend, exc) from None
        except SandboxError as exc:
            raise (PathNotFound if isinstance(exc, PathNotFound) else SandboxError)(
                f"cannot {verb} {path}: {exc}"
            ) from None

    def write_file(self, caller: Caller, sandbox_id: str, path: str, content: bytes | str | IO[bytes]) -> dict:
        """Write ``content`` to ``path`` (relative to the sandbox home); returns ``{"path", "size"}``."""
        path = check_path(path)
        if isinstance(content, str):
            content = content.encode("utf-8")
        row, backend, peer = self._file_target(caller, sandbox_id)
        if peer is not None:
            return peer.write_file(caller, row["sandbox_id"], path, content)
        with self._file_errors(row, backend, "write", path):
            done = backend.write_file(row["sandbox_id"], row["provider_state"], path, content)
        return {"path": done["path"], "size": done["size"]}

    def upload_file(self, caller: Caller, sandbox_id: str, local_path: str | Path, path: str | None = None) -> dict:
        """Copy a local file into the sandbox (streamed); returns ``{"path", "size"}``."""
        local = Path(local_path)
        try:
            source = open(local, "rb")
        except OSError as exc:
            raise InvalidArgument(f"cannot read {local}: {exc.strerror}") from None
        with source:
            return self.write_file(caller, sandbox_id, path or local.name, source)

    def read_file_chunks(self, caller: Caller, sandbox_id: str, path: str) -> Iterator[bytes]:
        """The file's bytes in chunks, without holding it whole."""
        path = check_path(path)
        limit = self.max_file_bytes()
        row, backend, peer = self._file_target(caller, sandbox_id)
        if peer is not None:
            yield from peer.read_file_chunks(caller, row["sandbox_id"], path)
            return
        with self._file_errors(row, backend, "read", path):
            yield from backend.read_file_chunks(row["sandbox_id"], row["provider_state"], path, limit)

    def read_file(self, caller: Caller, sandbox_id: str, path: str) -> bytes:
        """The whole file's bytes."""
        return b"".join(self.read_file_chunks(caller, sandbox_id, path))

    def download_file(self, caller: Caller, sandbox_id: str, path: str, local_path: str | Path) -> dict:
        """Copy a file out of the sandbox (streamed); returns ``{"path", "size"}`` of the local file.

        The local file appears only once the copy is complete, replacing what was
        there (a symlink is replaced, never followed); a copy that fails or is
        killed leaves nothing behind.
        """
        local = Path(local_path)
        size = 0
        try:
            from .atomic_file import AtomicFile  # tempfile and secrets: only for downloads

            with AtomicFile(local) as target:
                for chunk in self.read_file_chunks(caller, sandbox_id, path):
                    target.write(chunk)
                    size += len(chunk)
        except OSError as exc:
            raise InvalidArgument(f"cannot write {local}: {exc.strerror or exc}") from None
        return {"path": str(local), "size": size}

    def list_files(self, caller: Caller, sandbox_id: str, path: str = ".") -> list[FileEntry]:
        """Entries of a directory: name, path, type (file/dir/symlink), size, modified."""
        path = check_path(path)
        row, backend, peer = self._file_target(caller, sandbox_id)
        if peer is not None:
            return peer.list_files(caller, row["sandbox_id"], path)
        with self._file_errors(row, backend, "list", path):
            listing = backend.list_files(row["sandbox_id"], row["provider_state"], path)
        return [FileEntry.from_dict(entry) for entry in listing["entries"]]


def _new_sandbox_id() -> str:
    import secrets  # here, not at the top: hmac and hashlib cost every CLI call a few ms

    return "sb_" + "".join(secrets.choice(ID_ALPHABET) for _ in range(16))
