"""A request for a box another host holds, sent to that host's server as the caller (fleet.py)."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from .errors import ProviderUnavailable, RunCancelled, SandboxError
from .fleet import ADMIN_HEADER, USER_HEADER
from .remote import RemoteService

if TYPE_CHECKING:
    from .service import Caller


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
