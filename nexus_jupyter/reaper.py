"""Reaping, in one place: what ended is found and cleaned up.

Sandboxes whose idle time ran out are stopped, boxes that vanished behind our
back have their rows marked stopped, creates that never finished are failed,
boxes with no live row (orphans) are destroyed, and what warm pools left is
pruned.  Every call checks expiry cheaply (``expire``); a full pass (``reap``)
runs in the Jupyter server's loop, by ``nexus sandbox reap``, and in the
background after a read marked something: a read (a listing, a status, the
panel's refresh) marks rows but never waits on destroying a box.

In a fleet (hosts sharing one PostgreSQL database) a host reaches only its own
local boxes: each host's passes check and sweep those, and one pass at a time
for the whole fleet (``SandboxStore.fleet_turn``) does the rest: failed creates,
boxes of shared engines (E2B, a remote Docker engine) and their orphans.  A row
expired by another host is marked stopped; its box is then an orphan that its
own host's next pass destroys.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .background import open_lock, start_detached, try_lock, write_log
from .errors import SandboxError
from .store import LIVE_STATUSES

if TYPE_CHECKING:
    from .service import SandboxService

# A box started but never marked active within this time is taken as a failed create.
CREATE_GRACE_SECONDS = 120
# A server of the fleet silent this long was killed without withdrawing: its advertisement goes.
SERVER_SILENCE_SECONDS = 24 * 3600
PENDING = "reap.pending"  # in the data dir: a pass was asked for


class Reaper:
    """The housekeeping of one service's store and providers."""

    def __init__(self, service: SandboxService):
        self.service = service
        self.store = service.store

    # ---- expiry: every call
    def expire(self, destroy: bool = True) -> list[str]:
        """Stop every sandbox whose idle time ran out (any user's); returns their ids.
        ``destroy=False`` marks the rows only (their boxes become orphans for ``reap``)."""
        stopped = []
        for row in self.store.expired(time.time()):
            try:
                if self.stop_row(row, reason="expired", destroy=destroy):
                    stopped.append(row["sandbox_id"])
            except (SandboxError, OSError):
                # Marked stopped, its box not destroyed (a cloud out of reach, no key in this
                # shell): an orphan for the next full pass, not the failure of this call.
                continue
        return stopped

    def stop_row(self, row: dict, reason: str, destroy: bool = True) -> bool:
        """Mark stopped, then destroy (so a failed destroy leaves an orphan the reaper removes);
        True if this call stopped it.  ``destroy=False`` leaves the box to ``reap``."""
        won = self.store.update(
            row["sandbox_id"],
            {"status": "stopped", "stopped_at": time.time(), "expires_at": None, "stop_reason": reason},
            expect_status=LIVE_STATUSES,
        )
        if destroy and (won or row["status"] in LIVE_STATUSES) and self.service.fleet.holds(row):
            self.service.provider(row["provider"]).destroy(row["sandbox_id"], row["provider_state"])
        return won

    def verify(self, row: dict, destroy: bool = True) -> tuple[bool, str | None]:
        """Ask the provider what it holds; correct the row if the box vanished or froze.

        A stopped row whose box is still there (a stop killed midway) reports what
        the provider sees, unverified, until ``reap`` finishes the job."""
        if row["status"] == "creating":
            return True, "creating"
        if not self.service.fleet.holds(row):
            return False, f"on host {row['host']}"  # its own host's passes check it
        try:
            seen = self.service.provider(row["provider"]).inspect(row["sandbox_id"], row["provider_state"])
        except SandboxError:
            return False, None
        if self.store.shared and row.get("host") is None:
            # A row from before hosts were recorded: its box may be another host's.
            if seen == "stopped":
                return False, None
            self.store.update(row["sandbox_id"], {"host": self.service.fleet.host_id})  # found here: ours
        if row["status"] not in ("active", "paused"):
            return seen == "stopped", seen
        if seen == "stopped":
            self.stop_row(row, reason="vanished", destroy=destroy)
        elif seen != row["status"]:
            if seen == "paused":
                self.store.update(
                    row["sandbox_id"],
                    {"status": "paused", "paused_at": time.time(), "expires_at": None},
                    expect_status=("active",),
                )
            else:
                now = time.time()
                self.store.update(
                    row["sandbox_id"],
                    {
                        "status": "active",
                        "paused_at": None,
                        "last_active_at": now,
                        "expires_at": now + row["ttl_minutes"] * 60,
                    },
                    expect_status=("paused",),
                )
        return True, seen

    # ---- the full pass
    def reap(self, fleet_interval: float = 0.0) -> dict:
        """One pass: stop expired sandboxes, fix vanished ones, destroy orphans.

        Returns ``{"expired": [...], "vanished": [...], "failed_creates": [...], "orphans": [...],
        "pruned": [...], "fleet": bool}`` (pruned: spare warm-pool containers that ended; fleet:
        whether this pass did the fleet's share, which in a fleet one pass per ``fleet_interval``
        does; always with one machine's store).
        """
        with self.store.fleet_turn(fleet_interval) as fleet:
            return self._pass(fleet)

    def _pass(self, fleet: bool) -> dict:
        report = {"expired": self.expire(), "vanished": [], "failed_creates": [], "orphans": [], "pruned": []}
        report["fleet"] = fleet
        holds = self.service.fleet.holds
        if fleet:
            self.store.forget_servers(time.time() - SERVER_SILENCE_SECONDS)
        for row in self.store.stale_creating(time.time() - CREATE_GRACE_SECONDS) if fleet else ():
            if self.store.update(
                row["sandbox_id"],
                {"status": "failed", "stopped_at": time.time(), "stop_reason": "create did not finish"},
                expect_status=("creating",),
            ):
                if holds(row):  # else an orphan on its own host, which sweeps it
                    self.service.provider(row["provider"]).destroy(row["sandbox_id"], row["provider_state"])
                report["failed_creates"].append(row["sandbox_id"])
        for row in self.store.select(include_stopped=False):
            if row["status"] not in ("active", "paused") or not holds(row):
                continue
            # A shared engine's box is every host's to check: the fleet's one pass does it.
            if not fleet and self.service.fleet.on_shared_engine(row):
                continue
            verified, seen = self.verify(row)
            if verified and seen == "stopped":
                report["vanished"].append(row["sandbox_id"])
        providers = {row["provider"] for row in self.store.select(include_stopped=True)} | {"local"}
        providers |= set(self.service._providers)  # e.g. a Docker provider holding only a warm pool
        for name in sorted(providers):
            try:
                backend = self.service.provider(name)
                if self.store.shared and backend.fleet_wide() and not fleet:
                    continue  # its orphans are the fleet pass's to sweep (one E2B listing, not one per host)
                # Resources first, rows second: a box created in between has its row already.
                held = backend.box_ids()
            except SandboxError:
                continue
            for orphan in sorted(held - self.store.live_ids(name)):
                try:
                    backend.destroy(orphan, {})
                except (SandboxError, OSError):
                    continue  # ending as we looked (or stuck): the next pass sees it again
                report["orphans"].append(orphan)
            report["pruned"] += backend.prune()
        return report

    # ---- in the background
    def reap_in_background(self) -> None:
        """A full pass in a detached process (a CLI call returns at once; it outlives it).

        A pass asked for while one runs is not lost: the request is a file the running
        pass looks for before it ends, and it goes round again.
        """
        try:
            os.close(os.open(self.store.data_dir / PENDING, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            lock = open_lock(self.store.data_dir / "reap.lock")
        except OSError:
            return  # the next call's expiry check, or the server's pass, does it
        try:
            if try_lock(lock):
                start_detached(__name__, [str(self.store.data_dir)], lock)
        except OSError:
            pass
        finally:
            os.close(lock)  # the child's copy keeps the lock


def main(argv: list[str]) -> int:
    """The background pass: ``python -m nexus_jupyter.reaper DATA_DIR LOCK_FD`` (the lock held).

    It goes round while passes are asked for, and once more if one was asked for as it
    let go of the lock (the asker found the lock still held and left it to this pass).
    """
    from .service import SandboxService

    data_dir, lock = Path(argv[0]), int(argv[1])
    service = SandboxService(data_dir)
    pending = data_dir / PENDING
    try:
        while lock is not None:
            for _ in range(10):
                try:
                    pending.unlink()
                except FileNotFoundError:
                    break
                service.reap()
            os.close(lock)
            lock = None
            if pending.exists():
                lock = open_lock(data_dir / "reap.lock")
                if not try_lock(lock):
                    os.close(lock)  # another pass has it
                    lock = None
    except Exception as exc:  # no one to tell but the log
        write_log(data_dir / "reap.log", f"reaping pass failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
