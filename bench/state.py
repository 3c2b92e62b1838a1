"""Online state per key: fetch cost against the number of events streamed for a key since its
upload, and store bytes per key after streaming 1 day and 30 days at the same rate with a daily
upload (which prunes what it covers). Prints figures; asserts nothing.

    python bench/state.py [--store sqlite|redis] [--events 10,1000,100000] [--rate 2000]

Issue 8's target: a key with 100,000 streamed events fetches within 2x of a key with 10: the worker
folds a key's rows into hop tiles every 256 rows (`online: {fold_every: 256}`), so a fetch reads the
tiles of its windows and a bounded head of rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pyarrow as pa  # noqa: E402

from gnomon import Project  # noqa: E402
from gnomon.compile.features import stream_id  # noqa: E402
from gnomon.online.fold import fold_key, marks_key  # noqa: E402
from gnomon.online.records import entity_key, rows_key  # noqa: E402

DAY = 86_400_000
START = 1_767_225_600_000  # 2026-01-01
SCHEMA = pa.schema([("user_id", pa.string()), ("price", pa.float64()), ("ts", pa.int64())])
FEATURES = """
from gnomon import Aggregation, EventSource, GroupBy, Operation, Query

source = EventSource(table="act.events", topic="events",
                     query=Query(selects={"user": "user_id", "price": "price"}))
stats = GroupBy(name="bench.stats", sources=[source], keys=["user"], online=True,
                aggregations=[Aggregation("price", Operation.SUM, windows=["1h", "1d", "7d"]),
                              Aggregation("price", Operation.COUNT, windows=["1d"]),
                              Aggregation("price", Operation.MAX, windows=["1d"])])
"""


def ds(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime((START + day * DAY) / 1000))


def make_repo(root: Path, store: str) -> Project:
    (root / "features").mkdir(parents=True)
    (root / "features" / "__init__.py").write_text("")
    (root / "features" / "defs.py").write_text(FEATURES)
    # fold_delay 0: the bench's events are months old, so every tile has closed and folds at once
    (root / "gnomon.yaml").write_text(
        f"online: {{url: '{store}', horizon: 40d, fold_every: 256, fold_delay: 0}}\nstream: embedded\n"
    )
    return Project(root)


def write_day(project: Project, day: int, events: list[dict[str, Any]]) -> None:
    project.warehouse.write_partition("act.events", ds(day), pa.Table.from_pylist(events, schema=SCHEMA))


def day_events(day: int, users: list[str], per_user: int) -> list[dict[str, Any]]:
    step = DAY // max(per_user, 1)
    return [
        {"user_id": u, "price": float(i % 97), "ts": START + day * DAY + i * step + k}
        for k, u in enumerate(users)
        for i in range(per_user)
    ]


def stream(project: Project, events: list[dict[str, Any]]) -> None:
    broker = project.broker()
    payloads = [json.dumps(e).encode() for e in events]
    for begin in range(0, len(payloads), 5000):
        broker.publish("events", payloads[begin : begin + 5000])
    broker.close()
    project.stream("bench.stats", until_caught_up=True)


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    pick = lambda p: values[min(len(values) - 1, int(p * len(values)))]  # noqa: E731
    return f"p50 {pick(0.5) * 1000:.3f} ms / p99 {pick(0.99) * 1000:.3f} ms"


def fetch_cost(store: str, counts: list[int]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        project = make_repo(Path(folder), store)
        for day in range(2):
            write_day(project, day, day_events(day, [f"k{n}" for n in counts], 5))
        project.compile(write=False)
        project.upload("bench.stats", ds(1))
        batch_end = START + 2 * DAY
        events = []
        for n in counts:  # n events of key k<n> in the hour after the batch end
            events += [
                {"user_id": f"k{n}", "price": float(i % 97), "ts": batch_end + i * (3_600_000 // n)}
                for i in range(n)
            ]
        started = time.perf_counter()
        stream(project, events)
        print(f"streamed {len(events):,} events in {time.perf_counter() - started:.1f} s")
        fetcher = project.fetcher()
        at = batch_end + 3_600_000
        baseline = None
        for n in counts:
            keys = [{"user": f"k{n}"}]
            for _ in range(20):
                fetcher.fetch_group_by("bench.stats", keys, at=at)
            times = []
            for _ in range(200 if n < 100_000 else 30):
                began = time.perf_counter()
                [result] = fetcher.fetch_group_by("bench.stats", keys, at=at)
                times.append(time.perf_counter() - began)
            assert result.status == "Success", result
            p99 = sorted(times)[min(len(times) - 1, int(0.99 * len(times)))]
            baseline = baseline or p99
            print(
                f"  key with {n:>7,} streamed events: {percentiles(times)}  (p99 {p99 / baseline:.1f}x the "
                f"{counts[0]}-event key; target <= 2x)"
            )
        fetcher.store.close()


def bytes_per_key(store: str, rate: int, days: int) -> int:
    """Stream ``rate`` events a day for one key for ``days`` days with a daily upload; bytes held
    (its streamed rows, its fold record of tiles and its fold marks)."""
    with tempfile.TemporaryDirectory() as folder:
        project = make_repo(Path(folder), store)
        write_day(project, 0, day_events(0, ["hot"], rate))
        project.compile(write=False)
        project.upload("bench.stats", ds(0))
        for day in range(1, days + 1):
            events = day_events(day, ["hot"], rate)
            stream(project, events)
            write_day(project, day, events)  # the warehouse lands the day: the next upload holds it
            if day < days:
                project.upload("bench.stats", ds(day))
        store_ = project.store()
        group_by = project.plan.group_bys["bench.stats"]
        sid = stream_id(group_by)
        held = sum(
            len(key) + len(event_id) + len(blob)
            for key, rows in store_.scan_rows(rows_key(sid, b""))
            for event_id, blob in rows
        )
        key = entity_key(["hot"])
        held += sum(len(v or b"") for v in store_.get([fold_key(sid, key), marks_key(sid, key)]))
        store_.close()
        return held


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", default="sqlite", choices=["sqlite", "redis"])
    parser.add_argument("--events", default="10,1000,100000")
    parser.add_argument("--rate", type=int, default=2000, help="events a day for the bytes-per-key figure")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        store = "sqlite:///online.db"
        if args.store == "redis":
            from gnomon.testing import redis_server

            store = stack.enter_context(redis_server(stack.enter_context(tempfile.TemporaryDirectory())))
        print(
            f"== fetch cost by streamed events per key ({args.store}, in-process fetch_group_by, 5 features)"
        )
        fetch_cost(
            store if args.store == "sqlite" else store + "/1", [int(n) for n in args.events.split(",")]
        )
        print(f"== store bytes per key, {args.rate:,} events a day, a daily upload")
        one = bytes_per_key(store if args.store == "sqlite" else store + "/2", args.rate, 1)
        thirty = bytes_per_key(store if args.store == "sqlite" else store + "/3", args.rate, 30)
        print(f"  after 1 day: {one:,} bytes; after 30 days: {thirty:,} bytes ({thirty / one:.2f}x)")


if __name__ == "__main__":
    main()
