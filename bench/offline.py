#!/usr/bin/env python
"""Offline benchmark: Join backfills of 1,000,000 left rows over 10M events, and over an entity.

Three cases (``--case events|entity|incremental|all``, default all):

- **events**: 1,000,000 left rows over 10,000,000 events (90 daily partitions), two TEMPORAL
  GroupBys and nine features;
- **entity**: 1,000,000 left rows (100,000 a day over 10 days) joined to a TEMPORAL GroupBy over an
  ``EntitySource`` with mutations: 10 daily snapshots of ~100,000 ratings (20,000 items x ~5) and 10
  mutation partitions of 100,000 rows (a quarter inserts, half update pairs, a quarter deletes;
  snapshot D is snapshot D-1 replayed with the mutations of D): 1,000,000 snapshot rows and
  1,000,000 mutation rows read; AVERAGE 90d, SUM 30d, COUNT 30d, MAX 90d, LAST 90d and
  APPROX_UNIQUE_COUNT 90d of the raters (``--entity-unique exact|none`` to change the last).

- **incremental**: one partition of a GroupBy keyed by item over the events case's 8,000,000 views
  (COUNT 1d/7d, SUM 30d, AVERAGE 90d, MAX 90d, APPROX_UNIQUE_COUNT 30d) with daily IR tables
  (``offline: {incremental: true}``): the day after a run, against full recomputes of the same day
  (the IR tables from scratch, and the SQL path), checking the incremental partition's Parquet bytes
  equal the IR recompute's.

Each generates a synthetic Parquet warehouse (cached under ``bench/.data/``), then, each in a fresh
subprocess so that peak memory is the job's own:

1. **baseline** - DuckDB reads the same inputs the backfill reads (the partitions of every table it
   reads) and sorts each by (key, time);
2. **backfill** - ``gnomon.Project.backfill(join, start, end, force=True)`` on the DuckDB engine.

It does both at the requested size and at half of it, and prints wall time, peak RSS and the
ratio to the baseline of the same run against the targets (<= 60 s, <= 4 GB, <= 5x baseline on a
2-core machine), plus the growth factor full/half (linear cost => ~2.0). The default run (both
cases, full and half, one run each) takes ~5-8 minutes on a 2-core machine once the data is cached.

    python bench/offline.py                          # both cases, target size and half
    python bench/offline.py --case entity --repeat 2 # the entity case, each measurement twice
    python bench/offline.py --scale 0.05             # a quick smoke run
    python bench/offline.py --skip-half --profile    # cProfile of the backfill child
    python bench/offline.py --case entity --skip-half --explain   # DuckDB's operator timings per statement

Run from the repo root with the venv active; ``src/`` is put on the path automatically.
This is a benchmark, not a test: it never fails the build, it reports.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SRC_DIR = REPO_DIR / "src"
DATA_DIR = BENCH_DIR / ".data"
DATA_VERSION = 1  # bump when the generator changes, so cached data is regenerated

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000

# ---- the shape of the synthetic warehouse, at scale 1.0 -----------------------------------------
FULL_LEFT_ROWS = 1_000_000
FULL_EVENTS = 10_000_000
VIEW_SHARE = 0.8  # views are 80% of the events, ratings the rest
FULL_USERS = 200_000
FULL_ITEMS = 20_000
DAYS = 90  # event partitions
LEFT_DAYS = 7  # watches (left rows) fall in the last LEFT_DAYS days; the backfill covers them
FIRST_DS = "2026-01-01"
CATEGORIES = ["books", "music", "movies", "games", "garden", "kitchen", "sports", "toys"]
USER_ZIPF = 0.5  # user activity ~ 1 / rank^0.5
ITEM_ZIPF = 0.5  # item popularity ~ 1 / rank^0.5
FOLLOW_SHARE = 0.5  # share of watches that follow one of the user's views within ~20 minutes
NULL_CATEGORY_SHARE = 0.01

JOIN_NAME = "bench.watch_training"

TARGET_WALL_S = 60.0
TARGET_PEAK_GB = 4.0
TARGET_RATIO = 5.0


def ds_of(ms: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=ms // DAY_MS)).isoformat()


def ms_of(ds: str) -> int:
    return (dt.date.fromisoformat(ds) - dt.date(1970, 1, 1)).days * DAY_MS


def sizes(scale: float) -> dict[str, int]:
    events = max(1000, round(FULL_EVENTS * scale))
    views = round(events * VIEW_SHARE)
    return {
        "left": max(100, round(FULL_LEFT_ROWS * scale)),
        "events": events,
        "views": views,
        "ratings": events - views,
        "users": max(100, round(FULL_USERS * scale)),
        "items": max(50, round(FULL_ITEMS * scale)),
    }


# ================================================================== data generation


def data_dir(scale: float, seed: int) -> Path:
    return DATA_DIR / f"v{DATA_VERSION}_scale{scale:g}_seed{seed}"


def ensure_data(scale: float, seed: int) -> tuple[Path, dict[str, Any]]:
    """The repo folder for this size (gnomon.yaml + warehouse/), generating it once."""
    root = data_dir(scale, seed)
    marker = root / "generated.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        print(f"  data: cached {root.relative_to(REPO_DIR)}", flush=True)
        return root, info
    if root.exists():
        shutil.rmtree(root)
    started = time.monotonic()
    info = generate(root / "warehouse", scale, seed)
    info["generate_s"] = round(time.monotonic() - started, 1)
    marker.write_text(json.dumps(info, indent=1))
    print(f"  data: generated {root.relative_to(REPO_DIR)} in {info['generate_s']} s", flush=True)
    return root, info


def _zipf(n: int, exponent: float, rng: Any) -> Any:
    import numpy as np

    weights = 1.0 / np.arange(1, n + 1) ** exponent
    rng.shuffle(weights)  # popular ids are spread over the id space (and the hash shards)
    return weights / weights.sum()


def _times(rng: Any, n: int, first_day_ms: int, days: int) -> Any:
    """Epoch ms with a day/night pattern: busier in the (UTC) evening."""
    import numpy as np

    hour_weights = 1.0 + 0.8 * np.sin((np.arange(24) - 13) / 24 * 2 * np.pi)
    hour_weights /= hour_weights.sum()
    day = rng.integers(0, days, size=n, dtype=np.int64)
    hour = rng.choice(24, size=n, p=hour_weights).astype(np.int64)
    within = rng.integers(0, HOUR_MS, size=n, dtype=np.int64)
    return first_day_ms + day * DAY_MS + hour * HOUR_MS + within


def _write_partitioned(warehouse: Path, table: str, columns: dict[str, Any], ids: dict[str, Any]) -> int:
    """Sort by ts, split by UTC date, one Parquet file per ``ds`` partition."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    order = np.argsort(columns["ts"], kind="stable")
    columns = {name: values[order] for name, values in columns.items()}
    day = columns["ts"] // DAY_MS
    first, last = int(day[0]), int(day[-1])
    bounds = np.searchsorted(day, np.arange(first, last + 2))
    namespace, name = table.split(".")
    for index, d in enumerate(range(first, last + 1)):
        lo, hi = bounds[index], bounds[index + 1]
        if lo == hi:
            continue
        arrays = {}
        for column, values in columns.items():
            piece = values[lo:hi]
            if column in ids:  # integer codes -> the id strings (nulls: code -1)
                codes = pa.array(piece, mask=piece < 0)
                arrays[column] = ids[column].take(codes)
            elif piece.dtype.kind == "f":
                arrays[column] = pa.array(piece, mask=np.isnan(piece))
            else:
                arrays[column] = pa.array(piece)
        folder = warehouse / namespace / name / f"ds={ds_of(d * DAY_MS)}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(arrays), folder / "part-0.parquet")
    return len(columns["ts"])


def generate(warehouse: Path, scale: float, seed: int) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa

    n = sizes(scale)
    rng = np.random.default_rng(seed)
    start_ms = ms_of(FIRST_DS)
    end_ms = start_ms + DAYS * DAY_MS
    left_start_ms = end_ms - LEFT_DAYS * DAY_MS
    user_w = _zipf(n["users"], USER_ZIPF, rng)
    item_w = _zipf(n["items"], ITEM_ZIPF, rng)
    item_category = rng.integers(0, len(CATEGORIES), size=n["items"])
    item_price = np.round(np.exp(rng.normal(3.0, 0.8, size=n["items"])), 2)
    item_quality = rng.normal(3.6, 0.7, size=n["items"])
    user_ids = pa.array([f"u{i:07d}" for i in range(n["users"])], pa.string())
    item_ids = pa.array([f"i{i:06d}" for i in range(n["items"])], pa.string())
    category_ids = pa.array(CATEGORIES, pa.string())

    # views: who looked at what, when, at which price
    v_user = rng.choice(n["users"], size=n["views"], p=user_w)
    v_item = rng.choice(n["items"], size=n["views"], p=item_w)
    v_ts = _times(rng, n["views"], start_ms, DAYS)
    v_category = item_category[v_item].copy()
    v_category[rng.random(n["views"]) < NULL_CATEGORY_SHARE] = -1
    v_price = np.round(item_price[v_item] * rng.uniform(0.9, 1.1, size=n["views"]), 2)

    # ratings of items
    r_item = rng.choice(n["items"], size=n["ratings"], p=item_w)
    r_ts = _times(rng, n["ratings"], start_ms, DAYS)
    r_rating = np.clip(np.round(item_quality[r_item] + rng.normal(0, 1.0, size=n["ratings"])), 1, 5)

    # watches (the left rows): half follow one of the user's recent views, half are cold starts
    n_follow = round(n["left"] * FOLLOW_SHARE)
    recent = np.flatnonzero(v_ts >= left_start_ms)
    picked = recent[rng.integers(0, len(recent), size=n_follow)]
    follow_ts = v_ts[picked] + rng.exponential(20 * MINUTE_MS, size=n_follow).astype(np.int64) + 1
    n_cold = n["left"] - n_follow
    w_user = np.concatenate([v_user[picked], rng.choice(n["users"], size=n_cold, p=user_w)])
    w_item = np.concatenate([v_item[picked], rng.choice(n["items"], size=n_cold, p=item_w)])
    w_ts = np.minimum(np.concatenate([follow_ts, _times(rng, n_cold, left_start_ms, LEFT_DAYS)]), end_ms - 1)

    # how many (left row, event) pairs share a key: what a plain range join over 90 days touches
    pairs_user = int(
        np.dot(
            np.bincount(v_user, minlength=n["users"]).astype(np.float64),
            np.bincount(w_user, minlength=n["users"]),
        )
    )
    pairs_item = int(
        np.dot(
            np.bincount(r_item, minlength=n["items"]).astype(np.float64),
            np.bincount(w_item, minlength=n["items"]),
        )
    )

    ids = {"user_id": user_ids, "item_id": item_ids, "category": category_ids}
    rows = {
        "bench.views": _write_partitioned(
            warehouse,
            "bench.views",
            {"user_id": v_user, "item_id": v_item, "category": v_category, "price": v_price, "ts": v_ts},
            ids,
        ),
        "bench.ratings": _write_partitioned(
            warehouse, "bench.ratings", {"item_id": r_item, "rating": r_rating, "ts": r_ts}, ids
        ),
        "bench.watches": _write_partitioned(
            warehouse, "bench.watches", {"user_id": w_user, "item_id": w_item, "ts": w_ts}, ids
        ),
    }
    return {
        "scale": scale,
        "seed": seed,
        "sizes": n,
        "rows": rows,
        "distinct_users_viewing": int(len(np.unique(v_user))),
        "distinct_items_rated": int(len(np.unique(r_item))),
        "key_pairs_user": pairs_user,
        "key_pairs_item": pairs_item,
        "backfill_start": ds_of(left_start_ms),
        "backfill_end": ds_of(end_ms - 1),
        "first_ds": FIRST_DS,
        "last_ds": ds_of(end_ms - 1),
    }


def write_config(
    root: Path, threads: int, memory_limit: str | None, shards: int, incremental: bool = False
) -> None:
    lines = [
        "project: gnomon_bench",
        "warehouse: ./warehouse",
        "offline:",
        "  engine: duckdb",
        f"  threads: {threads}",
        f"  shards: {shards}",
    ]
    if incremental:
        lines.append("  incremental: true")
    if memory_limit:
        lines.append(f"  memory_limit: {memory_limit}")
    (root / "gnomon.yaml").write_text("\n".join(lines) + "\n")


# ================================================================== the entity case: data

# An EntitySource (a ratings table changed in place) joined to events, with these sizes at scale 1.0:
# ENTITY_DAYS snapshots of ~ENTITY_SNAPSHOT_ROWS rows each (D0..D9), ENTITY_DAYS mutation partitions
# of ENTITY_MUTATION_ROWS rows each (D1..D10: inserts, update pairs, deletes), and ENTITY_LEFT_ROWS
# left rows a day (D1..D10). A left row on day D reads snapshot D-1 and the mutations of D before it.
ENTITY_DATA_VERSION = 1
ENTITY_DAYS = 10
ENTITY_FIRST_DS = "2026-03-01"  # snapshot D0; left rows and mutations on D1..D10
ENTITY_SNAPSHOT_ROWS = 100_000  # per snapshot (inserts = deletes keep it steady)
ENTITY_MUTATION_ROWS = 100_000  # per day: 1/4 inserts, 1/2 update pairs (before + after), 1/4 deletes
ENTITY_LEFT_ROWS = 100_000  # per day
ENTITY_ITEMS = 20_000  # ~5 ratings per item in a snapshot
ENTITY_USERS = 200_000
ENTITY_HISTORY_DAYS = 120  # the initial ratings' ts spread over the 120 days before D0's end
ENTITY_JOIN = "bench.entity_training"
ENTITY_TABLES = {
    "snapshots": "bench.ratings_snapshots",
    "mutations": "bench.ratings_mutations",
    "left": "bench.item_views",
}


def entity_sizes(scale: float) -> dict[str, int]:
    mutations = max(40, round(ENTITY_MUTATION_ROWS * scale))
    per_kind = mutations // 4  # inserts = deletes = update pairs = mutations / 4
    return {
        "snapshot_per_day": max(100, round(ENTITY_SNAPSHOT_ROWS * scale)),
        "mutations_per_day": 4 * per_kind,
        "per_kind": per_kind,
        "left_per_day": max(100, round(ENTITY_LEFT_ROWS * scale)),
        "items": max(50, round(ENTITY_ITEMS * scale)),
        "users": max(100, round(ENTITY_USERS * scale)),
        "days": ENTITY_DAYS,
    }


def entity_data_dir(scale: float, seed: int) -> Path:
    return DATA_DIR / f"entity_v{ENTITY_DATA_VERSION}_scale{scale:g}_seed{seed}"


def ensure_entity_data(scale: float, seed: int) -> tuple[Path, dict[str, Any]]:
    root = entity_data_dir(scale, seed)
    marker = root / "generated.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        print(f"  data: cached {root.relative_to(REPO_DIR)}", flush=True)
        return root, info
    if root.exists():
        shutil.rmtree(root)
    started = time.monotonic()
    info = generate_entity(root / "warehouse", scale, seed)
    info["generate_s"] = round(time.monotonic() - started, 1)
    marker.write_text(json.dumps(info, indent=1))
    print(f"  data: generated {root.relative_to(REPO_DIR)} in {info['generate_s']} s", flush=True)
    return root, info


def _write_partition(
    warehouse: Path, table: str, ds: str, columns: dict[str, Any], ids: dict[str, Any]
) -> int:
    """One Parquet file for partition ``ds`` of ``table``, in the given row order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for column, values in columns.items():
        if column in ids:  # integer codes -> the id strings
            arrays[column] = ids[column].take(pa.array(values))
        else:
            arrays[column] = pa.array(values)
    namespace, name = table.split(".")
    folder = warehouse / namespace / name / f"ds={ds}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(arrays), folder / "part-0.parquet")
    return len(next(iter(columns.values())))


def generate_entity(warehouse: Path, scale: float, seed: int) -> dict[str, Any]:
    """Snapshots D0..D9, mutations D1..D10 and left rows D1..D10, column-wise with numpy.

    Each day's mutations touch distinct rows of the previous snapshot (updates and deletes) and add
    new ones (inserts); an update's after row gets a new rating and ``ts`` = its mutation time (the
    rating was changed then), an insert's ``ts`` is its mutation time. Snapshot D is snapshot D-1
    replayed with the mutations of D: the surviving rows in their order, then the new rows in
    mutation order. Mutation rows are written sorted by (mutation_ts, before rows first)."""
    import numpy as np
    import pyarrow as pa

    n = entity_sizes(scale)
    rng = np.random.default_rng(seed)
    d0_ms = ms_of(ENTITY_FIRST_DS)
    item_w = _zipf(n["items"], ITEM_ZIPF, rng)
    user_w = _zipf(n["users"], USER_ZIPF, rng)
    quality = rng.normal(3.6, 0.7, size=n["items"])
    ids = {
        "item_id": pa.array([f"i{i:06d}" for i in range(n["items"])], pa.string()),
        "user_id": pa.array([f"u{i:07d}" for i in range(n["users"])], pa.string()),
    }
    snapshots, mutations = ENTITY_TABLES["snapshots"], ENTITY_TABLES["mutations"]

    def ratings_of(items: Any) -> Any:
        return np.clip(np.round(quality[items] + rng.normal(0, 1.0, size=len(items))), 1, 5)

    # the table at the end of D0: rating_id, item_id, user_id, rating, ts
    size = n["snapshot_per_day"]
    item = rng.choice(n["items"], size=size, p=item_w)
    state = {
        "rating_id": np.arange(size, dtype=np.int64),
        "item_id": item,
        "user_id": rng.choice(n["users"], size=size, p=user_w),
        "rating": ratings_of(item),
        "ts": d0_ms + DAY_MS - 1 - rng.integers(0, ENTITY_HISTORY_DAYS * DAY_MS, size=size, dtype=np.int64),
    }
    next_id = size
    rows = {"snapshots": 0, "mutations": 0, "left": 0}
    rows["snapshots"] += _write_partition(warehouse, snapshots, ENTITY_FIRST_DS, state, ids)
    kinds = {"inserts": 0, "update_pairs": 0, "deletes": 0}
    k = n["per_kind"]
    for day in range(1, ENTITY_DAYS + 1):
        day_ms = d0_ms + day * DAY_MS
        alive = len(state["rating_id"])
        touched = rng.choice(alive, size=2 * k, replace=False)  # distinct rows: k updated, k deleted
        updated, deleted = touched[:k], touched[k:]
        update_ts = rng.integers(day_ms, day_ms + DAY_MS, size=k, dtype=np.int64)
        delete_ts = rng.integers(day_ms, day_ms + DAY_MS, size=k, dtype=np.int64)
        insert_ts = rng.integers(day_ms, day_ms + DAY_MS, size=k, dtype=np.int64)
        new_item = rng.choice(n["items"], size=k, p=item_w)
        after = {
            "rating_id": state["rating_id"][updated],
            "item_id": state["item_id"][updated],
            "user_id": state["user_id"][updated],
            "rating": ratings_of(state["item_id"][updated]),
            "ts": update_ts,
        }
        inserted = {
            "rating_id": np.arange(next_id, next_id + k, dtype=np.int64),
            "item_id": new_item,
            "user_id": rng.choice(n["users"], size=k, p=user_w),
            "rating": ratings_of(new_item),
            "ts": insert_ts,
        }
        next_id += k
        pieces = [  # (row columns, mutation_ts, is_before)
            ({c: v[updated] for c, v in state.items()}, update_ts, True),
            (after, update_ts, False),
            ({c: v[deleted] for c, v in state.items()}, delete_ts, True),
            (inserted, insert_ts, False),
        ]
        change = {c: np.concatenate([p[0][c] for p in pieces]) for c in state}
        change["mutation_ts"] = np.concatenate([p[1] for p in pieces])
        change["is_before"] = np.concatenate([np.full(len(p[1]), p[2]) for p in pieces])
        order = np.lexsort((~change["is_before"], change["mutation_ts"]))  # by time, before rows first
        change = {c: v[order] for c, v in change.items()}
        rows["mutations"] += _write_partition(warehouse, mutations, ds_of(day_ms), change, ids)
        kinds["inserts"] += k
        kinds["update_pairs"] += k
        kinds["deletes"] += k
        # the table at the end of the day: survivors, then the new rows in mutation order
        keep = np.ones(alive, dtype=bool)
        keep[touched] = False
        new_rows = ~change["is_before"]
        state = {c: np.concatenate([state[c][keep], change[c][new_rows]]) for c in state}
        if day < ENTITY_DAYS:  # the last day's snapshot is not read by the backfill
            rows["snapshots"] += _write_partition(warehouse, snapshots, ds_of(day_ms), state, ids)
        # the left rows of the day: item views, busier in the evening
        left = n["left_per_day"]
        ts = np.sort(_times(rng, left, day_ms, 1))
        rows["left"] += _write_partition(
            warehouse,
            ENTITY_TABLES["left"],
            ds_of(day_ms),
            {
                "user_id": rng.choice(n["users"], size=left, p=user_w),
                "item_id": rng.choice(n["items"], size=left, p=item_w),
                "ts": ts,
            },
            ids,
        )
    first_left = ds_of(d0_ms + DAY_MS)
    last_left = ds_of(d0_ms + ENTITY_DAYS * DAY_MS)
    return {
        "case": "entity",
        "scale": scale,
        "seed": seed,
        "sizes": n,
        "rows": rows,
        "mutation_kinds": kinds,
        "snapshot_days": [ENTITY_FIRST_DS, ds_of(d0_ms + (ENTITY_DAYS - 1) * DAY_MS)],
        "mutation_days": [first_left, last_left],
        "backfill_start": first_left,
        "backfill_end": last_left,
    }


# ================================================================== the definitions


def unique_op_available() -> bool:
    """APPROX_UNIQUE_COUNT is folded by ``gnomon.aggregation.make_aggregator`` (the IR library)."""
    try:
        from gnomon.aggregation import make_aggregator  # noqa: F401
    except ImportError:
        return False
    return True


def definitions(exact_unique: bool) -> dict[str, Any]:
    from gnomon import Accuracy, Aggregation, EventSource, GroupBy, Join, JoinPart, Operation, Query

    views = EventSource(
        table="bench.views",
        query=Query(
            selects={"user": "user_id", "item": "item_id", "category": "category", "price": "price"},
            time_column="ts",
        ),
    )
    ratings = EventSource(
        table="bench.ratings", query=Query(selects={"item": "item_id", "rating": "rating"}, time_column="ts")
    )
    unique = Operation.UNIQUE_COUNT if exact_unique else Operation.APPROX_UNIQUE_COUNT
    user_views = GroupBy(
        name="bench.user_views",
        sources=[views],
        keys=["user"],
        accuracy=Accuracy.TEMPORAL,
        aggregations=[
            Aggregation("item", Operation.COUNT, windows=["5h"]),
            Aggregation("price", Operation.MAX, windows=["12h"]),
            Aggregation("item", Operation.LAST_K(3), windows=["1d"]),
            Aggregation("item", unique, windows=["30d"]),
            Aggregation("price", Operation.SUM, windows=["1d"], buckets=["category"]),
            Aggregation("price", Operation.AVERAGE, windows=["90d"]),
        ],
    )
    item_ratings = GroupBy(
        name="bench.item_ratings",
        sources=[ratings],
        keys=["item"],
        accuracy=Accuracy.TEMPORAL,
        aggregations=[
            Aggregation("rating", Operation.AVERAGE, windows=["90d"]),
            Aggregation("rating", Operation.COUNT, windows=["5h"]),
            Aggregation("rating", Operation.VARIANCE, windows=["30d"]),
        ],
    )
    watches = EventSource(
        table="bench.watches", query=Query(selects={"user": "user_id", "item": "item_id"}, time_column="ts")
    )
    join = Join(
        name=JOIN_NAME,
        left=watches,
        right_parts=[JoinPart(group_by=user_views), JoinPart(group_by=item_ratings)],
    )
    return {"bench.user_views": user_views, "bench.item_ratings": item_ratings, JOIN_NAME: join}


INCREMENTAL_GROUP_BY = "bench.item_views_daily"


def incremental_definitions() -> dict[str, Any]:
    """The incremental case: a GroupBy of item views (20,000 items over 8,000,000 views in 90 days),
    whose daily backfill reads 91 days of views on the SQL path and one day with daily IR tables."""
    from gnomon import Aggregation, EventSource, GroupBy, Operation, Query

    views = EventSource(
        table="bench.views",
        query=Query(selects={"user": "user_id", "item": "item_id", "price": "price"}, time_column="ts"),
    )
    group_by = GroupBy(
        name=INCREMENTAL_GROUP_BY,
        sources=[views],
        keys=["item"],
        aggregations=[
            Aggregation("user", Operation.COUNT, windows=["1d", "7d"]),
            Aggregation("price", Operation.SUM, windows=["30d"]),
            Aggregation("price", Operation.AVERAGE, windows=["90d"]),
            Aggregation("price", Operation.MAX, windows=["90d"]),
            Aggregation("user", Operation.APPROX_UNIQUE_COUNT, windows=["30d"]),
        ],
    )
    return {INCREMENTAL_GROUP_BY: group_by}


def entity_definitions(unique: str) -> dict[str, Any]:
    """An item's ratings (an EntitySource with mutations) joined to item views.

    ``unique``: "approx" (APPROX_UNIQUE_COUNT of the raters, folded by the IR), "exact"
    (UNIQUE_COUNT, SQL) or "none" (left out)."""
    from gnomon import (
        Accuracy,
        Aggregation,
        EntitySource,
        EventSource,
        GroupBy,
        Join,
        JoinPart,
        Operation,
        Query,
    )

    ratings = EntitySource(
        snapshot_table=ENTITY_TABLES["snapshots"],
        mutation_table=ENTITY_TABLES["mutations"],
        query=Query(selects={"item": "item_id", "user": "user_id", "rating": "rating"}, time_column="ts"),
    )
    aggregations = [
        Aggregation("rating", Operation.AVERAGE, windows=["90d"]),
        Aggregation("rating", Operation.SUM, windows=["30d"]),
        Aggregation("rating", Operation.COUNT, windows=["30d"]),
        Aggregation("rating", Operation.MAX, windows=["90d"]),
        Aggregation("rating", Operation.LAST, windows=["90d"]),
    ]
    if unique != "none":
        operation = Operation.APPROX_UNIQUE_COUNT if unique == "approx" else Operation.UNIQUE_COUNT
        aggregations.append(Aggregation("user", operation, windows=["90d"]))
    item_ratings = GroupBy(
        name="bench.entity_item_ratings",
        sources=[ratings],
        keys=["item"],
        accuracy=Accuracy.TEMPORAL,
        aggregations=aggregations,
    )
    views = EventSource(
        table=ENTITY_TABLES["left"],
        query=Query(selects={"user": "user_id", "item": "item_id"}, time_column="ts"),
    )
    join = Join(name=ENTITY_JOIN, left=views, right_parts=[JoinPart(group_by=item_ratings)])
    return {"bench.entity_item_ratings": item_ratings, ENTITY_JOIN: join}


def entity_input_files(root: Path, info: dict[str, Any]) -> dict[str, list[str]]:
    """The partitions the entity Join backfill reads: snapshots D0..D9, mutations and left rows D1..D10."""
    spans = {
        ENTITY_TABLES["snapshots"]: info["snapshot_days"],
        ENTITY_TABLES["mutations"]: info["mutation_days"],
        ENTITY_TABLES["left"]: [info["backfill_start"], info["backfill_end"]],
    }
    files = {}
    for table, (lo, hi) in spans.items():
        ns, name = table.split(".")
        folder = root / "warehouse" / ns / name
        files[table] = sorted(
            str(f)
            for part in sorted(folder.glob("ds=*"))
            if lo <= part.name[3:] <= hi
            for f in part.glob("*.parquet")
        )
    return files


# ================================================================== children (fresh processes)


def input_files(root: Path, info: dict[str, Any]) -> dict[str, list[str]]:
    """The partitions the Join backfill reads: left days, and 90d (+1 day) of history before them."""
    first = (dt.date.fromisoformat(info["backfill_start"]) - dt.timedelta(days=91)).isoformat()
    last = info["backfill_end"]
    files = {}
    for table, lo in (
        ("bench.views", first),
        ("bench.ratings", first),
        ("bench.watches", info["backfill_start"]),
    ):
        ns, name = table.split(".")
        folder = root / "warehouse" / ns / name
        files[table] = sorted(
            str(f)
            for part in sorted(folder.glob("ds=*"))
            if lo <= part.name[3:] <= last
            for f in part.glob("*.parquet")
        )
    return files


def child_baseline(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    import duckdb

    root = Path(args.data)
    info = json.loads((root / "generated.json").read_text())
    entity = args.case == "entity"
    files = entity_input_files(root, info) if entity else input_files(root, info)
    if args.case == "incremental":  # the views a full recompute of the last day reads (91 days)
        files = {
            "bench.views": input_files(root, {**info, "backfill_start": info["backfill_end"]})["bench.views"]
        }
    con = duckdb.connect()
    tmp = tempfile.TemporaryDirectory(prefix="gnomon-bench-")
    con.execute(f"SET temp_directory = '{tmp.name}'")
    con.execute(f"SET threads = {int(args.threads)}")
    if args.memory_limit:
        con.execute(f"SET memory_limit = '{args.memory_limit}'")
    sort_keys = {"bench.views": "user_id, ts", "bench.ratings": "item_id, ts", "bench.watches": "user_id, ts"}
    if args.case == "incremental":
        sort_keys = {"bench.views": "item_id, ts"}
    if entity:
        sort_keys = {
            ENTITY_TABLES["snapshots"]: "item_id, ts",
            ENTITY_TABLES["mutations"]: "item_id, mutation_ts",
            ENTITY_TABLES["left"]: "item_id, ts",
        }
    per_table = {}
    started = time.monotonic()
    for table, keys in sort_keys.items():
        t0 = time.monotonic()
        file_list = ", ".join(f"'{f}'" for f in files[table])
        name = table.replace(".", "_")
        # CREATE TABLE AS ... ORDER BY really sorts (an ORDER BY under count(*) would be optimised away)
        con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM read_parquet([{file_list}]) ORDER BY {keys}")
        rows = con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
        per_table[table] = {"s": round(time.monotonic() - t0, 3), "rows": rows, "files": len(files[table])}
        con.execute(f"DROP TABLE {name}")
    elapsed = time.monotonic() - started
    con.close()
    tmp.cleanup()
    return {"seconds": elapsed, "tables": per_table}


def top_operators(profile: dict[str, Any], limit: int = 6) -> list[dict[str, Any]]:
    """The operators of a DuckDB JSON profile with the most time (``timing``: the operator's own
    time summed over its threads), with their output rows and a short description."""
    found: list[dict[str, Any]] = []

    def walk(node: dict[str, Any], depth: int) -> None:
        extra = node.get("extra_info") or {}
        detail = "; ".join(
            f"{k}: {v}"
            for k, v in extra.items()
            if k not in ("Estimated Cardinality",) and not isinstance(v, (list, dict))
        )
        if isinstance(extra.get("Projections"), list):
            detail = f"{len(extra['Projections'])} projections; " + detail
        found.append(
            {
                "name": node.get("name", "?"),
                "s": float(node.get("timing") or 0.0),
                "rows": int(node.get("intermediate_rows") or node.get("operator_cardinality") or 0),
                "depth": depth,
                "detail": " ".join(detail.split())[:300],
            }
        )
        for child in node.get("children", []):
            walk(child, depth + 1)

    for root in profile.get("operator", profile.get("children", [])):
        walk(root, 0)
    total = sum(op["s"] for op in found)
    top = sorted(found, key=lambda op: -op["s"])[:limit]
    for op in top:
        op["share"] = op["s"] / total if total else 0.0
    return top


class Tracer:
    """Times the engine's steps by wrapping DuckDBEngine methods (src/ is not edited)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.context = ""
        self.explain = False  # --explain: DuckDB's profile (operator timings) of every materialized statement

    def install(self) -> None:
        from gnomon.offline.engines import duckdb as engine_module
        from gnomon.project import Project

        engine = engine_module.DuckDBEngine
        tracer = self
        original_materialize = engine._materialize
        original_fold = engine._fold_with_ir
        original_values_for = engine.values_for
        original_join_left = engine.join_left
        original_write = Project._write_all

        def materialize(self: Any, stem: str, sql: str, owner: str) -> str:
            if tracer.explain:
                self.con.execute("SET enable_profiling = 'no_output'")
                self.con.execute("SET profiling_mode = 'detailed'")
            t0 = time.monotonic()
            name = original_materialize(self, stem, sql, owner)
            elapsed = time.monotonic() - t0
            operators = None
            if tracer.explain:
                operators = top_operators(json.loads(self.con.get_profiling_information()))
                self.con.execute("PRAGMA disable_profiling")
            rows = self.con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
            tracer.records.append(
                {
                    "step": f"sql:{stem}",
                    "ctx": tracer.context,
                    "s": elapsed,
                    "rows": rows,
                    "sql": " ".join(sql.split()),
                    "operators": operators,
                }
            )
            return name

        def fold(self: Any, table: str, folded: list[Any]) -> str:
            t0 = time.monotonic()
            name = original_fold(self, table, folded)
            tracer.records.append(
                {
                    "step": "python:fold_with_ir",
                    "ctx": tracer.context,
                    "s": time.monotonic() - t0,
                    "rows": None,
                    "sql": "IR fold of " + ", ".join(f.name for f, _ in folded),
                }
            )
            return name

        def values_for(self: Any, group_by: Any, queries: str, strict: Any = ()) -> str:
            tracer.context = group_by.name
            try:
                return original_values_for(self, group_by, queries, strict)
            finally:
                tracer.context = "join"

        def join_left(self: Any, join: Any, left: str) -> Any:
            t0 = time.monotonic()
            marker = len(tracer.records)
            table = original_join_left(self, join, left)
            inner = sum(r["s"] for r in tracer.records[marker:])
            tracer.records.append(
                {
                    "step": "join:final select + to_arrow",
                    "ctx": "join",
                    "s": time.monotonic() - t0 - inner,
                    "rows": table.num_rows,
                    "sql": "",
                }
            )
            return table

        def write_all(self: Any, table: str, produced: Any) -> list[str]:
            t0 = time.monotonic()
            marker = len(tracer.records)
            written = original_write(self, table, produced)
            inner = sum(r["s"] for r in tracer.records[marker:])
            tracer.records.append(
                {
                    "step": "write partitions (parquet)",
                    "ctx": "project",
                    "s": time.monotonic() - t0 - inner,
                    "rows": None,
                    "sql": "",
                }
            )
            return written

        engine._materialize = materialize
        engine._fold_with_ir = fold
        engine.values_for = values_for
        engine.join_left = join_left
        Project._write_all = write_all


def child_backfill(args: argparse.Namespace) -> dict[str, Any]:
    import logging
    import resource

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="    [child %(relativeCreated)7.0f ms] %(name)s: %(message)s",
    )
    t_import = time.monotonic()
    import gnomon

    root = Path(args.data)
    info = json.loads((root / "generated.json").read_text())
    tracer = Tracer()
    tracer.install()
    entity = args.case == "entity"
    join_name = ENTITY_JOIN if entity else JOIN_NAME
    objects = entity_definitions(args.entity_unique) if entity else definitions(args.exact_unique)
    if args.explain:
        tracer.explain = True
    project = gnomon.Project(root, objects=objects)
    t_compile = time.monotonic()
    project.compile(write=False)
    compile_s = time.monotonic() - t_compile
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.monotonic()
    written = project.backfill(join_name, info["backfill_start"], info["backfill_end"], force=True)
    elapsed = time.monotonic() - started
    if profiler is not None:
        import io
        import pstats

        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        (root / "backfill.prof.txt").write_text(out.getvalue())
        profiler.dump_stats(str(root / "backfill.prof"))
    out_rows = project.warehouse.read_table(
        project.output_table(join_name), info["backfill_start"], info["backfill_end"]
    ).num_rows
    return {
        "seconds": elapsed,
        "compile_s": compile_s,
        "import_s": t_compile - t_import,
        "partitions": len(written),
        "output_rows": out_rows,
        "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "trace": tracer.records,
    }


def child_groupby(args: argparse.Namespace) -> dict[str, Any]:
    """One GroupBy backfill of day ``--day`` (``--wipe``: without the daily IR tables of earlier runs)."""
    import hashlib
    import resource

    import gnomon

    root = Path(args.data)
    project = gnomon.Project(root, objects=incremental_definitions())
    project.compile(write=False)
    table = project.output_table(INCREMENTAL_GROUP_BY)
    folder = project.warehouse.table_path(table)
    if args.wipe:
        shutil.rmtree(folder / ".ir", ignore_errors=True)
    started_wall = time.time()
    started = time.monotonic()
    project.backfill(INCREMENTAL_GROUP_BY, args.day, args.day, force=True)
    elapsed = time.monotonic() - started
    output = folder / f"ds={args.day}" / "part-0.parquet"
    computed = [p for p in (folder / ".ir").glob("*/ds=*") if p.stat().st_mtime >= started_wall]
    return {
        "seconds": elapsed,
        "rows": project.warehouse.read_table(table, args.day, args.day).num_rows,
        "sha256": hashlib.sha256(output.read_bytes()).hexdigest(),
        "tables_computed": len(computed),
        "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def run_incremental(label: str, scale: float, args: argparse.Namespace) -> dict[str, Any]:
    """The incremental case: a one-day GroupBy backfill from daily IR tables against full recomputes of
    the same day (with the IR tables computed from scratch, and on the SQL path), same data."""
    n = sizes(scale)
    print(
        f"\n[incremental {label}] scale {scale:g}: GroupBy {INCREMENTAL_GROUP_BY} keyed by item "
        f"(~{n['items']:,} items) over {n['views']:,} views in {DAYS} days; one day's partition",
        flush=True,
    )
    root, info = ensure_data(scale, args.seed)
    day = info["last_ds"]
    previous = (dt.date.fromisoformat(day) - dt.timedelta(days=1)).isoformat()
    runs: dict[str, dict[str, Any]] = {}
    print(
        "  baseline: DuckDB reads the 91 days of views a full recompute reads and sorts them by (item, ts) ..."
    )
    runs["baseline"] = run_child("baseline", root, args, "incremental")
    steps = [
        (
            "prepare",
            True,
            previous,
            True,
            f"daily IR tables from scratch, backfill {previous} (the day before)",
        ),
        ("incremental", True, day, False, f"incremental: backfill {day}, reading its one new day of views"),
        (
            "full_ir",
            True,
            day,
            True,
            f"full recompute of {day} with daily IR tables, every table from scratch",
        ),
        ("full_sql", False, day, False, f"full recompute of {day} on the SQL path (no IR tables)"),
    ]
    for name, incremental, target, wipe, text in steps:
        write_config(root, args.threads, args.memory_limit, args.shards, incremental=incremental)
        print(f"  {text} ...", flush=True)
        extra = ["--day", target] + (["--wipe"] if wipe else [])
        runs[name] = run_child("groupby", root, args, "incremental", extra)
        run = runs[name]
        if run["ok"]:
            print(
                f"    {run['seconds']:.2f} s, peak {fmt_gb(run['peak_gb'])} GB, {run['rows']:,} rows, "
                f"{run['tables_computed']} daily IR table(s) computed; {run['other']}",
                flush=True,
            )
        else:
            print(f"    FAILED: {run['error']}", flush=True)
    write_config(root, args.threads, args.memory_limit, args.shards)
    return {"label": label, "scale": scale, "runs": runs}


def print_incremental(results: list[dict[str, Any]]) -> None:
    print(
        "\nResults, incremental case (one GroupBy partition: the incremental run reads one day of views plus "
        "the daily IR tables;\n a full recompute reads 91 days; identical = the incremental partition's "
        "Parquet bytes equal the IR full recompute's)"
    )
    header = (
        f"  {'size':<5} {'baseline s':>10} {'incremental s':>13} {'full IR s':>9} {'full SQL s':>10} "
        f"{'vs full IR':>10} {'vs full SQL':>11} {'peak GB':>8} {'identical':>9}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for result in results:
        runs = result["runs"]
        inc, full_ir, full_sql, base = (
            runs[name]["seconds"] if runs[name].get("ok") else None
            for name in ("incremental", "full_ir", "full_sql", "baseline")
        )
        same = (
            runs["incremental"].get("sha256") == runs["full_ir"].get("sha256")
            if inc is not None and full_ir is not None
            else None
        )
        peak = max(r["peak_gb"] for k, r in runs.items() if k != "baseline" and r.get("ok"))

        def ratio(a: float | None, b: float | None) -> str:
            return f"{a / b:.2f}x" if a and b else "-"

        print(
            f"  {result['label']:<5} {base or float('nan'):>10.2f} {inc or float('nan'):>13.2f} "
            f"{full_ir or float('nan'):>9.2f} {full_sql or float('nan'):>10.2f} {ratio(inc, full_ir):>10} "
            f"{ratio(inc, full_sql):>11} {fmt_gb(peak):>8} {str(same):>9}"
        )


def _busy_seconds() -> float:
    """CPU seconds all CPUs spent busy (or stolen by the hypervisor) since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(x) for x in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _busy_names() -> list[str]:
    """The busiest other processes over the last second, by name (bench/_online_repo.py's table;
    entries above the core count are the CPU of reaped children landing at once, and are left out)."""
    import _online_repo as helpers

    _, busy = helpers.other_load(1.0)
    return [b for b in busy if int(b.split("%")[0]) <= 100 * (os.cpu_count() or 2)]


def settle(args: argparse.Namespace) -> None:
    """Wait up to ``--settle`` seconds while other processes keep the CPUs over half a core busy."""
    if args.settle <= 0:
        return
    deadline = time.monotonic() + args.settle
    waited = False
    while True:
        before, own, t0 = _busy_seconds(), _own_cpu_seconds(), time.monotonic()
        time.sleep(1.0)
        used = (_busy_seconds() - before - (_own_cpu_seconds() - own)) / (time.monotonic() - t0)
        if used < 0.5 or time.monotonic() >= deadline:
            break
        if not waited:
            print(
                f"    waiting up to {args.settle:.0f} s for other processes to calm down ({used:.2f} cores busy: "
                f"{'; '.join(_busy_names())})",
                flush=True,
            )
            waited = True
        time.sleep(3.0)


def run_child(
    kind: str, root: Path, args: argparse.Namespace, case: str = "events", extra: list[str] | None = None
) -> dict[str, Any]:
    """Run a measurement in a fresh interpreter; returns its result with wall time and peak RSS, and
    the CPU other processes used meanwhile (all CPUs' busy time minus this benchmark's own)."""
    settle(args)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--data",
        str(root),
        "--threads",
        str(args.threads),
        "--case",
        case,
        "--entity-unique",
        args.entity_unique,
    ]
    command += extra or []
    if args.explain and kind == "backfill":
        command.append("--explain")
    if args.memory_limit:
        command += ["--memory-limit", args.memory_limit]
    if args.exact_unique:
        command.append("--exact-unique")
    if args.profile and kind == "backfill":
        command.append("--profile")
    if args.verbose:
        command.append("--verbose")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC_DIR) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    busy_before, own_before = _busy_seconds(), _own_cpu_seconds()
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
    timed_out = False

    def on_timeout(*_: Any) -> None:
        nonlocal timed_out
        timed_out = True
        os.kill(process.pid, signal.SIGKILL)

    previous = signal.signal(signal.SIGALRM, on_timeout)
    signal.alarm(int(args.timeout))
    try:
        output = process.stdout.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    mine = usage.ru_utime + usage.ru_stime + _own_cpu_seconds() - own_before
    other_cores = max(0.0, (_busy_seconds() - busy_before - mine) / wall)
    result: dict[str, Any] = {
        "ok": False,
        "process_wall_s": wall,
        "peak_gb": usage.ru_maxrss / 1024**2,
        "returncode": process.returncode,
        "timed_out": timed_out,
        "other_cores": other_cores,
        "other": f"other processes used {other_cores:.2f} of {os.cpu_count()} cores meanwhile",
    }
    for line in output.splitlines():
        if line.startswith("@@RESULT "):
            result.update(json.loads(line[len("@@RESULT ") :]))
            result["ok"] = True
    if not result["ok"]:
        result["error"] = "timed out" if timed_out else f"exit code {process.returncode} (see stderr above)"
    return result


# ================================================================== report


def fmt_gb(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_trace(label: str, trace: list[dict[str, Any]], total: float, top: int) -> None:
    print(f"\n  Phase breakdown, {label} (backfill {total:.1f} s):")
    phases: dict[tuple[str, str], list[float]] = {}
    for record in trace:
        entry = phases.setdefault((record["ctx"], record["step"]), [0.0, 0])
        entry[0] += record["s"]
        entry[1] += 1
    accounted = sum(r["s"] for r in trace)
    print(f"    {'context':<22} {'step':<32} {'calls':>5} {'seconds':>9} {'share':>6}")
    for (ctx, step), (seconds, calls) in sorted(phases.items(), key=lambda kv: -kv[1][0]):
        print(f"    {ctx:<22} {step:<32} {calls:>5} {seconds:>9.2f} {seconds / total:>6.0%}")
    print(f"    {'(other: source scan setup, python glue)':<55} {total - accounted:>15.2f}")
    print(f"\n  Slowest statements, {label}:")
    for record in sorted(trace, key=lambda r: -r["s"])[:top]:
        rows = "" if record["rows"] is None else f"{record['rows']:,} rows"
        sql = record["sql"]
        shown = sql if len(sql) <= 420 else sql[:300] + " ... " + sql[-110:]
        print(f"    {record['s']:8.2f} s  {record['ctx']:<20} {record['step']:<22} {rows}")
        if shown:
            print(f"               {shown}")
        for op in record.get("operators") or []:
            print(
                f"               {'  ' * min(op['depth'], 8)}{op['name']:<22} {op['s']:7.2f} s thread-time "
                f"({op['share']:.0%}), {op['rows']:,} rows out  {op['detail'][:160]}"
            )


def run_one(case: str, label: str, scale: float, args: argparse.Namespace) -> dict[str, Any]:
    """Generate (or reuse) the data of one case and size; measure the baseline and the backfill
    ``--repeat`` times each, alternating, in fresh processes."""
    if case == "entity":
        n = entity_sizes(scale)
        print(
            f"\n[entity {label}] scale {scale:g}: {n['left_per_day'] * n['days']:,} left rows "
            f"({n['left_per_day']:,}/day x {n['days']} days) over an EntitySource of {n['days']} snapshots of "
            f"~{n['snapshot_per_day']:,} rows + {n['days']} mutation partitions of {n['mutations_per_day']:,} rows "
            f"(~{n['items']:,} items, ~{n['users']:,} users)",
            flush=True,
        )
        root, info = ensure_entity_data(scale, args.seed)
        join_name = ENTITY_JOIN
        kinds = info["mutation_kinds"]
        print(
            f"  data: snapshots {info['snapshot_days'][0]}..{info['snapshot_days'][1]} "
            f"({info['rows']['snapshots']:,} rows), mutations {info['mutation_days'][0]}..{info['mutation_days'][1]} "
            f"({info['rows']['mutations']:,} rows: {kinds['inserts']:,} inserts, {kinds['update_pairs']:,} update "
            f"pairs, {kinds['deletes']:,} deletes), left rows {info['rows']['left']:,}; features: "
            f"{'APPROX_UNIQUE_COUNT' if args.entity_unique == 'approx' else args.entity_unique.upper()} "
            "unique raters" + ("" if args.entity_unique != "none" else " (left out)"),
            flush=True,
        )
    else:
        n = sizes(scale)
        print(
            f"\n[events {label}] scale {scale:g}: {n['left']:,} left rows over {n['events']:,} events "
            f"({n['views']:,} views + {n['ratings']:,} ratings), ~{n['users']:,} users, ~{n['items']:,} items",
            flush=True,
        )
        root, info = ensure_data(scale, args.seed)
        join_name = JOIN_NAME
        print(
            f"  data: {DAYS} daily partitions {info['first_ds']}..{info['last_ds']}; left rows in "
            f"{info['backfill_start']}..{info['backfill_end']}; users with views {info['distinct_users_viewing']:,}, "
            f"items rated {info['distinct_items_rated']:,}; (left row, event) pairs sharing a key: "
            f"user {info['key_pairs_user']:,}, item {info['key_pairs_item']:,}",
            flush=True,
        )
    write_config(root, args.threads, args.memory_limit, args.shards)
    baselines, backfills = [], []
    for attempt in range(1, args.repeat + 1):
        tag = f" (run {attempt}/{args.repeat})" if args.repeat > 1 else ""
        print(
            f"  baseline{tag}: DuckDB reads the same partitions and sorts each table by (key, time) ...",
            flush=True,
        )
        baseline = run_child("baseline", root, args, case)
        if baseline["ok"]:
            per = ", ".join(f"{t} {v['rows']:,} rows {v['s']:.2f} s" for t, v in baseline["tables"].items())
            print(
                f"    {baseline['seconds']:.2f} s, peak {fmt_gb(baseline['peak_gb'])} GB  ({per}); "
                f"{baseline['other']}",
                flush=True,
            )
        else:
            print(f"    baseline FAILED: {baseline['error']}", flush=True)
        baselines.append(baseline)
        print(
            f"  backfill{tag}: project.backfill({join_name!r}, {info['backfill_start']!r}, {info['backfill_end']!r}, "
            "force=True) ...",
            flush=True,
        )
        load_before = os.getloadavg()[0]
        backfill = run_child("backfill", root, args, case)
        if backfill["ok"]:
            ratio = (
                f", {backfill['seconds'] / baseline['seconds']:.1f}x this run's baseline"
                if baseline["ok"]
                else ""
            )
            print(
                f"    {backfill['seconds']:.2f} s{ratio} (process {backfill['process_wall_s']:.1f} s incl. import "
                f"{backfill['import_s']:.1f} s and compile {backfill['compile_s']:.1f} s), peak "
                f"{fmt_gb(backfill['peak_gb'])} GB, {backfill['output_rows']:,} output rows in "
                f"{backfill['partitions']} partitions; load {load_before:.2f} -> {os.getloadavg()[0]:.2f}; "
                f"{backfill['other']}",
                flush=True,
            )
            if args.profile:
                print(f"    cProfile: {root / 'backfill.prof.txt'}")
        else:
            print(
                f"    backfill FAILED after {backfill['process_wall_s']:.1f} s (peak "
                f"{fmt_gb(backfill['peak_gb'])} GB): {backfill['error']}",
                flush=True,
            )
        backfills.append(backfill)
    left_rows = n["left_per_day"] * n["days"] if case == "entity" else n["left"]
    inputs = (info["rows"]["snapshots"] + info["rows"]["mutations"]) if case == "entity" else n["events"]
    return {
        "case": case,
        "label": label,
        "scale": scale,
        "left": left_rows,
        "inputs": inputs,
        "baselines": baselines,
        "backfills": backfills,
    }


def print_summary(case: str, results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    inputs = "snap+mut" if case == "entity" else "events"
    print(
        f"\nResults, {case} case (targets are for scale 1.0 on a 2-core machine: backfill <= 60 s wall, "
        "<= 4 GB peak, <= 5x baseline;\n the half row is held to half the wall target, i.e. linear growth; "
        "the ratio is each backfill over the baseline of the same run)"
    )
    header = (
        f"  {'size':<5} {'run':>3} {'left rows':>10} {inputs:>11} {'baseline s':>10} {'backfill s':>10} "
        f"{'ratio':>7} {'peak GB':>8}   {'<=60s':<6} {'<=4GB':<6} {'<=5x':<6} {'others (cores)':>15}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for result in results:
        for attempt, (baseline, backfill) in enumerate(
            zip(result["baselines"], result["backfills"], strict=True), 1
        ):
            b = baseline["seconds"] if baseline["ok"] else None
            f = backfill["seconds"] if backfill["ok"] else None
            ratio = f / b if (b and f) else None
            peak = backfill["peak_gb"]
            wall_target = TARGET_WALL_S * result["scale"]
            print(
                f"  {result['label']:<5} {attempt:>3} {result['left']:>10,} {result['inputs']:>11,} "
                f"{b if b is not None else float('nan'):>10.2f} {f if f is not None else float('nan'):>10.2f} "
                f"{(f'{ratio:.1f}x' if ratio else '-'):>7} {fmt_gb(peak):>8}   "
                f"{verdict(f is not None and f <= wall_target):<6} "
                f"{verdict(f is not None and peak <= TARGET_PEAK_GB):<6} "
                f"{verdict(ratio is not None and ratio <= TARGET_RATIO):<6} "
                f"{baseline.get('other_cores', float('nan')):>6.2f} / {backfill.get('other_cores', float('nan')):.2f}"
            )
    if args.scale != 1.0:
        print(
            f"  (scale {args.scale:g}: the 60 s target is scaled linearly to {TARGET_WALL_S * args.scale:.1f} s "
            "for the full row; 4 GB and 5x are not scaled)"
        )

    def best(runs: list[dict[str, Any]]) -> float | None:
        ok = [r["seconds"] for r in runs if r["ok"]]
        return min(ok) if ok else None

    if len(results) == 2:
        full, half = results
        fb, hb = best(full["backfills"]), best(half["backfills"])
        fa, ha = best(full["baselines"]), best(half["baselines"])
        peaks = [
            max(r["peak_gb"] for r in x["backfills"] if r["ok"])
            for x in results
            if any(r["ok"] for r in x["backfills"])
        ]
        if fb and hb and fa and ha:
            memory = f", peak memory x{peaks[0] / peaks[1]:.2f}" if len(peaks) == 2 else ""
            print(
                f"  growth full/half (best runs): backfill x{fb / hb:.2f}, baseline x{fa / ha:.2f}{memory}  "
                "(linear = x2.00)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--case",
        choices=["events", "entity", "incremental", "all"],
        default="all",
        help="events: 1M left rows over 10M events; entity: 1M left rows over an EntitySource of "
        "1M snapshot rows + 1M mutations; incremental: a one-day GroupBy backfill from daily IR tables "
        "against full recomputes; all (default): the three",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiplies every size (1.0 = the target sizes; 0.05 for a smoke run)",
    )
    parser.add_argument("--skip-half", action="store_true", help="do not run the half-size comparison")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure the baseline and the backfill this many times each, alternating (default 1)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 2,
        help="DuckDB threads for the baseline and the engine (default: all cores)",
    )
    # The defaults are the settings a user sets in gnomon.yaml to stay under the 4 GB target:
    # `offline: {shards: 2, memory_limit: 2GB}`. Pass --memory-limit none --shards 1 for DuckDB's own.
    parser.add_argument(
        "--memory-limit",
        default="2GB",
        help="DuckDB memory_limit for both (default 2GB; 'none' for DuckDB's own, 80%% of RAM)",
    )
    parser.add_argument("--shards", type=int, default=2, help="offline.shards for the engine (default 2)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--exact-unique",
        action="store_true",
        help="events case: UNIQUE_COUNT instead of APPROX_UNIQUE_COUNT (if the sketch IR is unavailable)",
    )
    parser.add_argument(
        "--entity-unique",
        choices=["approx", "exact", "none"],
        default="approx",
        help="entity case: the unique raters feature as APPROX_UNIQUE_COUNT (default), "
        "UNIQUE_COUNT, or left out",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the backfill under cProfile; stats go to <data>/backfill.prof(.txt)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="profile every statement the engine materializes with DuckDB's profiler (as EXPLAIN "
        "ANALYZE) and print the costliest operators of the slowest ones (slows the backfill)",
    )
    parser.add_argument("--verbose", action="store_true", help="show the engine's progress log lines")
    parser.add_argument("--top", type=int, default=8, help="how many of the slowest statements to print")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before a child is killed")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="before each measurement, wait up to this many seconds while other processes use "
        "more than half a core (default 0: do not wait; the CPU they used is printed anyway)",
    )
    parser.add_argument("--child", choices=["baseline", "backfill", "groupby"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--day", help=argparse.SUPPRESS)
    parser.add_argument("--wipe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_limit and args.memory_limit.lower() == "none":
        args.memory_limit = None

    if args.child:
        sys.path.insert(0, str(SRC_DIR))
        children = {"baseline": child_baseline, "backfill": child_backfill, "groupby": child_groupby}
        result = children[args.child](args)
        print("@@RESULT " + json.dumps(result), flush=True)
        return

    sys.path.insert(0, str(SRC_DIR))
    import duckdb

    notes = []
    cases = ["events", "entity", "incremental"] if args.case == "all" else [args.case]
    if not unique_op_available():
        if "events" in cases and not args.exact_unique:
            args.exact_unique = True
            notes.append(
                "APPROX_UNIQUE_COUNT needs gnomon.aggregation.make_aggregator, which is not importable; "
                "UNIQUE_COUNT (exact, SQL) is used instead - NOT the target feature set"
            )
        if "entity" in cases and args.entity_unique == "approx":
            args.entity_unique = "exact"
            notes.append("entity case: APPROX_UNIQUE_COUNT unavailable, UNIQUE_COUNT used instead")
    load_start = os.getloadavg()
    print(
        f"Gnomon offline benchmark - Join backfill ({', '.join(cases)}), {os.cpu_count()} cores, "
        f"DuckDB {duckdb.__version__}, threads={args.threads}, memory_limit={args.memory_limit or 'DuckDB default'}, "
        f"shards={args.shards}, {args.repeat} run(s) each"
    )
    print(
        f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} "
        "(other jobs on this machine skew the timings)"
    )
    if args.explain:
        print("NOTE: --explain profiles every statement; the backfill times include that overhead")
    for note in notes:
        print(f"WARNING: {note}")

    scales = [("full", args.scale)] + ([] if args.skip_half else [("half", args.scale / 2)])
    by_case = {
        case: [run_one(case, label, scale, args) for label, scale in scales]
        for case in cases
        if case != "incremental"
    }
    incremental = (
        [run_incremental(label, scale, args) for label, scale in scales] if "incremental" in cases else []
    )

    for case, results in by_case.items():
        print_summary(case, results, args)
    if incremental:
        print_incremental(incremental)
    load_end = os.getloadavg()
    print(f"  load average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    for note in notes:
        print(f"  WARNING: {note}")

    for case, results in by_case.items():
        for result in results:
            for attempt, backfill in enumerate(result["backfills"], 1):
                if backfill.get("trace"):
                    run = f" run {attempt}" if len(result["backfills"]) > 1 else ""
                    print_trace(
                        f"{case} {result['label']}{run}", backfill["trace"], backfill["seconds"], args.top
                    )


if __name__ == "__main__":
    main()
