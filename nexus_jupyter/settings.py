"""Every setting of the service, its one default, and where a value comes from.

A value comes from, in order: what a host set (a Jupyter server's or IPython's
traitlets config, ``config.py``, through ``Settings.set``), else the
environment variable named here (how the CLI is configured), else the default
below.  This module is plain Python: the CLI reads settings on every call and
cannot afford traitlets' import (~90 ms on a small machine); ``config.py``
builds the traitlets face of the same table.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .errors import InvalidArgument
from .validation import positive_number, whole_number

MAX_TTL_MINUTES = 7 * 24 * 60
MAX_TIMEOUT_SECONDS = 24 * 3600
MAX_POOL_SIZE = 64


class Setting:
    """One setting: its environment variable, default, check (raising InvalidArgument) and help."""

    __slots__ = ("check", "default", "env", "help", "name")

    def __init__(self, name: str, env: str, default, check: Callable, help: str):
        self.name = name
        self.env = env
        self.default = default
        self.check = check
        self.help = help

    def from_environment(self):
        raw = os.environ.get(self.env, "").strip()
        return self.default if not raw else self.check(raw, self.env)


def _provider_name(value, what: str) -> str:
    text = str(value).strip()
    if not text:
        raise InvalidArgument(f"{what} must name a provider")
    return text


def _pool_size(value, what: str) -> int:
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, bool) or not (isinstance(text, int) or (isinstance(text, str) and text.isdigit())):
        raise InvalidArgument(f"{what} must be a whole number from 0 (no pool) to {MAX_POOL_SIZE}, not {value!r}")
    if not 0 <= int(text) <= MAX_POOL_SIZE:
        raise InvalidArgument(f"{what} must be a whole number from 0 (no pool) to {MAX_POOL_SIZE}, not {value!r}")
    return int(text)


def _database_url(value, what: str) -> str:
    text = str(value).strip()
    if text and not text.startswith(("postgresql://", "postgres://")):
        raise InvalidArgument(f"{what} must be a postgresql:// URL (empty: SQLite in the data dir)")
    return text


def _host_id(value, what: str) -> str:
    text = str(value).strip()
    if text and (len(text) > 100 or not all(ch.isalnum() or ch in "._-" for ch in text)):
        raise InvalidArgument(f"{what} must be at most 100 letters, digits, dots, dashes or underscores")
    return text


SERVICE_SETTINGS = {
    setting.name: setting
    for setting in (
        Setting(
            "default_provider",
            "NEXUS_SANDBOX_PROVIDER",
            "local",
            _provider_name,
            "The provider of sandboxes created without one (local, docker, or a plugin's name).",
        ),
        Setting(
            "default_ttl",
            "NEXUS_DEFAULT_TTL",
            10,
            lambda v, what: whole_number(v, what, 1, MAX_TTL_MINUTES),
            "Idle minutes before a sandbox expires, for creates that do not say.",
        ),
        Setting(
            "default_timeout",
            "NEXUS_DEFAULT_TIMEOUT",
            30.0,
            lambda v, what: positive_number(v, what, MAX_TIMEOUT_SECONDS, "seconds"),
            "Seconds a run may take, for runs that do not say.",
        ),
        Setting(
            "default_memory_mb",
            "NEXUS_DEFAULT_MEMORY_MB",
            1024,
            lambda v, what: whole_number(v, what, 64, 1 << 20),
            "Memory limit in MiB of sandboxes created without one.",
        ),
        Setting(
            "max_output_chars",
            "NEXUS_MAX_OUTPUT_CHARS",
            1 << 20,
            lambda v, what: whole_number(v, what, 1024, 1 << 28),
            "Characters of stdout (and of stderr) a run keeps; the rest is cut with a note.",
        ),
        Setting(
            "max_sandboxes_per_user",
            "NEXUS_MAX_SANDBOXES_PER_USER",
            0,
            lambda v, what: whole_number(v, what, 0, 1 << 20),
            "Live sandboxes one user may hold at once (0: no limit); set it on a server a team shares.",
        ),
        Setting(
            "max_file_mb",
            "NEXUS_MAX_FILE_MB",
            256,
            lambda v, what: whole_number(v, what, 1, 1 << 20),
            "The largest file, in MiB, that a read or a download takes out of a sandbox.",
        ),
        Setting(
            "database_url",
            "NEXUS_DATABASE_URL",
            "",
            _database_url,
            "A PostgreSQL database every process and host shares (postgresql://user:pass@host/db); "
            "empty: SQLite in the data dir.",
        ),
        Setting(
            "host_id",
            "NEXUS_HOST_ID",
            "",
            _host_id,
            "This host's name in a shared database (the HOST of its local sandboxes); empty: "
            "the machine's name and a suffix kept in the data dir, so two data dirs are two hosts.",
        ),
    )
}

# Per provider: how many spare boxes a process keeps started.  Any process claims a
# spare box that fits, whoever started it (a notebook kernel claims the server's).
POOL_SETTINGS = {
    "local": Setting(
        "pool_size",
        "NEXUS_LOCAL_POOL_SIZE",
        1,
        _pool_size,
        "Local boxes kept started with their Python runtime warm (0: none); each idles at ~45 MiB.",
    ),
    "docker": Setting(
        "pool_size",
        "NEXUS_DOCKER_POOL_SIZE",
        0,
        _pool_size,
        "Docker containers kept started per image (0: none; a CLI call would not live to refill it).",
    ),
}


class Settings:
    """The values one service uses.  Unset values are read from the environment when first
    used, so a bad variable fails the call that needs it, with its name, and nothing else."""

    def __init__(self, **values):
        self._values: dict = {}
        self._pools: dict[str, int] = {}
        for name, value in values.items():
            self.set(name, value)

    def set(self, name: str, value) -> None:
        if name not in SERVICE_SETTINGS:
            raise InvalidArgument(f"no such setting: {name}")
        self._values[name] = SERVICE_SETTINGS[name].check(value, name)

    def set_pool_size(self, provider: str, size: int) -> None:
        self._pools[provider] = _pool_size(size, f"{provider} pool_size")

    def pool_size(self, provider: str) -> int | None:
        """The provider's pool size: what a host set, else its variable or default; None for a
        provider without a pool setting here (a plugin decides its own)."""
        if provider in self._pools:
            return self._pools[provider]
        setting = POOL_SETTINGS.get(provider)
        return setting.from_environment() if setting is not None else None

    def __getattr__(self, name: str):
        setting = SERVICE_SETTINGS.get(name)
        if setting is None:
            raise AttributeError(name)
        if name in self._values:
            return self._values[name]
        return setting.from_environment()

    @property
    def max_file_bytes(self) -> int:
        return self.max_file_mb << 20

    def __repr__(self) -> str:
        shown = {name: getattr(self, name) for name in SERVICE_SETTINGS}
        return f"Settings({shown}, pools={self._pools})"
