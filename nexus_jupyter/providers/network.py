"""Outbound network for a local box that asked for it (``--allow-internet``).

A box always has its own network namespace.  Internet access is attached to
it from outside with slirp4netns: a user-mode TCP/IP stack that makes the
box's connections from the host as ordinary sockets, so the box gets real
outbound access without sharing the host's namespace (its 127.0.0.1, its
abstract Unix sockets).  ``--disable-host-loopback`` stops the gateway
address from leading to the host's loopback; routes of type ``prohibit``
inside the box's namespace refuse the private ranges, link-local addresses
(cloud metadata services), and the host's own addresses and networks, so a
box reaches the internet and nothing of the machine it runs on.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from ..errors import ProviderUnavailable
from .base import process_start_time

SLIRP_CIDR = "10.0.2.0/24"  # slirp4netns's own: the box is 10.0.2.100, its DNS 10.0.2.3
SLIRP_DNS = "10.0.2.3"
REFUSED_RANGES = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
)
NS_GET_USERNS = 0xB701  # ioctl: the user namespace that owns a namespace
INSTALL_ADVICE = "install slirp4netns ('apt-get install slirp4netns') to give local sandboxes internet access"


def require_tools() -> None:
    missing = [tool for tool in ("slirp4netns", "nsenter", "ip") if shutil.which(tool) is None]
    if missing:
        raise ProviderUnavailable(f"{', '.join(missing)} not found: {INSTALL_ADVICE}")


def host_networks() -> list[str]:
    """The host's own IPv4 addresses (as /32) and the networks it is attached to, as CIDRs."""
    found: set[str] = set()
    for interface in _ip_json("addr", "show"):
        for address in interface.get("addr_info", []):
            network = ipaddress.ip_interface(f"{address['local']}/{address['prefixlen']}")
            if not network.ip.is_loopback:
                found |= {f"{network.ip}/32", str(network.network)}
    for route in _ip_json("route", "show", "scope", "link"):
        network = ipaddress.ip_network(route["dst"], strict=False)
        if not network.is_loopback:
            found.add(str(network))
    return sorted(found)


def _ip_json(*args: str) -> list[dict]:
    try:
        out = subprocess.run(["ip", "-j", "-4", *args], capture_output=True, text=True, check=False).stdout
        return json.loads(out or "[]")
    except (OSError, ValueError):
        return []


def refusal_routes() -> list[str]:
    """``ip -batch`` lines for the box's namespace: everything the box must not reach."""
    slirp = ipaddress.ip_network(SLIRP_CIDR)
    targets = [*REFUSED_RANGES]
    for network in host_networks():
        if not ipaddress.ip_network(network).overlaps(slirp):
            targets.append(network)
    return [f"route add prohibit {target}" for target in dict.fromkeys(targets)]


def attach(box_pid: int, run_dir: Path, launcher: list[str]) -> int:
    """Give the network namespace of ``box_pid`` outbound access; returns slirp4netns's pid
    (also in ``run_dir/net.pid``, its start time in ``net.started``).

    ``launcher`` starts a command detached and writes its pid to the file it is given.
    slirp4netns parses the box's packets: it runs sandboxed (an empty mount namespace,
    every capability dropped) under a seccomp filter.
    """
    require_tools()
    # The namespace belongs to the user namespace bubblewrap made first, not to the
    # box's innermost one (which slirp4netns would join by default and which has
    # no power over it): name the owner explicitly.
    net_fd = os.open(f"/proc/{box_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        owner_fd = fcntl.ioctl(net_fd, NS_GET_USERNS)
    finally:
        os.close(net_fd)
    pid_file = run_dir / "net.pid"
    try:
        ready_r, ready_w = os.pipe()
        try:
            # fmt: off
            command = [
                "slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
                "--enable-sandbox", "--enable-seccomp", f"--ready-fd={ready_w}",
                f"--userns-path=/proc/self/fd/{owner_fd}", str(box_pid), "tap0",
            ]
            # fmt: on
            with open(run_dir / "net.log", "ab") as log:
                subprocess.run(
                    [*launcher, str(pid_file), "--", *command],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(ready_w, owner_fd),
                    check=True,
                    start_new_session=True,
                )
            os.close(ready_w)
            ready_w = -1
            ready = _read_with_deadline(ready_r, 10)
        finally:
            os.close(ready_r)
            if ready_w >= 0:
                os.close(ready_w)
        slirp = int(pid_file.read_text())
        (run_dir / "net.started").write_text(
            str(process_start_time(slirp))
        )  # so destroy finds it, whatever happens next
        if ready != b"1":
            lines = (run_dir / "net.log").read_text(errors="replace").splitlines()
            said = "; ".join(line for line in lines if line and not line.startswith("WARNING"))
            raise ProviderUnavailable(f"slirp4netns could not attach the network: {said or 'no output'}")
        enter = ["nsenter", f"--net=/proc/{box_pid}/ns/net"]
        if os.geteuid() != 0:
            enter += [f"--user=/proc/self/fd/{owner_fd}", "--preserve-credentials"]
        batch = "\n".join(refusal_routes()) + "\n"
        done = subprocess.run(
            [*enter, "ip", "-batch", "-"],
            input=batch,
            capture_output=True,
            text=True,
            check=False,
            pass_fds=(owner_fd,),
        )
        if done.returncode != 0:
            if not os.path.exists(f"/proc/{box_pid}"):
                # Not the network's failure: the box ended (killed, or out of memory) meanwhile.
                raise ProviderUnavailable("the sandbox's process ended while its network was being set up")
            raise ProviderUnavailable(f"cannot restrict the sandbox's network: {done.stderr.strip() or 'ip failed'}")
        return slirp
    finally:
        os.close(owner_fd)


def _read_with_deadline(fd: int, seconds: float) -> bytes:
    import select

    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b""
        readable, _, _ = select.select([fd], [], [], left)
        if readable:
            return os.read(fd, 1)


# ---- Docker: containers allowed online join a bridge of ours, fenced with iptables

DOCKER_NETWORK = "nexus-internet"
DOCKER_BRIDGE = "nexus-inet0"


def docker_fence_rules() -> list[list[str]]:
    """iptables rules (without the verb) that keep a container on our bridge off this
    machine and its networks: nothing to the host itself (INPUT), nothing forwarded to
    the private ranges, link-local addresses or the host's own networks (DOCKER-USER,
    which Docker consults before its own rules).  The internet stays reachable."""
    rules = [["INPUT", "-i", DOCKER_BRIDGE, "-j", "REJECT"]]
    # Docker's embedded DNS asks the host's resolvers from the container's namespace:
    # those stay reachable, for DNS only, even in a private range.
    for resolver in host_resolvers():
        for protocol in ("udp", "tcp"):
            rule = ["-i", DOCKER_BRIDGE, "-d", f"{resolver}/32", "-p", protocol, "--dport", "53", "-j", "RETURN"]
            rules.append(["DOCKER-USER", *rule])
    for target in dict.fromkeys([*REFUSED_RANGES, *host_networks()]):
        rules.append(["DOCKER-USER", "-i", DOCKER_BRIDGE, "-d", target, "-j", "REJECT"])
    return rules


def host_resolvers() -> list[str]:
    """The IPv4 name servers of /etc/resolv.conf (loopback ones are Docker's to replace)."""
    found = []
    try:
        with open("/etc/resolv.conf") as resolv:
            for line in resolv:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    try:
                        address = ipaddress.ip_address(words[1])
                    except ValueError:
                        continue
                    if address.version == 4 and not address.is_loopback:
                        found.append(str(address))
    except OSError:
        pass
    return found


def fence_docker_bridge() -> None:
    """Insert each fence rule that is missing (idempotent; every create checks), keeping
    their order: each goes in at the top, so they are inserted last to first."""
    if shutil.which("iptables") is None:
        raise ProviderUnavailable(
            "iptables not found: it fences sandboxes allowed online off this machine's networks "
            "('apt-get install iptables')"
        )
    for rule in reversed(docker_fence_rules()):
        present = subprocess.run(["iptables", "-w", "-C", *rule], capture_output=True, check=False)
        if present.returncode != 0:
            done = subprocess.run(["iptables", "-w", "-I", *rule], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise ProviderUnavailable(
                    f"cannot fence the sandbox network with iptables: {done.stderr.strip() or 'failed'}"
                )
