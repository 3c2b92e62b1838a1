"""Deterministic sample warehouse for the example repo: views, ratings and watches over 30 days.

Everything is drawn from one seeded ``numpy.random.RandomState`` (whose stream numpy keeps stable
across releases, unlike ``Generator``'s) and written with fixed Parquet options, so the same seed
gives byte-identical files. The dates are fixed (2026-10-01 .. 2026-10-30), never "today", so the
commands and the numbers quoted in the docs stay true.

The ratings are a database table (an entity source), not an event log: an initial table of ratings
given before the month, then every day a change-data-capture stream of inserts (new ratings),
updates (a user changes a rating: the old and the new row at the same mutation time) and a few
deletes. ``item_info.ratings_mutations`` partition D holds the changes of day D, sorted by
(``mutation_ts``, ``is_before`` descending); ``item_info.ratings_snapshots`` partition D is the table
replayed to the end of D (an insert appends its row, a delete removes the first equal row), plus
partition ``FIRST_DS - 1`` holding the initial table, which the first day's values read.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gnomon.definitions.windows import DAY_MS, HOUR_MS, MINUTE_MS

FIRST_DS = "2026-10-01"
LAST_DS = "2026-10-30"
DAYS = 30
START_MS = int(dt.datetime.fromisoformat(FIRST_DS).replace(tzinfo=dt.UTC).timestamp() * 1000)
END_MS = START_MS + DAYS * DAY_MS

N_USERS = 300
N_ITEMS = 300
N_SESSIONS = 18_000  # about 3.3 events each: ~60k view rows
N_INITIAL_RATINGS = 3_000  # given over the INITIAL_DAYS before FIRST_DS
INITIAL_DAYS = 60
DAILY_NEW_RATINGS = 160  # Poisson means of the day's changes
DAILY_CHANGED_RATINGS = 20
DAILY_DELETED_RATINGS = 3
BOB_I001_RATING = 2  # Bob's own rating of i001, which the quickstart changes online
BOB_I001_AGE = 10 * DAY_MS  # given that long before FIRST_DS: inside every 90-day window of the month
N_WATCHES = 3_000
N_COLD_WATCHES = 200  # watches of items the user never touched: their 5h count is null
N_NULL_USER_VIEWS = 25
N_BOB_WATCHES = 10
ACTIVITY_TYPES = np.array(["item_view", "add_to_cart", "share"], dtype=object)
ACTIVITY_WEIGHTS = [0.85, 0.10, 0.05]

USERS = np.array([f"u{i:04d}" for i in range(1, N_USERS + 1)], dtype=object)
ITEMS = np.array([f"i{i:03d}" for i in range(1, N_ITEMS + 1)], dtype=object)

_TABLES = {
    "user_activity.user_views": pa.schema(
        [
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("activity_type", pa.string()),
            ("ts", pa.int64()),
        ]
    ),
    "item_info.ratings_snapshots": pa.schema(
        [
            ("rating_id", pa.int64()),
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("rating", pa.int64()),
            ("ts", pa.int64()),
        ]
    ),
    "item_info.ratings_mutations": pa.schema(
        [
            ("rating_id", pa.int64()),
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("rating", pa.int64()),
            ("ts", pa.int64()),
            ("mutation_ts", pa.int64()),
            ("is_before", pa.bool_()),
        ]
    ),
    "user_activity.watches": pa.schema(
        [("user_id", pa.string()), ("item_id", pa.string()), ("ts", pa.int64())]
    ),
}


def write_sample_data(warehouse: Path, seed: int = 7, last_ds: str = LAST_DS) -> dict[str, int]:
    """Write the four sample tables under ``warehouse``; returns the row count of each table (for the
    snapshots: of all partitions together).

    ``last_ds`` moves the whole month by whole days so that it ends on that day (the quickstart ends
    it yesterday, to fetch values "ending now"); whole days keep every ds and hop boundary the same.
    """
    shift_days = (dt.date.fromisoformat(last_ds) - dt.date.fromisoformat(LAST_DS)).days
    rng = np.random.RandomState(seed)
    item_popularity = _zipf_weights(N_ITEMS, 0.8)
    user_activity = _zipf_weights(N_USERS, 0.6)
    views = _views(rng, item_popularity, user_activity)
    bob_views, bob_watches = _bob(rng)
    views = {column: np.concatenate([views[column], bob_views[column]]) for column in views}
    watches = _watches(rng, views, user_activity, item_popularity)
    watches = {column: np.concatenate([watches[column], bob_watches[column]]) for column in watches}
    snapshots, mutations = _ratings(
        rng, item_popularity, user_activity
    )  # drawn last: views and watches stay put
    counts = {}
    for table, columns in (("user_activity.user_views", views), ("user_activity.watches", watches)):
        counts[table] = _write_partitioned(warehouse, table, columns, shift_days)
    first = dt.date.fromisoformat(FIRST_DS) + dt.timedelta(days=shift_days)
    counts["item_info.ratings_snapshots"] = _write_days(
        warehouse, "item_info.ratings_snapshots", snapshots, first - dt.timedelta(days=1), shift_days
    )
    counts["item_info.ratings_mutations"] = _write_days(
        warehouse, "item_info.ratings_mutations", mutations, first, shift_days
    )
    return counts


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    weights: np.ndarray = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / float(weights.sum())


def _views(
    rng: np.random.RandomState, item_popularity: np.ndarray, user_activity: np.ndarray
) -> dict[str, np.ndarray]:
    """Browsing sessions: a user returns to one item a few times within two hours."""
    session_user = rng.choice(N_USERS, size=N_SESSIONS, p=user_activity)
    session_item = rng.choice(N_ITEMS, size=N_SESSIONS, p=item_popularity)
    session_start = rng.randint(START_MS, END_MS - 2 * HOUR_MS, size=N_SESSIONS, dtype=np.int64)
    events_per_session = np.minimum(rng.geometric(0.3, size=N_SESSIONS), 8)
    user = np.repeat(session_user, events_per_session)
    item = np.repeat(session_item, events_per_session)
    offset = rng.randint(0, 2 * HOUR_MS, size=user.size, dtype=np.int64)
    ts = np.repeat(session_start, events_per_session) + offset
    user_id = USERS[user].copy()
    user_id[rng.choice(user.size, size=N_NULL_USER_VIEWS, replace=False)] = None  # filtered by the Query
    activity = rng.choice(ACTIVITY_TYPES, size=user.size, p=ACTIVITY_WEIGHTS)
    return {"user_id": user_id, "item_id": ITEMS[item], "activity_type": activity, "ts": ts}


def _bob(rng: np.random.RandomState) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Bob, the user of the docs: ten watches, each after a few views of the same item.

    Around each watch at time w: 2-6 views in the 4.5 hours before it (inside the 5h window), one
    view 6-8 hours before (outside it) and one after it (the future: never counted).
    """
    items = rng.choice(N_ITEMS // 3, size=N_BOB_WATCHES, replace=False)  # popular items: they have ratings
    # days 1..28: the 8h of history before a watch and the 3h after it stay inside the sample range
    days = np.sort(rng.choice(np.arange(1, DAYS - 1), size=N_BOB_WATCHES, replace=False))
    hour = rng.randint(8 * HOUR_MS, 22 * HOUR_MS, size=N_BOB_WATCHES, dtype=np.int64)
    watch_ts = START_MS + days * DAY_MS + hour
    recent = rng.randint(2, 7, size=N_BOB_WATCHES, dtype=np.int64)
    age = rng.randint(MINUTE_MS, 270 * MINUTE_MS, size=recent.sum(), dtype=np.int64)
    recent_ts = np.repeat(watch_ts, recent) - age
    old_ts = watch_ts - rng.randint(6 * HOUR_MS, 8 * HOUR_MS, size=N_BOB_WATCHES, dtype=np.int64)
    later_ts = watch_ts + rng.randint(MINUTE_MS, 3 * HOUR_MS, size=N_BOB_WATCHES, dtype=np.int64)
    # first watch only: a view at exactly w (excluded), and one in the hop-aligned tail: just over
    # 5 hours old, yet counted, because the 5h window starts at floor(w - 5h, 5 minutes)
    window_edge = watch_ts[0] - 5 * HOUR_MS
    tail_ts = window_edge - (window_edge % (5 * MINUTE_MS)) // 2
    ts = np.concatenate([recent_ts, old_ts, later_ts, watch_ts[:1], [tail_ts]])
    item = np.concatenate([np.repeat(items, recent), items, items, items[:1], items[:1]])
    activity = rng.choice(ACTIVITY_TYPES, size=ts.size, p=ACTIVITY_WEIGHTS)
    views = {
        "user_id": np.full(ts.size, "bob", dtype=object),
        "item_id": ITEMS[item],
        "activity_type": activity,
        "ts": ts,
    }
    watches = {
        "user_id": np.full(N_BOB_WATCHES, "bob", dtype=object),
        "item_id": ITEMS[items],
        "ts": watch_ts,
    }
    return views, watches


def _watches(
    rng: np.random.RandomState,
    views: dict[str, np.ndarray],
    user_activity: np.ndarray,
    item_popularity: np.ndarray,
) -> dict[str, np.ndarray]:
    """Most watches follow a view of the same item by up to 3 hours; a few are cold."""
    candidates = np.flatnonzero(views["user_id"] != None)  # noqa: E711 - elementwise on an object array
    picked = rng.choice(candidates, size=N_WATCHES, replace=False)
    delay = rng.randint(MINUTE_MS, 3 * HOUR_MS, size=N_WATCHES, dtype=np.int64)
    ts = np.minimum(views["ts"][picked] + delay, END_MS - 1)
    cold_user = USERS[rng.choice(N_USERS, size=N_COLD_WATCHES, p=user_activity)]
    cold_item = ITEMS[rng.choice(N_ITEMS, size=N_COLD_WATCHES, p=item_popularity[::-1])]  # unpopular items
    cold_ts = rng.randint(START_MS, END_MS, size=N_COLD_WATCHES, dtype=np.int64)
    return {
        "user_id": np.concatenate([views["user_id"][picked], cold_user]),
        "item_id": np.concatenate([views["item_id"][picked], cold_item]),
        "ts": np.concatenate([ts, cold_ts]),
    }


Rating = tuple[int, str, str, int, int]  # rating_id, user_id, item_id, rating, ts
Mutation = tuple[int, str, str, int, int, int, bool]  # a Rating, mutation_ts, is_before


def _ratings(
    rng: np.random.RandomState, item_popularity: np.ndarray, user_activity: np.ndarray
) -> tuple[list[list[Rating]], list[list[Mutation]]]:
    """The ratings database: its snapshots (the initial table, then the table at the end of each day)
    and each day's mutation rows, replayed change by change."""
    quality = rng.uniform(2.0, 4.8, size=N_ITEMS)

    def new_ratings(n: int) -> list[tuple[str, str, int]]:
        item = rng.choice(N_ITEMS, size=n, p=item_popularity)
        user = rng.choice(N_USERS, size=n, p=user_activity)
        rating = np.clip(np.rint(rng.normal(quality[item], 0.9)), 1, 5).astype(np.int64)
        return [(str(USERS[u]), str(ITEMS[i]), int(r)) for u, i, r in zip(user, item, rating, strict=True)]

    initial_ts = rng.randint(
        START_MS - INITIAL_DAYS * DAY_MS, START_MS, size=N_INITIAL_RATINGS, dtype=np.int64
    )
    initial = [
        (*rating, int(ts)) for rating, ts in zip(new_ratings(N_INITIAL_RATINGS), initial_ts, strict=True)
    ]
    initial.append(("bob", "i001", BOB_I001_RATING, START_MS - BOB_I001_AGE))
    initial.sort(key=lambda row: row[3])
    table: list[Rating] = [(rating_id, *row) for rating_id, row in enumerate(initial, start=1)]
    next_id = len(table) + 1
    snapshots, mutations = [list(table)], []

    def pick() -> int:
        """A row to change or delete: any but Bob's i001 rating, which the quickstart changes."""
        while True:
            index = int(rng.randint(len(table)))
            if table[index][1] != "bob":
                return index

    for day in range(DAYS):
        counts = rng.poisson([DAILY_NEW_RATINGS, DAILY_CHANGED_RATINGS, DAILY_DELETED_RATINGS])
        kinds = rng.permutation(np.repeat(np.array(["insert", "update", "delete"]), counts))
        # distinct, increasing mutation times inside the day
        times = (
            START_MS
            + day * DAY_MS
            + np.sort(rng.randint(0, DAY_MS - kinds.size, size=kinds.size))
            + np.arange(kinds.size)
        )
        inserts = iter(new_ratings(int(counts[0])))
        changes: list[Mutation] = []
        for kind, mutation_ts in zip(kinds, times.tolist(), strict=True):
            if kind == "insert":
                user, item, rating = next(inserts)
                row: Rating = (next_id, user, item, rating, mutation_ts)
                next_id += 1
                table.append(row)
                changes.append((*row, mutation_ts, False))
                continue
            old = table.pop(pick())  # rating ids are unique: the first equal row is this one
            changes.append((*old, mutation_ts, True))
            if kind == "update":  # the user changes the rating: a new value, rated at the mutation time
                rating = (old[3] - 1 + int(rng.randint(1, 5))) % 5 + 1
                row = (old[0], old[1], old[2], rating, mutation_ts)
                table.append(row)
                changes.append((*row, mutation_ts, False))
        changes.sort(key=lambda change: (change[5], not change[6]))  # (mutation_ts, is_before desc), stable
        mutations.append(changes)
        snapshots.append(list(table))
    return snapshots, mutations


def _write_days(warehouse: Path, table: str, days: list[list[Any]], first: dt.date, shift_days: int) -> int:
    """Partition ``first + i`` holds the rows of ``days[i]``, in their order; returns the rows written."""
    schema = _TABLES[table]
    namespace, name = table.split(".")
    shift = shift_days * DAY_MS
    times = {"ts", "mutation_ts"}
    written = 0
    for index, rows in enumerate(days):
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema.names]
        arrow = pa.table(
            {
                column: pa.array(
                    [v + shift for v in values] if column in times else values, type=schema.field(column).type
                )
                for column, values in zip(schema.names, columns, strict=True)
            },
            schema=schema,
        )
        folder = warehouse / namespace / name / f"ds={(first + dt.timedelta(days=index)).isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(arrow, folder / "part-0.parquet", compression="snappy")
        written += arrow.num_rows
    return written


def _write_partitioned(
    warehouse: Path, table: str, columns: dict[str, np.ndarray], shift_days: int = 0
) -> int:
    """One ``ds=`` folder per UTC day, rows sorted by ts; returns the number of rows written."""
    order = np.argsort(columns["ts"], kind="stable")
    schema = _TABLES[table]
    arrow = pa.table(
        {name: pa.array(columns[name][order], type=schema.field(name).type) for name in schema.names},
        schema=schema,
    )
    day = (arrow.column("ts").to_numpy() - START_MS) // DAY_MS
    if day.min() < 0 or day.max() >= DAYS:
        raise AssertionError(f"{table}: sample ts outside {FIRST_DS} .. {LAST_DS}")
    bounds = np.searchsorted(day, np.arange(DAYS + 1))
    namespace, name = table.split(".")
    first = dt.date.fromisoformat(FIRST_DS) + dt.timedelta(days=shift_days)
    if shift_days:
        shifted = pc.add(arrow.column("ts"), pa.scalar(shift_days * DAY_MS, pa.int64()))
        arrow = arrow.set_column(arrow.schema.get_field_index("ts"), "ts", shifted)
    for index in range(DAYS):
        ds = (first + dt.timedelta(days=index)).isoformat()
        folder = warehouse / namespace / name / f"ds={ds}"
        folder.mkdir(parents=True, exist_ok=True)
        part = arrow.slice(bounds[index], bounds[index + 1] - bounds[index])
        pq.write_table(part, folder / "part-0.parquet", compression="snappy")
    return int(arrow.num_rows)
