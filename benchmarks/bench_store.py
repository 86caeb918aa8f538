"""Benchmark of the two stores: SQLite in the data dir and PostgreSQL (``NEXUS_DATABASE_URL``,
a throwaway cluster on loopback started here, as the tests do).

    python benchmarks/bench_store.py [--repeat 20]

Prints medians (ms): ``nexus sandbox list`` (table and ``--json``) with 1,000 rows, and
store operations in one process (a row read, a compare-and-set update, a quota-checked
insert), beside ``python -c pass``.  Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from postgres_cluster import PostgresCluster, unavailable
from test_store import row

from nexus_jupyter.store import open_store

USER = "bench"


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f}"


def timed(action, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return samples


def fill(store, count: int, start: int = 0, user: str = USER) -> None:
    """Rows as a create writes them (no boxes behind them: a plain list never asks a box)."""
    for i in range(start, start + count):
        store.insert(row(f"sb_bench{i:08d}", user=user, options={}))


def measure(name: str, data_dir: str, url: str, repeat: int) -> dict[str, list[float]]:
    store = open_store(data_dir, url)
    fill(store, 1000)
    env = {**os.environ, "NEXUS_DATA_DIR": data_dir, "NEXUS_DATABASE_URL": url, "NEXUS_USER": USER}
    command = [sys.executable, "-m", "nexus_jupyter", "sandbox", "list"]
    listing = subprocess.run([*command, "--json"], capture_output=True, env=env, check=True)
    assert listing.stdout.count(b'"sandbox_id"') == 1000, listing.stderr
    counter = iter(range(10**6))
    return {
        "list": timed(lambda: subprocess.run(command, capture_output=True, env=env), repeat),
        "list --json": timed(lambda: subprocess.run([*command, "--json"], capture_output=True, env=env), repeat),
        "get": timed(lambda: store.get("sb_bench00000500"), repeat * 10),
        "update": timed(lambda: store.update("sb_bench00000500", {"last_active_at": time.time()}), repeat * 10),
        "insert (quota)": timed(
            lambda: store.insert(
                {
                    "sandbox_id": f"sb_extra{next(counter):08d}",
                    "name": "extra",
                    "user_id": "other",
                    "tenant_id": "default",
                    "provider": "local",
                    "status": "active",
                    "created_at": time.time(),
                    "ttl_minutes": 10,
                },
                max_live_of_user=10**6,
            ),
            repeat * 10,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    reason = unavailable()
    if reason:
        sys.exit(f"bench_store: {reason}")
    python = timed(lambda: subprocess.run([sys.executable, "-c", "pass"]), args.repeat)
    cluster = PostgresCluster()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sqlite = measure("sqlite", os.path.join(tmp, "sqlite"), "", args.repeat)
            postgres = measure("postgres", os.path.join(tmp, "pg"), cluster.url(), args.repeat)
    finally:
        cluster.stop()
    print(f"\n{'(ms, medians)':<40} {'SQLite':>8} {'PostgreSQL':>11}   baseline")
    for key, label in (
        ("list", "nexus sandbox list, 1,000 rows"),
        ("list --json", "nexus sandbox list --json, 1,000 rows"),
    ):
        print(f"{label:<40} {ms(sqlite[key]):>8} {ms(postgres[key]):>11}   python -c pass {ms(python)}")
    for key in ("get", "update", "insert (quota)"):
        print(f"{'store ' + key + ', in process':<40} {ms(sqlite[key]):>8} {ms(postgres[key]):>11}")


if __name__ == "__main__":
    main()
