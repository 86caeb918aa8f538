"""Benchmark of forwarding between the servers of a fleet: two ``nexus serve`` (hosts alpha and
beta, a data dir each) sharing one PostgreSQL database (a throwaway cluster on loopback, as the
tests start it).  A sandbox of alpha's, asked of alpha (its own box: the baseline) and of beta
(forwarded to alpha's server and streamed back).

    python benchmarks/bench_fleet.py [--repeat 30]

Prints medians (ms): a REST run of ``print(1)``, a 1 MiB file read, a status read (the store
only, never forwarded), and ``nexus sandbox run`` from the CLI of each host.  Not a test.
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

import requests
from jupyter_servers import NexusServe
from postgres_cluster import PostgresCluster, unavailable

KEY = "bench-fleet-key-" + "b" * 24


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f}"


def timed(action, host: str, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action(host)
        samples.append(time.perf_counter() - started)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    reason = unavailable()
    if reason:
        print(f"bench_fleet: {reason}", file=sys.stderr)
        return 1
    cluster = PostgresCluster()
    root = Path(tempfile.mkdtemp(prefix="nexus-bench-fleet-"))
    servers = {}
    try:
        database = cluster.create_database("fleet")

        def env(host: str) -> dict:
            return {"NEXUS_DATABASE_URL": database, "NEXUS_HOST_ID": host, "NEXUS_USER": "bench"}

        for host in ("alpha", "beta"):
            (root / host).mkdir()
            servers[host] = NexusServe(root / host / "data", key=KEY, env=env(host))
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {KEY}"

        def api(host: str) -> str:
            return f"{servers[host].url}/nexus/api"

        made = session.post(f"{api('alpha')}/sandboxes", json={"name": "bench"}, timeout=120)
        made.raise_for_status()
        sandbox_id = made.json()["sandbox_id"]
        blob = os.urandom(1 << 20)
        session.put(f"{api('alpha')}/sandboxes/{sandbox_id}/files/blob.bin", data=blob, timeout=120).raise_for_status()

        def run(host: str):
            answer = session.post(f"{api(host)}/sandboxes/{sandbox_id}/run", json={"code": "print(1)"}, timeout=120)
            assert answer.status_code == 200 and answer.text.rstrip().endswith("}"), answer.text

        def read(host: str):
            answer = session.get(f"{api(host)}/sandboxes/{sandbox_id}/files/blob.bin", timeout=120)
            assert answer.content == blob

        def status(host: str):
            session.get(f"{api(host)}/sandboxes/{sandbox_id}", timeout=120).raise_for_status()

        def cli(host: str):
            environment = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
            environment.update({"NEXUS_DATA_DIR": str(root / host / "data"), **env(host)})
            done = subprocess.run(
                [sys.executable, "-m", "nexus_jupyter", "sandbox", "run", sandbox_id, "--code", "print(1)"],
                env=environment, capture_output=True, text=True,
            )  # fmt: skip
            assert done.stdout == "1\n", done.stderr

        rows = []
        for label, action, repeat in (
            ("REST run print(1)", run, args.repeat),
            ("REST read of a 1 MiB file", read, args.repeat),
            ("REST status (the store only)", status, args.repeat),
            ("nexus sandbox run print(1), CLI on the host", cli, max(args.repeat // 3, 5)),
        ):
            action("alpha"), action("beta")  # warm both paths
            rows.append((label, ms(timed(action, "alpha", repeat)), ms(timed(action, "beta", repeat))))
        width = max(len(label) for label, *_ in rows)
        print(f"{'median ms':<{width}}  {'alpha (holder)':>14}  {'beta (forwarded)':>16}")
        for label, holder, forwarded in rows:
            print(f"{label:<{width}}  {holder:>14}  {forwarded:>16}")
        session.post(f"{api('alpha')}/sandboxes/{sandbox_id}/stop", timeout=120)
    finally:
        for server in servers.values():
            server.stop()
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
