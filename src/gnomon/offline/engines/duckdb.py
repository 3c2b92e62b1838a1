"""The embedded offline engine: point-in-time correct aggregation on DuckDB, fully vectorised.

One relational core serves GroupBy backfills, Join backfills and notebook training data:

1. a *query set* (``__qid``, the GroupBy's keys, ``__q`` = the time the value is wanted at);
2. the GroupBy's *events* (its sources read through their Queries, with ``ts`` and a source-order
   ``__seq``);
3. a range join of the two on the keys with ``window_start <= ts < __q`` and, per feature, an
   aggregate with a ``FILTER`` for its window. Operations without an exact SQL twin are folded by
   the shared IR code in ``gnomon.aggregation`` over the window's rows.

Work is split into key-hash shards (``offline.shards``), so memory is bounded by a shard, and the
same per-shard SQL can run inside a Spark task later.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb
import pyarrow as pa

from gnomon.compile.plan import FeaturePlan, GroupByPlan, JoinPlan, Plan, SourcePlan
from gnomon.compile.sql import quote, row_id_sql
from gnomon.compile.validate import check_source
from gnomon.config import OfflineConfig
from gnomon.errors import DefinitionError, ExecutionError, WarehouseError, did_you_mean
from gnomon.offline.engine import BatchRows, BatchScope, RowsKind, require_columns, source_files
from gnomon.offline.engines.sql_forms import FRAMED, check_input_type, null_non_finite, sql_form
from gnomon.offline.progress import progress
from gnomon.offline.warehouse import DAY_MS, Warehouse, ds_to_ms, entity_partitions, ms_to_ds, shift_ds
from gnomon.timeline import window_start

log = logging.getLogger("gnomon.offline")

_FOLD_CHUNK = 65_536  # rows per chunk when folding windows with the IR code
_ORDER_FREE = frozenset({"first", "last", "first_k", "last_k"})  # a list input is one value for these
_REGROUP = 0.6  # a framed feature reading under this share of its group's rows gets a sort of its own


def window_start_sql(q: str, window_ms: int, hop_ms: int) -> str:
    """floor(q - W, hop) in SQL, right for negative numbers too (DuckDB's % truncates)."""
    shifted = f"({q} - {window_ms})"
    return f"({shifted} - ((({shifted} % {hop_ms}) + {hop_ms}) % {hop_ms}))"


def earliest_start_sql(features: Sequence[FeaturePlan], q: str) -> str | None:
    """The earliest ts any of these features reads at q (None: unbounded)."""
    if not features or any(f.window_ms is None for f in features):
        return None
    windows = sorted({(f.window_ms, f.hop_ms) for f in features})
    starts = [window_start_sql(q, w, h) for w, h in windows]  # type: ignore[arg-type]
    return starts[0] if len(starts) == 1 else f"LEAST({', '.join(starts)})"


def element_type(duck_type: str) -> str:
    """The scalar type inside a LIST or the value type of a MAP."""
    if duck_type.endswith("[]"):
        return duck_type[:-2]
    if duck_type.startswith("MAP("):
        inner = duck_type[4:-1]
        depth = 0
        for index, char in enumerate(inner):
            depth += char == "("
            depth -= char == ")"
            if char == "," and depth == 0:
                return inner[index + 1 :].strip()
    return duck_type


def python_type(duck_type: str) -> str:
    """The aggregation library's input type name for a DuckDB scalar type."""
    if duck_type == "BOOLEAN":
        return "bool"
    if duck_type.startswith(("FLOAT", "DOUBLE", "DECIMAL")):
        return "float"
    if duck_type.startswith(("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "U")):
        return "int"
    return "str"


class DuckDBEngine:
    """Runs compiled plans over a Parquet warehouse in an in-process DuckDB."""

    def __init__(self, warehouse: Warehouse, plan: Plan, config: OfflineConfig | None = None) -> None:
        self.warehouse = warehouse
        self.plan = plan
        self.config = config or OfflineConfig()
        self.con = duckdb.connect()
        self._tmp = tempfile.TemporaryDirectory(prefix="gnomon-duckdb-")
        self.con.execute(f"SET temp_directory = '{self._tmp.name}'")
        self.con.execute("SET preserve_insertion_order = false")
        if self.config.memory_limit:
            self.con.execute(f"SET memory_limit = '{self.config.memory_limit}'")
        if self.config.threads:
            self.con.execute(f"SET threads = {int(self.config.threads)}")
        self._counter = 0

    def close(self) -> None:
        self.con.close()
        self._tmp.cleanup()

    def _name(self, stem: str) -> str:
        self._counter += 1
        return f"__{stem}_{self._counter}"

    # ------------------------------------------------------------------ sources

    def source_sql(
        self,
        owner: str,
        sources: Sequence[SourcePlan],
        start_ds: str | None,
        end_ds: str | None,
        needed: Sequence[str] | None = None,
        strict: Sequence[str] = (),
        entity: tuple[Sequence[str], Sequence[str]] | None = None,
        row_ids: bool = False,
        shard: tuple[Sequence[str], int, int] | None = None,
    ) -> str | None:
        """SQL yielding the sources' rows: selected columns, ``ts``, ``__ds``, ``__kind``, ``__seq``.

        ``__seq`` orders rows as the SPEC's source order: (ds, source index, file name, row number).
        ``entity`` = (snapshot days, mutation days) (`entity_partitions`): entity sources then read
        exactly those partitions, and their rows are *versions* of the table's rows with ``__ds`` =
        the snapshot day and the validity ``__from < q <= __to`` (null: unbounded) that the
        mutations give them (`_versions_sql`); with ``row_ids``, also ``__row_id``, the identity of
        the raw row (`row_id_sql`). Returns None when no partition is in range. ``shard`` = (keys,
        shards, shard): entity rows of other key-hash shards are left out before their versions are
        computed, where the keys are plain columns of the table (the caller still filters every row).
        """
        reads = []
        file_rows: list[tuple[str, int, str]] = []
        for index, source in enumerate(sources):
            if source.kind == "entities" and entity is not None:
                read = self._entity_read(owner, source, index, entity, file_rows, row_ids, shard)
                if read is not None:
                    reads.append(read)
                continue
            files = self._files(source, start_ds, end_ds, strict)
            if not files:
                continue
            check_source(owner, source, self.warehouse, None)
            columns = self._table_columns(files)
            file_rows.extend((_file_ds(f), index, f) for f in files)
            origin = _read_files_sql(files)
            reads.append(
                self._query_sql(
                    source, columns, needed, f"(SELECT *, ds AS __ds FROM {origin})", "ds", versions=False
                )
            )
        if not reads:
            return None
        files_table = self._name("files")
        ordered = sorted(file_rows)
        self.con.execute(f"CREATE TEMP TABLE {files_table} (__filename VARCHAR, __ordinal BIGINT)")
        self.con.executemany(
            f"INSERT INTO {files_table} VALUES (?, ?)",
            [(file, ordinal) for ordinal, (_, _, file) in enumerate(ordered)],
        )
        return " UNION ALL BY NAME ".join(f"({r.replace('{files}', files_table)})" for r in reads)

    def _query_sql(
        self,
        source: SourcePlan,
        columns: list[str],
        needed: Sequence[str] | None,
        rows: str,
        ds_column: str,
        versions: bool,
        row_ids: bool = False,
    ) -> str:
        """A source's Query over ``rows`` (raw columns, ``__ds``, and ``__seq`` or the file columns)."""
        time_expr = source.time_column
        if source.kind == "entities" and time_expr not in columns and time_expr == "ts":
            # a snapshot row without a time is known as of the end of its day; an inserted one as of its mutation
            end_of_day = f"((CAST({ds_column} AS DATE) - DATE '1970-01-01' + 1) * 86400000 - 1)"
            time_expr = f"COALESCE(__from, {end_of_day})" if versions else end_of_day
        if source.selects is not None:
            select_list = [
                f"{expr} AS {quote(name)}" for name, expr in source.selects.items() if name != "ts"
            ]
        else:
            select_list = [quote(c) for c in columns if c != "ts" and (needed is None or c in needed)]
        where = " AND ".join(f"({w})" for w in source.wheres) or "TRUE"
        seq = "__seq" if versions else "(__files.__ordinal * 4294967296 + file_row_number) AS __seq"
        validity = ("__from, __to, " if versions else "") + ("__row_id, " if row_ids else "")
        join = "" if versions else " JOIN {files} AS __files ON __r.filename = __files.__filename"
        return (
            f"SELECT {', '.join([*select_list, ''])}CAST(({time_expr}) AS BIGINT) AS ts, "
            f"__ds, '{source.kind}' AS __kind, {validity}{seq} FROM {rows} AS __r{join} WHERE {where}"
        )

    def _entity_read(
        self,
        owner: str,
        source: SourcePlan,
        index: int,
        entity: tuple[Sequence[str], Sequence[str]],
        file_rows: list[tuple[str, int, str]],
        row_ids: bool = False,
        shard: tuple[Sequence[str], int, int] | None = None,
    ) -> str | None:
        """An entity source's versions for the given (snapshot days, mutation days)."""
        found = entity_files(self.warehouse, owner, source, entity)
        if found is None:
            return None
        snapshot_files, columns, mutation_files = found
        file_rows.extend((_file_ds(f), index, f) for f in [*snapshot_files, *mutation_files])
        versions = _versions_sql(
            source,
            columns,
            snapshot_files,
            mutation_files,
            row_ids,
            _raw_shard_filter(source, columns, shard),
        )
        return self._query_sql(source, columns, None, versions, "__ds", versions=True, row_ids=row_ids)

    def _files(
        self, source: SourcePlan, start_ds: str | None, end_ds: str | None, strict: Sequence[str] = ()
    ) -> list[str]:
        return source_files(self.warehouse, source, start_ds, end_ds, strict)

    def _table_columns(self, files: list[str]) -> list[str]:
        import pyarrow.parquet as pq

        return [c for c in pq.read_schema(files[-1]).names if c != "ds"]

    def _materialize(self, stem: str, sql: str, owner: str) -> str:
        name = self._name(stem)
        try:
            self.con.execute(f"CREATE TEMP TABLE {name} AS {sql}")
        except duckdb.Error as error:
            raise ExecutionError(f"{owner}: {type(error).__name__}: {error}") from error
        return name

    def column_types(self, table: str) -> dict[str, str]:
        return {row[0]: row[1] for row in self.con.execute(f"DESCRIBE {table}").fetchall()}

    # ------------------------------------------------------------------ the aggregation core

    def aggregate(self, group_by: GroupByPlan, queries: str, events: str) -> str:
        """A temp table (``__qid`` + raw feature columns) with the GroupBy's values per query row."""
        owner = f"GroupBy({group_by.name!r})"
        types = self.column_types(events)
        if not group_by.features:
            return self._lookup_values(group_by, queries, events, types, owner)
        require_columns(owner, types, [*group_by.keys, *(f.input_column for f in group_by.features)])
        modes = {f.name: self._group_key(f, types[f.input_column], owner) for f in group_by.features}
        entities = any(s.kind == "entities" for s in group_by.sources)
        coupons = self._coupon_tables(group_by.features, events, types, modes, owner)
        framed = [
            f
            for f in group_by.features
            if not entities
            and (f.operation in FRAMED or f.name in coupons)
            and modes[f.name] == ("plain", None)
        ]
        joined_features = [f for f in group_by.features if f not in framed]
        pieces: list[tuple[str, list[FeaturePlan]]] = []
        for features, since in self._frame_groups(framed, queries, events):
            framed_table = self._aggregate_frames(
                group_by, queries, events, features, types, owner, coupons, since
            )
            pieces.append((framed_table, features))
        joined_table = None
        if joined_features:
            joined_table = self._range_join(group_by, queries, events, joined_features, types, owner)
            groups: dict[tuple[str, str | None], list[FeaturePlan]] = {}
            for feature in joined_features:
                groups.setdefault(modes[feature.name], []).append(feature)
            pieces += [
                (self._aggregate_group(mode, sub, features, joined_table, types, owner, coupons), features)
                for (mode, sub), features in groups.items()
            ]
        piece_types = {p: self.column_types(p) for p, _ in pieces}
        select = ", ".join(
            f"{null_non_finite(f'{p}.{quote(f.name)}', piece_types[p][f.name])} AS {quote(f.name)}"
            for f in group_by.features
            for p, features in pieces
            if f in features
        )
        joins = " ".join(f"LEFT JOIN {p} USING (__qid)" for p, _ in pieces)
        result = self._materialize("values", f"SELECT q.__qid, {select} FROM {queries} AS q {joins}", owner)
        coupon_tables = {t for pair in coupons.values() for t in pair}
        for table in [*(p for p, _ in pieces), *([joined_table] if joined_table else []), *coupon_tables]:
            self.con.execute(f"DROP TABLE IF EXISTS {table}")
        return result

    def _coupon_tables(
        self,
        features: list[FeaturePlan],
        events: str,
        types: dict[str, str],
        modes: dict[str, tuple[str, str | None]],
        owner: str,
    ) -> dict[str, tuple[str, str]]:
        """APPROX_UNIQUE_COUNT features computed in SQL (`engines.cpc`): feature name -> (a table of each
        distinct input value's CPC coupon ``(__v, __coupon)``, a table ``(__c, __estimate)`` of the IR's
        finalized value for C distinct coupons). Features left out are folded by the IR."""
        import numpy as np

        from gnomon.aggregation import make_aggregator
        from gnomon.offline.engines import cpc

        found: dict[str, tuple[str, str]] = {}
        built: dict[tuple[str, str, int], tuple[str, str] | None] = {}
        for feature in features:
            if feature.operation != "approx_unique_count":
                continue
            mode = modes[feature.name][0]
            column_type = types[feature.input_column]
            scalar_type = column_type if mode in ("plain", "bucket") else element_type(column_type)
            if not cpc.supported(scalar_type):
                continue
            column = quote(feature.input_column)
            if mode in ("list", "element_wise"):
                value = f"UNNEST({column})"
            elif mode == "map":
                value = f"UNNEST(map_values({column}))"
            else:
                value = column
            lg_k = int(feature.params["lg_k"])
            signature = (value, scalar_type, lg_k)
            if signature not in built:
                values = self.con.sql(
                    f"SELECT DISTINCT __v FROM (SELECT {value} AS __v FROM {events}) WHERE __v IS NOT NULL"
                ).to_arrow_table()
                distinct = values.column("__v").combine_chunks()
                numbers = cpc.coupons(distinct, scalar_type, lg_k)
                _, first = np.unique(numbers, return_index=True)
                aggregator = make_aggregator("approx_unique_count", {"lg_k": lg_k}, python_type(scalar_type))
                try:
                    icon = cpc.IconTable(
                        aggregator, distinct.take(pa.array(first)).to_pylist(), distinct.to_pylist()
                    )
                except cpc.HashMismatch as error:  # never expected: keep the IR fold, say why
                    log.warning("%s: APPROX_UNIQUE_COUNT folded by the IR: %s", owner, error)
                    built[signature] = None
                    continue
                mapping = self._name("coupons")
                self.con.register(
                    f"{mapping}_view", pa.table({"__v": distinct, "__coupon": numbers.astype(np.uint32)})
                )
                self.con.execute(f"CREATE TEMP TABLE {mapping} AS SELECT * FROM {mapping}_view")
                self.con.unregister(f"{mapping}_view")
                estimates = self._name("icon")
                self.con.register(f"{estimates}_view", icon.arrow())
                self.con.execute(f"CREATE TEMP TABLE {estimates} AS SELECT * FROM {estimates}_view")
                self.con.unregister(f"{estimates}_view")
                built[signature] = (mapping, estimates)
            if built[signature] is not None:
                found[feature.name] = built[signature]  # type: ignore[assignment]
        return found

    def _range_join(
        self,
        group_by: GroupByPlan,
        queries: str,
        events: str,
        features: list[FeaturePlan],
        types: dict[str, str],
        owner: str,
    ) -> str:
        """Every (query, event) pair of a key with ``earliest window start <= ts < q``, only the columns needed."""
        key_match = " AND ".join(f"q.{quote(k)} = e.{quote(k)}" for k in group_by.keys)
        conditions = [key_match, "e.ts < q.__q"]
        earliest = earliest_start_sql(features, "q.__q")
        if earliest:
            conditions.append(f"e.ts >= {earliest}")
        valid = "(e.__from IS NULL OR e.__from < q.__q) AND (e.__to IS NULL OR q.__q <= e.__to)"
        if all(s.kind == "entities" for s in group_by.sources):
            # the snapshot day as a join key of its own: pairs are built per (key, day), not per key
            conditions += ["e.__ds = q.__snap_ds", valid]
        elif any(s.kind == "entities" for s in group_by.sources):
            conditions.append(f"(e.__kind <> 'entities' OR (e.__ds = q.__snap_ds AND {valid}))")
        columns = sorted(
            {f.input_column for f in features}
            | {f.bucket for f in features if f.bucket}
            | ({*group_by.value_columns} if not features else set())
        )
        selected = "".join(f", e.{quote(c)}" for c in columns)
        return self._materialize(
            "joined",
            f"SELECT q.__qid, q.__q, e.ts, e.__seq{selected} FROM {queries} AS q "
            f"JOIN {events} AS e ON {' AND '.join(conditions)}",
            owner,
        )

    def _frame_groups(
        self, features: list[FeaturePlan], queries: str, events: str
    ) -> list[tuple[list[FeaturePlan], int | None]]:
        """Framed features in groups, each with the earliest ``ts`` its windows read from the shard's
        first query time on (None: every event).

        A window frame's cost grows with every row its sort holds, so a 5-hour window should not be
        computed over 90 days of events: features are taken from the longest read range to the
        shortest, and a feature starts a new group (one more sort, of fewer rows) when the rows it
        reads are under `_REGROUP` of the rows of its group's first feature."""
        if not features:
            return []
        low, query_rows = self.con.execute(f"SELECT min(__q), count(*) FROM {queries}").fetchone()  # type: ignore[misc]
        if low is None:
            return [(features, None)]
        reads = {f.name: window_start(low, f.window_ms) for f in features}
        starts = sorted(set(reads.values()), key=lambda start: -math.inf if start is None else start)
        counted = ", ".join("count(*)" if s is None else f"count(*) FILTER (WHERE ts >= {s})" for s in starts)
        counts = self.con.execute(f"SELECT {counted} FROM {events}").fetchone()
        rows = dict(zip(starts, counts or (), strict=True))
        groups: list[tuple[int | None, set[int | None]]] = []
        for start in starts:
            if groups and rows[start] + query_rows >= _REGROUP * (rows[groups[-1][0]] + query_rows):
                groups[-1][1].add(start)
            else:
                groups.append((start, {start}))
        return [([f for f in features if reads[f.name] in members], since) for since, members in groups]

    def _aggregate_frames(
        self,
        group_by: GroupByPlan,
        queries: str,
        events: str,
        features: list[FeaturePlan],
        types: dict[str, str],
        owner: str,
        coupons: dict[str, tuple[str, str]] | None = None,
        since: int | None = None,
    ) -> str:
        """Window aggregates over events and queries sorted together by (keys, ts): for a query row at q
        the frame ``RANGE BETWEEN q - window_start(q) PRECEDING AND 1 PRECEDING`` is exactly
        ``window_start(q, W) <= ts < q`` (ts are integers), so no query × event pairs are built. Only
        events with ``ts >= since`` are read (`_frame_groups`).

        APPROX_UNIQUE_COUNT (``coupons``, from `_coupon_tables`) is ``count(DISTINCT coupon)`` over the
        frame, then the IR's value for that many coupons."""
        coupons = coupons or {}
        keys = [quote(k) for k in group_by.keys]
        columns = sorted({f.input_column for f in features})
        not_null = " AND ".join(f"{k} IS NOT NULL" for k in keys)
        mappings = {coupons[f.name][0]: f.input_column for f in features if f.name in coupons}
        coupon_columns = "".join(f", {m}.__coupon AS __cpn{m}" for m in mappings)
        later = "" if since is None else f" AND ts >= {since}"
        coupon_joins = "".join(
            f" LEFT JOIN {m} ON __e.{quote(column)} = {m}.__v" for m, column in mappings.items()
        )
        union = (
            f"SELECT {', '.join(keys)}, ts, __seq, {', '.join(quote(c) for c in columns)}{coupon_columns}, "
            f"NULL::BIGINT AS __qid FROM {events} AS __e{coupon_joins} WHERE {not_null}{later} UNION ALL BY NAME "
            f"SELECT {', '.join(keys)}, __q AS ts, __qid FROM {queries} WHERE {not_null}"
        )
        windows: dict[tuple[int | None, int | None], str] = {}
        for feature in features:
            windows.setdefault((feature.window_ms, feature.hop_ms), f"w{len(windows)}")
        partition = f"PARTITION BY {', '.join(keys)} ORDER BY ts"
        definitions = []
        for (window_ms, hop_ms), name in windows.items():
            if window_ms is None:
                frame = "RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING"
            else:
                frame = f"RANGE BETWEEN (ts - {window_start_sql('ts', window_ms, hop_ms)}) PRECEDING AND 1 PRECEDING"  # type: ignore[arg-type]
            definitions.append(f"{name} AS ({partition} {frame})")
        aggregates = []
        for feature in features:
            column = quote(feature.input_column)
            suffix = (
                f" FILTER (WHERE {column} IS NOT NULL) OVER {windows[(feature.window_ms, feature.hop_ms)]}"
            )
            check_input_type(feature, owner, types[feature.input_column])
            form = (
                f"count(DISTINCT __cpn{coupons[feature.name][0]}){suffix}"
                if feature.name in coupons
                else sql_form(feature, column, types[feature.input_column], suffix)
            )
            aggregates.append(f"{form} AS {quote(feature.name)}")
        sql = (
            f"SELECT * FROM (SELECT __qid, {', '.join(aggregates)} FROM ({union}) "
            f"WINDOW {', '.join(definitions)}) WHERE __qid IS NOT NULL"
        )
        return self._materialize("framed", _with_estimates(sql, features, coupons), owner)

    def _group_key(self, feature: FeaturePlan, input_type: str, owner: str) -> tuple[str, str | None]:
        """How rows are shaped before aggregating: plain, or unpacked / sub-grouped by a column."""
        is_list, is_map = input_type.endswith("[]"), input_type.startswith("MAP(")
        if feature.element_wise:
            if not is_list:
                raise DefinitionError(
                    f"element_wise needs a list input, but {feature.input_column!r} is {input_type}",
                    obj=owner,
                    field=f"aggregations[{feature.name}]",
                    fix="remove element_wise=True",
                )
            if feature.bucket:
                raise DefinitionError(
                    "element_wise with buckets is not supported",
                    obj=owner,
                    field=f"aggregations[{feature.name}]",
                    fix="use one or the other",
                )
            return ("element_wise", feature.input_column)
        if is_map:
            if feature.bucket:
                raise DefinitionError(
                    "a map input with buckets is not supported",
                    obj=owner,
                    field=f"aggregations[{feature.name}]",
                    fix="use one or the other",
                )
            return ("map", feature.input_column)
        if is_list and feature.operation not in _ORDER_FREE:
            return ("list", f"{feature.input_column}|{feature.bucket or ''}")
        return ("bucket", feature.bucket) if feature.bucket else ("plain", None)

    def _aggregate_group(
        self,
        mode: str,
        sub: str | None,
        features: list[FeaturePlan],
        joined: str,
        types: dict[str, str],
        owner: str,
        coupons: dict[str, tuple[str, str]] | None = None,
    ) -> str:
        """The values of features sharing a row shape (`_group_key`) from the range join's pairs.

        APPROX_UNIQUE_COUNT (``coupons``, from `_coupon_tables`) is ``count(DISTINCT coupon)`` per
        query, then the IR's value for that many coupons; what has no SQL form is folded by the IR."""
        coupons = {f.name: coupons[f.name] for f in features if coupons and f.name in coupons}
        base_columns = "__qid, __q, ts, __seq"
        sub_column: str | None = None
        if mode == "plain":
            rows = joined
        elif mode == "bucket":
            rows = f"(SELECT *, CAST({quote(sub)} AS VARCHAR) AS __sub FROM {joined} WHERE {quote(sub)} IS NOT NULL)"  # type: ignore[arg-type]
            sub_column = "__sub"
        elif mode == "list":
            column, _, bucket = sub.partition("|")  # type: ignore[union-attr]
            extra = f", CAST({quote(bucket)} AS VARCHAR) AS __sub" if bucket else ""
            where = f" WHERE {quote(bucket)} IS NOT NULL" if bucket else ""
            rows = f"(SELECT {base_columns}{extra}, UNNEST({quote(column)}) AS {quote(column)} FROM {joined}{where})"
            sub_column = "__sub" if bucket else None
        elif mode == "map":
            column = quote(sub)  # type: ignore[arg-type]
            rows = (
                f"(SELECT {base_columns}, UNNEST(map_keys({column})) AS __sub, "
                f"UNNEST(map_values({column})) AS {column} FROM {joined})"
            )
            sub_column = "__sub"
        else:  # element_wise
            column = quote(sub)  # type: ignore[arg-type]
            rows = (
                f"(SELECT {base_columns}, UNNEST({column}) AS {column}, "
                f"UNNEST(generate_series(1, len({column}))) AS __sub FROM {joined})"
            )
            sub_column = "__sub"
        mappings = {coupons[f.name][0]: f.input_column for f in features if f.name in coupons}
        if mappings:
            rows = (
                f"(SELECT __r.*{''.join(f', {m}.__coupon AS __cpn{m}' for m in mappings)} FROM {rows} AS __r"
                + "".join(f" LEFT JOIN {m} ON __r.{quote(c)} = {m}.__v" for m, c in mappings.items())
                + ")"
            )
        aggregates = []
        folded = []
        for feature in features:
            column = quote(feature.input_column)
            scalar_type = (
                types[feature.input_column]
                if mode in ("plain", "bucket")
                else element_type(types[feature.input_column])
            )
            check_input_type(feature, owner, scalar_type)
            condition = f"{column} IS NOT NULL"
            if feature.window_ms is not None:
                condition += f" AND ts >= {window_start_sql('__q', feature.window_ms, feature.hop_ms)}"  # type: ignore[arg-type]
            form = sql_form(feature, column, scalar_type, f" FILTER (WHERE {condition})")
            if feature.name in coupons:
                form = f"count(DISTINCT __cpn{coupons[feature.name][0]}) FILTER (WHERE {condition})"
            elif form is None:
                folded.append((feature, scalar_type))
                if feature.operation == "approx_unique_count":
                    form = f"list(DISTINCT {column}) FILTER (WHERE {condition})"
                else:
                    form = (
                        f"list(struct_pack(v := {column}, t := ts, s := __seq) ORDER BY ts, __seq) "
                        f"FILTER (WHERE {condition})"
                    )
            aggregates.append(f"{form} AS {quote(feature.name)}")
        group_columns = "__qid" + (f", {sub_column}" if sub_column else "")
        inner_sql = f"SELECT {group_columns}, {', '.join(aggregates)} FROM {rows} GROUP BY {group_columns}"
        inner = self._materialize("inner", _with_estimates(inner_sql, features, coupons), owner)
        if folded:
            inner = self._fold_with_ir(inner, folded)
        if sub_column is None:
            return inner
        outer = []
        for feature in features:
            name = quote(feature.name)
            if mode == "element_wise":
                outer.append(
                    f"CASE WHEN count({name}) = 0 THEN NULL ELSE list({name} ORDER BY __sub) END AS {name}"
                )
            else:
                outer.append(
                    f"NULLIF(map_from_entries(list({{'key': __sub, 'value': {name}}}) "
                    f"FILTER (WHERE {name} IS NOT NULL)), MAP {{}}) AS {name}"
                )
        result = self._materialize(
            "grouped", f"SELECT __qid, {', '.join(outer)} FROM {inner} GROUP BY __qid", owner
        )
        self.con.execute(f"DROP TABLE IF EXISTS {inner}")
        return result

    def _fold_with_ir(self, table: str, folded: list[tuple[FeaturePlan, str]]) -> str:
        """Replace each folded feature's row lists by the IR's finalized value."""
        from gnomon.aggregation import make_aggregator

        arrow = self.con.sql(f"SELECT * FROM {table}").to_arrow_table()
        for feature, scalar_type in folded:
            aggregator = make_aggregator(feature.operation, feature.params, python_type(scalar_type))
            column = arrow.column(feature.name).combine_chunks()
            values: list[Any] = []
            for begin in range(0, len(column), _FOLD_CHUNK):
                # a flat conversion of a chunk's rows, sliced per row: far cheaper than nested lists,
                # and chunking bounds the Python objects alive at once
                lists = column.slice(begin, _FOLD_CHUNK)
                offsets = lists.offsets.to_numpy()
                offsets = offsets - offsets[0]
                flat = lists.flatten().to_pylist()
                present = lists.is_valid().to_numpy(zero_copy_only=False)
                for row in range(len(lists)):
                    start, end = offsets[row], offsets[row + 1]
                    if not present[row] or start == end:
                        values.append(None)
                    elif feature.operation == "approx_unique_count":  # distinct inputs, order-free
                        values.append(aggregator.finalize(aggregator.fold_values(flat[start:end])))
                    else:
                        ir = None
                        for item in flat[start:end]:
                            ir = aggregator.update(ir, item["v"], item["t"], item["s"])
                        values.append(aggregator.finalize(ir))
            index = arrow.column_names.index(feature.name)
            arrow = arrow.set_column(index, feature.name, _to_arrow(values))
        self.con.execute(f"DROP TABLE IF EXISTS {table}")
        name = self._name("folded")
        self.con.register(f"{name}_view", arrow)
        self.con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM {name}_view")
        self.con.unregister(f"{name}_view")
        return name

    def _lookup_values(
        self, group_by: GroupByPlan, queries: str, events: str, types: dict[str, str], owner: str
    ) -> str:
        """GroupBys without aggregations: the columns of the key's row with the greatest ``ts < q``
        (ties: the first in source order), nulls included; every column null when there is none."""
        require_columns(owner, types, [*group_by.keys, *group_by.value_columns])
        joined = self._range_join(group_by, queries, events, [], types, owner)
        packed = ", ".join(f"{quote(c)} := {quote(c)}" for c in group_by.value_columns)
        picked = self._materialize(
            "picked",
            f"SELECT __qid, first(struct_pack({packed}) ORDER BY ts DESC, __seq) "
            f"AS __row FROM {joined} GROUP BY __qid",
            owner,
        )
        columns = ", ".join(
            f"{null_non_finite(f'p.__row.{quote(c)}', types[c])} AS {quote(c)}"
            for c in group_by.value_columns
        )
        values = self._materialize(
            "values",
            f"SELECT q.__qid, {columns} FROM {queries} AS q LEFT JOIN {picked} AS p USING (__qid)",
            owner,
        )
        for table in (joined, picked):
            self.con.execute(f"DROP TABLE IF EXISTS {table}")
        return values

    # ------------------------------------------------------------------ per-GroupBy values for a query set

    def values_for(self, group_by: GroupByPlan, queries: str, strict: Sequence[str] = ()) -> str:
        """Read the events a query set needs (shard by shard) and aggregate them."""
        owner = f"GroupBy({group_by.name!r})"
        low, high = self.con.execute(f"SELECT min(__q), max(__q) FROM {queries}").fetchone()  # type: ignore[misc]
        result = self._name("result")
        if low is None:
            columns = self._empty_columns(group_by)
            self.con.execute(
                f"CREATE TEMP TABLE {result} AS SELECT __qid{columns} FROM {queries} WHERE FALSE"
            )
            return result
        span = group_by.max_window_ms
        start_ds = None if span is None else ms_to_ds(low - span - DAY_MS)
        end_ds = ms_to_ds(high - 1)
        entity = None
        if any(s.kind == "entities" for s in group_by.sources):
            # one query time per (day, midnight or not) is enough to name the partitions
            representative = self.con.execute(
                f"SELECT DISTINCT CASE WHEN __q % {DAY_MS} = 0 THEN __q ELSE __q - __q % {DAY_MS} + 1 END "
                f"FROM {queries}"
            ).fetchall()
            entity = entity_partitions(row[0] for row in representative)
        keys = [k for k in group_by.keys]
        needed = [
            *keys,
            *(f.input_column for f in group_by.features),
            *(f.bucket for f in group_by.features if f.bucket),
            *group_by.value_columns,
        ]
        events_sql = self.source_sql(owner, group_by.sources, start_ds, end_ds, needed, strict, entity)
        shards = max(1, self.config.shards)
        created = False
        for shard in range(shards):
            shard_filter = (
                "TRUE" if shards == 1 else f"hash({', '.join(quote(k) for k in keys)}) % {shards} = {shard}"
            )
            if events_sql is None:
                events = None
                values = self._materialize(
                    "values", f"SELECT __qid{self._empty_columns(group_by)} FROM {queries}", owner
                )
            else:
                shard_sql: str | None = events_sql
                if entity is not None and shards > 1:  # the versions of this shard's rows only
                    shard_sql = self.source_sql(
                        owner,
                        group_by.sources,
                        start_ds,
                        end_ds,
                        needed,
                        strict,
                        entity,
                        shard=(keys, shards, shard),
                    )
                events = self._materialize(
                    "events", f"SELECT * FROM ({shard_sql}) WHERE {shard_filter} AND ts < {high}", owner
                )
                shard_queries = self._materialize(
                    "queries", f"SELECT * FROM {queries} WHERE {shard_filter}", owner
                )
                values = self.aggregate(group_by, shard_queries, events)
                self.con.execute(f"DROP TABLE IF EXISTS {shard_queries}")
            if created:
                self.con.execute(f"INSERT INTO {result} SELECT * FROM {values}")
            else:
                self.con.execute(f"CREATE TEMP TABLE {result} AS SELECT * FROM {values}")
                created = True
            self.con.execute(f"DROP TABLE IF EXISTS {values}")
            if events is None:
                break
            self.con.execute(f"DROP TABLE IF EXISTS {events}")
        return result

    def _empty_columns(self, group_by: GroupByPlan) -> str:
        return "".join(f", NULL AS {quote(c)}" for c in group_by.raw_columns)

    def with_derivations(
        self, group_by_or_join: GroupByPlan | JoinPlan, table: str, base: list[str], raw: list[str]
    ) -> tuple[str, list[str]]:
        """Apply derivations: SQL over the raw columns; returns (SQL, output feature columns)."""
        derivations = group_by_or_join.derivations
        if not derivations:
            return f"SELECT * FROM {table}", raw
        keep_raw = any(name == "*" for name, _ in derivations)
        derived = [(name, expr) for name, expr in derivations if name != "*"]
        selects = [quote(c) for c in base] + ([quote(c) for c in raw] if keep_raw else [])
        selects += [f"({expr}) AS {quote(name)}" for name, expr in derived]
        out = (raw if keep_raw else []) + [name for name, _ in derived]
        return f"SELECT {', '.join(selects)} FROM {table}", out

    # ------------------------------------------------------------------ GroupBy backfill

    def backfill_group_by(self, group_by: GroupByPlan, days: Sequence[str]) -> Iterator[tuple[str, pa.Table]]:
        """Snapshot partition D = values at D+1 00:00 for keys with input in any window.

        With ``offline: {incremental: true}``, from daily IR tables (`gnomon.offline.incremental`) where
        the GroupBy's sources allow it."""
        from gnomon.offline import incremental

        if _truthy(self.config.options.get("incremental")) and incremental.supported(group_by):
            yield from self._backfill_incremental(group_by, days)
            return
        owner = f"GroupBy({group_by.name!r})"
        for day in progress(days, f"backfill {group_by.name}"):
            q = ds_to_ms(day) + DAY_MS
            span = group_by.max_window_ms
            start_ds = None if span is None else ms_to_ds(q - span - DAY_MS)
            event_sources = [s for s in group_by.sources if s.kind != "entities"]
            events_sql = self.source_sql(
                owner,
                group_by.sources,
                start_ds,
                day,
                None,
                strict=[day] if event_sources else (),
                entity=entity_partitions([q]),
            )
            keys = ", ".join(quote(k) for k in group_by.keys)
            condition = f"ts < {q}"
            earliest = earliest_start_sql(group_by.features, str(q))
            if earliest:
                condition += f" AND ts >= {earliest}"
            if any(s.kind == "entities" for s in group_by.sources):
                condition += f" AND (__kind <> 'entities' OR __ds = '{day}')"
            queries = self._materialize(
                "queries",
                f"SELECT row_number() OVER () AS __qid, *, {q}::BIGINT AS __q, '{day}' AS __snap_ds FROM "
                f"(SELECT DISTINCT {keys} FROM ({events_sql}) WHERE {condition} AND "
                + " AND ".join(f"{quote(k)} IS NOT NULL" for k in group_by.keys)
                + ")",
                owner,
            )
            values = self.values_for(group_by, queries)
            joined = self._name("gb_out")
            self.con.execute(
                f"CREATE TEMP VIEW {joined} AS SELECT q.* EXCLUDE (__qid, __q, __snap_ds), v.* EXCLUDE (__qid) "
                f"FROM {queries} AS q JOIN {values} AS v USING (__qid)"
            )
            sql, _ = self.with_derivations(group_by, joined, list(group_by.keys), group_by.raw_columns)
            table = self.con.sql(sql).to_arrow_table()
            table = table.sort_by([(k, "ascending") for k in group_by.keys])
            yield day, table
            for name in (queries, values):
                self.con.execute(f"DROP TABLE IF EXISTS {name}")
            self.con.execute(f"DROP VIEW IF EXISTS {joined}")

    def _backfill_incremental(
        self, group_by: GroupByPlan, days: Sequence[str]
    ) -> Iterator[tuple[str, pa.Table]]:
        """`backfill_group_by` from daily IR tables: each day's events are read once, into its table."""
        from gnomon.offline import incremental

        owner = f"GroupBy({group_by.name!r})"
        keys = ", ".join(quote(k) for k in group_by.keys)
        not_null = " AND ".join(f"{quote(k)} IS NOT NULL" for k in group_by.keys)
        columns = sorted(
            {f.input_column for f in group_by.features} | {f.bucket for f in group_by.features if f.bucket}
        )
        needed = [*group_by.keys, *columns]

        def day_sql(day: str, strict: Sequence[str] = ()) -> str | None:
            events = self.source_sql(owner, group_by.sources, day, day, needed, strict)
            if events is None:
                return None
            selected = ", ".join(quote(c) for c in columns)
            return (
                f"SELECT {keys}, ts, __seq, {selected} FROM ({events}) WHERE {not_null} "
                f"ORDER BY {keys}, ts, __seq"
            )

        def read_day(day: str) -> pa.Table:
            sql = day_sql(day)
            if sql is None:
                return pa.table({})
            try:
                return self.con.sql(sql).to_arrow_table()
            except duckdb.Error as error:
                raise ExecutionError(f"{owner}: {type(error).__name__}: {error}") from error

        store: incremental.DailyIRs | None = None
        for day in progress(days, f"backfill {group_by.name} (incremental)"):
            sql = day_sql(day, strict=[day])  # partition D of every source must exist, as in the SQL path
            if sql is None:
                raise WarehouseError(f"{owner}: no source partition ds={day}")
            described = self.con.sql(sql)
            types = {name: str(type_) for name, type_ in zip(described.columns, described.types, strict=True)}
            schema = self.con.sql(f"SELECT * FROM ({sql}) LIMIT 0").to_arrow_table().schema
            arrow_types = {field.name: field.type for field in schema}
            require_columns(owner, types, [*group_by.keys, *(f.input_column for f in group_by.features)])
            if store is None:
                store = incremental.DailyIRs(
                    self.warehouse,
                    group_by,
                    {c: aggregation_type(types[c]) for c in columns},
                    read_day,
                    lambda d: incremental.signature(self.warehouse, group_by, d),
                    incremental.first_partition(self.warehouse, group_by),
                )
                store.drop_other_definitions()
            found, values = store.values(day)
            arrays = {
                name: pa.array([key[i] for key in found], arrow_types[name])
                for i, name in enumerate(group_by.keys)
            }
            for feature, online, finalized in zip(group_by.features, store.features, values, strict=True):
                output = incremental.arrow_type(feature, online.aggregator, arrow_types[feature.input_column])
                arrays[feature.name] = incremental.to_arrow(finalized, output)
            raw = pa.table(arrays)
            view = self._name("gb_ir")
            self.con.register(view, raw)
            sql_out, _ = self.with_derivations(group_by, view, list(group_by.keys), group_by.raw_columns)
            table = self.con.sql(sql_out).to_arrow_table() if group_by.derivations else raw
            self.con.unregister(view)
            store.forget_before(day)
            yield day, table.sort_by([(k, "ascending") for k in group_by.keys])
        if store is not None and store.computed:
            log.info("%s: computed %d daily IR table(s) from events", group_by.name, len(store.computed))

    # ------------------------------------------------------------------ Join backfill and training data

    def join_left(self, join: JoinPlan, left: str) -> pa.Table:
        """Every left row (table ``left``: ``__rid``, left columns, ``ts``, maybe ``__ds``) with its features."""
        owner = f"Join({join.name!r})"
        left_types = self.column_types(left)
        feature_tables = []
        feature_columns: list[str] = []
        for part in progress(join.parts, f"join {join.name}"):
            group_by = self.plan.group_bys[part.group_by]
            for key, column in part.key_columns.items():
                if column not in left_types:
                    raise DefinitionError(
                        f"GroupBy {part.group_by!r} needs key {key!r} from left column {column!r}, "
                        f"which the left rows lack (they have "
                        f"{', '.join(c for c in left_types if not c.startswith('__'))})",
                        obj=owner,
                        field="right_parts",
                        fix="add the column or set key_mapping",
                    )
            q = self._query_time_sql(join, group_by)
            keys = ", ".join(f"{quote(column)} AS {quote(key)}" for key, column in part.key_columns.items())
            queries = self._materialize(
                "queries",
                f"SELECT __rid AS __qid, {keys}, {q} AS __q, "
                f"strftime(CAST(epoch_ms({q}) AS DATE) - 1, '%Y-%m-%d') AS __snap_ds FROM {left} WHERE {q} IS NOT NULL",
                owner,
            )
            values = self.values_for(group_by, queries)
            with_keys = self._name("part")
            self.con.execute(
                f"CREATE TEMP VIEW {with_keys} AS SELECT q.__qid, "
                + "".join(f"q.{quote(k)}, " for k in part.key_columns)
                + f"v.* EXCLUDE (__qid) FROM {queries} AS q JOIN {values} AS v USING (__qid)"
            )
            sql, out = self.with_derivations(
                group_by, with_keys, ["__qid", *part.key_columns], group_by.raw_columns
            )
            renamed = ", ".join(f"{quote(c)} AS {quote(part.column_prefix + c)}" for c in out)
            part_table = self._materialize(
                "part_values", f"SELECT __qid AS __rid, {renamed} FROM ({sql})", owner
            )
            feature_tables.append(part_table)
            feature_columns.extend(part.column_prefix + c for c in out)
        left_columns = [c for c in left_types if not c.startswith("__")]
        select = ", ".join(
            [
                *(f"l.{quote(c)}" for c in left_columns),
                *(f"{t}.{quote(c)}" for t in feature_tables for c in self.column_types(t) if c != "__rid"),
            ]
        )
        joins = " ".join(f"LEFT JOIN {t} ON l.__rid = {t}.__rid" for t in feature_tables)
        extra = ", l.__ds" if "__ds" in left_types else ""
        assembled = self._materialize(
            "assembled", f"SELECT {select}{extra}, l.__rid FROM {left} AS l {joins}", owner
        )
        sql, _ = self.with_derivations(
            join, assembled, [*left_columns, *(["__ds"] if extra else []), "__rid"], feature_columns
        )
        try:
            table = self.con.sql(f"SELECT * FROM ({sql}) ORDER BY __rid").to_arrow_table()
        except duckdb.Error as error:
            raise ExecutionError(f"{owner}: derivations failed: {error}") from error
        for name in [*feature_tables, assembled]:
            self.con.execute(f"DROP TABLE IF EXISTS {name}")
        return table.drop(["__rid"])

    def _query_time_sql(self, join: JoinPlan, group_by: GroupByPlan) -> str:
        """SPEC §2's table: the time q each left row asks a GroupBy for."""
        if join.left.kind == "entities":
            return "((CAST(__ds AS DATE) - DATE '1970-01-01' + 1) * 86400000)::BIGINT"
        if group_by.accuracy == "snapshot":
            return f"(ts - (((ts % {DAY_MS}) + {DAY_MS}) % {DAY_MS}))"
        return "ts"

    def backfill_join(self, join: JoinPlan, days: Sequence[str]) -> Iterator[tuple[str, pa.Table]]:
        """One output partition per left partition in ``days``."""
        owner = f"Join({join.name!r})"
        left_sql = self.source_sql(owner, [join.left], days[0], days[-1], None, strict=list(days))
        wanted = ", ".join(f"'{d}'" for d in days)
        left = self._materialize(
            "left",
            f"SELECT row_number() OVER (ORDER BY __seq) AS __rid, * EXCLUDE (__kind, __seq) "
            f"FROM ({left_sql}) WHERE __ds IN ({wanted})",
            owner,
        )
        table = self.join_left(join, left)
        self.con.execute(f"DROP TABLE IF EXISTS {left}")
        ds_column = table.column("__ds")
        table = table.drop(["__ds"])
        import pyarrow.compute as pc

        for day in days:
            yield day, table.filter(pc.equal(ds_column, day))

    def training_data(self, join: JoinPlan, left: pa.Table) -> pa.Table:
        """Features for a user's own left rows (they must hold the left columns and ``ts``)."""
        owner = f"Join({join.name!r})"
        if join.left.kind == "entities":
            if "ds" not in left.column_names:
                raise DefinitionError(
                    "the left rows need a 'ds' column (the Join's left is an entity source)",
                    obj=owner,
                    field="left",
                    fix="add ds (YYYY-MM-DD) to the frame",
                )
        elif "ts" not in left.column_names:
            raise DefinitionError(
                "the left rows need a 'ts' column (epoch milliseconds)",
                obj=owner,
                field="left",
                fix="add ts = the time each row asks for features, as int64 epoch ms",
            )
        view = self._name("user_left")
        self.con.register(view, left)
        rename = ", ds AS __ds" if join.left.kind == "entities" else ""
        cast_ts = "* REPLACE (CAST(ts AS BIGINT) AS ts)" if "ts" in left.column_names else "*"
        table_name = self._materialize(
            "left", f"SELECT row_number() OVER () AS __rid, {cast_ts}{rename} FROM {view}", owner
        )
        self.con.unregister(view)
        result = self.join_left(join, table_name)
        self.con.execute(f"DROP TABLE IF EXISTS {table_name}")
        if "__ds" in result.column_names:
            result = result.drop(["__ds"])
        return result

    # ------------------------------------------------------------------ StagingQuery

    @contextmanager
    def warehouse_views(self) -> Iterator[None]:
        """Every warehouse table as a view ``ns.table`` (with its ``ds`` column)."""
        schemas = set()
        for table in self.warehouse.tables():
            files = self.warehouse.partition_files(table)
            if not files:
                continue
            namespace, name = table.split(".")
            if namespace not in schemas:
                self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(namespace)}")
                schemas.add(namespace)
            file_list = ", ".join(f"'{f}'" for f in files)
            self.con.execute(
                f"CREATE OR REPLACE VIEW {quote(namespace)}.{quote(name)} AS SELECT * FROM "
                f"read_parquet([{file_list}], hive_partitioning = true, hive_types = {{'ds': VARCHAR}}, "
                "union_by_name = true)"
            )
        yield

    def run_staging_query(self, sql: str, days: Sequence[str], owner: str) -> Iterator[tuple[str, pa.Table]]:
        with self.warehouse_views():
            try:
                table = self.con.sql(sql).to_arrow_table()
            except duckdb.Error as error:
                raise ExecutionError(f"{owner}: the query failed: {error}") from error
        if "ds" not in table.column_names:
            raise DefinitionError(
                "the query must select a 'ds' column (the output partition)",
                obj=owner,
                field="query",
                fix="add e.g. `ds` or `'{{ end_date }}' AS ds` to the SELECT",
            )
        import pyarrow.compute as pc

        ds_column = pc.cast(table.column("ds"), pa.string())
        body = table.drop(["ds"])
        for day in days:
            yield day, body.filter(pc.equal(ds_column, day))

    def publish(self, table: str, days: Sequence[str]) -> None:
        """`OfflineEngine.publish`: the embedded engine has no catalog; the folders are the tables."""

    # ------------------------------------------------------------------ an upload's batch rows

    def batch_rows(self, group_by: GroupByPlan, ds: str, columns: Sequence[str], kind: RowsKind) -> BatchRows:
        """`OfflineEngine.batch_rows`: the rows an upload as of ``ds + 1 day`` folds, sorted by key."""
        from gnomon.compile.features import SOURCE_COLUMN

        scope = BatchScope(group_by, ds, columns)
        batch_end, span, values = scope.batch_end, scope.span, scope.values
        events_sql = self.source_sql(
            scope.owner,
            group_by.sources,
            scope.start_ds,
            ds,
            [*group_by.keys, *values],
            strict=[] if kind == "entities" else [ds],
            entity=entity_partitions([batch_end]) if kind != "events" else None,
            row_ids=kind != "events",
        )
        keys = ", ".join(quote(k) for k in group_by.keys)
        not_null = " AND ".join(f"{quote(k)} IS NOT NULL" for k in group_by.keys)
        lower = "" if span is None or (kind == "latest") else f" AND ts >= {batch_end - span}"
        if kind == "events":
            # the source index only orders streamed rows among themselves; batch tiles hold offline's order
            selected = ", ".join(f"NULL AS {quote(c)}" if c == SOURCE_COLUMN else quote(c) for c in columns)
            sql = (
                f"SELECT {keys}, ts, __seq, {selected} FROM ({events_sql}) "
                f"WHERE ts < {batch_end}{lower} AND {not_null} ORDER BY {keys}, ts, __seq"
            )
        elif kind == "entities":  # the snapshot's rows; those older than every window never count again
            selected = ", ".join(
                [
                    *(quote(c) for c in values),
                    "NULL::BIGINT AS __mutation_ts",
                    "false AS __is_before",
                    "__row_id",
                ]
            )
            sql = (
                f"SELECT {keys}, ts, __seq, {selected} FROM ({events_sql}) WHERE __ds = '{ds}'{lower} "
                f"AND {not_null} ORDER BY {keys}, __seq"
            )
        else:  # a lookup over events: the latest row before the batch end is all a later fetch can pick
            selected = ", ".join(quote(c) for c in values)
            sql = (
                f"SELECT {keys}, ts, __seq, {selected} FROM ({events_sql}) WHERE ts < {batch_end} AND {not_null} "
                f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY ts DESC, __seq) = 1 ORDER BY {keys}"
            )
        described = self.con.sql(sql)
        types = {
            name: aggregation_type(str(kind_))
            for name, kind_ in zip(described.columns, described.types, strict=True)
            if name in columns
        }
        reader = self.con.sql(sql).to_arrow_reader(10_000)
        return BatchRows(types, iter(reader))


def aggregation_type(duck_type: str) -> str:
    """The aggregation library's type name for a DuckDB column type.

    >>> aggregation_type("BIGINT[]"), aggregation_type("MAP(VARCHAR, DOUBLE)")
    ('list<int>', 'map<str,float>')
    """
    if duck_type.endswith("[]"):
        return f"list<{aggregation_type(duck_type[:-2])}>"
    if duck_type.startswith("MAP("):
        return f"map<str,{aggregation_type(element_type(duck_type))}>"
    return python_type(duck_type)


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"))


def _with_estimates(sql: str, features: list[FeaturePlan], coupons: dict[str, tuple[str, str]]) -> str:
    """``sql`` with each coupon count of an APPROX_UNIQUE_COUNT feature replaced by the IR's value for
    that many coupons (none: null, an empty window)."""
    counted = [f for f in features if f.name in coupons]
    if not counted:
        return sql
    replaced = ", ".join(f"__i{n}.__estimate AS {quote(f.name)}" for n, f in enumerate(counted))
    joins = "".join(
        f" LEFT JOIN {coupons[f.name][1]} AS __i{n} ON __r.{quote(f.name)} = __i{n}.__c"
        for n, f in enumerate(counted)
    )
    return f"SELECT __r.* REPLACE ({replaced}) FROM ({sql}) AS __r{joins}"


def _file_ds(file: str) -> str:
    return file.split("/ds=")[-1].split("/")[0]


def _read_files_sql(files: Sequence[str]) -> str:
    file_list = ", ".join(f"'{f}'" for f in files)
    return (
        f"read_parquet([{file_list}], hive_partitioning = true, hive_types = {{'ds': VARCHAR}}, "
        "filename = true, file_row_number = true, union_by_name = true)"
    )


def entity_files(
    warehouse: Warehouse, owner: str, source: SourcePlan, entity: tuple[Sequence[str], Sequence[str]]
) -> tuple[list[str], list[str], list[str]] | None:
    """(snapshot files, snapshot columns, mutation files) an entity source reads for the given
    (snapshot days, mutation days), every partition required and the mutation columns checked;
    None when no snapshot day is asked for."""
    snapshot_days, mutation_days = entity
    if not snapshot_days:
        return None
    warehouse.require_partitions(source.table, snapshot_days)
    snapshot_files = [f for day in snapshot_days for f in warehouse.partition_files(source.table, day, day)]
    check_source(owner, source, warehouse, None)
    columns = _parquet_columns(snapshot_files)
    mutation_files: list[str] = []
    if source.mutation_table is not None and mutation_days:
        warehouse.require_partitions(source.mutation_table, mutation_days)
        mutation_files = [
            f for day in mutation_days for f in warehouse.partition_files(source.mutation_table, day, day)
        ]
        check_mutation_columns(owner, source, columns, _parquet_columns(mutation_files))
    return snapshot_files, columns, mutation_files


def _parquet_columns(files: list[str]) -> list[str]:
    import pyarrow.parquet as pq

    return [c for c in pq.read_schema(files[-1]).names if c != "ds"]


def check_mutation_columns(
    owner: str, source: SourcePlan, snapshot_columns: list[str], mutation_columns: list[str]
) -> None:
    """A mutation table holds the snapshot table's columns plus the mutation time and reversal columns."""
    table = source.mutation_table
    for column in (source.mutation_time_column, source.reversal_column):
        if column not in mutation_columns:
            raise DefinitionError(
                f"mutation table {table!r} has no column {column!r} (it has {', '.join(mutation_columns)})."
                + did_you_mean(column, mutation_columns),
                obj=owner,
                field="sources",
                fix=f"write {column!r} in every mutation row, or name the column with "
                "Query(mutation_time_column=..., reversal_column=...)",
            )
    extra = [
        c
        for c in mutation_columns
        if c not in snapshot_columns and c not in (source.mutation_time_column, source.reversal_column)
    ]
    if extra:
        raise DefinitionError(
            f"mutation table {table!r} has column {extra[0]!r}, which snapshot table {source.table!r} does not "
            f"have (it has {', '.join(snapshot_columns)})." + did_you_mean(extra[0], snapshot_columns),
            obj=owner,
            field="sources",
            fix="give both tables the same row columns",
        )


def _versions_sql(
    source: SourcePlan,
    columns: list[str],
    snapshot_files: Sequence[str],
    mutation_files: Sequence[str],
    row_ids: bool = False,
    key_filter: str | None = None,
) -> str:
    """The table's rows as *versions* valid for ``__from < q <= __to`` (null: unbounded) on the day
    after their snapshot ``__ds`` (SPEC §4, with exact deletes for every operation).

    ``key_filter`` (over the raw columns, e.g. one key-hash shard) keeps only some rows before the
    replay: every copy of a raw row value passes it or none does, so the versions of the rows kept are
    the same (their ``__seq`` keeps its order).

    Snapshot ``d`` and the mutations of ``d + 1`` are replayed per distinct row value in the order
    (mutation time, before-rows first, source order): an insert adds a copy of the row, a delete
    removes the oldest copy still there, or nothing when there is none. With ``p`` the running sum of
    +1/-1, a delete removes nothing exactly when it takes ``p`` to a new low below zero; the k-th
    delete that removes something ends the k-th copy.
    """
    raw = ", ".join(quote(c) for c in columns)
    snapshot = (
        f"SELECT {raw}, ds AS __ds, NULL::BIGINT AS __m, false AS __before, "
        f"(__files.__ordinal * 4294967296 + file_row_number) AS __seq "
        f"FROM {_read_files_sql(snapshot_files)} AS __r JOIN {{files}} AS __files "
        f"ON __r.filename = __files.__filename"
    )
    parts = [snapshot]
    if mutation_files:
        table, time_column, reversal = (
            source.mutation_table,
            quote(source.mutation_time_column),
            quote(source.reversal_column),
        )
        parts.append(
            f"SELECT {raw}, strftime(CAST(ds AS DATE) - 1, '%Y-%m-%d') AS __ds, "
            f"CASE WHEN {time_column} IS NULL THEN error('mutation table {table}: a row has no "
            f"{source.mutation_time_column}; every mutation row needs its time') "
            f"ELSE CAST({time_column} AS BIGINT) END AS __m, "
            f"CASE WHEN {reversal} IS NULL THEN error('mutation table {table}: a row has no "
            f"{source.reversal_column}; every mutation row needs true (the old row) or false (the new row)') "
            f"ELSE CAST({reversal} AS BOOLEAN) END AS __before, "
            f"(__files.__ordinal * 4294967296 + file_row_number) AS __seq "
            f"FROM {_read_files_sql(mutation_files)} AS __r JOIN {{files}} AS __files "
            f"ON __r.filename = __files.__filename"
        )
    rows = " UNION ALL BY NAME ".join(f"({p})" for p in parts)
    if key_filter:
        rows = f"SELECT * FROM ({rows}) WHERE {key_filter}"
    row_id = f", {row_id_sql(columns)} AS __row_id" if row_ids else ""
    if not mutation_files:
        return f"(SELECT *, NULL::BIGINT AS __from, NULL::BIGINT AS __to{row_id} FROM ({rows}))"
    group = f"PARTITION BY __ds, {raw} ORDER BY __m NULLS FIRST, __before DESC, __seq"
    upto = f"({group} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    return (
        f"(WITH __p AS (SELECT *, sum(CASE WHEN __before THEN -1 ELSE 1 END) OVER {upto} AS __p FROM ({rows})), "
        f"__e AS (SELECT *, __before AND __p >= LEAST(0, COALESCE(min(__p) OVER ({group} ROWS BETWEEN UNBOUNDED "
        f"PRECEDING AND 1 PRECEDING), 0)) AS __removes FROM __p), "
        f"__c AS (SELECT *, count(*) FILTER (WHERE NOT __before) OVER {upto} AS __copy, "
        f"list(__m) FILTER (WHERE __removes) OVER ({group} ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED "
        f"FOLLOWING) AS __ends FROM __e) "
        # inserted rows follow the snapshot's in the order they were applied (source order for ties)
        f"SELECT {raw}, __ds, CASE WHEN __m IS NULL THEN __seq ELSE 4611686018427387904 + row_number() OVER "
        f"(PARTITION BY __ds, __m IS NULL ORDER BY __m, __seq) END AS __seq, __m AS __from, "
        f"__ends[__copy] AS __to{row_id} FROM __c WHERE NOT __before)"
    )


def _raw_shard_filter(
    source: SourcePlan, columns: list[str], shard: tuple[Sequence[str], int, int] | None
) -> str | None:
    """``hash(keys) % shards = shard`` over an entity table's raw columns, when every key is selected
    as a plain column of the table (None otherwise: the caller's filter after the Query does it)."""
    if shard is None:
        return None
    keys, shards, index = shard
    expressions = []
    for key in keys:
        expression = key if source.selects is None else source.selects.get(key, "")
        column = expression.strip().strip('"')
        if column not in columns:
            return None
        expressions.append(quote(column))
    return f"hash({', '.join(expressions)}) % {shards} = {index}"


def _to_arrow(values: list[Any]) -> pa.Array:
    """An Arrow array from finalized IR values (maps as list of pairs, NaN already nulled)."""
    sample = next((v for v in values if v is not None), None)
    if isinstance(sample, dict):
        value_sample = next((x for v in values if v for x in v.values() if x is not None), 0)
        value_type = pa.float64() if isinstance(value_sample, float) else pa.int64()
        return pa.array(
            [None if v is None else list(v.items()) for v in values], pa.map_(pa.string(), value_type)
        )
    if isinstance(sample, float) or (isinstance(sample, int) and any(isinstance(v, float) for v in values)):
        return pa.array(
            [
                None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)
                for v in values
            ],
            pa.float64(),
        )
    return pa.array(values)


__all__ = ["DuckDBEngine", "WarehouseError", "shift_ds"]
