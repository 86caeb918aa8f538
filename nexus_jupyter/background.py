"""Work that outlives the process asking for it: a detached Python process holding a lock.

A CLI call that claims a warm box, or a read that marks a sandbox expired,
starts the follow-up work (the pool's refill, a reaping pass) here and returns at
once.  The lock is taken by the asker and handed to the child, so from the moment
the asker returns, whoever waits for the lock (a test's teardown, a drain) waits
for that work too; an asker that finds it taken leaves the work to its holder.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from pathlib import Path


def open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def try_lock(fd: int) -> bool:
    """Take the lock if no one holds it; False if someone does."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise


def write_log(path: Path, line: str) -> None:
    """Replace ``path`` with one dated line (a detached process has no one else to tell);
    never through a link."""
    import time

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    with open(fd, "w") as log:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def start_detached(module: str, args: list[str], lock: int) -> None:
    """``python -m MODULE ARGS... LOCK_FD`` in a session of its own, the held lock passed to it
    (the caller closes its own copy).  Raises OSError if it cannot be started."""
    import subprocess  # here: most CLI calls start nothing

    # The child runs this very copy of the package, whatever its sys.path would find.
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    subprocess.Popen(
        [sys.executable, "-m", module, *args, str(lock)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=(lock,),
        start_new_session=True,
        env=env,
    )
