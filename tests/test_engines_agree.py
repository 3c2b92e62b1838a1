"""DuckDB and Spark outputs, row by row, on the oracle world (one warehouse per engine, same data).

The oracle suite checks each engine against the naive oracle within its tolerances (sketches within
their error bounds, floats within 1e-9); here the two engines are held to each other, tighter:

- the schemas: the same column names in the same order, and the same Arrow types;
- operations whose values are input values or counts (COUNT, MIN, MAX, FIRST/LAST(_K), TOP/BOTTOM_K,
  (BOUNDED_)UNIQUE_COUNT, HISTOGRAM, APPROX_HISTOGRAM_K below k, SUM of ints, lookups) identical;
- floats computed by arithmetic (SUM of floats, AVERAGE, VARIANCE, SKEW, KURTOSIS, APPROX_PERCENTILE
  and the estimate of APPROX_UNIQUE_COUNT) within 1e-9 relative (1e-9 absolute near zero, where a
  different summation order leaves a residue of cancellation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import gnomon
from conftest import use_engine
from gnomon import Accuracy, Aggregation, EntitySource, GroupBy, Join, JoinPart, Operation, Query
from oracle import arrow_rows, ds_range
from test_offline_vs_oracle import (
    GB_END,
    GB_START,
    JOIN_END,
    JOIN_START,
    LAST_DS,
    LEFT,
    SCHEMAS,
    WINDOWS,
    event_source,
    make_tables,
    write_tables,
)

#: operations whose outputs are computed by float arithmetic (compared within 1e-9)
ARITHMETIC = {"sum", "average", "variance", "skew", "kurtosis", "approx_percentile", "approx_unique_count"}
REL = ABS = 1e-9

Projects = dict[str, Callable[[dict[str, Any]], gnomon.Project]]


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> Projects:
    """``projects[engine](objects)``: a project over that engine's copy of the oracle world."""
    tables = make_tables()
    made: Projects = {}
    for engine in ("duckdb", "spark"):
        repo = use_engine(tmp_path_factory.mktemp(f"agree_{engine}"), engine)
        write_tables(gnomon.Project(str(repo)).warehouse, tables, SCHEMAS)

        def make(objects: dict[str, Any], repo: Path = repo) -> gnomon.Project:
            return gnomon.Project(str(repo), objects=objects)

        made[engine] = make
    return made


def operations_group_by(name: str, accuracy: Accuracy) -> GroupBy:
    """A handful of operations over every kind of input, windows on and between the hop thresholds."""
    windows = [w for w in WINDOWS if w in ("7m", "1h", "5h", "12h", "2d", "12d")]
    aggregations = [
        Aggregation("i", Operation.COUNT, windows=windows),
        Aggregation("i", Operation.SUM, windows=windows),
        Aggregation("x", Operation.SUM, windows=windows),
        Aggregation("x", Operation.AVERAGE, windows=windows, buckets=["cat"]),
        Aggregation("x", Operation.VARIANCE, windows=["5h", "12d"]),
        Aggregation("i", Operation.SKEW),
        Aggregation("xn", Operation.KURTOSIS, windows=["12d"]),
        Aggregation("s", Operation.MIN, windows=["1h", "12h"]),
        Aggregation("x", Operation.MAX),
        Aggregation("s", Operation.FIRST, windows=["12h"]),
        Aggregation("tags", Operation.LAST),
        Aggregation("x", Operation.LAST_K(3), windows=["1h", "2d"]),
        Aggregation("nums", Operation.TOP_K(3), windows=["12d"]),
        Aggregation("s", Operation.BOTTOM_K(2)),
        Aggregation("s_wide", Operation.UNIQUE_COUNT, windows=["12h", "12d"]),
        Aggregation("s_wide", Operation.APPROX_UNIQUE_COUNT, windows=["12d"]),
        Aggregation("x", Operation.APPROX_PERCENTILE([0.1, 0.5, 0.99]), windows=["12d"]),
        Aggregation("s", Operation.HISTOGRAM, windows=["12h"]),
        Aggregation("tags", Operation.APPROX_HISTOGRAM_K, windows=["2d"]),
        Aggregation("m_float", Operation.AVERAGE, windows=["2d"]),
        Aggregation("vec", Operation.AVERAGE, windows=["12h"], element_wise=True),
    ]
    return GroupBy(
        name=name, sources=[event_source()], keys=["user"], aggregations=aggregations, accuracy=accuracy
    )


def reviews_group_by(name: str) -> GroupBy:
    """Over entity snapshots (row versions), and a lookup of the latest review's columns."""
    source = EntitySource(
        snapshot_table="items.reviews",
        query=Query(selects={"item": "item", "rating": "rating", "stars": "stars"}, time_column="ts"),
    )
    return GroupBy(
        name=name,
        sources=[source],
        keys=["item"],
        accuracy=Accuracy.TEMPORAL,
        aggregations=[
            Aggregation("rating", Operation.AVERAGE, windows=["12h", "12d"]),
            Aggregation("stars", Operation.SUM, windows=["1h", "2d"]),
            Aggregation("rating", Operation.LAST),
            Aggregation("stars", Operation.TOP_K(2), windows=["12d"]),
        ],
    )


def arithmetic_columns(*group_bys: GroupBy, prefixes: Sequence[str] = ("",)) -> set[str]:
    """Output columns (with each prefix) whose operation computes floats by arithmetic."""
    return {
        prefix + column
        for group_by in group_bys
        for aggregation in group_by.aggregations
        if aggregation.operation.kind in ARITHMETIC
        for _, _, column in aggregation.output_columns()
        for prefix in prefixes
    }


def outputs(
    projects: Projects, objects: dict[str, Any], name: str, start: str, end: str
) -> dict[str, pa.Table]:
    """Backfill ``name`` on both engines; each engine's output table."""
    tables = {}
    for engine, make in projects.items():
        project = make(objects)
        assert project.backfill(name, start, end) == ds_range(start, end), engine
        tables[engine] = project.warehouse.read_table(project.output_table(name), start, end)
    return tables


def value_problem(duck: Any, spark: Any, arithmetic: bool) -> str | None:
    """None when the two values agree (identical, or floats within tolerance for arithmetic)."""
    if duck is None or spark is None:
        return None if duck is spark else f"duckdb {duck!r}, spark {spark!r}"
    if type(duck) is not type(spark):
        return f"duckdb {type(duck).__name__} {duck!r}, spark {type(spark).__name__} {spark!r}"
    if isinstance(duck, float) and arithmetic:
        return (
            None
            if math.isclose(duck, spark, rel_tol=REL, abs_tol=ABS)
            else f"duckdb {duck!r}, spark {spark!r}"
        )
    if isinstance(duck, list | tuple) and len(duck) == len(spark):
        for index, (d, s) in enumerate(zip(duck, spark, strict=True)):
            problem = value_problem(d, s, arithmetic)
            if problem:
                return f"[{index}] {problem}"
        return None
    if isinstance(duck, dict) and set(duck) == set(spark):
        for key in duck:
            problem = value_problem(duck[key], spark[key], arithmetic)
            if problem:
                return f"[{key!r}] {problem}"
        return None
    return None if duck == spark else f"duckdb {duck!r}, spark {spark!r}"


def rows(table: pa.Table, identity: Sequence[str]) -> list[dict[str, Any]]:
    """The table's rows (maps as dicts) in identity order; rows equal on identity (exact duplicate left
    rows) are equal throughout, so their order among themselves does not matter."""
    return sorted(arrow_rows(table), key=lambda r: repr(tuple(r[c] for c in identity)))


def assert_same_output(tables: dict[str, pa.Table], identity: Sequence[str], arithmetic: set[str]) -> None:
    duck, spark = tables["duckdb"], tables["spark"]
    assert duck.column_names == spark.column_names, "the engines order the columns differently"
    assert duck.num_rows == spark.num_rows > 0
    problems = []
    for duck_row, spark_row in zip(rows(duck, identity), rows(spark, identity), strict=True):
        where = tuple(duck_row[c] for c in identity)
        if where != tuple(spark_row[c] for c in identity):
            problems.append(f"row {where}: spark has {tuple(spark_row[c] for c in identity)} here")
            continue
        for column in duck.column_names:
            problem = value_problem(duck_row[column], spark_row[column], column in arithmetic)
            if problem:
                problems.append(f"row {where} {column}: {problem}")
    assert not problems, f"{len(problems)} difference(s):\n" + "\n".join(problems[:20])


def type_differences(tables: dict[str, pa.Table]) -> list[str]:
    """Columns whose Arrow type or nullability differ (the file metadata Spark adds is not compared)."""
    duck, spark = tables["duckdb"].schema, tables["spark"].schema
    differences = []
    for field in duck:
        other = spark.field(field.name)
        if field.type != other.type or field.nullable != other.nullable:
            differences.append(f"{field.name}: duckdb {field}, spark {other}")
    return differences


# ------------------------------------------------------------------------------------------ tests


def test_group_by_backfill_agrees(projects: Projects) -> None:
    """SNAPSHOT accuracy does not change a GroupBy backfill: partition D = values at D+1 00:00."""
    group_by = operations_group_by("agree.ops_daily", Accuracy.SNAPSHOT)
    tables = outputs(projects, {group_by.name: group_by}, group_by.name, GB_START, GB_END)
    assert_same_output(tables, ["ds", "user"], arithmetic_columns(group_by))
    assert type_differences(tables) == []


@pytest.mark.parametrize("accuracy", [Accuracy.TEMPORAL, Accuracy.SNAPSHOT], ids=lambda a: a.value)
def test_join_backfill_agrees(projects: Projects, accuracy: Accuracy) -> None:
    group_by = operations_group_by(f"agree.ops_{accuracy.value}", accuracy)
    reviews = reviews_group_by(f"agree.reviews_{accuracy.value}")
    join = Join(
        name=f"agree.train_{accuracy.value}",
        left=LEFT,
        right_parts=[
            JoinPart(group_by, key_mapping={"user_id": "user"}),
            JoinPart(reviews, key_mapping={"item_id": "item"}, prefix="r"),
        ],
    )
    objects = {join.name: join, group_by.name: group_by, reviews.name: reviews}
    tables = outputs(projects, objects, join.name, JOIN_START, JOIN_END)
    arithmetic = arithmetic_columns(group_by, prefixes=[f"agree_ops_{accuracy.value}_"])
    arithmetic |= arithmetic_columns(reviews, prefixes=[f"r_agree_reviews_{accuracy.value}_"])
    assert_same_output(tables, ["ds", "row_id", "ts", "user_id", "item_id"], arithmetic)
    assert type_differences(tables) == []


def test_lookup_backfill_agrees(projects: Projects) -> None:
    """A GroupBy without aggregations: the latest review's columns as of D+1 00:00."""
    source = EntitySource(
        snapshot_table="items.reviews",
        query=Query(selects={"item": "item", "rating": "rating", "stars": "stars"}, time_column="ts"),
    )
    lookup = GroupBy(name="agree.review_lookup", sources=[source], keys=["item"], accuracy=Accuracy.SNAPSHOT)
    tables = outputs(projects, {lookup.name: lookup}, lookup.name, "2026-01-02", LAST_DS)
    assert_same_output(tables, ["ds", "item"], set())
    assert type_differences(tables) == []
