"""Data-quality statistics (`gnomon.offline.stats`): every figure against a naive per-column loop on
seeded tables, PSI and top-k drift worked by hand, the backfill hook on both engines (every written
partition gets statistics, with drift against the previous ds), the switch that turns it off, a
failure that costs no partition, the hidden storage, and ``gnomon stats``."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import datasketches
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pytest
import yaml
from click.testing import CliRunner

import gnomon
from conftest import use_engine
from gnomon import StagingQuery
from gnomon.cli import main
from gnomon.errors import ConfigError, WarehouseError
from gnomon.offline import stats as stats_module
from gnomon.offline.stats import (
    DECILES,
    EPSILON,
    LG_K,
    PartitionStats,
    compute_stats,
    read_stats,
    stats_table,
    update_stats,
    write_stats,
)
from gnomon.offline.warehouse import Warehouse
from gnomon.scaffold import create_example_repo

JOIN, JOIN_TABLE = "user_item_training", "features.user_item_training"
DAYS = ["2026-10-01", "2026-10-02", "2026-10-03", "2026-10-04"]
EPOCH = dt.datetime(1970, 1, 1)


# ------------------------------------------------------------------ seeded tables and a naive oracle


def seeded_table(seed: int, rows: int = 3000) -> pa.Table:
    """Every kind of column: ints (negative ones, few distinct, 62-bit, uint64 past 2**63), floats
    with NaN and nulls, a constant, an all-null column, strings (with ""), dictionary strings,
    booleans, timestamps, dates and lists, each with some nulls."""
    rng = np.random.default_rng(seed)

    def holes(rate: float) -> np.ndarray:
        return rng.random(rows) < rate

    price = rng.normal(10, 3, rows)
    price[rng.random(rows) < 0.03] = np.nan
    names = [f"n{i:03d}" for i in range(300)] + [""]
    picked = rng.choice(len(names), rows, p=np.r_[np.full(300, 0.99 / 300), 0.01]).tolist()
    missing = holes(0.05)
    ts = rng.integers(1_790_000_000_000, 1_790_086_400_000, rows)
    return pa.table(
        {
            "small_int": pa.array(rng.integers(-20, 20, rows), mask=holes(0.05)),
            "few": pa.array(rng.integers(0, 4, rows).astype(np.int32)),
            "big_int": pa.array(rng.integers(0, 2**62, rows)),
            "unsigned": pa.array(rng.integers(2**63, 2**64 - 1, rows, dtype=np.uint64)),
            "price": pa.array(price, mask=holes(0.05)),
            "score": pa.array(rng.choice([0.5, 1.0, 2.0], rows).astype(np.float32)),
            "constant": pa.array(np.full(rows, 7)),
            "empty": pa.array([None] * rows, pa.float64()),
            "name": pa.array([None if m else names[i] for i, m in zip(picked, missing, strict=True)]),
            "city": pa.array(rng.choice(["ams", "ber", "cph"], rows)).dictionary_encode(),
            "flag": pa.array(rng.random(rows) < 0.3, mask=holes(0.1)),
            "ts": pa.array(ts, mask=holes(0.02)).cast(pa.timestamp("ms")),
            "day": pa.array(rng.integers(20_000, 20_030, rows).astype(np.int32), mask=holes(0.02)).cast(
                pa.date32()
            ),
            "tags": pa.array(
                [None if m else ["a"] * int(n) for m, n in zip(holes(0.1), ts % 3, strict=True)]
            ),
        }
    )


def naive_quantile(ordered: list[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def naive_counts(values: list[float], edges: list[float]) -> list[int]:
    """Each value in the last bin whose lower edge it reaches: [e_i, e_i+1), the last one closed."""
    counts = [0] * max(len(edges) - 1, 1)
    for value in values:
        index = 0
        for i in range(len(counts)):
            if value >= edges[i]:
                index = i
        counts[index] += 1
    return counts


def naive_sketch_item(value: Any) -> Any:
    """What APPROX_UNIQUE_COUNT feeds its CPC sketch for one value (temporal: its stored integer)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dt.datetime):
        return (value - EPOCH) // dt.timedelta(milliseconds=1)
    if isinstance(value, dt.date):
        return (value - EPOCH.date()).days
    if isinstance(value, str):
        return value if value else float("nan")
    return value


def naive_column(values: list[Any], arrow_type: pa.DataType) -> dict[str, Any]:
    """The figures of one column computed one value at a time, without the module's code."""
    present = [v for v in values if v is not None]
    nans = sum(1 for v in present if isinstance(v, float) and math.isnan(v))
    present = [v for v in present if not (isinstance(v, float) and math.isnan(v))]
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    figures: dict[str, Any] = {"nulls": len(values) - len(present) - nans, "nans": nans, "mean": None}
    nested = pa.types.is_list(arrow_type)
    figures["min"] = None if nested or not present else min(present)
    figures["max"] = None if nested or not present else max(present)
    if present and isinstance(present[0], dt.date):
        figures["min"], figures["max"] = figures["min"].isoformat(), figures["max"].isoformat()
    numeric = pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)
    if numeric and present:
        figures["mean"] = sum(present) / len(present)
        ordered = sorted(present)
        figures["edges"] = sorted({naive_quantile(ordered, q) for q in DECILES})
        if len(figures["edges"]) == 1:
            figures["edges"] *= 2
    if (pa.types.is_string(arrow_type) or pa.types.is_boolean(arrow_type)) and present:
        ranked = sorted(Counter(present).items(), key=lambda item: (-item[1], item[0]))
        figures["top"] = [[value, count] for value, count in ranked[:10]]
    figures["exact_distinct"] = None if nested else len(set(present))
    if not nested and present:
        sketch = datasketches.cpc_sketch(LG_K)
        for value in present:
            sketch.update(naive_sketch_item(value))
        union = datasketches.cpc_union(LG_K)
        union.update(sketch)
        result = union.get_result()
        figures["sketch"] = (
            round(result.get_estimate()),
            result.get_lower_bound(3),
            result.get_upper_bound(3),
        )
    return figures


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_figure_matches_a_naive_computation(seed: int) -> None:
    data = seeded_table(seed)
    stats = compute_stats("t.seeded", "2026-10-01", data, None)
    assert stats.rows == data.num_rows
    assert [c.name for c in stats.columns] == data.column_names
    for column, field in zip(stats.columns, data.schema, strict=True):
        naive = naive_column(data.column(field.name).to_pylist(), field.type)
        assert column.type == str(field.type), field.name
        assert (column.nulls, column.nans) == (naive["nulls"], naive["nans"]), field.name
        assert (column.min, column.max) == (naive["min"], naive["max"]), field.name
        if naive["mean"] is None:
            assert column.mean is None, field.name
        else:
            assert column.mean == pytest.approx(naive["mean"], rel=1e-9), field.name
        assert column.drift is None  # no previous partition
        if "edges" in naive:
            assert column.histogram is not None and column.histogram["kind"] == "numeric"
            assert column.histogram["edges"] == pytest.approx(naive["edges"], rel=1e-12), field.name
            present = [v for v in data.column(field.name).to_pylist() if v is not None and v == v]
            assert column.histogram["counts"] == naive_counts(present, column.histogram["edges"]), field.name
        elif "top" in naive:
            assert column.histogram == {"kind": "categorical", "top": naive["top"]}, field.name
        else:
            assert column.histogram is None, field.name
        if naive["exact_distinct"] is None:  # lists: no distinct count
            assert column.distinct is None, field.name
        elif "sketch" not in naive:
            assert column.distinct == 0, field.name
        else:
            estimate, lower, upper = naive["sketch"]
            present_count = data.num_rows - naive["nulls"] - naive["nans"]
            # the library's own estimate of those values (never above the values counted) ...
            assert column.distinct == min(estimate, present_count), field.name
            # ... and the exact count within its 3-sigma bounds
            assert lower <= naive["exact_distinct"] <= upper, field.name


def test_the_checked_columns_cover_every_kind() -> None:
    """The seeded table really exercises what the test above claims: dedup'ed edges, a constant, an
    all-null column, high cardinality (where the sketch is approximate) and NaN next to nulls."""
    stats = {c.name: c for c in compute_stats("t.seeded", "2026-10-01", seeded_table(1), None).columns}
    assert len(stats["few"].histogram["edges"]) < 11  # type: ignore[index]
    assert stats["constant"].histogram == {"kind": "numeric", "edges": [7.0, 7.0], "counts": [3000]}
    assert stats["empty"].nulls == 3000 and stats["empty"].histogram is None
    assert stats["price"].nans > 0 and stats["price"].nulls > 0
    assert stats["big_int"].distinct != 3000  # approximate past a few hundred values
    assert stats["tags"].nulls > 0 and stats["tags"].min is None


# ------------------------------------------------------------------ drift worked by hand


def test_psi_by_hand() -> None:
    """Previous partition 0..9: deciles 0, 0.9, 1.8, ..., 9, one value per bin, e = 0.1 each.
    Current: five 0s (bin 0), four 5s (bin 5 = [4.5, 5.4)), one 20 (past 9: the open last bin 9).
    a = [0.5, 0, 0, 0, 0, 0.4, 0, 0, 0, 0.1]; the seven empty bins count as EPSILON = 1e-4."""
    previous = compute_stats("t.psi", "2026-10-01", pa.table({"x": list(range(10))}), None)
    edges = previous.columns[0].histogram["edges"]  # type: ignore[index]
    assert edges == pytest.approx([0, 0.9, 1.8, 2.7, 3.6, 4.5, 5.4, 6.3, 7.2, 8.1, 9])
    assert previous.columns[0].histogram["counts"] == [1] * 10  # type: ignore[index]
    current = compute_stats("t.psi", "2026-10-02", pa.table({"x": [0, 0, 0, 0, 0, 5, 5, 5, 5, 20]}), previous)
    e, eps = 0.1, EPSILON
    by_hand = (
        (0.5 - e) * math.log(0.5 / e)  # bin 0: 0.6438
        + 7 * (eps - e) * math.log(eps / e)  # bins 1-4 and 6-8 empty: 7 x 0.6901
        + (0.4 - e) * math.log(0.4 / e)  # bin 5: 0.4159
        + (0.1 - e) * math.log(0.1 / e)  # bin 9: 0
    )
    assert by_hand == pytest.approx(5.8903, abs=1e-4)
    assert current.columns[0].drift == {
        "kind": "psi",
        "psi": pytest.approx(by_hand, rel=1e-12),
        "previous_ds": "2026-10-01",
    }
    same = compute_stats("t.psi", "2026-10-02", pa.table({"x": list(range(10))}), previous)
    assert same.columns[0].drift["psi"] == pytest.approx(0.0)  # type: ignore[index]


def test_psi_against_a_constant_column_has_below_at_and_above_bins() -> None:
    previous = compute_stats("t.c", "2026-10-01", pa.table({"x": [3.0] * 4}), None)
    current = compute_stats("t.c", "2026-10-02", pa.table({"x": [1.0, 3.0, 3.0, 8.0]}), previous)
    # e = [0, 1, 0] -> [EPSILON, 1, EPSILON]; a = [0.25, 0.5, 0.25]
    by_hand = 2 * (0.25 - EPSILON) * math.log(0.25 / EPSILON) + (0.5 - 1) * math.log(0.5 / 1)
    assert current.columns[0].drift["psi"] == pytest.approx(by_hand)  # type: ignore[index]


def test_top_k_drift_by_hand() -> None:
    before = pa.table({"s": ["a"] * 5 + ["b"] * 3 + ["c"] * 2, "b": [True] * 10})
    after = pa.table({"s": ["a"] * 5 + ["c"] * 3 + ["d"] * 2, "b": [True] * 9 + [False]})
    previous = compute_stats("t.k", "2026-10-01", before, None)
    current = compute_stats("t.k", "2026-10-02", after, previous)
    strings, booleans = current.columns
    assert strings.histogram == {"kind": "categorical", "top": [["a", 5], ["c", 3], ["d", 2]]}
    assert strings.drift == {
        "kind": "top_k",
        "changed": True,
        "added": ["d"],
        "removed": ["b"],
        "previous_ds": "2026-10-01",
    }
    assert booleans.drift == {
        "kind": "top_k",
        "changed": True,
        "added": [False],
        "removed": [],
        "previous_ds": "2026-10-01",
    }
    again = compute_stats("t.k", "2026-10-03", after, current)
    assert again.columns[0].drift["changed"] is False  # type: ignore[index]


def test_top_values_are_the_ten_most_frequent_ties_by_value() -> None:
    values = [f"v{i:02d}" for i in range(12) for _ in range(3)] + ["z"] * 4
    top = compute_stats("t.k", "2026-10-01", pa.table({"s": values}), None).columns[0].histogram
    assert top == {"kind": "categorical", "top": [["z", 4]] + [[f"v{i:02d}", 3] for i in range(9)]}


# ------------------------------------------------------------------ storage


def test_stored_statistics_read_back_equal_and_are_written_atomically(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path)
    for index, day in enumerate(DAYS[:3]):
        warehouse.write_partition("t.seeded", day, seeded_table(index))
    computed = [write_stats(warehouse, "t.seeded", day) for day in DAYS[:3]]
    stored = read_stats(warehouse, "t.seeded")
    assert [s.to_json() for s in stored] == [s.to_json() for s in computed]
    assert [s.ds for s in read_stats(warehouse, "t.seeded", "2026-10-02", "2026-10-02")] == ["2026-10-02"]
    assert computed[0].columns[4].drift is None
    assert computed[2].columns[4].drift["previous_ds"] == "2026-10-02"  # type: ignore[index]
    folder = tmp_path / stats_table("t.seeded")
    assert folder == tmp_path / "t" / "seeded" / ".stats"
    write_stats(warehouse, "t.seeded", "2026-10-02")  # rewriting replaces the file, leaves no temporary
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        f"ds={day}{suffix}" for day in DAYS[:3] for suffix in ("", "/part-0.parquet")
    ]
    # a small table that SQL reads as it is
    null_rates = duckdb.sql(
        f"SELECT ds, nulls / rows FROM read_parquet('{folder}/*/*.parquet', hive_partitioning = true, "
        "hive_types = {'ds': VARCHAR}) WHERE \"column\" = 'price' ORDER BY ds"
    ).fetchall()
    assert [ds for ds, _ in null_rates] == DAYS[:3]
    assert null_rates[0][1] == computed[0].columns[4].nulls / computed[0].rows


def test_missing_previous_statistics_are_computed_for_the_drift(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path)
    warehouse.write_partition("t.x", "2026-10-01", pa.table({"x": list(range(10))}))
    warehouse.write_partition("t.x", "2026-10-03", pa.table({"x": list(range(10))}))
    stats = write_stats(warehouse, "t.x", "2026-10-03")  # nothing stored for 2026-10-01
    assert stats.columns[0].drift == {"kind": "psi", "psi": pytest.approx(0.0), "previous_ds": "2026-10-01"}
    assert [s.ds for s in read_stats(warehouse, "t.x")] == ["2026-10-03"]  # the previous one not stored


def test_unknown_partition_names_what_exists(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path)
    warehouse.write_partition("t.x", "2026-10-01", pa.table({"x": [1]}))
    warehouse.write_partition("t.x", "2026-10-02", pa.table({"x": [1]}))
    with pytest.raises(
        WarehouseError, match=r"no partition ds=2026-11-01; it has 2 partition\(s\), 2026-10-01 .. 2026-10-02"
    ):
        write_stats(warehouse, "t.x", "2026-11-01")
    with pytest.raises(WarehouseError, match="does not exist"):
        read_stats(warehouse, "t.nope")


# ------------------------------------------------------------------ the backfill hook, on both engines


@pytest.fixture(scope="module")
def backfilled(engine: str, tmp_path_factory: pytest.TempPathFactory) -> gnomon.Project:
    """The quickstart on this module's engine: the Join over DAYS, the GroupBy item_ratings over two."""
    repo = create_example_repo(tmp_path_factory.mktemp(f"stats-{engine}") / "quickstart")
    use_engine(repo, engine)
    project = gnomon.Project(repo)
    assert project.backfill(JOIN, DAYS[0], DAYS[-1]) == DAYS
    project.backfill("item_ratings", DAYS[0], DAYS[1])
    return project


def test_every_backfilled_partition_has_statistics_with_drift_against_the_previous_ds(
    backfilled: gnomon.Project,
) -> None:
    warehouse = backfilled.warehouse
    for table, days in ((JOIN_TABLE, DAYS), ("features.item_ratings", DAYS[:2])):
        stored = read_stats(warehouse, table)
        assert [s.ds for s in stored] == days == warehouse.partitions(table)
        for index, stats in enumerate(stored):
            data = warehouse.read_table(table, stats.ds, stats.ds).drop(["ds"])
            assert stats.rows == data.num_rows > 0
            assert [c.name for c in stats.columns] == data.column_names
            drifts = [c.drift for c in stats.columns if c.histogram is not None]
            if index == 0:
                assert drifts and all(d is None for d in drifts)
            else:
                assert drifts and all(d is not None and d["previous_ds"] == days[index - 1] for d in drifts)
            # the stored figures are those of the committed partition
            fresh = compute_stats(table, stats.ds, data, stored[index - 1] if index else None)
            assert [c.to_json() for c in fresh.columns] == [c.to_json() for c in stats.columns]


def test_the_stats_folder_is_no_partition_table_or_column(backfilled: gnomon.Project, engine: str) -> None:
    warehouse = backfilled.warehouse
    folder = warehouse.table_path(JOIN_TABLE)
    assert (folder / ".stats").is_dir()
    assert warehouse.partitions(JOIN_TABLE) == DAYS
    assert not [t for t in warehouse.tables() if "stats" in t]
    table = warehouse.read_table(JOIN_TABLE)
    columns = {"user", "item", "ts", "ds"}
    assert columns <= set(table.column_names) and not {"column", "histogram", "drift"} & set(
        table.column_names
    )
    rows = table.num_rows
    assert duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{folder}/*/*.parquet', hive_partitioning = true)"
    ).fetchall() == [(rows,)]
    assert pds.dataset(folder, format="parquet", partitioning="hive").count_rows() == rows
    assert backfilled.read_table(JOIN).num_rows == rows
    if engine == "spark":  # Spark's own discovery of the table folder skips hidden folders too
        from gnomon.offline.engines.spark import spark_session

        frame = spark_session(backfilled.config.offline).read.parquet(str(folder))
        assert frame.count() == rows and "histogram" not in frame.columns


def test_a_staging_query_backfill_stores_statistics(tmp_path: Path) -> None:
    repo = create_example_repo(tmp_path / "quickstart")
    daily = StagingQuery(
        name="daily_watches",
        query="SELECT user_id, count(*) AS watches, ds FROM user_activity.watches "
        "WHERE ds BETWEEN '{{ start_date }}' AND '{{ end_date }}' GROUP BY user_id, ds",
        start_partition="2026-10-01",
    )
    project = gnomon.Project(repo, {"daily_watches": daily})
    project.backfill("daily_watches", DAYS[0], DAYS[1])
    stored = read_stats(project.warehouse, "features.daily_watches")
    assert [s.ds for s in stored] == DAYS[:2]
    watches = stored[1].column("watches")
    assert watches is not None and watches.drift is not None and watches.drift["kind"] == "psi"


def test_an_earlier_backfill_refreshes_the_drift_of_the_partition_after_it(tmp_path: Path) -> None:
    project = gnomon.Project(create_example_repo(tmp_path / "quickstart"))
    project.backfill(JOIN, DAYS[2], DAYS[3])
    first = read_stats(project.warehouse, JOIN_TABLE)
    assert first[0].ds == DAYS[2] and first[0].column("ts").drift is None  # type: ignore[union-attr]
    project.backfill(JOIN, DAYS[0], DAYS[1])
    stored = {s.ds: s for s in read_stats(project.warehouse, JOIN_TABLE)}
    assert sorted(stored) == DAYS
    assert stored[DAYS[2]].column("ts").drift["previous_ds"] == DAYS[1]  # type: ignore[union-attr, index]
    assert stored[DAYS[3]].computed_at == first[1].computed_at  # untouched: its previous did not change


def test_statistics_off_in_gnomon_yaml_writes_none(tmp_path: Path) -> None:
    repo = create_example_repo(tmp_path / "quickstart")
    config = yaml.safe_load((repo / "gnomon.yaml").read_text())
    config["offline"] = {"engine": "duckdb", "stats": False}
    (repo / "gnomon.yaml").write_text(yaml.safe_dump(config))
    project = gnomon.Project(repo)
    assert project.config.offline.stats is False
    assert project.backfill(JOIN, DAYS[0], DAYS[1]) == DAYS[:2]
    assert not (project.warehouse.table_path(JOIN_TABLE) / ".stats").exists()
    assert read_stats(project.warehouse, JOIN_TABLE) == []


def test_a_bad_stats_setting_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "gnomon.yaml").write_text("offline: {stats: sometimes}\n")
    with pytest.raises(ConfigError, match="offline.stats must be true or false"):
        gnomon.Project(tmp_path)


def test_a_statistics_failure_keeps_the_partitions_and_names_table_and_ds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> PartitionStats:
        raise MemoryError("no room for statistics")

    monkeypatch.setattr(stats_module, "compute_stats", broken)
    project = gnomon.Project(create_example_repo(tmp_path / "quickstart"))
    with caplog.at_level(logging.WARNING, logger="gnomon.offline"):
        assert project.backfill(JOIN, DAYS[0], DAYS[1]) == DAYS[:2]
    assert project.warehouse.partitions(JOIN_TABLE) == DAYS[:2]
    assert read_stats(project.warehouse, JOIN_TABLE) == []
    for day in DAYS[:2]:
        assert (
            f"statistics of {JOIN_TABLE} ds={day} failed (MemoryError: no room for statistics)" in caplog.text
        )
    assert f"gnomon stats {JOIN_TABLE} --ds {DAYS[1]}" in caplog.text
    monkeypatch.undo()
    assert [s.ds for s in update_stats(project.warehouse, JOIN_TABLE, DAYS[:2])] == DAYS[:2]


# ------------------------------------------------------------------ gnomon stats


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = create_example_repo(tmp_path_factory.mktemp("stats-cli") / "quickstart")
    gnomon.Project(repo).backfill(JOIN, DAYS[0], DAYS[1])
    return repo


def test_gnomon_stats_prints_the_table_by_name_or_table(quickstart: Path) -> None:
    by_name = CliRunner().invoke(main, ["stats", JOIN, "--ds", DAYS[1], "--repo", str(quickstart)])
    assert by_name.exit_code == 0, by_name.output
    lines = by_name.output.splitlines()
    stored = read_stats(gnomon.Project(quickstart).warehouse, JOIN_TABLE, DAYS[1], DAYS[1])[0]
    assert lines[0].startswith(f"{JOIN_TABLE}  ds={DAYS[1]}  {stored.rows:,} rows  (computed ")
    assert lines[1] == f"drift against ds={DAYS[0]}"
    assert lines[3].split() == [
        "column",
        "type",
        "nulls",
        "nans",
        "min",
        "max",
        "mean",
        "distinct",
        "histogram",
        "drift",
    ]
    body = {line.split()[0]: line for line in lines[4:]}
    assert list(body) == [c.name for c in stored.columns]
    ts = stored.column("ts")
    assert ts is not None and str(ts.min) in body["ts"] and "psi " in body["ts"]
    by_table = CliRunner().invoke(main, ["stats", JOIN_TABLE, "--ds", DAYS[1], "--repo", str(quickstart)])
    assert by_table.output == by_name.output


def test_gnomon_stats_json(quickstart: Path) -> None:
    result = CliRunner().invoke(main, ["stats", JOIN, "--ds", DAYS[0], "--json", "--repo", str(quickstart)])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    stored = read_stats(gnomon.Project(quickstart).warehouse, JOIN_TABLE, DAYS[0], DAYS[0])[0]
    assert body == stored.to_json()
    assert set(body) == {"table", "ds", "rows", "computed_at", "columns"}
    assert set(body["columns"][0]) == {
        "name",
        "type",
        "nulls",
        "nans",
        "min",
        "max",
        "mean",
        "distinct",
        "histogram",
        "drift",
    }


def test_gnomon_stats_errors_name_what_exists(quickstart: Path) -> None:
    unknown = CliRunner().invoke(
        main, ["stats", "user_item_trainin", "--ds", DAYS[0], "--repo", str(quickstart)]
    )
    assert unknown.exit_code == 1
    assert (
        "unknown table, GroupBy, Join or StagingQuery 'user_item_trainin'; did you mean 'user_item_training'"
        in unknown.output
    )
    missing = CliRunner().invoke(main, ["stats", JOIN, "--ds", "2026-11-01", "--repo", str(quickstart)])
    assert missing.exit_code == 1
    assert (
        f"table '{JOIN_TABLE}' has no partition ds=2026-11-01; it has 2 partition(s), {DAYS[0]} .. {DAYS[1]}"
        in missing.output
    )


def test_gnomon_stats_computes_missing_statistics_on_demand(tmp_path: Path) -> None:
    repo = create_example_repo(tmp_path / "quickstart")
    (repo / "gnomon.yaml").write_text("offline: {engine: duckdb, stats: false}\n")
    project = gnomon.Project(repo)
    project.backfill(JOIN, DAYS[0], DAYS[1])
    result = CliRunner().invoke(main, ["stats", JOIN, "--ds", DAYS[1], "--repo", str(repo)])
    assert result.exit_code == 0, result.output
    assert (
        result.stderr
        == f"no statistics were stored for {JOIN_TABLE} ds={DAYS[1]}: computed and stored them now\n"
    )
    stored = read_stats(project.warehouse, JOIN_TABLE)
    assert [s.ds for s in stored] == [DAYS[1]]
    assert stored[0].columns[0].drift["previous_ds"] == DAYS[0]  # type: ignore[index]
    assert stored[0].format() in result.stdout
