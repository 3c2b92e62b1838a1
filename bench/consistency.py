#!/usr/bin/env python
"""Consistency job benchmark: 1,000,000 logged fetches checked against the offline engine.

The repo: one event source ``bench.events`` (1,000,000 events over 10 days, 50,000 users, 5,000
items, generated with numpy and cached under ``bench/.data/``) and a Join ``bench.user_item`` of two
TEMPORAL GroupBys — by user: COUNT 1h and 1d, SUM 1d, AVERAGE 7d, MAX 1d, LAST, LAST_K(3) 1d (a list)
and APPROX_UNIQUE_COUNT 7d (a sketch); by item: SUM 1d and HISTOGRAM 1d of the colour (a map) — plus
one derivation.

The fetch log is written directly, in the log's format (``logs.bench_user_item``, day 10, ten
Parquet part files): 1,000,000 rows of random (user, item, time in the day), their ``features`` the
JSON of the values of a plain ``Project.training_data`` run over the same rows — what a server
consistent with the warehouse would have served. Setting it up is therefore cheap (no HTTP, no
stream), and the job must find 0 mismatches.

Then, in the same process: a plain ``training_data`` run over the 1,000,000 rows, and
``check_consistency`` (which runs ``training_data`` itself, then parses the logged JSON and
compares every feature value by value, and writes ``consistency.bench_user_item``). Both wall
times are printed, with the job's overhead over the plain run.

    python bench/consistency.py                # 1,000,000 rows
    python bench/consistency.py --rows 100000  # a quick run

Run from the repo root with the venv active; ``src/`` is put on the path automatically.
This is a benchmark, not a test: it never fails the build, it reports.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "src"))

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

DATA_DIR = BENCH_DIR / ".data" / "consistency"
DAY_MS = 86_400_000
START_MS = 1_767_225_600_000  # 2026-01-01 00:00 UTC
DAYS = 10
EVENTS = 1_000_000
USERS = 50_000
ITEMS = 5_000
JOIN = "bench.user_item"
CHECK_DS = "2026-01-10"
LOG_FILES = 10

FEATURES_PY = """
from gnomon import (Accuracy, Aggregation, Derivation, EventSource, GroupBy, Join, JoinPart, Operation,
                    Query)

source = EventSource(
    table="bench.events",
    query=Query(selects={"user": "user_id", "item": "item_id", "price": "price", "qty": "qty",
                         "color": "color"}, time_column="ts"),
)
user_stats = GroupBy(
    name="bench.user_stats",
    sources=[source],
    keys=["user"],
    aggregations=[
        Aggregation("price", Operation.COUNT, windows=["1h", "1d"]),
        Aggregation("price", Operation.SUM, windows=["1d"]),
        Aggregation("qty", Operation.AVERAGE, windows=["7d"]),
        Aggregation("price", Operation.MAX, windows=["1d"]),
        Aggregation("item", Operation.LAST),
        Aggregation("item", Operation.LAST_K(3), windows=["1d"]),
        Aggregation("item", Operation.APPROX_UNIQUE_COUNT, windows=["7d"]),
    ],
    accuracy=Accuracy.TEMPORAL,
    online=True,
)
item_stats = GroupBy(
    name="bench.item_stats",
    sources=[source],
    keys=["item"],
    aggregations=[
        Aggregation("qty", Operation.SUM, windows=["1d"]),
        Aggregation("color", Operation.HISTOGRAM, windows=["1d"]),
    ],
    accuracy=Accuracy.TEMPORAL,
    online=True,
)
user_item = Join(
    name="bench.user_item",
    left=EventSource(table="bench.events", query=Query(selects={"user": "user_id", "item": "item_id"})),
    right_parts=[JoinPart(user_stats), JoinPart(item_stats, prefix="i")],
    derivations=[Derivation("*", "*"),
                 Derivation("avg_price_1d", "bench_user_stats_price_sum_1d / bench_user_stats_price_count_1d")],
    online=True,
)
"""


def ds_of_day(day: int) -> str:
    return f"2026-01-{day + 1:02d}"


def build_repo(repo: Path, seed: int) -> None:
    """The feature repo and its warehouse of ``EVENTS`` events (one partition a day)."""
    if (repo / ".complete").exists():
        return
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "features").mkdir(parents=True)
    (repo / "gnomon.yaml").write_text("project: bench\n")
    (repo / "features" / "__init__.py").write_text("")
    (repo / "features" / "defs.py").write_text(textwrap.dedent(FEATURES_PY))
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(START_MS, START_MS + DAYS * DAY_MS, EVENTS))
    users = np.array([f"u{i:05d}" for i in range(USERS)], dtype=object)
    items = np.array([f"i{i:04d}" for i in range(ITEMS)], dtype=object)
    colors = np.array(["red", "green", "blue"], dtype=object)
    price = np.round(rng.uniform(1, 100, EVENTS), 2)
    table = pa.table(
        {
            "user_id": pa.array(users[rng.integers(0, USERS, EVENTS)]),
            "item_id": pa.array(items[rng.integers(0, ITEMS, EVENTS)]),
            "price": pa.array(price, mask=rng.random(EVENTS) < 0.05),
            "qty": pa.array(rng.integers(0, 6, EVENTS)),
            "color": pa.array(colors[rng.integers(0, 3, EVENTS)]),
            "ts": pa.array(ts),
        }
    )
    day_of = (ts - START_MS) // DAY_MS
    for day in range(DAYS):
        folder = repo / "warehouse" / "bench" / "events" / f"ds={ds_of_day(day)}"
        folder.mkdir(parents=True)
        pq.write_table(table.filter(pa.array(day_of == day)), folder / "part-0.parquet")
    (repo / ".complete").write_text("")


def left_rows(rows: int, seed: int) -> pa.Table:
    """``rows`` fetches of the check day: random keys (a few unknown users), random times."""
    rng = np.random.default_rng(seed + 1)
    day_start = START_MS + (DAYS - 1) * DAY_MS
    users = np.array([f"u{i:05d}" for i in range(int(USERS * 1.05))], dtype=object)
    items = np.array([f"i{i:04d}" for i in range(ITEMS)], dtype=object)
    return pa.table(
        {
            "user": pa.array(users[rng.integers(0, len(users), rows)]),
            "item": pa.array(items[rng.integers(0, ITEMS, rows)]),
            "ts": pa.array(rng.integers(day_start, day_start + DAY_MS, rows)),
        }
    )


def write_log(project: Any, offline: pa.Table) -> None:
    """The fetch log of the check day, as a consistent server would have written it."""
    from gnomon.monitoring.fetch_log import LOG_SCHEMA, join_fingerprint, log_table

    features = [c for c in offline.column_names if c not in ("user", "item", "ts")]
    con = duckdb.connect()
    con.register("offline", offline)
    packed = ", ".join(f'"{c}" := "{c}"' for c in features)
    texts = con.sql(
        'SELECT ts, to_json(struct_pack(item := item, "user" := "user"))::VARCHAR AS keys, '
        f"to_json(struct_pack({packed}))::VARCHAR AS features FROM offline"
    ).to_arrow_table()
    con.close()
    count = texts.num_rows
    log = pa.table(
        {
            "ts": texts["ts"],
            "keys": texts["keys"],
            "status": pa.array(["Success"] * count),
            "features": texts["features"],
            "fetched_at": texts["ts"],
            "join_fingerprint": pa.array([join_fingerprint(project.plan, JOIN)] * count),
        },
        schema=LOG_SCHEMA,
    )
    folder = project.warehouse.table_path(log_table(JOIN)) / f"ds={CHECK_DS}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    step = -(-count // LOG_FILES)
    for index in range(LOG_FILES):
        pq.write_table(log.slice(index * step, step), folder / f"part-{index:03d}.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="Logged fetches to check.")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from gnomon import Project
    from gnomon.monitoring.consistency import check_consistency

    repo = DATA_DIR / f"repo-{EVENTS}-{args.seed}"
    started = time.perf_counter()
    build_repo(repo, args.seed)
    project = Project(repo)
    left = left_rows(args.rows, args.seed)
    write_log(project, project.training_data(JOIN, left))
    print(f"setup (warehouse, log of {args.rows:,} rows): {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    plain = project.training_data(JOIN, left)
    plain_s = time.perf_counter() - started
    print(f"training_data over the same rows: {plain_s:.1f} s ({plain.num_rows:,} rows)")

    inner: list[float] = []
    training_data = project.training_data

    def timed_training_data(join: str, rows: Any) -> pa.Table:  # the job's own offline run, timed
        begun = time.perf_counter()
        try:
            return training_data(join, rows)
        finally:
            inner.append(time.perf_counter() - begun)

    project.training_data = timed_training_data  # type: ignore[method-assign]
    started = time.perf_counter()
    report = check_consistency(project, JOIN, CHECK_DS)
    job_s = time.perf_counter() - started
    own_s = job_s - sum(inner)
    print(
        f"consistency job: {job_s:.1f} s ({report.rows_compared:,} rows x {len(report.features)} features "
        f"compared, {report.mismatches} mismatches)"
    )
    print(
        f"  of which its training_data: {sum(inner):.1f} s; reading the log, parsing the JSON, comparing "
        f"and writing: {own_s:.1f} s"
    )
    print(f"job / plain training_data: {job_s / plain_s:.2f}x")
    print(
        json.dumps(
            {
                "rows": args.rows,
                "training_data_s": round(plain_s, 2),
                "consistency_s": round(job_s, 2),
                "consistency_own_s": round(own_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
