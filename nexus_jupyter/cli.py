"""``nexus sandbox ...``: the command line, a thin layer over SandboxManager.

Every command parses its input, calls the manager, renders the result:
``--json`` prints exactly the manager's dict; otherwise a short summary or
table.  Errors are one line on stderr (``Error: ...``) and a non-zero exit;
set ``NEXUS_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from .errors import InvalidArgument, SandboxError
from .formatting import columns, duration, printable, seconds_left

json_option = click.option("--json", "-j", "as_json", is_flag=True, help="Output as JSON")


class ProviderOption(click.Option):
    """``--provider``: its help names the providers installed (the registry's entry points),
    looked up only when help is shown."""

    def get_help_record(self, ctx):
        from .providers.base import provider_names

        self.help = f"{', '.join(provider_names())}  [default: local, or $NEXUS_SANDBOX_PROVIDER]"
        return super().get_help_record(ctx)


def _manager():
    from .manager import SandboxManager

    return SandboxManager()


def _print_json(data) -> None:
    # Indented for a person at a terminal; compact for a pipe (jq, scripts):
    # json's C encoder only runs without indentation, ~10x faster on big lists.
    click.echo(json.dumps(data, indent=2 if sys.stdout.isatty() else None))


def _expires_in(record: dict) -> str:
    left = seconds_left(record)
    if left is None:
        return "-"
    return f"in {duration(left)}" if left > 0 else "now"


def _print_record(record: dict, headline: str | None = None) -> None:
    if headline:
        click.echo(headline)
    rows = [
        ("Name", record["name"]),
        ("Status", record["status"]),
        ("Provider", record["provider"]),
        ("User", record["user_id"]),
        ("Agent", record["agent_id"] or "-"),
        ("Tenant", record["tenant_id"]),
        ("Template", record["template_id"] or "-"),
        ("Created", record["created_at"] + " UTC"),
        ("Last active", (record["last_active_at"] or "-") + " UTC"),
        ("TTL", f"{record['ttl_minutes']} min idle"),
        ("Expires", f"{record['expires_at']} UTC ({_expires_in(record)})" if record["expires_at"] else "-"),
        ("Uptime", duration(record["uptime_seconds"])),
    ]
    if record.get("host"):
        rows.insert(3, ("Host", record["host"]))
    if record.get("paused_at"):
        rows.append(("Paused at", record["paused_at"] + " UTC"))
    if record.get("stopped_at"):
        rows.append(("Stopped at", record["stopped_at"] + " UTC"))
    if not headline:
        click.echo(f"Sandbox {record['sandbox_id']}")
    for label, value in rows:
        click.echo(f"  {label + ':':<13}{printable(value)}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nexus-jupyter", prog_name="nexus")
def main() -> None:
    """nexus: secure, disposable code sandboxes."""


@main.group()
def sandbox() -> None:
    """Create, run code in, list, pause, resume and stop sandboxes."""


@sandbox.command()
@click.argument("name")
@click.option("--ttl", "-t", type=int, help="Idle timeout in minutes  [default: 10, or $NEXUS_DEFAULT_TTL]")
@click.option("--template", help="Provider template ID (e.g. E2B template, Docker image)")
@click.option("--provider", "-p", envvar="NEXUS_SANDBOX_PROVIDER", cls=ProviderOption)
@click.option("--agent-id", "-a", help="Agent that owns the sandbox")
@click.option("--tenant-id", help="Tenant that owns the sandbox (default: default)")
@click.option("--allow-internet", is_flag=True, help="Allow outbound network access (off by default)")
@click.option("--memory", "memory_mb", type=int, help="Memory limit in MiB  [default: 1024, $NEXUS_DEFAULT_MEMORY_MB]")
@click.option("--cpus", type=float, default=1.0, show_default=True, help="CPU limit in cores")
@click.option("--env", "-e", "env", multiple=True, metavar="KEY=VALUE", help="Environment variable for runs")
@json_option
def create(name, ttl, template, provider, agent_id, tenant_id, allow_internet, memory_mb, cpus, env, as_json):
    """Create a new sandbox."""
    variables = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"--env takes KEY=VALUE, got {item!r}")
        variables[key] = value
    nx = _manager()
    record = nx.sandbox_create(
        name,
        ttl_minutes=ttl,
        template_id=template,
        provider=provider,
        agent_id=agent_id,
        tenant_id=tenant_id,
        allow_internet_access=allow_internet,
        memory_mb=memory_mb,
        cpus=cpus,
        env=variables,
    )
    for notice in nx.service.notices(record["provider"]):
        click.echo(f"Warning: {notice}", err=True)
    if as_json:
        _print_json(record)
    else:
        _print_record(record, f"Created sandbox: {record['sandbox_id']}")


def _read_code(code: str | None, file: str | None) -> str:
    if code is not None and file is not None:
        raise InvalidArgument("give the code with -c or -f, not both")
    if code is None and file is None:
        raise InvalidArgument("no code given: use -c CODE, -c - (read stdin) or -f FILE")
    if file is not None:
        try:
            with open(file, "rb") as source:
                data = source.read()
        except OSError as exc:
            raise InvalidArgument(f"cannot read {file}: {exc.strerror}") from None
        where = file
    elif code == "-":
        data = sys.stdin.buffer.read()
        where = "standard input"
    else:
        return code
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"the code in {where} is not valid UTF-8") from None


def _stream_to(stream):
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return write


@sandbox.command()
@click.argument("sandbox_id")
@click.option("--language", "-l", default="python", show_default=True, help="python, javascript or bash")
@click.option("--code", "-c", help="Code to execute (use - for stdin)")
@click.option("--file", "-f", "file", help="File containing code to execute")
@click.option("--timeout", type=float, help="Execution timeout in seconds  [default: 30, or $NEXUS_DEFAULT_TIMEOUT]")
@click.option("--fresh", is_flag=True, help="Python: run in a new process, not the sandbox's stateful kernel")
@json_option
def run(sandbox_id, language, code, file, timeout, fresh, as_json):
    """Execute code in a sandbox.  Exits with the code's exit status.

    Python runs in the sandbox's kernel: variables persist from one run to the
    next, and the value of the last expression is printed (every rich output
    is in --json's "results").
    """
    source = _read_code(code, file)
    nx = _manager()
    if as_json:
        result = nx.sandbox_run(sandbox_id, language, source, timeout=timeout, fresh=fresh, filename=file)
        _print_json(result)
        return
    out = _stream_to(sys.stdout)
    err = _stream_to(sys.stderr)
    result = nx.sandbox_run(
        sandbox_id,
        language,
        source,
        timeout=timeout,
        fresh=fresh,
        on_stdout=out,
        on_stderr=err,
        on_result=_print_result,
        filename=file,
    )
    sys.exit(result["exit_code"] if 0 <= result["exit_code"] < 256 else 1)


def _print_result(result: dict) -> None:
    """A rich output at a terminal: its text, or what kind of output it is."""
    data = result["data"]
    if "text/plain" in data:
        click.echo(data["text/plain"])
    else:
        click.echo(f"[{', '.join(sorted(data))} output]")


def _table(records: list[dict], verify: bool, users: bool = False) -> None:
    hosts = any("host" in record for record in records)  # a database hosts share
    headers = ["SANDBOX ID", "NAME", *(["USER"] if users else []), "STATUS", "PROVIDER", *(["HOST"] if hosts else []),
               "UPTIME", "EXPIRES"]  # fmt: skip
    if verify:
        headers.append("VERIFIED")
    rows = [headers]
    for record in records:
        row = [
            record["sandbox_id"],
            record["name"],
            *([record["user_id"]] if users else []),
            record["status"],
            record["provider"],
            *([record.get("host") or "-"] if hosts else []),
            duration(record["uptime_seconds"]),
            _expires_in(record),
        ]
        if verify:
            seen = record.get("provider_status") or "unknown"
            row.append(seen if record.get("verified") else f"no ({seen})")
        rows.append([printable(cell) for cell in row])
    click.echo(columns(rows))


@sandbox.command("list")
@click.option("--user-id", "-u", help="Filter by user ID (admin only for other users)")
@click.option("--agent-id", "-a", help="Filter by agent ID")
@click.option("--tenant-id", "-t", help="Filter by tenant ID")
@click.option("--verify", "-v", is_flag=True, help="Verify status with the provider (slower but accurate)")
@click.option("--all", "include_stopped", is_flag=True, help="Include stopped sandboxes")
@click.option("--all-users", is_flag=True, help="Every user's sandboxes (admin only)")
@json_option
def list_(user_id, agent_id, tenant_id, verify, include_stopped, all_users, as_json):
    """List sandboxes (the current user's live ones by default)."""
    context = {
        key: value
        for key, value in (("user", user_id), ("agent_id", agent_id), ("tenant_id", tenant_id))
        if value is not None
    }
    if all_users:
        context["all_users"] = True
    result = _manager().sandbox_list(context=context or None, verify_status=verify, include_stopped=include_stopped)
    if as_json:
        _print_json(result)
    elif not result["sandboxes"]:
        click.echo("No sandboxes." + ("" if include_stopped else " (--all includes stopped ones)"))
    else:
        _table(result["sandboxes"], verify, users=all_users)


def _lifecycle_command(verb: str, method: str, headline: str):
    @click.argument("sandbox_id")
    @json_option
    def command(sandbox_id, as_json):
        record = getattr(_manager(), method)(sandbox_id)
        if as_json:
            _print_json(record)
        else:
            _print_record(record, headline.format(**record))

    command.__name__ = verb
    return command


sandbox.command("status", help="Get status and metadata of a sandbox.")(
    _lifecycle_command("status", "sandbox_status", "Sandbox {sandbox_id}")
)
sandbox.command("pause", help="Pause a sandbox: freeze its processes, keep its state.")(
    _lifecycle_command("pause", "sandbox_pause", "Paused sandbox: {sandbox_id}")
)
sandbox.command("resume", help="Resume a paused sandbox.")(
    _lifecycle_command("resume", "sandbox_resume", "Resumed sandbox: {sandbox_id}")
)
sandbox.command("stop", help="Stop and destroy a sandbox and all its data.")(
    _lifecycle_command("stop", "sandbox_stop", "Stopped sandbox: {sandbox_id}")
)


@sandbox.command()
@click.argument("sandbox_id")
@json_option
def metrics(sandbox_id, as_json):
    """What a sandbox uses now: CPU time, memory, processes, disk."""
    usage = _manager().sandbox_metrics(sandbox_id)
    if as_json:
        _print_json(usage)
        return

    def mib(value) -> str:
        return "-" if value is None else f"{value / (1 << 20):.1f} MiB"

    cpu = "-" if usage["cpu_seconds"] is None else f"{usage['cpu_seconds']:.2f} s"
    rows = [
        ("CPU time", cpu),
        ("Memory", f"{mib(usage['memory_bytes'])} of {mib(usage['memory_limit_bytes'])}"),
        ("Memory peak", mib(usage["memory_peak_bytes"])),
        ("Processes", "-" if usage["processes"] is None else str(usage["processes"])),
        ("Disk", f"{mib(usage['disk_used_bytes'])} of {mib(usage['disk_limit_bytes'])}"),
    ]
    click.echo(f"Sandbox {usage['sandbox_id']}")
    for label, value in rows:
        click.echo(f"  {label + ':':<13}{value}")


@sandbox.command()
@json_option
def reap(as_json):
    """Stop expired sandboxes, fix vanished ones and destroy orphans (one pass)."""
    report = _manager().reap()
    if as_json:
        _print_json(report)
    else:
        done = {kind: ids for kind, ids in report.items() if isinstance(ids, list)}  # not "fleet": a flag
        click.echo(", ".join(f"{len(ids)} {kind.replace('_', ' ')}" for kind, ids in done.items()))


@sandbox.command()
@click.argument("sandbox_id")
@click.argument("local_path")
@click.argument("dest", required=False)
@json_option
def upload(sandbox_id, local_path, dest, as_json):
    """Copy a local file into the sandbox (to DEST, default: its name in the home directory)."""
    done = _manager().sandbox_upload_file(sandbox_id, local_path, dest)
    if as_json:
        _print_json(done)
    else:
        click.echo(f"Uploaded {printable(local_path)} -> {printable(done['path'])} ({done['size']} bytes)")


@sandbox.command()
@click.argument("sandbox_id")
@click.argument("path")
@click.argument("local_path", required=False)
@json_option
def download(sandbox_id, path, local_path, as_json):
    """Copy a file out of the sandbox (to LOCAL_PATH, default: its name here; - for stdout)."""
    nx = _manager()
    if local_path == "-":
        for chunk in nx.sandbox_read_file_chunks(sandbox_id, path):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return
    done = nx.sandbox_download_file(sandbox_id, path, local_path or os.path.basename(path.rstrip("/")) or "download")
    if as_json:
        _print_json(done)
    else:
        click.echo(f"Downloaded {printable(path)} -> {printable(done['path'])} ({done['size']} bytes)")


@sandbox.command()
@click.argument("sandbox_id")
@click.argument("path", default=".")
@json_option
def files(sandbox_id, path, as_json):
    """List files in a sandbox directory (default: its home)."""
    entries = _manager().sandbox_list_files(sandbox_id, path)
    if as_json:
        _print_json({"files": entries})
        return
    for entry in entries:
        suffix = "/" if entry["type"] == "dir" else ""
        click.echo(f"{entry['size']:>12}  {printable(entry['name'])}{suffix}")


@sandbox.group()
def template() -> None:
    """Sandbox images for the Docker provider."""


@template.command("build")
@click.option("--tag", default=None, help="Image name (default: nexus-jupyter-sandbox:latest)")
@click.option("--base", default=None, help="Base image, made with debootstrap if missing (nexus-debian:bookworm)")
@click.option("--mirror", default=None, help="Debian mirror for debootstrap (http://deb.debian.org/debian)")
@click.option("--rebuild-base", is_flag=True, help="Make the base image again even if it exists")
def template_build(tag, base, mirror, rebuild_base):
    """Build the default sandbox image, offline from any image registry."""
    from .providers.docker import DockerProvider
    from .templates import BASE_IMAGE, DEFAULT_MIRROR, DEFAULT_TAG, build_template

    client = DockerProvider(_manager().data_dir).client
    started = time.monotonic()

    def progress(line: str) -> None:
        click.echo(f"[{time.monotonic() - started:6.1f}s] {line}")

    build_template(client, tag or DEFAULT_TAG, base or BASE_IMAGE, mirror or DEFAULT_MIRROR, rebuild_base, progress)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on")
@click.option("--port", type=int, default=2026, show_default=True, help="Port to listen on")
@click.option("--keys-file", type=click.Path(dir_okay=False), help="API keys of a team: '<key> <user> [admin]' lines")
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def serve(host, port, keys_file, server_args):
    """Serve the sandbox API (REST) for remote clients: NEXUS_URL and NEXUS_API_KEY.

    The key it accepts is NEXUS_API_KEY in its environment (one user), or
    those of --keys-file.  Extra arguments go to Jupyter Server
    (e.g. --NexusSandboxApp.reap_interval=10).
    """
    from .serve import serve as run_server

    run_server(host, port, keys_file, list(server_args))


def cli(argv: list[str] | None = None) -> int:
    """Entry point: runs click without its own error handling so every error is one line."""
    try:
        main.main(args=argv, prog_name="nexus", standalone_mode=False)
        return 0
    except SandboxError as exc:  # SandboxTimeout included: exit code 124
        click.echo(f"Error: {printable(exc)}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"Error: {printable(exc.format_message())}", err=True)
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("Error: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 141
    except Exception as exc:
        if os.environ.get("NEXUS_DEBUG"):
            raise
        click.echo(
            f"Error: unexpected {type(exc).__name__}: {printable(exc)} (set NEXUS_DEBUG=1 for details)", err=True
        )
        return 1


def entry_point() -> None:
    sys.exit(cli())
