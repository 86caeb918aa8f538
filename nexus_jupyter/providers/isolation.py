"""How a local box is isolated: one filesystem layout, two ways to build it.

``BoxLayout`` says what a box sees (read-only system directories, its
writable home, /tmp, /dev/shm, the agent's socket directory, the
interpreters).  ``bwrap_command`` builds it with bubblewrap;
``unshare_command`` with util-linux's unshare, mount, pivot_root and setpriv,
for machines without bubblewrap (root only: it needs real privileges to set
up the mounts before dropping them).

Either way the box's processes run as an unprivileged host uid of the box's
own (``box_host_uid``), never as host root: bubblewrap started by root would
map the box's user to uid 0, so root starts it as the box's uid instead.
That uid cannot read the sources of the box's mounts where they live (a
0700 data dir, an interpreter under /root), so they are first bound, by
root in a private mount namespace, into a staging tmpfs over /tmp, from
where the unprivileged bubblewrap takes them (``stage_box.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import ProviderUnavailable
from .agent_box import BOX_CODE, BOX_RUN

BOX_HOME = "/home/user"
# Host files a box may read: what dynamic linking, TLS and time zones need.
ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl",
    "ca-certificates",
    "localtime",
    "nsswitch.conf",
    "mime.types",
    "protocols",
    "services",
    "fonts",  # fontconfig: matplotlib and friends warn without it
)
TOP_LEVEL_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# Nothing of the caller's environment (API keys...) may reach a box.
CLEAN_ENV = ("env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
INSTALL_ADVICE = (
    "install bubblewrap with 'apt-get install bubblewrap' (Debian/Ubuntu) or 'dnf install bubblewrap' (Fedora)"
)


@dataclass
class BoxLayout:
    """What one box sees, as (host path, box path) pairs, mounted in this order."""

    read_only: list[tuple[str, str]] = field(default_factory=list)
    read_only_if_present: list[tuple[str, str]] = field(default_factory=list)
    symlinks: list[tuple[str, str]] = field(default_factory=list)  # (target, box path)
    # The home, /tmp, /dev/shm and the socket dir: directories of one size-limited
    # tmpfs (one budget for every file the box writes), or plain directories
    # and bubblewrap's own tmpfs for /tmp and /dev/shm where we cannot mount.
    writable: list[tuple[str, str]] = field(default_factory=list)
    # The interpreters, after the writable mounts: one that lives under /tmp
    # (a CI runner's venv) stays visible above the box's own /tmp.
    runtime: list[tuple[str, str]] = field(default_factory=list)
    tmp_bytes: int = 512 << 20
    own_tmpfs: bool = True  # /tmp and /dev/shm are in the box's tmpfs
    allow_internet: bool = False

    def sources(self) -> list[str]:
        """Every host path the box's mounts take, in the order the builders use them."""
        present = [source for source, _ in self.read_only_if_present if os.path.exists(source)]
        return [
            *(source for source, _ in self.read_only),
            *present,
            *(source for source, _ in self.writable),
            *(source for source, _ in self.runtime),
        ]


def make_layout(
    box: Path, runtime_paths: list[str], box_code: Path, tmp_bytes: int, allow_internet: bool, own_tmpfs: bool
) -> BoxLayout:
    layout = BoxLayout(tmp_bytes=tmp_bytes, allow_internet=allow_internet, own_tmpfs=own_tmpfs)
    layout.read_only.append(("/usr", "/usr"))
    for name in TOP_LEVEL_LINKS:
        path = Path("/") / name
        if path.is_symlink():
            layout.symlinks.append((os.readlink(path), str(path)))
        elif path.is_dir():
            layout.read_only.append((str(path), str(path)))
    for name in ETC_FILES:
        layout.read_only_if_present.append((f"/etc/{name}", f"/etc/{name}"))
    for name in ("passwd", "group", "hosts") + (("resolv.conf",) if allow_internet else ()):
        layout.read_only.append((str(box / "etc" / name), f"/etc/{name}"))
    layout.read_only.append((str(box_code), BOX_CODE))
    layout.writable += [(str(box / "fs" / "home"), BOX_HOME), (str(box / "fs" / "run"), BOX_RUN)]
    if own_tmpfs:
        layout.writable += [(str(box / "fs" / "tmp"), "/tmp"), (str(box / "fs" / "shm"), "/dev/shm")]
    layout.runtime += [(path, path) for path in runtime_paths]
    return layout


@lru_cache(maxsize=1)
def _bwrap_features(bwrap: str) -> frozenset:
    help_text = subprocess.run([bwrap, "--help"], capture_output=True, text=True, check=False).stdout
    return frozenset(flag for flag in ("--disable-userns", "--size", "--clearenv") if flag in help_text)


def choose_isolation() -> str:
    """``bwrap`` or ``unshare``, per NEXUS_LOCAL_ISOLATION (auto by default) and what is installed."""
    wanted = os.environ.get("NEXUS_LOCAL_ISOLATION", "auto").strip().lower()
    has_bwrap = shutil.which("bwrap") is not None
    has_unshare = os.geteuid() == 0 and all(shutil.which(t) for t in ("unshare", "setpriv", "mount", "pivot_root"))
    if wanted == "bwrap" or (wanted == "auto" and has_bwrap):
        if not has_bwrap:
            raise ProviderUnavailable(f"bubblewrap (bwrap) is not installed: {INSTALL_ADVICE}")
        return "bwrap"
    if wanted in ("unshare", "auto"):
        if not has_unshare:
            raise ProviderUnavailable(
                "bubblewrap (bwrap) is not installed, and the local provider never runs code unisolated: "
                f"{INSTALL_ADVICE} (as root, util-linux's unshare, setpriv, mount and pivot_root also do)"
            )
        return "unshare"
    raise ProviderUnavailable(f"NEXUS_LOCAL_ISOLATION must be auto, bwrap or unshare, not {wanted!r}")


def bwrap_command(layout: BoxLayout, uid: int, host_uid: int | None, stage: Path, argv: list[str]) -> list[str]:
    """The command that starts the box: ``uid`` is its user inside, ``host_uid`` (as root)
    the unprivileged host uid bubblewrap runs as; None runs it as the caller."""
    bwrap = shutil.which("bwrap") or "bwrap"
    features = _bwrap_features(bwrap)
    prefix = [*CLEAN_ENV, bwrap]  # env -i: bwrap keeps its environment, and the box could read it in /proc
    staged: dict[str, str] = {}
    if host_uid is not None:
        sources = layout.sources()
        staged = {source: f"/tmp/{index}" for index, source in enumerate(sources)}
        stage_box = str(Path(__file__).with_name("stage_box.py"))
        prefix = [*CLEAN_ENV, sys.executable, "-I", "-S", stage_box, str(stage), str(host_uid), *sources, "--", bwrap]
    # fmt: off
    args = [
        *prefix,
        "--unshare-user", "--uid", str(uid), "--gid", str(uid),
        "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox",
        "--cap-drop", "ALL", "--new-session",
        # The agent is PID 1 (it reaps orphans): no bwrap process, and so no host paths, inside.
        "--as-pid-1",
    ]
    # fmt: on
    if "--disable-userns" in features:
        args.append("--disable-userns")  # no nested user namespaces: no way back to capabilities
    # Its own network namespace always: an allowed network is attached to it
    # from outside (slirp4netns), never the host's.
    args.append("--unshare-net")
    if "--clearenv" in features:
        args.append("--clearenv")

    def source(path: str) -> str:
        return staged.get(path, path)

    for host_path, target in layout.read_only:
        args += ["--ro-bind", source(host_path), target]
    for host_path, target in layout.read_only_if_present:
        if host_uid is None or host_path in staged:
            args += ["--ro-bind-try", source(host_path), target]
    for target, path in layout.symlinks:
        args += ["--symlink", target, path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    for host_path, target in layout.writable:
        args += ["--bind", source(host_path), target]
    if not layout.own_tmpfs:
        for target in ("/tmp", "/dev/shm"):
            if "--size" in features:
                args += ["--size", str(layout.tmp_bytes)]
            args += ["--tmpfs", target]
    for host_path, target in layout.runtime:
        args += ["--ro-bind", source(host_path), target]
    # Everything but the writable mounts is read-only, /dev included (it is a tmpfs of bwrap's).
    args += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", BOX_HOME, "--setenv", "HOME", BOX_HOME]
    return [*args, "--", *argv]


# Runs as host root inside fresh mount/PID/IPC/UTS/cgroup(/net) namespaces:
# builds the box's root on a tmpfs, pivots into it, then drops to the box's
# own unprivileged uid with no capabilities and no_new_privs.
UNSHARE_SETUP = r"""
set -eu
root=$1; uid=$2; tmp_bytes=$3; shift 3
echo sandbox > /proc/sys/kernel/hostname
ip link set lo up 2>/dev/null || true
mount -t tmpfs -o size=4m,mode=0755 nexus-root "$root"
bind() {  # mode source target
  if [ -d "$2" ]; then mkdir -p "$root$3"; else mkdir -p "$(dirname "$root$3")"; touch "$root$3"; fi
  mount --rbind "$2" "$root$3"
  if [ "$1" = ro ]; then mount -o remount,bind,ro,nosuid,nodev "$root$3"; fi
}
while [ "$1" != -- ]; do
  case $1 in
    ro) bind ro "$2" "$3" ;;
    ro-try) if [ -e "$2" ]; then bind ro "$2" "$3"; fi ;;
    rw) bind rw "$2" "$3" ;;
    link) mkdir -p "$(dirname "$root$3")"; ln -s "$2" "$root$3" ;;
  esac
  shift 3
done
shift
mkdir -p "$root/dev/shm" "$root/dev/pts" "$root/tmp" "$root/proc"
for device in {devices}; do touch "$root/dev/$device"; mount --bind "/dev/$device" "$root/dev/$device"; done
for stream in stdin:0 stdout:1 stderr:2; do ln -s "/proc/self/fd/${stream#*:}" "$root/dev/${stream%:*}"; done
ln -s /proc/self/fd "$root/dev/fd"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
cd "$root"
mkdir .old-root
pivot_root . .old-root
cd /
umount -l /.old-root
rmdir /.old-root
mount -o remount,ro,bind /
cd /home/user
exec setpriv --reuid="$uid" --regid="$uid" --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"
""".replace("{devices}", " ".join(DEVICES))


def unshare_command(layout: BoxLayout, uid: int, rootfs: Path, argv: list[str]) -> list[str]:
    namespaces = ["--mount", "--pid", "--fork", "--ipc", "--uts", "--cgroup", "--propagation", "private", "--net"]
    if not layout.own_tmpfs:
        raise ProviderUnavailable("the unshare fallback needs the box's tmpfs, which could not be mounted")
    mounts: list[str] = []
    for source, target in layout.read_only:
        mounts += ["ro", source, target]
    for source, target in layout.read_only_if_present:
        mounts += ["ro-try", source, target]
    for source, target in layout.writable:
        mounts += ["rw", source, target]
    for source, target in layout.runtime:
        mounts += ["ro", source, target]
    for target, path in layout.symlinks:
        mounts += ["link", target, path]
    return [
        *CLEAN_ENV,
        "unshare",
        *namespaces,
        "/bin/sh",
        "-c",
        UNSHARE_SETUP,
        "sh",
        str(rootfs),
        str(uid),
        str(layout.tmp_bytes),
        *mounts,
        "--",
        *argv,
    ]
