"""The embedded engine's fast paths give exactly the values of the paths they replace.

- APPROX_UNIQUE_COUNT in SQL (`gnomon.offline.engines.cpc`): the CPC coupon of each value computed
  here must be DataSketches', and a window's value ``icon(count(DISTINCT coupon))`` must equal the IR's
  finalized sketch; the engine's outputs must be identical with and without the SQL form.
- Key-hash shards filter entity rows before their versions are computed: any shard count gives the
  same partitions as one shard.
- Window frames of short windows sort only the events they can read (`_frame_groups`): any grouping
  gives the values of one sort over every event.
"""

from __future__ import annotations

import math
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import gnomon
from gnomon import Accuracy, Aggregation, GroupBy, Join, JoinPart, Operation
from gnomon.aggregation import make_aggregator
from gnomon.offline.engines import cpc
from oracle import ds_range, write_tables


def library_coupons(values: list[Any], lg_k: int, input_type: str) -> int:
    """C, the number of coupons DataSketches' sketch of these values holds (from its summary)."""
    aggregator = make_aggregator("approx_unique_count", {"lg_k": lg_k}, input_type)
    sketch = aggregator.fold_values(values)
    if sketch is None:
        return 0
    return int(re.search(r"C\s+:\s+(\d+)", sketch.to_string()).group(1))  # type: ignore[union-attr]


def random_values(rng: random.Random, kind: str) -> Any:
    if kind == "int":
        return rng.choice(
            [rng.randint(-1000, 1000), rng.randint(-(2**63), 2**63 - 1), -(2**53) - rng.randint(0, 9), 0]
        )
    if kind == "float":
        return rng.choice(
            [rng.uniform(-1e6, 1e6), 0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e300, 5e-324]
        )
    if kind == "str":
        length = rng.randint(0, 40)  # every tail length of the 16-byte blocks
        return rng.choice(["", "é", "日本", "".join(rng.choice("abcdefgh€") for _ in range(length))])
    return rng.random() < 0.5


ARROW = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_()}
DUCK = {"int": "BIGINT", "float": "DOUBLE", "str": "VARCHAR", "bool": "BOOLEAN"}


@pytest.mark.parametrize("kind", ["int", "float", "str", "bool"])
@pytest.mark.parametrize("lg_k", [4, 8, 11])
def test_coupons_are_datasketches(kind: str, lg_k: int) -> None:
    rng = random.Random(lg_k * 31 + len(kind))
    for _ in range(150):
        values = [random_values(rng, kind) for _ in range(rng.randint(1, 80))]
        ours = cpc.coupons(pa.array(values, ARROW[kind]), DUCK[kind], lg_k)
        assert len(set(ours.tolist())) == library_coupons(values, lg_k, kind), values


def test_unsigned_and_narrow_ints() -> None:
    values = [0, 1, 2**63, 2**64 - 1, 255]
    ours = cpc.coupons(pa.array(values, pa.uint64()), "UBIGINT", 6)
    assert len(set(ours.tolist())) == library_coupons(values, 6, "int")
    small = [-3, 0, 7, 127, -128]
    ours = cpc.coupons(pa.array(small, pa.int8()), "TINYINT", 6)
    assert len(set(ours.tolist())) == library_coupons(small, 6, "int")


@pytest.mark.parametrize("lg_k", [4, 8])
def test_estimate_depends_on_the_coupon_count_only(lg_k: int) -> None:
    rng = random.Random(lg_k)
    universe = list(range(-20_000, 60_000))
    numbers = cpc.coupons(pa.array(universe, pa.int64()), "BIGINT", lg_k)
    representatives: dict[int, int] = {}
    for value, coupon in zip(universe, numbers.tolist(), strict=True):
        representatives.setdefault(coupon, value)
    aggregator = make_aggregator("approx_unique_count", {"lg_k": lg_k}, "int")
    table = cpc.IconTable(aggregator, list(representatives.values()), universe)
    position = {value: index for index, value in enumerate(universe)}
    for _ in range(200):
        window = rng.sample(universe, rng.choice([1, 3, 40, 900, 20_000]))
        count = len({int(numbers[position[v]]) for v in window})
        assert table.values[count] == aggregator.finalize(aggregator.fold_values(window))


def test_a_hash_mismatch_is_caught() -> None:
    aggregator = make_aggregator("approx_unique_count", {"lg_k": 4}, "int")
    with pytest.raises(cpc.HashMismatch):
        cpc.IconTable(aggregator, list(range(200)), [])  # 200 values cannot have distinct coupons at lg_k 4


# ------------------------------------------------------------------------------- engine outputs


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_offline_vs_oracle import SCHEMAS, make_tables

    root = tmp_path_factory.mktemp("speedups") / "repo"
    write_tables(project(root).warehouse, make_tables(), SCHEMAS)
    return root


def project(root: Path, objects: dict[str, Any] | None = None, shards: int = 1) -> Any:
    root.mkdir(parents=True, exist_ok=True)
    (root / "gnomon.yaml").write_text(
        f"warehouse: ./warehouse\noffline:\n  engine: duckdb\n  shards: {shards}\n"
    )
    return gnomon.Project(str(root), objects=dict(objects or {}))


def outputs(
    root: Path, objects: dict[str, Any], names: list[str], start: str, end: str, shards: int = 1
) -> list[pa.Table]:
    clone = root.parent / f"run-{len(list(root.parent.iterdir()))}"
    shutil.copytree(root, clone)
    built = project(clone, objects, shards)
    tables = []
    for name in names:
        built.backfill(name, start, end)
        tables.append(built.warehouse.read_table(built.output_table(name), start, end))
    return tables


def test_approx_unique_count_in_sql_equals_the_ir_fold(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_offline_vs_oracle import LEFT, WINDOWS, event_source

    group_bys = []
    for lg_k in (4, 8):
        aggregations = [
            Aggregation(column, Operation.APPROX_UNIQUE_COUNT(lg_k=lg_k), windows=windows)
            for column in ("s_wide", "i", "x", "xn", "tags", "b")
            for windows in (WINDOWS, None)
        ]
        aggregations += [
            Aggregation(
                "s_wide", Operation.APPROX_UNIQUE_COUNT(lg_k=lg_k), windows=["5h", "2d"], buckets=["cat"]
            ),
            Aggregation("m_int", Operation.APPROX_UNIQUE_COUNT(lg_k=lg_k), windows=["2d"]),
            Aggregation("vec", Operation.APPROX_UNIQUE_COUNT(lg_k=lg_k), windows=["2d"], element_wise=True),
        ]
        group_bys.append(
            GroupBy(
                name=f"sketch.users_{lg_k}",
                sources=[event_source()],
                keys=["user"],
                aggregations=aggregations,
            )
        )
    join = Join(
        name="sketch.train",
        left=LEFT,
        right_parts=[
            JoinPart(g, key_mapping={"user_id": "user"}, prefix=f"k{n}") for n, g in enumerate(group_bys)
        ],
    )
    objects = {**{g.name: g for g in group_bys}, join.name: join}
    names = [*(g.name for g in group_bys), join.name]
    fast = outputs(repo, objects, names, "2026-01-02", "2026-01-20")
    monkeypatch.setattr(cpc, "supported", lambda duck_type: False)  # every feature folded by the IR
    slow = outputs(repo, objects, names, "2026-01-02", "2026-01-20")
    for fast_table, slow_table in zip(fast, slow, strict=True):
        assert fast_table.num_rows > 0
        for column in fast_table.column_names:
            # (the SQL path's map entries come in no fixed order: compare maps as dicts)
            assert plain(fast_table.column(column)) == plain(slow_table.column(column)), column


def plain(column: Any) -> list[Any]:
    mapped = pa.types.is_map(column.type)
    return [dict(v) if mapped and v is not None else v for v in column.to_pylist()]


def test_entity_shards_equal_one_shard(tmp_path: Path) -> None:
    from test_entities_vs_oracle import LEFT, SCHEMAS, make_tables, ratings_group_by

    root = tmp_path / "repo"
    write_tables(project(root).warehouse, make_tables(), SCHEMAS)
    temporal = ratings_group_by("shard.temporal", Accuracy.TEMPORAL)
    daily = ratings_group_by("shard.snapshot", Accuracy.SNAPSHOT)
    join = Join(
        name="shard.train",
        left=LEFT,
        right_parts=[
            JoinPart(temporal, key_mapping={"item_id": "item"}),
            JoinPart(daily, key_mapping={"item_id": "item"}, prefix="d"),
        ],
    )
    objects = {temporal.name: temporal, daily.name: daily, join.name: join}
    days = ds_range("2026-03-02", "2026-03-08")
    one = outputs(root, objects, [daily.name, join.name], days[0], days[-1], shards=1)
    for shards in (2, 3):
        many = outputs(root, objects, [daily.name, join.name], days[0], days[-1], shards=shards)
        for expected, got in zip(one, many, strict=True):
            assert expected.num_rows > 0 and got.schema == expected.schema
            identity = [
                (c, "ascending") for c in ("ds", "item", "row_id", "ts") if c in expected.column_names
            ]
            rows = zip(got.sort_by(identity).to_pylist(), expected.sort_by(identity).to_pylist(), strict=True)
            for got_row, expected_row in rows:  # DuckDB's float sums are exact up to summation order
                assert close(got_row, expected_row), (got_row, expected_row)


def close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_frame_groups_equal_one_frame(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gnomon.offline.engines import duckdb as engine
    from test_offline_vs_oracle import LEFT, WINDOWS, event_source

    aggregations = [
        Aggregation(column, operation, windows=WINDOWS)
        for column, operation in [
            ("x", Operation.COUNT),
            ("x", Operation.SUM),
            ("x", Operation.MAX),
            ("x", Operation.AVERAGE),
            ("i", Operation.LAST_K(3)),
            ("s_wide", Operation.APPROX_UNIQUE_COUNT),
        ]
    ]
    aggregations.append(Aggregation("x", Operation.SUM))  # unbounded: every event
    group_by = GroupBy(
        name="frames.users", sources=[event_source()], keys=["user"], aggregations=aggregations
    )
    join = Join(
        name="frames.train", left=LEFT, right_parts=[JoinPart(group_by, key_mapping={"user_id": "user"})]
    )
    objects = {group_by.name: group_by, join.name: join}
    names = [group_by.name, join.name]
    groups: list[int] = []
    original = engine.DuckDBEngine._frame_groups

    def counted(self: Any, *args: Any) -> Any:
        found = original(self, *args)
        groups.append(len(found))
        return found

    monkeypatch.setattr(engine.DuckDBEngine, "_frame_groups", counted)
    monkeypatch.setattr(engine, "_REGROUP", 0.0)  # one group: every event in one sort
    one = outputs(repo, objects, names, "2026-01-02", "2026-01-20")
    assert set(groups) == {1}
    groups.clear()
    monkeypatch.setattr(engine, "_REGROUP", 1.01)  # a sort per distinct read start
    many = outputs(repo, objects, names, "2026-01-02", "2026-01-20")
    assert max(groups) > 5
    for one_table, many_table in zip(one, many, strict=True):
        assert one_table.num_rows > 0 and one_table.schema == many_table.schema
        identity = [(c, "ascending") for c in ("ds", "user", "row_id") if c in one_table.column_names]
        rows = zip(
            one_table.sort_by(identity).to_pylist(), many_table.sort_by(identity).to_pylist(), strict=True
        )
        for one_row, many_row in rows:  # a window's float sum is exact up to DuckDB's summation order
            assert close(one_row, many_row), (one_row, many_row)
