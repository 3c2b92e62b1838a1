"""Every offline engine against the naive oracle, on seeded random data.

One warehouse is generated per module and engine (fixed seeds): a few hundred events over 20 days, a
few keys, timestamps at odd milliseconds, on hop boundaries (and 1 ms either side), at midnights
(snapshot query times), in bursts with exact ties and in dense runs of one key (so that the shortest
windows hold enough values); a left table whose rows probe exactly-at-an-event and window-tail times;
entity snapshots. One test body runs every operation (ibis style) over every window length family
(windows exactly on the hop thresholds 1h, 12h and 12d included), unbounded, buckets, null inputs,
both accuracies, the GroupBy backfill and a Join backfill, on every engine (``engine`` in
conftest.py); further tests cover entities, all three Join shapes, training_data, derivations,
windowed-only key selection and multi-source ordering. Every feature column a check expects must be
non-null somewhere (`assert_exercised`), so that no case passes vacuously.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pytest

from conftest import ENGINES
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
from gnomon.definitions.windows import hop_millis
from oracle import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    Oracle,
    arrow_rows,
    assert_exercised,
    assert_rows_match,
    ds_of,
    ds_range,
    iso,
    midnight,
    write_tables,
)

FIRST_DS, LAST_DS = "2026-01-01", "2026-01-20"
DAYS = ds_range(FIRST_DS, LAST_DS)
T0 = midnight(FIRST_DS)
T_END = midnight(LAST_DS) + DAY_MS
USERS = ["u0", "u1", "u2", "u3"]
EARLY_USER = "u4"  # only has events in the first two days
CATEGORIES = ["red", "green", "blue"]
WORDS = ["ant", "bee", "cat", "dog", "eel", "fox"]  # <= 8 distinct: APPROX_HISTOGRAM_K(8) is exact
WIDE_WORDS = [f"w{i:02d}" for i in range(40)]
# hops 1m, 1m, 5m, 5m, 1h, 1h, 1h, 1d, 1d: 1h, 12h and 12d sit exactly on the hop thresholds (SPEC §2)
WINDOWS = ["7m", "30m", "1h", "5h", "12h", "13h", "2d", "12d", "14d"]
GB_START, GB_END = "2026-01-02", "2026-01-07"
JOIN_START, JOIN_END = "2026-01-02", LAST_DS

EVENT_SCHEMA = pa.schema(
    [
        ("user", pa.string()),
        ("ts", pa.int64()),
        ("i", pa.int64()),
        ("x", pa.float64()),
        ("xn", pa.float64()),
        ("b", pa.bool_()),
        ("s", pa.string()),
        ("s_wide", pa.string()),
        ("cat", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("nums", pa.list_(pa.int64())),
        ("vec", pa.list_(pa.float64())),
        ("m_int", pa.map_(pa.string(), pa.int64())),
        ("m_float", pa.map_(pa.string(), pa.float64())),
    ]
)
EVENT_COLUMNS = [name for name in EVENT_SCHEMA.names if name != "ts"]
LEFT_SCHEMA = pa.schema(
    [
        ("row_id", pa.int64()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("cat", pa.string()),
        ("ts", pa.int64()),
    ]
)
REVIEW_SCHEMA = pa.schema(
    [
        ("review_id", pa.int64()),
        ("item", pa.string()),
        ("rating", pa.float64()),
        ("stars", pa.int64()),
        ("ts", pa.int64()),
    ]
)
PROFILE_SCHEMA = pa.schema(
    [("row_id", pa.int64()), ("user_id", pa.string()), ("item_id", pa.string()), ("ts", pa.int64())]
)
ITEMS = ["i0", "i1", "i2", "i3", "i4", "i5"]


# ------------------------------------------------------------------------------------------- data


def maybe(rng: random.Random, value: Any, null_rate: float = 0.15) -> Any:
    return None if rng.random() < null_rate else value


def event_times(rng: random.Random) -> list[int]:
    times = [T0 + rng.randrange(20 * DAY_MS) for _ in range(130)]  # odd milliseconds
    for _ in range(50):  # on hop boundaries of every size, and 1 ms either side
        hop = rng.choice([MINUTE_MS, 5 * MINUTE_MS, HOUR_MS, DAY_MS])
        times.append((T0 + rng.randrange(20 * DAY_MS)) // hop * hop + rng.choice([0, 0, -1, 1]))
    for day in range(1, 20):  # just before midnight, so short windows are non-empty at snapshot times
        times += [T0 + day * DAY_MS - rng.randrange(1, 40 * MINUTE_MS) for _ in range(2)]
    times += [T0 + day * DAY_MS for day in (3, 4, 6, 9, 15)]  # exactly at a snapshot query time
    for _ in range(40):  # bursts and exact ts ties
        times.append(rng.choice(times) + rng.choice([0, 0, 1, rng.randrange(10 * MINUTE_MS)]))
    return [t for t in times if T0 <= t < T_END]


def make_event(rng: random.Random, ts: int, user: str, cat: str | None = None) -> dict[str, Any]:
    """A random event; ``cat`` (when given) replaces the random category."""
    special = rng.random()
    xn = math.nan if special < 0.06 else (math.inf if special < 0.07 else rng.uniform(-5, 5))
    return {
        "user": user,
        "ts": ts,
        "i": maybe(rng, rng.randint(-50, 50)),
        "x": maybe(rng, round(rng.uniform(-100, 100), 3)),
        "xn": maybe(rng, xn),
        "b": maybe(rng, rng.random() < 0.5),
        "s": maybe(rng, rng.choice(WORDS)),
        "s_wide": maybe(rng, rng.choice(WIDE_WORDS), 0.05),
        "cat": cat or maybe(rng, rng.choice(CATEGORIES), 0.2),
        "tags": maybe(rng, [rng.choice(WORDS) for _ in range(rng.randint(1, 3))]),
        "nums": maybe(rng, [rng.randint(0, 20) for _ in range(rng.randint(1, 3))]),
        "vec": maybe(rng, [round(rng.uniform(-10, 10), 2) for _ in range(3)]),
        "m_int": maybe(rng, {k: rng.randint(-5, 5) for k in rng.sample(["a", "b", "c"], rng.randint(1, 3))}),
        "m_float": maybe(
            rng, {k: round(rng.uniform(0, 9), 2) for k in rng.sample(["a", "b", "c"], rng.randint(1, 2))}
        ),
    }


def by_day(rows: list[dict[str, Any]], rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    """Event rows partitioned by the UTC date of ts, shuffled so file order differs from time order."""
    partitions: dict[str, list[dict[str, Any]]] = {ds: [] for ds in DAYS}
    for row in rows:
        partitions[ds_of(row["ts"])].append(row)
    for rows_of_day in partitions.values():
        rng.shuffle(rows_of_day)
    return partitions


def bursts(rng: random.Random) -> list[dict[str, Any]]:
    """Dense runs of one user's events, mostly of one category: in the last minutes before each
    midnight (snapshot query times) and once more in each day. They make the shortest windows, and
    the bucketed ones, hold enough values for every operation (SKEW needs 3, KURTOSIS 4), so that no
    feature column is null everywhere."""
    events = []
    for day in range(1, 20):
        midday = T0 + (day - 1) * DAY_MS + rng.randrange(HOUR_MS, DAY_MS)
        for end in (T0 + day * DAY_MS, midday):
            user, cat = rng.choice(USERS), rng.choice(CATEGORIES)
            for _ in range(8):
                ts = end - rng.randrange(1, 6 * MINUTE_MS)
                events.append(make_event(rng, ts, user, cat if rng.random() < 0.8 else None))
    return events


def make_events(seed: int, count_scale: float = 1.0, with_bursts: bool = False) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    times = event_times(rng)
    times = times[: int(len(times) * count_scale)]
    events = []
    for ts in times:
        user = EARLY_USER if ts < T0 + 2 * DAY_MS and rng.random() < 0.3 else rng.choice(USERS)
        events.append(make_event(rng, ts, user))
    return events + (bursts(rng) if with_bursts else [])


def make_left(rng: random.Random, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Left rows probing: exactly at an event (excluded), 1 ms after, window tails, midnights, random."""
    probes: list[tuple[str | None, int]] = []
    for event in rng.sample(events, 30):
        probes += [(event["user"], event["ts"]), (event["user"], event["ts"] + 1)]
    for text in WINDOWS:
        window = Window.parse(text)
        hop = hop_millis(window.millis)
        aligned = [e for e in events if e["ts"] % hop == 0]
        for event in rng.sample(aligned, min(3, len(aligned))):
            tail = event["ts"] + window.millis
            probes += [(event["user"], tail + rng.randrange(hop)), (event["user"], tail + hop)]
    probes += [(rng.choice(USERS), T0 + day * DAY_MS) for day in range(1, 20)]
    probes += [(rng.choice(USERS + [EARLY_USER]), T0 + rng.randrange(20 * DAY_MS)) for _ in range(25)]
    probes += [(None, T0 + rng.randrange(20 * DAY_MS)) for _ in range(4)]
    probes += [("nobody", T0 + rng.randrange(20 * DAY_MS)) for _ in range(3)]
    probes = [(user, ts) for user, ts in probes if midnight(JOIN_START) <= ts < T_END]
    rows = [
        {
            "row_id": n,
            "user_id": user,
            "item_id": maybe(rng, rng.choice(ITEMS + ["i9"]), 0.1),
            "cat": maybe(rng, rng.choice(CATEGORIES), 0.1),
            "ts": ts,
        }
        for n, (user, ts) in enumerate(probes)
    ]
    rows += [dict(row) for row in rng.sample(rows, 5)]  # exact duplicates are kept
    return rows


def make_reviews(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    """Entity snapshots: partition D holds every review as of the end of D (edits move ts, deletes drop)."""
    changes: list[tuple[int, int, dict[str, Any] | None]] = []
    for review_id in range(60):
        created = T0 + rng.randrange(18 * DAY_MS) + rng.choice([0, 1])
        if rng.random() < 0.2:
            created = created // HOUR_MS * HOUR_MS
        state = {
            "review_id": review_id,
            "item": maybe(rng, rng.choice(ITEMS), 0.05),
            "rating": maybe(rng, round(rng.uniform(1, 5), 1), 0.1),
            "stars": rng.randint(1, 5),
            "ts": created,
        }
        changes.append((created, review_id, state))
        if rng.random() < 0.3:
            edited = created + rng.randrange(1, 3 * DAY_MS)
            changes.append(
                (edited, review_id, {**state, "rating": round(rng.uniform(1, 5), 1), "ts": edited})
            )
        if rng.random() < 0.1:
            changes.append((created + rng.randrange(1, 5 * DAY_MS), review_id, None))
    snapshots = {}
    for ds in DAYS:
        current: dict[int, dict[str, Any]] = {}
        for when, review_id, state in sorted(changes, key=lambda c: (c[0], c[1])):
            if when < midnight(ds) + DAY_MS:
                if state is None:
                    current.pop(review_id, None)
                else:
                    current[review_id] = state
        rows = list(current.values())
        rng.shuffle(rows)
        snapshots[ds] = rows
    return snapshots


def make_profiles(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    snapshots = {}
    row_id = 0
    for ds in DAYS:
        rows = []
        for user in USERS + [None, "nobody"]:
            rows.append(
                {
                    "row_id": row_id,
                    "user_id": user,
                    "item_id": maybe(rng, rng.choice(ITEMS), 0.1),
                    "ts": midnight(ds) + rng.randrange(DAY_MS),
                }
            )
            row_id += 1
        rows.append(dict(rows[0]))  # a duplicate row
        snapshots[ds] = rows
    return snapshots


@dataclass
class World:
    repo: Any
    tables: dict[str, dict[str, list[dict[str, Any]]]]
    new_project: Callable[..., Any]

    def project(self, objects: dict[str, Any]) -> Any:
        return self.new_project(self.repo, objects)

    def oracle(self, derivations: dict[str, Callable[..., Any]] | None = None) -> Oracle:
        return Oracle(self.tables, derivations)


def make_tables() -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every table of the test warehouse: table -> ds -> rows in file order."""
    rng = random.Random(20260101)
    events = make_events(1, with_bursts=True)
    more_events = make_events(2, count_scale=0.3)
    # ts ties across the two sources: copies of events of the first source, other values
    for event in rng.sample(events, 15):
        more_events.append(make_event(rng, event["ts"], event["user"]))
    return {
        "events.activity": by_day(events, rng),
        "events.more_activity": by_day(more_events, rng),
        "events.left": by_day(make_left(rng, events), rng),
        "items.reviews": make_reviews(rng),
        "users.profiles": make_profiles(rng),
    }


SCHEMAS = {
    "events.activity": EVENT_SCHEMA,
    "events.more_activity": EVENT_SCHEMA,
    "events.left": LEFT_SCHEMA,
    "items.reviews": REVIEW_SCHEMA,
    "users.profiles": PROFILE_SCHEMA,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, new_project: Callable[..., Any]) -> World:
    tables = make_tables()
    repo = tmp_path_factory.mktemp("repo")
    write_tables(new_project(repo).warehouse, tables, SCHEMAS)
    return World(repo, tables, new_project)


def event_source(table: str = "events.activity", columns: Sequence[str] = EVENT_COLUMNS) -> EventSource:
    return EventSource(table=table, query=Query(selects={c: c for c in columns}, time_column="ts"))


LEFT = EventSource(
    table="events.left",
    query=Query(
        selects={"row_id": "row_id", "user_id": "user_id", "item_id": "item_id", "cat": "cat"},
        time_column="ts",
    ),
)


def read_output(project: Any, name: str, start: str, end: str) -> list[dict[str, Any]]:
    return arrow_rows(project.warehouse.read_table(project.output_table(name), start, end))


def backfill(project: Any, name: str, start: str, end: str) -> list[dict[str, Any]]:
    written = project.backfill(name, start, end)
    assert sorted(written) == ds_range(start, end), f"backfill({name}) wrote {written}"
    return read_output(project, name, start, end)


def group_by_context(group_by: GroupBy) -> Callable[[dict[str, Any]], str]:
    return lambda row: f"q={iso(midnight(row['ds']) + DAY_MS)} key={[row[k] for k in group_by.keys]}"


def join_context(row: dict[str, Any]) -> str:
    return f"left ts={iso(row['ts'])} ({row['ts']}) ds={row.get('ds')}"


def derived_columns(raw: list[str], derivations: Sequence[Derivation]) -> list[str]:
    """The output columns that ``derivations`` make of the ``raw`` feature columns (``*`` keeps them)."""
    if not derivations:
        return raw
    keep_raw = any(d.is_star for d in derivations)
    return (raw if keep_raw else []) + [d.name for d in derivations if not d.is_star]


def group_by_feature_columns(group_by: GroupBy) -> list[str]:
    return derived_columns(group_by.output_columns(), group_by.derivations)


def join_feature_columns(join: Join) -> list[str]:
    raw = [c for part in join.right_parts for c in Oracle.part_columns(part)]
    return derived_columns(raw, join.derivations)


def check_group_by_backfill(
    world: World, project: Any, group_by: GroupBy, start: str, end: str, oracle: Oracle | None = None
) -> None:
    got = backfill(project, group_by.name, start, end)
    oracle = oracle or world.oracle()
    expected = [row for ds in ds_range(start, end) for row in oracle.group_by_backfill(group_by, ds)]
    assert_exercised(expected, group_by_feature_columns(group_by))
    assert_rows_match(expected, got, identity=["ds", *group_by.keys], context=group_by_context(group_by))


def check_join_backfill(
    world: World,
    project: Any,
    join: Join,
    start: str,
    end: str,
    oracle: Oracle | None = None,
    identity: Sequence[str] = ("ds", "row_id", "ts"),
) -> None:
    got = backfill(project, join.name, start, end)
    oracle = oracle or world.oracle()
    expected = oracle.join_backfill(join, start, end)
    assert_exercised(expected, join_feature_columns(join))
    assert_rows_match(expected, got, identity=list(identity), context=join_context)


# ------------------------------------------------------------------------------ every operation


@dataclass(frozen=True)
class Case:
    """One operation over some input columns: each windowed (all WINDOWS) and unbounded, the first
    also bucketed by ``cat`` (not element-wise ones: the compiler rejects element_wise with buckets)."""

    id: str
    operation: Any
    inputs: tuple[str, ...]
    element_wise: bool = False

    def aggregations(self) -> list[Aggregation]:
        aggregations = []
        for column in self.inputs:
            aggregations.append(
                Aggregation(column, self.operation, windows=WINDOWS, element_wise=self.element_wise)
            )
            aggregations.append(Aggregation(column, self.operation, element_wise=self.element_wise))
        if self.element_wise:
            return aggregations
        first = self.inputs[0]
        aggregations.append(Aggregation(first, self.operation, windows=["7m", "5h", "2d"], buckets=["cat"]))
        aggregations.append(Aggregation(first, self.operation, buckets=["cat"]))
        return aggregations


CASES = [
    Case("count", Operation.COUNT, ("i", "x", "xn", "s", "tags", "m_int")),
    Case("sum", Operation.SUM, ("i", "x", "xn", "b", "nums", "m_int")),
    Case("average", Operation.AVERAGE, ("i", "x", "xn", "m_float")),
    Case("variance", Operation.VARIANCE, ("x", "i", "xn")),
    Case("skew", Operation.SKEW, ("x", "i", "xn")),
    Case("kurtosis", Operation.KURTOSIS, ("x", "i", "xn")),
    Case("min", Operation.MIN, ("i", "x", "xn", "s")),
    Case("max", Operation.MAX, ("i", "x", "xn", "s")),
    Case("first", Operation.FIRST, ("s", "i", "x", "tags")),
    Case("last", Operation.LAST, ("s", "i", "xn", "tags")),
    Case("first_k", Operation.FIRST_K(3), ("s", "i", "tags")),
    Case("last_k", Operation.LAST_K(3), ("i", "x", "s", "tags")),
    Case("top_k", Operation.TOP_K(3), ("i", "x", "s", "nums")),
    Case("bottom_k", Operation.BOTTOM_K(2), ("i", "x", "s", "nums")),
    Case("unique_count", Operation.UNIQUE_COUNT, ("s", "i", "x", "xn", "tags")),
    Case("bounded_unique_count", Operation.BOUNDED_UNIQUE_COUNT(3), ("s", "i", "tags")),
    Case("approx_unique_count", Operation.APPROX_UNIQUE_COUNT, ("s_wide", "i", "tags")),
    Case("approx_unique_count_lg4", Operation.APPROX_UNIQUE_COUNT(lg_k=4), ("s_wide",)),  # past k: estimating
    Case("approx_percentile", Operation.APPROX_PERCENTILE([0.1, 0.5, 0.99]), ("x", "i")),
    Case("approx_percentile_k16", Operation.APPROX_PERCENTILE([0.25, 0.5, 0.9], k=16), ("x",)),  # compacting
    Case("histogram", Operation.HISTOGRAM, ("s", "tags")),
    Case("histogram_k", Operation.HISTOGRAM(2), ("s", "tags")),
    Case("approx_histogram_k", Operation.APPROX_HISTOGRAM_K, ("s", "tags")),
    Case("approx_histogram_k_wide", Operation.APPROX_HISTOGRAM_K(4), ("s_wide",)),
    Case("element_wise_sum", Operation.SUM, ("vec",), element_wise=True),
    Case("element_wise_average", Operation.AVERAGE, ("vec",), element_wise=True),
    Case("element_wise_max", Operation.MAX, ("vec",), element_wise=True),
    Case("element_wise_count", Operation.COUNT, ("vec",), element_wise=True),
]


#: the one operation case Spark also runs for SNAPSHOT accuracy (GroupBy backfill and snapshot Join)
SPARK_SNAPSHOT_CASE = "count"


def operation_runs() -> list[Any]:
    """(engine, case, accuracy) of every run: DuckDB runs every case for both accuracies; Spark, to
    keep CI's runtime in check (~4 s a run), every case for TEMPORAL and one for SNAPSHOT. The
    snapshot query time is shared code (`gnomon.timeline`), and the other tests of this module run
    SNAPSHOT GroupBy backfills and Joins on Spark too."""
    return [
        pytest.param(engine, case, accuracy, id=f"{engine}-{case.id}-{accuracy.value}")
        for engine in ENGINES
        for case in CASES
        for accuracy in (Accuracy.TEMPORAL, Accuracy.SNAPSHOT)
        if engine != "spark" or accuracy is Accuracy.TEMPORAL or case.id == SPARK_SNAPSHOT_CASE
    ]


@pytest.mark.parametrize(("engine", "case", "accuracy"), operation_runs(), indirect=["engine"])
def test_operation_matches_oracle(world: World, case: Case, accuracy: Accuracy) -> None:
    group_by = GroupBy(
        name=f"ops.{case.id}_{accuracy.value}",
        sources=[event_source()],
        keys=["user"],
        aggregations=case.aggregations(),
        accuracy=accuracy,
    )
    join = Join(
        name=f"train.{case.id}_{accuracy.value}",
        left=LEFT,
        right_parts=[JoinPart(group_by, key_mapping={"user_id": "user"})],
    )
    project = world.project({group_by.name: group_by, join.name: join})
    if accuracy is Accuracy.SNAPSHOT:  # the GroupBy backfill does not depend on accuracy: run it once
        check_group_by_backfill(world, project, group_by, GB_START, GB_END)
    check_join_backfill(world, project, join, JOIN_START, JOIN_END)


# ------------------------------------------------------------------------------- other shapes


def activity_group_by(name: str, accuracy: Accuracy, **kwargs: Any) -> GroupBy:
    aggregations = [
        Aggregation("i", Operation.COUNT, windows=["30m", "2d"]),
        Aggregation("x", Operation.SUM),
        Aggregation("x", Operation.AVERAGE, windows=["5h", "14d"]),
        Aggregation("s", Operation.LAST),
    ]
    return GroupBy(
        name=name,
        sources=[event_source()],
        keys=["user"],
        aggregations=aggregations,
        accuracy=accuracy,
        **kwargs,
    )


def review_group_by(name: str, accuracy: Accuracy) -> GroupBy:
    source = EntitySource(
        snapshot_table="items.reviews",
        query=Query(selects={"item": "item", "rating": "rating", "stars": "stars"}, time_column="ts"),
    )
    aggregations = [
        Aggregation("rating", Operation.AVERAGE, windows=["5h", "2d", "14d"]),
        Aggregation("rating", Operation.AVERAGE),
        Aggregation("rating", Operation.COUNT, windows=["13h"]),
        Aggregation("stars", Operation.SUM, windows=["2d"]),
        Aggregation("rating", Operation.LAST),
        Aggregation("stars", Operation.TOP_K(2), windows=["14d"]),
        Aggregation("rating", Operation.MAX),
    ]
    return GroupBy(name=name, sources=[source], keys=["item"], aggregations=aggregations, accuracy=accuracy)


@pytest.mark.parametrize("accuracy", [Accuracy.TEMPORAL, Accuracy.SNAPSHOT], ids=lambda a: a.value)
def test_entity_snapshots_and_events_left(world: World, accuracy: Accuracy) -> None:
    """Entity GroupBy backfill, and an events-left Join over it (q = ts or floor(ts, 1d))."""
    reviews = review_group_by(f"items.reviews_{accuracy.value}", accuracy)
    join = Join(
        name=f"train.reviews_{accuracy.value}",
        left=LEFT,
        right_parts=[JoinPart(reviews, key_mapping={"item_id": "item"})],
    )
    project = world.project({reviews.name: reviews, join.name: join})
    if accuracy is Accuracy.SNAPSHOT:
        check_group_by_backfill(world, project, reviews, "2026-01-01", LAST_DS)
    check_join_backfill(world, project, join, JOIN_START, JOIN_END)


def test_entities_left_join(world: World) -> None:
    """Entities on the left: q = ds + 1 day 00:00 for every right part, whatever its accuracy."""
    left = EntitySource(
        snapshot_table="users.profiles",
        query=Query(selects={"row_id": "row_id", "user_id": "user_id", "item_id": "item_id"}),
    )
    temporal = activity_group_by("users.activity_temporal", Accuracy.TEMPORAL)
    reviews = review_group_by("items.reviews_for_profiles", Accuracy.SNAPSHOT)
    join = Join(
        name="train.profiles",
        left=left,
        right_parts=[
            JoinPart(temporal, key_mapping={"user_id": "user"}),
            JoinPart(reviews, key_mapping={"item_id": "item"}, prefix="fav"),
        ],
    )
    project = world.project({join.name: join, temporal.name: temporal, reviews.name: reviews})
    check_join_backfill(world, project, join, "2026-01-01", LAST_DS)


def test_join_with_two_keys_prefix_and_derivations(world: World) -> None:
    by_category = GroupBy(
        name="events.user_category",
        sources=[event_source()],
        keys=["user", "cat"],
        accuracy=Accuracy.TEMPORAL,
        aggregations=[
            Aggregation("x", Operation.SUM, windows=["13h", "14d"]),
            Aggregation("i", Operation.COUNT),
        ],
    )
    daily = activity_group_by("events.daily", Accuracy.SNAPSHOT)
    join = Join(
        name="train.derived",
        left=LEFT,
        right_parts=[
            JoinPart(by_category, key_mapping={"user_id": "user"}, prefix="uc"),
            JoinPart(daily, key_mapping={"user_id": "user"}),
        ],
        derivations=[
            Derivation("*", "*"),
            Derivation("count_twice", "uc_events_user_category_i_count * 2"),
            Derivation("sum_or_zero", "COALESCE(events_daily_x_sum, 0.0)"),
        ],
    )
    derivations = {
        "count_twice": lambda r: (
            None if r["uc_events_user_category_i_count"] is None else r["uc_events_user_category_i_count"] * 2
        ),
        "sum_or_zero": lambda r: 0.0 if r["events_daily_x_sum"] is None else r["events_daily_x_sum"],
    }
    project = world.project({join.name: join, by_category.name: by_category, daily.name: daily})
    check_join_backfill(world, project, join, JOIN_START, JOIN_END, oracle=world.oracle(derivations))

    only_derived = Join(
        name="train.only_derived",
        left=LEFT,
        right_parts=join.right_parts,
        derivations=[d for d in join.derivations if not d.is_star],
    )
    project = world.project(
        {only_derived.name: only_derived, by_category.name: by_category, daily.name: daily}
    )
    check_join_backfill(world, project, only_derived, JOIN_START, JOIN_END, oracle=world.oracle(derivations))


def test_training_data(world: World) -> None:
    """training_data(join, left frame): same values as a backfill, left columns as given first."""
    temporal = activity_group_by("events.td_temporal", Accuracy.TEMPORAL)
    snapshot = activity_group_by("events.td_snapshot", Accuracy.SNAPSHOT)
    join = Join(
        name="train.td",
        left=LEFT,
        right_parts=[
            JoinPart(temporal, key_mapping={"user_id": "user"}, prefix="t"),
            JoinPart(snapshot, key_mapping={"user_id": "user"}),
        ],
    )
    left_rows = [
        {
            "row_id": r["row_id"],
            "user_id": r["user_id"],
            "item_id": r["item_id"],
            "cat": r["cat"],
            "ts": r["ts"],
        }
        for ds in ds_range(JOIN_START, JOIN_END)
        for r in world.tables["events.left"][ds]
    ]
    project = world.project({join.name: join, temporal.name: temporal, snapshot.name: snapshot})
    table = project.training_data(join.name, pa.Table.from_pylist(left_rows, schema=LEFT_SCHEMA))
    assert table.num_rows == len(left_rows)
    columns = Oracle.part_columns(join.right_parts[0]) + Oracle.part_columns(join.right_parts[1])
    assert table.column_names == list(LEFT_SCHEMA.names) + columns
    expected = world.oracle().join_rows(join, left_rows)
    assert_rows_match(expected, arrow_rows(table), identity=["row_id", "ts"], context=join_context)


def test_group_by_derivations(world: World) -> None:
    base = activity_group_by(
        "events.derived_star",
        Accuracy.SNAPSHOT,
        derivations=[Derivation("*", "*"), Derivation("avg_x2", "x_average_5h * 2")],
    )
    only = activity_group_by(
        "events.derived_only", Accuracy.SNAPSHOT, derivations=[Derivation("avg_x2", "x_average_5h * 2")]
    )
    oracle = world.oracle({"avg_x2": lambda r: None if r["x_average_5h"] is None else r["x_average_5h"] * 2})
    project = world.project({base.name: base, only.name: only})
    check_group_by_backfill(world, project, base, GB_START, GB_END, oracle=oracle)
    check_group_by_backfill(world, project, only, GB_START, GB_END, oracle=oracle)


def test_windowed_only_group_by_keys(world: World) -> None:
    """Keys appear in partition D only with an input row in one of the windows (u4 stops early)."""
    group_by = GroupBy(
        name="events.windowed_only",
        sources=[event_source()],
        keys=["user"],
        aggregations=[
            Aggregation("i", Operation.COUNT, windows=["30m", "13h"]),
            Aggregation("s", Operation.LAST, windows=["7m"]),
        ],
    )
    project = world.project({group_by.name: group_by})
    check_group_by_backfill(world, project, group_by, FIRST_DS, LAST_DS)


def test_two_sources_source_order(world: World) -> None:
    """Rows of sources[0] come before rows of sources[1] on a ts tie (FIRST / LAST keep the first seen)."""
    columns = ("user", "s", "i", "x")
    for order in ((0, 1), (1, 0)):
        sources = [event_source(("events.activity", "events.more_activity")[i], columns) for i in order]
        group_by = GroupBy(
            name=f"events.two_sources_{order[0]}{order[1]}",
            sources=sources,
            keys=["user"],
            accuracy=Accuracy.TEMPORAL,
            aggregations=[
                Aggregation("s", op, windows=["30m", "2d"])
                for op in (Operation.FIRST, Operation.LAST, Operation.FIRST_K(3), Operation.LAST_K(3))
            ]
            + [Aggregation("i", Operation.COUNT), Aggregation("x", Operation.SUM, windows=["5h"])],
        )
        join = Join(
            name=f"train.two_sources_{order[0]}{order[1]}",
            left=LEFT,
            right_parts=[JoinPart(group_by, key_mapping={"user_id": "user"})],
        )
        project = world.project({group_by.name: group_by, join.name: join})
        check_group_by_backfill(world, project, group_by, GB_START, GB_END)
        check_join_backfill(world, project, join, JOIN_START, JOIN_END)


def test_output_columns_in_order(world: World) -> None:
    """GroupBy output: keys, features in aggregation order, ds. Join: left columns, then features."""
    group_by = activity_group_by("events.ordered", Accuracy.SNAPSHOT)
    join = Join(
        name="train.ordered", left=LEFT, right_parts=[JoinPart(group_by, key_mapping={"user_id": "user"})]
    )
    project = world.project({group_by.name: group_by, join.name: join})
    project.backfill(group_by.name, GB_START, GB_START)
    table = project.warehouse.read_table(project.output_table(group_by.name), GB_START, GB_START)
    assert [c for c in table.column_names if c != "ds"] == ["user", *group_by.output_columns()]
    assert project.output_table(group_by.name) == "features.events_ordered"
    project.backfill(join.name, JOIN_START, JOIN_START)
    table = project.warehouse.read_table(project.output_table(join.name), JOIN_START, JOIN_START)
    columns = [c for c in table.column_names if c != "ds"]
    features = Oracle.part_columns(join.right_parts[0])
    assert columns[-len(features) :] == features
    assert set(columns[: -len(features)]) == {"row_id", "user_id", "item_id", "cat", "ts"}
