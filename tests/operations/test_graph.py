"""The task graph of `gnomon run` (SPEC §7): tasks, dependency order, sensors and selection by name.

The repo (`build_repo`, also used by test_runner.py): a StagingQuery counts clicks per item and day;
``ops.item_clicks`` (online) sums them over 2 days from the StagingQuery's output; ``ops.prices`` looks
up an entity snapshot; ``ops.visits`` (online) joins both onto visits; ``ops.user_clicks`` chains over
``ops.visits`` (a JoinSource); ``ops.sessions`` joins ``ops.user_clicks`` onto sessions.
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

import gnomon
from gnomon.compile.plan import Plan
from gnomon.errors import UnknownObjectError
from gnomon.orchestration.graph import KINDS, Sensor, Task, build_graph, staging_tables
from gnomon.timeline import DAY_MS, ds_range, ds_to_ms

# landed data; runs start on 2026-01-01: a Join's day reads prices of ds-1, and the chained GroupBy's
# first day reads the visits Join's ds-1, which reads prices of ds-2
DAYS = ds_range("2025-12-30", "2026-01-03")

DEFINITIONS = """
from gnomon import (Aggregation, EntitySource, EventSource, GroupBy, Join, JoinPart, JoinSource, Operation,
                    Query, StagingQuery)

daily_clicks = StagingQuery(
    name="ops.daily_clicks",
    query="SELECT item, count(*) AS clicks, max(ts) AS ts, ds FROM ev.clicks "
          "WHERE ds BETWEEN '{{ start_date }}' AND '{{ end_date }}' GROUP BY item, ds",
    start_partition="2026-01-01")
item_clicks = GroupBy(
    name="ops.item_clicks",
    sources=[EventSource(table="features.ops_daily_clicks",
                         query=Query(selects={"item": "item", "clicks": "clicks"}))],
    keys=["item"], aggregations=[Aggregation("clicks", Operation.SUM, windows=["2d"])], online=True)
prices = GroupBy(
    name="ops.prices",
    sources=[EntitySource(snapshot_table="dim.prices", query=Query(selects={"item": "item", "price": "price"}))],
    keys=["item"], aggregations=[Aggregation("price", Operation.MAX)])
visits = Join(
    name="ops.visits",
    left=EventSource(table="ev.visits", query=Query(selects={"user": "user", "item": "item"})),
    right_parts=[JoinPart(item_clicks), JoinPart(prices)], online=True)
user_clicks = GroupBy(
    name="ops.user_clicks",
    sources=[JoinSource(visits, Query(selects={"user": "user",
                                      "clicks": "CAST(ops_item_clicks_clicks_sum_2d AS DOUBLE)"}))],
    keys=["user"], aggregations=[Aggregation("clicks", Operation.AVERAGE, windows=["1d"])])
sessions = Join(
    name="ops.sessions",
    left=EventSource(table="ev.sessions", query=Query(selects={"user": "user"})),
    right_parts=[JoinPart(user_clicks)])
"""

SCHEMAS = {
    "ev.clicks": pa.schema([("item", pa.string()), ("ts", pa.int64())]),
    "ev.visits": pa.schema([("user", pa.string()), ("item", pa.string()), ("ts", pa.int64())]),
    "ev.sessions": pa.schema([("user", pa.string()), ("ts", pa.int64())]),
    "dim.prices": pa.schema([("item", pa.string()), ("price", pa.float64()), ("ts", pa.int64())]),
}


def day_rows(table: str, ds: str) -> pa.Table:
    """A few deterministic rows of ``table`` for day ``ds``."""
    rng = random.Random(f"{table}/{ds}")
    start = ds_to_ms(ds)
    rows = []
    for _ in range(6):
        row = {
            "item": rng.choice(["i1", "i2", "i3"]),
            "user": rng.choice(["u1", "u2"]),
            "price": round(rng.uniform(1, 9), 2),
            "ts": start + rng.randrange(DAY_MS),
        }
        rows.append({name: row[name] for name in SCHEMAS[table].names})
    return pa.Table.from_pylist(rows, schema=SCHEMAS[table])


def land(repo: Path, table: str, ds: str) -> None:
    """Write partition ``ds`` of the external ``table`` (what an upstream pipeline would do)."""
    gnomon.Project(repo).warehouse.write_partition(table, ds, day_rows(table, ds))


def build_repo(root: Path, days: list[str] = DAYS, config: str = "") -> Path:
    """The ops repo with every external table landed for ``days``."""
    (root / "features").mkdir(parents=True)
    (root / "gnomon.yaml").write_text("project: ops\n" + textwrap.dedent(config))
    (root / "features" / "__init__.py").write_text("")
    (root / "features" / "ops.py").write_text(textwrap.dedent(DEFINITIONS))
    for table in SCHEMAS:
        for ds in days:
            land(root, table, ds)
    return root


@pytest.fixture()
def plan(tmp_path: Path) -> Plan:
    return gnomon.Project(build_repo(tmp_path / "repo")).plan


def test_every_task_after_what_it_needs_in_the_spec_order(plan: Plan) -> None:
    tasks = build_graph(plan)
    assert [t.id for t in tasks] == [
        "staging_query/ops.daily_clicks",
        "group_by_backfill/ops.item_clicks",
        "group_by_backfill/ops.prices",
        "upload/ops.item_clicks",
        "join_backfill/ops.visits",
        "join_backfill/ops.sessions",
        "chained/ops.user_clicks",
    ]
    needs = {t.id: t.needs for t in tasks}
    # the StagingQuery's output is an input table of item_clicks: an edge, not a sensor
    assert needs["group_by_backfill/ops.item_clicks"] == ("staging_query/ops.daily_clicks",)
    assert needs["upload/ops.item_clicks"] == ("staging_query/ops.daily_clicks",)
    assert needs["join_backfill/ops.visits"] == ("staging_query/ops.daily_clicks",)
    # the sessions Join reads user_clicks, whose source is the visits Join's output
    assert needs["join_backfill/ops.sessions"] == ("join_backfill/ops.visits",)
    assert needs["chained/ops.user_clicks"] == ("join_backfill/ops.visits",)
    assert needs["group_by_backfill/ops.prices"] == ()
    seen: set[str] = set()
    for task in tasks:  # a valid topological order
        assert set(task.needs) <= seen, task.id
        seen.add(task.id)


def test_sensors_name_the_partitions_spec_time_rules_read(plan: Plan) -> None:
    sensors = {t.id: t.sensors for t in build_graph(plan)}
    # a StagingQuery waits for partition ds of every table its SQL names
    assert sensors["staging_query/ops.daily_clicks"] == (Sensor("ev.clicks", 0, 0),)
    # backfill partition D of an entity GroupBy is its value at D+1 00:00: snapshot D
    assert sensors["group_by_backfill/ops.prices"] == (Sensor("dim.prices", 0, 0),)
    # a Join's day D: the left rows of D; the SNAPSHOT entity part asks at D 00:00, so snapshot D-1
    assert sensors["join_backfill/ops.visits"] == (Sensor("ev.visits", 0, 0), Sensor("dim.prices", -1, -1))
    assert sensors["join_backfill/ops.sessions"] == (Sensor("ev.sessions", 0, 0),)
    # tables the graph writes are never sensed
    produced = {t.output_table for t in build_graph(plan)}
    assert not {s.table for group in sensors.values() for s in group} & produced


def test_a_windowed_event_source_waits_for_its_whole_read_range(tmp_path: Path) -> None:
    definitions = {
        "w.views": gnomon.GroupBy(
            name="w.views",
            sources=[gnomon.EventSource(table="ev.views", query=gnomon.Query(selects={"u": "u", "x": "x"}))],
            keys=["u"],
            aggregations=[gnomon.Aggregation("x", gnomon.Operation.SUM, windows=["3d"])],
        ),
        "w.total": gnomon.GroupBy(
            name="w.total",
            sources=[
                gnomon.EventSource(
                    table="ev.views",
                    query=gnomon.Query(selects={"u": "u", "x": "x"}, start_partition="2026-01-05"),
                )
            ],
            keys=["u"],
            aggregations=[gnomon.Aggregation("x", gnomon.Operation.SUM)],
        ),
    }
    (tmp_path / "gnomon.yaml").write_text("project: w\n")
    tasks = {t.name: t for t in build_graph(gnomon.Project(tmp_path, definitions).plan)}
    # the value at D+1 00:00 over 3 days (hourly hop) reads events from floor(D-2 00:00, 1h) on
    (views,) = tasks["w.views"].sensors
    assert (views.first, views.last) == (-2, 0)
    assert views.partitions("2026-01-10") == ds_range("2026-01-08", "2026-01-10")
    # unbounded: only ds itself is waited for; the Query's start_partition bounds every wait
    (total,) = tasks["w.total"].sensors
    assert total.first is None and total.partitions("2026-01-10") == ["2026-01-10"]
    assert total.partitions("2026-01-04") == []


def test_naming_a_definition_takes_what_it_needs_and_nothing_else(plan: Plan) -> None:
    assert [t.id for t in build_graph(plan, ["ops.sessions"])] == [
        "staging_query/ops.daily_clicks",
        "join_backfill/ops.visits",
        "join_backfill/ops.sessions",
    ]
    assert [t.id for t in build_graph(plan, ["ops.item_clicks"])] == [
        "staging_query/ops.daily_clicks",
        "group_by_backfill/ops.item_clicks",
        "upload/ops.item_clicks",
    ]
    with pytest.raises(UnknownObjectError, match="ops.sesions.*did you mean 'ops.sessions'"):
        build_graph(plan, ["ops.sesions"])


def test_consistency_checks_online_joins_last(plan: Plan) -> None:
    tasks = build_graph(plan, consistency=True)
    (check,) = [t for t in tasks if t.kind == "consistency"]
    assert check.id == "consistency/ops.visits" and check.needs == ("join_backfill/ops.visits",)
    assert [t.kind for t in tasks if t.kind != "consistency"] == [t.kind for t in build_graph(plan)]
    assert {t.kind for t in tasks} == set(KINDS)


def test_commands_and_due_days(plan: Plan) -> None:
    tasks = {t.id: t for t in build_graph(plan, consistency=True)}
    day = "2026-01-02"
    assert tasks["staging_query/ops.daily_clicks"].command(day) == [
        "backfill",
        "ops.daily_clicks",
        "--start-ds",
        day,
        "--end-ds",
        day,
    ]
    assert tasks["upload/ops.item_clicks"].command(day) == ["upload", "ops.item_clicks", "--ds", day]
    assert tasks["consistency/ops.visits"].command(day) == ["consistency", "ops.visits", "--ds", day]
    staging = tasks["staging_query/ops.daily_clicks"]
    assert staging.due("2026-01-01") and not staging.due("2025-12-31")


def test_a_definition_change_changes_its_fingerprint_and_those_downstream(tmp_path: Path) -> None:
    repo = build_repo(tmp_path / "repo", days=[])
    before = {t.id: t.fingerprint for t in build_graph(gnomon.Project(repo).plan)}
    source = repo / "features" / "ops.py"
    source.write_text(source.read_text().replace("Operation.MAX", "Operation.MIN"))
    after = {t.id: t.fingerprint for t in build_graph(gnomon.Project(repo).plan)}
    # prices feeds the visits Join, which the chained GroupBy and (through it) the sessions Join read
    assert sorted(task for task in before if before[task] != after[task]) == [
        "chained/ops.user_clicks",
        "group_by_backfill/ops.prices",
        "join_backfill/ops.sessions",
        "join_backfill/ops.visits",
    ]


def test_staging_tables_ignore_ctes_and_read_templates() -> None:
    sql = """
        WITH recent AS (SELECT * FROM ev.clicks WHERE ds = '{{ end_date }}')
        SELECT r.item, d.name, '{{ max_date(table=dim.items) }}' AS ds FROM recent r JOIN dim.names d USING (item)
    """
    assert staging_tables(sql) == ["dim.items", "dim.names", "ev.clicks"]


def test_task_is_the_documented_contract() -> None:
    task = Task("chained/c", "chained", "c", ("join_backfill/j",), (), "features.c")
    assert task.command("2026-01-02")[:2] == ["backfill", "c"]
    assert task.due("1970-01-01")
