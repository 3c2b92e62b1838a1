#!/usr/bin/env python
"""Spark engine benchmark: the events Join backfill of ``bench/offline.py`` on Spark vs DuckDB.

Same synthetic warehouse as ``bench/offline.py --case events`` (1,000,000 left rows over 10,000,000
events at scale 1, cached under ``bench/.data/``), the same Join and features (APPROX_UNIQUE_COUNT
included). Each measurement runs in a fresh interpreter; the peak memory is the largest summed RSS of
the process tree (the Python driver and its JVM), sampled every 0.2 s.

1. **duckdb** - the Join backfill on the embedded engine (the reference of the ``<= 4x`` target);
2. **spark local[2]** and **spark local[1]** - the same backfill with ``offline: {engine: spark}``;
   wall time, peak driver memory, the ratio to DuckDB, and the scaling from one core to two.

    python bench/spark.py                 # scale 1 (slow: minutes)
    python bench/spark.py --scale 0.1     # 100,000 left rows over 1,000,000 events

Run from the repo root with the venv active. A benchmark, not a test: it reports, never fails. The load
average is printed before and after each run: on a shared machine the ratio means little when it is high.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
SRC_DIR = BENCH_DIR.parent / "src"
sys.path.insert(0, str(BENCH_DIR))
TARGET_RATIO = 4.0


def tree_rss(pid: int) -> int:
    """Summed RSS in bytes of ``pid`` and its descendants."""
    total = 0
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
        stack += children.get(current, [])
    return total


def child(args: argparse.Namespace) -> None:
    """Run the backfill in this process and print its result."""
    import offline  # bench/offline.py: data and definitions

    import gnomon

    root = Path(args.data)
    info = json.loads((Path(args.warehouse_root) / "generated.json").read_text())
    project = gnomon.Project(root, objects=offline.definitions(False))
    project.compile(write=False)
    started = time.monotonic()
    project.backfill(offline.JOIN_NAME, info["backfill_start"], info["backfill_end"], force=True)
    seconds = time.monotonic() - started
    rows = project.warehouse.read_table(project.output_table(offline.JOIN_NAME)).num_rows
    print("@@RESULT " + json.dumps({"seconds": seconds, "rows": rows}), flush=True)


def measure(root: Path, warehouse_root: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(SRC_DIR))
    command = [
        sys.executable,
        __file__,
        "--child",
        "--data",
        str(root),
        "--warehouse-root",
        str(warehouse_root),
    ]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.communicate()[0]
    done.set()
    sampler.join()
    result: dict[str, Any] = {"wall": time.monotonic() - started, "peak_gb": peak / 1024**3, "ok": False}
    for line in output.splitlines():
        if line.startswith("@@RESULT "):
            result.update(json.loads(line[len("@@RESULT ") :]), ok=True)
    return result


def repo(base: Path, name: str, warehouse: Path, engine: str, master: str = "") -> Path:
    root = base / name
    root.mkdir(parents=True, exist_ok=True)
    offline_line = (
        f"offline: {{engine: spark, master: '{master}', conf: {{spark.driver.memory: 4g}}}}"
        if engine == "spark"
        else "offline: {engine: duckdb}"
    )
    (root / "gnomon.yaml").write_text(f"project: bench\nwarehouse: {warehouse}\n{offline_line}\n")
    return root


def load() -> str:
    """The 1, 5 and 15 minute load averages: how much other work shared the cores."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-local1", action="store_true", help="do not measure local[1]")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--warehouse-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import offline

    data_root, info = offline.ensure_data(args.scale, args.seed)
    n = offline.sizes(args.scale)
    print(
        f"events case, scale {args.scale:g}: {n['left']:,} left rows over {n['events']:,} events", flush=True
    )
    print(f"  load average before (2 cores: above 2, other work slows every run): {load()}", flush=True)
    base = data_root / "engines"
    warehouse = data_root / "warehouse"
    runs = [("duckdb", repo(base, "duckdb", warehouse, "duckdb"))]
    runs.append(("spark local[2]", repo(base, "spark2", warehouse, "spark", "local[2]")))
    if not args.skip_local1:
        runs.append(("spark local[1]", repo(base, "spark1", warehouse, "spark", "local[1]")))
    results: dict[str, dict[str, Any]] = {}
    for label, root in runs:
        result = measure(root, data_root)
        results[label] = result
        state = f"{result['seconds']:.1f} s backfill" if result["ok"] else "FAILED"
        print(
            f"  {label:<15} {state}, {result['wall']:.1f} s with start-up, peak {result['peak_gb']:.2f} GB "
            f"(process tree), {result.get('rows', 0):,} rows; load average after: {load()}",
            flush=True,
        )
    duck = results["duckdb"]
    for label in [r for r, _ in runs if r != "duckdb"]:
        spark = results[label]
        if duck["ok"] and spark["ok"]:
            ratio = spark["seconds"] / duck["seconds"]
            verdict = "ok" if ratio <= TARGET_RATIO else "MISSED"
            print(f"  {label}: {ratio:.1f}x the DuckDB run (target <= {TARGET_RATIO:g}x: {verdict})")
    one, two = results.get("spark local[1]"), results["spark local[2]"]
    if one and one["ok"] and two["ok"]:
        print(f"  scaling local[1] -> local[2]: {one['seconds'] / two['seconds']:.2f}x faster")


if __name__ == "__main__":
    main()
