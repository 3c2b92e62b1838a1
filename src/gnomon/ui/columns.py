"""What a plan object outputs, known without running it: its feature columns (for the catalog), and
its output columns with their Arrow types (for an object whose output has no partition yet).

Types come from DuckDB evaluating each Query, derivation and StagingQuery over empty tables of the
source tables' schemas (`TypeProbe`), and from each feature's aggregator, typed as the engines write
it (`feature_type`); no job runs and no row is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from gnomon.compile.plan import GroupByPlan, JoinPlan, Plan, SourcePlan, StagingQueryPlan
from gnomon.compile.sql import quote
from gnomon.errors import GnomonError

if TYPE_CHECKING:
    from gnomon.ui.api import Node, UiData

TEMPLATE = re.compile(r"\{\{.*?\}\}", re.S)  # a StagingQuery's {{ ... }}: filled with a day to parse it


def derived_columns(derivations: Sequence[Sequence[str]], raw: Sequence[str]) -> list[str]:
    """The feature columns after derivations: the raw ones when there are none or ``*`` keeps them,
    then the derived ones.

    >>> derived_columns([["*", "*"], ["ratio", "a / b"]], ["a", "b"])
    ['a', 'b', 'ratio']
    >>> derived_columns([["ratio", "a / b"]], ["a", "b"])
    ['ratio']
    """
    if not derivations:
        return list(raw)
    keep = any(name == "*" for name, _ in derivations)
    return [*(raw if keep else []), *(name for name, _ in derivations if name != "*")]


def group_by_features(group_by: GroupByPlan) -> list[str]:
    """A GroupBy's output feature columns (its output table less the keys)."""
    return derived_columns(group_by.derivations, group_by.raw_columns)


def join_features(join: JoinPlan, plan: Plan) -> list[str]:
    """A Join's output feature columns (its output table less the left columns)."""
    raw = [
        part.column_prefix + column
        for part in join.parts
        for column in group_by_features(plan.group_bys[part.group_by])
    ]
    return derived_columns(join.derivations, raw)


def staging_columns(query: StagingQueryPlan) -> list[str]:
    """The columns a StagingQuery's SELECT names (less ``ds``); empty when its SQL does not parse."""
    import sqlglot

    try:
        tree = sqlglot.parse_one(TEMPLATE.sub("2000-01-01", query.query), read="duckdb")
    except sqlglot.errors.ParseError:
        return []
    return [name for name in getattr(tree, "named_selects", []) if name != "ds"]


def staging_inputs(query: StagingQueryPlan) -> list[str] | None:
    """The tables a StagingQuery reads (`gnomon.orchestration.graph.staging_tables`); None when
    sqlglot cannot read its SQL (the query is still shown, its inputs are not)."""
    from gnomon.orchestration.graph import staging_tables

    try:
        return staging_tables(query.query)
    except Exception:  # noqa: BLE001 — any parse failure means the same: inputs unknown
        return None


def features_of(node: Node, plan: Plan) -> list[str]:
    """An object's output feature columns: a GroupBy's less its keys, a Join's less its left
    columns, a StagingQuery's selected columns."""
    if isinstance(node, GroupByPlan):
        return group_by_features(node)
    if isinstance(node, JoinPlan):
        return join_features(node, plan)
    return staging_columns(node)


Columns = list[tuple[str, pa.DataType | None]]
Probed = list[tuple[str, pa.DataType | None, str | None]]  # name, Arrow type, DuckDB type


class TypeProbe:
    """The types of SQL run over empty tables, by DuckDB, answers cached (they depend only on the SQL
    and the schemas). Each miss opens a short-lived single-threaded in-memory connection: no DuckDB
    threads outlive a request (a process that forks later, as PySpark does to start its JVM, must not
    fork while another thread's allocator state is live)."""

    def __init__(self) -> None:
        self._selects: dict[tuple[str, tuple[str, ...]], Probed] = {}
        self._queries: dict[tuple[str, tuple[str, ...]], Columns | None] = {}

    @staticmethod
    def _connection() -> Any:
        import duckdb

        return duckdb.connect(config={"threads": 1})

    def select(self, schema: pa.Schema, selects: Sequence[str]) -> Probed:
        """Name, Arrow type and DuckDB type of each SELECT item over an empty table of ``schema``
        (the types None on an error: an expression DuckDB refuses)."""
        import duckdb

        key = (schema.to_string(), tuple(selects))
        if key not in self._selects:
            connection = self._connection()
            connection.register("__rows", schema.empty_table())
            try:
                relation = connection.sql(f"SELECT {', '.join(selects)} FROM __rows")
                table = relation.to_arrow_table()
                self._selects[key] = [
                    (f.name, f.type, str(duck)) for f, duck in zip(table.schema, relation.types, strict=True)
                ]
            except duckdb.Error:
                self._selects[key] = [(item.rsplit(" AS ", 1)[-1].strip('"'), None, None) for item in selects]
            finally:
                connection.close()
        return self._selects[key]

    def query(self, tables: Mapping[str, pa.Schema], sql: str) -> Columns | None:
        """The columns of a whole query over empty tables ``ns.name`` of these schemas (None on an
        error)."""
        import duckdb

        key = (sql, tuple(f"{t}:{schema.to_string()}" for t, schema in sorted(tables.items())))
        if key not in self._queries:
            connection = self._connection()
            try:
                for index, (table, schema) in enumerate(sorted(tables.items())):
                    namespace, name = table.split(".", 1)
                    connection.register(f"__empty{index}", schema.empty_table())
                    connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(namespace)}")
                    connection.execute(
                        f"CREATE OR REPLACE VIEW {quote(namespace)}.{quote(name)} AS SELECT * FROM __empty{index}"
                    )
                result = connection.sql(sql).to_arrow_table()
                self._queries[key] = [(f.name, f.type) for f in result.schema]
            except duckdb.Error:
                self._queries[key] = None
            finally:
                connection.close()
        return self._queries[key]


class PlanSchemas:
    """Output columns and their Arrow types derived from the plan and the source tables' schemas,
    without running a job: each Query is evaluated by DuckDB over an empty table of its source's
    schema, each feature's type comes from its aggregator (as the engines type it), and derivations
    and StagingQueries run over empty tables."""

    def __init__(self, data: UiData) -> None:
        self.data = data
        self._outputs: dict[str, Columns] = {}

    def of(self, node: Node, seen: frozenset[str] = frozenset()) -> Columns:
        if node.output_table in self._outputs:
            return self._outputs[node.output_table]
        if isinstance(node, GroupByPlan):
            columns = self._group_by(node, seen | {node.output_table})
        elif isinstance(node, JoinPlan):
            columns = self._join(node, seen | {node.output_table})
        else:
            columns = self._staging(node, seen | {node.output_table})
        self._outputs[node.output_table] = columns
        return columns

    def table_schema(self, table: str, seen: frozenset[str] = frozenset()) -> pa.Schema | None:
        """A table's schema: its newest partition's, else (an output of the plan) its derived one."""
        schema = self.data.latest_schema(table)
        if schema is not None or table in seen:
            return schema
        for _, node in self.data.nodes():
            if node.output_table == table:
                columns = self.of(node, seen)
                if all(t is not None for _, t in columns):
                    return pa.schema([pa.field(c, t) for c, t in columns])
        return None

    def probe(self, source: SourcePlan, seen: frozenset[str] = frozenset()) -> Probed | None:
        """The columns a source's Query selects (then ``ts``) with their types; None when its table
        has no schema."""
        schema = self.table_schema(source.table, seen)
        if schema is None:
            return None
        fields = [f for f in schema if f.name != "ds"] + [pa.field("ds", pa.string())]
        if source.selects is not None:
            selects = {name: expr for name, expr in source.selects.items() if name != "ts"}
        else:
            selects = {f.name: quote(f.name) for f in fields if f.name not in ("ts", "ds")}
        listed = [f"({expr}) AS {quote(name)}" for name, expr in selects.items()]
        return [*self.data.types.select(pa.schema(fields), listed), ("ts", pa.int64(), "BIGINT")]

    def query_types(self, source: SourcePlan, seen: frozenset[str] = frozenset()) -> Columns | None:
        """The columns a source's Query selects (then ``ts``), typed; None when its table has no schema."""
        probed = self.probe(source, seen)
        return None if probed is None else [(name, kind) for name, kind, _ in probed]

    def input_duck_types(self, group_by: GroupByPlan) -> dict[str, str]:
        """Column -> DuckDB type over a GroupBy's sources (what the SQL forms switch on)."""
        types: dict[str, str] = {}
        for source in group_by.sources:
            for name, _, duck in self.probe(source) or []:
                if duck is not None:
                    types.setdefault(name, duck)
        return types

    def source_types(
        self, group_by: GroupByPlan, seen: frozenset[str] = frozenset()
    ) -> dict[str, pa.DataType | None]:
        """Column -> type over a GroupBy's sources (the first source that selects a column types it)."""
        types: dict[str, pa.DataType | None] = {}
        for source in group_by.sources:
            for name, kind in self.query_types(source, seen) or []:
                if types.get(name) is None:
                    types[name] = kind
        return types

    def _group_by(self, group_by: GroupByPlan, seen: frozenset[str]) -> Columns:
        types = self.source_types(group_by, seen)
        keys: Columns = [(k, types.get(k)) for k in group_by.keys]
        if not group_by.features:
            raw: Columns = [(c, types.get(c)) for c in group_by.value_columns]
        else:
            raw = [
                (
                    f.name,
                    feature_type(f.operation, f.params, types.get(f.input_column), f.bucket, f.element_wise),
                )
                for f in group_by.features
            ]
        return keys + derive_types(self.data.types, group_by.derivations, keys, raw)

    def _join(self, join: JoinPlan, seen: frozenset[str]) -> Columns:
        left = self.query_types(join.left, seen) or [
            *((c, None) for c in (join.left.selects or {}) if c != "ts"),
            ("ts", pa.int64()),
        ]
        raw: Columns = []
        for part in join.parts:
            group_by = self.data.plan.group_bys[part.group_by]
            columns = self.of(group_by, seen)
            raw += [(part.column_prefix + c, t) for c, t in columns if c not in group_by.keys]
        return list(left) + derive_types(self.data.types, join.derivations, list(left), raw)

    def _staging(self, query: StagingQueryPlan, seen: frozenset[str]) -> Columns:
        unknown: Columns = [(c, None) for c in staging_columns(query)]
        tables = staging_inputs(query)
        if tables is None:
            return unknown
        schemas = {}
        for table in tables:
            schema = self.table_schema(table, seen)
            if schema is None:
                return unknown
            schemas[table] = pa.schema([f for f in schema if f.name != "ds"] + [pa.field("ds", pa.string())])
        columns = self.data.types.query(schemas, TEMPLATE.sub("2000-01-01", query.query))
        return unknown if columns is None else [(c, t) for c, t in columns if c != "ds"]


def feature_type(
    operation: str,
    params: Mapping[str, Any],
    input_type: pa.DataType | None,
    bucket: str | None = None,
    element_wise: bool = False,
) -> pa.DataType | None:
    """The Arrow type of a feature of an input of ``input_type`` (None: unknown), as the engines write it.

    >>> feature_type("count", {}, pa.string()), feature_type("last_k", {"k": 2}, pa.int32())
    (DataType(int64), ListType(list<item: int32>))
    """
    if input_type is None:
        return None
    from gnomon.aggregation.registry import make_aggregator
    from gnomon.offline.engines.spark import arrow_aggregation_type, output_arrow_type

    try:
        aggregator = make_aggregator(
            operation,
            dict(params),
            arrow_aggregation_type(input_type),
            bucketed=bucket is not None,
            element_wise=element_wise,
        )
    except GnomonError:
        return None
    return output_arrow_type(aggregator.output_type, input_type, operation)


def derive_types(
    probe: TypeProbe, derivations: Sequence[Sequence[str]], base: Columns, raw: Columns
) -> Columns:
    """The typed feature columns after derivations (base columns are not repeated)."""
    names = derived_columns(derivations, [c for c, _ in raw])
    if not derivations:
        return list(raw)
    typed = dict(raw)
    derived = [(name, expr) for name, expr in derivations if name != "*"]
    if derived and all(t is not None for _, t in [*base, *raw]):
        fields = [pa.field(c, t) for c, t in [*base, *raw]]
        listed = [f"({expr}) AS {quote(name)}" for name, expr in derived]
        typed.update((name, kind) for name, kind, _ in probe.select(pa.schema(fields), listed))
    return [(name, typed.get(name)) for name in names]
