"""The Spark engine: the same plans, partitions and values as the embedded engine, on a Spark cluster.

Spark has no per-row window frames, so windows are hop tiles, as in Chronon: rows are read through
their Queries (expressions transpiled from the plan's DuckDB dialect with sqlglot), tagged as events
or queries, partitioned by the GroupBy's keys and sorted by time inside each partition; an Arrow batch
function (`mapInArrow`) then folds each key's events into hop tiles with the shared IR library and
answers the key's queries (`gnomon.offline.keyed`). Nothing is collected on the driver: outputs are
written by the executors into the warehouse's Parquet layout and moved into place by the project.

Entity sources become row versions (snapshot ``d`` replayed with the mutations of ``d + 1``) with the
same set-based rule as the embedded engine, in Spark SQL window functions.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from gnomon.compile.features import MUTATION_COLUMNS, SOURCE_COLUMN, online_features
from gnomon.compile.plan import GroupByPlan, JoinPlan, Plan, SourcePlan
from gnomon.compile.sql import transpile
from gnomon.compile.validate import check_source
from gnomon.config import OfflineConfig
from gnomon.errors import DefinitionError, ExecutionError
from gnomon.extras import require
from gnomon.offline.engine import BatchRows, BatchScope, Partition, RowsKind, require_columns, source_files
from gnomon.offline.keyed import EVENT, QUERY, TILE, Layout, answer, tile_rows, tile_schema
from gnomon.offline.warehouse import Warehouse
from gnomon.timeline import DAY_MS, backfill_query_time, ds_to_ms, entity_partitions, ms_to_ds, read_range

_SEQ_FILE = 4_294_967_296  # __seq = file ordinal * 2^32 + row index in the file, as in the embedded engine


def spark_session(config: OfflineConfig) -> Any:
    """The process's SparkSession (created once; ``offline: {master, conf}`` from gnomon.yaml)."""
    require("pyspark", "spark", "the Spark engine (offline: {engine: spark})")
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    options = dict(config.options)
    builder = SparkSession.builder.master(str(options.get("master", "local[2]"))).appName("gnomon")
    settings = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": "4",
        "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.pyspark.python": sys.executable,
        **{str(k): str(v) for k, v in (options.get("conf") or {}).items()},
    }
    for key, value in settings.items():
        builder = builder.config(key, value)
    if settings.get("spark.sql.catalogImplementation") == "hive":
        builder = builder.enableHiveSupport()
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def spark_sql(expression: str) -> str:
    """A plan expression (DuckDB dialect) in Spark SQL."""
    return transpile(expression, read="duckdb", write="spark")


def arrow_aggregation_type(kind: pa.DataType) -> str:
    """The aggregation library's type name for an Arrow type.

    >>> arrow_aggregation_type(pa.list_(pa.int32())), arrow_aggregation_type(pa.map_(pa.string(), pa.float64()))
    ('list<int>', 'map<str,float>')
    """
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return f"list<{arrow_aggregation_type(kind.value_type)}>"
    if pa.types.is_map(kind):
        return f"map<str,{arrow_aggregation_type(kind.item_type)}>"
    if pa.types.is_boolean(kind):
        return "bool"
    if pa.types.is_integer(kind):
        return "int"
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return "float"
    return "str"


#: operations whose value is made of input values, in the input's own type (as in the embedded engine)
_INPUT_TYPED = frozenset({"min", "max", "first", "last", "first_k", "last_k", "top_k", "bottom_k"})


def output_arrow_type(output_type: str, input_type: pa.DataType, operation: str = "") -> pa.DataType:
    """The Arrow type of a feature from its aggregator's output type name (``int64``, ``list<str>``,
    ``map<str,float64>``); operations returning input values keep the input's scalar type.

    >>> output_arrow_type("list<int64>", pa.int32(), "top_k"), output_arrow_type("int64", pa.int32(), "count")
    (ListType(list<item: int32>), DataType(int64))
    """
    scalar = _scalar(input_type)
    if output_type.startswith("list<"):
        return pa.list_(output_arrow_type(output_type[5:-1], scalar, operation))
    if output_type.startswith("map<str,"):
        return pa.map_(pa.string(), output_arrow_type(output_type[8:-1], scalar, operation))
    names = {"int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(), "str": pa.string()}
    return scalar if operation in _INPUT_TYPED else names[output_type]


def _scalar(kind: pa.DataType) -> pa.DataType:
    while pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        kind = kind.item_type if pa.types.is_map(kind) else kind.value_type
    return kind


class SparkEngine:
    """Runs compiled plans on Spark (`OfflineEngine`)."""

    def __init__(self, warehouse: Warehouse, plan: Plan, config: OfflineConfig | None = None) -> None:
        self.warehouse = warehouse
        self.plan = plan
        self.config = config or OfflineConfig(engine="spark")
        self.spark = spark_session(self.config)
        self._tmp = Path(tempfile.mkdtemp(prefix="gnomon-spark-", dir=self._scratch_root()))
        self._views: list[str] = []

    def _scratch_root(self) -> str | None:
        root = self.config.options.get("scratch")
        return str(root) if root else None

    # ------------------------------------------------------------------ a Hive catalog

    @property
    def hive(self) -> bool:
        """Whether the session has a Hive catalog (``conf: {spark.sql.catalogImplementation: hive}``)."""
        return bool(self.spark.conf.get("spark.sql.catalogImplementation", "in-memory") == "hive")

    def register(self, table: str) -> None:
        """Make warehouse table ``ns.name`` a Hive-style table of the catalog: an external Parquet
        table over its folder, partitioned by ``ds``, with every partition on disk registered."""
        from pyspark.sql.pandas.types import from_arrow_schema

        namespace, name = table.split(".")
        path = self.warehouse.table_path(table)
        schema = self.warehouse.latest_schema(table)
        if schema is None:
            return
        fields = from_arrow_schema(pa.schema([f for f in schema if f.name != "ds"])).fields
        columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in fields)
        self.spark.sql(f"CREATE DATABASE IF NOT EXISTS `{namespace}`")
        self.spark.sql(
            f"CREATE TABLE IF NOT EXISTS `{namespace}`.`{name}` ({columns}, ds STRING) USING parquet "
            f"PARTITIONED BY (ds) LOCATION '{path.as_posix()}'"
        )
        self.spark.sql(f"MSCK REPAIR TABLE `{namespace}`.`{name}`")

    def publish(self, table: str, days: Sequence[str]) -> None:
        """`OfflineEngine.publish`: once partitions are in place, a Hive catalog lists them."""
        if self.hive and days:
            self.register(table)

    def close(self) -> None:
        for view in self._views:
            self.spark.catalog.dropTempView(view)
        shutil.rmtree(self._tmp, ignore_errors=True)

    # ------------------------------------------------------------------ reading sources

    def _read(self, table: str, files: Sequence[str]) -> Any:
        """The rows of these files of a warehouse table, with ``ds`` (string), ``__file`` and ``__row``."""
        from pyspark.sql import functions as F

        frame = (
            self.spark.read.option("basePath", str(self.warehouse.table_path(table)))
            .option("mergeSchema", "true")
            .parquet(*files)
        )
        return frame.select(
            "*",
            F.regexp_replace(F.col("_metadata.file_path"), "^file:(//)?", "").alias("__file"),
            F.col("_metadata.row_index").alias("__row"),
        )

    def _with_seq(self, frame: Any, ordinals: dict[str, int]) -> Any:
        from pyspark.sql import functions as F

        mapping = F.create_map(*[x for path, n in ordinals.items() for x in (F.lit(path), F.lit(n))])
        ordinal = F.element_at(mapping, F.col("__file")).cast("long")
        return frame.withColumn("__seq", ordinal * F.lit(_SEQ_FILE) + F.col("__row")).drop("__file", "__row")

    def sources(
        self,
        owner: str,
        sources: Sequence[SourcePlan],
        start_ds: str | None,
        end_ds: str | None,
        needed: Sequence[str] | None = None,
        strict: Sequence[str] = (),
        entity: tuple[Sequence[str], Sequence[str]] | None = None,
    ) -> Any | None:
        """The sources' rows (selected columns, ``ts``, ``__ds``, ``__kind``, ``__seq``; entity
        sources also ``__from``/``__to``), as `DuckDBEngine.source_sql`; None when nothing is in range."""
        reads: list[tuple[int, Any, list[str]]] = []
        file_rows: list[tuple[str, int, str]] = []
        for index, source in enumerate(sources):
            if source.kind == "entities" and entity is not None:
                read = self._entity_read(owner, source, index, entity, file_rows)
                if read is not None:
                    reads.append((index, read, ["__from", "__to"]))
                continue
            files = source_files(self.warehouse, source, start_ds, end_ds, strict)
            if not files:
                continue
            check_source(owner, source, self.warehouse, None)
            file_rows.extend((_file_ds(f), index, f) for f in files)
            raw = self._read(source.table, files).withColumnRenamed("ds", "__ds")
            reads.append((index, raw, []))
        if not reads:
            return None
        ordinals = {file: n for n, (_, _, file) in enumerate(sorted(file_rows))}
        frames = []
        for index, raw, extra in reads:
            with_seq = (
                raw.frame(ordinals) if isinstance(raw, _PendingVersions) else self._with_seq(raw, ordinals)
            )
            frames.append(self._query(sources[index], with_seq, needed, bool(extra)))
        result = frames[0]
        for frame in frames[1:]:
            result = result.unionByName(frame, allowMissingColumns=True)
        return result

    def _query(self, source: SourcePlan, rows: Any, needed: Sequence[str] | None, versions: bool) -> Any:
        """A source's Query over its raw rows (``__ds``, ``__seq``, maybe ``__from``/``__to``)."""
        columns = [c for c in rows.columns if not c.startswith("__")]
        time_expr = spark_sql(source.time_column)
        if source.kind == "entities" and source.time_column not in columns and source.time_column == "ts":
            end_of_day = "(unix_millis(CAST(CAST(__ds AS DATE) + 1 AS TIMESTAMP)) - 1)"
            time_expr = f"COALESCE(__from, {end_of_day})" if versions else end_of_day
        if source.selects is not None:
            select_list = [
                f"{spark_sql(expr)} AS `{name}`" for name, expr in source.selects.items() if name != "ts"
            ]
        else:
            select_list = [f"`{c}`" for c in columns if c != "ts" and (needed is None or c in needed)]
        extra = ["__from", "__to"] if versions else []
        frame = rows
        for where in source.wheres:
            frame = frame.filter(spark_sql(where))
        return frame.selectExpr(
            *select_list,
            f"CAST(({time_expr}) AS BIGINT) AS ts",
            "__ds",
            f"'{source.kind}' AS __kind",
            *extra,
            "__seq",
        )

    def _entity_read(
        self,
        owner: str,
        source: SourcePlan,
        index: int,
        entity: tuple[Sequence[str], Sequence[str]],
        file_rows: list[tuple[str, int, str]],
    ) -> Any | None:
        from gnomon.offline.engines.duckdb import entity_files

        found = entity_files(self.warehouse, owner, source, entity)
        if found is None:
            return None
        snapshot_files, columns, mutation_files = found
        file_rows.extend((_file_ds(f), index, f) for f in [*snapshot_files, *mutation_files])
        return _PendingVersions(self, source, columns, snapshot_files, mutation_files)

    # ------------------------------------------------------------------ the aggregation core

    def values_for(self, group_by: GroupByPlan, queries: Any, events: Any | None) -> Any:
        """``__qid`` and the GroupBy's raw value columns for every query row (``__qid``, keys, ``__q``,
        ``__snap_ds``), by key-partitioned Arrow tasks over tagged, time-sorted rows."""
        from pyspark.sql import functions as F

        owner = f"GroupBy({group_by.name!r})"
        entities = any(s.kind == "entities" for s in group_by.sources)
        value_columns = (
            sorted(
                {f.input_column for f in group_by.features}
                | {f.bucket for f in group_by.features if f.bucket}
            )
            if group_by.features
            else list(group_by.value_columns)
        )
        if events is None:
            return queries.select("__qid", *[F.lit(None).alias(c) for c in group_by.raw_columns])
        types = {f.name: f.dataType for f in events.schema.fields}
        require_columns(owner, types, [*group_by.keys, *value_columns])
        arrow_types = {c: _arrow_type(types[c]) for c in value_columns}
        layout = self._layout(group_by, value_columns, arrow_types, entities)
        keys = list(group_by.keys)
        meta = ["__kind", "__ds", "__from", "__to"] if entities else []
        if entities and "__from" not in events.columns:
            events = events.withColumn("__from", F.lit(None).cast("long")).withColumn(
                "__to", F.lit(None).cast("long")
            )
        not_null = " AND ".join(f"`{k}` IS NOT NULL" for k in keys)
        event_rows = events.filter(not_null).select(
            *[F.col(f"`{k}`") for k in keys],
            F.col("ts").alias("__t"),
            F.lit(EVENT).alias("__tag"),
            F.col("__seq"),
            *[F.col(f"`{c}`") for c in value_columns if c not in keys],  # a key may be an input too
            *[F.col(c) for c in meta],
        )
        query_rows = queries.filter(not_null).select(
            *[F.col(f"`{k}`") for k in keys],
            F.col("__q").alias("__t"),
            F.lit(QUERY).alias("__tag"),
            F.lit(0).cast("long").alias("__seq"),
            F.col("__qid"),
            F.col("__snap_ds"),
        )
        tagged = event_rows.unionByName(query_rows, allowMissingColumns=True)
        if layout.features and not entities:
            tagged = self._split_hot_keys(layout, event_rows, query_rows) or tagged
        partitions = (
            int(self.config.options.get("partitions", 0)) or self.spark.sparkContext.defaultParallelism * 2
        )
        by = [*[F.col(f"`{k}`") for k in keys], *(["__part"] if "__part" in tagged.columns else [])]
        ordered = tagged.repartition(partitions, *by).sortWithinPartitions(*by, "__t", "__tag", "__seq")
        schema = layout.output

        def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            return answer(layout, batches)

        from pyspark.sql.pandas.types import from_arrow_schema

        values = ordered.mapInArrow(task, from_arrow_schema(schema))
        return queries.select("__qid").join(values, "__qid", "left")

    def _split_hot_keys(self, layout: Layout, event_rows: Any, query_rows: Any) -> Any | None:
        """Tagged rows in which a hot key (more than ``offline.hot_key_events`` events) is split: its
        tiles are folded where its events are, partitioned by (key, day) (`tile_rows`), and its queries
        are answered per (key, day of q) (``__part``) from the tiles they read plus the head events of
        that day; other keys keep one part (``__part = -1``) and fold their own events. None when no
        key is hot: the hot keys are counted first (a handful of rows reach the driver, at most one
        per ``hot_key_events`` events), so a job without one runs no tile stage and no extra joins."""
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import from_arrow_schema

        threshold = int(self.config.options.get("hot_key_events", 1_000_000))
        keys = [f"`{k}`" for k in layout.keys]
        counted = event_rows.groupBy(*keys).count().filter(F.col("count") > threshold).select(*keys)
        found = counted.collect()
        if not found:
            return None
        hot = self.spark.createDataFrame(found, counted.schema).withColumn("__hot", F.lit(True))
        events = event_rows.join(F.broadcast(hot), list(layout.keys), "left")
        queries = query_rows.join(F.broadcast(hot), list(layout.keys), "left")
        day = F.floor(F.col("__t") / F.lit(DAY_MS)).cast("long")
        normal = (
            events.filter("__hot IS NULL")
            .unionByName(queries.filter("__hot IS NULL"), allowMissingColumns=True)
            .withColumn("__part", F.lit(-1).cast("long"))
        )
        hot_queries = queries.filter("__hot").withColumn("__part", day)
        parts = hot_queries.select(*keys, "__part").distinct()
        hot_events = events.filter("__hot").withColumn("__part", day)
        heads = hot_events.join(parts, [*layout.keys, "__part"], "left_semi")
        events_schema = pa.schema(
            [pa.field(k, _arrow_type(hot_events.schema[k].dataType)) for k in layout.keys]
        )

        def fold(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            return tile_rows(layout, batches)

        folded = (
            hot_events.repartition(*keys, "__part")
            .sortWithinPartitions(*keys, "__part", "__t", "__seq")
            .mapInArrow(fold, from_arrow_schema(tile_schema(layout, events_schema)))
        )
        tiles = (
            folded.join(parts, list(layout.keys))
            .filter("__part >= __first AND (__last IS NULL OR __part <= __last)")
            .select(
                *keys,
                "__part",
                "__f",
                "__t",
                "__ir",
                F.lit(TILE).alias("__tag"),
                F.lit(0).cast("long").alias("__seq"),
            )
        )
        return (
            normal.drop("__hot")
            .unionByName(hot_queries.drop("__hot"), allowMissingColumns=True)
            .unionByName(heads.drop("__hot"), allowMissingColumns=True)
            .unionByName(tiles, allowMissingColumns=True)
        )

    def _layout(
        self,
        group_by: GroupByPlan,
        value_columns: list[str],
        arrow_types: dict[str, pa.DataType],
        entities: bool,
    ) -> Layout:
        from gnomon.offline.engines.sql_forms import check_input_type

        owner = f"GroupBy({group_by.name!r})"
        input_types = {c: arrow_aggregation_type(t) for c, t in arrow_types.items()}
        fields = [pa.field("__qid", pa.int64())]
        if not group_by.features:
            fields += [pa.field(c, arrow_types[c]) for c in value_columns]
            return Layout(list(group_by.keys), value_columns, [], entities, pa.schema(fields))
        for plan in group_by.features:  # before the aggregators are built: the error names the aggregation
            check_input_type(plan, owner, _duck_name(_scalar(arrow_types[plan.input_column])))
        # the input columns sit where `online_features` expects them: the sorted value columns
        features = online_features_for(group_by, value_columns, input_types)
        for feature in features:
            fields.append(
                pa.field(
                    feature.plan.name,
                    output_arrow_type(
                        feature.aggregator.output_type,
                        arrow_types[feature.plan.input_column],
                        feature.plan.operation,
                    ),
                )
            )
        return Layout(list(group_by.keys), value_columns, features, entities, pa.schema(fields))

    # ------------------------------------------------------------------ derivations and output

    def with_derivations(
        self, node: GroupByPlan | JoinPlan, frame: Any, base: list[str], raw: list[str]
    ) -> tuple[Any, list[str]]:
        derivations = node.derivations
        if not derivations:
            return frame, raw
        keep_raw = any(name == "*" for name, _ in derivations)
        derived = [(name, expr) for name, expr in derivations if name != "*"]
        selects = [f"`{c}`" for c in base] + ([f"`{c}`" for c in raw] if keep_raw else [])
        selects += [f"({spark_sql(expr)}) AS `{name}`" for name, expr in derived]
        out = (raw if keep_raw else []) + [name for name, _ in derived]
        return frame.selectExpr(*selects), out

    def _write(
        self, frame: Any, days: Sequence[str], order: list[str], owner: str
    ) -> Iterator[tuple[str, Partition]]:
        """Write ``frame`` (with a ``ds`` column) partitioned by day from the executors; yield each day's
        folder, or an empty table of the same schema for a day without rows. A failed job is an
        `ExecutionError` naming ``owner``."""
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import to_arrow_schema

        target = self._tmp / f"out-{uuid.uuid4().hex}"
        schema = frame.drop("ds").schema
        try:
            (
                frame.repartition(F.col("ds"))
                .sortWithinPartitions("ds", *order)
                .drop(*[c for c in order if c.startswith("__")])
                .write.partitionBy("ds")
                .parquet(str(target))
            )
        except Exception as error:  # a failed Spark job: its message names the cause
            raise ExecutionError(f"{owner}: the Spark job failed: {_spark_message(error)}") from error
        arrow_schema = to_arrow_schema(
            type(schema)([f for f in schema.fields if not f.name.startswith("__")])
        )
        for day in days:
            folder = target / f"ds={day}"
            if folder.exists():
                yield day, folder
            else:
                yield day, arrow_schema.empty_table()

    # ------------------------------------------------------------------ GroupBy backfill

    def backfill_group_by(
        self, group_by: GroupByPlan, days: Sequence[str]
    ) -> Iterator[tuple[str, Partition]]:
        """Partition D = values at D+1 00:00 for the keys with input in any window, every day at once:
        one read of the days' sources, one query set, one keyed pass."""
        from pyspark.sql import functions as F

        owner = f"GroupBy({group_by.name!r})"
        times = [backfill_query_time(day) for day in days]
        start_ds, _ = read_range(group_by.max_window_ms, times[0], times[-1])
        event_sources = [s for s in group_by.sources if s.kind != "entities"]
        events = self.sources(
            owner,
            group_by.sources,
            start_ds,
            days[-1],
            None,
            strict=list(days) if event_sources else (),
            entity=entity_partitions(times),
        )
        keys = [f"`{k}`" for k in group_by.keys]
        not_null = " AND ".join(f"{k} IS NOT NULL" for k in keys)
        entities = any(s.kind == "entities" for s in group_by.sources)
        per_day = []
        for day, q in zip(days, times, strict=True):
            if events is None:
                break
            condition = f"ts < {q}"
            earliest = _earliest_start(group_by, q)
            if earliest is not None:
                condition += f" AND ts >= {earliest}"
            if entities:
                condition += f" AND (__kind <> 'entities' OR __ds = '{day}')"
            per_day.append(
                events.filter(f"{condition} AND {not_null}")
                .select(*keys)
                .distinct()
                .select(*keys, F.lit(q).cast("long").alias("__q"), F.lit(day).alias("__snap_ds"))
            )
        if not per_day:
            raise ExecutionError(f"{owner}: no source partition in [{start_ds}, {days[-1]}]")
        union = per_day[0]
        for frame in per_day[1:]:
            union = union.unionByName(frame)
        # materialized once, so that the ids are the same in every use of the frame
        queries = union.withColumn("__qid", F.monotonically_increasing_id()).localCheckpoint(eager=True)
        values = self.values_for(group_by, queries, events)
        joined = queries.join(values, "__qid").withColumn("ds", F.col("__snap_ds")).drop("__q", "__snap_ds")
        derived, out = self.with_derivations(group_by, joined, [*group_by.keys, "ds"], group_by.raw_columns)
        yield from self._write(
            derived.select(*keys, *[f"`{c}`" for c in out], "ds"), days, list(group_by.keys), owner
        )

    # ------------------------------------------------------------------ Join backfill and training data

    def join_left(self, join: JoinPlan, left: Any) -> tuple[Any, list[str]]:
        """Every left row (``__rid``, left columns, ``ts``, maybe ``__ds``) with its features; returns
        the frame and the left columns."""
        from pyspark.sql import functions as F

        owner = f"Join({join.name!r})"
        left_columns = [c for c in left.columns if not c.startswith("__")]
        result = left
        for part in join.parts:
            group_by = self.plan.group_bys[part.group_by]
            for key, column in part.key_columns.items():
                if column not in left.columns:
                    raise DefinitionError(
                        f"GroupBy {part.group_by!r} needs key {key!r} from left column {column!r}, "
                        f"which the left rows lack (they have {', '.join(left_columns)})",
                        obj=owner,
                        field="right_parts",
                        fix="add the column or set key_mapping",
                    )
            q = _query_time_expr(join, group_by)
            queries = left.select(
                F.col("__rid").alias("__qid"),
                *[F.col(f"`{column}`").alias(key) for key, column in part.key_columns.items()],
                F.expr(q).alias("__q"),
            ).filter("__q IS NOT NULL")
            queries = queries.withColumn(
                "__snap_ds", F.date_format(F.timestamp_millis(F.col("__q") - DAY_MS), "yyyy-MM-dd")
            )
            q_low_high = None
            events = self._events_for(owner, group_by, queries, q_low_high)
            values = self.values_for(group_by, queries, events)
            with_keys = queries.select("__qid", *part.key_columns).join(values, "__qid")
            derived, out = self.with_derivations(
                group_by, with_keys, ["__qid", *part.key_columns], group_by.raw_columns
            )
            renamed = derived.select(
                F.col("__qid").alias("__rid"), *[F.col(f"`{c}`").alias(part.column_prefix + c) for c in out]
            )
            result = result.join(renamed, "__rid", "left")
        features = [c for c in result.columns if c not in left.columns]
        base = [*left_columns, *(["__ds"] if "__ds" in left.columns else []), "__rid"]
        final, _ = self.with_derivations(
            join, result.select(*[f"`{c}`" for c in [*base, *features]]), base, features
        )
        return final, left_columns

    def _events_for(self, owner: str, group_by: GroupByPlan, queries: Any, _: Any) -> Any | None:
        """The source rows the queries need: the read range of their times (one small aggregate)."""
        from pyspark.sql import functions as F

        bounds = queries.agg(F.min("__q"), F.max("__q")).first()
        low, high = bounds[0], bounds[1]
        if low is None:
            return None
        start_ds, end_ds = read_range(group_by.max_window_ms, low, high)
        entity = None
        if any(s.kind == "entities" for s in group_by.sources):
            representative = [
                row[0]
                for row in queries.select(
                    F.expr(f"CASE WHEN __q % {DAY_MS} = 0 THEN __q ELSE __q - __q % {DAY_MS} + 1 END")
                )
                .distinct()
                .collect()
            ]
            entity = entity_partitions(representative)
        events = self.sources(owner, group_by.sources, start_ds, end_ds, None, (), entity)
        return None if events is None else events.filter(f"ts < {high}")

    def backfill_join(self, join: JoinPlan, days: Sequence[str]) -> Iterator[tuple[str, Partition]]:
        owner = f"Join({join.name!r})"
        left = self.sources(owner, [join.left], days[0], days[-1], None, strict=list(days))
        if left is None:
            raise ExecutionError(f"{owner}: the left table has no partitions in [{days[0]}, {days[-1]}]")
        wanted = ", ".join(f"'{d}'" for d in days)
        left = left.filter(f"__ds IN ({wanted})").drop("__kind").withColumnRenamed("__seq", "__rid")
        frame, _ = self.join_left(join, left)
        yield from self._write(frame.withColumnRenamed("__ds", "ds"), days, ["__rid"], owner)

    def training_data(self, join: JoinPlan, left: pa.Table) -> pa.Table:
        from pyspark.sql import functions as F

        owner = f"Join({join.name!r})"
        if join.left.kind == "entities" and "ds" not in left.column_names:
            raise DefinitionError(
                "the left rows need a 'ds' column (the Join's left is an entity source)",
                obj=owner,
                field="left",
                fix="add ds (YYYY-MM-DD) to the frame",
            )
        if join.left.kind != "entities" and "ts" not in left.column_names:
            raise DefinitionError(
                "the left rows need a 'ts' column (epoch milliseconds)",
                obj=owner,
                field="left",
                fix="add ts = the time each row asks for features, as int64 epoch ms",
            )
        numbered = left.append_column("__rid", pa.array(range(left.num_rows), pa.int64()))
        frame = self.spark.createDataFrame(numbered)
        if "ts" in left.column_names:
            frame = frame.withColumn("ts", F.col("ts").cast("long"))
        if join.left.kind == "entities":
            frame = frame.withColumnRenamed("ds", "__ds")
        result, _ = self.join_left(join, frame)
        table = result.orderBy("__rid").toArrow()
        return table.drop([c for c in ("__rid", "__ds") if c in table.column_names])

    # ------------------------------------------------------------------ StagingQuery

    def run_staging_query(self, sql: str, days: Sequence[str], owner: str) -> Iterator[tuple[str, Partition]]:
        import sqlglot
        from sqlglot import exp

        tree = sqlglot.parse_one(sql, read="duckdb")
        for table in tree.find_all(exp.Table):
            if table.db and f"{table.db}.{table.name}" in self.warehouse.tables() and self.hive:
                self.register(f"{table.db}.{table.name}")  # the query reads the catalog's table
            elif table.db and f"{table.db}.{table.name}" in self.warehouse.tables():
                view = f"__{table.db}__{table.name}"
                name = f"{table.db}.{table.name}"
                files = self.warehouse.partition_files(name)
                self.spark.read.option("basePath", str(self.warehouse.table_path(name))).option(
                    "mergeSchema", "true"
                ).parquet(*files).createOrReplaceTempView(view)
                self._views.append(view)
                table.set("db", None)
                table.set("this", exp.to_identifier(view))
        try:
            frame = self.spark.sql(tree.sql(dialect="spark"))
            if "ds" not in frame.columns:
                raise DefinitionError(
                    "the query must select a 'ds' column (the output partition)",
                    obj=owner,
                    field="query",
                    fix="add e.g. `ds` or `'{{ end_date }}' AS ds` to the SELECT",
                )
            frame = frame.withColumn("ds", frame["ds"].cast("string"))
            yield from self._write(frame, days, [], owner)
        except (DefinitionError, ExecutionError):
            raise
        except Exception as error:
            raise ExecutionError(f"{owner}: the query failed: {_spark_message(error)}") from error

    # ------------------------------------------------------------------ an upload's batch rows

    def batch_rows(self, group_by: GroupByPlan, ds: str, columns: Sequence[str], kind: RowsKind) -> BatchRows:
        """`OfflineEngine.batch_rows`: written sorted by key by the executors, read back file by file."""
        import pyarrow.parquet as pq
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        scope = BatchScope(group_by, ds, columns)
        owner, batch_end, span, values = scope.owner, scope.batch_end, scope.span, scope.values
        events = self.sources(
            owner,
            group_by.sources,
            scope.start_ds,
            ds,
            None,
            strict=[] if kind == "entities" else [ds],
            entity=entity_partitions([batch_end]) if kind != "events" else None,
        )
        keys = [F.col(f"`{k}`") for k in group_by.keys]
        if events is None:
            raise ExecutionError(f"{owner}: no source partition to upload for ds={ds}")
        frame = events.filter(" AND ".join(f"`{k}` IS NOT NULL" for k in group_by.keys))
        if kind == "events":
            frame = frame.filter(
                f"ts < {batch_end}" + ("" if span is None else f" AND ts >= {batch_end - span}")
            )
            selected = [
                F.lit(None).cast("int").alias(c) if c == SOURCE_COLUMN else F.col(f"`{c}`") for c in columns
            ]
        elif kind == "entities":
            frame = frame.filter(
                f"__ds = '{ds}'" + ("" if span is None else f" AND ts >= {batch_end - span}")
            )
            selected = [F.col(f"`{c}`") for c in values]
        else:
            latest = Window.partitionBy(*keys).orderBy(F.col("ts").desc(), F.col("__seq"))
            frame = (
                frame.filter(f"ts < {batch_end}")
                .withColumn("__n", F.row_number().over(latest))
                .filter("__n = 1")
            )
            selected = [F.col(f"`{c}`") for c in values]
        target = self._tmp / f"rows-{uuid.uuid4().hex}"
        order = [*keys, "ts", "__seq"] if kind == "events" else [*keys, "__seq"]
        frame.select(*keys, "ts", "__seq", *selected).repartition(*keys).sortWithinPartitions(
            *order
        ).write.parquet(str(target))
        files = sorted(target.glob("*.parquet"))
        schema = pq.read_schema(files[0]) if files else None
        types = (
            {}
            if schema is None
            else {f.name: arrow_aggregation_type(f.type) for f in schema if f.name in columns}
        )

        def batches() -> Iterator[pa.RecordBatch]:
            for file in files:
                table = pq.read_table(file)
                if kind == "entities":
                    table = _with_entity_columns(table, values)
                yield from table.to_batches(10_000)

        return BatchRows(types, batches())


class _PendingVersions:
    """An entity source's row versions, built once the file ordinals of every source are known."""

    def __init__(
        self,
        engine: SparkEngine,
        source: SourcePlan,
        columns: list[str],
        snapshot_files: list[str],
        mutation_files: list[str],
    ) -> None:
        self.engine, self.source, self.columns = engine, source, columns
        self.snapshot_files, self.mutation_files = snapshot_files, mutation_files

    def frame(self, ordinals: dict[str, int]) -> Any:
        """Raw columns, ``__ds`` (the snapshot day), ``__seq`` and the validity ``__from < q <= __to``
        (`DuckDBEngine`'s `_versions_sql`: per distinct row, in (mutation time, before-rows first,
        source order), the k-th delete that removes something ends the k-th copy)."""
        from pyspark.sql import functions as F

        engine, source = self.engine, self.source
        raw = [f"`{c}`" for c in self.columns]
        snapshot = engine._with_seq(engine._read(source.table, self.snapshot_files), ordinals).selectExpr(
            *raw, "ds AS __ds", "CAST(NULL AS BIGINT) AS __m", "false AS __before", "__seq"
        )
        if not self.mutation_files:
            return (
                snapshot.drop("__m", "__before")
                .withColumn("__from", F.lit(None).cast("long"))
                .withColumn("__to", F.lit(None).cast("long"))
            )
        table, time_column, reversal = (
            source.mutation_table,
            source.mutation_time_column,
            source.reversal_column,
        )
        mutations = engine._with_seq(engine._read(str(table), self.mutation_files), ordinals).selectExpr(
            *raw,
            "date_format(date_sub(to_date(ds), 1), 'yyyy-MM-dd') AS __ds",
            f"CASE WHEN `{time_column}` IS NULL THEN raise_error('mutation table {table}: a row has no "
            f"{time_column}; every mutation row needs its time') ELSE CAST(`{time_column}` AS BIGINT) END AS __m",
            f"CASE WHEN `{reversal}` IS NULL THEN raise_error('mutation table {table}: a row has no "
            f"{reversal}; every mutation row needs true (the old row) or false (the new row)') "
            f"ELSE CAST(`{reversal}` AS BOOLEAN) END AS __before",
            "__seq",
        )
        view = f"__versions_{uuid.uuid4().hex}"
        snapshot.unionByName(mutations).createOrReplaceTempView(view)
        engine._views.append(view)
        group = f"PARTITION BY __ds, {', '.join(raw)} ORDER BY __m ASC NULLS FIRST, __before DESC, __seq"
        upto = f"({group} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
        sql = (
            f"WITH __p AS (SELECT *, sum(CASE WHEN __before THEN -1 ELSE 1 END) OVER {upto} AS __p FROM {view}), "
            f"__e AS (SELECT *, __before AND __p >= LEAST(0, COALESCE(min(__p) OVER ({group} ROWS BETWEEN "
            f"UNBOUNDED PRECEDING AND 1 PRECEDING), 0)) AS __removes FROM __p), "
            f"__c AS (SELECT *, sum(CASE WHEN __before THEN 0 ELSE 1 END) OVER {upto} AS __copy, "
            f"collect_list(CASE WHEN __removes THEN __m END) OVER ({group} ROWS BETWEEN UNBOUNDED PRECEDING "
            f"AND UNBOUNDED FOLLOWING) AS __ends FROM __e) "
            f"SELECT {', '.join(raw)}, __ds, CASE WHEN __m IS NULL THEN __seq ELSE 4611686018427387904 + "
            f"row_number() OVER (PARTITION BY __ds, __m IS NULL ORDER BY __m, __seq) END AS __seq, "
            f"__m AS __from, try_element_at(__ends, CAST(__copy AS INT)) AS __to FROM __c WHERE NOT __before"
        )
        return engine.spark.sql(sql)


def _file_ds(file: str) -> str:
    return file.split("/ds=")[-1].split("/")[0]


def _arrow_type(spark_type: Any) -> pa.DataType:
    from pyspark.sql.pandas.types import to_arrow_type

    return to_arrow_type(spark_type)


def _duck_name(kind: pa.DataType) -> str:
    """A DuckDB type name for the input checks shared with the embedded engine."""
    if pa.types.is_list(kind):
        return _duck_name(kind.value_type) + "[]"
    if pa.types.is_map(kind):
        return f"MAP(VARCHAR, {_duck_name(kind.item_type)})"
    if pa.types.is_boolean(kind):
        return "BOOLEAN"
    if pa.types.is_integer(kind):
        return "BIGINT"
    if pa.types.is_floating(kind):
        return "DOUBLE"
    if pa.types.is_decimal(kind):
        return "DECIMAL"
    return "VARCHAR"


def _earliest_start(group_by: GroupByPlan, q: int) -> int | None:
    from gnomon.timeline import window_start

    if not group_by.features or any(f.window_ms is None for f in group_by.features):
        return None
    return min(window_start(q, f.window_ms) for f in group_by.features)  # type: ignore[type-var]


def _query_time_expr(join: JoinPlan, group_by: GroupByPlan) -> str:
    """SPEC §2's table (`gnomon.timeline.query_time`) as a Spark SQL expression."""
    if join.left.kind == "entities":
        return "unix_millis(CAST(CAST(__ds AS DATE) + 1 AS TIMESTAMP))"
    if group_by.accuracy == "snapshot":
        return f"(ts - pmod(ts, {DAY_MS}))"
    return "ts"


def _spark_message(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def online_features_for(
    group_by: GroupByPlan, value_columns: list[str], input_types: dict[str, str]
) -> list[Any]:
    """The GroupBy's features bound to the value columns' positions (`online_features` layout)."""
    features = online_features(group_by, {**input_types, **{c: "int" for c in MUTATION_COLUMNS}})
    for feature in features:
        feature.input_index = value_columns.index(feature.plan.input_column)
        feature.bucket_index = value_columns.index(feature.plan.bucket) if feature.plan.bucket else None
    return features


def _with_entity_columns(table: pa.Table, values: list[str]) -> pa.Table:
    """Add the mutation columns of snapshot rows: no mutation time, not a removal, and the raw row's
    identity computed by the same SQL the stream worker uses (`row_id_sql`)."""
    import duckdb

    from gnomon.compile.sql import row_id_sql

    con = duckdb.connect()
    con.register("__rows", table)
    ids = con.sql(f"SELECT {row_id_sql(values)} AS __row_id FROM __rows").to_arrow_table().column(0)
    con.close()
    table = table.append_column("__mutation_ts", pa.array([None] * table.num_rows, pa.int64()))
    table = table.append_column("__is_before", pa.array([False] * table.num_rows, pa.bool_()))
    return table.append_column("__row_id", ids)


__all__ = ["SparkEngine", "ds_to_ms", "ms_to_ds"]
