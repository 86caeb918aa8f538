"""Benchmark of stateful Python cells: the round trip of ``1+1`` through the API and the magic.

    python benchmarks/bench_notebook.py [--repeat 50] [--providers local,docker]

Prints medians (ms) per provider, beside a baseline measured in the same run:
the same cell sent with jupyter_client straight to a kernel on this machine
(no sandbox).  Also the first cell (which starts the sandbox's kernel) and
the idle memory of one stateful sandbox.  Not a test.
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


def idle_memory_mib(nx: SandboxManager, sandbox_id: str) -> float:
    """Resident memory of everything in the box (agent, kernel driver, kernel) but the measuring process."""
    code = (
        "import os\ntotal = 0\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    if int(pid) != os.getpid():\n"
        "        try:\n            total += int(open(f'/proc/{pid}/statm').read().split()[1])\n"
        "        except OSError:\n            pass\n"
        "print(total * os.sysconf('SC_PAGE_SIZE') / 2**20)"
    )
    return float(nx.sandbox_run(sandbox_id, "python", code, fresh=True)["stdout"])


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


def measure(provider: str, data_dir: Path, n: int) -> tuple:
    nx = SandboxManager(data_dir, provider=provider)
    sandbox = nx.sandbox_create("bench")["sandbox_id"]
    first = timed(lambda: nx.sandbox_run(sandbox, "python", "1+1"))
    api = [timed(lambda: nx.sandbox_run(sandbox, "python", "1+1")) for _ in range(n)]
    magics = SandboxMagics(shell=None, manager=nx)
    magics.current = sandbox
    with redirect_stdout(io.StringIO()):
        magic = [timed(lambda: magics.sandbox("", "1+1")) for _ in range(n)]
    time.sleep(1)
    memory = idle_memory_mib(nx, sandbox)
    nx.sandbox_stop(sandbox)
    return provider, first, statistics.median(api), statistics.median(magic), memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--providers", default="local,docker")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmp:
        rows = [measure(provider, Path(tmp) / provider, args.repeat) for provider in args.providers.split(",")]
    base = statistics.median(baseline_kernel(args.repeat))
    print(f"stateful Python cell `1+1`, medians of {args.repeat} (ms)")
    print(f"{'provider':<10}{'first cell':>12}{'API':>9}{'magic':>9}{'kernel, no sandbox':>21}{'idle MiB':>10}")
    for provider, first, api, magic, memory in rows:
        print(f"{provider:<10}{first:12.0f}{api:9.1f}{magic:9.1f}{base:21.1f}{memory:10.0f}")


if __name__ == "__main__":
    main()
