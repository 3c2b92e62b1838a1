"""The Parquet warehouse: layout, partition discovery, atomic replacement."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from gnomon import WarehouseError
from gnomon.offline.warehouse import Warehouse, ds_range, ds_to_ms, ms_to_ds


def test_layout_and_round_trip(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path)
    warehouse.write_partition("ns.events", "2026-01-02", pd.DataFrame({"a": [1, 2]}))
    warehouse.write_partition("ns.events", "2026-01-01", pa.table({"a": [3]}))
    assert (tmp_path / "ns" / "events" / "ds=2026-01-02" / "part-0.parquet").exists()
    assert warehouse.partitions("ns.events") == ["2026-01-01", "2026-01-02"]
    assert warehouse.read_table("ns.events").to_pylist() == [
        {"a": 3, "ds": "2026-01-01"},
        {"a": 1, "ds": "2026-01-02"},
        {"a": 2, "ds": "2026-01-02"},
    ]
    assert warehouse.tables() == ["ns.events"]


def test_rewriting_a_partition_replaces_it_whole(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path)
    warehouse.write_partition("ns.t", "2026-01-01", pa.table({"a": [1, 2, 3]}))
    warehouse.write_partition("ns.t", "2026-01-01", pa.table({"a": [9]}))
    assert warehouse.read_table("ns.t").column("a").to_pylist() == [9]
    assert [p.name for p in (tmp_path / "ns" / "t").iterdir()] == [
        "ds=2026-01-01"
    ]  # no staging or trash left


def test_missing_table_and_partition_errors_name_them(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path)
    warehouse.write_partition("ns.events", "2026-01-01", pa.table({"a": [1]}))
    with pytest.raises(WarehouseError, match="'ns.event'.*Did you mean 'ns.events'"):
        warehouse.require_table("ns.event")
    with pytest.raises(WarehouseError, match="'ns.events' is missing partition ds=2026-01-02"):
        warehouse.require_partitions("ns.events", ["2026-01-01", "2026-01-02"])


def test_day_arithmetic() -> None:
    assert ds_to_ms("1970-01-02") == 86_400_000
    assert ms_to_ds(86_400_000 - 1) == "1970-01-01"
    assert ms_to_ds(-1) == "1969-12-31"
    assert ds_range("2026-02-27", "2026-03-02") == ["2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02"]
