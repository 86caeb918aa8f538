"""The seed's quick one-off through the CLI, beside ``docker run --rm`` of the same code, in one run.

    python benchmarks/bench_oneoff.py [--repeat 10] [--providers local,docker]

One sample is three ``nexus`` commands, as a user types them:
``nexus sandbox create oneoff --json`` → ``nexus sandbox run ID -c 'print(2+2)'``
(the stateful Python runtime, the default) → ``nexus sandbox stop ID``;
also with ``--fresh``.  The local provider is measured with its warm pool (the
default; samples a few seconds apart, and back to back, when the refill may not
have finished) and without it (``NEXUS_LOCAL_POOL_SIZE=0``).  The baseline is ``docker run --rm IMAGE python3 -c
'print(2+2)'`` on the same engine and image, and a single CLI call beside
``python -c pass``.  Prints medians (ms).  Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nexus_jupyter.templates import DEFAULT_TAG


def nexus_command() -> list[str]:
    script = Path(sysconfig.get_path("scripts")) / "nexus"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nexus_jupyter"]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def one_off(env: dict, fresh: bool, before=None) -> float:
    nexus = nexus_command()

    def call(*args: str) -> str:
        done = subprocess.run([*nexus, "sandbox", *args], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def sample() -> None:
        sandbox = json.loads(call("create", "oneoff", "--json"))["sandbox_id"]
        output = call("run", sandbox, "-c", "print(2+2)", *(["--fresh"] if fresh else []))
        assert output == "4\n", output
        call("stop", sandbox)

    if before is not None:
        before()
    return timed(sample)


def pool_refilled(data_dir: Path):
    """Wait until the local pool holds a ready box, then a second for its runtime's warm-up:
    one-offs a few seconds apart, as a user types them."""
    from nexus_jupyter.providers.local import LocalProvider

    pool = LocalProvider(data_dir).pool

    def wait() -> None:
        deadline = time.monotonic() + 60
        while not pool.slots() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)

    return wait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--providers", default="local,docker")
    parser.add_argument("--image", default=DEFAULT_TAG)
    args = parser.parse_args()
    n = args.repeat
    rows = []
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmp:
        for provider in args.providers.split(","):
            variants = [("", "1", None)]
            if provider == "local":
                variants = [
                    (", warm pool (default)", "1", pool_refilled(Path(tmp) / "local-pool")),
                    (", warm pool, back to back", "1", None),
                    (", no pool", "0", None),
                ]
            for label, pool_size, before in variants:
                data_dir = Path(tmp) / (f"{provider}-pool" if pool_size == "1" and provider == "local" else provider)
                env = {
                    **os.environ,
                    "NEXUS_DATA_DIR": str(data_dir),
                    "NEXUS_SANDBOX_PROVIDER": provider,
                    "NEXUS_LOCAL_POOL_SIZE": pool_size,
                }
                one_off(env, fresh=False)  # warm the page cache and the image
                rows.append((f"{provider}{label}", [one_off(env, False, before) for _ in range(n)]))
                if pool_size == "0" or provider != "local":
                    rows.append((f"{provider}{label}, --fresh", [one_off(env, True) for _ in range(n)]))
        docker_run = ["docker", "run", "--rm", "--network", "none", args.image, "python3", "-c", "print(2+2)"]
        subprocess.run(docker_run, capture_output=True, check=True)
        raw = [timed(lambda: subprocess.run(docker_run, capture_output=True, check=True)) for _ in range(n)]
        env = {**os.environ, "NEXUS_DATA_DIR": str(Path(tmp) / "list")}
        cli = [timed(lambda: subprocess.run([*nexus_command(), "sandbox", "list"], env=env, capture_output=True))]
        cli += [
            timed(lambda: subprocess.run([*nexus_command(), "sandbox", "list"], env=env, capture_output=True))
            for _ in range(n)
        ]
        python = [timed(lambda: subprocess.run([sys.executable, "-c", "pass"], capture_output=True)) for _ in range(n)]
        if "local" in args.providers:
            from nexus_jupyter.providers.local import LocalProvider

            LocalProvider(Path(tmp) / "local-pool").pool.drain()
    baseline = statistics.median(raw)
    print(f"the seed's quick one-off (create, run print(2+2), stop) through the CLI, medians of {n} (ms)")
    print(f"{'':<44}{'ms':>8}{'x docker run --rm':>20}")
    for name, samples in [*rows, ("docker run --rm (baseline)", raw)]:
        print(f"{name:<44}{statistics.median(samples):8.0f}{statistics.median(samples) / baseline:20.2f}")
    print(f"\none CLI call (nexus sandbox list, empty store): {statistics.median(cli):.0f} ms; "
          f"python -c pass: {statistics.median(python):.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
