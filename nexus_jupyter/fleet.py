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

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ProviderUnavailable, SandboxError, SandboxStateError

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
    import socket

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
        return self.on_shared_engine(row)

    def on_shared_engine(self, row: dict) -> bool:
        """Whether the row's box is on an engine every host of the fleet reaches (E2B, a
        shared Docker engine); never with one machine's store."""
        if not self.store.shared:
            return False
        try:
            return self.service.provider(row["provider"]).reachable(row["provider_state"])
        except SandboxError:
            return False  # a provider this host lacks: the row's host has it

    def peer_for(self, caller: Caller, row: dict):
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
        from .forwarding import FleetPeer  # http.client and the REST client: only when forwarding

        return FleetPeer(servers, caller, host, sandbox_id)
