"""A file that appears whole or not at all (downloads from a sandbox), and ids kept in a file made once."""

from __future__ import annotations

import errno
import os
import secrets
import tempfile
from pathlib import Path


class AtomicFile:
    """A file written in full or not at all: an unnamed file in the target's directory
    (``O_TMPFILE``: a process killed mid-write leaves nothing), named only when complete,
    then renamed over the target.  Where the filesystem has no ``O_TMPFILE``, a file
    created exclusively under a random name, removed on failure."""

    def __init__(self, target: Path):
        self.target = target
        self.directory = target.parent if str(target.parent) else Path(".")
        self.fd = -1
        self.temporary: str | None = None

    def __enter__(self):
        try:
            self.fd = os.open(self.directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            self.fd, self.temporary = tempfile.mkstemp(
                dir=self.directory, prefix=f".{self.target.name}.", suffix=".partial"
            )
        return self

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                os.fchmod(self.fd, 0o666 & ~_umask())
                if self.temporary is None:
                    self.temporary = str(self.directory / f".{self.target.name}.{secrets.token_hex(6)}.partial")
                    # linkat(AT_SYMLINK_FOLLOW) names the open file; Python calls it only when given a dir fd.
                    proc = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY)
                    try:
                        os.link(str(self.fd), self.temporary, src_dir_fd=proc, follow_symlinks=True)
                    finally:
                        os.close(proc)
                os.replace(self.temporary, self.target)
                self.temporary = None
        finally:
            os.close(self.fd)
            if self.temporary is not None:
                try:
                    os.unlink(self.temporary)
                except FileNotFoundError:
                    pass


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def read_or_write_once(path: Path, value: str) -> str:
    """The text kept in ``path``; when there is none yet, ``value`` is written there first.
    Of processes doing this at once the first to link its file wins, and all read its text.
    Raises OSError (a directory or an unreadable file in its place)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    partial = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    partial.write_text(value + "\n")
    try:
        os.link(partial, path)
    except FileExistsError:
        pass
    finally:
        partial.unlink()
    return path.read_text().strip()
