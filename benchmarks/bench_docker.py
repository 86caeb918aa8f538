"""Benchmark of the Docker provider beside the raw Docker CLI, same engine, same image, same run.

    python benchmarks/bench_docker.py [--repeat 10] [--image nexus-jupyter-sandbox:latest]

Prints medians (milliseconds) of create, first run, warm stateless run of
print(2+2), stop; for the provider cold and from its warm pool, and for
``docker run -d`` + ``docker exec`` + ``docker rm -f``.  Not a test.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nexus_jupyter import SandboxManager
from nexus_jupyter.templates import DEFAULT_TAG


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def docker_cli(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.strip()


def measure_cli(image: str, n: int) -> dict[str, list[float]]:
    """The raw Docker CLI, with the same hardening flags as the provider."""
    uid = 2_000_000_123  # a uid from the provider's range, as its boxes have
    flags = [
        "--user",
        f"{uid}:{uid}",
        "--tmpfs",
        "/tmp:size=128m,mode=1777,nosuid,nodev",
        "--tmpfs",
        f"/home/user:size=304m,uid={uid},gid={uid},mode=0700,nosuid,nodev",
        "--shm-size",
        "64m",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--init",
        "--network",
        "none",
        "--read-only",
        "--pids-limit",
        "256",
        "--memory",
        "1g",
        "--memory-swap",
        "1g",
    ]
    samples: dict[str, list[float]] = {"create": [], "first run": [], "warm run": [], "stop": []}
    for _ in range(n):
        box = {}
        samples["create"].append(
            timed(lambda box=box: box.update(id=docker_cli("run", "-d", *flags, image, "sleep", "infinity")))
        )
        samples["first run"].append(timed(lambda box=box: docker_cli("exec", box["id"], "python3", "-c", "print(2+2)")))
        samples["warm run"].append(timed(lambda box=box: docker_cli("exec", box["id"], "python3", "-c", "print(2+2)")))
        samples["stop"].append(timed(lambda box=box: docker_cli("rm", "-f", box["id"])))
    return samples


def measure_provider(nx: SandboxManager, image: str, n: int, pooled: bool) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"create": [], "first run": [], "warm run": [], "stop": []}
    backend = nx.provider("docker")
    for _ in range(n):
        if pooled:
            backend.fill_pool(image)  # refilled between rounds, as the server's pool does between creates
        box = {}
        samples["create"].append(timed(lambda box=box: box.update(nx.sandbox_create("bench", template_id=image))))
        sandbox = box["sandbox_id"]
        # A fresh process, as `docker exec python3 -c` is (the stateful kernel: bench_notebook.py).
        samples["first run"].append(timed(lambda s=sandbox: nx.sandbox_run(s, "python", "print(2+2)", fresh=True)))
        warm = [timed(lambda s=sandbox: nx.sandbox_run(s, "python", "print(2+2)", fresh=True)) for _ in range(5)]
        samples["warm run"].append(statistics.median(warm))
        samples["stop"].append(timed(lambda s=sandbox: nx.sandbox_stop(s)))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--image", default=DEFAULT_TAG)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmp:
        cold = SandboxManager(Path(tmp) / "cold", provider="docker")
        pooled = SandboxManager(Path(tmp) / "pooled", provider="docker", warm_pool=1)
        results = {
            "raw docker CLI": measure_cli(args.image, args.repeat),
            "nexus docker (cold)": measure_provider(cold, args.image, args.repeat, pooled=False),
            "nexus docker (warm pool)": measure_provider(pooled, args.image, args.repeat, pooled=True),
        }
        pooled.provider("docker").pool_size = 0
        pooled.provider("docker").drain_pool()
    version = docker_cli("version", "--format", "{{.Server.Version}}")
    print(
        f"Docker provider, medians of {args.repeat} (ms), engine {version}, image {args.image}, {os.cpu_count()} cores"
    )
    operations = ["create", "first run", "warm run", "stop"]
    print(f"{'':<26}" + "".join(f"{op:>12}" for op in operations))
    for name, samples in results.items():
        print(f"{name:<26}" + "".join(f"{statistics.median(samples[op]):12.1f}" for op in operations))


if __name__ == "__main__":
    main()
