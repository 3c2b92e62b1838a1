"""The SQL an object's page shows: what the engine runs for it, labelled (see `gnomon.ui.api`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from gnomon.compile.plan import GroupByPlan, JoinPlan, SourcePlan, StagingQueryPlan
from gnomon.compile.sql import quote
from gnomon.timeline import DAY_MS
from gnomon.ui.columns import PlanSchemas, group_by_features

if TYPE_CHECKING:
    from gnomon.ui.api import Node, UiData


def source_sql(source: SourcePlan) -> str:
    """A source's Query as the engine runs it over the rows of each partition it reads.

    >>> print(source_sql(SourcePlan("events", "act.views", {"user": "user_id"}, ["user_id IS NOT NULL"], "ts")))
    SELECT user_id AS "user", CAST((ts) AS BIGINT) AS ts
    FROM act.views
    WHERE (user_id IS NOT NULL)
    """
    if source.selects is not None:
        columns = [f"{expr} AS {quote(name)}" for name, expr in source.selects.items() if name != "ts"]
    else:
        columns = ["*"]
    columns.append(f"CAST(({source.time_column}) AS BIGINT) AS ts")
    lines = [f"SELECT {', '.join(columns)}", f"FROM {source.table}"]
    if source.wheres:
        lines.append("WHERE " + " AND ".join(f"({w})" for w in source.wheres))
    notes = []
    if source.kind == "entities":
        notes.append(f"-- the rows of snapshot {source.table} (partition: the day before q)")
        if source.mutation_table:
            notes.append(f"-- replayed with the mutations of {source.mutation_table} before q")
    if source.kind == "join":
        notes.append(f"-- the output rows of Join {source.upstream_join} (JoinSource)")
    if source.cumulative:
        notes.append("-- cumulative: only the latest partition is read")
    return "\n".join([*notes, *lines])


def aggregation_sql(group_by: GroupByPlan, input_types: Mapping[str, str]) -> str:
    """The GroupBy's aggregates over the events of each key before the time asked for (``__q``), as
    the DuckDB engine's range join computes them (``input_types``: DuckDB types of the inputs)."""
    from gnomon.offline.engines.duckdb import window_start_sql
    from gnomon.offline.engines.sql_forms import sql_form

    keys = ", ".join(quote(k) for k in group_by.keys)
    if not group_by.features:
        values = ", ".join(
            f"last({quote(c)} ORDER BY ts, __seq) AS {quote(c)}" for c in group_by.value_columns
        )
        return f"SELECT {keys}, {values}\nFROM source_rows\nWHERE ts < __q\nGROUP BY {keys}, __q"
    lines = []
    for feature in group_by.features:
        column = quote(feature.input_column)
        condition = f"{column} IS NOT NULL"
        if feature.window_ms is not None and feature.hop_ms:
            condition += f" AND ts >= {window_start_sql('__q', feature.window_ms, feature.hop_ms)}"
        form = sql_form(
            feature, column, input_types.get(feature.input_column, "DOUBLE"), f" FILTER (WHERE {condition})"
        )
        if form is None:
            form = f"-- {feature.operation.upper()} of {feature.input_column}: folded by the aggregation IR\n  NULL"
        if feature.bucket:
            form += f"  -- per value of {feature.bucket}"
        lines.append(f"  {form} AS {quote(feature.name)}")
    return (
        f"SELECT {keys}, __q,\n"
        + ",\n".join(lines)
        + f"\nFROM source_rows\nWHERE ts < __q\nGROUP BY {keys}, __q"
    )


def derivations_sql(
    derivations: Sequence[Sequence[str]], base: Sequence[str], raw: Sequence[str]
) -> str | None:
    """The SELECT applying derivations over the raw columns (None without derivations)."""
    if not derivations:
        return None
    keep = any(name == "*" for name, _ in derivations)
    columns = [quote(c) for c in base] + ([quote(c) for c in raw] if keep else [])
    columns += [f"({expr}) AS {quote(name)}" for name, expr in derivations if name != "*"]
    return "SELECT " + ",\n       ".join(columns) + "\nFROM raw_values"


def _query_time_sql(join: JoinPlan, group_by: GroupByPlan) -> str:
    if join.left.kind == "entities":
        return "((CAST(ds AS DATE) - DATE '1970-01-01' + 1) * 86400000)::BIGINT"
    if group_by.accuracy == "snapshot":
        return f"(ts - (((ts % {DAY_MS}) + {DAY_MS}) % {DAY_MS}))"
    return "ts"


def compiled_sql(node: Node, data: UiData) -> dict[str, str]:
    """Label -> SQL of what the engine runs for an object (see the module docstring for the labels)."""
    if isinstance(node, StagingQueryPlan):
        return {"query": node.query}
    sql: dict[str, str] = {}
    if isinstance(node, GroupByPlan):
        for index, source in enumerate(node.sources, 1):
            sql[f"source {index}: {source.table}"] = source_sql(source)
        sql["aggregation"] = aggregation_sql(node, PlanSchemas(data).input_duck_types(node))
        derived = derivations_sql(node.derivations, node.keys, node.raw_columns)
    else:
        sql[f"left: {node.left.table}"] = source_sql(node.left)
        for index, part in enumerate(node.parts, 1):
            group_by = data.plan.group_bys[part.group_by]
            keys = ", ".join(f"{quote(column)} AS {quote(key)}" for key, column in part.key_columns.items())
            sql[f"part {index}: {part.group_by}"] = (
                f"-- the values of GroupBy {part.group_by} at __q, as columns {part.column_prefix}*\n"
                f"SELECT {keys}, {_query_time_sql(node, group_by)} AS __q\nFROM left_rows"
            )
        raw = [
            part.column_prefix + c
            for part in node.parts
            for c in group_by_features(data.plan.group_bys[part.group_by])
        ]
        left = list((node.left.selects or {}).keys())
        derived = derivations_sql(node.derivations, [c for c in left if c != "ts"] + ["ts"], raw)
    if derived is not None:
        sql["derivations"] = derived
    return sql
