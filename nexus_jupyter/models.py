"""The typed results of the sandbox service: the schema of the Python API, the CLI's
``--json``, the REST API and the sidebar's TypeScript types.

Each model's ``to_dict()`` is exactly the JSON that front end shows (the seed's
15-field record, a run's stdout/stderr/exit_code/execution_time/results/error,
a file entry), so a front end never shapes a dict of its own.

The models are plain immutable classes, not dataclasses: making six dataclasses
costs every CLI call ~10 ms on a small machine (each generates and compiles its
methods at import).
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import ClassVar


class SandboxStatus(str, Enum):
    """A sandbox's state as every front end shows it (a failed create shows as stopped)."""

    CREATING = "creating"
    ACTIVE = "active"
    PAUSED = "paused"
    STOPPED = "stopped"

    @property
    def is_live(self) -> bool:
        return self is not SandboxStatus.STOPPED


class _Model:
    """Fields from ``__slots__``, given by name (``_defaults`` for those that may be left
    out); immutable; compared and shown field by field."""

    __slots__: tuple[str, ...] = ()
    _defaults: ClassVar[dict] = {}

    def __init__(self, **fields):
        for name in self.__slots__:
            if name in fields:
                value = fields.pop(name)
            elif name in self._defaults:
                default = self._defaults[name]
                value = default() if callable(default) else default
            else:
                raise TypeError(f"{type(self).__name__} needs {name}")
            object.__setattr__(self, name, value)
        if fields:
            raise TypeError(f"{type(self).__name__} has no field {next(iter(fields))}")

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _replace(self, **changes):
        return type(self)(**{name: changes.get(name, getattr(self, name)) for name in self.__slots__})

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(repr(getattr(self, n)) for n in self.__slots__))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.__slots__)})"


def iso(timestamp: float | None) -> str | None:
    """UTC, seconds precision, no offset: the seed's format (``2025-11-03T01:03:40``)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def from_iso(text: str | None) -> float | None:
    """The Unix time of an ``iso`` string (a record that came as JSON, e.g. over REST)."""
    if text is None:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


class Sandbox(_Model):
    """One sandbox's record (times are Unix seconds here, ISO strings in ``to_dict``)."""

    __slots__ = (
        "agent_id",
        "created_at",
        "expires_at",
        "host",
        "kernel_id",
        "last_active_at",
        "name",
        "notebook",
        "paused_at",
        "provider",
        "provider_status",
        "sandbox_id",
        "status",
        "stop_reason",
        "stopped_at",
        "template_id",
        "tenant_id",
        "ttl_minutes",
        "uptime_seconds",
        "user_id",
        "verified",
    )
    _defaults: ClassVar[dict] = dict.fromkeys(
        ("verified", "provider_status", "notebook", "kernel_id", "stop_reason", "host")
    )
    sandbox_id: str
    name: str
    user_id: str
    agent_id: str | None
    tenant_id: str
    provider: str
    template_id: str | None
    status: SandboxStatus
    created_at: float
    last_active_at: float | None
    paused_at: float | None
    stopped_at: float | None
    ttl_minutes: int
    expires_at: float | None
    uptime_seconds: float
    # The notebook whose ``%%sandbox`` cells made or chose it (its path on the server), when one
    # did, and the kernel whose default sandbox it is now (not in ``to_dict``; the REST API adds it).
    notebook: str | None
    kernel_id: str | None
    # The host holding its box, in a database hosts share (fleet.py); None with one machine's store.
    host: str | None
    # Why it stopped ("stopped", "expired", "vanished", "create failed: ..."): not in ``to_dict``
    # (the seed's record has no such field); the REST API adds it.
    stop_reason: str | None
    # With ``list --verify``: whether the provider confirmed the status, and what it sees.
    verified: bool | None
    provider_status: str | None

    @classmethod
    def from_row(cls, row: dict, now: float) -> Sandbox:
        """The record of a stored row, its uptime counted to ``now`` (or to its stop)."""
        end = row["stopped_at"] if row["stopped_at"] is not None else now
        return cls(
            sandbox_id=row["sandbox_id"],
            name=row["name"],
            user_id=row["user_id"],
            agent_id=row.get("agent_id"),
            tenant_id=row["tenant_id"],
            provider=row["provider"],
            template_id=row.get("template_id"),
            status=SandboxStatus.STOPPED if row["status"] == "failed" else SandboxStatus(row["status"]),
            created_at=row["created_at"],
            last_active_at=row.get("last_active_at"),
            paused_at=row.get("paused_at"),
            stopped_at=row.get("stopped_at"),
            ttl_minutes=row["ttl_minutes"],
            expires_at=row.get("expires_at"),
            uptime_seconds=round(max(end - row["created_at"], 0.0), 3),
            notebook=row.get("notebook"),
            kernel_id=row.get("kernel_id"),
            host=row.get("host"),
            stop_reason=row.get("stop_reason") if row["status"] in ("stopped", "failed") else None,
        )

    @classmethod
    def from_dict(cls, record: dict) -> Sandbox:
        """The model of a record as ``to_dict`` gave it (so ``from_dict(r).to_dict() == r``)."""
        return cls(
            **{name: record.get(name) for name in ("sandbox_id", "name", "user_id", "agent_id", "tenant_id")},
            provider=record["provider"],
            template_id=record.get("template_id"),
            status=SandboxStatus(record["status"]),
            **{
                name: from_iso(record.get(name))
                for name in ("created_at", "last_active_at", "paused_at", "stopped_at", "expires_at")
            },
            ttl_minutes=record["ttl_minutes"],
            uptime_seconds=record["uptime_seconds"],
            notebook=record.get("notebook"),
            host=record.get("host"),
            verified=record.get("verified"),
            provider_status=record.get("provider_status"),
        )

    def verified_as(self, verified: bool, provider_status: str | None) -> Sandbox:
        return self._replace(verified=verified, provider_status=provider_status)

    def to_dict(self) -> dict:
        """The seed's 15 fields, in its order, times in its format; then ``notebook`` when a
        notebook made it, ``host`` in a database hosts share, and ``verified`` and ``provider_status`` once verified."""
        record = {
            "sandbox_id": self.sandbox_id,
            "name": self.name,
            "user_id": self.user_id,
            "agent_id": self.agent_id,
            "tenant_id": self.tenant_id,
            "provider": self.provider,
            "template_id": self.template_id,
            "status": self.status.value,
            "created_at": iso(self.created_at),
            "last_active_at": iso(self.last_active_at),
            "paused_at": iso(self.paused_at),
            "stopped_at": iso(self.stopped_at),
            "ttl_minutes": self.ttl_minutes,
            "expires_at": iso(self.expires_at),
            "uptime_seconds": self.uptime_seconds,
        }
        if self.notebook is not None:
            record["notebook"] = self.notebook
        if self.host is not None:
            record["host"] = self.host
        if self.verified is not None:
            record["verified"] = self.verified
            record["provider_status"] = self.provider_status
        return record


class RichOutput(_Model):
    """A display output or the cell's value: a MIME bundle (``text/plain``, ``image/png``...)."""

    __slots__ = ("data", "is_main_result", "metadata")
    _defaults: ClassVar[dict] = {"metadata": dict, "is_main_result": False}
    data: dict
    metadata: dict
    is_main_result: bool  # the value of the cell's last expression

    @classmethod
    def from_dict(cls, value: dict) -> RichOutput:
        return cls(
            data=value["data"], metadata=value.get("metadata") or {}, is_main_result=bool(value.get("is_main_result"))
        )

    def to_dict(self) -> dict:
        return {"data": self.data, "metadata": self.metadata, "is_main_result": self.is_main_result}


class RunError(_Model):
    """The exception a Python cell ended with."""

    __slots__ = ("name", "traceback", "value")
    name: str
    value: str
    traceback: list[str]

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "traceback": self.traceback}


class RunResult(_Model):
    """What a run produced.  ``results`` and ``error`` are a stateful Python cell's."""

    __slots__ = ("error", "execution_time", "exit_code", "results", "stderr", "stdout")
    _defaults: ClassVar[dict] = {"results": list, "error": None}
    stdout: str
    stderr: str
    exit_code: int
    execution_time: float
    results: list[RichOutput]
    error: RunError | None

    @classmethod
    def from_dict(cls, result: dict) -> RunResult:
        """The model of a run's JSON (``to_dict``'s shape)."""
        return cls.from_outcome(result)

    @classmethod
    def from_outcome(cls, outcome: dict) -> RunResult:
        """From what a provider's ``run``/``execute`` returned."""
        error = outcome.get("error")
        return cls(
            stdout=outcome["stdout"],
            stderr=outcome["stderr"],
            exit_code=outcome["exit_code"],
            execution_time=outcome["execution_time"],
            results=[RichOutput.from_dict(r) for r in outcome.get("results") or []],
            error=RunError(name=error["name"], value=error["value"], traceback=list(error["traceback"]))
            if error
            else None,
        )

    def to_dict(self) -> dict:
        return {
            "stdout": self.stdout,
            "stderr": self.stderr,
            "exit_code": self.exit_code,
            "execution_time": self.execution_time,
            "results": [result.to_dict() for result in self.results],
            "error": self.error.to_dict() if self.error else None,
        }


class FileEntry(_Model):
    """One entry of a directory listing (``modified``: Unix seconds)."""

    __slots__ = ("modified", "name", "path", "size", "type")
    name: str
    path: str
    type: str  # file, dir or symlink
    size: int
    modified: float

    @classmethod
    def from_dict(cls, value: dict) -> FileEntry:
        return cls(
            name=value["name"], path=value["path"], type=value["type"], size=value["size"], modified=value["modified"]
        )

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "type": self.type, "size": self.size, "modified": self.modified}


class Metrics(_Model):
    """What a sandbox uses now, as its provider counts it (None: not counted there)."""

    __slots__ = (
        "cpu_seconds",
        "disk_limit_bytes",
        "disk_used_bytes",
        "measured_at",
        "memory_bytes",
        "memory_limit_bytes",
        "memory_peak_bytes",
        "processes",
        "sandbox_id",
    )
    sandbox_id: str
    cpu_seconds: float | None  # since the box started
    memory_bytes: int | None
    memory_peak_bytes: int | None
    memory_limit_bytes: int | None
    processes: int | None
    disk_used_bytes: int | None  # every file the box wrote (home, /tmp, /dev/shm)
    disk_limit_bytes: int | None
    measured_at: float

    @classmethod
    def from_usage(cls, sandbox_id: str, usage: dict, measured_at: float) -> Metrics:
        def number(key: str):
            value = usage.get(key)
            return value if isinstance(value, (int, float)) and value >= 0 else None

        cpu = number("cpu_seconds")
        return cls(
            sandbox_id=sandbox_id,
            cpu_seconds=round(cpu, 3) if cpu is not None else None,
            memory_bytes=number("memory_bytes"),
            memory_peak_bytes=number("memory_peak_bytes"),
            memory_limit_bytes=number("memory_limit_bytes"),
            processes=number("processes"),
            disk_used_bytes=number("disk_used_bytes"),
            disk_limit_bytes=number("disk_limit_bytes"),
            measured_at=measured_at,
        )

    @classmethod
    def from_dict(cls, figures: dict) -> Metrics:
        return cls(**{**figures, "measured_at": from_iso(figures["measured_at"])})

    def to_dict(self) -> dict:
        return {
            "sandbox_id": self.sandbox_id,
            "cpu_seconds": self.cpu_seconds,
            "memory_bytes": self.memory_bytes,
            "memory_peak_bytes": self.memory_peak_bytes,
            "memory_limit_bytes": self.memory_limit_bytes,
            "processes": self.processes,
            "disk_used_bytes": self.disk_used_bytes,
            "disk_limit_bytes": self.disk_limit_bytes,
            "measured_at": iso(self.measured_at),
        }
