#!/usr/bin/env python
"""What logging every served Join fetch costs: ``gnomon serve`` with ``serving.log`` off, then on.

Setup: the sample repo (``gnomon init``'s, with its month ending yesterday, UTC) and an upload of
``user_item_training`` for yesterday, so fetches at "now" (no ``at``) succeed on the SQLite store.
Then, in the same run, for each setting — logging off (no ``serving.log``), and ``serving: {log:
{sample: 1.0}}`` (every key logged, flushed every second) — a fresh ``gnomon serve`` process is
driven at 1,000 Join fetches/s (one random (user, item) key each) for ``--seconds`` by the open-loop
load generator of ``bench/online.py`` (requests scheduled at fixed times, latency measured from the
scheduled time, so a stall is charged to every request it delays). After each run the server gets
SIGTERM (its clean shutdown flushes the log) and the rows and files of ``logs.user_item_training``
are counted. ``--rounds N`` alternates the two settings N times, to spread drift over both.

Printed: p50/p99/p99.9 per setting, the p99 logging adds, the server's CPU per request, and the rows
and files written. First, in-process and so free of HTTP noise: what the request path itself pays per
one-key Join fetch — ``FetchLog.record`` at sample 1.0 and 0.05 (which hashes the key), and the null
counters' ``observe``.

    python bench/fetch_log.py                 # 20 s per setting
    python bench/fetch_log.py --seconds 5     # smoke run

Run from the repo root with the venv active. A benchmark, not a test: it reports.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _online_repo as bench  # noqa: E402

import online as http_bench  # noqa: E402 — its open-loop load generator and server helpers
from gnomon import Project  # noqa: E402
from gnomon.monitoring.fetch_log import read_log  # noqa: E402
from gnomon.scaffold import create_example_repo  # noqa: E402
from gnomon.scaffold.sample_data import ITEMS, USERS  # noqa: E402

JOIN = "user_item_training"
PATH = f"/v1/features/join/{JOIN}"
SETTINGS = {"off": None, "sample 1.0": "{sample: 1.0}"}


def make_repo(folder: Path) -> tuple[Path, str]:
    """The sample repo ending yesterday, with yesterday's upload of the Join; returns (repo, ds)."""
    yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    repo = create_example_repo(folder / "repo", last_ds=yesterday)
    Project(repo).upload(JOIN, yesterday)
    return repo, yesterday


def write_bodies(path: Path, count: int, seed: int) -> None:
    """One request body (a JSON array of one key) per line."""
    rng = random.Random(seed)
    lines = [json.dumps([{"user": rng.choice(USERS), "item": rng.choice(ITEMS)}]) for _ in range(count)]
    path.write_text("\n".join(lines) + "\n")


def set_logging(repo: Path, base_config: str, log: str | None) -> None:
    text = base_config + (f"\nserving: {{log: {log}}}\n" if log else "")
    (repo / "gnomon.yaml").write_text(text)


def load(port: int, bodies: Path, rate: float, seconds: float, seed: int) -> dict[str, Any]:
    """``bench/online.py``'s load generator, in its own process, against ``PATH``."""
    return http_bench.run_loadgen(port, bodies, rate, seconds, '"status":"Success"', seed=seed, path=PATH)


def logged(repo: Path) -> tuple[int, int]:
    """(rows, files) of the Join's fetch log, over every day present."""
    folder = repo / "warehouse" / "logs" / JOIN
    days = sorted(p.name[3:] for p in folder.glob("ds=*")) if folder.is_dir() else []
    rows = sum(read_log(repo / "warehouse", JOIN, ds).num_rows for ds in days)
    return rows, len(list(folder.glob("ds=*/*.parquet"))) if folder.is_dir() else 0


def run_one(repo: Path, bodies: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Start ``gnomon serve``, warm it up, measure, stop it cleanly (SIGTERM flushes the log)."""
    rows_before, files_before = logged(repo)
    process, port = http_bench.start_server("gnomon", repo)
    try:
        load(port, bodies, args.rate, 2.0, seed + 1000)  # warm-up, not measured
        bench.wait_for_quiet("measuring")
        cpu_before = http_bench.process_cpu_s(process.pid)
        result = load(port, bodies, args.rate, args.seconds, seed)
        result["server_cpu_ms_per_request"] = (
            1000 * (http_bench.process_cpu_s(process.pid) - cpu_before) / max(1, result["completed"])
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    rows, files = logged(repo)
    result["log_rows"], result["log_files"] = rows - rows_before, files - files_before
    return result


def request_path_costs(repo: Path, calls: int = 50_000) -> None:
    """Microseconds per call of what a logged fetch adds on the event loop (no HTTP)."""
    from gnomon.metrics import Metrics
    from gnomon.monitoring.fetch_log import FetchLog, LogSettings

    project = Project(repo)
    store = project.store()
    keys = [{"user": str(user), "item": str(item)} for user in USERS[:40] for item in ITEMS[:25]]
    try:
        results = project.fetcher(store).fetch_join(JOIN, keys)  # 1,000 distinct keys
    finally:
        store.close()
    singles = [[result] for result in results]
    metrics = Metrics()
    gc.collect()
    gc.freeze()  # as `gnomon serve` does: the repo's objects are not scanned by every collection
    for sample in (1.0, 0.05):
        log = FetchLog(
            project.config.warehouse, project.plan, LogSettings(sample, 600.0, 10 * calls), metrics
        )
        recording = flushing = 0.0
        written = 0
        for start in range(0, calls, 1000):  # as the server does: a flush per 1,000 fetches at 1,000/s
            started = time.perf_counter()
            for index in range(start, start + 1000):
                log.record(JOIN, 0, singles[index % len(singles)])
            flush_started = time.perf_counter()
            written += log.flush()
            recording += flush_started - started
            flushing += time.perf_counter() - flush_started
        per_call = recording / calls * 1e6
        flush_s = flushing
        log.close()
        print(
            f"  FetchLog.record, sample {sample}: {per_call:.2f} µs per one-key fetch; the flush wrote {written} "
            f"rows in {flush_s:.2f} s ({flush_s / max(1, written) * 1e6:.1f} µs per row, off the request path)"
        )
    vectors = [[result.features] for result in results]
    started = time.perf_counter()
    for index in range(calls):
        metrics.features.observe("join", JOIN, vectors[index % len(vectors)])
    per_call = (time.perf_counter() - started) / calls * 1e6
    print(f"  null counters: {per_call:.2f} µs per one-key fetch ({len(results[0].features)} features)")
    shutil.rmtree(repo / "warehouse" / "logs" / JOIN, ignore_errors=True)  # the HTTP runs count their own


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per setting and round")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--rounds", type=int, default=1, help="times the two settings alternate")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gnomon-fetch-log-bench-") as folder:
        started = time.monotonic()
        repo, ds = make_repo(Path(folder))
        base_config = (repo / "gnomon.yaml").read_text()
        bodies = Path(folder) / "bodies.jsonl"
        write_bodies(bodies, 20_000, args.seed)
        print(
            f"sample repo ending {ds}, upload of {JOIN} done in {time.monotonic() - started:.1f} s",
            flush=True,
        )
        request_path_costs(repo)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
        for round_index in range(args.rounds):
            for name, log in SETTINGS.items():
                set_logging(repo, base_config, log)
                result = run_one(repo, bodies, args, args.seed + round_index)
                results[name].append(result)
                print(f"  round {round_index + 1} logging {name:<10}: {summary(result)}", flush=True)
        report(results)


def summary(result: dict[str, Any]) -> str:
    s = result["latency"]
    return (
        f"p50 {s['p50']:.3f} · p99 {s['p99']:.3f} · p99.9 {s['p99.9']:.3f} ms · "
        f"{result['achieved_rps']:.0f} rps · errors {result['errors']} · "
        f"server CPU {result['server_cpu_ms_per_request']:.3f} ms/request · "
        f"logged {result['log_rows']} rows in {result['log_files']} files"
    )


def report(results: dict[str, list[dict[str, Any]]]) -> None:
    """Per setting, the median and the best (lowest) over rounds of each figure, then what logging
    adds. On a shared machine another process's burst can ruin one round's tail; the best round is
    the least disturbed, and the server's CPU per request is the steadiest figure of all."""
    import statistics

    keys = ("p50", "p99", "p99.9")
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for name, runs in results.items():
        figures[name] = {}
        for how, pick in (("median", statistics.median), ("best", min)):
            row = {key: pick(run["latency"][key] for run in runs) for key in keys}
            row["cpu"] = pick(run["server_cpu_ms_per_request"] for run in runs)
            figures[name][how] = row
    print()
    for how in ("median", "best"):
        for name in results:
            f = figures[name][how]
            print(
                f"{how:<6} of {len(results[name])} · logging {name:<10}: p50 {f['p50']:.3f} ms · "
                f"p99 {f['p99']:.3f} ms · p99.9 {f['p99.9']:.3f} ms · server CPU {f['cpu']:.3f} ms/request"
            )
    for how in ("median", "best"):
        on, off = figures["sample 1.0"][how], figures["off"][how]
        print(
            f"logging every fetch adds ({how}): {on['p99'] - off['p99']:+.3f} ms at p99, "
            f"{on['p50'] - off['p50']:+.3f} ms at p50, {1000 * (on['cpu'] - off['cpu']):+.0f} µs of server CPU "
            "per request"
        )


if __name__ == "__main__":
    main()
