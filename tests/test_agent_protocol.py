"""The host's side of the agent protocol against a scripted peer: whatever answers on a
box's socket, the host says what is wrong in one line and takes nothing it should not."""

from __future__ import annotations

import socket
import threading

import pytest

from nexus_jupyter.agent_client import AgentClient, AgentImpostor, _mac, new_agent_key


@pytest.fixture
def scripted_agent(tmp_path):
    """A Unix socket whose peer answers each request with ``answer(nonce)`` (bytes)."""
    path = tmp_path / "agent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)
    key = new_agent_key()
    script = {}

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                request = conn.makefile("rb").readline()
                nonce = request.split(b'"nonce": "')[1].split(b'"')[0].decode()
                try:
                    conn.sendall(script["answer"](nonce))
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    yield path, key, script
    server.close()


def hello(key: str, nonce: str) -> bytes:
    return b'{"ev": "hello", "proof": "' + _mac(key, "agent", nonce).encode() + b'"}\n'


def test_a_first_answer_that_is_not_the_agents_hello_is_refused(scripted_agent):
    path, key, script = scripted_agent
    script["answer"] = lambda nonce: b'{"ev": "end"}\n'
    with pytest.raises(AgentImpostor, match="is not its agent: refusing"):
        AgentClient(path, key).ping(wait=1)


def test_an_endless_line_is_cut_off(scripted_agent):
    path, key, script = scripted_agent
    script["answer"] = lambda nonce: hello(key, nonce) + b"x" * (17 << 20)
    with pytest.raises(AgentImpostor, match="over-long line"):
        AgentClient(path, key).run("bash", "true", 10, max_output_chars=1000)
    # a small request's whole answer is bounded tighter still
    script["answer"] = lambda nonce: b"x" * (2 << 20)
    with pytest.raises(AgentImpostor, match="more than 1048576 bytes"):
        AgentClient(path, key).ping(wait=1)


def test_a_file_chunk_that_is_not_base64_is_refused(scripted_agent):
    path, key, script = scripted_agent
    script["answer"] = lambda nonce: hello(key, nonce) + b'{"ev": "chunk", "chunk": "not base64!"}\n'
    with pytest.raises(AgentImpostor, match="not base64"):
        list(AgentClient(path, key).read_file_chunks("f", 1 << 20))


def test_a_file_over_the_limit_is_refused_however_the_peer_sends_it(scripted_agent):
    path, key, script = scripted_agent
    chunk = b'{"ev": "chunk", "chunk": "' + b"A" * 4096 + b'"}\n'  # 3 KiB a chunk
    script["answer"] = lambda nonce: hello(key, nonce) + chunk * 10 + b'{"ev": "end"}\n'
    with pytest.raises(Exception, match="over the 10000-byte transfer limit"):
        list(AgentClient(path, key).read_file_chunks("f", 10_000))


def test_a_sandbox_without_a_key_says_it_is_from_an_older_version(scripted_agent):
    path, _key, _script = scripted_agent
    with pytest.raises(AgentImpostor, match="made by an older nexus-jupyter: stop it and create a new one"):
        AgentClient(path, None).ping(wait=1)
