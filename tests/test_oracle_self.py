"""The oracle checked against values worked out by hand, so its own mistakes cannot hide engine bugs."""

from __future__ import annotations

import math

import pytest

from gnomon import (
    Accuracy,
    Aggregation,
    Derivation,
    EntitySource,
    EventSource,
    GroupBy,
    Join,
    JoinPart,
    Operation,
    Query,
    Window,
)
from oracle import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    ApproxHistogram,
    ApproxPercentiles,
    ApproxUniqueCount,
    Oracle,
    Row,
    aggregate,
    aggregate_column,
    compare_values,
    midnight,
    window_start,
)

Q = midnight("2026-01-10") + 12 * HOUR_MS + 34 * MINUTE_MS + 56_789  # 2026-01-10T12:34:56.789Z


def rows(*items: tuple[int, object]) -> list[Row]:
    """Rows (ts, value) of column ``v`` in the given source order."""
    return [
        Row(ts, ("2026-01-10", 0, "part-0.parquet", n), {"v": value}) for n, (ts, value) in enumerate(items)
    ]


def value(operation: object, *items: tuple[int, object]) -> object:
    return aggregate(Aggregation("v", operation), rows(*items))


def test_window_start_is_hop_aligned() -> None:
    # 30m -> hop 1 minute: 12:04:56.789 floors to 12:04:00.000
    assert window_start(Q, Window.parse("30m")) == midnight("2026-01-10") + 12 * HOUR_MS + 4 * MINUTE_MS
    # 5h -> hop 5 minutes: 07:34:56.789 floors to 07:30
    assert window_start(Q, Window.parse("5h")) == midnight("2026-01-10") + 7 * HOUR_MS + 30 * MINUTE_MS
    # 13h -> hop 1 hour: 2026-01-09 23:34:56.789 floors to 23:00
    assert window_start(Q, Window.parse("13h")) == midnight("2026-01-09") + 23 * HOUR_MS
    # 14d -> hop 1 day: 2025-12-27 12:34 floors to 2025-12-27 00:00
    assert window_start(Q, Window.parse("14d")) == midnight("2025-12-27")
    assert window_start(Q, None) is None


def test_window_bounds_include_tail_exclude_head() -> None:
    start = window_start(Q, Window.parse("30m"))
    data = rows((Q, 1), (Q - 1, 10), (start, 100), (start - 1, 1000))
    agg = Aggregation("v", Operation.SUM, windows=["30m"])
    assert aggregate_column(agg, agg.windows[0], None, data, Q) == 110
    assert aggregate_column(Aggregation("v", Operation.SUM), None, None, data, Q) == 1110
    assert aggregate_column(agg, agg.windows[0], None, rows((Q, 1)), Q) is None


def test_basic_operations_by_hand() -> None:
    data = [(1, 2), (2, None), (3, 4), (4, 4), (5, 10)]  # (ts, value); the null is ignored
    assert value(Operation.COUNT, *data) == 4
    assert value(Operation.SUM, *data) == 20 and isinstance(value(Operation.SUM, *data), int)
    assert value(Operation.AVERAGE, *data) == 5.0
    assert value(Operation.VARIANCE, *data) == 9.0  # deviations -3,-1,-1,5: (9+1+1+25)/4
    # M3 = -27-1-1+125 = 96, M2 = 36: g1 = 2 * 96 / 216
    assert value(Operation.SKEW, *data) == pytest.approx(2 * 96 / 216, rel=1e-12)
    # M4 = 81+1+1+625 = 708: g2 = 4 * 708 / 1296 - 3
    assert value(Operation.KURTOSIS, *data) == pytest.approx(4 * 708 / 1296 - 3, rel=1e-12)
    assert value(Operation.MIN, *data) == 2 and value(Operation.MAX, *data) == 10
    assert value(Operation.FIRST, *data) == 2 and value(Operation.LAST, *data) == 10
    assert value(Operation.FIRST_K(2), *data) == [2, 4]
    assert value(Operation.LAST_K(3), *data) == [10, 4, 4]
    assert value(Operation.TOP_K(2), *data) == [10, 4]
    assert value(Operation.BOTTOM_K(3), *data) == [2, 4, 4]
    assert value(Operation.UNIQUE_COUNT, *data) == 3
    assert value(Operation.BOUNDED_UNIQUE_COUNT(2), *data) == 2
    assert value(Operation.APPROX_UNIQUE_COUNT, *data) == ApproxUniqueCount(3, 8)
    assert value(Operation.HISTOGRAM, *data) == {"2": 1, "4": 2, "10": 1}
    assert value(Operation.SUM, (1, True), (2, False), (3, True)) == 2


def test_small_counts_for_skew_and_kurtosis_are_null() -> None:
    assert value(Operation.SKEW, (1, 1.0), (2, 2.0)) is None
    assert value(Operation.KURTOSIS, (1, 1.0), (2, 2.0), (3, 4.0)) is None
    assert value(Operation.SKEW, (1, 2.5), (2, 2.5), (3, 2.5)) is None  # zero variance
    assert value(Operation.VARIANCE, (1, 0.1), (2, 0.1), (3, 0.1)) == 0.0


def test_empty_window_is_null_count_too() -> None:
    for operation in (
        Operation.COUNT,
        Operation.SUM,
        Operation.LAST,
        Operation.HISTOGRAM,
        Operation.TOP_K(2),
    ):
        assert value(operation) is None
        assert value(operation, (1, None)) is None


def test_nan_and_infinity() -> None:
    nan, inf = math.nan, math.inf
    assert value(Operation.COUNT, (1, 1.0), (2, nan)) == 2
    for operation in (
        Operation.SUM,
        Operation.AVERAGE,
        Operation.VARIANCE,
        Operation.SKEW,
        Operation.KURTOSIS,
    ):
        assert value(operation, (1, 1.0), (2, nan), (3, 2.0), (4, 5.0)) is None
    assert value(Operation.SUM, (1, 1.0), (2, inf)) is None
    assert value(Operation.MAX, (1, 1.0), (2, nan)) is None  # NaN is the largest, and NaN outputs are null
    assert value(Operation.MIN, (1, 1.0), (2, nan)) == 1.0
    assert value(Operation.MIN, (1, 1.0), (2, -inf)) is None
    assert value(Operation.TOP_K(2), (1, 1.0), (2, nan), (3, 2.0)) == [None, 2.0]
    assert value(Operation.BOTTOM_K(2), (1, 3.0), (2, nan), (3, 2.0)) == [2.0, 3.0]
    assert value(Operation.UNIQUE_COUNT, (1, nan), (2, float("nan")), (3, 1.0)) == 2
    assert value(Operation.LAST, (1, 1.0), (2, nan)) is None


def test_ties_keep_first_seen_row() -> None:
    data = [(5, "x1"), (3, "older"), (5, "x2")]  # source order as listed
    assert value(Operation.FIRST, *data) == "older"
    assert value(Operation.LAST, *data) == "x1"
    assert value(Operation.LAST_K(3), *data) == ["x1", "x2", "older"]
    assert value(Operation.FIRST_K(3), *data) == ["older", "x1", "x2"]
    assert value(Operation.FIRST, (5, "a"), (5, "b")) == "a"


def test_histogram_k_ties_by_key() -> None:
    data = [(1, "b"), (2, "a"), (3, "c"), (4, "c"), (5, "d")]
    assert value(Operation.HISTOGRAM(2), *data) == {"c": 2, "a": 1}


def test_lists_maps_element_wise_and_buckets() -> None:
    assert value(Operation.COUNT, (1, ["a", "b"]), (2, ["a"])) == 3
    assert value(Operation.HISTOGRAM, (1, ["a", "b"]), (2, ["a"])) == {"a": 2, "b": 1}
    assert value(Operation.LAST, (1, ["a", "b"]), (2, ["c"])) == ["c"]
    assert value(Operation.LAST_K(2), (1, ["a", "b"]), (2, ["c"])) == [["c"], ["a", "b"]]
    assert value(Operation.SUM, (1, {"a": 1, "b": 2}), (2, {"a": 5})) == {"a": 6, "b": 2}
    summed = aggregate(
        Aggregation("v", Operation.SUM, element_wise=True), rows((1, [1.0, 2.0]), (2, [3.0, 4.0]))
    )
    assert summed == [4.0, 6.0]
    data = [
        Row(t, ("d", 0, "f", t), {"v": v, "c": c})
        for t, (v, c) in enumerate([(1, "x"), (2, "y"), (3, None), (None, "z"), (4, "x")])
    ]
    assert aggregate_column(Aggregation("v", Operation.SUM, buckets=["c"]), None, "c", data, 100) == {
        "x": 5,
        "y": 2,
    }


def test_sketch_markers_tolerances() -> None:
    assert compare_values(ApproxUniqueCount(10, 8), 11) is None
    assert compare_values(ApproxUniqueCount(10, 8), 12) is not None
    assert compare_values(ApproxUniqueCount(100, 8), 108) is None
    assert compare_values(ApproxUniqueCount(100, 8), 115) is not None
    values = tuple(float(v) for v in range(1, 11))
    assert compare_values(ApproxPercentiles(values, (0.5,), 128), [5.0]) is None
    assert compare_values(ApproxPercentiles(values, (0.5,), 128), [6.0]) is None
    assert compare_values(ApproxPercentiles(values, (0.5,), 128), [5.5]) is None
    assert compare_values(ApproxPercentiles(values, (0.5,), 128), [7.0]) is not None
    assert compare_values(ApproxHistogram({"a": 2, "b": 1}, 8), {"a": 2, "b": 1}) is None
    assert compare_values(ApproxHistogram({"a": 2, "b": 1}, 8), {"a": 2}) is not None
    wide = ApproxHistogram({"a": 10, "b": 9, "c": 1}, 2)
    assert compare_values(wide, {"a": 10, "b": 9}) is None
    assert compare_values(wide, {"a": 10, "z": 1}) is not None


def test_compare_values_checks_types() -> None:
    assert compare_values(3, 3.0) is not None
    assert compare_values(3.0, 3.0 + 1e-12) is None
    assert compare_values(None, 0) is not None
    assert compare_values({"a": [1, 2]}, {"a": [1, 2]}) is None


EVENTS = EventSource(table="ev.clicks", query=Query(selects={"user": "user", "v": "v"}, time_column="ts"))
D1 = midnight("2026-01-01")
TABLES = {
    "ev.clicks": {
        "2026-01-01": [
            {"user": "a", "v": 1, "ts": D1 + 12 * HOUR_MS},
            {"user": "b", "v": 5, "ts": D1 + 11 * HOUR_MS},
        ],  # exactly at the 13h tail of q=01-02
        "2026-01-02": [{"user": "a", "v": 2, "ts": D1 + DAY_MS + 1 * HOUR_MS}],
        "2026-01-03": [],
    },
    "ev.left": {
        "2026-01-02": [
            {"uid": "a", "ts": D1 + DAY_MS + 1 * HOUR_MS},  # the event at exactly q is excluded
            {"uid": "a", "ts": D1 + DAY_MS + 2 * HOUR_MS},
            {"uid": None, "ts": D1 + DAY_MS + 2 * HOUR_MS},
            {"uid": "a", "ts": D1 + DAY_MS + 2 * HOUR_MS},
        ],  # a duplicate
    },
}


def test_group_by_backfill_by_hand() -> None:
    group_by = GroupBy(
        name="t.clicks",
        sources=[EVENTS],
        keys=["user"],
        aggregations=[Aggregation("v", Operation.SUM, windows=["13h"]), Aggregation("v", Operation.SUM)],
    )
    oracle = Oracle(TABLES)
    assert oracle.group_by_backfill(group_by, "2026-01-01") == [
        {"user": "a", "v_sum_13h": 1, "v_sum": 1, "ds": "2026-01-01"},
        {"user": "b", "v_sum_13h": 5, "v_sum": 5, "ds": "2026-01-01"},
    ]
    # q = 2026-01-03 00:00: 13h window starts 2026-01-02 11:00; only unbounded sums remain
    assert oracle.group_by_backfill(group_by, "2026-01-02") == [
        {"user": "a", "v_sum_13h": None, "v_sum": 3, "ds": "2026-01-02"},
        {"user": "b", "v_sum_13h": None, "v_sum": 5, "ds": "2026-01-02"},
    ]
    windowed = GroupBy(
        name="t.windowed",
        sources=[EVENTS],
        keys=["user"],
        aggregations=[Aggregation("v", Operation.COUNT, windows=["13h"])],
    )
    assert oracle.group_by_backfill(windowed, "2026-01-02") == []


def test_join_by_hand() -> None:
    temporal = GroupBy(
        name="t.clicks",
        sources=[EVENTS],
        keys=["user"],
        accuracy=Accuracy.TEMPORAL,
        aggregations=[Aggregation("v", Operation.SUM)],
    )
    snapshot = GroupBy(
        name="t.daily",
        sources=[EVENTS],
        keys=["user"],
        accuracy=Accuracy.SNAPSHOT,
        aggregations=[Aggregation("v", Operation.COUNT)],
    )
    join = Join(
        name="t.train",
        left=EventSource(table="ev.left", query=Query(selects={"uid": "uid"})),
        right_parts=[
            JoinPart(temporal, key_mapping={"uid": "user"}),
            JoinPart(snapshot, key_mapping={"uid": "user"}, prefix="p"),
        ],
        derivations=[Derivation("double", "t_clicks_v_sum * 2")],
    )
    oracle = Oracle(
        TABLES,
        derivations={"double": lambda r: None if r["t_clicks_v_sum"] is None else r["t_clicks_v_sum"] * 2},
    )
    t = D1 + DAY_MS
    assert oracle.join_backfill(join, "2026-01-02", "2026-01-02") == [
        {"uid": "a", "ts": t + 1 * HOUR_MS, "ds": "2026-01-02", "double": 2},
        {"uid": "a", "ts": t + 2 * HOUR_MS, "ds": "2026-01-02", "double": 6},
        {"uid": None, "ts": t + 2 * HOUR_MS, "ds": "2026-01-02", "double": None},
        {"uid": "a", "ts": t + 2 * HOUR_MS, "ds": "2026-01-02", "double": 6},
    ]
    star = Join(
        name="t.train2",
        left=join.left,
        right_parts=join.right_parts,
        derivations=[Derivation("*", "*"), Derivation("double", "t_clicks_v_sum * 2")],
    )
    first = oracle.join_backfill(star, "2026-01-02", "2026-01-02")[0]
    assert first == {
        "uid": "a",
        "ts": t + 1 * HOUR_MS,
        "ds": "2026-01-02",
        "t_clicks_v_sum": 1,
        "p_t_daily_v_count": 1,
        "double": 2,
    }


def test_entity_snapshot_by_hand() -> None:
    tables = {
        "it.reviews": {
            "2026-01-01": [{"item": "i", "r": 4.0, "ts": D1 + 11 * HOUR_MS}],
            "2026-01-02": [
                {"item": "i", "r": 4.0, "ts": D1 + 11 * HOUR_MS},
                {"item": "i", "r": 2.0, "ts": D1 + DAY_MS + 20 * HOUR_MS},
            ],
        }
    }
    group_by = GroupBy(
        name="it.stats",
        keys=["item"],
        sources=[EntitySource(snapshot_table="it.reviews", query=Query(selects={"item": "item", "r": "r"}))],
        aggregations=[
            Aggregation("r", Operation.AVERAGE),
            Aggregation("r", Operation.COUNT, windows=["13h"]),
        ],
    )
    oracle = Oracle(tables)
    assert oracle.group_by_backfill(group_by, "2026-01-01") == [
        {"item": "i", "r_average": 4.0, "r_count_13h": 1, "ds": "2026-01-01"}
    ]
    # partition 2026-01-02 reads snapshot 2026-01-02 at q = 2026-01-03 00:00: 13h holds only the second row
    assert oracle.group_by_backfill(group_by, "2026-01-02") == [
        {"item": "i", "r_average": 3.0, "r_count_13h": 1, "ds": "2026-01-02"}
    ]
    # a TEMPORAL lookup on 2026-01-02 at 06:00 reads snapshot 2026-01-01; its 13h tail starts 01-01 17:00
    assert oracle.group_by_values(group_by, ("i",), D1 + DAY_MS + 6 * HOUR_MS) == {
        "r_average": 4.0,
        "r_count_13h": None,
    }
