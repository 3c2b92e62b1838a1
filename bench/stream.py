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
3. **mutation topic** (``--case entity``; targets: >= 100,000 mutation rows/s, freshness p99 <= 100 ms
   at 10,000 rows/s): the worker of ``bench.entity_item_ratings``, an EntitySource (a ratings table:
   ``rating_id, item_id, user_id, rating, ts``) with ``mutation_topic="ratings_mutations"`` and
   AVERAGE 90d, SUM 30d, COUNT 30d, MAX 90d, LAST 90d per item. Its snapshot partition (2,000 items x
   5 ratings, yesterday) is uploaded first (the worker reads the snapshot table's schema). Then
   throughput as in 1. for ~300,000 mutation rows (a third each inserts, updates = before + after
   row, deletes; over 100,000 items) in the mutation table's row format, and the same changes as
   Debezium events (``before``/``after``/``op``/``ts_ms``); both are read whole by Arrow's JSON
   reader, Debezium envelopes converted column-wise (``gnomon.streaming.cdc.debezium_rows_table``),
   and the throughput target holds for both; after each, one item's served value is checked
   against a replay of the changes. Freshness as in 2., the probe being the insert of a rating of a new item
   (``rating_count_30d`` no longer null), among mutation rows at 10,000 rows/s.

    python bench/stream.py --quick        # 20,000 events / mutation rows; 5 s of freshness
    python bench/stream.py                # 300,000 events / mutation rows; 20 s of freshness at 10,000/s
    python bench/stream.py --case entity --repeat 2   # the mutation-topic case only, each measurement twice

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
TARGET_MUTATION_FRESHNESS_P99_S = 0.1  # the mutation-topic case: p99 <= 100 ms at 10,000 rows/s
ENTITY_PROBE_FEATURE = "rating_count_30d"
ENTITY_WAREHOUSE_ITEMS = 2_000  # snapshot items (x5 ratings) uploaded before streaming
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
        return "\n".join(
            f"        {seconds:7.2f} s {seconds / total:6.1%} of the run  {label}"
            for label, seconds in sorted(self.seconds.items(), key=lambda item: -item[1])
        )


class RedisCommandStats:
    """The redis-server's time per command over a measurement (``INFO commandstats``, reset at start)."""

    def __init__(self, redis_base: str) -> None:
        import redis

        self.client = redis.Redis.from_url(f"{redis_base}/0")
        self.client.config_resetstat()

    def report(self, elapsed: float) -> str:
        stats = self.client.info("commandstats")
        self.client.close()
        rows = sorted(
            (
                (name.removeprefix("cmdstat_"), value["calls"], value["usec"] / 1e6)
                for name, value in stats.items()
            ),
            key=lambda row: -row[2],
        )
        busy = sum(row[2] for row in rows)
        lines = [
            f"           {seconds:5.2f} s  {calls:>6,} calls  {name}" for name, calls, seconds in rows[:6]
        ]
        lines.append(f"           {busy:5.2f} s  busy in all ({100 * busy / elapsed:.0f}% of the run)")
        return "\n".join(lines)


def throughput(
    config: str,
    redis_base: str,
    root: Path,
    warehouse: Path,
    count: int,
    seed: int,
    profile: bool,
    max_records: int = 2000,
) -> dict[str, Any]:
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
    print(
        f"  [{config}] published {count:,} events in {publish_s:.1f} s ({count / publish_s:,.0f}/s, "
        "batches of 1,000)",
        flush=True,
    )
    bench.wait_for_quiet(f"{config} worker throughput")
    store = project.store()
    worker = StreamWorker(
        plan, store, broker, group="bench-throughput", schema=project.source_schema(plan.name)
    )
    timer = StageTimer(worker)
    meter = bench.OtherLoad()
    redis_stats = RedisCommandStats(redis_base)
    started = time.perf_counter()
    stats = worker.run(until_caught_up=True, max_records=max_records)
    elapsed = time.perf_counter() - started
    redis_busy = redis_stats.report(elapsed)
    load = f"{bench.loadavg()}; {bench.fmt_other(meter.stop())}"
    rate = stats.records / elapsed
    print(
        f"  [{config}] one StreamWorker applied {stats.records:,} events ({stats.rows:,} rows, "
        f"{stats.batches} micro-batches of <= {max_records:,}) in {elapsed:.2f} s = {rate:,.0f} events/s; {load}",
        flush=True,
    )
    print(
        f"        target >= {TARGET_EVENTS_PER_S:,} events/s: {bench.verdict(rate >= TARGET_EVENTS_PER_S)}"
        f"{'' if CONFIGS[config][0] == 'redis' else ' (the target is for Redis; shown for comparison)'}",
        flush=True,
    )
    print("        time in each stage (three threads overlap):\n" + timer.report(elapsed), flush=True)
    print(f"        redis-server's own time (INFO commandstats, both databases):\n{redis_busy}", flush=True)
    store.close()
    result = {
        "events": stats.records,
        "seconds": elapsed,
        "events_per_s": rate,
        "publish_s": publish_s,
        "stages": dict(timer.seconds),
        "loadavg": load,
    }
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
        worker = StreamWorker(
            plan, store, broker, group="bench-profile", schema=project.source_schema(plan.name)
        )
        profiler = cProfile.Profile()
        profiler.enable()
        worker.run(until_caught_up=True, max_records=max_records)
        profiler.disable()
        store.close()
        text = bench.top_profile(profiler, 30)
        print(
            f"  [{config}] cProfile of the same run (sorted by tottime; profiling slows it down):", flush=True
        )
        print("\n".join("      " + line for line in text.splitlines()), flush=True)
        result["profile"] = text
    broker.close()
    return result


# ================================================================== throughput: mutation topic


def entity_throughput(
    fmt: str,
    config: str,
    redis_base: str,
    root: Path,
    warehouse: Path,
    rows: int,
    seed: int,
    profile: bool,
    max_records: int = 2000,
) -> dict[str, Any]:
    """One StreamWorker consuming ``bench.entity_item_ratings``'s mutation topic (after the snapshot's
    upload): ``fmt`` "rows" (the mutation table's row format: the Arrow fast path) or "debezium"
    (change events, converted event by event); ~``rows`` mutation rows either way."""
    from gnomon import Project
    from gnomon.streaming.worker import StreamWorker

    online, stream = urls(config, redis_base)
    flush_redis(redis_base)
    repo = bench.make_entity_repo(
        root / f"entity_{fmt}_{config.replace('+', '_')}", warehouse, online, stream
    )
    project = Project(repo)
    ds = bench.upload_day()
    project.upload(bench.ENTITY_GROUP_BY, ds)
    plan = project.plan.group_bys[bench.ENTITY_GROUP_BY]
    now = int(time.time() * 1000)
    changes = bench.entity_mutations(rows, STREAM_KEYS, bench.batch_end_of(ds), now, seed)
    expected_rows = bench.mutation_row_count(changes)
    payloads = bench.mutation_row_payloads(changes) if fmt == "rows" else bench.debezium_payloads(changes)
    label = f"{config}, {'mutation rows' if fmt == 'rows' else 'Debezium events'}"
    kinds = collections.Counter(op for op, *_ in changes)
    broker = project.broker()
    publish_s = bench.publish_all_to(broker, bench.ENTITY_TOPIC, payloads, chunk=1000)
    print(
        f"  [{label}] published {len(payloads):,} records ({expected_rows:,} mutation rows of {len(changes):,} "
        f"changes: {kinds['c']:,} inserts, {kinds['u']:,} updates, {kinds['d']:,} deletes) in {publish_s:.1f} s",
        flush=True,
    )
    bench.wait_for_quiet(f"{label} worker throughput")
    store = project.store()
    schema = project.source_schema(plan.name)
    worker = StreamWorker(plan, store, broker, group="bench-throughput", schema=schema)
    timer = StageTimer(worker)
    meter = bench.OtherLoad()
    redis_stats = RedisCommandStats(redis_base) if CONFIGS[config][0] == "redis" else None
    started = time.perf_counter()
    stats = worker.run(until_caught_up=True, max_records=max_records)
    elapsed = time.perf_counter() - started
    redis_busy = redis_stats.report(elapsed) if redis_stats else ""
    load = f"{bench.loadavg()}; {bench.fmt_other(meter.stop())}"
    row_rate, record_rate = stats.rows / elapsed, stats.records / elapsed
    print(
        f"  [{label}] one StreamWorker applied {stats.records:,} records = {stats.rows:,} mutation rows "
        f"({stats.batches} micro-batches of <= {max_records:,} records; dead letters {stats.dead_letters}) in "
        f"{elapsed:.2f} s = {row_rate:,.0f} mutation rows/s ({record_rate:,.0f} records/s); {load}",
        flush=True,
    )
    if stats.rows != expected_rows or stats.dead_letters:
        print(
            f"        !! expected {expected_rows:,} rows and no dead letters "
            f"({dict(stats.dead_letter_reasons)})",
            flush=True,
        )
    print(
        f"        target >= {TARGET_EVENTS_PER_S:,} mutation rows/s: {bench.verdict(row_rate >= TARGET_EVENTS_PER_S)}",
        flush=True,
    )
    print("        time in each stage (three threads overlap):\n" + timer.report(elapsed), flush=True)
    if redis_busy:
        print(
            f"        redis-server's own time (INFO commandstats, both databases):\n{redis_busy}", flush=True
        )
    # a served value: the busiest streamed item outside the snapshot, fetched now, against a replay here
    alive: dict[str, dict[int, float]] = collections.defaultdict(dict)
    for _, _, before, after in changes:
        if before is not None:
            alive[before[1]].pop(before[0], None)
        if after is not None:
            alive[after[1]][after[0]] = after[3]
    snapshot_items = {bench.item_id(i) for i in range(ENTITY_WAREHOUSE_ITEMS)}
    probe_item = max(
        (item for item in alive if item not in snapshot_items), key=lambda item: len(alive[item])
    )
    expected = {
        "rating_count_30d": len(alive[probe_item]) or None,
        "rating_sum_30d": sum(alive[probe_item].values()) if alive[probe_item] else None,
    }
    fetched = project.fetcher(store).fetch_group_by(bench.ENTITY_GROUP_BY, [{"item": probe_item}])[0]
    got = (
        {name: fetched.features.get(name) for name in expected}
        if fetched.status == "Success"
        else fetched.error
    )
    print(
        f"        fetch of item {probe_item} now: {fetched.status} {got}; replayed here: {expected} "
        f"{'(equal)' if got == expected else '!! DIFFERENT'}",
        flush=True,
    )
    store.close()
    result = {
        "format": fmt,
        "records": stats.records,
        "rows": stats.rows,
        "seconds": elapsed,
        "rows_per_s": row_rate,
        "records_per_s": record_rate,
        "publish_s": publish_s,
        "dead_letters": stats.dead_letters,
        "stages": dict(timer.seconds),
        "loadavg": load,
    }
    if profile or (fmt == "rows" and row_rate < TARGET_EVENTS_PER_S):
        if CONFIGS[config][0] == "redis":
            import redis

            client = redis.Redis.from_url(f"{redis_base}/0")
            client.flushdb()
            client.close()
        else:
            for suffix in ("", "-wal", "-shm"):
                (repo / f"online.db{suffix}").unlink(missing_ok=True)
        store = project.store()
        worker = StreamWorker(
            plan, store, broker, group=f"bench-profile-{uuid.uuid4().hex[:6]}", schema=schema
        )
        profiler = cProfile.Profile()
        profiler.enable()
        worker.run(until_caught_up=True, max_records=max_records)
        profiler.disable()
        store.close()
        text = bench.top_profile(profiler, 30)
        print(
            f"  [{label}] cProfile of the same run (sorted by tottime; profiling slows it down):", flush=True
        )
        print("\n".join("      " + line for line in text.splitlines()), flush=True)
        result["profile"] = text
    broker.close()
    return result


class EntityFill:
    """Mutation rows for the freshness publisher: per batch, the probe (an insert of a rating of a new
    item), then inserts, update pairs and deletes of ratings over `STREAM_KEYS` items (updates and
    deletes take back rows this publisher inserted), all at the batch's mutation time."""

    def __init__(self, seed: int) -> None:
        import random

        self.random = random.Random(seed)
        self.alive: list[tuple[Any, ...]] = []
        self.next_id = 2 * 10**9

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def batch(self, probe: str, ts: int, size: int) -> list[bytes]:
        rng, alive = self.random, self.alive
        row = bench.rating_row_json
        out = [
            f'{{{row((self._id(), probe, "u0000001", 4.0, ts))},"mutation_ts":{ts},"is_before":false}}'.encode()
        ]
        while len(out) < size:
            kind = rng.random()
            if kind < 1 / 3 or not alive:
                new = (
                    self._id(),
                    bench.item_id(rng.randrange(STREAM_KEYS)),
                    bench.user_id(rng.randrange(100 * STREAM_KEYS)),
                    float(rng.randint(1, 5)),
                    ts,
                )
                alive.append(new)
                out.append(f'{{{row(new)},"mutation_ts":{ts},"is_before":false}}'.encode())
                continue
            position = rng.randrange(len(alive))
            old = alive[position]
            alive[position] = alive[-1]
            alive.pop()
            out.append(f'{{{row(old)},"mutation_ts":{ts},"is_before":true}}'.encode())
            if kind < 2 / 3 and len(out) < size:  # an update: the new row at the same mutation time
                new = (old[0], old[1], old[2], float(rng.randint(1, 5)), ts)
                alive.append(new)
                out.append(f'{{{row(new)},"mutation_ts":{ts},"is_before":false}}'.encode())
        return out


# ================================================================== freshness


def child_worker(args: argparse.Namespace) -> None:
    from gnomon import Project
    from gnomon.streaming.worker import StreamWorker

    project = Project(args.repo)
    store, broker = project.store(), project.broker()
    worker = StreamWorker(
        project.plan.group_bys[args.group_by],
        store,
        broker,
        group=args.group,
        schema=project.source_schema(args.group_by),
    )  # as `gnomon stream` does
    Path(args.ready).touch()
    stop_file = Path(args.stop)
    deadline = time.monotonic() + args.max_seconds
    started = time.perf_counter()
    stats = worker.run(stop=lambda: stop_file.exists() or time.monotonic() > deadline)
    elapsed = time.perf_counter() - started
    store.close()
    broker.close()
    print(
        json.dumps(
            {
                "records": stats.records,
                "rows": stats.rows,
                "batches": stats.batches,
                "dead_letters": stats.dead_letters,
                "seconds": elapsed,
            }
        )
    )


def freshness(
    config: str,
    redis_base: str,
    root: Path,
    warehouse: Path,
    rate: int,
    seconds: float,
    batch_ms: float,
    seed: int,
    case: str = "events",
) -> dict[str, Any]:
    """``case``: "events" (JSON events of ``bench.user_stats``, probes are new users) or "entity"
    (mutation rows of ``bench.entity_item_ratings``, probes are inserts of ratings of new items)."""
    import numpy as np

    from gnomon import Project

    online, stream = urls(config, redis_base)
    flush_redis(redis_base)
    entity = case == "entity"
    unit = "mutation rows" if entity else "events"
    target_s = TARGET_MUTATION_FRESHNESS_P99_S if entity else TARGET_FRESHNESS_P99_S
    if entity:
        repo = bench.make_entity_repo(
            root / f"fresh_entity_{config.replace('+', '_')}", warehouse, online, stream
        )
        group_by, topic, key_name, probe_feature = (
            bench.ENTITY_GROUP_BY,
            bench.ENTITY_TOPIC,
            "item",
            ENTITY_PROBE_FEATURE,
        )
    else:
        repo = bench.make_repo(root / f"fresh_{config.replace('+', '_')}", warehouse, online, stream)
        group_by, topic, key_name, probe_feature = bench.USER_GROUP_BY, bench.TOPIC, "user", PROBE_FEATURE
    project = Project(repo)
    project.upload(group_by, bench.upload_day())
    run = uuid.uuid4().hex[:6]
    ready, stop = root / f"ready-{run}", root / f"stop-{run}"
    # the worker's own deadline is a safety net only (the stop file ends it): it must outlast the wait
    # for a quiet machine (`bench.wait_for_quiet`: a running bench/offline.py, then up to SETTLE_S)
    max_worker_s = seconds + 120 + bench.SETTLE_S + (1200 if bench.WAIT_FOR_OFFLINE else 0)
    worker = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--child",
            "worker",
            "--repo",
            str(repo),
            "--group",
            f"bench-fresh-{run}",
            "--ready",
            str(ready),
            "--stop",
            str(stop),
            "--max-seconds",
            str(max_worker_s),
            "--group-by",
            group_by,
        ],
        env=bench.child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start: {worker.stderr.read()[-3000:]}")  # type: ignore[union-attr]
            time.sleep(0.05)
        bench.wait_for_quiet(f"{config} freshness ({case}) at {rate:,} {unit}/s")
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
        mutations = EntityFill(seed) if entity else None

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
                if mutations is not None:  # an insert of a rating of a new item, then other mutation rows
                    payloads = mutations.batch(probe, ts, per_batch)
                else:
                    payloads = [
                        f'{{"user_id":"{probe}","item_id":"i0000001","price":1.5,"rating":3,"ts":{ts}}}'.encode()
                    ]
                    payloads += [
                        (
                            f'{{"user_id":"u{users[base + j]:07d}","item_id":"i{items[base + j]:07d}",'
                            f'"price":12.5,"rating":4,"ts":{ts}}}'
                        ).encode()
                        for j in range(1, per_batch)
                    ]
                published_at = time.time()
                broker.publish(topic, payloads)
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
                results = fetcher.fetch_group_by(group_by, [{key_name: k} for k, _ in keys])
                now = time.time()
                with lock:
                    for (key, published_at), result in zip(keys, results, strict=True):
                        if result.status != "Success":
                            if len(errors) < 5:
                                errors.append(f"{result.status}: {result.error}")
                            continue
                        if result.features.get(probe_feature) is not None:
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
    ok = unseen == 0 and not errors and summary.get("p99", 1e9) / 1000 <= target_s and achieved >= 0.97 * rate
    print(
        f"  [{config}] published {events:,} {unit} in {publish_elapsed:.1f} s = {achieved:,.0f} {unit}/s "
        f"(batches of {per_batch} every {batch_ms:g} ms; publish call p50 {calls.get('p50', 0):.2f} ms, "
        f"p99 {calls.get('p99', 0):.2f} ms; pacing lateness p99 {late.get('p99', 0):.2f} ms)",
        flush=True,
    )
    print(
        f"  [{config}] event-to-servable freshness of {len(seen)} probes: {bench.fmt_summary(summary)}"
        f"{f'; {unseen} probes never seen' if unseen else ''}{f'; errors {errors}' if errors else ''}",
        flush=True,
    )
    if worker_stats.get("dead_letters"):
        print(f"        !! the worker dead-lettered {worker_stats['dead_letters']} records", flush=True)
    avg_batch = worker_stats.get("records", 0) / max(1, worker_stats.get("batches", 1))
    print(
        f"        worker: {worker_stats.get('records', '?')} records in {worker_stats.get('batches', '?')} "
        f"micro-batches (avg {avg_batch:,.0f}); {load}",
        flush=True,
    )
    print(
        f"        target p99 <= {target_s * 1000:g} ms at {rate:,} {unit}/s: {bench.verdict(ok)}", flush=True
    )
    return {
        "freshness": summary,
        "probes": len(seen),
        "unseen": unseen,
        "errors": errors,
        "achieved_events_per_s": achieved,
        "worker": worker_stats,
        "loadavg": load,
        "met": ok,
    }


# ================================================================== main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--case",
        choices=["events", "entity", "all"],
        default="all",
        help="events: bench.user_stats's event topic; entity: bench.entity_item_ratings's "
        "mutation topic (row format and Debezium); all (default): both",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 events, 5 s of freshness")
    parser.add_argument(
        "--events", type=int, default=None, help="events for the throughput runs (default 300,000)"
    )
    parser.add_argument(
        "--mutation-rows",
        type=int,
        default=None,
        help="mutation rows for the entity throughput runs (default 300,000; quick 20,000)",
    )
    parser.add_argument(
        "--rate", type=int, default=10_000, help="events (or mutation rows)/s for the freshness run"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run every measurement this many times (default 1)"
    )
    parser.add_argument(
        "--max-records",
        type=int,
        default=2000,
        help="the worker's micro-batch size in the throughput runs (default 2,000, as `gnomon stream`)",
    )
    parser.add_argument("--freshness-seconds", type=float, default=None, help="default 20 (quick: 5)")
    parser.add_argument("--batch-ms", type=float, default=10.0, help="publisher batch interval")
    parser.add_argument("--throughput-configs", default=",".join(CONFIGS))
    parser.add_argument("--freshness-configs", default="redis+redis-streams,sqlite+embedded")
    parser.add_argument(
        "--entity-configs",
        default="redis+redis-streams",
        help="store+broker configs of the entity case (throughput and freshness)",
    )
    parser.add_argument("--profile", action="store_true", help="profile even when the target is met")
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="do not wait for a running bench/offline.py (debugging only: figures are then noisy)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=60.0,
        help="before each measurement, wait up to this many seconds while other processes "
        "(not this benchmark's) use more than half a core (default 60)",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--child", choices=["worker"], help=argparse.SUPPRESS)
    parser.add_argument("--repo", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    parser.add_argument("--stop", help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=600, help=argparse.SUPPRESS)
    parser.add_argument("--group-by", default=bench.USER_GROUP_BY, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "worker":
        child_worker(args)
        return
    bench.WAIT_FOR_OFFLINE = not args.no_wait
    bench.SETTLE_S = args.settle
    count = args.events or (20_000 if args.quick else 300_000)
    mutation_rows = args.mutation_rows or (20_000 if args.quick else 300_000)
    fresh_s = args.freshness_seconds or (5.0 if args.quick else 20.0)
    ds = bench.upload_day()
    cases = ["events", "entity"] if args.case == "all" else [args.case]
    import redis
    from redis.utils import HIREDIS_AVAILABLE

    print(
        f"stream benchmark: {'quick' if args.quick else 'full'} run ({', '.join(cases)}; {args.repeat} run(s) "
        f"each); redis-py {redis.__version__} with "
        f"{'hiredis' if HIREDIS_AVAILABLE else 'its pure-Python reply parser'}; {bench.loadavg()}",
        flush=True,
    )
    started = time.monotonic()
    warehouse, _ = bench.ensure_warehouse(WAREHOUSE_KEYS, args.seed, ds, events_per_key=5)
    entity_warehouse = None
    if "entity" in cases:
        entity_warehouse, _ = bench.ensure_entity_warehouse(ENTITY_WAREHOUSE_ITEMS, args.seed, ds)
    root = bench.DATA_DIR / "stream"
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    runs = range(1, args.repeat + 1)

    def tag(run: int) -> str:
        return f" #{run}" if args.repeat > 1 else ""

    with bench.redis_server(root / "redis") as redis_base:
        if "events" in cases:
            for config in [c for c in args.throughput_configs.split(",") if c]:
                for run in runs:
                    results[f"throughput {config}{tag(run)}"] = throughput(
                        config, redis_base, root, warehouse, count, args.seed, args.profile, args.max_records
                    )
            for config in [c for c in args.freshness_configs.split(",") if c]:
                for run in runs:
                    results[f"freshness {config}{tag(run)}"] = freshness(
                        config, redis_base, root, warehouse, args.rate, fresh_s, args.batch_ms, args.seed + 1
                    )
        if "entity" in cases:
            assert entity_warehouse is not None
            for config in [c for c in args.entity_configs.split(",") if c]:
                for fmt in ("rows", "debezium"):
                    for run in runs:
                        results[f"mutations {fmt} {config}{tag(run)}"] = entity_throughput(
                            fmt,
                            config,
                            redis_base,
                            root,
                            entity_warehouse,
                            mutation_rows,
                            args.seed + run,
                            args.profile,
                            args.max_records,
                        )
                for run in runs:
                    results[f"mutation freshness {config}{tag(run)}"] = freshness(
                        config,
                        redis_base,
                        root,
                        entity_warehouse,
                        args.rate,
                        fresh_s,
                        args.batch_ms,
                        args.seed + 1,
                        case="entity",
                    )
    (root / f"results-{'quick' if args.quick else 'full'}.json").write_text(
        json.dumps(results, indent=1, default=str)
    )
    print("\n================ summary ================")
    for name, result in results.items():
        if name.startswith("throughput"):
            target = name.split()[1].startswith("redis")
            print(
                f"{name:<40} {result['events_per_s']:>10,.0f} events/s"
                + (
                    f"   target >= 100,000: {bench.verdict(result['events_per_s'] >= TARGET_EVENTS_PER_S)}"
                    if target
                    else "   (SQLite, for comparison)"
                )
            )
        elif name.startswith("mutations"):
            rows_format = result["format"] == "rows"
            print(
                f"{name:<40} {result['rows_per_s']:>10,.0f} mutation rows/s ({result['records_per_s']:,.0f} "
                f"{'records' if rows_format else 'Debezium events'}/s)"
                f"   target >= 100,000 rows/s: {bench.verdict(result['rows_per_s'] >= TARGET_EVENTS_PER_S)}"
            )
        else:
            s = result["freshness"]
            entity = name.startswith("mutation")
            target = (
                f"{TARGET_MUTATION_FRESHNESS_P99_S * 1000:g} ms"
                if entity
                else f"{TARGET_FRESHNESS_P99_S:g} s"
            )
            print(
                f"{name:<40} p50 {s.get('p50', float('nan')):.1f}  p99 {s.get('p99', float('nan')):.1f}  "
                f"max {s.get('max', float('nan')):.1f} ms at {result['achieved_events_per_s']:,.0f} "
                f"{'mutation rows' if entity else 'events'}/s   target p99 <= {target}: {bench.verdict(result['met'])}"
            )
    print(f"total {time.monotonic() - started:.0f} s; {bench.loadavg()}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
