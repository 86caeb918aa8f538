"""Several hosts over one shared database: which host holds a sandbox, and getting a request there.

With ``NEXUS_DATABASE_URL`` every host's processes keep their rows in one PostgreSQL
database, but a local (bubblewrap) box is reachable only from the machine, and the data
dir, it runs in: its agent's socket is a file there.  So each row names its ``host``,
and a process asked to act on a box another host holds sends the request to that
host's server instead (every server advertises its URL in the database, with a key it
accepts such requests by), as the caller, streaming the answer back.  Boxes of shared
engines (E2B, a remote Docker engine: ``Provider.reachable``) are operated directly
from any host configured for them.

Whoever can write the database is trusted as a member of the fleet: a server's
forwarding key lives there, next to every sandbox's state.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ProviderUnavailable, RunCancelled, SandboxError, SandboxStateError
from .remote import RemoteService

if TYPE_CHECKING:
    from .service import Caller, SandboxService

HOST_ID_FILE = "host-id"
# A forwarded request names the user it acts for; its Authorization is the target server's key.
USER_HEADER = "X-Nexus-Fleet-User"
ADMIN_HEADER = "X-Nexus-Fleet-Admin"


def host_id_of(data_dir: Path, configured: str = "") -> str:
    """This host's name in the fleet: ``configured`` (NEXUS_HOST_ID), else the machine's name
    and a suffix made once and kept in the data dir (two data dirs on one machine, such as
    two servers' of one user, hold different boxes: they are two hosts)."""
    if configured:
        return configured
    import secrets  # here: hmac and hashlib cost a CLI call a few ms

    from .atomic_file import read_or_write_once

    name = "".join(ch if ch.isalnum() or ch in ".-" else "-" for ch in socket.gethostname())[:60] or "host"
    path = Path(data_dir) / HOST_ID_FILE
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        return read_or_write_once(path, f"{name}-{secrets.token_hex(2)}")
    except OSError as exc:
        raise ProviderUnavailable(f"cannot keep this host's id in {path}: {exc.strerror or exc}") from None


class Fleet:
    """This process's view of the fleet: its host, and the peer that holds another host's box."""

    def __init__(self, service: SandboxService):
        self.service = service
        self.store = service.store
        self._host_id: str | None = None

    @property
    def host_id(self) -> str:
        if self._host_id is None:
            self._host_id = host_id_of(self.store.data_dir, self.service.settings.host_id)
        return self._host_id

    def holds(self, row: dict) -> bool:
        """Whether this process can reach the row's box itself."""
        if not self.store.shared or row.get("host") in (None, self.host_id):
            return True
        try:
            return self.service.provider(row["provider"]).reachable(row["provider_state"])
        except SandboxError:
            return False  # a provider this host lacks: the row's host has it

    def peer_for(self, caller: Caller, row: dict) -> FleetPeer | None:
        """None when the box is reachable here; else the server of the host that holds it,
        acting as ``caller`` (ProviderUnavailable when that host runs no server)."""
        if self.holds(row):
            return None
        sandbox_id, host = row["sandbox_id"], row["host"]
        if caller.forwarded:
            # Two servers both think the other holds it (two hosts given one NEXUS_HOST_ID?).
            raise SandboxStateError(
                f"Sandbox {sandbox_id} is on host {host}, and this server is host {self.host_id}: "
                "a forwarded request goes no further (check each host's NEXUS_HOST_ID)"
            )
        servers = self.store.servers(host)
        if not servers:
            raise ProviderUnavailable(
                f"Sandbox {sandbox_id} is on host {host}, where no nexus server is running: start one there "
                f"(nexus serve, or a Jupyter server with the extension) or act on it from {host}"
            )
        return FleetPeer(servers, caller, host, sandbox_id)


class FleetPeer(RemoteService):
    """The service of the server holding a sandbox, reached over its REST API as the caller;
    the host's other advertised servers are tried when one does not answer."""

    def __init__(self, servers: list[dict], caller: Caller, host: str, sandbox_id: str):
        self._servers = list(servers)
        self._caller = caller
        self._holder = (host, sandbox_id)
        self._tried: list[str] = []
        super().__init__(self._servers[0]["url"], self._servers[0]["secret"])

    def _send(self, method: str, path: str, body=None, headers: dict | None = None, query: dict | None = None):
        headers = {
            **(headers or {}),
            USER_HEADER: self._caller.user_id,
            ADMIN_HEADER: "1" if self._caller.is_admin else "0",
        }
        while True:
            try:
                return super()._send(method, path, body, headers, query)
            except ProviderUnavailable:
                self._tried.append(self.url)
                self._servers.pop(0)
                # Refused before a byte was sent: a streamed body is still whole for the next one.
                if not self._servers:
                    raise self._no_server() from None
                connection = getattr(self._local, "connection", None)
                if connection is not None:
                    connection.close()
                    self._local.connection = None
                server = self._servers[0]
                RemoteService.__init__(self, server["url"], server["secret"])

    def _connection(self, fresh: bool = False):
        self._current = super()._connection(fresh)
        return self._current

    def run(self, caller, sandbox_id: str, language: str, code: str, timeout=None, *, cancel=None, **options):
        """As RemoteService.run; ``cancel`` (a REST client of this server went away) hangs up on
        the holder, which cancels the run there as for any client."""
        if cancel is None:
            return super().run(caller, sandbox_id, language, code, timeout, **options)
        self._current = None
        cancel.on_cancel(self._hang_up)
        try:
            if cancel.cancelled:
                raise RunCancelled(f"the run in {sandbox_id} was cancelled")
            return super().run(caller, sandbox_id, language, code, timeout, **options)
        except SandboxError:
            if cancel.cancelled:
                raise RunCancelled(f"the run in {sandbox_id} was cancelled") from None
            raise

    def _hang_up(self) -> None:
        connection = getattr(self, "_current", None)
        if connection is not None and connection.sock is not None:
            connection.sock.shutdown(socket.SHUT_RDWR)  # the reading thread wakes; the holder sees a hang-up

    def _unreachable(self, exc: Exception) -> ProviderUnavailable:
        self._reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return ProviderUnavailable(self._reason)

    def _no_server(self) -> ProviderUnavailable:
        host, sandbox_id = self._holder
        return ProviderUnavailable(
            f"Sandbox {sandbox_id} is on host {host}, whose server at {', '.join(self._tried)} "
            f"is not answering ({self._reason}): it is reachable again once that server runs"
        )
