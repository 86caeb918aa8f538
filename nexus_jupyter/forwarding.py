"""A request for a box another host holds, sent to that host's server as the caller (fleet.py)."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING
from urllib.parse import quote

from .errors import ProviderUnavailable, RunCancelled, SandboxError
from .fleet import ADMIN_HEADER, USER_HEADER
from .remote import RemoteService

if TYPE_CHECKING:
    from .service import Caller


class FleetPeer(RemoteService):
    """The service of the server holding a sandbox, reached over its REST API as the caller.

    Another advertised server of the host is tried only when one cannot be connected to: a
    request that may have reached a server (a run, a part of an upload) is never sent twice.
    Whatever goes wrong after that is one line naming the host, as ProviderUnavailable (503)."""

    def __init__(self, servers: list[dict], caller: Caller, host: str, sandbox_id: str):
        self._servers = list(servers)
        self._caller = caller
        self._holder = (host, sandbox_id)
        self._tried: list[str] = []
        self._current = None
        super().__init__(self._servers[0]["url"], self._servers[0]["secret"])

    def _send(self, method: str, path: str, body=None, headers: dict | None = None, query: dict | None = None):
        import http.client

        headers = {
            **(headers or {}),
            "Authorization": f"Bearer {self.api_key}",
            USER_HEADER: quote(self._caller.user_id, safe=""),  # any user name, as ASCII
            ADMIN_HEADER: "1" if self._caller.is_admin else "0",
        }
        while True:
            connection = self._connection()
            if connection.sock is None:
                try:
                    connection.connect()
                except OSError as exc:
                    self._next_server(exc)
                    continue
            try:
                connection.request(method, self._target(path, query), body, headers)
                return connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                raise self._lost(exc) from None

    def _next_server(self, exc: OSError) -> None:
        """The next server of the host, after one that could not be connected to."""
        self._tried.append(self.url)
        self._reason = exc.strerror or str(exc) or type(exc).__name__
        self._servers.pop(0)
        if not self._servers:
            host, sandbox_id = self._holder
            raise ProviderUnavailable(
                f"Sandbox {sandbox_id} is on host {host}, whose server at {', '.join(self._tried)} "
                f"is not answering ({self._reason}): it is reachable again once that server runs"
            )
        self._connection(fresh=True)
        server = self._servers[0]
        RemoteService.__init__(self, server["url"], server["secret"])

    def _lost(self, exc: BaseException) -> ProviderUnavailable:
        host, sandbox_id = self._holder
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return ProviderUnavailable(
            f"Sandbox {sandbox_id} is on host {host}, whose server at {self.url} stopped answering: {reason}"
        )

    def _fail(self, response, path: str) -> SandboxError:
        if response.status == 403:  # the holder restarted (a new key) between our read and our call
            response.read()
            host, sandbox_id = self._holder
            return ProviderUnavailable(
                f"Sandbox {sandbox_id} is on host {host}, whose server at {self.url} did not take this "
                "server's forwarding (it restarted?): try again"
            )
        error = super()._fail(response, path)
        if response.status >= 500 and not isinstance(error, ProviderUnavailable):
            return ProviderUnavailable(f"the server of host {self._holder[0]} failed: {error}")
        return error

    def _connection(self, fresh: bool = False):
        self._current = super()._connection(fresh)
        return self._current

    def run(self, caller, sandbox_id: str, language: str, code: str, timeout=None, *, cancel=None, **options):
        """As RemoteService.run; ``cancel`` (a REST client of this server went away) hangs up on
        the holder, which cancels the run there as for any client."""
        import http.client

        if cancel is not None:
            cancel.on_cancel(self._hang_up)
        try:
            if cancel is not None and cancel.cancelled:
                raise RunCancelled(f"the run in {sandbox_id} was cancelled")
            return super().run(caller, sandbox_id, language, code, timeout, **options)
        except (SandboxError, OSError, http.client.HTTPException) as exc:
            if cancel is not None and cancel.cancelled:
                raise RunCancelled(f"the run in {sandbox_id} was cancelled") from None
            if isinstance(exc, SandboxError):
                raise
            raise self._lost(exc) from None  # the holder went away mid-answer

    def read_file_chunks(self, caller, sandbox_id: str, path: str):
        import http.client

        try:
            yield from super().read_file_chunks(caller, sandbox_id, path)
        except (OSError, http.client.HTTPException) as exc:
            raise self._lost(exc) from None  # the holder went away mid-file

    def _hang_up(self) -> None:
        connection = self._current
        if connection is not None and connection.sock is not None:
            try:
                connection.sock.shutdown(socket.SHUT_RDWR)  # the reading thread wakes; the holder sees a hang-up
            except OSError:
                pass
