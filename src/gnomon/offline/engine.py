"""The offline engine contract: what every engine (embedded DuckDB, Spark) implements.

An engine turns a compiled plan into warehouse partitions. The point-in-time rules it follows live in
`gnomon.timeline` (query time, snapshot day, window start, read range, partitions) and the aggregation
semantics in `gnomon.aggregation` (one IR implementation per operation), so two engines differ only
in how they move rows, never in what a value means.

Every method that produces partitions yields ``(ds, partition)``, where a partition is an Arrow table
or the path of a folder of Parquet files the engine wrote itself (a distributed engine writes from
its workers; `gnomon.project.Project` moves either into place atomically).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

import pyarrow as pa

from gnomon.errors import DefinitionError

if TYPE_CHECKING:
    from gnomon.compile.plan import GroupByPlan, JoinPlan, Plan, SourcePlan
    from gnomon.config import OfflineConfig
    from gnomon.offline.warehouse import Warehouse

#: one output partition: rows in memory, or a folder of Parquet files written by the engine
Partition: TypeAlias = pa.Table | Path
#: what `OfflineEngine.batch_rows` returns for an upload
RowsKind = Literal["events", "entities", "latest"]


class BatchRows:
    """The rows an upload folds into a GroupBy's batch state, grouped by key.

    ``types`` maps each value column to its aggregation-library type name (``int``, ``list<float>``,
    ...); ``batches`` yield Arrow record batches with the key columns, ``ts``, ``__seq`` and the value
    columns, sorted by (keys, ts, __seq) so that a key's rows are contiguous and in source order.
    """

    def __init__(self, types: dict[str, str], batches: Iterator[pa.RecordBatch]) -> None:
        self.types = types
        self.batches = batches


class BatchScope:
    """What an upload as of ``ds`` reads, for every engine: the batch end (``ds + 1 day``), the longest
    window, the first event partition and the value columns (``columns`` less the mutation and source
    markers, which each engine fills itself)."""

    def __init__(self, group_by: GroupByPlan, ds: str, columns: Sequence[str]) -> None:
        from gnomon.compile.features import MUTATION_COLUMNS, SOURCE_COLUMN
        from gnomon.timeline import backfill_query_time, read_range

        self.owner = f"GroupBy({group_by.name!r})"
        self.batch_end = backfill_query_time(ds)
        self.span = group_by.max_window_ms
        self.start_ds = read_range(self.span, self.batch_end, self.batch_end)[0]
        self.values = [c for c in columns if c not in MUTATION_COLUMNS and c != SOURCE_COLUMN]


class OfflineEngine(Protocol):
    """GroupBy, Join and StagingQuery backfills, notebook training data and an upload's batch rows."""

    def backfill_group_by(
        self, group_by: GroupByPlan, days: Sequence[str]
    ) -> Iterator[tuple[str, Partition]]:
        """Partition D of a GroupBy's output: the values at D+1 00:00 of every key with input in a window."""
        ...

    def backfill_join(self, join: JoinPlan, days: Sequence[str]) -> Iterator[tuple[str, Partition]]:
        """Partition D of a Join's output: every left row of day D with its features."""
        ...

    def run_staging_query(self, sql: str, days: Sequence[str], owner: str) -> Iterator[tuple[str, Partition]]:
        """A StagingQuery's rendered SQL over the warehouse tables, split by its ``ds`` column."""
        ...

    def training_data(self, join: JoinPlan, left: pa.Table) -> pa.Table:
        """Features for a user's own left rows (the left columns and ``ts``, or ``ds`` for entities)."""
        ...

    def batch_rows(self, group_by: GroupByPlan, ds: str, columns: Sequence[str], kind: RowsKind) -> BatchRows:
        """The rows of a GroupBy's sources that an upload as of ``ds + 1 day`` folds, per key:

        - ``events``: every event with ``ts`` in the longest window before the batch end;
        - ``entities``: the rows of snapshot ``ds`` (with ``__row_id``, the identity of the raw row);
        - ``latest``: per key, the latest event before the batch end (attribute lookups).
        """
        ...

    def publish(self, table: str, days: Sequence[str]) -> None:
        """Called once partitions ``days`` of ``table`` are in place (a catalog registers them)."""
        ...

    def close(self) -> None: ...


ENGINES = ("duckdb", "spark")


def open_engine(warehouse: Warehouse, plan: Plan, config: OfflineConfig) -> OfflineEngine:
    """The engine ``offline.engine`` names in gnomon.yaml (Spark is imported only when asked for)."""
    if config.engine == "spark":
        from gnomon.offline.engines.spark import SparkEngine

        return SparkEngine(warehouse, plan, config)
    from gnomon.offline.engines.duckdb import DuckDBEngine

    return DuckDBEngine(warehouse, plan, config)


def require_columns(owner: str, yielded: Iterable[str], wanted: Iterable[str]) -> None:
    """A `DefinitionError` naming the first column in ``wanted`` that the sources do not yield.

    >>> require_columns("GroupBy('g')", ["user", "ts"], ["user", "price"])
    Traceback (most recent call last):
    ...
    gnomon.errors.DefinitionError: GroupBy('g').sources: the sources do not yield column 'price'; they yield user, ts Fix: select it in every source's Query
    """
    have = list(yielded)
    for column in wanted:
        if column not in have:
            raise DefinitionError(
                f"the sources do not yield column {column!r}; they yield "
                f"{', '.join(c for c in have if not c.startswith('__'))}",
                obj=owner,
                field="sources",
                fix="select it in every source's Query",
            )


def source_files(
    warehouse: Warehouse,
    source: SourcePlan,
    start_ds: str | None,
    end_ds: str | None,
    strict: Sequence[str] = (),
) -> list[str]:
    """The Parquet files an (event or join) source reads for days ``[start_ds, end_ds]``, within the
    source's own partition bounds; a cumulative source reads its latest partition only. Partitions in
    ``strict`` must exist (a `WarehouseError` names the first missing one)."""
    table = source.table
    warehouse.require_table(table)
    if strict:
        warehouse.require_partitions(table, strict)
    if source.start_partition and (start_ds is None or source.start_partition > start_ds):
        start_ds = source.start_partition
    if source.end_partition and (end_ds is None or source.end_partition < end_ds):
        end_ds = source.end_partition
    if source.cumulative:  # every partition holds the full history: read the latest only
        partitions = [p for p in warehouse.partitions(table) if end_ds is None or p <= end_ds]
        return warehouse.partition_files(table, partitions[-1], partitions[-1]) if partitions else []
    return warehouse.partition_files(table, start_ds, end_ds)


def read_partition(partition: Partition) -> pa.Table:
    """A partition as one Arrow table (a folder's Parquet files in name order)."""
    if isinstance(partition, pa.Table):
        return partition
    import pyarrow.parquet as pq

    files = sorted(partition.glob("*.parquet"))
    tables = [pq.read_table(f) for f in files]
    tables = [t.drop(["ds"]) if "ds" in t.column_names else t for t in tables]
    return pa.concat_tables(tables) if tables else pa.table({})
