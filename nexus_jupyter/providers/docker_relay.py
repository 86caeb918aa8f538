"""Reaching a box's agent on a remote Docker engine, where its socket is out of reach.

``docker exec`` starts the agent's ``--relay`` mode inside the container,
which joins the exec's standard input and output to the agent's socket.
The exec's hijacked connection multiplexes stdout and stderr in frames
(8-byte header: stream, 3 zero bytes, big-endian length); two threads turn
it into a plain local socket pair, so the agent protocol runs unchanged.
Each request costs one exec (~65 ms here): the price of a remote engine.
"""

from __future__ import annotations

import socket
import struct
import threading

from ..errors import AgentUnreachable

FRAME_HEADER = struct.Struct(">BxxxL")
CHUNK = 65536


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


RELAY_GRACE_SECONDS = 30.0  # after the host hung up, how long the relay in the box has to end


def _pump_host_to_box(local: socket.socket, docker_side: socket.socket) -> None:
    try:
        while chunk := local.recv(CHUNK):
            docker_side.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            docker_side.shutdown(socket.SHUT_WR)  # the exec's stdin closes: the relay ends
        except OSError:
            pass
        # A relay that does not end (the box's code stopped it) must not hold this side's
        # thread and connection forever: the blocked read is woken after a grace.
        timer = threading.Timer(RELAY_GRACE_SECONDS, _shut, args=(docker_side,))
        timer.daemon = True
        timer.start()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _pump_box_to_host(docker_side: socket.socket, local: socket.socket, stderr: list[bytes]) -> None:
    try:
        while header := _read_exactly(docker_side, FRAME_HEADER.size):
            stream, size = FRAME_HEADER.unpack(header)
            payload = _read_exactly(docker_side, size)
            if stream == 2:
                stderr.append(payload)
            else:
                local.sendall(payload)
    except OSError:
        pass
    finally:
        try:
            local.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        docker_side.close()


def connect_through_exec(client, container_id: str, command: list[str]) -> socket.socket:
    """A socket whose other end is the box's agent, through ``docker exec command``."""
    from docker.errors import APIError, NotFound

    try:
        exec_id = client.api.exec_create(container_id, command, stdin=True, stdout=True, stderr=True, tty=False)
        hijacked = client.api.exec_start(exec_id["Id"], socket=True)
    except (NotFound, APIError) as exc:
        raise AgentUnreachable(f"cannot reach the sandbox through docker exec: {exc.explanation or exc}") from None
    docker_side = getattr(hijacked, "_sock", hijacked)
    local, relay_end = socket.socketpair()
    stderr: list[bytes] = []
    inbound = threading.Thread(target=_pump_host_to_box, args=(relay_end, docker_side), daemon=True)

    def outbound() -> None:
        _pump_box_to_host(docker_side, relay_end, stderr)
        inbound.join()
        relay_end.close()

    inbound.start()
    threading.Thread(target=outbound, daemon=True).start()
    return local


def send_config_through_attach(client, container_id: str, config: str, start) -> None:
    """Start the container and hand its agent the config on standard input (one line),
    then close it: env values and the box's key never touch a disk or a definition."""
    attached = client.api.attach_socket(container_id, params={"stdin": 1, "stream": 1})
    raw = getattr(attached, "_sock", attached)
    try:
        start()
        raw.sendall(config.encode() + b"\n")
        raw.shutdown(socket.SHUT_WR)
    finally:
        raw.close()
