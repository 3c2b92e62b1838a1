"""Entity mutations, attribute lookups and cumulative sources on cases worked out by hand (SPEC §4).

Chronon's own examples (an item's ratings updated during the day, an insert whose row time is after
its mutation time), a sliding 4-day window, exact deletes for non-reversible operations (unlike
Chronon), deletes of rows that never existed, NaN / null matching of before rows, and an SCD type 2
address history read through a cumulative source. Every expected number is written in the test; the
naive oracle is checked against the same numbers (those tests need no engine), then the engine.
Last, bad mutation input must fail naming the table and the column or ds, writing nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import gnomon
from gnomon import Accuracy, Aggregation, EntitySource, EventSource, GroupBy, Join, JoinPart, Operation, Query
from oracle import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    Change,
    MissingPartition,
    Oracle,
    apply_changes,
    arrow_rows,
    compare_values,
    ds_of,
    midnight,
    replay,
    write_tables,
)


def at(ds: str, hours: int = 0, minutes: int = 0, seconds: int = 0, ms: int = 0) -> int:
    """Epoch ms of ``ds hh:mm:ss.ms`` UTC."""
    return midnight(ds) + hours * HOUR_MS + minutes * MINUTE_MS + seconds * 1000 + ms


def output_table(name: str) -> str:
    """SPEC §6: a GroupBy or Join named a.b backfills into features.a_b."""
    return "features." + name.replace(".", "_")


def make_repo(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "gnomon.yaml").write_text("project: entity_cases\n")
    return root


def check(expected: dict[str, Any], got: dict[str, Any], where: str) -> list[str]:
    problems = []
    for column, value in expected.items():
        problem = compare_values(value, got.get(column, "<missing column>"))
        if problem:
            problems.append(f"{where} {column}: {problem}")
    return problems


# ------------------------------------------------------------------------------------ the item data

RATING_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("item", pa.string()),
        ("rating", pa.float64()),
        ("stars", pa.int64()),
        ("ts", pa.int64()),
    ]
)
MUTATION_SCHEMA = pa.schema([*RATING_SCHEMA, ("mutation_ts", pa.int64()), ("is_before", pa.bool_())])
PROBE_SCHEMA = pa.schema([("row_id", pa.int64()), ("item_id", pa.string()), ("ts", pa.int64())])
SNAPSHOTS, MUTATIONS, PROBES = "items.ratings", "items.rating_mutations", "events.probes"
DAY, NEXT = "2026-04-10", "2026-04-11"  # every probe is on DAY; snapshot 04-09 holds the state before it


def rating(id_: int, item: str, value: float | None, ts: int, stars: int | None = 3) -> dict[str, Any]:
    return {"id": id_, "item": item, "rating": value, "stars": stars, "ts": ts}


def mutation(row: dict[str, Any], when: int, before: bool) -> dict[str, Any]:
    return {**row, "mutation_ts": when, "is_before": before}


A = [
    rating(1, "A", 4.0, at("2026-03-01", 10)),
    rating(2, "A", 5.0, at("2026-03-15", 11)),
    rating(3, "A", 4.0, at("2026-04-01", 12)),
    rating(4, "A", 5.0, at("2026-04-09", 9)),
]
A1_UPDATED = {**A[0], "rating": 2.0}
B = [rating(10, "B", 3.0, at("2026-04-05", 10)), rating(11, "B", 3.0, at("2026-04-08", 10))]
B_INSERT = rating(12, "B", 3.0, at(DAY, 10))  # mutation at 02:10, row time 10:00
C = [
    rating(20, "C", 10.0, at("2026-04-06", 1, 30)),
    rating(21, "C", 20.0, at("2026-04-06", 3)),
    rating(22, "C", 30.0, at("2026-04-08", 12)),
]
C22_UPDATED = {**C[2], "rating": 35.0}
C_INSERT = rating(23, "C", 5.0, at(DAY, 3, 30))  # mutation at 03:30 too
D = [
    rating(30, "D", 7.0, at("2026-04-07", 10)),
    rating(31, "D", 9.0, at("2026-04-09", 10)),
    rating(32, "D", 4.0, at("2026-04-08", 10)),
]
E = [rating(40, "E", 1.0, at("2026-04-07", 10)), rating(41, "E", 2.0, at("2026-04-07", 11))]
E_NEVER = rating(99, "E", 50.0, at("2026-04-07", 12))  # never existed
E_NEAR_MISS = {**E[0], "rating": 1.5}  # id 40 but another rating: not equal, so not deleted
F = [rating(50, "F", math.nan, at("2026-04-07", 10), stars=None), rating(51, "F", 2.0, at("2026-04-07", 11))]
G_NEW = rating(60, "G", 6.0, at("2026-04-08", 10))  # an "update" of a row not in the table, before == after

SNAPSHOT_0409 = [*A, *B, *C, *D, *E, *F]
MUTATIONS_0410 = [  # sorted by (mutation_ts, is_before desc), as a CDC export writes them
    mutation(A[0], at(DAY, 2), True),
    mutation(A1_UPDATED, at(DAY, 2), False),  # update 4 -> 2
    mutation(B_INSERT, at(DAY, 2, 10), False),  # insert, future ts
    mutation(C[2], at(DAY, 2, 15), True),
    mutation(C22_UPDATED, at(DAY, 2, 15), False),  # update 30 -> 35
    mutation(C_INSERT, at(DAY, 3, 30), False),  # insert
    mutation(D[1], at(DAY, 6), True),  # delete the max, 9
    mutation(E_NEVER, at(DAY, 8), True),
    mutation(E_NEAR_MISS, at(DAY, 8), True),  # no-op deletes
    mutation(F[0], at(DAY, 9), True),  # NaN, null: deleted
    mutation(G_NEW, at(DAY, 11), True),
    mutation(G_NEW, at(DAY, 11), False),  # no-op delete, then insert
]
# the state at the end of 04-10, in source order: survivors, then the appended rows
SNAPSHOT_0410 = [
    *A[1:],
    *B,
    C[0],
    C[1],
    D[0],
    D[2],
    *E,
    F[1],
    A1_UPDATED,
    B_INSERT,
    C22_UPDATED,
    C_INSERT,
    G_NEW,
]

ITEM_TABLES: dict[str, dict[str, list[dict[str, Any]]]] = {
    SNAPSHOTS: {"2026-04-09": SNAPSHOT_0409, DAY: SNAPSHOT_0410},
    MUTATIONS: {DAY: MUTATIONS_0410, NEXT: []},
}

# Probes: (row_id, item, time) -> expected Join columns (short names, see `hand_join_columns`).
# avg90 / count90: rating AVERAGE / COUNT over 90d (hop 1 day: from 2026-01-10 00:00, every row in).
# sum4d / count4d / avg4d: over 4d, hop 1 hour: floor(q - 4d, 1h) <= ts < q.
# max / sum / count / avg: unbounded. row_id / row_rating: the lookup (the row with the greatest ts).
PROBES_EXPECTED: list[tuple[int, str | None, int, dict[str, Any]]] = [
    # A: {4, 5, 4, 5}; at 02:00 one 4 becomes 2 (before 4 + after 2, same mutation_ts)
    (1, "A", at(DAY, 1), {"avg90": 4.5, "count90": 4}),
    (2, "A", at(DAY, 2), {"avg90": 4.5, "count90": 4}),  # a mutation at exactly q is not applied yet
    (3, "A", at(DAY, 2, ms=1), {"avg90": 4.0, "count90": 4, "min": 2.0}),
    (
        4,
        "A",
        at(DAY, 2, 30),
        {"avg90": 4.0, "count90": 4, "max": 5.0, "min": 2.0, "row_id": 4, "row_rating": 5.0},
    ),  # lookup: id 4 has the latest ts
    # B: {3, 3}; at 02:10 a 3 is inserted with row ts 10:00, seen only from q > 10:00
    (5, "B", at(DAY, 5), {"avg90": 3.0, "count90": 2, "row_id": 11}),
    (6, "B", at(DAY, 10), {"count90": 2, "row_id": 11}),
    (7, "B", at(DAY, 10, ms=1), {"count90": 3, "row_id": 12}),
    (8, "B", at(DAY, 23), {"avg90": 3.0, "count90": 3, "sum": 9.0, "row_id": 12, "row_rating": 3.0}),
    # C, sliding 4d (hop 1h); rows 10 @04-06 01:30, 20 @04-06 03:00, 30 @04-08 12:00 (35 from 02:15),
    # and 5 @04-10 03:30 inserted at 03:30
    #   01:45 -> tail 04-06 01:00: 10 + 20 + 30 = 60
    (9, "C", at(DAY, 1, 45), {"sum4d": 60.0, "count4d": 3, "avg4d": 20.0}),
    #   02:40 -> tail 04-06 02:00: 10 drops; 30 was updated to 35 at 02:15: 20 + 35 = 55
    (10, "C", at(DAY, 2, 40), {"sum4d": 55.0, "count4d": 2, "avg4d": 27.5}),
    #   03:00 -> tail 04-06 03:00 exactly: 20 (ts 03:00) still in: 55
    (11, "C", at(DAY, 3), {"sum4d": 55.0, "count4d": 2}),
    #   03:30 -> the insert (mutation_ts = ts = 03:30) is not < q: 55
    (12, "C", at(DAY, 3, 30), {"sum4d": 55.0, "count4d": 2, "row_rating": 35.0}),
    #   03:30:00.001 -> 20 + 35 + 5 = 60
    (
        13,
        "C",
        at(DAY, 3, 30, ms=1),
        {"sum4d": 60.0, "count4d": 3, "avg4d": 20.0, "row_id": 23, "row_rating": 5.0},
    ),
    #   04:00 -> tail 04-06 04:00: 20 drops: 35 + 5 = 40
    (14, "C", at(DAY, 4), {"sum4d": 40.0, "count4d": 2, "avg4d": 20.0, "count": 4}),
    # D: {7, 9, 4}; the max (9) is deleted at 06:00: MAX is exact (Chronon would keep 9 until the next snapshot)
    (15, "D", at(DAY, 5), {"max": 9.0, "count": 3, "row_id": 31, "row_rating": 9.0}),
    (16, "D", at(DAY, 6), {"max": 9.0, "count": 3}),
    (17, "D", at(DAY, 7), {"max": 7.0, "count": 2, "sum": 11.0, "row_id": 32, "row_rating": 4.0}),
    # E: {1, 2}; deletes of a row that never existed and of a near miss (id 40, rating 1.5) do nothing
    (18, "E", at(DAY, 9), {"sum": 3.0, "count": 2, "max": 2.0, "min": 1.0}),
    # F: {NaN (stars null), 2}; at 09:00 the NaN row is deleted (NaN equals NaN, null equals null)
    # (MAX over {NaN, 2} is NaN, NaN ordering above every number, and a NaN output becomes null)
    (19, "F", at(DAY, 8), {"avg": None, "count": 2, "max": None, "sum": None}),
    (20, "F", at(DAY, 10), {"avg": 2.0, "count": 1, "max": 2.0, "sum": 2.0}),
    # G: before and after rows equal at one mutation_ts, the row absent: before rows go first, so the
    # delete is a no-op and the insert stays
    (23, "G", at(DAY, 11), {"count": None}),
    (24, "G", at(DAY, 12), {"count": 1, "sum": 6.0, "row_id": 60}),
    # no data / no key
    (21, "Z", at(DAY, 12), {"avg90": None, "count": None, "row_id": None, "row_rating": None}),
    (22, None, at(DAY, 12), {"avg90": None, "count": None, "row_id": None}),
]

HAND_RATINGS = "hand.ratings"
HAND_LOOKUP = "hand.rating_rows"
SHORT_NAMES = {
    "avg90": "rating_average_90d",
    "count90": "rating_count_90d",
    "sum4d": "rating_sum_4d",
    "count4d": "rating_count_4d",
    "avg4d": "rating_average_4d",
    "max": "rating_max",
    "min": "rating_min",
    "sum": "rating_sum",
    "count": "rating_count",
    "avg": "rating_average",
}


def ratings_source(selects: dict[str, str] | None = None) -> EntitySource:
    return EntitySource(
        snapshot_table=SNAPSHOTS,
        mutation_table=MUTATIONS,
        query=Query(selects=selects or {"item": "item", "rating": "rating"}, time_column="ts"),
    )


def hand_ratings(accuracy: Accuracy = Accuracy.TEMPORAL, name: str = HAND_RATINGS) -> GroupBy:
    return GroupBy(
        name=name,
        sources=[ratings_source()],
        keys=["item"],
        accuracy=accuracy,
        aggregations=[
            Aggregation("rating", Operation.AVERAGE, windows=["90d", "4d"]),
            Aggregation("rating", Operation.COUNT, windows=["90d", "4d"]),
            Aggregation("rating", Operation.SUM, windows=["4d"]),
            Aggregation("rating", Operation.MAX),
            Aggregation("rating", Operation.MIN),
            Aggregation("rating", Operation.SUM),
            Aggregation("rating", Operation.COUNT),
            Aggregation("rating", Operation.AVERAGE),
        ],
    )


def hand_lookup() -> GroupBy:
    return GroupBy(
        name=HAND_LOOKUP,
        keys=["item"],
        accuracy=Accuracy.TEMPORAL,
        sources=[ratings_source({"item": "item", "row_id": "id", "row_rating": "rating"})],
    )


def hand_join(parts: Sequence[GroupBy], name: str = "hand.join") -> Join:
    left = EventSource(
        table=PROBES, query=Query(selects={"row_id": "row_id", "item_id": "item_id"}, time_column="ts")
    )
    return Join(
        name=name, left=left, right_parts=[JoinPart(g, key_mapping={"item_id": "item"}) for g in parts]
    )


def hand_join_columns(short: str) -> str:
    if short in ("row_id", "row_rating"):
        return f"hand_rating_rows_{short}"
    return f"hand_ratings_{SHORT_NAMES[short]}"


def probe_rows() -> list[dict[str, Any]]:
    return [{"row_id": row_id, "item_id": item, "ts": ts} for row_id, item, ts, _ in PROBES_EXPECTED]


def check_probes(rows: Sequence[dict[str, Any]], shorts: set[str]) -> None:
    by_id = {row["row_id"]: row for row in rows}
    assert sorted(by_id) == sorted(r for r, *_ in PROBES_EXPECTED), sorted(by_id)
    problems = []
    for row_id, item, ts, expected in PROBES_EXPECTED:
        wanted = {hand_join_columns(k): v for k, v in expected.items() if k in shorts}
        problems += check(wanted, by_id[row_id], f"row {row_id} (item {item}, q={ts})")
    assert not problems, "\n".join(problems)


# GroupBy backfill 04-10 (q = 04-11 00:00), every item:
BACKFILL_0410 = {
    "A": {"rating_average_90d": 4.0, "rating_count_90d": 4, "rating_min": 2.0, "rating_max": 5.0},
    "B": {"rating_average_90d": 3.0, "rating_count_90d": 3, "rating_sum": 9.0},
    # 4d tail at 04-07 00:00: 35 (04-08) and 5 (04-10)
    "C": {"rating_sum_4d": 40.0, "rating_count_4d": 2, "rating_count": 4},
    "D": {
        "rating_max": 7.0,
        "rating_count": 2,
        "rating_sum_4d": 11.0,
    },  # 7 @04-07 10:00 and 4 @04-08: both in
    "E": {"rating_sum": 3.0, "rating_count": 2, "rating_sum_4d": 3.0},
    "F": {"rating_average": 2.0, "rating_count": 1},
    "G": {"rating_sum": 6.0, "rating_count": 1},
}
# the lookup at 04-11 00:00: each item's row with the greatest ts (A: id 4 @04-09; the updated id 1 kept ts 03-01)
LOOKUP_BACKFILL_0410 = {
    "A": (4, 5.0),
    "B": (12, 3.0),
    "C": (23, 5.0),
    "D": (32, 4.0),
    "E": (41, 2.0),
    "F": (51, 2.0),
    "G": (60, 6.0),
}


def check_backfill(rows: Sequence[dict[str, Any]]) -> None:
    by_item = {row["item"]: row for row in rows}
    assert sorted(by_item) == sorted(BACKFILL_0410), sorted(by_item)
    problems = []
    for item, expected in BACKFILL_0410.items():
        problems += check(expected, by_item[item], f"item {item}")
    assert not problems, "\n".join(problems)


def check_lookup_backfill(rows: Sequence[dict[str, Any]]) -> None:
    got = {row["item"]: (row["row_id"], row["row_rating"]) for row in rows}
    assert got == LOOKUP_BACKFILL_0410


# ------------------------------------------------------------------------------ oracle self-tests


def test_replay_update_delete_and_no_op_delete() -> None:
    x = {"id": 1, "v": 1.0, "ts": 10}
    y = {"id": 2, "v": math.nan, "ts": 20, "tag": None}
    x2 = {**x, "v": 2.0}
    mutations = {
        "2026-04-10": [
            mutation(x, at(DAY, 1), True),
            mutation(x2, at(DAY, 1), False),  # update x -> x2
            mutation({"id": 3, "v": 5.0, "ts": 30}, at(DAY, 2), True),  # never existed: no-op
            mutation({**y, "v": 0.0}, at(DAY, 3), True),  # not equal to y: no-op
            mutation(y, at(DAY, 4), True),  # NaN equals NaN, None None
        ]
    }
    state = lambda q: [r.columns for r in replay([x, y], mutations, q)]  # noqa: E731
    assert state(at(DAY, 1)) == [x, y]  # mutation_ts < q only
    assert state(at(DAY, 1, ms=1)) == [y, x2]  # the updated row moves to the end of the list
    assert len(state(at(DAY, 3, ms=1))) == 2
    assert state(at(DAY, 4, ms=1)) == [x2]
    assert [r.since for r in replay([x, y], mutations, at(DAY, 4, ms=1))] == [at(DAY, 1)]


def test_replay_order_duplicates_and_bounds() -> None:
    x = {"id": 1, "v": 1.0, "tags": ["a", "b"], "ts": 10}
    # the file has the after row first, but before rows go first at one mutation_ts: the delete is a
    # no-op (nothing to delete yet), then the insert
    mutations = {"2026-04-10": [mutation(x, at(DAY, 1), False), mutation(x, at(DAY, 1), True)]}
    assert [r.columns for r in replay([], mutations, at(DAY, 2))] == [x]
    # two equal rows: a delete removes one, the first
    dup = {**x, "id": 1}
    mutations = {"2026-04-10": [mutation(dup, at(DAY, 1), True)]}
    assert len(replay([x, dup, {"id": 2, "ts": 3}], mutations, at(DAY, 2))) == 2
    # mutations before ``after`` are already in the initial snapshot
    mutations = {
        "2026-04-09": [mutation(x, at("2026-04-09", 5), False)],
        DAY: [mutation(x, midnight(DAY), True)],
    }
    assert replay([x], mutations, at(DAY, 1), after=midnight(DAY)) == []
    assert [r.columns for r in replay([x], mutations, midnight(DAY), after=midnight(DAY))] == [x]
    # order across partitions and ties: (mutation_ts, before first, ds, row number)
    changes = [Change(5, False, "2026-04-10", 1, {"id": 1}), Change(5, False, "2026-04-10", 0, {"id": 2})]
    assert [r.columns["id"] for r in apply_changes([], sorted(changes, key=Change.sort_key))] == [2, 1]


def test_oracle_state_matches_the_hand_snapshots() -> None:
    oracle = Oracle(ITEM_TABLES)
    state = oracle.entity_state(ratings_source(), midnight(NEXT))
    assert [r.columns for r in state] == SNAPSHOT_0410  # no NaN left by then: plain equality
    assert [r.since for r in state][-5:] == [
        at(DAY, 2),
        at(DAY, 2, 10),
        at(DAY, 2, 15),
        at(DAY, 3, 30),
        at(DAY, 11),
    ]
    with pytest.raises(MissingPartition, match="2026-04-08"):
        oracle.entity_state(ratings_source(), at("2026-04-09", 12))


def test_oracle_hand_values() -> None:
    oracle = Oracle(ITEM_TABLES)
    join = hand_join([hand_ratings(), hand_lookup()])
    check_probes(oracle.join_rows(join, probe_rows()), set(SHORT_NAMES) | {"row_id", "row_rating"})
    check_backfill(oracle.group_by_backfill(hand_ratings(Accuracy.SNAPSHOT), DAY))
    check_lookup_backfill(oracle.group_by_backfill(hand_lookup(), DAY))


# ------------------------------------------------------------------------------ the engine, by hand


@pytest.fixture(scope="module")
def items_repo(tmp_path_factory: pytest.TempPathFactory, new_project: Callable[..., Any]) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("items"))
    tables = {**ITEM_TABLES, PROBES: {DAY: probe_rows()}}
    write_tables(
        new_project(repo).warehouse,
        tables,
        {SNAPSHOTS: RATING_SCHEMA, MUTATIONS: MUTATION_SCHEMA, PROBES: PROBE_SCHEMA},
    )
    return repo


def test_engine_hand_join(items_repo: Path, new_project: Callable[..., Any]) -> None:
    ratings = hand_ratings()
    join = hand_join([ratings], name="hand.join_ratings")
    project = new_project(items_repo, {ratings.name: ratings, join.name: join})
    assert project.backfill(join.name, DAY, DAY) == [DAY]
    check_probes(
        arrow_rows(project.warehouse.read_table(output_table(join.name), DAY, DAY)), set(SHORT_NAMES)
    )


def test_engine_hand_training_data(items_repo: Path, new_project: Callable[..., Any]) -> None:
    ratings = hand_ratings()
    join = hand_join([ratings], name="hand.join_training")
    project = new_project(items_repo, {ratings.name: ratings, join.name: join})
    table = project.training_data(join.name, pa.Table.from_pylist(probe_rows(), schema=PROBE_SCHEMA))
    check_probes(arrow_rows(table), set(SHORT_NAMES))


def test_engine_hand_group_by_backfill(items_repo: Path, new_project: Callable[..., Any]) -> None:
    ratings = hand_ratings(Accuracy.SNAPSHOT, name="hand.ratings_daily")
    project = new_project(items_repo, {ratings.name: ratings})
    assert project.backfill(ratings.name, DAY, DAY) == [DAY]
    check_backfill(arrow_rows(project.warehouse.read_table(output_table(ratings.name), DAY, DAY)))


def test_engine_hand_lookup(items_repo: Path, new_project: Callable[..., Any]) -> None:
    lookup = hand_lookup()
    ratings = hand_ratings()
    join = hand_join([ratings, lookup], name="hand.join_lookup")
    project = new_project(items_repo, {lookup.name: lookup, ratings.name: ratings, join.name: join})
    assert project.backfill(join.name, DAY, DAY) == [DAY]
    check_probes(
        arrow_rows(project.warehouse.read_table(output_table(join.name), DAY, DAY)),
        set(SHORT_NAMES) | {"row_id", "row_rating"},
    )
    assert project.backfill(lookup.name, DAY, DAY) == [DAY]
    check_lookup_backfill(arrow_rows(project.warehouse.read_table(output_table(lookup.name), DAY, DAY)))


# ------------------------------------------------------------------------- SCD type 2, cumulative

ADDRESS_SCHEMA = pa.schema([("user", pa.int64()), ("address", pa.string()), ("ts", pa.int64())])
USER_PROBE_SCHEMA = pa.schema([("row_id", pa.int64()), ("user_id", pa.int64()), ("ts", pa.int64())])
ADDRESSES, USER_PROBES = "users.address_history", "events.user_probes"
# the seed's history (t = 1, 100, 5, 40), at realistic times
T1, T100 = at("2026-04-01", 9), at("2026-04-05", 14)
T5, T40 = at("2026-04-02", 10), at("2026-04-03", 18)
HISTORY = [
    {"user": 1, "address": "100 Main St", "ts": T1},
    {"user": 2, "address": "150 East Road", "ts": T5},
    {"user": 2, "address": "TOMBSTONE", "ts": T40},
    {"user": 1, "address": "200 Main St", "ts": T100},
]
ADDRESS_DAYS = ["2026-04-01", "2026-04-02", "2026-04-03", "2026-04-04", "2026-04-05", "2026-04-06"]
# each partition holds the whole history known at its end (so reading every partition would count rows 2-6 times)
ADDRESS_TABLE = {ds: [row for row in HISTORY if row["ts"] < midnight(ds) + DAY_MS] for ds in ADDRESS_DAYS}
# (row_id, user, q) -> (address, count of history rows with ts < q)
ADDRESS_EXPECTED: list[tuple[int, int, int, str | None, int | None]] = [
    (1, 1, at("2026-04-01", 8), None, None),
    (2, 1, T1, None, None),  # ts < q: not yet at exactly T1
    (3, 1, T1 + 1, "100 Main St", 1),
    (4, 2, at("2026-04-02", 12), "150 East Road", 1),
    (5, 2, T40, "150 East Road", 1),
    (6, 2, at("2026-04-03", 19), "TOMBSTONE", 2),
    (7, 1, at("2026-04-04", 0), "100 Main St", 1),
    (8, 1, T100 - 1, "100 Main St", 1),
    (9, 1, T100 + 1, "200 Main St", 2),
    (10, 2, at("2026-04-06", 12), "TOMBSTONE", 2),
    (11, 1, at("2026-04-06", 23), "200 Main St", 2),
    (12, 3, at("2026-04-06", 1), None, None),
]


def address_source() -> EventSource:
    return EventSource(
        table=ADDRESSES,
        cumulative=True,
        query=Query(selects={"user": "user", "address": "address"}, time_column="ts"),
    )


def address_group_bys() -> tuple[GroupBy, GroupBy]:
    last = GroupBy(
        name="hand.address_last",
        sources=[address_source()],
        keys=["user"],
        accuracy=Accuracy.TEMPORAL,
        aggregations=[Aggregation("address", Operation.LAST), Aggregation("address", Operation.COUNT)],
    )
    lookup = GroupBy(
        name="hand.address", sources=[address_source()], keys=["user"], accuracy=Accuracy.TEMPORAL
    )
    return last, lookup


def address_join(last: GroupBy, lookup: GroupBy) -> Join:
    left = EventSource(table=USER_PROBES, query=Query(selects={"row_id": "row_id", "user_id": "user_id"}))
    return Join(
        name="hand.address_join",
        left=left,
        right_parts=[
            JoinPart(last, key_mapping={"user_id": "user"}),
            JoinPart(lookup, key_mapping={"user_id": "user"}),
        ],
    )


def user_probe_rows() -> list[dict[str, Any]]:
    return [{"row_id": r, "user_id": u, "ts": q} for r, u, q, *_ in ADDRESS_EXPECTED]


def check_addresses(rows: Sequence[dict[str, Any]]) -> None:
    by_id = {row["row_id"]: row for row in rows}
    assert sorted(by_id) == [r for r, *_ in ADDRESS_EXPECTED]
    problems = []
    for row_id, user, q, address, count in ADDRESS_EXPECTED:
        expected = {
            "hand_address_last_address_last": address,
            "hand_address_last_address_count": count,
            "hand_address_address": address,
        }
        problems += check(expected, by_id[row_id], f"row {row_id} (user {user}, q={q})")
    assert not problems, "\n".join(problems)


def test_oracle_scd2_addresses() -> None:
    oracle = Oracle({ADDRESSES: ADDRESS_TABLE})
    check_addresses(oracle.join_rows(address_join(*address_group_bys()), user_probe_rows()))
    _, lookup = address_group_bys()
    got = {r["user"]: r["address"] for r in oracle.group_by_backfill(lookup, "2026-04-03")}
    assert got == {1: "100 Main St", 2: "TOMBSTONE"}


def test_engine_scd2_addresses(tmp_path: Path, new_project: Callable[..., Any]) -> None:
    last, lookup = address_group_bys()
    join = address_join(last, lookup)
    repo = make_repo(tmp_path)
    project = new_project(repo, {last.name: last, lookup.name: lookup, join.name: join})
    probes: dict[str, list[dict[str, Any]]] = {ds: [] for ds in ADDRESS_DAYS}
    for row in user_probe_rows():
        probes[ds_of(row["ts"])].append(row)
    write_tables(
        project.warehouse,
        {ADDRESSES: ADDRESS_TABLE, USER_PROBES: probes},
        {ADDRESSES: ADDRESS_SCHEMA, USER_PROBES: USER_PROBE_SCHEMA},
    )
    # the run covers the latest partition (04-06)
    assert project.backfill(join.name, ADDRESS_DAYS[0], ADDRESS_DAYS[-1]) == ADDRESS_DAYS
    check_addresses(arrow_rows(project.warehouse.read_table(output_table(join.name))))
    table = project.training_data(
        join.name, pa.Table.from_pylist(user_probe_rows(), schema=USER_PROBE_SCHEMA)
    )
    check_addresses(arrow_rows(table))
    assert project.backfill(lookup.name, ADDRESS_DAYS[0], ADDRESS_DAYS[-1]) == ADDRESS_DAYS
    by_day = {}
    for row in arrow_rows(project.warehouse.read_table(output_table(lookup.name))):
        by_day.setdefault(row["ds"], {})[row["user"]] = row["address"]
    assert by_day == {
        "2026-04-01": {1: "100 Main St"},
        "2026-04-02": {1: "100 Main St", 2: "150 East Road"},
        "2026-04-03": {1: "100 Main St", 2: "TOMBSTONE"},
        "2026-04-04": {1: "100 Main St", 2: "TOMBSTONE"},
        "2026-04-05": {1: "200 Main St", 2: "TOMBSTONE"},
        "2026-04-06": {1: "200 Main St", 2: "TOMBSTONE"},
    }


# ------------------------------------------------------------------------------------- bad input


def bad_repo(
    tmp_path: Path,
    new_project: Callable[..., Any],
    *,
    mutation_schema: pa.Schema = MUTATION_SCHEMA,
    snapshots: Sequence[str] = ("2026-04-09", DAY),
    mutations: Sequence[str] = (DAY, NEXT),
    extra: dict[str, Any] | None = None,
) -> tuple[Any, GroupBy, Join]:
    ratings = hand_ratings(name="bad.ratings")
    join = hand_join([ratings], name="bad.join")
    project = new_project(make_repo(tmp_path), {ratings.name: ratings, join.name: join})
    snapshot_rows = {"2026-04-09": SNAPSHOT_0409, DAY: SNAPSHOT_0410}
    mutation_rows = {DAY: MUTATIONS_0410, NEXT: []}
    names = mutation_schema.names
    write_tables(
        project.warehouse,
        {
            SNAPSHOTS: {ds: snapshot_rows[ds] for ds in snapshots},
            MUTATIONS: {
                ds: [{c: {**r, **(extra or {})}.get(c) for c in names} for r in mutation_rows[ds]]
                for ds in mutations
            },
            PROBES: {DAY: probe_rows()},
        },
        {SNAPSHOTS: RATING_SCHEMA, MUTATIONS: mutation_schema, PROBES: PROBE_SCHEMA},
    )
    return project, ratings, join


def assert_fails_naming(run: Callable[[], Any], *words: str) -> None:
    with pytest.raises(gnomon.GnomonError) as raised:
        run()
    message = str(raised.value)
    for word in words:
        assert re.search(re.escape(word), message, re.IGNORECASE), f"{word!r} not in: {message}"


@pytest.mark.parametrize("missing", ["mutation_ts", "is_before"])
def test_mutation_table_without_a_mutation_column(
    tmp_path: Path, new_project: Callable[..., Any], missing: str
) -> None:
    schema = pa.schema([f for f in MUTATION_SCHEMA if f.name != missing])
    project, _, join = bad_repo(tmp_path, new_project, mutation_schema=schema)
    assert_fails_naming(lambda: project.backfill(join.name, DAY, DAY), MUTATIONS, missing)
    assert project.warehouse.partitions(output_table(join.name)) == []


def test_mutation_table_with_a_column_the_snapshots_lack(
    tmp_path: Path, new_project: Callable[..., Any]
) -> None:
    schema = pa.schema([*MUTATION_SCHEMA, ("colour", pa.string())])
    project, _, join = bad_repo(tmp_path, new_project, mutation_schema=schema, extra={"colour": "red"})
    assert_fails_naming(lambda: project.backfill(join.name, DAY, DAY), MUTATIONS, "colour")
    assert project.warehouse.partitions(output_table(join.name)) == []


def test_missing_snapshot_partition(tmp_path: Path, new_project: Callable[..., Any]) -> None:
    """Probes on 04-10 need snapshot 04-09; the GroupBy backfill of 04-10 needs snapshot 04-10."""
    project, ratings, join = bad_repo(tmp_path / "first", new_project, snapshots=[DAY])
    assert_fails_naming(lambda: project.backfill(join.name, DAY, DAY), SNAPSHOTS, "2026-04-09")
    assert project.warehouse.partitions(output_table(join.name)) == []
    project, ratings, join = bad_repo(tmp_path / "second", new_project, snapshots=["2026-04-09"])
    assert_fails_naming(lambda: project.backfill(ratings.name, DAY, DAY), SNAPSHOTS, DAY)
    assert project.warehouse.partitions(output_table(ratings.name)) == []


def test_missing_mutation_partition(tmp_path: Path, new_project: Callable[..., Any]) -> None:
    """Probes after midnight on 04-10 need mutation partition 04-10."""
    project, _, join = bad_repo(tmp_path, new_project, mutations=[NEXT])
    assert_fails_naming(lambda: project.backfill(join.name, DAY, DAY), MUTATIONS, DAY)
    assert project.warehouse.partitions(output_table(join.name)) == []
    with pytest.raises(gnomon.GnomonError, match=re.escape(MUTATIONS)):
        project.training_data(join.name, pa.Table.from_pylist(probe_rows(), schema=PROBE_SCHEMA))
