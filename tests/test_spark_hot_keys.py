"""Hot keys on the Spark engine: a key with more than ``offline.hot_key_events`` events is split
across tasks (its tiles folded per (key, day), its queries answered per (key, day of q)), and the
values are still the oracle's. Every key of the oracle world is hot at a threshold of 3 events."""

from __future__ import annotations

from pathlib import Path

import pytest

import gnomon
from gnomon import Accuracy, GroupBy, Join, JoinPart
from test_offline_vs_oracle import (
    CASES,
    GB_END,
    GB_START,
    JOIN_END,
    JOIN_START,
    LEFT,
    SCHEMAS,
    Oracle,
    assert_rows_match,
    backfill,
    ds_range,
    event_source,
    group_by_context,
    join_context,
    make_tables,
    write_tables,
)

HOT = ("count", "last_k", "approx_unique_count", "histogram", "skew", "first")


@pytest.fixture(scope="module")
def hot_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tables = make_tables()
    repo = tmp_path_factory.mktemp("hot")
    (repo / "gnomon.yaml").write_text(
        "project: hot\noffline: {engine: spark, master: 'local[2]', hot_key_events: 3, "
        "conf: {spark.sql.shuffle.partitions: 2}}\n"
    )
    write_tables(gnomon.Project(str(repo)).warehouse, tables, SCHEMAS)
    return repo, tables


@pytest.mark.parametrize("case", [c for c in CASES if c.id in HOT], ids=lambda c: c.id)
def test_hot_keys_match_the_oracle(hot_world: tuple[Path, dict], case) -> None:  # type: ignore[no-untyped-def]
    repo, tables = hot_world
    group_by = GroupBy(
        name=f"hot.{case.id}",
        sources=[event_source()],
        keys=["user"],
        aggregations=case.aggregations(),
        accuracy=Accuracy.TEMPORAL,
    )
    join = Join(
        name=f"hot_train.{case.id}",
        left=LEFT,
        right_parts=[JoinPart(group_by, key_mapping={"user_id": "user"})],
    )
    project = gnomon.Project(str(repo), {group_by.name: group_by, join.name: join})
    oracle = Oracle(tables)
    got = backfill(project, group_by.name, GB_START, GB_END)
    expected = [row for ds in ds_range(GB_START, GB_END) for row in oracle.group_by_backfill(group_by, ds)]
    assert_rows_match(expected, got, identity=["ds", "user"], context=group_by_context(group_by))
    got = backfill(project, join.name, JOIN_START, JOIN_END)
    expected = oracle.join_backfill(join, JOIN_START, JOIN_END)
    assert_rows_match(expected, got, identity=["ds", "row_id", "ts"], context=join_context)
