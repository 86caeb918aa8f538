"""Benchmark of the local provider, with baselines measured in the same run.

    python benchmarks/bench_local.py [--repeat 20]

Prints medians (milliseconds) for: create (no pool, and from the warm pool),
first run of print(2+2), warm run, stop, and the ``nexus sandbox list`` CLI
with 1,000 rows in the store; beside each, a baseline: a plain subprocess, a
bare bubblewrap box, a bare Python start.  Not a test: nothing fails on a slow machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nexus_jupyter import SandboxManager
from nexus_jupyter.store import Store


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def nexus_command() -> list[str]:
    # The console script itself, not a version manager's shim in front of it.
    script = Path(sysconfig.get_path("scripts")) / "nexus"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nexus_jupyter"]


def bare_bwrap_python() -> list[str]:
    bwrap = shutil.which("bwrap")
    prefix = sys.base_prefix
    args = [bwrap, "--unshare-all", "--cap-drop", "ALL", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib64", "sbin"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
    if not prefix.startswith("/usr"):
        args += ["--ro-bind", prefix, prefix]
    return [*args, "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", sys.executable, "-c", "print(2+2)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    n = args.repeat

    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmp:
        nx = SandboxManager(Path(tmp) / "data", provider="local", warm_pool=0)
        creates, firsts, stops = [], [], []
        for _ in range(n):
            box: dict = {}
            creates.append(timed(lambda box=box: box.update(nx.sandbox_create("bench"))))
            firsts.append(timed(lambda box=box: nx.sandbox_run(box["sandbox_id"], "python", "print(2+2)", fresh=True)))
            stops.append(timed(lambda box=box: nx.sandbox_stop(box["sandbox_id"])))
        # From the warm pool: creates a couple of seconds apart, so the refill has finished.
        pooled = SandboxManager(Path(tmp) / "pool", provider="local", warm_pool=1)
        pool = pooled.provider("local").pool
        pool.fill(1)
        pool_creates, pool_firsts, pool_stops = [], [], []
        for _ in range(n):
            while not pool.slots():
                time.sleep(0.05)
            time.sleep(1.0)  # the new box's runtime warms up
            box = {}
            pool_creates.append(timed(lambda box=box: box.update(pooled.sandbox_create("bench"))))
            pool_firsts.append(timed(lambda box=box: pooled.sandbox_run(box["sandbox_id"], "python", "print(2+2)")))
            pool_stops.append(timed(lambda box=box: pooled.sandbox_stop(box["sandbox_id"])))
        pool.drain()
        sandbox = nx.sandbox_create("warm")["sandbox_id"]
        nx.sandbox_run(sandbox, "python", "print(2+2)")  # starts the kernel
        warm = [timed(lambda: nx.sandbox_run(sandbox, "python", "print(2+2)", fresh=True)) for _ in range(n)]
        stateful = [timed(lambda: nx.sandbox_run(sandbox, "python", "print(2+2)")) for _ in range(n)]
        warm_bash = [timed(lambda: nx.sandbox_run(sandbox, "bash", "echo 4")) for _ in range(n)]
        nx.sandbox_stop(sandbox)

        subprocess_python = [
            timed(lambda: subprocess.run([sys.executable, "-c", "print(2+2)"], capture_output=True)) for _ in range(n)
        ]
        subprocess_bash = [
            timed(lambda: subprocess.run(["bash", "-c", "echo 4"], capture_output=True)) for _ in range(n)
        ]
        bwrap_python = [timed(lambda: subprocess.run(bare_bwrap_python(), capture_output=True)) for _ in range(n)]

        # 1,000 rows for the CLI listing: a store of its own, rows as a create writes them.
        list_dir = Path(tmp) / "list-data"
        store = Store(list_dir)
        now = time.time()
        conn = store.connection()
        conn.execute("BEGIN")
        for i in range(1000):
            store.insert(
                {
                    "sandbox_id": f"sb_bench{i:06d}",
                    "name": f"box-{i}",
                    "user_id": "bench",
                    "tenant_id": "default",
                    "provider": "local",
                    "status": "active",
                    "created_at": now,
                    "last_active_at": now,
                    "ttl_minutes": 60,
                    "expires_at": now + 3600,
                }
            )
        conn.execute("COMMIT")
        env = {**os.environ, "NEXUS_DATA_DIR": str(list_dir), "NEXUS_USER": "bench"}
        command = nexus_command()
        listing = subprocess.run([*command, "sandbox", "list", "--json"], capture_output=True, env=env)
        assert listing.stdout.count(b'"sandbox_id"') == 1000, listing.stderr
        cli_list = [
            timed(lambda: subprocess.run([*command, "sandbox", "list"], capture_output=True, env=env)) for _ in range(n)
        ]
        cli_list_json = [
            timed(lambda: subprocess.run([*command, "sandbox", "list", "--json"], capture_output=True, env=env))
            for _ in range(n)
        ]
        python_start = [
            timed(lambda: subprocess.run([sys.executable, "-c", "pass"], capture_output=True)) for _ in range(n)
        ]

    rows = [
        ("create (until the agent answers)", creates, "-", None),
        (
            "create + first run, fresh python",
            [a + b for a, b in zip(creates, firsts, strict=True)],
            "bare bwrap box + python",
            bwrap_python,
        ),
        ("first run: python, fresh process", firsts, "bare bwrap box + python", bwrap_python),
        ("warm run: python, fresh process", warm, "plain subprocess python", subprocess_python),
        ("warm run: python, stateful kernel", stateful, "plain subprocess python", subprocess_python),
        ("warm run: bash echo", warm_bash, "plain subprocess bash", subprocess_bash),
        ("stop", stops, "-", None),
        ("create, from the warm pool", pool_creates, "-", None),
        ("first run after it: python, stateful", pool_firsts, "plain subprocess python", subprocess_python),
        ("stop (a warm-pool box)", pool_stops, "-", None),
        ("CLI list, 1,000 rows (table)", cli_list, "python -c pass", python_start),
        ("CLI list, 1,000 rows (--json)", cli_list_json, "python -c pass", python_start),
    ]
    print(f"local provider, medians of {n} (ms), {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"{'operation':<36}{'nexus':>9}   {'baseline':<26}{'baseline':>9}")
    for name, samples, baseline_name, baseline in rows:
        base = f"{median(baseline):9.1f}" if baseline else f"{'-':>9}"
        print(f"{name:<36}{median(samples):9.1f}   {baseline_name:<26}{base}")


if __name__ == "__main__":
    main()
