#!/usr/bin/env python
"""What data-quality statistics add to a backfill (target: <= 10 %).

The Join of ``bench/offline.py``'s events case (two TEMPORAL GroupBys, nine features plus the
category buckets, over 90 days of events; at the default ``--scale 0.6``: 600,000 left rows over 7
partitions, 6,000,000 events) is backfilled with ``offline: {stats: false}`` and with
``offline: {stats: true}`` (the default), alternating, ``--repeat`` times each, in one process on
the DuckDB engine. It prints both times (best and median), the overhead in per cent, and the time
the statistics themselves took (`gnomon.offline.stats.update_stats` on the committed partitions,
measured apart), per partition and per million cells, each also in CPU seconds of the process. On a
busy machine two backfills of the same work differ in wall time by more than the statistics cost,
so the statistics' CPU time measured alone, against the backfill's, is the figure to trust.

    python bench/stats.py                  # scale 0.6, three runs each
    python bench/stats.py --scale 1 --repeat 5

Run from the repo root with the venv active; the data is generated once by ``bench/offline.py``'s
generator (cached under ``bench/.data/``). A benchmark, not a test: it reports, it never fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "src"))

TARGET_OVERHEAD = 0.10


def offline_bench() -> ModuleType:
    """``bench/offline.py``, for its data generator and its Join definition."""
    spec = importlib.util.spec_from_file_location("offline_bench", BENCH_DIR / "offline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def configure(root: Path, threads: int, stats: bool) -> None:
    (root / "gnomon.yaml").write_text(
        "project: gnomon_bench\nwarehouse: ./warehouse\n"
        f"offline: {{engine: duckdb, threads: {threads}, stats: {str(stats).lower()}}}\n"
    )


def backfill_seconds(
    root: Path, objects: dict[str, object], join: str, start: str, end: str
) -> tuple[float, float]:
    """(wall, CPU) seconds of one forced backfill. CPU counts every thread of this process (DuckDB's
    included), so it moves far less than wall time when other processes share the cores."""
    import gnomon

    project = gnomon.Project(root, objects=objects)
    project.compile(write=False)
    started, cpu = time.monotonic(), time.process_time()
    project.backfill(join, start, end, force=True)
    return time.monotonic() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.6, help="bench/offline.py's scale (default 0.6)")
    parser.add_argument("--repeat", type=int, default=3, help="backfills with and without statistics, each")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    import gnomon
    from gnomon.offline.stats import read_stats, update_stats

    bench = offline_bench()
    print(f"data-quality statistics overhead, scale {args.scale}", flush=True)
    root, info = bench.ensure_data(args.scale, args.seed)
    objects = bench.definitions(exact_unique=not bench.unique_op_available())
    join, start, end = bench.JOIN_NAME, info["backfill_start"], info["backfill_end"]

    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for run in range(args.repeat):
        for stats in (False, True):
            configure(root, args.threads, stats)
            seconds, cpu_seconds = backfill_seconds(root, objects, join, start, end)
            wall[stats].append(seconds)
            cpu[stats].append(cpu_seconds)
            print(
                f"  run {run + 1}: backfill with stats {'on ' if stats else 'off'}  {seconds:7.2f} s "
                f"(CPU {cpu_seconds:6.2f} s)",
                flush=True,
            )

    project = gnomon.Project(root, objects=objects)
    table = project.output_table(join)
    days = project.warehouse.partitions(table)
    started, cpu_started = time.monotonic(), time.process_time()
    update_stats(project.warehouse, table, days)
    stats_s, stats_cpu = time.monotonic() - started, time.process_time() - cpu_started
    stored = read_stats(project.warehouse, table)
    rows = sum(s.rows for s in stored)
    cells = sum(s.rows * len(s.columns) for s in stored)

    off, on = min(wall[False]), min(wall[True])
    cpu_off, cpu_on = min(cpu[False]), min(cpu[True])
    share = stats_cpu / cpu_off
    print()
    print(f"  output: {table}, {len(days)} partitions, {rows:,} rows x {len(stored[-1].columns)} columns")
    for label, runs, cpu_runs in (("off", wall[False], cpu[False]), ("on ", wall[True], cpu[True])):
        print(
            f"  backfill, stats {label}: best {min(runs):.2f} s, median {statistics.median(runs):.2f} s; "
            f"CPU best {min(cpu_runs):.2f} s"
        )
    print(
        f"  overhead, best on vs best off: wall {100 * (on - off) / off:+.1f} %, "
        f"CPU {100 * (cpu_on - cpu_off) / cpu_off:+.1f} %"
    )
    print(
        f"  statistics alone: {stats_s:.2f} s ({1000 * stats_s / len(days):.0f} ms a partition, "
        f"{stats_s / cells * 1e6:.2f} s per million cells), CPU {stats_cpu:.2f} s = {100 * share:.1f} % "
        f"of the backfill's CPU  target <= {100 * TARGET_OVERHEAD:.0f} %  "
        f"{'OK' if share <= TARGET_OVERHEAD else 'OVER'}"
    )
    print(stored[-1].format())


if __name__ == "__main__":
    main()
