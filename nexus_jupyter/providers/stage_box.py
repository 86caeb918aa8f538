"""Start bubblewrap as a box's own unprivileged host uid, from root.

    python -I -S stage_box.py STAGE_DIR UID SOURCE... -- BWRAP_ARGV...

Run by root (stdlib only, ``-I -S``: ~20 ms, where the same steps as
``mount`` commands from a shell took ~70 ms).  In a private mount namespace
it binds every SOURCE into a staging tmpfs, as ``STAGE_DIR/<index>``, and
moves that tmpfs over /tmp, so a uid that could not reach the sources where
they live (a 0700 data dir, an interpreter under /root) can: bubblewrap then
takes them from ``/tmp/<index>``.  It drops to UID (no groups, no
capabilities) and execs bubblewrap, which maps the box's user to UID:
the box is never host root.
"""

import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
LIBC = ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        error = ctypes.get_errno()
        raise SystemExit(f"nexus: {what}: {os.strerror(error)}")


def _mount(source, target, fstype, flags, data):
    _check(
        LIBC.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def main(argv):
    split = argv.index("--")
    stage, uid, sources, command = argv[0], int(argv[1]), argv[2:split], argv[split + 1 :]
    _check(LIBC.unshare(CLONE_NEWNS), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    _mount("nexus-stage", stage, "tmpfs", 0, "mode=1777,size=1m")
    for index, source in enumerate(sources):
        target = f"{stage}/{index}"
        if os.path.isdir(source):
            os.mkdir(target)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
        _mount(source, target, None, MS_BIND | MS_REC, None)
    _mount(stage, "/tmp", None, MS_MOVE, None)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # from root to another uid: every capability goes too
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
