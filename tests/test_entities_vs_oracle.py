"""Entity mutations, attribute lookups and cumulative sources against the naive oracle (SPEC §4).

One seeded warehouse per module: a CDC stream over 10 days for a handful of items with several rows
each (inserts, updates as a before row plus an after row at one mutation_ts, deletes, deletes of rows
that never existed, exact duplicate rows, rows moving to another item, several changes per item per
day, bursts, inserts whose row time is after their mutation time, nulls, NaN and ±Inf, mutations at
midnight and just before it); the snapshot partitions are the generator's own state at the end of each
day, checked against the oracle's replay. A left table probes exactly at mutation times, 1 ms either
side, at future row times, window tails, midnights and random times. Also an event table (lookups
with ts ties) and a cumulative SCD type 2 address history.

The operations of test_offline_vs_oracle run over the entity source in a few groups, each a Join with
a TEMPORAL and a SNAPSHOT part, plus the GroupBy backfill; then an entity-left Join, training_data,
lookups over entities with mutations and over events, and the cumulative source.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pytest

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
    match_key,
    midnight,
    write_tables,
)

FIRST_DS, LAST_DS = "2026-03-01", "2026-03-10"
DAYS = ds_range(FIRST_DS, LAST_DS)
START = (
    "2026-03-02"  # the first day with a snapshot the day before: every Join and GroupBy backfill starts here
)
T0, T_END = midnight(FIRST_DS), midnight(LAST_DS) + DAY_MS
ITEMS = ["i0", "i1", "i2", "i3", "i4"]
CATEGORIES = ["red", "green", "blue"]
WORDS = ["ant", "bee", "cat", "dog", "eel", "fox"]  # <= 8 distinct: APPROX_HISTOGRAM_K(8) is exact
WIDE_WORDS = [f"w{i:02d}" for i in range(40)]
WINDOWS = ["7m", "5h", "13h", "2d", "14d"]  # hops 1m, 5m, 1h, 1h, 1d
BUCKET_WINDOWS = ["5h", "2d"]

SNAPSHOTS, MUTATIONS = "items.ratings", "items.rating_mutations"
EVENTS, ADDRESSES, LEFT_TABLE, PROFILES = (
    "events.activity",
    "users.address_history",
    "events.left",
    "users.profiles",
)

ENTITY_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("item", pa.string()),
        ("rating", pa.float64()),
        ("stars", pa.int64()),
        ("xn", pa.float64()),
        ("s", pa.string()),
        ("s_wide", pa.string()),
        ("cat", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("vec", pa.list_(pa.float64())),
        ("ts", pa.int64()),
    ]
)
MUTATION_SCHEMA = pa.schema([*ENTITY_SCHEMA, ("mutation_ts", pa.int64()), ("is_before", pa.bool_())])
ENTITY_COLUMNS = [c for c in ENTITY_SCHEMA.names if c != "ts"]
EVENT_SCHEMA = pa.schema(
    [
        ("item", pa.string()),
        ("ts", pa.int64()),
        ("s", pa.string()),
        ("x", pa.float64()),
        ("n", pa.int64()),
        ("tags", pa.list_(pa.string())),
    ]
)
ADDRESS_SCHEMA = pa.schema(
    [("user", pa.int64()), ("address", pa.string()), ("zip", pa.int64()), ("ts", pa.int64())]
)
LEFT_SCHEMA = pa.schema(
    [("row_id", pa.int64()), ("item_id", pa.string()), ("user_id", pa.int64()), ("ts", pa.int64())]
)
PROFILE_SCHEMA = pa.schema(
    [("row_id", pa.int64()), ("item_id", pa.string()), ("user_id", pa.int64()), ("ts", pa.int64())]
)
SCHEMAS = {
    SNAPSHOTS: ENTITY_SCHEMA,
    MUTATIONS: MUTATION_SCHEMA,
    EVENTS: EVENT_SCHEMA,
    ADDRESSES: ADDRESS_SCHEMA,
    LEFT_TABLE: LEFT_SCHEMA,
    PROFILES: PROFILE_SCHEMA,
}
USERS = [1, 2, 3, 4, 5, 6]

Rows = list[dict[str, Any]]


# ------------------------------------------------------------------------------------- CDC data


def maybe(rng: random.Random, value: Any, null_rate: float = 0.15) -> Any:
    return None if rng.random() < null_rate else value


def special_float(rng: random.Random) -> float | None:
    roll = rng.random()
    if roll < 0.08:
        return math.nan
    if roll < 0.10:
        return math.inf
    return maybe(rng, round(rng.uniform(-5, 5), 2))


def same_row(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The generator's own row equality (NaN equals NaN, None equals None), for its model of the table."""

    def same(x: Any, y: Any) -> bool:
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return True
        if isinstance(x, list) and isinstance(y, list):
            return len(x) == len(y) and all(same(p, r) for p, r in zip(x, y, strict=True))
        return type(x) is type(y) and x == y

    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


@dataclass
class Cdc:
    """The generator's model of the entity table: its rows in source order, and the CDC rows so far."""

    rng: random.Random
    state: list[tuple[dict[str, Any], int]]  # (row, mutation_ts that appended it)
    changes: Rows
    next_id: int = 0
    burst_cat: str = "red"
    bursts: list[tuple[str, int]] = field(default_factory=list)

    def values(self, item: str | None, ts: int) -> dict[str, Any]:
        rng = self.rng
        self.next_id += 1
        return {
            "id": self.next_id,
            "item": item,
            "rating": maybe(rng, round(rng.uniform(1, 5), 1), 0.1),
            "stars": maybe(rng, rng.randint(1, 5)),
            "xn": special_float(rng),
            "s": maybe(rng, rng.choice(WORDS)),
            "s_wide": maybe(rng, rng.choice(WIDE_WORDS), 0.05),
            "cat": maybe(rng, rng.choice(CATEGORIES), 0.2),
            "tags": maybe(rng, [rng.choice(WORDS) for _ in range(rng.randint(1, 3))]),
            "vec": maybe(rng, [round(rng.uniform(-10, 10), 2) for _ in range(3)]),
            "ts": ts,
        }

    def row_time(self, when: int) -> int:
        roll = self.rng.random()
        if roll < 0.15:  # backdated
            return when - self.rng.randrange(1, 3 * DAY_MS)
        if roll < 0.30:  # a row time after its mutation time: invisible until then
            return when + self.rng.randrange(MINUTE_MS, 12 * HOUR_MS)
        return when

    def insert(self, when: int, row: dict[str, Any]) -> None:
        self.changes.append({**row, "mutation_ts": when, "is_before": False})
        self.state.append((dict(row), when))

    def delete(self, when: int, row: dict[str, Any]) -> None:
        self.changes.append({**row, "mutation_ts": when, "is_before": True})
        for index, (existing, _) in enumerate(self.state):
            if same_row(existing, row):
                del self.state[index]
                return

    def target(self, when: int, item: str | None = None) -> dict[str, Any] | None:
        """A live row appended before ``when`` (never one appended at the same ms: before rows go first)."""
        live = [row for row, since in self.state if since < when and (item is None or row["item"] == item)]
        return self.rng.choice(live) if live else None

    def act(self, when: int, item: str | None = None, insert_only: bool = False) -> None:
        rng = self.rng
        item = item or rng.choice(ITEMS)
        roll = rng.random()
        old = self.target(when, item)
        if insert_only:  # a burst of new rows of one category, each known at once
            row = self.values(item, when)
            row["cat"], row["rating"] = self.burst_cat, round(rng.uniform(1, 5), 1)
            self.insert(when, row)
            if self.bursts and self.bursts[-1][0] == item and when - self.bursts[-1][1] < MINUTE_MS:
                self.bursts[-1] = (item, when)
            else:
                self.bursts.append((item, when))
        elif roll < 0.22 or old is None:
            self.insert(when, self.values(maybe(rng, item, 0.03), self.row_time(when)))
        elif roll < 0.55:  # update: before row (old values) + after row (new values), same mutation_ts
            new = dict(old)
            fresh = self.values(old["item"], old["ts"])
            self.next_id -= 1
            if (
                rng.random() < 0.9
            ):  # else an update that changes nothing: the row moves to the end of the list
                for column in rng.sample(
                    ["rating", "stars", "xn", "s", "s_wide", "cat", "tags", "vec"], rng.randint(1, 3)
                ):
                    new[column] = fresh[column]
                if rng.random() < 0.4:
                    new["ts"] = when if rng.random() < 0.8 else when + rng.randrange(MINUTE_MS, 6 * HOUR_MS)
                if rng.random() < 0.08:
                    new["item"] = rng.choice(ITEMS)  # the row moves to another key
            self.delete(when, old)
            self.insert(when, new)
        elif roll < 0.80:
            self.delete(when, old)
        elif roll < 0.88:  # a delete of a row that never existed: a no-op
            ghost = self.values(item, when - rng.randrange(DAY_MS))
            ghost["id"] += 100_000
            self.delete(when, ghost)
        elif roll < 0.93:  # a near miss: the live row's id with another rating: not equal, a no-op
            self.delete(when, {**old, "rating": (old["rating"] or 0.0) + 0.5})
        else:  # an exact duplicate of a live row; deleting it later removes one copy
            self.insert(when, dict(old))


def day_times(rng: random.Random, ds: str) -> list[int]:
    start = midnight(ds)
    times = [start + rng.randrange(DAY_MS) for _ in range(16)]
    times.append(start)  # a mutation at exactly midnight belongs to that day
    times += [
        start + DAY_MS - rng.randrange(1, 7 * MINUTE_MS) for _ in range(3)
    ]  # seen by 7m windows at midnight
    times += [start + rng.randrange(DAY_MS) // HOUR_MS * HOUR_MS for _ in range(2)]  # on hop boundaries
    times += rng.sample(times, 2)  # two changes at the same ms
    return sorted(times)


def make_cdc(rng: random.Random) -> tuple[dict[str, Rows], dict[str, Rows], list[tuple[str, int]]]:
    """Snapshot partitions (state at the end of each day, in source order), mutation partitions, and
    the (item, last mutation_ts) of every burst."""
    cdc = Cdc(rng, [], [])
    snapshots: dict[str, Rows] = {}
    mutations: dict[str, Rows] = {}
    for day, ds in enumerate(DAYS):
        first = len(cdc.changes)
        if day == 0:  # the initial rows: inserted on the first day, row times up to 20 days back
            for _ in range(30):
                when = T0 + rng.randrange(DAY_MS)
                cdc.insert(when, cdc.values(rng.choice(ITEMS), when - rng.randrange(20 * DAY_MS)))
            cdc.changes.sort(key=lambda c: c["mutation_ts"])
            cdc.state.sort(key=lambda s: s[1])
        else:
            events: list[tuple[int, str | None]] = [(t, None) for t in day_times(rng, ds)]
            # bursts of 5 rows in under 3.5 minutes: one at a random time, one just before midnight
            for burst_start in (
                midnight(ds) + rng.randrange(DAY_MS - HOUR_MS),
                midnight(ds) + DAY_MS - 6 * MINUTE_MS,
            ):
                burst_item = rng.choice(ITEMS)
                events += [(burst_start + k * 40_000 + rng.randrange(1, 1000), burst_item) for k in range(5)]
            cdc.burst_cat = rng.choice(CATEGORIES)
            for when, item in sorted(events, key=lambda e: e[0]):
                cdc.act(when, item, insert_only=item is not None)
        day_changes = cdc.changes[first:]
        mutations[ds] = sorted(day_changes, key=lambda c: (c["mutation_ts"], not c["is_before"]))
        assert all(ds_of(c["mutation_ts"]) == ds for c in day_changes)
        snapshots[ds] = [dict(row) for row, _ in cdc.state]
    return snapshots, mutations, cdc.bursts


# ------------------------------------------------------------------------------------- other data


def make_events(rng: random.Random) -> dict[str, Rows]:
    """Events for a lookup: random times, hour boundaries, exact ts ties with other values, shuffled files."""
    times = [T0 + rng.randrange(10 * DAY_MS) for _ in range(120)]
    times += [T0 + rng.randrange(10 * 24) * HOUR_MS for _ in range(20)]
    times += rng.sample(times, 25)
    partitions: dict[str, Rows] = {ds: [] for ds in DAYS}
    for ts in times:
        partitions[ds_of(ts)].append(
            {
                "item": maybe(rng, rng.choice(ITEMS), 0.03),
                "ts": ts,
                "s": maybe(rng, rng.choice(WORDS)),
                "x": maybe(rng, round(rng.uniform(0, 9), 2)),
                "n": maybe(rng, rng.randint(0, 100)),
                "tags": maybe(rng, rng.sample(WORDS, rng.randint(1, 2))),
            }
        )
    for rows in partitions.values():
        rng.shuffle(rows)
    return partitions


def make_addresses(rng: random.Random) -> dict[str, Rows]:
    """SCD type 2: partition D holds the whole history with ts < D+1 00:00, always in the same row order."""
    history = []
    for user in USERS:
        for _ in range(rng.randint(2, 6)):
            history.append(
                {
                    "user": user,
                    "address": maybe(rng, f"{rng.randint(1, 400)} {rng.choice(WORDS)} St", 0.1),
                    "zip": maybe(rng, rng.randint(10000, 10009)),
                    "ts": T0 + rng.randrange(10 * DAY_MS),
                }
            )
    for row in rng.sample(history, 3):  # ties: a second version at the same ts
        history.append({**row, "address": f"{rng.randint(1, 400)} tie St"})
    rng.shuffle(history)
    return {ds: [row for row in history if row["ts"] < midnight(ds) + DAY_MS] for ds in DAYS}


def make_left(
    rng: random.Random,
    mutations: dict[str, Rows],
    bursts: list[tuple[str, int]],
    events: dict[str, Rows],
    addresses: Rows,
) -> dict[str, Rows]:
    """Left rows: at mutation times, 1 ms either side, future row times, window tails, midnights, random."""
    probes: list[tuple[str | None, int]] = []
    changes = [c for ds in DAYS[1:] for c in mutations[ds]]
    for change in rng.sample(changes, 45):
        when = change["mutation_ts"]
        probes += [(change["item"], when), (change["item"], when + 1)]
        if rng.random() < 0.4:
            probes.append((change["item"], when - 1))
    for item, when in bursts:  # after each burst; for one just before midnight, SNAPSHOT probes the next day
        probes += [(item, when + 1), (item, when // DAY_MS * DAY_MS + DAY_MS + rng.randrange(DAY_MS))]
    future = [c for c in changes if not c["is_before"] and c["ts"] > c["mutation_ts"]]
    for change in rng.sample(future, min(12, len(future))):
        probes += [(change["item"], change["ts"]), (change["item"], change["ts"] + 1)]
    for text in WINDOWS:
        window = Window.parse(text)
        hop = hop_millis(window.millis)
        for change in rng.sample(changes, 3):
            tail = change["ts"] + window.millis
            probes += [(change["item"], tail // hop * hop + rng.choice([0, hop - 1, hop]))]
    for ds in DAYS[1:]:
        probes += [(item, midnight(ds)) for item in rng.sample(ITEMS, 2)]
    for rows in list(events.values())[1:]:
        for event in rng.sample(rows, 2):  # exactly at an event, and just after
            probes += [(event["item"], event["ts"]), (event["item"], event["ts"] + 1)]
    probes += [
        (rng.choice(ITEMS), midnight(START) + rng.randrange(T_END - midnight(START))) for _ in range(15)
    ]
    probes += [(None, midnight(START) + rng.randrange(T_END - midnight(START))) for _ in range(3)]
    probes += [("i9", midnight(START) + rng.randrange(T_END - midnight(START))) for _ in range(3)]
    address_times = [row["ts"] for row in addresses if row["ts"] >= midnight(START)]
    users: list[int | None] = [*USERS, 99, None]
    rows = []
    for row_id, (item, ts) in enumerate(probes):
        if not midnight(START) <= ts < T_END:
            continue
        rows.append({"row_id": row_id, "item_id": item, "user_id": rng.choice(users), "ts": ts})
    for ts in rng.sample(
        address_times, min(15, len(address_times))
    ):  # exactly at an address change, and after
        for delta in (0, 1):
            rows.append(
                {
                    "row_id": len(probes) + len(rows),
                    "item_id": rng.choice(ITEMS),
                    "user_id": rng.choice(USERS),
                    "ts": ts + delta,
                }
            )
    rows += [dict(row) for row in rng.sample(rows, 4)]  # exact duplicates are kept
    partitions: dict[str, Rows] = {ds: [] for ds in DAYS[1:]}
    for row in rows:
        partitions[ds_of(row["ts"])].append(row)
    for day_rows in partitions.values():
        rng.shuffle(day_rows)
    return partitions


def make_profiles(rng: random.Random) -> dict[str, Rows]:
    """An entity left: partition D lists (user, favourite item) rows; q = D+1 00:00."""
    snapshots, row_id = {}, 0
    for ds in DAYS:
        rows = []
        for item in [*ITEMS, None, "i9"]:
            rows.append(
                {
                    "row_id": row_id,
                    "item_id": item,
                    "user_id": rng.choice(USERS),
                    "ts": midnight(ds) + rng.randrange(DAY_MS),
                }
            )
            row_id += 1
        rows.append(dict(rows[0]))
        snapshots[ds] = rows
    return snapshots


def make_tables() -> dict[str, dict[str, Rows]]:
    rng = random.Random(20260301)
    snapshots, mutations, bursts = make_cdc(rng)
    events = make_events(rng)
    addresses = make_addresses(rng)
    return {
        SNAPSHOTS: snapshots,
        MUTATIONS: mutations,
        EVENTS: events,
        ADDRESSES: addresses,
        LEFT_TABLE: make_left(rng, mutations, bursts, events, addresses[LAST_DS]),
        PROFILES: make_profiles(rng),
    }


@dataclass
class World:
    repo: Any
    tables: dict[str, dict[str, Rows]]
    new_project: Callable[..., Any]
    oracle: Oracle  # shared: its cache of replayed states serves every test

    def project(self, objects: dict[str, Any]) -> Any:
        return self.new_project(self.repo, objects)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, new_project: Callable[..., Any]) -> World:
    tables = make_tables()
    repo = tmp_path_factory.mktemp("entities")
    (repo / "gnomon.yaml").write_text("project: entities_vs_oracle\n")
    write_tables(new_project(repo).warehouse, tables, SCHEMAS)
    return World(repo, tables, new_project, Oracle(tables))


# ------------------------------------------------------------------------------------- definitions


def entity_source(columns: Sequence[str] = ENTITY_COLUMNS) -> EntitySource:
    return EntitySource(
        snapshot_table=SNAPSHOTS,
        mutation_table=MUTATIONS,
        query=Query(selects={c: c for c in columns}, time_column="ts"),
    )


LEFT = EventSource(
    table=LEFT_TABLE,
    query=Query(selects={"row_id": "row_id", "item_id": "item_id", "user_id": "user_id"}, time_column="ts"),
)


def read_output(project: Any, name: str, start: str, end: str) -> Rows:
    return arrow_rows(project.warehouse.read_table(project.output_table(name), start, end))


def backfill(project: Any, name: str, start: str = START, end: str = LAST_DS) -> Rows:
    written = project.backfill(name, start, end)
    assert sorted(written) == ds_range(start, end), f"backfill({name}) wrote {written}"
    return read_output(project, name, start, end)


def group_by_context(world: World, group_by: GroupBy) -> Callable[[dict[str, Any]], str]:
    def describe(row: dict[str, Any]) -> str:
        q = midnight(row["ds"]) + DAY_MS
        key = tuple(row[k] for k in group_by.keys)
        rows = world.oracle.rows_by_key(group_by, q).get(key, [])
        return f"q={iso(q)} key={key} rows={[(iso(r.ts), dict(r.columns)) for r in rows][:12]}"

    return describe


def join_context(row: dict[str, Any]) -> str:
    return f"left ts={iso(row['ts'])} ({row['ts']}) ds={row.get('ds')} item={row.get('item_id')}"


def check_group_by_backfill(
    world: World,
    project: Any,
    group_by: GroupBy,
    start: str = START,
    end: str = LAST_DS,
    exercised: bool = True,
) -> None:
    got = backfill(project, group_by.name, start, end)
    expected = [row for ds in ds_range(start, end) for row in world.oracle.group_by_backfill(group_by, ds)]
    if exercised:
        assert_exercised(expected, group_by.output_columns())
    assert_rows_match(
        expected, got, identity=["ds", *group_by.keys], context=group_by_context(world, group_by)
    )


def check_join_backfill(
    world: World,
    project: Any,
    join: Join,
    start: str = START,
    end: str = LAST_DS,
    exercised: Sequence[str] | None = None,
) -> None:
    got = backfill(project, join.name, start, end)
    expected = world.oracle.join_backfill(join, start, end)
    columns = [c for part in join.right_parts for c in Oracle.part_columns(part)]
    assert_exercised(expected, columns if exercised is None else exercised)
    identity = ["ds", "row_id", "ts"] if isinstance(join.left, EventSource) else ["ds", "row_id"]
    assert_rows_match(expected, got, identity=identity, context=join_context)


# ------------------------------------------------------------------------------------- the data itself


def test_generated_data_is_consistent(world: World) -> None:
    """Snapshot D is the oracle's replay at D+1 00:00 (row for row, in order); every day has both partitions;
    the stream holds every kind of change the tests rely on."""
    tables = world.tables
    assert sorted(tables[SNAPSHOTS]) == DAYS and sorted(tables[MUTATIONS]) == DAYS
    columns = ENTITY_SCHEMA.names
    for ds in DAYS:
        state = world.oracle.entity_state(entity_source(), midnight(ds) + DAY_MS)
        assert [match_key(columns, r.columns) for r in state] == [
            match_key(columns, r) for r in tables[SNAPSHOTS][ds]
        ], f"snapshot {ds} is not the replayed state"
        assert all(c["mutation_ts"] >= midnight(ds) for c in tables[MUTATIONS][ds])
    changes = [c for ds in DAYS[1:] for c in tables[MUTATIONS][ds]]
    befores = [c for c in changes if c["is_before"]]
    assert any(c["mutation_ts"] % DAY_MS == 0 for c in changes), "no mutation at midnight"
    assert any(not c["is_before"] and c["ts"] > c["mutation_ts"] for c in changes), (
        "no insert with a future ts"
    )
    assert any(c["id"] > 100_000 for c in befores), "no delete of a row that never existed"
    assert any(isinstance(c["xn"], float) and math.isnan(c["xn"]) for c in befores), "no before row with NaN"
    assert any(c["rating"] is None or c["stars"] is None for c in befores), "no before row with a null"
    times = {c["mutation_ts"] for c in changes}
    left = [row for rows in tables[LEFT_TABLE].values() for row in rows]
    assert sum(row["ts"] in times for row in left) >= 30, "too few probes exactly at a mutation"
    assert sum(row["ts"] - 1 in times for row in left) >= 30, "too few probes 1 ms after a mutation"
    assert sum(row["ts"] % DAY_MS == 0 for row in left) >= 10, "too few probes at midnight"


# ------------------------------------------------------------------------------------- every operation


@dataclass(frozen=True)
class Case:
    """One operation over some entity columns, windowed (WINDOWS) and unbounded; the first input also
    bucketed by ``cat`` (not element-wise ones)."""

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
        if not self.element_wise:
            aggregations.append(
                Aggregation(self.inputs[0], self.operation, windows=BUCKET_WINDOWS, buckets=["cat"])
            )
            aggregations.append(Aggregation(self.inputs[0], self.operation, buckets=["cat"]))
        return aggregations


GROUPS = {
    "moments": [
        Case(Operation.COUNT, ("rating", "tags")),
        Case(Operation.SUM, ("stars", "xn")),
        Case(Operation.AVERAGE, ("rating",)),
        Case(Operation.VARIANCE, ("rating",)),
        Case(Operation.SKEW, ("rating",)),
        Case(Operation.KURTOSIS, ("stars",)),
    ],
    "order": [
        Case(Operation.MIN, ("rating", "s")),
        Case(Operation.MAX, ("xn", "s")),
        Case(Operation.FIRST, ("s", "tags")),
        Case(Operation.LAST, ("rating", "tags")),
        Case(Operation.FIRST_K(3), ("s",)),
        Case(Operation.LAST_K(3), ("stars",)),
        Case(Operation.TOP_K(3), ("rating", "xn")),
        Case(Operation.BOTTOM_K(2), ("s",)),
    ],
    "distinct": [
        Case(Operation.UNIQUE_COUNT, ("s", "xn", "tags")),
        Case(Operation.BOUNDED_UNIQUE_COUNT(3), ("tags",)),
        Case(Operation.HISTOGRAM, ("tags",)),
        Case(Operation.HISTOGRAM(2), ("s_wide",)),
        Case(Operation.APPROX_HISTOGRAM_K, ("s",)),
        Case(Operation.APPROX_HISTOGRAM_K(4), ("s_wide",)),
    ],
    "sketches": [
        Case(Operation.APPROX_UNIQUE_COUNT, ("stars", "tags")),
        Case(Operation.APPROX_UNIQUE_COUNT(lg_k=4), ("s_wide",)),  # past k: estimating
        Case(Operation.APPROX_PERCENTILE([0.1, 0.5, 0.99]), ("stars",)),
        Case(Operation.APPROX_PERCENTILE([0.25, 0.5, 0.9], k=16), ("rating",)),
    ],  # compacting
    "element_wise": [
        Case(op, ("vec",), element_wise=True)
        for op in (Operation.SUM, Operation.AVERAGE, Operation.MAX, Operation.COUNT)
    ],
}


@pytest.mark.parametrize("group", list(GROUPS))
def test_operations_vs_oracle(world: World, group: str) -> None:
    """Every operation over the mutated entity source: a Join (events left) with a TEMPORAL and a SNAPSHOT
    part, and the GroupBy backfill (which does not depend on accuracy)."""
    aggregations = [a for case in GROUPS[group] for a in case.aggregations()]
    parts = {
        accuracy: GroupBy(
            name=f"ent.{group}_{accuracy.value}",
            sources=[entity_source()],
            keys=["item"],
            aggregations=aggregations,
            accuracy=accuracy,
        )
        for accuracy in (Accuracy.TEMPORAL, Accuracy.SNAPSHOT)
    }
    names = parts[Accuracy.TEMPORAL].output_columns()
    assert len(names) == len(set(names)), "two aggregations share an output name"
    join = Join(
        name=f"train.ent_{group}",
        left=LEFT,
        right_parts=[JoinPart(g, key_mapping={"item_id": "item"}) for g in parts.values()],
    )
    project = world.project({join.name: join, **{g.name: g for g in parts.values()}})
    check_join_backfill(world, project, join)
    # a few days of the GroupBy (its 7m windows at midnight are often empty: not checked for nulls)
    check_group_by_backfill(
        world, project, parts[Accuracy.SNAPSHOT], "2026-03-05", "2026-03-07", exercised=False
    )


# ------------------------------------------------------------------------------------- other shapes


def ratings_group_by(name: str, accuracy: Accuracy) -> GroupBy:
    return GroupBy(
        name=name,
        sources=[entity_source()],
        keys=["item"],
        accuracy=accuracy,
        aggregations=[
            Aggregation("rating", Operation.AVERAGE, windows=["5h", "2d", "14d"]),
            Aggregation("rating", Operation.AVERAGE),
            Aggregation("rating", Operation.COUNT, windows=["13h"]),
            Aggregation("stars", Operation.SUM, windows=["2d"]),
            Aggregation("rating", Operation.LAST),
            Aggregation("stars", Operation.TOP_K(2), windows=["14d"]),
            Aggregation("rating", Operation.MAX),
            Aggregation("s", Operation.FIRST_K(2), windows=["13h"]),
        ],
    )


LOOKUP_COLUMNS = ["id", "rating", "stars", "s", "cat", "tags"]


def ratings_lookup(name: str, accuracy: Accuracy, columns: Sequence[str] = LOOKUP_COLUMNS) -> GroupBy:
    return GroupBy(name=name, sources=[entity_source(["item", *columns])], keys=["item"], accuracy=accuracy)


def test_entity_left_join(world: World) -> None:
    """Entities on the left: q = ds + 1 day 00:00 for every right part (state at midnight = snapshot ds)."""
    left = EntitySource(
        snapshot_table=PROFILES,
        query=Query(selects={"row_id": "row_id", "item_id": "item_id", "user_id": "user_id"}),
    )
    temporal = ratings_group_by("ent.left_temporal", Accuracy.TEMPORAL)
    snapshot = ratings_group_by("ent.left_snapshot", Accuracy.SNAPSHOT)
    lookup = ratings_lookup("ent.left_lookup", Accuracy.TEMPORAL)
    join = Join(
        name="train.ent_profiles",
        left=left,
        right_parts=[
            JoinPart(temporal, key_mapping={"item_id": "item"}),
            JoinPart(snapshot, key_mapping={"item_id": "item"}, prefix="daily"),
            JoinPart(lookup, key_mapping={"item_id": "item"}),
        ],
    )
    project = world.project(
        {join.name: join, temporal.name: temporal, snapshot.name: snapshot, lookup.name: lookup}
    )
    check_join_backfill(world, project, join)


def test_training_data(world: World) -> None:
    """training_data(join, left frame): the oracle's values for every left row, left columns first."""
    temporal = ratings_group_by("ent.td_temporal", Accuracy.TEMPORAL)
    lookup = ratings_lookup("ent.td_lookup", Accuracy.TEMPORAL)
    join = Join(
        name="train.ent_td",
        left=LEFT,
        right_parts=[
            JoinPart(temporal, key_mapping={"item_id": "item"}),
            JoinPart(lookup, key_mapping={"item_id": "item"}),
        ],
    )
    left_rows = [
        {c: row[c] for c in LEFT_SCHEMA.names}
        for ds in ds_range(START, LAST_DS)
        for row in world.tables[LEFT_TABLE][ds]
    ]
    project = world.project({join.name: join, temporal.name: temporal, lookup.name: lookup})
    table = project.training_data(join.name, pa.Table.from_pylist(left_rows, schema=LEFT_SCHEMA))
    assert table.num_rows == len(left_rows)
    columns = Oracle.part_columns(join.right_parts[0]) + Oracle.part_columns(join.right_parts[1])
    assert table.column_names == list(LEFT_SCHEMA.names) + columns
    expected = world.oracle.join_rows(join, left_rows)
    assert_exercised(expected, columns)
    assert_rows_match(expected, arrow_rows(table), identity=["row_id", "ts"], context=join_context)


def test_lookup_over_entities_with_mutations(world: World) -> None:
    """No aggregations: the columns of the item's row with the greatest ts < q, in the state at q."""
    temporal = ratings_lookup("ent.lookup_temporal", Accuracy.TEMPORAL)
    snapshot = ratings_lookup("ent.lookup_snapshot", Accuracy.SNAPSHOT)
    join = Join(
        name="train.ent_lookup",
        left=LEFT,
        right_parts=[
            JoinPart(temporal, key_mapping={"item_id": "item"}),
            JoinPart(snapshot, key_mapping={"item_id": "item"}),
        ],
    )
    project = world.project({join.name: join, temporal.name: temporal, snapshot.name: snapshot})
    check_join_backfill(world, project, join)
    check_group_by_backfill(world, project, snapshot)


def test_lookup_nan_becomes_null(world: World) -> None:
    """A looked-up NaN or ±Inf is reported as null, like every other output (SPEC §3; JSON carries no NaN)."""
    lookup = ratings_lookup("ent.lookup_xn", Accuracy.TEMPORAL, ["id", "xn", "vec"])
    join = Join(
        name="train.ent_lookup_xn", left=LEFT, right_parts=[JoinPart(lookup, key_mapping={"item_id": "item"})]
    )
    project = world.project({join.name: join, lookup.name: lookup})
    check_join_backfill(world, project, join)


def event_lookup(name: str, accuracy: Accuracy) -> GroupBy:
    source = EventSource(
        table=EVENTS,
        query=Query(selects={"item": "item", "s": "s", "x": "x", "n": "n", "tags": "tags"}, time_column="ts"),
    )
    return GroupBy(name=name, sources=[source], keys=["item"], accuracy=accuracy)


def test_lookup_over_events(world: World) -> None:
    """No aggregations over events: the latest event before q (ts ties: the first in source order)."""
    temporal = event_lookup("ev.lookup_temporal", Accuracy.TEMPORAL)
    snapshot = event_lookup("ev.lookup_snapshot", Accuracy.SNAPSHOT)
    join = Join(
        name="train.ev_lookup",
        left=LEFT,
        right_parts=[
            JoinPart(temporal, key_mapping={"item_id": "item"}),
            JoinPart(snapshot, key_mapping={"item_id": "item"}),
        ],
    )
    project = world.project({join.name: join, temporal.name: temporal, snapshot.name: snapshot})
    check_join_backfill(world, project, join)
    check_group_by_backfill(world, project, snapshot)


def address_group_bys(accuracy: Accuracy) -> tuple[GroupBy, GroupBy]:
    source = EventSource(
        table=ADDRESSES,
        cumulative=True,
        query=Query(selects={"user": "user", "address": "address", "zip": "zip"}, time_column="ts"),
    )
    aggregations = [
        Aggregation("address", Operation.LAST),
        Aggregation("address", Operation.FIRST),
        Aggregation("address", Operation.COUNT),
        Aggregation("address", Operation.COUNT, windows=["2d"]),
        Aggregation("address", Operation.UNIQUE_COUNT, windows=["14d"]),
        Aggregation("zip", Operation.LAST_K(2), windows=["13h", "14d"]),
    ]
    tag = accuracy.value
    return (
        GroupBy(
            name=f"usr.address_{tag}",
            sources=[source],
            keys=["user"],
            accuracy=accuracy,
            aggregations=aggregations,
        ),
        GroupBy(name=f"usr.address_lookup_{tag}", sources=[source], keys=["user"], accuracy=accuracy),
    )


def test_cumulative_source(world: World) -> None:
    """A cumulative source reads only the latest partition (the run covers it); reading more would count
    every address several times."""
    temporal, temporal_lookup = address_group_bys(Accuracy.TEMPORAL)
    snapshot, snapshot_lookup = address_group_bys(Accuracy.SNAPSHOT)
    group_bys = [temporal, temporal_lookup, snapshot, snapshot_lookup]
    join = Join(
        name="train.addresses",
        left=LEFT,
        right_parts=[JoinPart(g, key_mapping={"user_id": "user"}) for g in group_bys],
    )
    project = world.project({join.name: join, **{g.name: g for g in group_bys}})
    check_join_backfill(world, project, join)
    check_group_by_backfill(world, project, snapshot)
    check_group_by_backfill(world, project, snapshot_lookup)
