"""Bad input to the offline engine: the error says what and where, and nothing partial is written."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import gnomon
from gnomon import Aggregation, EntitySource, EventSource, GroupBy, Join, JoinPart, Operation, Query, Window
from oracle import HOUR_MS, ds_range, midnight

SCHEMA = pa.schema(
    [("user", pa.string()), ("value", pa.float64()), ("label", pa.string()), ("ts", pa.int64())]
)
DAYS = ds_range("2026-01-01", "2026-01-03")


def write_days(project: Any, table: str, days: list[str]) -> None:
    for ds in days:
        rows = [
            {"user": "a", "value": 1.5, "label": "x", "ts": midnight(ds) + HOUR_MS},
            {"user": "b", "value": 2.5, "label": "y", "ts": midnight(ds) + 2 * HOUR_MS},
        ]
        project.warehouse.write_partition(table, ds, pa.Table.from_pylist(rows, schema=SCHEMA))


def source(table: str = "ev.events", **selects: str) -> EventSource:
    return EventSource(
        table=table, query=Query(selects=selects or {"user": "user", "value": "value"}, time_column="ts")
    )


def group_by(
    name: str,
    src: EventSource | EntitySource | None = None,
    column: str = "value",
    operation: Any = Operation.SUM,
) -> GroupBy:
    return GroupBy(
        name=name,
        sources=[src or source()],
        keys=["user"],
        aggregations=[Aggregation(column, operation, windows=["2d"])],
    )


def left_join(name: str, right: GroupBy, table: str = "ev.left") -> Join:
    left = EventSource(table=table, query=Query(selects={"user": "user"}, time_column="ts"))
    return Join(name=name, left=left, right_parts=[JoinPart(right)])


def assert_nothing_written(repo: Path, name: str) -> None:
    """The output table folder holds no partition and no stray file after a failed backfill.

    The folder is found from the SPEC §6 layout (default warehouse ``<repo>/warehouse``, output
    table ``features.<name with dots as _>``), not from the project, which may not compile.
    """
    folder = repo / "warehouse" / "features" / name.replace(".", "_")
    leftovers = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []
    assert leftovers == [], f"a failed backfill of {name} left {leftovers}"


def test_missing_table_names_it(tmp_path: Path, new_project: Callable[..., Any]) -> None:
    definition = group_by("e.missing_table", source("ev.nowhere"))
    project = new_project(tmp_path, {definition.name: definition})
    with pytest.raises(gnomon.WarehouseError, match=re.escape("ev.nowhere")):
        project.backfill(definition.name, "2026-01-02", "2026-01-03")
    assert_nothing_written(tmp_path, definition.name)


def test_missing_left_partition_names_table_and_ds(tmp_path: Path, new_project: Callable[..., Any]) -> None:
    right = group_by("e.right")
    join = left_join("e.join_missing_left", right)
    project = new_project(tmp_path, {right.name: right, join.name: join})
    write_days(project, "ev.events", DAYS + ["2026-01-04", "2026-01-05"])
    write_days(project, "ev.left", DAYS)
    with pytest.raises(gnomon.WarehouseError) as raised:
        project.backfill(join.name, "2026-01-01", "2026-01-05")
    message = str(raised.value)
    assert "ev.left" in message and ("2026-01-04" in message or "2026-01-05" in message), message
    assert_nothing_written(tmp_path, join.name)


def test_missing_snapshot_partition_names_table_and_ds(
    tmp_path: Path, new_project: Callable[..., Any]
) -> None:
    """Backfill partition D of an entity GroupBy needs snapshot D."""
    entity = EntitySource(
        snapshot_table="ent.snapshots", query=Query(selects={"user": "user", "value": "value"})
    )
    definition = group_by("e.entity", entity, operation=Operation.AVERAGE)
    project = new_project(tmp_path, {definition.name: definition})
    write_days(project, "ent.snapshots", DAYS)
    with pytest.raises(gnomon.WarehouseError) as raised:
        project.backfill(definition.name, "2026-01-04", "2026-01-04")
    message = str(raised.value)
    assert "ent.snapshots" in message and "2026-01-04" in message, message
    assert_nothing_written(tmp_path, definition.name)


def test_unknown_column_lists_the_available_ones(tmp_path: Path, new_project: Callable[..., Any]) -> None:
    definition = group_by("e.unknown_column", source(user="user", value="valeu"))
    project = new_project(tmp_path, {definition.name: definition})
    write_days(project, "ev.events", DAYS)
    with pytest.raises(gnomon.GnomonError) as raised:
        project.backfill(definition.name, "2026-01-02", "2026-01-03")
    message = str(raised.value)
    assert "valeu" in message, message
    assert all(column in message for column in ("user", "value", "label")), message
    assert_nothing_written(tmp_path, definition.name)


def test_string_column_into_sum_names_the_aggregation(
    tmp_path: Path, new_project: Callable[..., Any]
) -> None:
    definition = group_by("e.sum_of_strings", source(user="user", label="label"), column="label")
    project = new_project(tmp_path, {definition.name: definition})
    write_days(project, "ev.events", DAYS)
    with pytest.raises(gnomon.GnomonError) as raised:
        project.backfill(definition.name, "2026-01-01", "2026-01-03")
    message = str(raised.value)
    assert "label" in message and "sum" in message.lower(), message
    assert_nothing_written(tmp_path, definition.name)


@pytest.mark.parametrize("text", ["5x", "5", "h5", "0d", "-3h", "1.5h", ""])
def test_malformed_window_is_a_definition_error(text: str) -> None:
    with pytest.raises(gnomon.DefinitionError, match="window"):
        Aggregation("value", Operation.SUM, windows=[text])
    with pytest.raises(gnomon.DefinitionError):
        Window.parse(text)


def test_join_whose_left_cannot_supply_the_keys() -> None:
    right = GroupBy(
        name="e.by_user_item",
        sources=[source(user="user", item="item", value="value")],
        keys=["user", "item"],
        aggregations=[Aggregation("value", Operation.SUM)],
    )
    left = EventSource(table="ev.left", query=Query(selects={"user": "user"}, time_column="ts"))
    with pytest.raises(gnomon.DefinitionError, match="item"):
        Join(name="e.bad_join", left=left, right_parts=[JoinPart(right)])
    with pytest.raises(gnomon.DefinitionError, match="item"):
        Join(name="e.bad_mapping", left=left, right_parts=[JoinPart(right, key_mapping={"user": "user"})])


def test_failure_while_running_writes_nothing(tmp_path: Path, new_project: Callable[..., Any]) -> None:
    """A job that fails part-way (a cast fails on the last day's data) is an ExecutionError, all or nothing."""
    definition = group_by("e.bad_cast", source(user="user", n="CAST(label AS BIGINT)"), column="n")
    project = new_project(tmp_path, {definition.name: definition})
    for ds, label in zip(DAYS, ["1", "2", "oops"], strict=True):
        rows = [{"user": "a", "value": 1.0, "label": label, "ts": midnight(ds) + HOUR_MS}]
        project.warehouse.write_partition("ev.events", ds, pa.Table.from_pylist(rows, schema=SCHEMA))
    with pytest.raises(gnomon.ExecutionError, match=re.escape(definition.name)):
        project.backfill(definition.name, "2026-01-01", "2026-01-03")
    assert_nothing_written(tmp_path, definition.name)
