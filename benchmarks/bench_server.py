"""Benchmark of the Jupyter server extension: the REST API against the direct Python API, and the
first ``%%sandbox`` cell of a new notebook with and without the warm box the server keeps.

    python benchmarks/bench_server.py [--repeat 30] [--notebooks 5]

Prints medians (ms).  REST calls are the seed's remote mode: ``SandboxManager(url=..., api_key=...)``
(one keep-alive HTTP connection) to a real ``nexus serve`` on loopback; the
direct calls are SandboxManager's in this process, on the same store, in the
same run.
The first cell is timed from a new kernel (``%load_ext nexus_jupyter`` already
run, as a notebook's first cell would) sending ``%%sandbox python`` to its
answer: its sandbox is created on that cell.  Baselines: ``1+1`` in a
kernel with no sandbox, and the server's start time beside ``python -c pass``.
Not a test.
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
sys.path.insert(0, str(HERE))

from bench_notebook import baseline_kernel
from jupyter_client.manager import KernelManager
from jupyter_servers import JupyterServer, NexusServe

from nexus_jupyter import SandboxManager
from nexus_jupyter.providers.local import LocalProvider


def timed_call(fn, *args, **kwargs) -> tuple[float, object]:
    """(milliseconds, result) of ``fn(*args, **kwargs)``."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return (time.perf_counter() - start) * 1000, result


def rest_against_direct(root: Path, n: int) -> dict:
    """create, a warm print(2+2), stop: in the seed's remote mode (SandboxManager over the REST API
    of a `nexus serve`) and directly (SandboxManager on the same store), alternating, pools off."""
    data_dir = root / "data"
    server = NexusServe(data_dir)
    clients = {
        "REST": SandboxManager(url=server.url, api_key=server.key),
        "direct": SandboxManager(data_dir, warm_pool=0),
    }
    figures: dict[tuple[str, str], list[float]] = {(k, op): [] for k in clients for op in ("create", "run", "stop")}
    try:
        for _ in range(max(n // 3, 5)):
            made = {}
            for kind, nx in clients.items():
                ms, record = timed_call(nx.sandbox_create, "b")
                figures[kind, "create"].append(ms)
                made[kind] = record["sandbox_id"]
                nx.sandbox_run(made[kind], "python", "0")  # the runtime started before the timed runs
            for _ in range(3):
                for kind, nx in clients.items():
                    ms, result = timed_call(nx.sandbox_run, made[kind], "python", "print(2+2)")
                    assert result["stdout"] == "4\n"
                    figures[kind, "run"].append(ms)
            for kind, nx in clients.items():
                figures[kind, "stop"].append(timed_call(nx.sandbox_stop, made[kind])[0])
    finally:
        server.stop()
        LocalProvider(data_dir).pool.drain()
    return {op: (statistics.median(figures["REST", op]), statistics.median(figures["direct", op])) for op in
            ("create", "run", "stop")}  # fmt: skip


def first_cells(root: Path, pooled: bool, notebooks: int) -> float:
    """The first %%sandbox cell of each of ``notebooks`` new kernels, with the server running."""
    data_dir = root / "data"
    pool = "1" if pooled else "0"
    server = JupyterServer(root, data_dir, ["--NexusSandboxApp.reap_interval=1", f"--LocalProvider.pool_size={pool}"])
    samples = []
    try:
        for number in range(notebooks):
            if pooled:
                deadline = time.monotonic() + 60
                while not LocalProvider(data_dir).pool.slots() and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(1.0)  # the box's runtime warms itself after it is ready
            env = {**os.environ, "NEXUS_DATA_DIR": str(data_dir), "NEXUS_LOCAL_POOL_SIZE": pool,
                   "JPY_SESSION_NAME": f"bench-{number}.ipynb"}  # fmt: skip
            kernel = KernelManager(kernel_name="python3")
            kernel.start_kernel(env=env, extra_arguments=["--HistoryManager.enabled=False"])
            client = kernel.blocking_client()
            client.start_channels()
            client.wait_for_ready(timeout=60)
            try:
                client.execute_interactive("%load_ext nexus_jupyter", output_hook=lambda msg: None, timeout=60)
                outputs: list = []
                cell = "%%sandbox python\nprint(2+2)"
                samples.append(timed_call(client.execute_interactive, cell, output_hook=outputs.append, timeout=60)[0])
                printed = [m["content"].get("text") for m in outputs if m["msg_type"] == "stream"]
                assert printed == ["4\n"], outputs
            finally:
                client.stop_channels()
                kernel.shutdown_kernel(now=True)
    finally:
        server.stop()
        admin = SandboxManager(data_dir, is_admin=True, warm_pool=0)
        for row in admin.store.select(include_stopped=False):
            admin.sandbox_stop(row["sandbox_id"])
        LocalProvider(data_dir).pool.drain()
    return statistics.median(samples)


def server_start(root: Path) -> tuple[float, float, float]:
    """Seconds from launch to the first answer: jupyter server with the extension, `nexus serve`,
    and `python -c pass`."""
    jupyter, serve = [], []
    for attempt in range(3):
        started = time.perf_counter()
        server = JupyterServer(root / f"start{attempt}", root / f"start{attempt}" / "data")
        jupyter.append(time.perf_counter() - started)
        server.stop()
        started = time.perf_counter()
        headless = NexusServe(root / f"start{attempt}" / "serve")
        serve.append(time.perf_counter() - started)
        headless.stop()
    bare = statistics.median(
        timed_call(subprocess.run, [sys.executable, "-c", "pass"], check=True)[0] / 1000 for _ in range(5)
    )
    return statistics.median(jupyter), statistics.median(serve), bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--notebooks", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmp:
        root = Path(tmp)
        for name in ("rest", "cold", "pool", "start0", "start1", "start2"):
            (root / name).mkdir()
        rest = rest_against_direct(root / "rest", args.repeat)
        cold = first_cells(root / "cold", False, args.notebooks)
        warm = first_cells(root / "pool", True, args.notebooks)
        start, serve_start, bare = server_start(root)
    base = statistics.median(baseline_kernel(args.repeat))
    print("remote mode (REST API of nexus serve) against the direct Python API, local provider, pools off (ms)")
    print(f"{'operation':<22}{'REST':>9}{'direct':>9}{'REST - direct':>15}")
    for name, label in (("create", "create"), ("run", "warm print(2+2)"), ("stop", "stop")):
        over_rest, direct = rest[name]
        print(f"{label:<22}{over_rest:9.1f}{direct:9.1f}{over_rest - direct:15.1f}")
    print(f"\nfirst %%sandbox cell of a new notebook, server running (median of {args.notebooks}, ms)")
    print(f"{'no warm box':>14}{'warm box':>11}{'1+1 in a kernel, no sandbox':>30}")
    print(f"{cold:14.0f}{warm:11.1f}{base:30.1f}")
    print(
        f"\nstart to first answer: jupyter server with the extension {start:.2f} s, nexus serve {serve_start:.2f} s "
        f"(python -c pass: {bare:.3f} s)"
    )


if __name__ == "__main__":
    main()
