"""Benchmark of the E2B provider: what it adds on top of E2B, beside the local provider.

    python benchmarks/bench_e2b.py [--repeat 20]

This machine cannot reach E2B, so "E2B" is the local double of its cloud
(tests/e2b_double: the real SDK over HTTP on loopback, each sandbox a local box,
its warm pool off).  Three columns, measured in the same run, alternating:
- raw SDK: ``e2b_code_interpreter.Sandbox`` called directly on the double (the baseline:
  what any E2B user pays here);
- nexus e2b: ``SandboxManager(provider="e2b")`` on the same double (ours = the
  difference: the store, the TTL mirror, the metadata);
- nexus local: ``SandboxManager(provider="local")``, warm pool off (what the same calls
  cost without a cloud in between).
Each "run" is warm (the sandbox has run code before).  Prints medians (ms).
Against the real cloud add E2B's network round trips (tens of ms each) to both E2B columns.
Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from e2b_double import E2BDouble

from nexus_jupyter import SandboxManager

OPERATIONS = ("create", "python", "bash", "stop")


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return (time.perf_counter() - start) * 1000, result


def one_round_raw(figures: dict) -> None:
    from e2b_code_interpreter import Sandbox

    ms, sandbox = timed(Sandbox.create, timeout=600)
    figures["create"].append(ms)
    sandbox.run_code("print(1)")  # warm
    figures["python"].append(timed(sandbox.run_code, "print(2 + 2)")[0])
    figures["bash"].append(timed(sandbox.commands.run, "echo hi")[0])
    figures["stop"].append(timed(sandbox.kill)[0])


def one_round_nexus(nx: SandboxManager, figures: dict) -> None:
    ms, record = timed(nx.sandbox_create, "bench")
    figures["create"].append(ms)
    sandbox = record["sandbox_id"]
    nx.sandbox_run(sandbox, "python", "print(1)")  # warm
    figures["python"].append(timed(nx.sandbox_run, sandbox, "python", "print(2 + 2)")[0])
    figures["bash"].append(timed(nx.sandbox_run, sandbox, "bash", "echo hi")[0])
    figures["stop"].append(timed(nx.sandbox_stop, sandbox)[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-e2b-"))
    double = E2BDouble(root / "double")
    os.environ.update(double.env())
    os.environ["NEXUS_LOCAL_POOL_SIZE"] = "0"
    columns = {name: {op: [] for op in OPERATIONS} for name in ("raw SDK", "nexus e2b", "nexus local")}
    managers = {
        "nexus e2b": SandboxManager(root / "data-e2b", provider="e2b", warm_pool=0),
        "nexus local": SandboxManager(root / "data-local", provider="local", warm_pool=0),
    }
    try:
        one_round_raw({op: [] for op in OPERATIONS})  # imports and first connections, not counted
        one_round_nexus(managers["nexus e2b"], {op: [] for op in OPERATIONS})
        for _ in range(args.repeat):
            one_round_raw(columns["raw SDK"])
            for name, nx in managers.items():
                one_round_nexus(nx, columns[name])
    finally:
        double.stop()
    print(f"E2B provider, {args.repeat} rounds, medians in ms (E2B = the local double of its cloud)")
    print(f"{'operation':<22}{'raw SDK':>10}{'nexus e2b':>12}{'overhead':>10}{'nexus local':>13}")
    for op in OPERATIONS:
        raw, ours, local = (statistics.median(columns[name][op]) for name in columns)
        label = {"python": "warm print(2 + 2)", "bash": "bash echo hi"}.get(op, op)
        print(f"{label:<22}{raw:>10.1f}{ours:>12.1f}{ours - raw:>+10.1f}{local:>13.1f}")


if __name__ == "__main__":
    main()
