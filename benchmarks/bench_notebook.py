"""Benchmark of stateful Python cells: the round trip of ``1+1`` through the API and the magic.

    python benchmarks/bench_notebook.py [--repeat 50] [--providers local,docker]

Prints medians (ms) per provider, beside a baseline measured in the same run:
the same cell sent with jupyter_client straight to a kernel on this machine
(no sandbox).  Also the first cell right after create: with no pool (the box
starts its Python runtime itself, in the background) and from a warm pool of
one (its runtime started and warmed before the create); and the idle memory of
one stateful sandbox (PSS and RSS of all its processes, read on the host).
Not a test.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jupyter_client.manager import KernelManager

from nexus_jupyter import SandboxManager
from nexus_jupyter.magics import SandboxMagics


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def idle_memory_mib(nx: SandboxManager, sandbox_id: str) -> tuple[float, float]:
    """(PSS, RSS) of every process in the box, summed: the agent, the runtime's supervisor and its
    shell.  PSS shares each page among the processes that map it, so what the box costs the
    machine; RSS counts a library once per process that maps it."""
    pss = rss = 0
    row = nx.store.get(sandbox_id)
    for pid in nx.provider(row["provider"]).host_pids(sandbox_id, row["provider_state"]):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
        except OSError:
            continue
        fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup}
        pss += fields["Pss"]
        rss += fields["Rss"]
    return pss / 1024, rss / 1024


def baseline_kernel(n: int) -> list[float]:
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(extra_arguments=["--HistoryManager.enabled=False"])
    client = manager.blocking_client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    try:
        samples = []
        for _ in range(n):
            samples.append(timed(lambda: client.execute_interactive("1+1", output_hook=lambda msg: None)))
        return samples
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def pool_ready(nx: SandboxManager, provider: str) -> None:
    """Wait until the provider's warm pool holds a started box, then a second for its runtime's
    warm-up (creates a few seconds apart, as a notebook user makes them)."""
    backend = nx.provider(provider)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = backend.pool.slots() if provider == "local" else backend._pool_containers()
        if ready:
            break
        time.sleep(0.05)
    time.sleep(1.0)


def first_cells(nx: SandboxManager, provider: str, pooled: bool) -> float:
    """The first cell's wait right after create (the box started its runtime by itself)."""
    if pooled and provider == "docker":
        nx.provider("docker").fill_pool()
    samples = []
    for _ in range(5):
        if pooled:
            pool_ready(nx, provider)
        box = nx.sandbox_create("first")["sandbox_id"]
        samples.append(timed(lambda box=box: nx.sandbox_run(box, "python", "1+1")))
        nx.sandbox_stop(box)
    if provider == "local":
        nx.provider("local").pool.drain()
    elif pooled:
        nx.provider("docker").drain_pool()
    return statistics.median(samples)


def measure(provider: str, data_dir: Path, n: int) -> tuple:
    cold = first_cells(SandboxManager(data_dir / "cold", provider=provider, warm_pool=0), provider, False)
    warm = first_cells(SandboxManager(data_dir / "pool", provider=provider, warm_pool=1), provider, True)
    nx = SandboxManager(data_dir, provider=provider, warm_pool=0)
    sandbox = nx.sandbox_create("bench")["sandbox_id"]
    nx.sandbox_run(sandbox, "python", "1+1")
    api = [timed(lambda: nx.sandbox_run(sandbox, "python", "1+1")) for _ in range(n)]
    magics = SandboxMagics(shell=None, manager=nx)
    magics.current = sandbox
    with redirect_stdout(io.StringIO()):
        magic = [timed(lambda: magics.sandbox("", "1+1")) for _ in range(n)]
    time.sleep(2)
    memory = idle_memory_mib(nx, sandbox)
    nx.sandbox_stop(sandbox)
    return provider, cold, warm, statistics.median(api), statistics.median(magic), memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--providers", default="local,docker")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmp:
        rows = [measure(provider, Path(tmp) / provider, args.repeat) for provider in args.providers.split(",")]
    base = statistics.median(baseline_kernel(args.repeat))
    print(f"stateful Python cell `1+1`, medians of {args.repeat} (ms)")
    print(
        f"{'provider':<10}{'first cell':>12}{'first, pool':>13}{'API':>9}{'magic':>9}{'kernel, no sandbox':>21}"
        f"{'idle PSS MiB':>14}{'idle RSS MiB':>14}"
    )
    for provider, cold, warm, api, magic, (pss, rss) in rows:
        print(f"{provider:<10}{cold:12.0f}{warm:13.1f}{api:9.1f}{magic:9.1f}{base:21.1f}{pss:14.0f}{rss:14.0f}")


if __name__ == "__main__":
    main()
