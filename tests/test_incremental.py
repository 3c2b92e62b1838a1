"""Incremental GroupBy backfills (``offline: {incremental: true}``): daily IR tables.

A day-by-day run (one backfill per day, each reading the tables the previous days left) must give
byte-identical partitions to a full recompute (no tables: every day's table computed from events), for
every operation of the oracle suite; the values must match the oracle; a definition change must not
read the old tables; a missing or stale table must be recomputed from that day's events.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gnomon
from gnomon import Aggregation, GroupBy, Operation
from gnomon.offline import incremental
from oracle import Oracle, arrow_rows, assert_rows_match, ds_range, iso, midnight, write_tables
from test_offline_vs_oracle import CASES, SCHEMAS, WINDOWS, Case, event_source, make_tables

DAY_MS = 86_400_000
FIRST, LAST = "2026-01-02", "2026-01-20"
#: KLL sketches past k items compact with coin flips (DataSketches seeds them per process): no two runs
#: of any path agree bit for bit once a window holds more than k values; both runs match the oracle
RANDOMIZED = {"approx_percentile", "approx_percentile_k16"}


@pytest.fixture(scope="module")
def tables() -> dict[str, Any]:
    return make_tables()


def new_project(root: Path, objects: dict[str, Any] | None = None, incremental_runs: bool = True) -> Any:
    """A project of the embedded engine (incremental runs are its feature), with daily IR tables on."""
    root.mkdir(parents=True, exist_ok=True)
    offline = "offline:\n  engine: duckdb\n  incremental: true\n" if incremental_runs else ""
    (root / "gnomon.yaml").write_text("warehouse: ./warehouse\n" + offline)
    return gnomon.Project(str(root), objects=dict(objects or {}))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, tables: dict[str, Any]) -> Path:
    root = tmp_path_factory.mktemp("incremental") / "template"
    write_tables(new_project(root).warehouse, tables, SCHEMAS)
    return root


def clone(template: Path, target: Path) -> Path:
    shutil.copytree(template, target)
    return target


def group_by_of(case: Case, name: str) -> GroupBy:
    return GroupBy(name=name, sources=[event_source()], keys=["user"], aggregations=case.aggregations())


def partitions(project: Any, name: str, days: list[str]) -> dict[str, tuple[pa.Table, bytes]]:
    root = project.warehouse.table_path(project.output_table(name))
    out = {}
    for day in days:
        file = root / f"ds={day}" / "part-0.parquet"
        out[day] = (pq.read_table(file), file.read_bytes())
    return out


def ir_folder(project: Any, name: str) -> Path:
    return project.warehouse.table_path(project.output_table(name)) / incremental.IR_FOLDER


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_day_by_day_equals_full_recompute(
    case: Case, template: Path, tmp_path: Path, tables: dict[str, Any]
) -> None:
    group_by = group_by_of(case, f"inc.{case.id}")
    days = ds_range(FIRST, LAST)
    daily = new_project(clone(template, tmp_path / "daily"), {group_by.name: group_by})
    for day in days:
        assert daily.backfill(group_by.name, day, day) == [day]
    full = new_project(clone(template, tmp_path / "full"), {group_by.name: group_by})
    assert full.backfill(group_by.name, FIRST, LAST) == days
    got, expected = partitions(daily, group_by.name, days), partitions(full, group_by.name, days)
    for day in days:
        if case.id in RANDOMIZED:
            assert got[day][0].schema == expected[day][0].schema
            continue
        assert got[day][0].equals(expected[day][0]), f"{case.id} {day}: tables differ"
        assert got[day][1] == expected[day][1], f"{case.id} {day}: Parquet bytes differ"
    # the values are the oracle's, and the schema the SQL path's
    oracle = Oracle(tables)
    wanted = [row for day in days for row in oracle.group_by_backfill(group_by, day)]
    for run in (full, daily) if case.id in RANDOMIZED else (full,):
        assert_rows_match(
            wanted,
            arrow_rows(run.warehouse.read_table(run.output_table(group_by.name), FIRST, LAST)),
            identity=["ds", "user"],
            context=lambda row: f"q={iso(midnight(row['ds']) + DAY_MS)} user={row['user']}",
        )
    sql = new_project(clone(template, tmp_path / "sql"), {group_by.name: group_by}, incremental_runs=False)
    sql.backfill(group_by.name, LAST, LAST)
    sql_schema, schema = partitions(sql, group_by.name, [LAST])[LAST][0].schema, expected[LAST][0].schema
    assert sql_schema.names == schema.names
    for sql_field, field in zip(sql_schema, schema, strict=True):
        # the SQL path types an IR-folded column by its values: null when a day has none
        assert sql_field.type == field.type or "null" in str(sql_field.type), field.name


def simple_group_by(name: str, windows: list[str] | None = None) -> GroupBy:
    return GroupBy(
        name=name,
        sources=[event_source()],
        keys=["user"],
        aggregations=[
            Aggregation("x", Operation.SUM, windows=windows or ["5h", "14d"]),
            Aggregation("i", Operation.COUNT, windows=windows or ["13h"]),
            Aggregation("s", Operation.LAST),
        ],
    )


def test_definition_change_invalidates(template: Path, tmp_path: Path) -> None:
    repo = clone(template, tmp_path / "repo")
    first = simple_group_by("inc.changing")
    project = new_project(repo, {first.name: first})
    project.backfill(first.name, "2026-01-10", "2026-01-10")
    folder = ir_folder(project, first.name)
    (old,) = [p.name for p in folder.iterdir()]
    changed = simple_group_by("inc.changing", windows=["2d"])
    project = new_project(repo, {changed.name: changed})
    project.backfill(changed.name, "2026-01-10", "2026-01-10", force=True)
    (new,) = [p.name for p in folder.iterdir()]
    assert new != old and new == incremental.definition_key(project.plan.group_bys[changed.name])
    fresh = new_project(clone(template, tmp_path / "fresh"), {changed.name: changed})
    fresh.backfill(changed.name, "2026-01-10", "2026-01-10")
    assert (
        partitions(project, changed.name, ["2026-01-10"])["2026-01-10"][1]
        == partitions(fresh, changed.name, ["2026-01-10"])["2026-01-10"][1]
    )


def test_missing_and_stale_tables_are_recomputed(template: Path, tmp_path: Path) -> None:
    group_by = simple_group_by("inc.missing")
    repo = clone(template, tmp_path / "repo")
    project = new_project(repo, {group_by.name: group_by})
    days = ds_range("2026-01-05", "2026-01-18")
    project.backfill(group_by.name, days[0], days[-1])
    expected = partitions(project, group_by.name, days)
    (folder,) = list(ir_folder(project, group_by.name).iterdir())
    shutil.rmtree(folder / "ds=2026-01-12")  # a missing day inside the 14-day window of the last days
    stale = folder / "ds=2026-01-15" / "part-0.parquet"
    table = pq.read_table(stale)
    pq.write_table(table.replace_schema_metadata({b"gnomon.ir": b'{"chain": "old"}'}), stale)
    project.backfill(group_by.name, "2026-01-16", "2026-01-18", force=True)
    got = partitions(project, group_by.name, ["2026-01-16", "2026-01-17", "2026-01-18"])
    for day, (_, data) in got.items():
        assert data == expected[day][1]
    assert (folder / "ds=2026-01-12" / "part-0.parquet").exists()


def test_changed_source_partition_recomputes(template: Path, tmp_path: Path, tables: dict[str, Any]) -> None:
    """Re-landing a source partition (late data) makes the tables built from it stale."""
    group_by = simple_group_by("inc.relanded")
    repo = clone(template, tmp_path / "repo")
    project = new_project(repo, {group_by.name: group_by})
    project.backfill(group_by.name, "2026-01-14", "2026-01-14")
    rows = [dict(r) for r in tables["events.activity"]["2026-01-13"]]
    rows.append({**rows[0], "user": "late", "ts": midnight("2026-01-13") + 5, "x": 2.5})
    project.warehouse.write_partition(
        "events.activity", "2026-01-13", pa.Table.from_pylist(rows, schema=SCHEMAS["events.activity"])
    )
    project.backfill(group_by.name, "2026-01-14", "2026-01-14", force=True)
    got = project.warehouse.read_table(project.output_table(group_by.name), "2026-01-14", "2026-01-14")
    assert "late" in got.column("user").to_pylist()


def test_supported_sources(template: Path, tmp_path: Path) -> None:
    from gnomon import Accuracy
    from test_offline_vs_oracle import review_group_by

    events = simple_group_by("inc.events")
    entities = review_group_by("inc.entities", Accuracy.SNAPSHOT)
    project = new_project(clone(template, tmp_path / "plan"), {events.name: events, entities.name: entities})
    assert incremental.supported(project.plan.group_bys[events.name])
    assert not incremental.supported(project.plan.group_bys[entities.name])  # the SQL path: no table written
    project.backfill(entities.name, "2026-01-10", "2026-01-10")
    assert not ir_folder(project, entities.name).exists()


def test_decomposition_is_canonical() -> None:
    days = ds_range("2026-01-01", "2026-06-30")
    for first_index in range(0, 40):
        first = days[first_index]
        last = days[first_index + 89]
        parts = incremental.decomposition(first, last)
        covered: list[str] = []
        for kind, day in parts:
            if kind == "chunk":
                assert incremental.is_chunk_end(day)
                covered += ds_range(incremental.shift_ds(day, 1 - incremental.CHUNK_DAYS), day)
            else:
                covered.append(day)
        assert covered == ds_range(first, last)
        assert len(parts) <= 2 * (incremental.CHUNK_DAYS - 1) + 90 // incremental.CHUNK_DAYS


def test_windows_at_midnight() -> None:
    spans = {w: incremental.Span.of(_feature(w)) for w in WINDOWS}
    assert spans["7m"] == incremental.Span(0, 7 * 60_000)
    assert spans["2d"] == incremental.Span(2, 0)
    assert spans["13h"] == incremental.Span(0, 13 * 3_600_000)


def _feature(window: str) -> Any:
    from gnomon.compile.plan import FeaturePlan
    from gnomon.definitions.windows import Window, hop_millis

    millis = Window.parse(window).millis
    return FeaturePlan("f", "x", "count", {}, millis, hop_millis(millis))
