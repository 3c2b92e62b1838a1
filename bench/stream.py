#!/usr/bin/env python
"""Streaming benchmark: stream-worker throughput and event-to-servable freshness.

The repo is the one of ``bench/online.py`` (``bench/_online_repo.py``); the worker measured is the
one of ``bench.user_stats`` (keyed by user; COUNT 5h, SUM 1d, AVERAGE 30d, MAX 12h, LAST_K(3) 1d),
fed JSON events ``{"user_id", "item_id", "price", "rating", "ts"}`` over 100,000 users.

1. **throughput** (target: >= 100,000 events/s sustained per worker into Redis): N events are
   published first, then one ``StreamWorker`` (default micro-batch of 2,000 records, as
   ``gnomon stream``) consumes them until caught up, timed; for the Redis store with the Redis
   Streams broker, the Redis store with the embedded broker, and the SQLite store with the embedded
   broker. The time is split by stage (broker poll, JSON + row building, the DuckDB Query, the store
   write, the broker commit) by wrapping those calls, and a cProfile of a second pass over a fresh
   store is printed when the target is missed.
2. **freshness** (target: p99 <= 1 s at 10,000 events/s): a worker runs in its own process
   (``StreamWorker.run``, like ``gnomon stream``) while this process publishes 10,000 events/s, paced
   in batches of 100 every 10 ms, for 20 s. One event of each batch is a probe with a user key never
   seen before; a checker thread polls ``Fetcher.fetch_group_by`` for the pending probes (every 2 ms)
   and records, per probe, the time from just before its ``publish`` call to the end of the first
   fetch that sees it (``item_count_5h`` is no longer null). Redis store + Redis Streams, and SQLite
   store + embedded broker.

    python bench/stream.py --quick        # 20,000 events; 5 s of freshness
    python bench/stream.py                # 300,000 events; 20 s of freshness at 10,000 events/s

Run from the repo root with the venv active. Before each measurement it waits for a running
``bench/offline.py`` (2-core machine) and prints the load average. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _online_repo as bench  # noqa: E402

TARGET_EVENTS_PER_S = 100_000
TARGET_FRESHNESS_P99_S = 1.0
STREAM_KEYS = 100_000
WAREHOUSE_KEYS = 2_000  # the upload only has to exist (fetches need its batch end); keep it small
PROBE_FEATURE = "item_count_5h"

CONFIGS = {
    "redis+redis-streams": ("redis", "redis"),
    "redis+embedded": ("redis", "embedded"),
    "sqlite+embedded": ("sqlite", "embedded"),
}


def urls(config: str, redis_base: str) -> tuple[str, str]:
    store, broker = CONFIGS[config]
    online = f"{redis_base}/0" if store == "redis" else "sqlite:///online.db"
    stream = f"{redis_base}/1" if broker == "redis" else "embedded"
    return online, stream


def flush_redis(redis_base: str) -> None:
    import redis

    for db in (0, 1):
        client = redis.Redis.from_url(f"{redis_base}/{db}")
        client.flushdb()
        client.close()


# ================================================================== throughput

class StageTimer:
    """Wraps a worker's stages to add up the seconds each takes, per thread: the poll thread (broker
    poll), this thread (parse + Query + encode: ``RecordApplier.prepare``) and the writer thread (store
    write, broker commit). The stages overlap, so each is shown as a share of the run's wall time."""

    def __init__(self, worker: Any) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        self._wrap(worker.consumer, "poll", "poll thread: broker poll (incl. waiting for the server)")
        self._wrap(worker.applier, "prepare", "main thread: parse, Query, keys, encode (prepare)")
        self._wrap(worker.applier, "write", "writer thread: store write")
        self._wrap(worker.consumer, "commit", "writer thread: broker commit")
        self._wrap(worker.store, "offsets", "main thread: store offsets (caught-up check)")

    def _wrap(self, obj: Any, name: str, label: str) -> None:
        original = getattr(obj, name)
        seconds = self.seconds

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - started

        setattr(obj, name, timed)

    def report(self, total: float) -> str:
        return "\n".join(f"        {seconds:7.2f} s {seconds / total:6.1%} of the run  {label}"
                         for label, seconds in sorted(self.seconds.items(), key=lambda item: -item[1]))


class RedisCommandStats:
    """The redis-server's time per command over a measurement (``INFO commandstats``, reset at start)."""

    def __init__(self, redis_base: str) -> None:
        import redis

        self.client = redis.Redis.from_url(f"{redis_base}/0")
        self.client.config_resetstat()

    def report(self, elapsed: float) -> str:
        stats = self.client.info("commandstats")
        self.client.close()
        rows = sorted(((name.removeprefix("cmdstat_"), value["calls"], value["usec"] / 1e6)
                       for name, value in stats.items()), key=lambda row: -row[2])
        busy = sum(row[2] for row in rows)
        lines = [f"           {seconds:5.2f} s  {calls:>6,} calls  {name}" for name, calls, seconds in rows[:6]]
        lines.append(f"           {busy:5.2f} s  busy in all ({100 * busy / elapsed:.0f}% of the run)")
        return "\n".join(lines)


def throughput(config: str, redis_base: str, root: Path, warehouse: Path, count: int, seed: int,
               profile: bool, max_records: int = 2000) -> dict[str, Any]:
    from gnomon import Project
    from gnomon.streaming.worker import StreamWorker

    online, stream = urls(config, redis_base)
    flush_redis(redis_base)
    repo = bench.make_repo(root / f"repo_{config.replace('+', '_')}", warehouse, online, stream)
    project = Project(repo)
    plan = project.plan.group_bys[bench.USER_GROUP_BY]
    ds = bench.upload_day()
    now = int(time.time() * 1000)
    payloads = bench.stream_payloads(count, STREAM_KEYS, bench.batch_end_of(ds), now, seed)
    broker = project.broker()
    publish_s = bench.publish_all(broker, payloads, chunk=1000)
    print(f"  [{config}] published {count:,} events in {publish_s:.1f} s ({count / publish_s:,.0f}/s, "
          "batches of 1,000)", flush=True)
    bench.wait_for_quiet(f"{config} worker throughput")
    store = project.store()
    worker = StreamWorker(plan, store, broker, group="bench-throughput", schema=project.source_schema(plan.name))
    timer = StageTimer(worker)
    meter = bench.OtherLoad()
    redis_stats = RedisCommandStats(redis_base)
    started = time.perf_counter()
    stats = worker.run(until_caught_up=True, max_records=max_records)
    elapsed = time.perf_counter() - started
    redis_busy = redis_stats.report(elapsed)
    load = f"{bench.loadavg()}; {bench.fmt_other(meter.stop())}"
    rate = stats.records / elapsed
    print(f"  [{config}] one StreamWorker applied {stats.records:,} events ({stats.rows:,} rows, "
          f"{stats.batches} micro-batches of <= {max_records:,}) in {elapsed:.2f} s = {rate:,.0f} events/s; {load}",
          flush=True)
    print(f"        target >= {TARGET_EVENTS_PER_S:,} events/s: {bench.verdict(rate >= TARGET_EVENTS_PER_S)}"
          f"{'' if CONFIGS[config][0] == 'redis' else ' (the target is for Redis; shown for comparison)'}",
          flush=True)
    print("        time in each stage (three threads overlap):\n" + timer.report(elapsed), flush=True)
    print(f"        redis-server's own time (INFO commandstats, both databases):\n{redis_busy}", flush=True)
    store.close()
    result = {"events": stats.records, "seconds": elapsed, "events_per_s": rate, "publish_s": publish_s,
              "stages": dict(timer.seconds), "loadavg": load}
    if profile or rate < TARGET_EVENTS_PER_S:
        # a second pass over a fresh store, under cProfile (a new consumer group re-reads the topic)
        if CONFIGS[config][0] == "redis":
            import redis

            client = redis.Redis.from_url(f"{redis_base}/0")
            client.flushdb()
            client.close()
        else:
            for suffix in ("", "-wal", "-shm"):
                (repo / f"online.db{suffix}").unlink(missing_ok=True)
        store = project.store()
        worker = StreamWorker(plan, store, broker, group="bench-profile", schema=project.source_schema(plan.name))
        profiler = cProfile.Profile()
        profiler.enable()
        worker.run(until_caught_up=True, max_records=max_records)
        profiler.disable()
        store.close()
        text = bench.top_profile(profiler, 30)
        print(f"  [{config}] cProfile of the same run (sorted by tottime; profiling slows it down):", flush=True)
        print("\n".join("      " + line for line in text.splitlines()), flush=True)
        result["profile"] = text
    broker.close()
    return result


# ================================================================== freshness

def child_worker(args: argparse.Namespace) -> None:
    from gnomon import Project
    from gnomon.streaming.worker import StreamWorker

    project = Project(args.repo)
    store, broker = project.store(), project.broker()
    worker = StreamWorker(project.plan.group_bys[bench.USER_GROUP_BY], store, broker, group=args.group,
                          schema=project.source_schema(bench.USER_GROUP_BY))  # as `gnomon stream` does
    Path(args.ready).touch()
    stop_file = Path(args.stop)
    deadline = time.monotonic() + args.max_seconds
    started = time.perf_counter()
    stats = worker.run(stop=lambda: stop_file.exists() or time.monotonic() > deadline)
    elapsed = time.perf_counter() - started
    store.close()
    broker.close()
    print(json.dumps({"records": stats.records, "rows": stats.rows, "batches": stats.batches,
                      "dead_letters": stats.dead_letters, "seconds": elapsed}))


def freshness(config: str, redis_base: str, root: Path, warehouse: Path, rate: int, seconds: float,
              batch_ms: float, seed: int) -> dict[str, Any]:
    import numpy as np

    from gnomon import Project

    online, stream = urls(config, redis_base)
    flush_redis(redis_base)
    repo = bench.make_repo(root / f"fresh_{config.replace('+', '_')}", warehouse, online, stream)
    project = Project(repo)
    project.upload(bench.USER_GROUP_BY, bench.upload_day())
    run = uuid.uuid4().hex[:6]
    ready, stop = root / f"ready-{run}", root / f"stop-{run}"
    worker = subprocess.Popen([sys.executable, __file__, "--child", "worker", "--repo", str(repo), "--group",
                               f"bench-fresh-{run}", "--ready", str(ready), "--stop", str(stop),
                               "--max-seconds", str(seconds + 120)],
                              env=bench.child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start: {worker.stderr.read()[-3000:]}")  # type: ignore[union-attr]
            time.sleep(0.05)
        bench.wait_for_quiet(f"{config} freshness at {rate:,} events/s")
        sys.setswitchinterval(0.001)
        per_batch = max(1, int(round(rate * batch_ms / 1000)))
        batches = int(seconds * 1000 / batch_ms)
        rng = np.random.default_rng(seed)
        users = rng.integers(0, STREAM_KEYS, size=per_batch * batches).tolist()
        items = rng.integers(0, STREAM_KEYS, size=per_batch * batches).tolist()
        pending: dict[str, float] = {}
        lock = threading.Lock()
        seen: list[float] = []
        publish_calls: list[float] = []
        lateness: list[float] = []
        publishing_done = threading.Event()
        errors: list[str] = []

        def publisher() -> None:
            broker = project.broker()
            start = time.perf_counter() + 0.05
            for batch in range(batches):
                due = start + batch * batch_ms / 1000
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                lateness.append(max(0.0, time.perf_counter() - due))
                ts = int(time.time() * 1000)
                base = batch * per_batch
                probe = f"p{run}-{batch}"
                payloads = [f'{{"user_id":"{probe}","item_id":"i0000001","price":1.5,"rating":3,"ts":{ts}}}'.encode()]
                payloads += [(f'{{"user_id":"u{users[base + j]:07d}","item_id":"i{items[base + j]:07d}",'
                              f'"price":12.5,"rating":4,"ts":{ts}}}').encode() for j in range(1, per_batch)]
                published_at = time.time()
                broker.publish(bench.TOPIC, payloads)
                publish_calls.append(time.time() - published_at)
                with lock:
                    pending[probe] = published_at
            publishing_done.set()
            broker.close()

        def checker() -> None:
            store = project.store()
            fetcher = project.fetcher(store)
            give_up = None
            while True:
                with lock:
                    keys = list(pending.items())
                if not keys:
                    if publishing_done.is_set():
                        break
                    time.sleep(0.002)
                    continue
                results = fetcher.fetch_group_by(bench.USER_GROUP_BY, [{"user": k} for k, _ in keys])
                now = time.time()
                with lock:
                    for (key, published_at), result in zip(keys, results, strict=True):
                        if result.status != "Success":
                            if len(errors) < 5:
                                errors.append(f"{result.status}: {result.error}")
                            continue
                        if result.features.get(PROBE_FEATURE) is not None:
                            seen.append(now - published_at)
                            del pending[key]
                if publishing_done.is_set():
                    give_up = give_up or time.monotonic() + 30
                    if time.monotonic() > give_up:
                        break
                time.sleep(0.002)
            store.close()

        threads = [threading.Thread(target=publisher), threading.Thread(target=checker)]
        meter = bench.OtherLoad()
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        threads[0].join()
        publish_elapsed = time.perf_counter() - began
        threads[1].join()
        load = f"{bench.loadavg()}; {bench.fmt_other(meter.stop())}"
    finally:
        stop.touch()
        try:
            out, err = worker.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, err = worker.communicate()
        ready.unlink(missing_ok=True)
        stop.unlink(missing_ok=True)
    worker_stats = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-2000:]}
    summary = bench.summary_ms([int(s * 1e9) for s in seen])
    events = per_batch * batches
    achieved = events / publish_elapsed
    late = bench.summary_ms([int(s * 1e9) for s in lateness])
    calls = bench.summary_ms([int(s * 1e9) for s in publish_calls])
    unseen = len(pending)
    ok = unseen == 0 and not errors and summary.get("p99", 1e9) / 1000 <= TARGET_FRESHNESS_P99_S \
        and achieved >= 0.97 * rate
    print(f"  [{config}] published {events:,} events in {publish_elapsed:.1f} s = {achieved:,.0f} events/s "
          f"(batches of {per_batch} every {batch_ms:g} ms; publish call p50 {calls.get('p50', 0):.2f} ms, "
          f"p99 {calls.get('p99', 0):.2f} ms; pacing lateness p99 {late.get('p99', 0):.2f} ms)", flush=True)
    print(f"  [{config}] event-to-servable freshness of {len(seen)} probes: {bench.fmt_summary(summary)}"
          f"{f'; {unseen} probes never seen' if unseen else ''}{f'; errors {errors}' if errors else ''}", flush=True)
    avg_batch = worker_stats.get("records", 0) / max(1, worker_stats.get("batches", 1))
    print(f"        worker: {worker_stats.get('records', '?')} records in {worker_stats.get('batches', '?')} "
          f"micro-batches (avg {avg_batch:,.0f}); {load}", flush=True)
    print(f"        target p99 <= {TARGET_FRESHNESS_P99_S:g} s at {rate:,} events/s: {bench.verdict(ok)}", flush=True)
    return {"freshness": summary, "probes": len(seen), "unseen": unseen, "errors": errors,
            "achieved_events_per_s": achieved, "worker": worker_stats, "loadavg": load, "met": ok}


# ================================================================== main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 events, 5 s of freshness")
    parser.add_argument("--events", type=int, default=None, help="events for the throughput runs (default 300,000)")
    parser.add_argument("--rate", type=int, default=10_000, help="events/s for the freshness run")
    parser.add_argument("--max-records", type=int, default=2000,
                        help="the worker's micro-batch size in the throughput runs (default 2,000, as `gnomon stream`)")
    parser.add_argument("--freshness-seconds", type=float, default=None, help="default 20 (quick: 5)")
    parser.add_argument("--batch-ms", type=float, default=10.0, help="publisher batch interval")
    parser.add_argument("--throughput-configs", default=",".join(CONFIGS))
    parser.add_argument("--freshness-configs", default="redis+redis-streams,sqlite+embedded")
    parser.add_argument("--profile", action="store_true", help="profile even when the target is met")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait for a running bench/offline.py (debugging only: figures are then noisy)")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="before each measurement, wait up to this many seconds while other processes "
                             "(not this benchmark's) use more than half a core (default 60)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--child", choices=["worker"], help=argparse.SUPPRESS)
    parser.add_argument("--repo", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    parser.add_argument("--stop", help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=600, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "worker":
        child_worker(args)
        return
    bench.WAIT_FOR_OFFLINE = not args.no_wait
    bench.SETTLE_S = args.settle
    count = args.events or (20_000 if args.quick else 300_000)
    fresh_s = args.freshness_seconds or (5.0 if args.quick else 20.0)
    ds = bench.upload_day()
    import redis
    from redis.utils import HIREDIS_AVAILABLE

    print(f"stream benchmark: {'quick' if args.quick else 'full'} run; redis-py {redis.__version__} with "
          f"{'hiredis' if HIREDIS_AVAILABLE else 'its pure-Python reply parser'}; {bench.loadavg()}", flush=True)
    started = time.monotonic()
    warehouse, _ = bench.ensure_warehouse(WAREHOUSE_KEYS, args.seed, ds, events_per_key=5)
    root = bench.DATA_DIR / "stream"
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with bench.redis_server(root / "redis") as redis_base:
        for config in [c for c in args.throughput_configs.split(",") if c]:
            results[f"throughput {config}"] = throughput(config, redis_base, root, warehouse, count, args.seed,
                                                         args.profile, args.max_records)
        for config in [c for c in args.freshness_configs.split(",") if c]:
            results[f"freshness {config}"] = freshness(config, redis_base, root, warehouse, args.rate, fresh_s,
                                                       args.batch_ms, args.seed + 1)
    (root / f"results-{'quick' if args.quick else 'full'}.json").write_text(json.dumps(results, indent=1, default=str))
    print("\n================ summary ================")
    for name, result in results.items():
        if name.startswith("throughput"):
            target = name.split()[1].startswith("redis")
            print(f"{name:<36} {result['events_per_s']:>10,.0f} events/s"
                  + (f"   target >= 100,000: {bench.verdict(result['events_per_s'] >= TARGET_EVENTS_PER_S)}"
                     if target else "   (SQLite, for comparison)"))
        else:
            s = result["freshness"]
            print(f"{name:<36} p50 {s.get('p50', float('nan')):.1f}  p99 {s.get('p99', float('nan')):.1f}  "
                  f"max {s.get('max', float('nan')):.1f} ms at {result['achieved_events_per_s']:,.0f} events/s   "
                  f"target p99 <= 1 s: {bench.verdict(result['met'])}")
    print(f"total {time.monotonic() - started:.0f} s; {bench.loadavg()}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
