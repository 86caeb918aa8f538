"""One exception hierarchy for every front end.

Front ends turn these into one-line messages: the CLI prints ``Error: <msg>``
and exits non-zero, magics raise ``UsageError``, REST answers 4xx.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Base class: a user-facing error whose message is one clear line."""

    exit_code = 1


class InvalidArgument(SandboxError, ValueError):
    """A bad value from the caller (ttl, language, code, path...)."""

    exit_code = 2


class SandboxNotFound(SandboxError, KeyError):
    """No such sandbox, or it belongs to another user."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "sandbox not found"


class PathNotFound(SandboxError):
    """No such file or directory inside the sandbox."""


class SandboxStateError(SandboxError):
    """The operation is not allowed in the sandbox's current state."""


class PermissionDenied(SandboxError, PermissionError):
    """The caller may not do this (e.g. list another user's sandboxes)."""


class QuotaExceeded(SandboxError):
    """The caller holds as many live sandboxes as a user may (``max_sandboxes_per_user``)."""


class SandboxTimeout(SandboxError, TimeoutError):
    """A run exceeded its timeout.  ``result`` holds what it printed until then."""

    exit_code = 124

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result


class RunCancelled(SandboxError):
    """The caller cancelled a run under way (a REST client that disconnected)."""


class ProviderUnavailable(SandboxError):
    """The provider cannot work here (missing tool, engine down, no API key)."""


class ProviderNotSupported(SandboxError):
    """The provider does not offer this operation (e.g. pause on E2B)."""


class StoreError(SandboxError):
    """The state database cannot be used (newer schema, unreadable file)."""


class AgentUnreachable(SandboxError):
    """The box's agent does not answer (the box died or never started)."""


class AgentUnresponsive(AgentUnreachable):
    """The agent (or whatever holds its socket) did not finish answering in time."""


class AgentImpostor(AgentUnreachable):
    """What answered on the box's socket is not the box's agent."""
