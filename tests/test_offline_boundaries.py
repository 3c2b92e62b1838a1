"""Hand-computed boundary cases of the offline engine (SPEC §2–§3): every expected value is written out.

Window tails use values 1 / 10 / 100 / 1000 so that a sum tells exactly which events were included:
1 is at exactly q (excluded), 10 at q - 1 ms, 100 exactly at floor(q - W, hop(W)) (included), 1000 one
millisecond before it (excluded). An included set of {10, 100} sums to 110.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from gnomon import Accuracy, Aggregation, EventSource, GroupBy, Join, JoinPart, Operation, Query
from oracle import DAY_MS, HOUR_MS, MINUTE_MS, arrow_rows, ds_of, ds_range, midnight

D10 = midnight("2026-01-10")
Q = D10 + 12 * HOUR_MS + 34 * MINUTE_MS + 56_789  # 2026-01-10T12:34:56.789Z
# floor(Q - W, hop(W)), worked out by hand for each window length
TAILS = {
    "7m": D10 + 12 * HOUR_MS + 27 * MINUTE_MS,  # 12:27:56.789 -> hop 1m -> 12:27:00.000
    "30m": D10 + 12 * HOUR_MS + 4 * MINUTE_MS,  # 12:04:56.789 -> hop 1m -> 12:04:00.000
    "5h": D10 + 7 * HOUR_MS + 30 * MINUTE_MS,  # 07:34:56.789 -> hop 5m -> 07:30:00.000
    "13h": D10 - 1 * HOUR_MS,  # 01-09 23:34:56.789 -> hop 1h -> 01-09 23:00
    "2d": D10 - 2 * DAY_MS + 12 * HOUR_MS,  # 01-08 12:34:56.789 -> hop 1h -> 01-08 12:00
    "14d": D10 - 14 * DAY_MS,  # 12-27 12:34:56.789 -> hop 1d -> 12-27 00:00
}
EVENTS_SCHEMA = pa.schema(
    [("user", pa.string()), ("v", pa.float64()), ("s", pa.string()), ("ts", pa.int64())]
)


def events_source(table: str = "ev.events", columns: Sequence[str] = ("user", "v", "s")) -> EventSource:
    return EventSource(table=table, query=Query(selects={c: c for c in columns}, time_column="ts"))


def write_events(
    project: Any,
    table: str,
    rows: list[dict[str, Any]],
    first_ds: str,
    last_ds: str,
    schema: pa.Schema = EVENTS_SCHEMA,
) -> None:
    """One partition per day (empty days too), rows kept in the given order within a day."""
    for ds in ds_range(first_ds, last_ds):
        day_rows = [r for r in rows if ds_of(r["ts"]) == ds]
        project.warehouse.write_partition(table, ds, pa.Table.from_pylist(day_rows, schema=schema))


def event(user: str, ts: int, v: float | None = None, s: str | None = None) -> dict[str, Any]:
    return {"user": user, "v": v, "s": s, "ts": ts}


def features(project: Any, join: Join, left: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """training_data for left rows (user_id, ts), in the left's order (row_id identifies rows)."""
    table = project.training_data(join.name, pd.DataFrame(left))
    rows = arrow_rows(table)
    assert len(rows) == len(left)
    return sorted(rows, key=lambda r: r["row_id"])


def join_of(name: str, *group_bys: GroupBy) -> Join:
    left = EventSource(table="ev.left", query=Query(selects={"row_id": "row_id", "user_id": "user_id"}))
    return Join(
        name=name, left=left, right_parts=[JoinPart(g, key_mapping={"user_id": "user"}) for g in group_bys]
    )


def objects(*definitions: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for definition in definitions:
        found[definition.name] = definition
        for part in getattr(definition, "right_parts", ()):
            found[part.group_by.name] = part.group_by
    return found


# ------------------------------------------------------------------------------------ windows


def test_temporal_window_tail_and_head(tmp_path: Path, new_project: Callable[..., Any]) -> None:
    """At q = 12:34:56.789: the event at q is out, q - 1 ms in, the hop-aligned tail in, 1 ms before out."""
    rows = []
    for window, tail in TAILS.items():
        user = f"k_{window}"
        rows += [
            event(user, Q, 1.0),
            event(user, Q - 1, 10.0),
            event(user, tail, 100.0),
            event(user, tail - 1, 1000.0),
        ]
    group_by = GroupBy(
        name="b.tails",
        sources=[events_source()],
        keys=["user"],
        accuracy=Accuracy.TEMPORAL,
        aggregations=[
            Aggregation("v", Operation.SUM, windows=list(TAILS)),
            Aggregation("v", Operation.COUNT, windows=list(TAILS)),
            Aggregation("v", Operation.SUM),
        ],
    )
    join = join_of("b.tails_join", group_by)
    project = new_project(tmp_path, objects(join))
    write_events(project, "ev.events", rows, "2025-12-26", "2026-01-10")
    got = features(project, join, [{"row_id": n, "user_id": f"k_{w}", "ts": Q} for n, w in enumerate(TAILS)])
    for row, window in zip(got, TAILS, strict=True):
        assert row[f"b_tails_v_sum_{window}"] == 110.0, window
        assert row[f"b_tails_v_count_{window}"] == 2, window
        assert row["b_tails_v_sum"] == 1110.0, window


def test_snapshot_backfill_window_bounds(tmp_path: Path, new_project: Callable[..., Any]) -> None:
    """Partition D = values at D+1 00:00: an event at exactly that midnight counts only from D+1 on."""
    d11 = midnight("2026-01-11")
    rows = [
        event("a", d11, 1.0),  # exactly q of partition 01-10: belongs to 01-11
        event("a", d11 - 1, 10.0),  # last millisecond of 01-10
        event("a", d11 - 2 * DAY_MS, 100.0),  # 01-09 00:00 = floor(q - 2d, 1h): included in 01-10
        event("a", d11 - 2 * DAY_MS - 1, 1000.0),
    ]
    group_by = GroupBy(
        name="b.snap",
        sources=[events_source()],
        keys=["user"],
        accuracy=Accuracy.SNAPSHOT,
        aggregations=[
            Aggregation("v", Operation.SUM, windows=["2d"]),
            Aggregation("v", Operation.COUNT, windows=["2d"]),
        ],
    )
    project = new_project(tmp_path, objects(group_by))
    write_events(project, "ev.events", rows, "2026-01-07", "2026-01-12")
    assert sorted(project.backfill("b.snap", "2026-01-10", "2026-01-12")) == [
        "2026-01-10",
        "2026-01-11",
        "2026-01-12",
    ]
    got = {r["ds"]: r for r in arrow_rows(project.warehouse.read_table(project.output_table("b.snap")))}
    assert got["2026-01-10"] == {"user": "a", "v_sum_2d": 110.0, "v_count_2d": 2, "ds": "2026-01-10"}
    # q = 01-12 00:00, tail 01-10 00:00: the 10 and the 1
    assert got["2026-01-11"] == {"user": "a", "v_sum_2d": 11.0, "v_count_2d": 2, "ds": "2026-01-11"}
    # q = 01-13 00:00, tail 01-11 00:00: only the 1
    assert got["2026-01-12"] == {"user": "a", "v_sum_2d": 1.0, "v_count_2d": 1, "ds": "2026-01-12"}


def test_snapshot_join_uses_midnight_before_the_row(tmp_path: Path, new_project: Callable[..., Any]) -> None:
    """events left + SNAPSHOT right: q = floor(ts, 1 day), so the row's own day is not seen yet."""
    rows = [
        event("a", D10 - 2 * DAY_MS - 1, 1000.0),  # 01-07 23:59:59.999: before the 2d tail (01-08 00:00)
        event("a", D10 - 2 * DAY_MS, 100.0),  # 01-08 00:00: the tail, included
        event("a", D10 - 1, 10.0),  # 01-09 23:59:59.999: included
        event("a", D10, 1.0),  # 01-10 00:00 = q: excluded
        event("a", D10 + HOUR_MS, 5000.0),
    ]  # same day as the row, before it: excluded too
    group_by = GroupBy(
        name="b.daily",
        sources=[events_source()],
        keys=["user"],
        accuracy=Accuracy.SNAPSHOT,
        aggregations=[Aggregation("v", Operation.SUM, windows=["2d"])],
    )
    join = join_of("b.daily_join", group_by)
    project = new_project(tmp_path, objects(join))
    write_events(project, "ev.events", rows, "2026-01-07", "2026-01-10")
    got = features(project, join, [{"row_id": 0, "user_id": "a", "ts": D10 + 15 * HOUR_MS}])
    assert got[0]["b_daily_v_sum_2d"] == 110.0


def test_windowed_only_group_by_drops_keys_without_input(
    tmp_path: Path, new_project: Callable[..., Any]
) -> None:
    rows = [event("old", D10 - 3 * DAY_MS, 1.0), event("new", D10 + HOUR_MS, 2.0)]
    windowed = GroupBy(
        name="b.windowed",
        sources=[events_source()],
        keys=["user"],
        aggregations=[Aggregation("v", Operation.COUNT, windows=["2d"])],
    )
    mixed = GroupBy(
        name="b.mixed",
        sources=[events_source()],
        keys=["user"],
        aggregations=[Aggregation("v", Operation.COUNT, windows=["2d"]), Aggregation("v", Operation.SUM)],
    )
    project = new_project(tmp_path, objects(windowed, mixed))
    write_events(project, "ev.events", rows, "2026-01-07", "2026-01-10")
    project.backfill("b.windowed", "2026-01-10", "2026-01-10")
    project.backfill("b.mixed", "2026-01-10", "2026-01-10")
    assert arrow_rows(project.warehouse.read_table(project.output_table("b.windowed"))) == [
        {"user": "new", "v_count_2d": 1, "ds": "2026-01-10"}
    ]
    got = sorted(
        arrow_rows(project.warehouse.read_table(project.output_table("b.mixed"))), key=lambda r: r["user"]
    )
    assert got == [
        {"user": "new", "v_count_2d": 1, "v_sum": 2.0, "ds": "2026-01-10"},
        {"user": "old", "v_count_2d": None, "v_sum": 1.0, "ds": "2026-01-10"},
    ]


# -------------------------------------------------------------------------------- operations


def test_ts_ties_keep_first_seen_row(tmp_path: Path, new_project: Callable[..., Any]) -> None:
    t = D10 + HOUR_MS
    rows = [event("a", t, s="x1"), event("a", t - 5, s="older"), event("a", t, s="x2")]  # file order
    ops = [Operation.FIRST, Operation.LAST, Operation.FIRST_K(3), Operation.LAST_K(3)]
    group_by = GroupBy(
        name="b.ties",
        sources=[events_source()],
        keys=["user"],
        accuracy=Accuracy.TEMPORAL,
        aggregations=[Aggregation("s", op) for op in ops],
    )
    join = join_of("b.ties_join", group_by)
    project = new_project(tmp_path, objects(join))
    write_events(project, "ev.events", rows, "2026-01-10", "2026-01-10")
    got = features(project, join, [{"row_id": 0, "user_id": "a", "ts": t + 1}])[0]
    assert got["b_ties_s_first"] == "older"
    assert got["b_ties_s_last"] == "x1"
    assert got["b_ties_s_first3"] == ["older", "x1", "x2"]
    assert got["b_ties_s_last3"] == ["x1", "x2", "older"]


def test_ts_ties_across_sources_follow_source_order(tmp_path: Path, new_project: Callable[..., Any]) -> None:
    t = D10 + HOUR_MS
    group_by = GroupBy(
        name="b.two",
        sources=[events_source("ev.second"), events_source("ev.first")],
        keys=["user"],
        accuracy=Accuracy.TEMPORAL,
        aggregations=[
            Aggregation("s", Operation.FIRST),
            Aggregation("s", Operation.LAST),
            Aggregation("s", Operation.LAST_K(2)),
        ],
    )
    join = join_of("b.two_join", group_by)
    project = new_project(tmp_path, objects(join))
    write_events(project, "ev.first", [event("a", t, s="from_first_table")], "2026-01-10", "2026-01-10")
    write_events(project, "ev.second", [event("a", t, s="from_sources_0")], "2026-01-10", "2026-01-10")
    got = features(project, join, [{"row_id": 0, "user_id": "a", "ts": t + 1}])[0]
    assert got["b_two_s_first"] == "from_sources_0"
    assert got["b_two_s_last"] == "from_sources_0"
    assert got["b_two_s_last2"] == ["from_sources_0", "from_first_table"]


EMPTY_OPS = [
    Operation.COUNT,
    Operation.SUM,
    Operation.AVERAGE,
    Operation.LAST,
    Operation.TOP_K(2),
    Operation.UNIQUE_COUNT,
    Operation.APPROX_UNIQUE_COUNT,
    Operation.APPROX_PERCENTILE,
]


def test_empty_window_is_null_count_too(tmp_path: Path, new_project: Callable[..., Any]) -> None:
    rows = [
        event("a", D10 - 3 * DAY_MS, 4.0, "x"),
        event("nulls", D10, None, None),
        event("nulls", D10 + 1, None, None),
    ]
    aggregations = [Aggregation("v", op, windows=["5h"]) for op in EMPTY_OPS]
    aggregations += [Aggregation("v", op) for op in EMPTY_OPS]
    aggregations += [
        Aggregation("s", Operation.HISTOGRAM, windows=["5h"]),
        Aggregation("s", Operation.HISTOGRAM),
        Aggregation("v", Operation.COUNT, windows=["5h"], buckets=["s"]),
        Aggregation("v", Operation.SUM, buckets=["s"]),
    ]
    group_by = GroupBy(
        name="b.empty",
        sources=[events_source()],
        keys=["user"],
        accuracy=Accuracy.TEMPORAL,
        aggregations=aggregations,
    )
    join = join_of("b.empty_join", group_by)
    project = new_project(tmp_path, objects(join))
    write_events(project, "ev.events", rows, "2026-01-07", "2026-01-10")
    got = features(
        project, join, [{"row_id": 0, "user_id": "a", "ts": Q}, {"row_id": 1, "user_id": "nulls", "ts": Q}]
    )
    a, nulls = got
    for name in (c for c in a if c.startswith("b_empty_")):
        if "_5h" in name:
            assert a[name] is None, name
        assert nulls[name] is None, name  # only null inputs: nothing to aggregate, COUNT included
    assert a["b_empty_v_count"] == 1 and a["b_empty_v_sum"] == 4.0 and a["b_empty_v_last"] == 4.0
    assert a["b_empty_v_top2"] == [4.0] and a["b_empty_s_histogram"] == {"x": 1}
    assert a["b_empty_v_sum_by_s"] == {"x": 4.0}


def nan_project(tmp_path: Path, new_project: Callable[..., Any], ops: list[Any]) -> tuple[Any, Join]:
    nan, inf = math.nan, math.inf
    rows = [
        event("nan", D10 + 1, 1.0),
        event("nan", D10 + 2, nan),
        event("nan", D10 + 3, 2.0),
        event("nan", D10 + 4, nan),
        event("inf", D10 + 1, 1.0),
        event("inf", D10 + 2, inf),
        event("ninf", D10 + 1, -inf),
        event("ninf", D10 + 2, 1.0),
        event("one_nan", D10 + 1, nan),
        *[event("flat", D10 + i, 2.5) for i in range(1, 5)],
        event("two", D10 + 1, 1.0),
        event("two", D10 + 2, 2.0),
    ]
    group_by = GroupBy(
        name="b.nan",
        sources=[events_source()],
        keys=["user"],
        accuracy=Accuracy.TEMPORAL,
        aggregations=[Aggregation("v", op) for op in ops],
    )
    join = join_of("b.nan_join", group_by)
    project = new_project(tmp_path, objects(join))
    write_events(project, "ev.events", rows, "2026-01-10", "2026-01-10")
    return project, join


NAN_OPS = [
    Operation.COUNT,
    Operation.SUM,
    Operation.AVERAGE,
    Operation.VARIANCE,
    Operation.SKEW,
    Operation.KURTOSIS,
    Operation.MIN,
    Operation.MAX,
    Operation.LAST,
    Operation.UNIQUE_COUNT,
    Operation.BOTTOM_K(2),
]
# user -> expected {operation output name: value}, worked out by hand
NAN_EXPECTED = {
    "nan": {
        "count": 4,
        "sum": None,
        "average": None,
        "variance": None,
        "skew": None,
        "kurtosis": None,
        "min": 1.0,
        "max": None,
        "last": None,
        "unique_count": 3,
        "bottom2": [1.0, 2.0],
    },
    "inf": {
        "count": 2,
        "sum": None,
        "average": None,
        "variance": None,
        "skew": None,
        "kurtosis": None,
        "min": 1.0,
        "max": None,
        "last": None,
        "unique_count": 2,
        "bottom2": [1.0, None],
    },
    "ninf": {
        "count": 2,
        "sum": None,
        "average": None,
        "variance": None,
        "min": None,
        "max": 1.0,
        "last": 1.0,
        "unique_count": 2,
        "bottom2": [None, 1.0],
    },
    "one_nan": {
        "count": 1,
        "sum": None,
        "average": None,
        "variance": None,
        "min": None,
        "max": None,
        "last": None,
        "unique_count": 1,
        "bottom2": [None],
    },
    "flat": {
        "count": 4,
        "sum": 10.0,
        "average": 2.5,
        "variance": 0.0,
        "skew": None,
        "kurtosis": None,
        "unique_count": 1,
    },  # zero variance: skew and kurtosis are null
    "two": {"variance": 0.25, "skew": None, "kurtosis": None},  # n < 3 and n < 4
}


@pytest.mark.parametrize("user", list(NAN_EXPECTED))
def test_nan_and_infinity_outputs_are_null(
    tmp_path: Path, new_project: Callable[..., Any], user: str
) -> None:
    project, join = nan_project(tmp_path, new_project, NAN_OPS)
    got = features(project, join, [{"row_id": 0, "user_id": user, "ts": D10 + HOUR_MS}])[0]
    actual = {name: got[f"b_nan_v_{name}"] for name in NAN_EXPECTED[user]}
    assert actual == NAN_EXPECTED[user]


def test_nan_inside_top_k_list_becomes_null(tmp_path: Path, new_project: Callable[..., Any]) -> None:
    """NaN ranks above every number, and a NaN element of a list output is null like any NaN output."""
    project, join = nan_project(tmp_path, new_project, [Operation.TOP_K(3)])
    got = features(project, join, [{"row_id": 0, "user_id": "nan", "ts": D10 + HOUR_MS}])[0]
    assert got["b_nan_v_top3"] == [None, None, 2.0]


# ------------------------------------------------------------------------------------ joins


def test_join_keeps_every_left_row(tmp_path: Path, new_project: Callable[..., Any]) -> None:
    """Duplicates kept, null or unknown keys get null features, row count = left row count."""
    rows = [event("a", D10 + HOUR_MS, 1.0), event("a", D10 + 2 * HOUR_MS, 2.0)]
    group_by = GroupBy(
        name="b.keep",
        sources=[events_source()],
        keys=["user"],
        accuracy=Accuracy.TEMPORAL,
        aggregations=[Aggregation("v", Operation.COUNT), Aggregation("v", Operation.SUM, windows=["5h"])],
    )
    join = join_of("b.keep_join", group_by)
    project = new_project(tmp_path, objects(join))
    write_events(project, "ev.events", rows, "2026-01-10", "2026-01-11")
    t = D10 + 3 * HOUR_MS
    left = [
        {"row_id": 1, "user_id": "a", "ts": t},
        {"row_id": 1, "user_id": "a", "ts": t},
        {"row_id": 2, "user_id": None, "ts": t},
        {"row_id": 3, "user_id": "zzz", "ts": t},
        {"row_id": 4, "user_id": "a", "ts": D10 + 2 * HOUR_MS},
    ]
    left_schema = pa.schema([("row_id", pa.int64()), ("user_id", pa.string()), ("ts", pa.int64())])
    project.warehouse.write_partition("ev.left", "2026-01-10", pa.Table.from_pylist(left, schema=left_schema))
    project.warehouse.write_partition("ev.left", "2026-01-11", pa.Table.from_pylist([], schema=left_schema))
    expected = [
        (1, "a", 2, 3.0),
        (1, "a", 2, 3.0),
        (2, None, None, None),
        (3, "zzz", None, None),
        (4, "a", 1, 1.0),
    ]

    got = features(project, join, left)
    assert [(r["row_id"], r["user_id"], r["b_keep_v_count"], r["b_keep_v_sum_5h"]) for r in got] == expected
    assert list(got[0])[:3] == ["row_id", "user_id", "ts"]

    assert project.backfill("b.keep_join", "2026-01-10", "2026-01-11") == ["2026-01-10", "2026-01-11"]
    table = project.warehouse.read_table(project.output_table("b.keep_join"))
    assert table.num_rows == len(left)
    got = sorted(arrow_rows(table), key=lambda r: r["row_id"])
    assert [(r["row_id"], r["user_id"], r["b_keep_v_count"], r["b_keep_v_sum_5h"]) for r in got] == expected
    assert {r["ds"] for r in got} == {"2026-01-10"}


def test_join_over_a_named_group_by_not_listed_in_objects(
    tmp_path: Path, new_project: Callable[..., Any]
) -> None:
    """A GroupBy with an explicit name needs no separate registration to be used by a Join."""
    group_by = GroupBy(
        name="b.unlisted",
        sources=[events_source()],
        keys=["user"],
        accuracy=Accuracy.TEMPORAL,
        aggregations=[Aggregation("v", Operation.COUNT)],
    )
    join = join_of("b.unlisted_join", group_by)
    project = new_project(tmp_path, {join.name: join})
    write_events(project, "ev.events", [event("a", D10, 1.0)], "2026-01-10", "2026-01-10")
    got = features(project, join, [{"row_id": 0, "user_id": "a", "ts": D10 + 1}])
    assert got[0]["b_unlisted_v_count"] == 1
