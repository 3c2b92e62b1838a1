"""Data-quality statistics of a table's partitions: computed after every backfill partition, stored
beside the output, printed by ``gnomon stats TABLE --ds D``.

Per partition: the row count, and per column (every column of the partition's files, keys and ``ts``
included; ``ds`` is the partition itself, not a column of its files):

- ``nulls``, and ``nans`` for floating-point columns (a NaN is not a null; it is counted apart);
- ``min`` and ``max`` of numeric, boolean, string and temporal columns (temporal ones as ISO 8601
  text), ``mean`` of numeric ones, over the non-null, non-NaN values;
- ``distinct``: the approximate number of distinct non-null, non-NaN values, an Apache DataSketches
  CPC sketch (``lg_k`` = `LG_K`) finalized as APPROX_UNIQUE_COUNT finalizes it. The values' coupons
  are hashed here vectorised (`gnomon.offline.engines.cpc`), so the sketch is fed one value per
  distinct coupon (a few thousand at most) instead of every row; the result is the library's own
  estimate for the column's values, capped at the number of values counted;
- a histogram: for numeric columns the counts between ``edges``, the partition's exact deciles
  (deduplicated, so up to 10 bins; a constant column has the one bin ``[v, v]``), each bin
  ``[e_i, e_i+1)`` and the last one closed; for string and boolean columns the `TOP` most frequent
  values (count descending, then value);
- drift against the previous partition of the table (the latest ``ds`` before this one): the
  population stability index for numeric columns, ``PSI = Σ (a_i - e_i) * ln(a_i / e_i)``, where
  ``e_i`` and ``a_i`` are the fractions of the previous and of this partition's values in bin ``i``
  of the *previous* partition's edges, the first and last bins open-ended (a previous constant column
  ``v`` gives the bins ``< v``, ``= v``, ``> v``), an empty bin counting as `EPSILON`; for string and
  boolean columns whether the set of top values changed, and which values came and went. A column
  the previous partition lacks (or had with no values, or of another kind) has no drift.

Lists, maps, structs and binary columns get their null count only (the other figures are None), and a
temporal column has no histogram or drift.

Where they live: ``<warehouse>/<ns>/<table>/.stats/ds=D/part-0.parquet`` (`stats_table`), one row per
column with the figures above (``min``, ``max``, ``histogram`` and ``drift`` as JSON text). The folder
is hidden like the incremental IR tables: `Warehouse.partitions`, `Warehouse.read_table`, the engines
(which read explicit ``ds=`` files), ``read_parquet('<table>/*/*.parquet')`` and Spark's and pyarrow's
dataset discovery never see it. Each file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gnomon import jsonio
from gnomon.errors import WarehouseError
from gnomon.offline.warehouse import Warehouse

log = logging.getLogger("gnomon.offline")

STATS_FOLDER = ".stats"
FORMAT = 1  # bump when the stored layout or a figure's meaning changes
LG_K = 11  # the CPC sketch's size: about 1.5 % relative standard error past a few thousand values
TOP = 10  # values kept in a categorical histogram
DECILES = [i / 10 for i in range(11)]
EPSILON = 1e-4  # the fraction an empty PSI bin counts as (ln(0) is undefined)
_META = b"gnomon.stats"


@dataclass(frozen=True)
class ColumnStats:
    """The figures of one column of one partition (see the module docstring).

    ``min`` and ``max`` are JSON values: numbers, booleans, strings, and ISO 8601 text for temporal
    columns. ``histogram`` is ``{"kind": "numeric", "edges": [...k+1], "counts": [...k]}`` or
    ``{"kind": "categorical", "top": [[value, count], ...]}``; ``drift`` is ``{"kind": "psi", "psi",
    "previous_ds"}`` or ``{"kind": "top_k", "changed", "added", "removed", "previous_ds"}``, None
    without a previous partition (or when either side has no values to compare)."""

    name: str
    type: str
    nulls: int
    nans: int
    min: Any
    max: Any
    mean: float | None
    distinct: int | None
    histogram: dict[str, Any] | None
    drift: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "nulls": self.nulls,
            "nans": self.nans,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "distinct": self.distinct,
            "histogram": self.histogram,
            "drift": self.drift,
        }


@dataclass(frozen=True)
class PartitionStats:
    """The statistics of partition ``ds`` of ``table``: its row count and one `ColumnStats` per column
    (in the table's column order); ``computed_at`` in epoch milliseconds."""

    table: str
    ds: str
    rows: int
    columns: list[ColumnStats]
    computed_at: int

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "ds": self.ds,
            "rows": self.rows,
            "computed_at": self.computed_at,
            "columns": [c.to_json() for c in self.columns],
        }

    def column(self, name: str) -> ColumnStats | None:
        return next((c for c in self.columns if c.name == name), None)

    def format(self) -> str:
        """A terminal table: one line per column, the histogram as a sparkline of each bin's density
        (numeric) or the top three values (categorical), and the drift with its PSI band."""
        computed = datetime.fromtimestamp(self.computed_at / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        previous = next((c.drift["previous_ds"] for c in self.columns if c.drift), None)
        head = f"{self.table}  ds={self.ds}  {self.rows:,} rows  (computed {computed})"
        if previous:
            head += f"\ndrift against ds={previous}"
        header = ["column", "type", "nulls", "nans", "min", "max", "mean", "distinct", "histogram", "drift"]
        rows = [header]
        for column in self.columns:
            rows.append(
                [
                    column.name,
                    _value_cell(column.type),
                    _count_cell(column.nulls, self.rows),
                    str(column.nans) if column.nans else "-",
                    _value_cell(column.min),
                    _value_cell(column.max),
                    _value_cell(column.mean),
                    f"{column.distinct:,}" if column.distinct is not None else "-",
                    _histogram_cell(column.histogram),
                    _drift_cell(column.drift),
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        return "\n".join([head, "", *lines])


# ------------------------------------------------------------------ computing


def compute_stats(table: str, ds: str, data: pa.Table, previous: PartitionStats | None) -> PartitionStats:
    """The statistics of ``data`` (partition ``ds`` of ``table``), with drift against ``previous``.

    Columns are computed in parallel threads: the work is in pyarrow and numpy, which release the
    GIL, and a backfill's engine has finished with the cores by then."""
    from concurrent.futures import ThreadPoolExecutor

    names = [name for name in data.column_names if name != "ds"]  # ds: the partition, not a column
    previous_ds = previous.ds if previous is not None else None

    def one(name: str) -> ColumnStats:
        before = previous.column(name) if previous is not None else None
        return _column_stats(name, data.column(name), before, previous_ds)

    with ThreadPoolExecutor(max_workers=max(1, min(len(names), os.cpu_count() or 1))) as pool:
        columns = list(pool.map(one, names))
    return PartitionStats(table, ds, data.num_rows, columns, int(time.time() * 1000))


def _column_stats(
    name: str, column: pa.ChunkedArray, before: ColumnStats | None, previous_ds: str | None
) -> ColumnStats:
    base = {"name": name, "type": str(column.type), "nulls": column.null_count}
    if pa.types.is_dictionary(column.type):  # the figures of its values
        column = column.cast(column.type.value_type)
    kind_type = column.type
    if pa.types.is_integer(kind_type) or pa.types.is_floating(kind_type) or pa.types.is_decimal(kind_type):
        return _numeric(base, column, before, previous_ds)
    if _is_string(kind_type) or pa.types.is_boolean(kind_type):
        return _categorical(base, column, before, previous_ds)
    if pa.types.is_temporal(kind_type):
        values = pc.drop_null(column)
        bounds = pc.min_max(values).as_py() if len(values) else {"min": None, "max": None}
        return ColumnStats(
            **base,
            nans=0,
            min=_temporal_text(bounds["min"]),
            max=_temporal_text(bounds["max"]),
            mean=None,
            distinct=_distinct(_as_int64(values), "BIGINT"),
            histogram=None,
            drift=None,
        )
    return ColumnStats(
        **base, nans=0, min=None, max=None, mean=None, distinct=None, histogram=None, drift=None
    )


def _is_string(data_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_string_view(data_type)
    )


def _numeric(
    base: dict[str, Any], column: pa.ChunkedArray, before: ColumnStats | None, previous_ds: str | None
) -> ColumnStats:
    floating = pa.types.is_floating(column.type) or pa.types.is_decimal(column.type)
    nans = 0
    if floating:
        column = pc.cast(column, pa.float64())
        is_nan = pc.is_nan(column)
        nans = int(pc.sum(is_nan).as_py() or 0)
        values = pc.filter(column, pc.invert(is_nan))  # drops the nulls too
        hash_type = "DOUBLE"
    else:
        unsigned64 = pa.types.is_uint64(column.type)
        values = pc.drop_null(column) if unsigned64 else pc.cast(pc.drop_null(column), pa.int64())
        hash_type = "UBIGINT" if unsigned64 else "BIGINT"
    array = values.to_numpy() if len(values) else np.zeros(0)
    if not len(array):
        return ColumnStats(
            **base, nans=nans, min=None, max=None, mean=None, distinct=0, histogram=None, drift=None
        )
    finite = array[np.isfinite(array)] if floating else array  # ±inf: in min, max and mean only
    histogram = numeric_histogram(finite) if len(finite) else None
    drift = None
    expected = _previous_histogram(before, "numeric")
    if histogram is not None and expected is not None:
        drift = {"kind": "psi", "psi": psi(expected, finite), "previous_ds": previous_ds}
    return ColumnStats(
        **base,
        nans=nans,
        min=array.min().item(),
        max=array.max().item(),
        mean=float(np.mean(array, dtype=np.float64)),
        distinct=_distinct(values, hash_type),
        histogram=histogram,
        drift=drift,
    )


def _previous_histogram(before: ColumnStats | None, kind: str) -> dict[str, Any] | None:
    """The previous partition's histogram of the column, when it has one of this kind to measure
    drift against."""
    if before is None or before.histogram is None or before.histogram["kind"] != kind:
        return None
    return before.histogram


def numeric_histogram(values: np.ndarray) -> dict[str, Any]:
    """Counts of ``values`` (no NaN) between their exact deciles, deduplicated.

    >>> numeric_histogram(np.arange(1, 12))
    {'kind': 'numeric', 'edges': [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0], 'counts': [1, 1, 1, 1, 1, 1, 1, 1, 1, 2]}
    >>> numeric_histogram(np.array([4, 4, 4]))
    {'kind': 'numeric', 'edges': [4.0, 4.0], 'counts': [3]}
    """
    edges = np.unique(np.quantile(values, DECILES))
    if len(edges) == 1:
        return {"kind": "numeric", "edges": [float(edges[0])] * 2, "counts": [len(values)]}
    bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(bins, minlength=len(edges) - 1)
    return {"kind": "numeric", "edges": edges.tolist(), "counts": counts.tolist()}


def psi(previous: dict[str, Any], values: np.ndarray) -> float:
    """The population stability index of ``values`` against a previous numeric histogram: bins of
    the previous edges, the first and last open-ended; an empty bin counts as `EPSILON`.

    Half and half before; now a quarter below 1 and three quarters above (9 falls in the open last
    bin): (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.1733 + 0.1014:

    >>> before = {"kind": "numeric", "edges": [0.0, 1.0, 2.0], "counts": [5, 5]}
    >>> round(psi(before, np.array([0.5, 1.5, 1.5, 9])), 4)
    0.2747
    """
    edges = np.asarray(previous["edges"], dtype=np.float64)
    expected = np.asarray(previous["counts"], dtype=np.float64)
    if len(expected) == 1 and edges[0] == edges[-1]:  # a constant column: below, at and above it
        expected = np.array([0.0, expected[0], 0.0])
        bins = np.where(values < edges[0], 0, np.where(values > edges[0], 2, 1))
    else:
        bins = np.searchsorted(edges[1:-1], values, side="right")
    actual = np.bincount(bins, minlength=len(expected)).astype(np.float64)
    e = np.maximum(expected / expected.sum(), EPSILON)
    a = np.maximum(actual / max(actual.sum(), 1.0), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def _categorical(
    base: dict[str, Any], column: pa.ChunkedArray, before: ColumnStats | None, previous_ds: str | None
) -> ColumnStats:
    values = pc.drop_null(column)
    boolean = pa.types.is_boolean(column.type)
    if not len(values):
        return ColumnStats(
            **base, nans=0, min=None, max=None, mean=None, distinct=0, histogram=None, drift=None
        )
    bounds = pc.min_max(values).as_py()
    counted = pc.value_counts(values)
    frequencies = pa.table({"value": counted.field("values"), "count": counted.field("counts")})
    chosen = pc.select_k_unstable(frequencies, TOP, [("count", "descending"), ("value", "ascending")])
    top = frequencies.take(chosen).to_pylist()
    histogram = {"kind": "categorical", "top": [[row["value"], row["count"]] for row in top]}
    expected = _previous_histogram(before, "categorical")
    drift = top_k_drift(expected, histogram, previous_ds) if expected is not None else None
    return ColumnStats(
        **base,
        nans=0,
        min=bounds["min"],
        max=bounds["max"],
        mean=None,
        distinct=_distinct(values, "BOOLEAN" if boolean else "VARCHAR"),
        histogram=histogram,
        drift=drift,
    )


def top_k_drift(previous: dict[str, Any], current: dict[str, Any], previous_ds: str | None) -> dict[str, Any]:
    """Whether the set of top values changed, with the values that entered and left it.

    >>> top_k_drift({"top": [["a", 3], ["b", 1]]}, {"top": [["a", 2], ["c", 2]]}, "2026-10-01")
    {'kind': 'top_k', 'changed': True, 'added': ['c'], 'removed': ['b'], 'previous_ds': '2026-10-01'}
    """
    before = [value for value, _ in previous["top"]]
    now = [value for value, _ in current["top"]]
    added = [value for value in now if value not in before]
    removed = [value for value in before if value not in now]
    return {
        "kind": "top_k",
        "changed": bool(added or removed),
        "added": added,
        "removed": removed,
        "previous_ds": previous_ds,
    }


def _distinct(values: pa.ChunkedArray | pa.Array, hash_type: str) -> int:
    """APPROX_UNIQUE_COUNT(lg_k=`LG_K`) of the non-null ``values``: a DataSketches CPC sketch fed one
    value per distinct coupon (each value's coupon computed vectorised, `_coupons`), each checked to
    add one, and finalized as the operation finalizes it (`sketches.estimate`, rounded); should the
    hashing here ever disagree with the library's, every distinct value is fed instead."""
    from datasketches import cpc_sketch

    from gnomon.aggregation.sketches import estimate

    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if hash_type == "VARCHAR":  # hashing text costs more than finding its distinct values first
        array = pc.unique(array)
    if not len(array):
        return 0
    coupons = pa.array(_coupons(array, hash_type))
    first = pc.index_in(pc.unique(coupons), value_set=coupons)  # one value per distinct coupon
    sketch, moved = cpc_sketch(LG_K), 0.0
    for value in _sketch_items(array.take(first), hash_type):
        sketch.update(value)
        previous, moved = moved, sketch.get_estimate()  # HIP: moves exactly on a new coupon
        if moved == previous:  # not DataSketches' coupons (a library change)
            log.warning("statistics: CPC coupons disagree with DataSketches; feeding every distinct value")
            sketch = cpc_sketch(LG_K)
            for item in _sketch_items(pc.unique(array), hash_type):
                sketch.update(item)
            break
    return min(round(estimate(sketch, LG_K)), len(values))  # never more than the values counted


def _sketch_items(array: pa.Array, hash_type: str) -> list[Any]:
    """The Python values APPROX_UNIQUE_COUNT feeds its sketch: booleans as 0 and 1, the empty string
    as NaN (DataSketches skips empty strings)."""
    items: list[Any] = (pc.cast(array, pa.int64()) if hash_type == "BOOLEAN" else array).to_pylist()
    return [item if item else math.nan for item in items] if hash_type == "VARCHAR" else items


def _coupons(array: pa.Array, hash_type: str) -> np.ndarray:
    """The CPC coupon of each value, as APPROX_UNIQUE_COUNT's sketch would get it (`cpc.coupons`)."""
    from gnomon.offline.engines import cpc

    return cpc.coupons(array, hash_type, LG_K)


def _as_int64(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Temporal values as integers (their stored units), for hashing."""
    if pa.types.is_date32(values.type) or pa.types.is_time32(values.type):
        values = pc.cast(values, pa.int32())
    return pc.cast(values, pa.int64())


def _temporal_text(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


# ------------------------------------------------------------------ storage


def stats_table(table: str) -> str:
    """Where the statistics of ``table`` are stored, relative to the warehouse root: a hidden folder
    of the table with one ``ds=D/part-0.parquet`` per partition.

    >>> stats_table("features.user_item_training")
    'features/user_item_training/.stats'
    """
    return (Warehouse("").table_path(table) / STATS_FOLDER).as_posix()


def write_stats(warehouse: Warehouse, table: str, ds: str) -> PartitionStats:
    """Compute and store the statistics of committed partition ``ds`` of ``table``, with drift against
    the previous partition's stored statistics (computed on the fly, not stored, when missing)."""
    partitions = _require_partition(warehouse, table, ds)
    earlier = [day for day in partitions if day < ds]
    previous = None
    if earlier:
        stored = _read_one(warehouse, table, earlier[-1])
        previous = stored or compute_stats(
            table, earlier[-1], _read_partition(warehouse, table, earlier[-1]), None
        )
    stats = compute_stats(table, ds, _read_partition(warehouse, table, ds), previous)
    _store(warehouse, stats)
    return stats


def read_stats(
    warehouse: Warehouse, table: str, start_ds: str | None = None, end_ds: str | None = None
) -> list[PartitionStats]:
    """The stored statistics of ``table``'s partitions in ``[start_ds, end_ds]``, in ds order."""
    warehouse.require_table(table)
    folder = warehouse.root / stats_table(table)
    days = sorted(p.name[3:] for p in folder.iterdir() if p.name.startswith("ds=")) if folder.is_dir() else []
    found = []
    for day in days:
        if (start_ds is None or day >= start_ds) and (end_ds is None or day <= end_ds):
            stats = _read_one(warehouse, table, day)
            if stats is not None:
                found.append(stats)
    return found


def update_stats(warehouse: Warehouse, table: str, days: Sequence[str]) -> list[PartitionStats]:
    """After a backfill committed ``days`` of ``table``: store their statistics in ds order, then
    refresh the partition that follows each run of written days (its previous partition, hence its
    drift, just changed). A failure is logged with the table and ds and never raised: the partitions
    are committed, and ``gnomon stats`` computes missing statistics on demand."""
    written = set(days)
    partitions = warehouse.partitions(table)
    todo = [
        day
        for index, day in enumerate(partitions)
        if day in written or (index > 0 and partitions[index - 1] in written)
    ]
    done = []
    for day in todo:
        try:
            done.append(write_stats(warehouse, table, day))
        except Exception as error:  # noqa: BLE001 — statistics never cost a committed partition
            log.warning(
                "statistics of %s ds=%s failed (%s: %s); the partition is written. Compute them with "
                "`gnomon stats %s --ds %s`",
                table,
                day,
                type(error).__name__,
                error,
                table,
                day,
            )
    return done


def _require_partition(warehouse: Warehouse, table: str, ds: str) -> list[str]:
    warehouse.require_table(table)
    partitions = warehouse.partitions(table)
    if ds not in partitions:
        have = (
            f"it has {len(partitions)} partition(s), {partitions[0]} .. {partitions[-1]}"
            if partitions
            else "it has no partitions yet"
        )
        raise WarehouseError(
            f"table {table!r} has no partition ds={ds}; {have}. Fix: pick one of those, or backfill it first."
        )
    return partitions


def _read_partition(warehouse: Warehouse, table: str, ds: str) -> pa.Table:
    pieces = [pq.read_table(file) for file in warehouse.partition_files(table, ds, ds)]
    pieces = [piece.drop(["ds"]) if "ds" in piece.column_names else piece for piece in pieces]
    return pa.concat_tables(pieces, promote_options="permissive") if pieces else pa.table({})


_SCHEMA = pa.schema(
    [
        ("column", pa.string()),
        ("type", pa.string()),
        ("rows", pa.int64()),
        ("nulls", pa.int64()),
        ("nans", pa.int64()),
        ("min", pa.string()),
        ("max", pa.string()),
        ("mean", pa.float64()),
        ("distinct", pa.int64()),
        ("histogram", pa.string()),
        ("drift", pa.string()),
        ("computed_at", pa.int64()),
    ]
)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _store(warehouse: Warehouse, stats: PartitionStats) -> Path:
    """Write one partition's statistics atomically (a temporary file renamed into place)."""
    folder = warehouse.root / stats_table(stats.table) / f"ds={stats.ds}"
    folder.mkdir(parents=True, exist_ok=True)
    columns = stats.columns
    body = pa.table(
        {
            "column": [c.name for c in columns],
            "type": [c.type for c in columns],
            "rows": [stats.rows] * len(columns),
            "nulls": [c.nulls for c in columns],
            "nans": [c.nans for c in columns],
            "min": [_json(c.min) for c in columns],
            "max": [_json(c.max) for c in columns],
            "mean": [c.mean for c in columns],
            "distinct": [c.distinct for c in columns],
            "histogram": [_json(c.histogram) for c in columns],
            "drift": [_json(c.drift) for c in columns],
            "computed_at": [stats.computed_at] * len(columns),
        },
        schema=_SCHEMA,
    )
    header = {
        "format": FORMAT,
        "table": stats.table,
        "ds": stats.ds,
        "rows": stats.rows,
        "computed_at": stats.computed_at,
    }
    body = body.replace_schema_metadata({_META: json.dumps(header).encode()})
    temporary = folder / f".part-0.{uuid.uuid4().hex}.tmp"
    pq.write_table(body, temporary)
    final = folder / "part-0.parquet"
    os.replace(temporary, final)
    return final


def _read_one(warehouse: Warehouse, table: str, ds: str) -> PartitionStats | None:
    """A partition's stored statistics; None when there are none (or of another format)."""
    file = warehouse.root / stats_table(table) / f"ds={ds}" / "part-0.parquet"
    if not file.is_file():
        return None
    body = pq.read_table(file)
    header = json.loads((body.schema.metadata or {}).get(_META, b"{}"))
    if header.get("format") != FORMAT:
        return None
    columns = [
        ColumnStats(
            name=row["column"],
            type=row["type"],
            nulls=row["nulls"],
            nans=row["nans"],
            min=_loads(row["min"]),
            max=_loads(row["max"]),
            mean=row["mean"],
            distinct=row["distinct"],
            histogram=_loads(row["histogram"]),
            drift=_loads(row["drift"]),
        )
        for row in body.to_pylist()
    ]
    return PartitionStats(table, ds, int(header["rows"]), columns, int(header["computed_at"]))


def _loads(text: str | None) -> Any:
    return None if text is None else jsonio.loads(text.encode())


# ------------------------------------------------------------------ terminal cells


def _count_cell(count: int, rows: int) -> str:
    return f"{count:,} ({100 * count / rows:.1f}%)" if count and rows else f"{count:,}"


def _value_cell(value: Any, width: int = 24) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.6g}" if math.isfinite(value) else str(value)
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


_BARS = "▁▂▃▄▅▆▇█"


def _histogram_cell(histogram: dict[str, Any] | None) -> str:
    if histogram is None:
        return "-"
    if histogram["kind"] == "numeric":  # decile bins hold similar counts: draw each bin's density
        edges, counts = histogram["edges"], histogram["counts"]
        widths = [high - low for low, high in zip(edges, edges[1:], strict=False)]
        densities = [
            count / width if width > 0 else math.inf for count, width in zip(counts, widths, strict=True)
        ]
        finite = [d for d in densities if math.isfinite(d)]
        peak = max(finite) if finite and max(finite) > 0 else 1.0
        top = len(_BARS) - 1
        return "".join(_BARS[top if not math.isfinite(d) else round(top * d / peak)] for d in densities)
    return ", ".join(f"{_value_cell(value, 12)}:{count}" for value, count in histogram["top"][:3])


def _drift_cell(drift: dict[str, Any] | None) -> str:
    if drift is None:
        return "-"
    if drift["kind"] == "psi":
        value = drift["psi"]
        band = "major" if value >= 0.25 else "moderate" if value >= 0.1 else "stable"
        return f"psi {value:.3f} ({band})"
    if not drift["changed"]:
        return "top values same"
    return f"top values +{len(drift['added'])} -{len(drift['removed'])}"


__all__ = [
    "ColumnStats",
    "PartitionStats",
    "compute_stats",
    "read_stats",
    "stats_table",
    "update_stats",
    "write_stats",
]
