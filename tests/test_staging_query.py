"""StagingQuery: SQL over the warehouse with template variables, written per ds."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from conftest import use_engine
from gnomon import DefinitionError, ExecutionError, Project, StagingQuery

DAY = 86_400_000
JAN1 = 1767225600000  # 2026-01-01 00:00 UTC


def project_with(tmp_path: Path, engine: str, query: str) -> Project:
    project = Project(
        use_engine(tmp_path, engine),
        objects={"daily": StagingQuery(name="daily", query=query, start_partition="2026-01-01")},
    )
    for day in range(4):
        ds = f"2026-01-0{day + 1}"
        project.warehouse.write_partition(
            "act.views",
            ds,
            pa.table(
                {
                    "user_id": ["a", "b", "a"][: day + 1] if day < 3 else ["b"],
                    "ts": [JAN1 + day * DAY + 1] * min(day + 1, 3) if day < 3 else [JAN1 + day * DAY],
                }
            ),
        )
    return project


def test_template_variables_and_partitioning(tmp_path: Path, engine: str) -> None:
    query = """
        SELECT user_id, count(*) AS views, ds, '{{ latest_date }}' AS latest, '{{ max_date(table=act.views) }}' AS newest
        FROM act.views WHERE ds BETWEEN '{{ start_date }}' AND '{{ end_date }}' GROUP BY user_id, ds
    """
    project = project_with(tmp_path, engine, query)
    assert project.backfill("daily", "2026-01-02", "2026-01-03") == ["2026-01-02", "2026-01-03"]
    rows = project.read_table("daily").sort_by([("ds", "ascending"), ("user_id", "ascending")]).to_pylist()
    assert rows == [
        {"user_id": "a", "views": 1, "latest": "2026-01-03", "newest": "2026-01-04", "ds": "2026-01-02"},
        {"user_id": "b", "views": 1, "latest": "2026-01-03", "newest": "2026-01-04", "ds": "2026-01-02"},
        {"user_id": "a", "views": 2, "latest": "2026-01-03", "newest": "2026-01-04", "ds": "2026-01-03"},
        {"user_id": "b", "views": 1, "latest": "2026-01-03", "newest": "2026-01-04", "ds": "2026-01-03"},
    ]
    assert project.output_table("daily") == "features.daily"
    # incremental: existing partitions are skipped unless forced
    assert project.backfill("daily", "2026-01-02", "2026-01-04") == ["2026-01-04"]
    assert project.backfill("daily", "2026-01-02", "2026-01-02", force=True) == ["2026-01-02"]


def test_a_query_without_ds_is_rejected_and_writes_nothing(tmp_path: Path, engine: str) -> None:
    project = project_with(tmp_path, engine, "SELECT user_id FROM act.views")
    with pytest.raises(DefinitionError, match="'ds' column"):
        project.backfill("daily", "2026-01-01", "2026-01-02")
    assert project.warehouse.partitions("features.daily") == []


def test_a_failing_query_names_the_staging_query(tmp_path: Path, engine: str) -> None:
    project = project_with(tmp_path, engine, "SELECT nope, ds FROM act.views")
    with pytest.raises(ExecutionError, match=r"StagingQuery\('daily'\).*nope"):
        project.backfill("daily", "2026-01-01", "2026-01-02")
    assert project.warehouse.partitions("features.daily") == []
