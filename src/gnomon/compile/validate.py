"""Whole-graph checks of a compiled plan against itself and the warehouse's schemas."""

from __future__ import annotations

import pyarrow.parquet as pq

from gnomon.compile.plan import GroupByPlan, JoinPlan, Plan, SourcePlan
from gnomon.compile.repo import LoadedRepo
from gnomon.compile.sql import referenced_columns
from gnomon.errors import DefinitionError, did_you_mean
from gnomon.offline.warehouse import Warehouse


def table_columns(warehouse: Warehouse, table: str) -> list[str] | None:
    """Column names of a warehouse table (from its newest partition), None if it has no data yet."""
    files = warehouse.partition_files(table)
    if not files:
        return None
    return [c for c in pq.read_schema(files[-1]).names if c != "ds"] + ["ds"]


def source_columns(source: SourcePlan, plan: Plan, warehouse: Warehouse) -> list[str] | None:
    """The columns a source yields after its Query (None when unknown before any data exists)."""
    if source.selects is not None:
        return [*source.selects, "ts"]
    if source.kind == "join" and source.upstream_join in plan.joins:
        return None
    return table_columns(warehouse, source.table)


def check_source(owner: str, source: SourcePlan, warehouse: Warehouse, file: str | None) -> None:
    columns = table_columns(warehouse, source.table) if source.kind != "join" else None
    if columns is None:
        return
    expressions = [*(source.selects or {}).values(), *source.wheres]
    if source.kind == "events" or source.time_column in columns:
        expressions.append(source.time_column)
    for expression in expressions:
        for column in sorted(referenced_columns(expression)):
            if column not in columns:
                raise DefinitionError(
                    f"the expression {expression!r} reads column {column!r}, which table {source.table!r} does "
                    f"not have. Available columns: {', '.join(columns)}." + did_you_mean(column, columns),
                    obj=owner, field="sources", fix="correct the column name in the Query", file=file)


def check_derivations(owner: str, derivations: list[list[str]], available: list[str], file: str | None) -> None:
    known = list(available)
    for name, expression in derivations:
        if name == "*":
            continue
        for column in sorted(referenced_columns(expression)):
            if column not in known:
                raise DefinitionError(
                    f"derivation {name!r} reads {column!r}, which is not an output column."
                    + did_you_mean(column, known) + f" Available: {', '.join(known)}.",
                    obj=owner, field="derivations", fix="use one of the available column names", file=file)
        known.append(name)


def check_group_by(plan: GroupByPlan, warehouse: Warehouse, file: str | None) -> None:
    owner = f"GroupBy({plan.name!r})"
    for source in plan.sources:
        check_source(owner, source, warehouse, file)
        if source.selects is None:
            columns = table_columns(warehouse, source.table)
            needed = [*plan.keys, *(f.input_column for f in plan.features), *(f.bucket for f in plan.features if f.bucket)]
            for column in needed if columns is not None else ():
                if column not in columns:  # type: ignore[operator]
                    raise DefinitionError(f"table {source.table!r} has no column {column!r}. Available: "
                                          f"{', '.join(columns)}." + did_you_mean(column, columns),  # type: ignore[arg-type]
                                          obj=owner, field="sources", fix="select it in the Query", file=file)
    check_derivations(owner, plan.derivations, [*plan.keys, *plan.raw_columns], file)
    seen: set[str] = set()
    for feature in plan.features:
        if feature.name in seen:
            raise DefinitionError(f"two aggregations produce the column {feature.name!r}", obj=owner,
                                  field="aggregations", fix="remove the duplicate aggregation", file=file)
        seen.add(feature.name)


def join_feature_columns(join: JoinPlan, plan: Plan) -> list[str]:
    return [part.column_prefix + column for part in join.parts
            for column in group_by_output_columns(plan.group_bys[part.group_by])]


def group_by_output_columns(group_by: GroupByPlan) -> list[str]:
    """Feature columns a GroupBy contributes (after its own derivations)."""
    derived = [name for name, _ in group_by.derivations if name != "*"]
    if not group_by.derivations:
        return group_by.raw_columns
    keep_raw = any(name == "*" for name, _ in group_by.derivations)
    return [*(group_by.raw_columns if keep_raw else []), *derived]


def check_join(join: JoinPlan, plan: Plan, warehouse: Warehouse, file: str | None) -> None:
    owner = f"Join({join.name!r})"
    check_source(owner, join.left, warehouse, file)
    left_columns = source_columns(join.left, plan, warehouse)
    seen: dict[str, str] = {}
    for part in join.parts:
        if part.group_by not in plan.group_bys:
            raise DefinitionError(f"uses GroupBy {part.group_by!r}, which is not in the repo", obj=owner,
                                  field="right_parts", file=file)
        for key, column in part.key_columns.items():
            if left_columns is not None and column not in left_columns:
                raise DefinitionError(
                    f"GroupBy {part.group_by!r} needs key {key!r} from left column {column!r}, which the left "
                    f"does not have (it has {', '.join(left_columns)})." + did_you_mean(column, left_columns),
                    obj=owner, field="right_parts", fix=f"select {column!r} on the left or set key_mapping", file=file)
        for column in group_by_output_columns(plan.group_bys[part.group_by]):
            full = part.column_prefix + column
            if full in seen:
                raise DefinitionError(f"two parts produce the column {full!r} ({seen[full]} and {part.group_by})",
                                      obj=owner, field="right_parts", fix="give one JoinPart a prefix", file=file)
            seen[full] = part.group_by
    available = [*(left_columns or []), *seen]
    if left_columns is not None:
        check_derivations(owner, join.derivations, available, file)


def validate(plan: Plan, loaded: LoadedRepo, warehouse: Warehouse) -> None:
    """Raise DefinitionError on the first problem, naming file, object, field and fix."""
    tables: dict[str, str] = {}
    for name in plan.names():
        node = plan.group_bys.get(name) or plan.joins.get(name) or plan.staging_queries[name]
        if node.output_table in tables:
            raise DefinitionError(f"{name!r} and {tables[node.output_table]!r} both write {node.output_table!r}",
                                  obj=name, field="name", fix="rename one of them", file=loaded.files.get(name))
        tables[node.output_table] = name
    for name, group_by in plan.group_bys.items():
        check_group_by(group_by, warehouse, loaded.files.get(name))
    for name, join in plan.joins.items():
        check_join(join, plan, warehouse, loaded.files.get(name))
