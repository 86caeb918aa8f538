"""The Jupyter server extension ``nexus_jupyter``: one sandbox service for the server's life.

It holds the service (the store, the providers with their Docker client and warm
pools) and serves every request with the request's user (``handlers.py``: the
REST API under ``{base_url}nexus/api/``).  It runs the reaper every
``reap_interval`` seconds, the first pass as it starts (reconciling what happened
while no server ran), and keeps the providers' warm pools filled, so a notebook
kernel's first ``%%sandbox`` cell claims a box whose Python is already running.
Store and provider calls run in a thread pool, never on the event loop.

Enabled by ``jupyter-config/jupyter_server_config.d/nexus_jupyter.json``, which
``pip install`` puts in ``etc/jupyter``.  Settings::

    c.NexusSandboxApp.reap_interval = 30
    c.NexusSandboxApp.admin_users = {"alice"}
    c.SandboxService.default_ttl = 60         # and the rest of config.py
    c.LocalProvider.pool_size = 2
"""

from __future__ import annotations

import asyncio
import getpass
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from tornado import web
from traitlets import Enum, Float, Int, Set, Unicode, default

from .auth import SandboxUser
from .background import open_lock, try_lock
from .config import CONFIGURABLES, configured_settings
from .errors import SandboxError
from .fleet import ADMIN_HEADER, USER_HEADER
from .service import Caller, SandboxService

API_PREFIX = "nexus/api"


class NexusSandboxApp(ExtensionApp):
    """Sandboxes for Jupyter: the REST API, the TTL reaper and the warm pools."""

    name = "nexus_jupyter"
    description = "Secure, disposable code sandboxes, hosted by Jupyter Server"
    load_other_extensions = True
    classes: ClassVar[list] = list(CONFIGURABLES)

    reap_interval = Float(
        30.0, help="Seconds between passes of the reaper (expired, vanished and orphaned sandboxes)"
    ).tag(config=True)
    data_dir = Unicode(
        help="Where the sandbox store lives [default: $NEXUS_DATA_DIR, else <jupyter data dir>/nexus]"
    ).tag(config=True)
    owner = Unicode(
        help="The user that owns sandboxes when the server cannot tell its users apart "
        "(one shared token or password) [default: $NEXUS_USER, else the OS user]: "
        "the same user a notebook kernel's %%sandbox acts as"
    ).tag(config=True)
    users = Enum(
        ["auto", "owner", "identity"],
        "auto",
        help="Who owns a request's sandboxes: 'identity' = the Jupyter user's name (JupyterHub, API keys), "
        "'owner' = the owner setting for every request, 'auto' = 'owner' for Jupyter's shared-token login "
        "and 'identity' for any other identity provider",
    ).tag(config=True)
    admin_users = Set(Unicode(), help="Users who may see and act on every user's sandboxes").tag(config=True)
    max_workers = Int(16, help="Quick store and provider calls (create, list, stop...) that may run at once").tag(
        config=True
    )
    max_streams = Int(64, help="Runs and file transfers that may stream at once (each holds a thread)").tag(config=True)
    per_user_calls = Int(
        4, help="Quick calls one user may have under way at once (more wait their turn, holding no thread)"
    ).tag(config=True)
    per_user_streams = Int(8, help="Runs and file transfers one user may stream at once (more wait their turn)").tag(
        config=True
    )
    advertised_url = Unicode(
        help="The URL other servers of a fleet (one shared database) reach this one at, with its "
        "base_url [default: $NEXUS_ADVERTISED_URL, else this server's own address]"
    ).tag(config=True)
    transfer_idle_timeout = Float(
        60.0, help="Seconds an upload may send nothing before it is abandoned and its thread freed"
    ).tag(config=True)

    @default("owner")
    def _default_owner(self) -> str:
        return os.environ.get("NEXUS_USER") or getpass.getuser()

    @default("advertised_url")
    def _default_advertised_url(self) -> str:
        return os.environ.get("NEXUS_ADVERTISED_URL", "")

    @default("data_dir")
    def _default_data_dir(self) -> str:
        from .store import default_data_dir

        return str(default_data_dir())

    def initialize_settings(self) -> None:
        self.sandbox_settings, self.configurables = configured_settings(parent=self)
        if "pool_size" not in self.config.get("DockerProvider", {}) and not os.environ.get("NEXUS_DOCKER_POOL_SIZE"):
            # A server lives to refill it (a CLI call would not): one spare container,
            # started only when Docker and the image are there.
            self.sandbox_settings.set_pool_size("docker", 1)
        self.service = SandboxService(Path(self.data_dir), settings=self.sandbox_settings)
        # Two pools: runs and transfers hold a thread for as long as they stream, and must
        # never leave a listing (the sidebar's refresh) waiting behind them.
        self.executor = ThreadPoolExecutor(self.max_workers, thread_name_prefix="nexus")
        self.stream_executor = ThreadPoolExecutor(self.max_streams, thread_name_prefix="nexus-stream")
        self.runs_in_flight = 0
        self._slots: dict[tuple[str, str], asyncio.Semaphore] = {}
        self._marked_at = 0.0
        self._reaper_task: asyncio.Task | None = None
        self.settings.update({"nexus_jupyter_app": self})
        self.log.info(
            "nexus_jupyter: sandboxes in %s, default provider %s, reaping every %gs",
            self.service.data_dir,
            self.service.default_provider,
            self.reap_interval,
        )

    def initialize_handlers(self) -> None:
        from .handlers import route_table

        self.handlers.extend(route_table(API_PREFIX))

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        if self.service.store.shared:
            import secrets

            # Requests of the fleet's other servers present this key (they read it in the database).
            url = (self.advertised_url or serverapp.connection_url).rstrip("/")
            if url.startswith(("http://", "https://")):
                self.fleet_secret = secrets.token_urlsafe(32)
                self.fleet_url = url
                await self.off_loop(self._advertise)
                from urllib.parse import urlsplit

                from .serve import is_loopback

                if not self.advertised_url and is_loopback(urlsplit(url).hostname or ""):
                    self.log.warning(
                        "nexus_jupyter: advertised to the fleet at %s, which only this machine reaches: set "
                        "NEXUS_ADVERTISED_URL when the fleet's servers run on several machines",
                        url,
                    )
            else:  # a Unix socket: no other host can reach it
                self.log.warning(
                    "nexus_jupyter: this server (%s) is not advertised to the fleet, so other hosts cannot "
                    "forward requests for its boxes: set NEXUS_ADVERTISED_URL (c.NexusSandboxApp.advertised_url)",
                    url,
                )
        self._reaper_task = asyncio.create_task(self._reap_forever())

    fleet_secret = ""
    fleet_url = ""

    def _advertise(self) -> None:
        self.service.store.advertise(self.fleet_url, self.service.fleet.host_id, self.fleet_secret, os.getpid())
        self.log.info("nexus_jupyter: host %s of a fleet, at %s", self.service.fleet.host_id, self.fleet_url)

    def fleet_user(self, headers) -> SandboxUser:
        """The user a request forwarded by another server of the fleet acts for (fleet.py),
        if it presents this server's key; else 403."""
        import hmac

        _, _, key = headers.get("Authorization", "").partition(" ")
        if not self.fleet_secret or not hmac.compare_digest(key.strip().encode(), self.fleet_secret.encode()):
            raise web.HTTPError(403, "a forwarded request without this server's fleet key")
        from urllib.parse import unquote

        name = unquote(headers.get(USER_HEADER, "")).strip()
        if not name:
            raise web.HTTPError(400, f"{USER_HEADER} names no user")
        return SandboxUser(username=name, is_admin=headers.get(ADMIN_HEADER) == "1", forwarded=True)

    async def stop_extension(self) -> None:
        if self.fleet_url:
            try:
                await asyncio.wait_for(
                    self.off_loop(self.service.store.withdraw, self.service.fleet.host_id, self.fleet_url), timeout=10
                )
            except (SandboxError, asyncio.TimeoutError):
                pass  # its heartbeat stops: the others try it last, and say so if it does not answer
        if self._reaper_task is not None:
            self._reaper_task.cancel()
            try:
                await self._reaper_task
            except asyncio.CancelledError:
                pass
        # The spare boxes this server kept go with it (sandboxes stay: they have owners and TTLs).
        try:
            await asyncio.wait_for(self.off_loop(self._drain_pools), timeout=90)
        except asyncio.TimeoutError:
            self.log.warning("nexus_jupyter: the warm pools were not drained in 90 s; their boxes end when idle")
        for pool in (self.executor, self.stream_executor):
            pool.shutdown(wait=False, cancel_futures=True)

    # ---- who is asking
    def caller_for(self, user) -> Caller:
        """The sandbox owner of a request by ``user`` (a jupyter_server ``User``)."""
        if getattr(user, "forwarded", False):  # by another server of the fleet, as its caller
            return Caller(user.username, user.is_admin, forwarded=True)
        if self._users_mode() == "owner":
            name = self.owner
        else:
            name = getattr(user, "username", None) or str(user)
        # Admins: named in admin_users, or marked so by the identity provider (an admin API key).
        return Caller(name, name in self.admin_users or getattr(user, "is_admin", False) is True)

    def _users_mode(self) -> str:
        if self.users != "auto":
            return self.users
        from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider

        # Jupyter's own providers know one shared secret, not people: each browser gets
        # a made-up "Anonymous ..." name, and all of them are the server's owner.
        shared = type(self.serverapp.identity_provider) in (IdentityProvider, PasswordIdentityProvider)
        return "owner" if shared else "identity"

    def current_activity(self) -> bool:
        """Runs under way count as activity (the server's idle culling must not stop them)."""
        return self.runs_in_flight > 0

    # ---- work off the event loop
    async def off_loop(self, function, *args, for_user: str | None = None, **kwargs):
        """``function(*args, **kwargs)`` in the thread pool: the event loop never waits on
        SQLite or a container's removal.  ``for_user``: one of that user's ``per_user_calls``
        (one user's stuck sandbox cannot hold every thread while others wait)."""
        return await self._in(self.executor, "calls", for_user, function, args, kwargs)

    async def streaming(self, function, *args, for_user: str | None = None, **kwargs):
        """As ``off_loop``, for a run or a file transfer (as long as it streams)."""
        return await self._in(self.stream_executor, "streams", for_user, function, args, kwargs)

    async def _in(self, pool, kind: str, user: str | None, function, args, kwargs):
        loop = asyncio.get_running_loop()
        if user is None:
            return await loop.run_in_executor(pool, lambda: function(*args, **kwargs))
        slot = self._slots.get((user, kind))
        if slot is None:
            size = self.per_user_calls if kind == "calls" else self.per_user_streams
            slot = self._slots[user, kind] = asyncio.Semaphore(size)
        async with slot:
            return await loop.run_in_executor(pool, lambda: function(*args, **kwargs))

    def mark_active(self) -> None:
        """A run is streaming: the server is in use (its idle culling must not stop it)."""
        now = time.monotonic()
        if now - self._marked_at < 1.0:
            return  # once a second is all idle culling needs
        self._marked_at = now
        activity = self.serverapp.web_app.settings.setdefault("last_activity_times", {})
        activity[self.name] = datetime.now(timezone.utc)

    # ---- the reaper
    async def _reap_forever(self) -> None:
        """Reap now (reconcile what happened while no server ran), then every ``reap_interval``."""
        while True:
            try:
                report = await self.off_loop(self.reap_once)
                done = {k: v for k, v in (report or {}).items() if v and k != "fleet"}
                if done:
                    self.log.info("nexus_jupyter reaped: %s", done)
            except SandboxError as exc:
                self.log.warning("nexus_jupyter: reaping failed: %s", exc)
            except Exception:
                self.log.exception("nexus_jupyter: reaping failed")
            if self.runs_in_flight:
                self.mark_active()
            await asyncio.sleep(self.reap_interval)

    def reap_once(self) -> dict | None:
        """One pass (unless a background pass holds the lock), then top the warm pools up."""
        lock = open_lock(self.service.data_dir / "reap.lock")
        try:
            report = self.service.reap(fleet_interval=self.reap_interval) if try_lock(lock) else None
        finally:
            os.close(lock)
        fleet_pass = bool(report and report["fleet"])
        if self.fleet_url and not self.service.store.heartbeat(self.service.fleet.host_id, self.fleet_url, fleet_pass):
            self._advertise()  # its row was removed (another server stopped at the same URL): again
        for name in ("local", "docker"):
            try:
                self.service.provider(name).keep_warm()
            except SandboxError as exc:
                self.log.debug("nexus_jupyter: no warm pool for %s: %s", name, exc)
        return report

    def _drain_pools(self) -> None:
        for name in ("local", "docker"):
            backend = self.service._providers.get(name)
            if backend is None:
                continue
            backend.pool_size = 0  # a refill that has not begun yet starts nothing now
            try:
                backend.drain_pool()
            except SandboxError as exc:
                self.log.debug("nexus_jupyter: %s pool not drained: %s", name, exc)

    def api_url(self, *parts: str) -> str:
        return url_path_join(self.serverapp.base_url, API_PREFIX, *parts)


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "nexus_jupyter.serverextension", "app": NexusSandboxApp}]
