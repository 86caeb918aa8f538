"""nexus-jupyter: secure, disposable code sandboxes for AI agents and data scientists."""

from ._version import __version__  # written by the build from labextension/package.json
from .errors import (
    InvalidArgument,
    PermissionDenied,
    ProviderNotSupported,
    ProviderUnavailable,
    QuotaExceeded,
    SandboxError,
    SandboxNotFound,
    SandboxStateError,
    SandboxTimeout,
    StoreError,
)
from .manager import SandboxManager

__all__ = [
    "InvalidArgument",
    "PermissionDenied",
    "ProviderNotSupported",
    "ProviderUnavailable",
    "QuotaExceeded",
    "SandboxError",
    "SandboxManager",
    "SandboxNotFound",
    "SandboxStateError",
    "SandboxTimeout",
    "StoreError",
    "__version__",
]


def panel(manager=None, refresh_seconds: float = 5.0):
    """An ipywidgets panel listing your sandboxes, with pause, resume, stop and create."""
    from .panel import panel as make_panel

    return make_panel(manager, refresh_seconds)


def load_ipython_extension(shell) -> None:
    """``%load_ext nexus_jupyter``: the ``%%sandbox`` and ``%sandbox`` magics."""
    from .magics import load_ipython_extension as load

    load(shell)


def _jupyter_server_extension_points() -> list[dict]:
    """The Jupyter server extension (serverextension.py), imported only by a server."""
    from .serverextension import NexusSandboxApp

    return [{"module": "nexus_jupyter.serverextension", "app": NexusSandboxApp}]
