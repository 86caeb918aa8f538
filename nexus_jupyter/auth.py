"""API keys as Jupyter users: the identity provider of ``nexus serve``.

    c.ServerApp.identity_provider_class = "nexus_jupyter.auth.ApiKeyIdentityProvider"
    c.ServerApp.authorizer_class = "nexus_jupyter.auth.SandboxesOnlyAuthorizer"   # required
    c.ApiKeyIdentityProvider.keys_file = "/etc/nexus/keys"   # a team shares one server
    # or one key, one user: NEXUS_API_KEY in the server's environment

A key holder must reach the sandbox API and nothing else: with Jupyter's own
authorizer a key would open kernels, terminals and files on the host, outside any
sandbox.  So without ``SandboxesOnlyAuthorizer`` this provider refuses every
request (and says why in the log).

A request presents its key as ``Authorization: Bearer <key>`` (or ``token <key>``,
as Jupyter's own clients send it).  The keys file has one key per line:
``<key> <user> [admin]``, where the key may be written as ``sha256:<hex digest>``
so the file need not hold it; ``#`` starts a comment.  The file is read again
when it changes, so keys are added and revoked without a restart.  Keys are never
logged.  Each key's user owns the sandboxes it creates and sees only those
(admins see everyone's).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
from dataclasses import dataclass

from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.auth.identity import IdentityProvider, User
from traitlets import Unicode, default

from .errors import InvalidArgument


@dataclass
class SandboxUser(User):
    """A Jupyter user that may also be a sandbox admin (sees and acts on every user's sandboxes)."""

    is_admin: bool = False
    forwarded: bool = False  # by another server of the fleet, for this user (fleet.py)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_keys_file(path: str) -> dict[str, tuple[str, bool]]:
    """``{sha256 of key: (user, is_admin)}``; InvalidArgument names the line that is wrong."""
    keys: dict[str, tuple[str, bool]] = {}
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the API keys file {path}: {exc.strerror}") from None
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) not in (2, 3) or (len(words) == 3 and words[2] != "admin"):
            raise InvalidArgument(f"{path} line {number}: expected '<key> <user> [admin]'")
        key, user = words[0], words[1]
        hashed = key.removeprefix("sha256:").lower() if key.startswith("sha256:") else digest(key)
        if len(key) < 16 and not key.startswith("sha256:"):
            raise InvalidArgument(f"{path} line {number}: a key must be at least 16 characters")
        keys[hashed] = (user, len(words) == 3)
    return keys


class ApiKeyIdentityProvider(IdentityProvider):
    """Users identified by API keys (a keys file, or ``NEXUS_API_KEY`` for one user)."""

    keys_file = Unicode("", help="A file of '<key> <user> [admin]' lines [default: $NEXUS_API_KEYS_FILE]").tag(
        config=True
    )
    api_key = Unicode("", help="The one key this server accepts, for user_name [default: $NEXUS_API_KEY]").tag(
        config=True
    )
    user_name = Unicode(help="The user of api_key [default: $NEXUS_USER, else the OS user]").tag(config=True)

    @default("keys_file")
    def _default_keys_file(self) -> str:
        return os.environ.get("NEXUS_API_KEYS_FILE", "")

    @default("api_key")
    def _default_api_key(self) -> str:
        return os.environ.get("NEXUS_API_KEY", "")

    @default("user_name")
    def _default_user_name(self) -> str:
        return os.environ.get("NEXUS_USER") or getpass.getuser()

    @default("token")
    def _no_jupyter_token(self) -> str:
        return ""  # keys, not Jupyter's generated token, are how clients get in

    _loaded: tuple[tuple, dict] | None = None

    def keys(self) -> dict[str, tuple[str, bool]]:
        """The keys in force: the file's (read again when it changes) and ``api_key``."""
        keys: dict[str, tuple[str, bool]] = {}
        if self.api_key:
            keys[digest(self.api_key)] = (self.user_name, False)
        if self.keys_file:
            info = os.stat(self.keys_file)
            # Not the time alone: an edit that keeps it (cp -p, rsync -t) must still count.
            changed = (info.st_mtime_ns, info.st_size, info.st_ino, info.st_ctime_ns)
            if self._loaded is None or self._loaded[0] != changed:
                self._loaded = (changed, read_keys_file(self.keys_file))
            keys.update(self._loaded[1])
        return keys

    _refusing_logged = False

    def get_user(self, handler) -> SandboxUser | None:
        if not isinstance(handler.settings.get("authorizer"), SandboxesOnlyAuthorizer):
            if not self._refusing_logged:
                self._refusing_logged = True
                self.log.critical(
                    "nexus: API keys refused: set c.ServerApp.authorizer_class = "
                    "'nexus_jupyter.auth.SandboxesOnlyAuthorizer' (a key would open kernels on this host)"
                )
            return None
        header = handler.request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() not in ("bearer", "token") or not presented.strip():
            return None
        hashed = digest(presented.strip())
        try:
            keys = self.keys()
        except (OSError, InvalidArgument) as exc:
            self.log.error("nexus: API keys unavailable: %s", exc)
            return None
        for known, (user, admin) in keys.items():
            if hmac.compare_digest(known, hashed):
                handler._token_authenticated = True  # a header, not a cookie: no XSRF to check
                return SandboxUser(username=user, is_admin=admin)
        return None

    @property
    def auth_enabled(self) -> bool:
        return True

    @property
    def login_available(self) -> bool:
        return False  # no login page: a browser has no key to type

    def validate_security(self, app, ssl_options=None) -> None:
        if not self.api_key and not self.keys_file:
            self.log.critical("nexus: no API key (NEXUS_API_KEY) and no keys file: every request will be refused")
        if self.keys_file:
            read_keys_file(self.keys_file)  # a malformed file stops the server now, with its line


class SandboxesOnlyAuthorizer(Authorizer):
    """Only the sandbox API: a key opens sandboxes, never a kernel, a terminal or a file on the
    server's host (those would run code outside any sandbox).  For ``nexus serve``."""

    def is_authorized(self, handler, user, action: str, resource: str) -> bool:
        # /api/status and /api/me (read) tell a client the server is up and who it is
        return resource == "nexus_sandboxes" or (resource == "api" and action == "read")
