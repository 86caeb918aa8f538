"""What only the local provider has: boxes allowed on the network share this machine's."""

from __future__ import annotations

import socket


def test_allowed_network_reaches_a_server_on_this_machine(nx):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        sandbox = nx.sandbox_create("online", allow_internet_access=True)["sandbox_id"]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5).close()\nprint('connected')"
        assert nx.sandbox_run(sandbox, "python", code)["stdout"] == "connected\n"
    finally:
        listener.close()
