"""The local provider's warm pool: boxes started ahead, their Python runtime already warm.

A create that fits the pool's shape takes a box from it instead of starting
one: the box's directory is renamed from its slot name to the sandbox id (the
rename is the claim: of two processes, only one succeeds), its cgroup limits
are set to what the create asked, and its agent gets the sandbox's environment
and idle timeout.  A pool box has run no code before it is claimed, and it is
never handed out twice: a stopped sandbox's box is destroyed, not returned.

The refill runs in a detached process, so a CLI call returns at once and the
pool is warm again by the next create.  An unclaimed box ends itself after
POOL_IDLE_SECONDS without a claim; ``prune`` removes what it leaves.

Pool boxes keep their slot's name for their cgroups (cgroup v2 cannot rename a
group): the name is in the provider state and in the box's ``pool.json``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..background import open_lock, start_detached, try_lock, write_log
from ..errors import ProviderUnavailable, SandboxError
from .agent_box import BOX_CODE_FILES, BOX_CODE_SOURCE
from .base import BoxSpec, private_dir

if TYPE_CHECKING:
    from .local import LocalProvider

POOL_PREFIX = "pool-"
POOL_RECORD = "pool.json"  # in a slot's directory: its provider state, written once the box answers
POOL_IDLE_SECONDS = 900
POOL_SHAPE = BoxSpec(sandbox_id="", idle_timeout_seconds=POOL_IDLE_SECONDS)
# A claimed box's memory limit must leave room for its idle runtime (~75 MiB resident).
MIN_CLAIM_MEMORY_MB = 256
DRAIN_WAIT_SECONDS = 60.0
DRAINED_SUFFIX = "-drained"  # a slot taken by drain (never claimable: it has no record under its name)
SLOT_NAME = re.compile(r"pool-[0-9a-f]{12}")


FINGERPRINT_SECONDS = 30.0


class LocalPool:
    """The warm pool of one store's local boxes."""

    def __init__(self, provider: LocalProvider):
        self.provider = provider
        self._fingerprint: tuple[float, str] | None = None

    @property
    def lock_file(self) -> Path:
        return self.provider.root / "pool.lock"

    def fits(self, spec: BoxSpec) -> bool:
        """Only a box the claim can reshape: limits through cgroups, no network, the pool's
        disk, and no env of its own (PYTHONPATH, LD_PRELOAD... act when an interpreter
        starts: the pool box's runtime started before the claim)."""
        return (
            self.provider.cgroups is not None
            and not spec.allow_internet
            and not spec.env
            and spec.disk_mb == POOL_SHAPE.disk_mb
            and spec.memory_mb >= MIN_CLAIM_MEMORY_MB
        )

    def fingerprint(self) -> str:
        """What a pool box was made from, as this process would make one: the isolation, the
        Python (a venv's), the interpreters' directories and the box code's version.  A
        process claims only boxes made as it would have made them.  Kept for 30 s: a long-lived
        process (a server, a kernel) sees an upgrade in place within that time."""
        now = time.monotonic()
        if self._fingerprint is not None and now - self._fingerprint[0] < FINGERPRINT_SECONDS:
            return self._fingerprint[1]
        from .isolation import choose_isolation
        from .local import _interpreters, _runtime_paths

        code = [
            (name, os.stat(BOX_CODE_SOURCE / name).st_mtime_ns, os.stat(BOX_CODE_SOURCE / name).st_size)
            for name in BOX_CODE_FILES
        ]
        # The interpreters as files, not as spelled: a server started as python3.11 and a
        # kernel started as python run the same Python (a venv's shows in sys.prefix).
        interpreters = {name: os.path.realpath(path) for name, path in _interpreters().items()}
        made_of = [choose_isolation(), interpreters, _runtime_paths(), sys.prefix, str(BOX_CODE_SOURCE), code]
        self._fingerprint = (now, json.dumps(made_of, sort_keys=True))
        return self._fingerprint[1]

    def slots(self) -> list[str]:
        """Names of the pool's ready boxes (their record written), oldest first."""
        ready = []
        try:
            entries = list(os.scandir(self.provider.root))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name.startswith(POOL_PREFIX):
                try:
                    ready.append((os.stat(Path(entry.path) / POOL_RECORD).st_mtime, entry.name))
                except OSError:
                    continue  # still being started
        return [name for _, name in sorted(ready)]

    # ---- claim
    def claim(self, spec: BoxSpec) -> dict | None:
        """Hand a pool box over to ``spec.sandbox_id``; None when the pool has none ready."""
        provider = self.provider
        fingerprint = self.fingerprint()
        for slot in self.slots():
            try:
                state = json.loads(_read_private(provider.box_dir(slot) / POOL_RECORD))
            except (OSError, ValueError):
                continue
            if not isinstance(state, dict) or state.get("made_of") != fingerprint or state.get("cgroup") != slot:
                continue  # made by another Python, venv, setting or version of this package
            try:
                os.rename(provider.box_dir(slot), provider.box_dir(spec.sandbox_id))
            except OSError:
                continue  # another process claimed it first
            state.update(dir=str(provider.box_dir(spec.sandbox_id)), pool_slot=slot)
            try:
                if provider.inspect(spec.sandbox_id, state) != "active":
                    raise ProviderUnavailable("the pool box has ended")
                provider.cgroups.set_limits(state["cgroup"], spec.memory_mb << 20, spec.max_processes, spec.cpus)
                provider.agent(spec.sandbox_id, state).touch(spec.idle_timeout_seconds, env=provider.box_env(spec.env))
            except (SandboxError, OSError):
                try:
                    provider.destroy(spec.sandbox_id, state)
                except OSError:
                    pass  # an orphan now: the reaper's sweep removes it
                continue
            # What the sandbox is shown to use counts from here, not from the pool's wait.
            state["cpu_baseline"] = provider.cgroups.usage(slot).get("cpu_seconds") or 0.0
            provider.cgroups.reset_peak(slot)
            return state
        return None

    # ---- fill
    def refill_in_background(self, size: int) -> None:
        """Start a detached process that fills the pool, unless one already runs.

        The fill lock is taken here and handed to the child, so from the moment this
        returns, ``drain`` (a test ending, a server stopping) waits for that fill.
        """
        try:
            lock = self._open_lock()
        except OSError:
            return  # the next create starts cold and tries again
        try:
            if try_lock(lock):
                start_detached(__name__, [str(self.provider.data_dir), str(size)], lock)
        except OSError:
            pass
        finally:
            os.close(lock)  # the child's copy keeps the lock

    def fill(self, size: int, lock: int | None = None) -> int:
        """Start pool boxes until ``size`` are ready; returns how many were started.

        ``lock``: a descriptor of the fill lock already held (the detached refill's);
        otherwise the lock is taken here, and nothing is done if another fill holds it.
        """
        if lock is None:
            lock = self._open_lock()
            if not try_lock(lock):
                os.close(lock)
                return 0
        try:
            self._prune_locked()
            started = 0
            # Checked again after each box: one claimed while this fill ran is replaced too
            # (the claimer found the lock held and left the refill to this one).
            while len(self.slots()) < size and started < 2 * size + 2:
                self._start_slot()
                started += 1
            return started
        finally:
            os.close(lock)

    def _start_slot(self) -> None:
        import secrets

        provider = self.provider
        slot = POOL_PREFIX + secrets.token_hex(6)
        spec = BoxSpec(sandbox_id=slot, idle_timeout_seconds=POOL_IDLE_SECONDS)
        state: dict = {}
        try:
            state = provider.start_box(spec, background=True)
            provider.check_started(slot, state)
            record = provider.box_dir(slot) / (POOL_RECORD + ".new")
            record.write_text(json.dumps({**state, "made_of": self.fingerprint()}))
            record.rename(provider.box_dir(slot) / POOL_RECORD)  # now claimable
        except BaseException:
            provider.destroy(slot, state)
            raise

    # ---- cleanup
    def prune(self) -> list[str]:
        """Remove what ended pool boxes left (a box, a slot never finished, an empty group);
        returns their names.  Skipped while a fill runs."""
        lock = self._open_lock()
        if not try_lock(lock):
            os.close(lock)
            return []
        try:
            return self._prune_locked()
        finally:
            os.close(lock)

    def _prune_locked(self) -> list[str]:
        provider, cgroups = self.provider, self.provider.cgroups
        pruned = []
        ready = set(self.slots())
        try:
            names = {entry.name for entry in os.scandir(provider.root) if entry.name.startswith(POOL_PREFIX)}
        except FileNotFoundError:
            names = set()
        for slot in sorted(names):
            group = slot.removesuffix(DRAINED_SUFFIX)
            # With the lock held no fill is under way: a slot without its record is a failed one.
            if slot not in ready or provider.inspect(slot, {"cgroup": group}) == "stopped":
                provider.destroy(slot, {"cgroup": group})
                pruned.append(slot)
        if cgroups is not None:
            # A claimed box keeps its slot's group, named in its directory's record (read after
            # the slots were listed, so a claim under way is seen on one side or the other).
            # A group that no slot and no box claims is left over: by a box whose stop
            # could not kill it before its directory went, or by a drain cut short.
            groups = {name.removesuffix(DRAINED_SUFFIX) for name in names} | self._claimed_groups()
            for group in sorted(cgroups.box_ids() - groups):
                if SLOT_NAME.fullmatch(group):
                    cgroups.kill(group)
                    cgroups.remove(group)
                    pruned.append(group)
        return pruned

    def _claimed_groups(self) -> set[str]:
        groups = set()
        try:
            entries = [entry for entry in os.scandir(self.provider.root) if not entry.name.startswith(POOL_PREFIX)]
        except FileNotFoundError:
            return groups
        for entry in entries:
            try:
                groups.add(str(json.loads(_read_private(Path(entry.path) / POOL_RECORD))["cgroup"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a box from the pool
        return groups

    def drain(self) -> list[str]:
        """Destroy every unclaimed pool box, after waiting for a fill under way; returns their
        names.  Each box is taken as a claim takes it (a rename), so one a create claims
        meanwhile is left to it."""
        lock = self._open_lock()
        try:
            deadline = time.monotonic() + DRAIN_WAIT_SECONDS
            while not try_lock(lock):
                if time.monotonic() > deadline:
                    raise ProviderUnavailable("a warm-pool fill did not finish in time: try again")
                time.sleep(0.05)
            drained = []
            for slot in self.slots():
                taken = slot + DRAINED_SUFFIX
                try:
                    os.rename(self.provider.box_dir(slot), self.provider.box_dir(taken))
                except OSError:
                    continue  # claimed
                self.provider.destroy(taken, {"cgroup": slot})
                drained.append(slot)
            return drained + self._prune_locked()
        finally:
            os.close(lock)

    def _open_lock(self) -> int:
        private_dir(self.provider.root)
        return open_lock(self.lock_file)


def _read_private(path: Path) -> str:
    """A file of ours under the box root, never through a link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, encoding="utf-8") as handle:
        return handle.read()


def main(argv: list[str]) -> int:
    """The detached refill: ``python -m nexus_jupyter.providers.local_pool DATA_DIR SIZE LOCK_FD``."""
    from .local import LocalProvider

    data_dir, size, lock = Path(argv[0]), int(argv[1]), int(argv[2])
    provider = LocalProvider(data_dir)
    try:
        provider.pool.fill(size, lock=lock)
    except Exception as exc:  # no one to tell but the log: the next create starts cold
        write_log(provider.root / "pool.log", f"fill failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
