"""SandboxManager: the seed's Python API, bound to one caller.

``SandboxManager()`` is what the CLI, the magics, the panel and a user's own
code construct: a ``SandboxService`` (service.py: every rule, the store, the
providers) and the caller it acts for (``$NEXUS_USER`` or the OS user, admin
with ``$NEXUS_ADMIN``).  Its methods return the seed's dicts, exactly the JSON
of the CLI's ``--json``.  A server that serves many users holds one service
and passes each request's caller to it instead (``SandboxManager(service=...,
user_id=...)`` binds one without building another).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .providers.base import OutputCallback, Provider, ResultCallback
from .service import Caller, SandboxService
from .validation import truthy


class SandboxManager:
    """Create, run code in, list, pause, resume and stop sandboxes.

    ``data_dir`` defaults to ``$NEXUS_DATA_DIR`` (else the Jupyter data dir);
    ``provider`` to ``$NEXUS_SANDBOX_PROVIDER`` (else ``local``); ``user_id``
    to ``$NEXUS_USER`` (else the OS user); ``is_admin`` to ``$NEXUS_ADMIN``;
    ``warm_pool`` sets every provider's warm pool size (None: each provider's default).
    ``service``: an existing service to act through (its data dir, providers and settings).
    Remote mode: with ``url`` (else ``$NEXUS_URL``, unless a ``data_dir`` is given) every
    call goes to that nexus server's REST API with ``api_key`` (else ``$NEXUS_API_KEY``);
    the server decides who the caller is and applies its own defaults.
    Defaults (TTL, timeout, memory) are the service's settings (settings.py).
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        provider: str | None = None,
        user_id: str | None = None,
        is_admin: bool | None = None,
        warm_pool: int | None = None,
        service: SandboxService | None = None,
        url: str | None = None,
        api_key: str | None = None,
    ):
        if service is None and (url or (data_dir is None and os.environ.get("NEXUS_URL", "").strip())):
            from .remote import RemoteService

            url = url or os.environ["NEXUS_URL"].strip()
            service = RemoteService(url, api_key or os.environ.get("NEXUS_API_KEY", "").strip())
        self.service = service or SandboxService(data_dir, default_provider=provider, warm_pool=warm_pool)
        self.default_provider = provider or self.service.default_provider
        self.caller = Caller(
            user_id or os.environ.get("NEXUS_USER") or getpass.getuser(),
            truthy(os.environ.get("NEXUS_ADMIN")) if is_admin is None else is_admin,
        )

    # ---- who and where
    @property
    def user_id(self) -> str:
        """Who this manager acts as: the caller, or in remote mode the server's user of the key."""
        whoami = getattr(self.service, "whoami", None)
        return whoami()[0] if whoami is not None else self.caller.user_id

    @property
    def current_user(self) -> str:
        return self.user_id

    @property
    def is_admin(self) -> bool:
        whoami = getattr(self.service, "whoami", None)
        return whoami()[1] if whoami is not None else self.caller.is_admin

    @property
    def store(self):
        return self.service.store

    @property
    def data_dir(self) -> Path:
        return self.service.data_dir

    @property
    def _providers(self) -> dict[str, Provider]:
        return self.service._providers

    def provider(self, name: str) -> Provider:
        return self.service.provider(name)

    # ---- the seed's API
    def sandbox_create(
        self,
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
    ) -> dict:
        """Create a sandbox; returns its 15-field record (see ``SandboxService.create``)."""
        return self.service.create(
            self.caller,
            name,
            ttl_minutes,
            template_id,
            provider=provider or self.default_provider,
            agent_id=agent_id,
            tenant_id=tenant_id,
            allow_internet_access=allow_internet_access,
            memory_mb=memory_mb,
            cpus=cpus,
            max_processes=max_processes,
            disk_mb=disk_mb,
            env=env,
            notebook=notebook,
        ).to_dict()

    def sandbox_run(
        self,
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
    ) -> dict:
        """Run code; returns stdout, stderr, exit_code, execution_time, results, error.

        Python runs in the sandbox's stateful runtime (``x = 41`` then ``print(x + 1)``),
        with rich outputs in ``results``; ``fresh=True`` (and JavaScript, Bash) run in a
        new process.  Raises SandboxTimeout (with ``.result``) past ``timeout``.  See
        ``SandboxService.run`` for the whole contract.
        """
        return self.service.run(
            self.caller,
            sandbox_id,
            language,
            code,
            timeout,
            fresh=fresh,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            on_result=on_result,
            env=env,
            filename=filename,
            execution_count=execution_count,
        ).to_dict()

    def sandbox_pause(self, sandbox_id: str) -> dict:
        """Freeze every process of the sandbox; it keeps its state and does not expire while paused."""
        return self.service.pause(self.caller, sandbox_id).to_dict()

    def sandbox_resume(self, sandbox_id: str) -> dict:
        """Thaw a paused sandbox; its idle timeout starts again."""
        return self.service.resume(self.caller, sandbox_id).to_dict()

    def sandbox_stop(self, sandbox_id: str) -> dict:
        """Destroy the sandbox (every process and file); its record stays, stopped."""
        return self.service.stop(self.caller, sandbox_id).to_dict()

    def sandbox_status(self, sandbox_id: str) -> dict:
        """The sandbox's 15-field record."""
        return self.service.status(self.caller, sandbox_id).to_dict()

    def sandbox_list(
        self, context: dict | None = None, verify_status: bool = False, include_stopped: bool = False
    ) -> dict:
        """``{"sandboxes": [records]}`` of the caller's sandboxes (all users' filtered ones for admins).

        ``context`` may hold ``user`` (or ``user_id``), ``agent_id``, ``tenant_id``, ``name``
        and ``notebook``; ``{"all_users": True}`` lists every user's (admins only).
        With ``verify_status`` each record gains ``verified`` and ``provider_status``
        and rows whose box vanished are corrected.
        """
        records = self.service.list_sandboxes(self.caller, context, verify_status, include_stopped)
        return {"sandboxes": [record.to_dict() for record in records]}

    def sandbox_attach(self, sandbox_id: str, kernel_id: str, notebook: str | None = None) -> dict:
        """Make it the default sandbox of a notebook's kernel (see ``SandboxService.attach``)."""
        return self.service.attach(self.caller, sandbox_id, kernel_id, notebook).to_dict()

    def sandbox_metrics(self, sandbox_id: str) -> dict:
        """What the sandbox uses now: cpu_seconds, memory_bytes, memory_peak_bytes,
        memory_limit_bytes, processes, disk_used_bytes, disk_limit_bytes (None: not counted)."""
        return self.service.metrics(self.caller, sandbox_id).to_dict()

    def reap(self) -> dict:
        """One housekeeping pass over every user's sandboxes (see ``SandboxService.reap``)."""
        return self.service.reap()

    # ---- files
    def sandbox_write_file(self, sandbox_id: str, path: str, content: bytes | str | IO[bytes]) -> dict:
        """Write ``content`` to ``path`` (relative to the sandbox home); returns ``{"path", "size"}``."""
        return self.service.write_file(self.caller, sandbox_id, path, content)

    def sandbox_upload_file(self, sandbox_id: str, local_path: str | Path, path: str | None = None) -> dict:
        """Copy a local file into the sandbox (streamed); returns ``{"path", "size"}``."""
        return self.service.upload_file(self.caller, sandbox_id, local_path, path)

    def sandbox_read_file_chunks(self, sandbox_id: str, path: str) -> Iterator[bytes]:
        """The file's bytes in chunks, without holding it whole."""
        return self.service.read_file_chunks(self.caller, sandbox_id, path)

    def sandbox_read_file(self, sandbox_id: str, path: str) -> bytes:
        """The whole file's bytes."""
        return self.service.read_file(self.caller, sandbox_id, path)

    def sandbox_download_file(self, sandbox_id: str, path: str, local_path: str | Path) -> dict:
        """Copy a file out of the sandbox (streamed); returns ``{"path", "size"}`` of the local file.

        The local file appears only once the copy is complete (a symlink there is
        replaced, never followed); a copy that fails or is killed leaves nothing behind.
        """
        return self.service.download_file(self.caller, sandbox_id, path, local_path)

    def sandbox_list_files(self, sandbox_id: str, path: str = ".") -> list[dict]:
        """Entries of a directory: name, path, type (file/dir/symlink), size, modified."""
        return [entry.to_dict() for entry in self.service.list_files(self.caller, sandbox_id, path)]

    def max_file_bytes(self) -> int:
        return self.service.max_file_bytes()
