"""``nexus serve``: a headless Jupyter server with only the sandbox extension, for API keys.

The seed's remote mode: ``NEXUS_URL="http://host:2026"`` and ``NEXUS_API_KEY`` on
the client.  The server accepts the key in its own ``NEXUS_API_KEY`` (one user:
``NEXUS_USER`` or the OS user), or the keys of ``--keys-file`` (a team: each key
its user, see auth.py).  A key opens the sandbox API and nothing else: no kernel,
terminal or file of the host.  With no key at all it serves loopback only, under
a key it makes and keeps in ``<data dir>/serve.key`` (readable by this OS user
only); on any other address it refuses to start.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from pathlib import Path

from .errors import InvalidArgument
from .store import default_data_dir

DEFAULT_PORT = 2026
MAX_JSON_BODY = 16 << 20  # a run's code of a few MiB, as JSON
# What nexus serve decides itself: the address (--host/--port), who a key is, what it opens.
FIXED_SETTINGS = ("ip", "port", "identity_provider_class", "authorizer_class", "max_body_size", "max_buffer_size")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host == "localhost":
        return True
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def local_key(data_dir: Path) -> tuple[str, Path]:
    """The key of a keyless loopback server: made once, kept in a file only this user can read."""
    path = data_dir / "serve.key"
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return path.read_text().strip(), path
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip(), path


def keys_file_warning(keys_file: str) -> str | None:
    """A warning when other users of this machine can read a keys file holding a plain key
    (any key in it opens the sandbox API as its user); digests (``sha256:``) may be read."""
    try:
        mode = os.stat(keys_file).st_mode
        lines = open(keys_file, encoding="utf-8").read().splitlines()
    except OSError:
        return None  # read_keys_file says what is wrong with it
    plain = any(
        words and not words[0].startswith("sha256:") for words in (line.split("#", 1)[0].split() for line in lines)
    )
    if plain and mode & 0o044:
        return (
            f"nexus serve: warning: other users of this machine can read {keys_file}, and each key in it opens "
            f"the sandbox API as its user: chmod 600 {keys_file} (or keep only sha256:<digest> of each key there)"
        )
    return None


def server_arguments(host: str, port: int, data_dir: Path, keys_file: str | None) -> tuple[list[str], dict]:
    """The ServerApp arguments of ``nexus serve``, and the environment it needs; InvalidArgument
    when the address may not be served as asked."""
    if not 0 < port < 65536:
        raise InvalidArgument(f"--port must be from 1 to 65535, not {port}")
    if keys_file:
        from .auth import read_keys_file

        read_keys_file(keys_file)  # a malformed line stops the server now, with its number
    env = {"NEXUS_DATA_DIR": str(data_dir)}
    if not keys_file and not os.environ.get("NEXUS_API_KEY"):
        if not is_loopback(host):
            raise InvalidArgument(
                f"refusing to serve {host} without an API key: set NEXUS_API_KEY (one user) or "
                "pass --keys-file (a team), or serve 127.0.0.1"
            )
        env["NEXUS_API_KEY"], _ = local_key(data_dir)
    root = data_dir / "serve-root"  # the server's notebook dir: empty, and unreachable through the authorizer
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = [
        f"--ServerApp.ip={host}",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.identity_provider_class=nexus_jupyter.auth.ApiKeyIdentityProvider",
        "--ServerApp.authorizer_class=nexus_jupyter.auth.SandboxesOnlyAuthorizer",
        f"--NexusSandboxApp.data_dir={data_dir}",
        # Only small JSON is read whole (uploads stream, after their key is checked): a body
        # sent before any key is looked at must not be buffered by the hundred MiB.
        f"--ServerApp.max_body_size={MAX_JSON_BODY}",
        f"--ServerApp.max_buffer_size={MAX_JSON_BODY}",
    ]
    if keys_file:
        argv.append(f"--ApiKeyIdentityProvider.keys_file={os.path.abspath(keys_file)}")
    if os.geteuid() == 0:
        argv.append("--ServerApp.allow_root=True")
    return argv, env


def serve(host: str, port: int, keys_file: str | None = None, extra: list[str] | None = None) -> None:
    """Run the server until interrupted."""
    from .serverextension import NexusSandboxApp

    data_dir = Path(os.environ.get("NEXUS_DATA_DIR") or default_data_dir()).expanduser()
    for arg in extra or []:
        name = arg.lstrip("-").split("=", 1)[0].removeprefix("ServerApp.")
        if name in FIXED_SETTINGS:
            raise InvalidArgument(f"{arg.split('=', 1)[0]} cannot be given to nexus serve: use --host and --port")
    argv, env = server_arguments(host, port, data_dir, keys_file)
    if not is_loopback(host) and not any("certfile" in arg for arg in extra or []):
        print(
            f"nexus serve: warning: {host} is served over plain HTTP, so keys cross the network in clear text: "
            "put it behind TLS, or pass --ServerApp.certfile=... --ServerApp.keyfile=...",
            flush=True,
        )
    warning = keys_file_warning(keys_file) if keys_file else None
    if warning:
        print(warning, flush=True)
    made_key = "NEXUS_API_KEY" in env
    os.environ.update(env)
    if made_key:
        print(
            f"nexus serve: no API key was given; clients on this machine use the one in {data_dir / 'serve.key'}:\n"
            f'  export NEXUS_URL=http://{host}:{port} NEXUS_API_KEY="$(cat {data_dir / "serve.key"})"',
            flush=True,
        )

    class NexusServeApp(NexusSandboxApp):
        load_other_extensions = False  # only the sandbox API: no JupyterLab, no terminals

    NexusServeApp.launch_instance(argv + list(extra or []))
