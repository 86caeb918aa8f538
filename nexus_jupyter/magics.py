"""IPython magics: ``%%sandbox`` runs a cell in a sandbox, ``%sandbox`` manages sandboxes.

    %load_ext nexus_jupyter

    %%sandbox python --timeout 60          # the notebook's own sandbox, made on first use
    import pandas as pd
    pd.DataFrame({"a": [1, 2]})            # shown as the table, as in a normal cell

    %sandbox create analysis --ttl 60      # and: list, status, pause, resume, stop, use, upload, download

A thin layer over SandboxManager: parse, call, render.  Output streams into
the cell while the code runs; rich outputs (figures, tables) are displayed;
a failing cell fails the way a local one does (so "Run All" stops there);
interrupting the kernel interrupts the sandboxed code.  Mistakes raise
UsageError: one line, no traceback.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser
from IPython.display import display
from traitlets import Float, Int, Unicode

from .config import configured_settings
from .errors import SandboxError, SandboxTimeout
from .formatting import columns, printable
from .manager import SandboxManager
from .remote import remote_from_environment
from .service import SandboxService
from .validation import LANGUAGE_ALIASES, LANGUAGES

LINE_VERBS = ("create", "list", "status", "pause", "resume", "stop", "use", "upload", "download", "panel")


class SandboxCellError(Exception):
    """A cell that failed in its sandbox.  Its output (the traceback included) was
    already shown as it streamed, so the local traceback adds only one line."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def _render_traceback_(self) -> list[str]:
        return [self.message] if self.message else []


class SandboxInterrupted(KeyboardInterrupt):
    """The kernel was interrupted during a %%sandbox cell: the sandboxed run was cancelled
    (the connection to the box closed).  One line, not the host's call stack."""

    def _render_traceback_(self) -> list[str]:
        return ["KeyboardInterrupt: the sandboxed code was stopped"]


class MimeBundle:
    """A cell's value as the sandbox's kernel rendered it, displayed as the cell's output."""

    def __init__(self, data: dict, metadata: dict | None = None):
        self.data = data
        self.metadata = metadata or {}

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.data, self.metadata

    def __repr__(self) -> str:
        return self.data.get("text/plain", "<sandbox output>")


class SandboxTable:
    """``%sandbox list``: an HTML table in a notebook, plain text elsewhere."""

    COLUMNS = ("sandbox_id", "name", "status", "provider", "uptime_seconds", "expires_at")

    def __init__(self, records: list[dict]):
        self.records = records

    def _rows(self) -> list[list[str]]:
        return [[printable(record.get(column)) for column in self.COLUMNS] for record in self.records]

    def _repr_html_(self) -> str:
        from html import escape

        head = "".join(f"<th>{escape(column)}</th>" for column in self.COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in self._rows())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self) -> str:
        return columns([list(self.COLUMNS), *self._rows()])


def _parser(prog: str, *arguments: tuple[tuple, dict]) -> MagicArgumentParser:
    parser = MagicArgumentParser(prog=prog, add_help=False)
    for args, kwargs in arguments:
        parser.add_argument(*args, **kwargs)
    return parser


CELL_PARSER = _parser(
    "%%sandbox",
    (("language",), {"nargs": "?", "default": "python"}),
    (("--timeout", "-t"), {"type": float}),
    (("--sandbox", "-s"), {}),
    (("--ttl",), {"type": int}),
    (("--provider", "-p"), {}),
    (("--template",), {}),
    (("--out", "-o"), {}),
    (("--fresh",), {"action": "store_true"}),
)
SANDBOX_ARG = (("sandbox",), {"nargs": "?"})
LINE_PARSERS = {
    "create": _parser(
        "%sandbox create",
        (("name",), {}),
        (("--ttl",), {"type": int}),
        (("--provider", "-p"), {}),
        (("--template",), {}),
    ),
    "list": _parser(
        "%sandbox list", (("--all",), {"action": "store_true"}), (("--verify", "-v"), {"action": "store_true"})
    ),
    "status": _parser("%sandbox status", SANDBOX_ARG),
    "pause": _parser("%sandbox pause", SANDBOX_ARG),
    "resume": _parser("%sandbox resume", SANDBOX_ARG),
    "stop": _parser("%sandbox stop", SANDBOX_ARG),
    "use": _parser("%sandbox use", (("sandbox",), {})),
    "upload": _parser("%sandbox upload", (("local",), {}), (("dest",), {"nargs": "?"})),
    "download": _parser("%sandbox download", (("path",), {}), (("local",), {"nargs": "?"})),
    "panel": _parser("%sandbox panel", (("--refresh",), {"type": float, "default": 5.0})),
}


def _parse(parser: MagicArgumentParser, line: str):
    import shlex

    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"{parser.prog}: {exc}") from None
    return parser.parse_args(words)  # MagicArgumentParser raises UsageError itself


@magics_class
class SandboxMagics(Magics):
    """``%%sandbox`` and ``%sandbox``.  Defaults are settable with ``%config SandboxMagics.<name> = ...``."""

    default_timeout = Float(60.0, help="Seconds a %%sandbox cell may run").tag(config=True)
    default_ttl = Int(30, help="Idle minutes before the notebook's own sandbox expires").tag(config=True)
    default_provider = Unicode(None, allow_none=True, help="Provider for new sandboxes").tag(config=True)
    default_template = Unicode(None, allow_none=True, help="Template (e.g. Docker image) for new sandboxes").tag(
        config=True
    )

    def __init__(self, shell=None, manager: SandboxManager | None = None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        self._manager = manager
        self._making_manager = threading.Lock()
        self.current: str | None = None  # the sandbox %%sandbox cells use by default
        # The service's settings, kept current by %config SandboxService... (config.py)
        self.settings, self.configurables = configured_settings(parent=self.parent or shell)

    @property
    def manager(self) -> SandboxManager:
        with self._making_manager:  # the background warm-up and the first cell may ask at once
            if self._manager is None:
                # Remote mode (NEXUS_URL) goes through the server, whose settings apply there.
                service = remote_from_environment() or SandboxService(settings=self.settings)
                self._manager = SandboxManager(service=service)
            return self._manager

    def warm_up(self) -> None:
        """After %load_ext, in the background: what the notebook's first %%sandbox cell would
        otherwise wait for (the provider's imports and probes, ~40 ms here)."""
        try:
            self.manager.service.prepare(self.default_provider)
        except Exception:
            pass  # the first cell meets the same problem, and says it

    # ---- the notebook's own sandbox
    @staticmethod
    def _notebook_path() -> str | None:
        # Jupyter server gives a kernel its notebook's path: it is recorded on the sandboxes the
        # notebook makes, so Lab's toolbar item finds them.
        return os.environ.get("JPY_SESSION_NAME") or None

    @staticmethod
    def _kernel_id() -> str | None:
        # A kernel started by Jupyter server has its id in its connection file's name; Lab's
        # toolbar item knows the same id, so it finds this notebook's sandbox after a rename.
        try:
            from ipykernel.connect import get_connection_file

            name = os.path.basename(get_connection_file())
        except Exception:  # not in a kernel (plain IPython)
            return None
        found = re.fullmatch(r"kernel-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.json", name)
        return found.group(1) if found else None

    def _choose(self, sandbox_id: str) -> None:
        """Make it the sandbox %%sandbox cells use, and say so in the store for Lab's toolbar."""
        changed = sandbox_id != self.current
        self.current = sandbox_id
        kernel = self._kernel_id()
        if changed and kernel:
            try:
                self.manager.sandbox_attach(sandbox_id, kernel, self._notebook_path())
            except SandboxError:
                pass  # only the toolbar's label is missed: the cell itself goes on

    def _notebook_sandbox_name(self) -> str:
        # The notebook's path where the server gives it: a restarted kernel finds its sandbox again.
        session = self._notebook_path()
        return f"notebook:{session}" if session else f"kernel-{os.getpid()}"

    def _default_sandbox(self, ttl: int | None, provider: str | None, template: str | None) -> str:
        if self.current is not None:
            try:
                status = self.manager.sandbox_status(self.current)["status"]
            except SandboxError:
                status = "stopped"
            if status == "paused":
                raise UsageError(f"this notebook's sandbox {self.current} is paused: run %sandbox resume")
            if status == "active":
                return self.current
        name = self._notebook_sandbox_name()
        live = self.manager.sandbox_list({"name": name})["sandboxes"]  # this user's, through any service
        if live:
            newest = live[-1]
            if newest["status"] == "paused":
                raise UsageError(f"this notebook's sandbox {newest['sandbox_id']} is paused: run %sandbox resume")
            self._choose(newest["sandbox_id"])
        else:
            record = self.manager.sandbox_create(
                name,
                ttl_minutes=ttl or self.default_ttl,
                template_id=template or self.default_template,
                provider=provider or self.default_provider,
                notebook=self._notebook_path(),
            )
            self._choose(record["sandbox_id"])
        return self.current

    # ---- %%sandbox and %sandbox
    @line_cell_magic
    def sandbox(self, line: str, cell: str | None = None):
        """%%sandbox [python|javascript|bash] [--timeout S] [--sandbox ID] [--ttl M] [--provider P]
        [--template T] [--out VAR] [--fresh]: run the cell in a sandbox.

        %sandbox create|list|status|pause|resume|stop|use|upload|download ...: manage sandboxes.
        """
        try:
            if cell is None:
                return self._line(line)
            return self._cell(line, cell)
        except SandboxTimeout:
            raise
        except SandboxError as exc:
            raise UsageError(printable(exc)) from None

    def _cell(self, line: str, cell: str):
        args = _parse(CELL_PARSER, line)
        language = LANGUAGE_ALIASES.get(args.language.lower(), args.language.lower())
        if language not in LANGUAGES:
            raise UsageError(f"%%sandbox: unsupported language {args.language!r} (choose from: {', '.join(LANGUAGES)})")
        if not cell.strip():
            raise UsageError("%%sandbox: the cell is empty")
        sandbox = args.sandbox or self._default_sandbox(args.ttl, args.provider, args.template)
        timeout = args.timeout if args.timeout is not None else self.default_timeout
        main_result = []

        def show(result: dict) -> None:
            if result["is_main_result"]:
                main_result.append(result)  # becomes the cell's value, as in a local cell
            else:
                display(result["data"], raw=True, metadata=result["metadata"])

        try:
            result = self.manager.sandbox_run(
                sandbox,
                language,
                cell,
                timeout=timeout,
                fresh=args.fresh,
                on_stdout=_writer(sys.stdout),
                on_stderr=_writer(sys.stderr),
                on_result=show,
                # Tracebacks say `Cell In[6]` where the notebook shows [6].
                execution_count=getattr(self.shell, "execution_count", None),
            )
        except SandboxTimeout as exc:
            if args.out:
                self.shell.user_ns[args.out] = exc.result
            raise SandboxCellError(str(exc)) from None
        except KeyboardInterrupt:
            raise SandboxInterrupted() from None
        if args.out:
            self.shell.user_ns[args.out] = result
        if result["error"] is not None:
            # The traceback already streamed as stderr: the cell ends with its last line.
            raise SandboxCellError(f"{result['error']['name']}: {result['error']['value']}")
        if result["exit_code"] != 0:
            raise SandboxCellError(f"{language} exited with code {result['exit_code']}")
        if main_result:
            return MimeBundle(main_result[0]["data"], main_result[0]["metadata"])
        return None

    def _line(self, line: str):
        verb, _, rest = line.strip().partition(" ")
        if verb not in LINE_PARSERS:
            raise UsageError(
                f"%sandbox: unknown command {verb!r} (choose from: {', '.join(LINE_VERBS)}; "
                "use %%sandbox to run a cell)"
            )
        args = _parse(LINE_PARSERS[verb], rest)
        return getattr(self, f"_verb_{verb}")(args)

    def _target(self, args) -> str:
        target = getattr(args, "sandbox", None) or self.current
        if target is None:
            raise UsageError("no sandbox given, and this notebook has none yet: name one, or run a %%sandbox cell")
        return target

    def _verb_create(self, args):
        record = self.manager.sandbox_create(
            args.name,
            ttl_minutes=args.ttl or self.default_ttl,
            template_id=args.template or self.default_template,
            provider=args.provider or self.default_provider,
            notebook=self._notebook_path(),
        )
        self._choose(record["sandbox_id"])
        print(
            f"Created sandbox {record['sandbox_id']} ({printable(record['name'])}, {record['provider']}): "
            "the default for %%sandbox cells now"
        )
        return record

    def _verb_list(self, args):
        return SandboxTable(self.manager.sandbox_list(verify_status=args.verify, include_stopped=args.all)["sandboxes"])

    def _verb_status(self, args):
        return self.manager.sandbox_status(self._target(args))

    def _verb_pause(self, args):
        record = self.manager.sandbox_pause(self._target(args))
        print(f"Paused sandbox {record['sandbox_id']}")

    def _verb_resume(self, args):
        record = self.manager.sandbox_resume(self._target(args))
        print(f"Resumed sandbox {record['sandbox_id']} (expires {record['expires_at']} UTC)")

    def _verb_stop(self, args):
        record = self.manager.sandbox_stop(self._target(args))
        if record["sandbox_id"] == self.current:
            self.current = None
        print(f"Stopped sandbox {record['sandbox_id']}")

    def _verb_use(self, args):
        record = self.manager.sandbox_status(args.sandbox)
        if record["status"] != "active":
            raise UsageError(f"Sandbox {record['sandbox_id']} is {record['status']}")
        self._choose(record["sandbox_id"])
        print(f"%%sandbox cells now run in {record['sandbox_id']} ({printable(record['name'])})")

    def _verb_upload(self, args):
        done = self.manager.sandbox_upload_file(self._target(args), args.local, args.dest)
        print(f"Uploaded {args.local} -> {done['path']} ({done['size']} bytes)")

    def _verb_panel(self, args):
        from .panel import SandboxPanel

        return SandboxPanel(self.manager, refresh_seconds=args.refresh)

    def _verb_download(self, args):
        local = args.local or Path(args.path.rstrip("/")).name
        done = self.manager.sandbox_download_file(self._target(args), args.path, local)
        print(f"Downloaded {args.path} -> {done['path']} ({done['size']} bytes)")


def _writer(stream):
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return write


def load_ipython_extension(shell) -> None:
    magics = SandboxMagics(shell=shell, parent=shell)
    shell.register_magics(magics)
    threading.Thread(target=magics.warm_up, name="nexus-warm-up", daemon=True).start()
    for configurable in (magics, *magics.configurables):
        if configurable not in shell.configurables:
            shell.configurables.append(configurable)  # so %config SandboxMagics... (and the rest) finds it
