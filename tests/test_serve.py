"""``nexus serve``: the headless sandbox server of the seed's remote mode, and its API keys."""

from __future__ import annotations

import getpass
import os
import socket
import stat
import subprocess
import sys
import time

import pytest
import requests
from jupyter_servers import NexusServe, free_port, stop_process, wait_until_serving

from conftest import destroy_everything_in

pytestmark = pytest.mark.skipif("local" not in os.environ.get("NEXUS_TEST_PROVIDERS", "local"), reason="local only")


def test_serve_refuses_a_public_address_without_a_key(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "nexus_jupyter", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env={k: v for k, v in {**os.environ, "NEXUS_DATA_DIR": str(tmp_path)}.items() if k != "NEXUS_API_KEY"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "Error: refusing to serve 0.0.0.0 without an API key: set NEXUS_API_KEY (one user) or pass --keys-file "
        "(a team), or serve 127.0.0.1"
    ]
    bad_keys = tmp_path / "keys"
    bad_keys.write_text("short alice\n")
    done = subprocess.run(
        [sys.executable, "-m", "nexus_jupyter", "serve", "--keys-file", str(bad_keys), "--port", str(free_port())],
        env={**os.environ, "NEXUS_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"Error: {bad_keys} line 1: a key must be at least 16 characters"


def test_a_key_opens_the_sandbox_api_and_nothing_else_on_the_host(tmp_path):
    key = "k" * 32
    server = NexusServe(tmp_path / "data", key=key, env={"NEXUS_USER": "carol"})
    url = server.url
    try:
        with_key = {"Authorization": f"Bearer {key}"}
        created = requests.post(f"{url}/nexus/api/sandboxes", json={"name": "remote"}, headers=with_key, timeout=60)
        assert created.status_code == 201 and created.json()["user_id"] == "carol"
        assert requests.get(f"{url}/nexus/api/sandboxes", timeout=30).status_code == 403
        assert (
            requests.get(f"{url}/nexus/api/sandboxes", headers={"Authorization": "Bearer " + "x" * 32}).status_code
            == 403
        )
        # a kernel, a file, a terminal of the host would be code outside any sandbox
        assert requests.post(f"{url}/api/kernels", headers=with_key, timeout=30).status_code == 403
        assert requests.get(f"{url}/api/contents", headers=with_key, timeout=30).status_code == 403
        assert requests.get(f"{url}/api/terminals", headers=with_key, timeout=30).status_code in (403, 404)
        assert requests.get(f"{url}/lab", headers=with_key, timeout=30).status_code == 404  # nothing else loaded
    finally:
        server.stop()
        destroy_everything_in(tmp_path / "data")
    assert key not in server.log()


def test_without_a_key_it_serves_loopback_under_a_key_only_this_user_can_read(tmp_path):
    data_dir = tmp_path / "data"
    server = NexusServe(data_dir, key=None)
    url = server.url
    try:
        key_file = data_dir / "serve.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        key = key_file.read_text().strip()
        assert len(key) >= 32
        answer = requests.get(f"{url}/nexus/api/sandboxes", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert answer.status_code == 200
        assert requests.get(f"{url}/nexus/api/sandboxes", timeout=30).status_code == 403
    finally:
        server.stop()
    output = server.log()
    assert f'NEXUS_API_KEY="$(cat {data_dir / "serve.key"})"' in output
    assert key not in output


def test_a_notebooks_sandbox_cells_go_through_the_server_in_remote_mode(tmp_path):
    from jupyter_client.manager import KernelManager

    from nexus_jupyter import SandboxManager

    server = NexusServe(tmp_path / "data", env={"NEXUS_USER": "dana"})
    kernel = KernelManager(kernel_name="python3")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    # the kernel's own machine has no store of the server's: only the URL and the key
    env.update(NEXUS_URL=server.url, NEXUS_API_KEY=server.key, NEXUS_DATA_DIR=str(tmp_path / "kernel-side"))
    kernel.start_kernel(env=env)
    client = kernel.blocking_client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
        printed = []

        def cell(code: str) -> dict:
            hook = lambda msg: printed.append(msg["content"].get("text", "")) if msg["msg_type"] == "stream" else None  # noqa: E731
            return client.execute_interactive(code, output_hook=hook, timeout=120)["content"]

        assert cell("%load_ext nexus_jupyter")["status"] == "ok"
        assert cell("%%sandbox python\nx = 6 * 7\nprint(x)")["status"] == "ok"
        assert cell("%%sandbox python\nprint(x + 0)")["status"] == "ok"
        assert printed[-2:] == ["42\n", "42\n"]
        on_server = SandboxManager(tmp_path / "data", is_admin=True).store.select()
        assert [(row["user_id"], row["name"].startswith("kernel-")) for row in on_server] == [("dana", True)]
        assert not (tmp_path / "kernel-side" / "nexus.db").exists()
    finally:
        client.stop_channels()
        kernel.shutdown_kernel(now=True)
        server.stop()
        destroy_everything_in(tmp_path / "data")


def test_api_keys_without_the_sandboxes_only_authorizer_open_nothing(tmp_path):
    from jupyter_servers import JupyterServer

    key = "a-key-of-more-than-16-characters"
    server = JupyterServer(
        tmp_path,
        tmp_path / "data",
        ["--ServerApp.identity_provider_class=nexus_jupyter.auth.ApiKeyIdentityProvider"],
        env={"NEXUS_API_KEY": key},
    )
    try:
        with_key = {"Authorization": f"Bearer {key}"}
        assert requests.get(f"{server.api}/sandboxes", headers=with_key, timeout=30).status_code == 403
        assert requests.post(f"{server.url}/api/kernels", headers=with_key, timeout=30).status_code == 403
        assert requests.get(f"{server.url}/api/contents", headers=with_key, timeout=30).status_code == 403
    finally:
        server.stop()
    assert "API keys refused: set c.ServerApp.authorizer_class" in server.log()


def test_serve_keeps_its_address_and_auth_to_itself_and_reads_no_big_body_before_a_key(tmp_path):
    for extra in ("--ServerApp.ip=0.0.0.0", "--ServerApp.port=9", "--ServerApp.authorizer_class=x.Y"):
        done = subprocess.run(
            [sys.executable, "-m", "nexus_jupyter", "serve", "--port", str(free_port()), extra],
            env={**os.environ, "NEXUS_DATA_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().endswith("cannot be given to nexus serve: use --host and --port")
    server = NexusServe(tmp_path / "data")
    try:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        raw.sendall(
            f"POST /nexus/api/sandboxes HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Length: {200 << 20}\r\n\r\n".encode()
            + b"x" * (1 << 20)
        )
        started = time.monotonic()
        answer = raw.recv(4096)  # refused at once (or the connection closed), not read to its end
        assert time.monotonic() - started < 5
        assert answer == b"" or answer.split(b" ")[1] in (b"400", b"403", b"413")
        raw.close()
    finally:
        server.stop()


def test_a_key_file_edit_that_keeps_the_modification_time_still_counts(tmp_path):
    from nexus_jupyter.auth import ApiKeyIdentityProvider, digest

    keys = tmp_path / "keys"
    keys.write_text("first-key-0123456789abcdef alice\n")
    provider = ApiKeyIdentityProvider(keys_file=str(keys))
    assert digest("first-key-0123456789abcdef") in provider.keys()
    stamp = keys.stat().st_mtime_ns
    keys.write_text("other-key-0123456789abcdef bob\n")  # the same size, and the old time put back
    os.utime(keys, ns=(stamp, stamp))
    assert digest("first-key-0123456789abcdef") not in provider.keys()


def test_remote_mode_keeps_absolute_paths_and_refuses_a_key_with_a_line_break(tmp_path):
    from nexus_jupyter import InvalidArgument, SandboxManager

    server = NexusServe(tmp_path / "data")
    try:
        remote = SandboxManager(url=server.url, api_key=server.key, user_id="not-the-servers-view")
        assert (remote.user_id, remote.is_admin) == (getpass.getuser(), False)  # the key's user, as the server says
        sandbox = remote.sandbox_create("paths")["sandbox_id"]
        assert remote.sandbox_write_file(sandbox, "/tmp/abs.txt", "x")["path"] == "/tmp/abs.txt"
        assert remote.sandbox_read_file(sandbox, "/tmp/abs.txt") == b"x"
        assert remote.sandbox_write_file(sandbox, "rel.txt", "y")["path"] == "/home/user/rel.txt"
        remote.sandbox_stop(sandbox)
        with pytest.raises(InvalidArgument, match="NEXUS_API_KEY holds a space or a control character") as caught:
            SandboxManager(url=server.url, api_key=server.key + "\nX-Evil: 1")
        assert server.key not in str(caught.value)
    finally:
        server.stop()
        destroy_everything_in(tmp_path / "data")


def test_a_keys_file_other_users_can_read_is_warned_about_unless_it_holds_only_digests(tmp_path):
    from nexus_jupyter.auth import digest
    from nexus_jupyter.serve import keys_file_warning

    keys = tmp_path / "keys"
    keys.write_text("# the team\nplain-key-0123456789abcdef alice\n")
    keys.chmod(0o644)
    assert keys_file_warning(str(keys)) == (
        f"nexus serve: warning: other users of this machine can read {keys}, and each key in it opens the sandbox "
        f"API as its user: chmod 600 {keys} (or keep only sha256:<digest> of each key there)"
    )
    keys.chmod(0o600)
    assert keys_file_warning(str(keys)) is None
    keys.write_text(f"sha256:{digest('plain-key-0123456789abcdef')} alice admin\n")
    keys.chmod(0o644)
    assert keys_file_warning(str(keys)) is None
    # nexus serve itself prints it as it starts
    keys.write_text("plain-key-0123456789abcdef alice\n")
    log, port = tmp_path / "serve.log", free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "nexus_jupyter", "serve", "--port", str(port), "--keys-file", str(keys)],
        env={**os.environ, "NEXUS_DATA_DIR": str(tmp_path / "data")}, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until_serving(server, f"http://127.0.0.1:{port}", log)
        assert f"other users of this machine can read {keys}" in log.read_text()
    finally:
        stop_process(server)
