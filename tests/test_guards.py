"""Compile-time guards: accepted but unimplemented definitions fail `gnomon compile` with a named error."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gnomon import (
    EntitySource,
    EventSource,
    GroupBy,
    Join,
    JoinPart,
    JoinSource,
    Operation,
    Project,
    Query,
    UnsupportedError,
)
from gnomon.cli import main
from gnomon.definitions import Aggregation


def repo(tmp_path: Path, config: str = "project: test\n") -> Path:
    (tmp_path / "gnomon.yaml").write_text(config)
    return tmp_path


def test_an_online_group_by_mixing_entities_and_events_is_refused_at_compile(tmp_path: Path) -> None:
    events = EventSource(table="a.views", topic="views", query=Query(selects={"item": "item_id", "x": "x"}))
    entities = EntitySource(snapshot_table="a.items", query=Query(selects={"item": "id", "x": "x"}))
    mixed = GroupBy(
        name="mixed",
        sources=[events, entities],
        keys=["item"],
        online=True,
        aggregations=[Aggregation("x", Operation.SUM)],
    )
    with pytest.raises(UnsupportedError) as error:
        Project(repo(tmp_path), objects={"mixed": mixed}).compile()
    message = str(error.value)
    assert "GroupBy('mixed')" in message and "sources" in message and "Fix:" in message
    offline_only = GroupBy(
        name="mixed",
        sources=[events, entities],
        keys=["item"],
        aggregations=[Aggregation("x", Operation.SUM)],
        accuracy=None,
    )
    Project(repo(tmp_path), objects={"mixed": offline_only}).compile()  # offline it is computed exactly


def test_online_chaining_needs_the_parent_join_online(tmp_path: Path) -> None:
    left = EventSource(table="a.views", topic="views", query=Query(selects={"user": "user_id", "x": "x"}))

    def repo_with(parent_online: bool) -> Project:
        counts = GroupBy(
            name="counts",
            sources=[left],
            keys=["user"],
            online=parent_online,
            aggregations=[Aggregation("x", Operation.COUNT)],
        )
        parent = Join(name="parent", left=left, right_parts=[JoinPart(counts)])
        child = GroupBy(
            name="child",
            sources=[JoinSource(parent, Query(selects={"user": "user", "x": "x"}))],
            keys=["user"],
            aggregations=[Aggregation("x", Operation.SUM)],
            online=True,
        )
        return Project(repo(tmp_path), objects={"counts": counts, "parent": parent, "child": child})

    with pytest.raises(UnsupportedError, match="'counts' is not online"):
        repo_with(parent_online=False).compile()
    plan = repo_with(parent_online=True).compile()
    assert plan.group_bys["child"].accuracy == "temporal"  # the parent's left topic streams it
    assert plan.group_bys["child"].sources[0].topic == "views"


def test_an_engine_that_is_not_built_fails_compile_naming_the_setting(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["compile", "--repo", str(repo(tmp_path, "offline: {engine: flink}\n"))]
    )
    assert result.exit_code != 0
    assert "offline.engine" in result.output and "duckdb" in result.output and "spark" in result.output
