"""Whole-graph checks of a compiled plan against itself and the warehouse's schemas."""

from __future__ import annotations

from gnomon.compile.plan import GroupByPlan, JoinPlan, Plan, SourcePlan
from gnomon.compile.repo import LoadedRepo
from gnomon.compile.sql import referenced_columns
from gnomon.errors import DefinitionError, did_you_mean
from gnomon.offline.warehouse import Warehouse


def table_columns(warehouse: Warehouse, table: str) -> list[str] | None:
    """Column names of a warehouse table (from its newest partition), None if it has no data yet."""
    schema = warehouse.latest_schema(table)
    if schema is None:
        return None
    return [c for c in schema.names if c != "ds"] + ["ds"]


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
                    obj=owner,
                    field="sources",
                    fix="correct the column name in the Query",
                    file=file,
                )


def check_derivations(
    owner: str, derivations: list[list[str]], available: list[str], file: str | None
) -> None:
    known = list(available)
    for name, expression in derivations:
        if name == "*":
            continue
        for column in sorted(referenced_columns(expression)):
            if column not in known:
                raise DefinitionError(
                    f"derivation {name!r} reads {column!r}, which is not an output column."
                    + did_you_mean(column, known)
                    + f" Available: {', '.join(known)}.",
                    obj=owner,
                    field="derivations",
                    fix="use one of the available column names",
                    file=file,
                )
        known.append(name)


def check_group_by(plan: GroupByPlan, warehouse: Warehouse, file: str | None) -> None:
    owner = f"GroupBy({plan.name!r})"
    for source in plan.sources:
        check_source(owner, source, warehouse, file)
        if source.selects is None:
            columns = table_columns(warehouse, source.table)
            needed = [
                *plan.keys,
                *(f.input_column for f in plan.features),
                *(f.bucket for f in plan.features if f.bucket),
            ]
            for column in needed if columns is not None else ():
                if column not in columns:  # type: ignore[operator]
                    raise DefinitionError(
                        f"table {source.table!r} has no column {column!r}. Available: "
                        f"{', '.join(columns)}." + did_you_mean(column, columns),  # type: ignore[arg-type]
                        obj=owner,
                        field="sources",
                        fix="select it in the Query",
                        file=file,
                    )
    check_derivations(owner, plan.derivations, [*plan.keys, *plan.raw_columns], file)
    seen: set[str] = set()
    for feature in plan.features:
        if feature.name in seen:
            raise DefinitionError(
                f"two aggregations produce the column {feature.name!r}",
                obj=owner,
                field="aggregations",
                fix="remove the duplicate aggregation",
                file=file,
            )
        seen.add(feature.name)


def join_feature_columns(join: JoinPlan, plan: Plan) -> list[str]:
    return [
        part.column_prefix + column
        for part in join.parts
        for column in group_by_output_columns(plan.group_bys[part.group_by])
    ]


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
            raise DefinitionError(
                f"uses GroupBy {part.group_by!r}, which is not in the repo",
                obj=owner,
                field="right_parts",
                file=file,
            )
        for key, column in part.key_columns.items():
            if left_columns is not None and column not in left_columns:
                raise DefinitionError(
                    f"GroupBy {part.group_by!r} needs key {key!r} from left column {column!r}, which the left "
                    f"does not have (it has {', '.join(left_columns)})." + did_you_mean(column, left_columns),
                    obj=owner,
                    field="right_parts",
                    fix=f"select {column!r} on the left or set key_mapping",
                    file=file,
                )
        for column in group_by_output_columns(plan.group_bys[part.group_by]):
            full = part.column_prefix + column
            if full in seen:
                raise DefinitionError(
                    f"two parts produce the column {full!r} ({seen[full]} and {part.group_by})",
                    obj=owner,
                    field="right_parts",
                    fix="give one JoinPart a prefix",
                    file=file,
                )
            seen[full] = part.group_by
    available = [*(left_columns or []), *seen]
    if left_columns is not None:
        check_derivations(owner, join.derivations, available, file)


# ------------------------------------------------------------------ chaining (JoinSource)


def join_output_columns(
    join: JoinPlan, plan: Plan, warehouse: Warehouse, _seen: frozenset[str] = frozenset()
) -> list[str] | None:
    """Every column of a Join's output table, as a JoinSource reads it (``ds`` included); None when the
    left's columns are not known yet (left ``selects=None`` over a table without data)."""
    if join.name in _seen:
        return None
    left = join.left
    left_columns: list[str] | None
    if left.selects is not None:
        left_columns = [c for c in left.selects if c != "ts"] + ["ts"]
    elif left.kind == "join" and left.upstream_join in plan.joins:
        left_columns = join_output_columns(
            plan.joins[left.upstream_join], plan, warehouse, _seen | {join.name}
        )
    else:
        left_columns = table_columns(warehouse, left.table)
    if left_columns is None or any(p.group_by not in plan.group_bys for p in join.parts):
        return None
    features = join_feature_columns(join, plan)
    if join.derivations:
        keep_raw = any(name == "*" for name, _ in join.derivations)
        features = [*(features if keep_raw else []), *(name for name, _ in join.derivations if name != "*")]
    columns: list[str] = []
    for column in [*left_columns, *features, "ds"]:
        if column not in columns:
            columns.append(column)
    return columns


def check_chained_source(
    owner: str,
    index: int,
    source: SourcePlan,
    needed: list[str],
    plan: Plan,
    warehouse: Warehouse,
    file: str | None,
    field: str = "sources",
) -> None:
    """A JoinSource's Query (and, with ``selects=None``, the ``needed`` columns) must only read columns the
    parent Join outputs."""
    where = "the left" if field == "left" else f"source {index}"
    parent = plan.joins.get(source.upstream_join or "")
    if parent is None:
        raise DefinitionError(
            f"{where} reads Join {source.upstream_join!r}, which is not in the repo",
            obj=owner,
            field=field,
            fix="define that Join at module level or give it a name=",
            file=file,
        )
    columns = join_output_columns(parent, plan, warehouse)
    if columns is None:
        return  # the parent's left columns are unknown until its left table has data
    expressions = [*(source.selects or {}).values(), *source.wheres, source.time_column]
    missing = [
        (column, f"the expression {expression!r} reads")
        for expression in expressions
        for column in sorted(referenced_columns(expression))
        if column not in columns
    ]
    if source.selects is None:
        missing += [(column, "it needs") for column in needed if column not in columns]
    if missing:
        column, how = missing[0]
        raise DefinitionError(
            f"{where} is a JoinSource over Join {parent.name!r}: {how} column {column!r}, which that Join "
            f"does not output (table {parent.output_table!r} has {', '.join(columns)})."
            + did_you_mean(column, columns),
            obj=owner,
            field=field,
            fix="read one of the parent Join's output columns: its left columns, its feature columns "
            "({prefix_}{group_by_name}_{feature}) or its derived columns",
            file=file,
        )


def check_chained_group_by(group_by: GroupByPlan, plan: Plan, warehouse: Warehouse, file: str | None) -> None:
    """A GroupBy over JoinSources: columns exist in the parent's output, and online needs the parent's left topic."""
    owner = f"GroupBy({group_by.name!r})"
    needed = [
        *group_by.keys,
        *(f.input_column for f in group_by.features),
        *(f.bucket for f in group_by.features if f.bucket),
    ]
    for index, source in enumerate(group_by.sources):
        if source.kind != "join":
            continue
        check_chained_source(owner, index, source, needed, plan, warehouse, file)
        parent = plan.joins[source.upstream_join]  # type: ignore[index]
        if group_by.online and parent.left.topic is None:
            raise DefinitionError(
                f"source {index} is a JoinSource over Join {parent.name!r} and the GroupBy is online, but the "
                "parent Join's left has no topic to stream from (online, chaining enriches the parent's left "
                "events with its features, then aggregates them)",
                obj=owner,
                field="online",
                fix=f"add topic=... to the left EventSource of Join {parent.name!r}, or set online=False",
                file=file,
            )


def check_chaining_cycles(plan: Plan, loaded: LoadedRepo) -> None:
    """No Join may read its own output: Join -> part GroupBy -> JoinSource -> ... -> the same Join."""

    def edges(node: tuple[str, str]) -> list[tuple[str, str]]:
        kind, name = node
        if kind == "GroupBy":
            group_by = plan.group_bys.get(name)
            return [
                ("Join", s.upstream_join)
                for s in (group_by.sources if group_by else [])
                if s.kind == "join" and s.upstream_join
            ]
        join = plan.joins.get(name)
        if join is None:
            return []
        found = [("GroupBy", p.group_by) for p in join.parts]
        if join.left.kind == "join" and join.left.upstream_join:
            found.append(("Join", join.left.upstream_join))
        return found

    done: set[tuple[str, str]] = set()

    def visit(node: tuple[str, str], path: list[tuple[str, str]]) -> None:
        if node in path:
            cycle = path[path.index(node) :] + [node]
            join = next(name for kind, name in cycle if kind == "Join")
            raise DefinitionError(
                "chaining cycle: "
                + " -> ".join(f"{kind} {name!r}" for kind, name in cycle)
                + f"; Join {join!r} would read its own output",
                obj=f"Join({join!r})",
                field="right_parts",
                fix="a Join cannot use (directly or through JoinSources) a GroupBy that reads that Join's output",
                file=loaded.files.get(join),
            )
        if node in done:
            return
        for target in edges(node):
            visit(target, [*path, node])
        done.add(node)

    for name in sorted(plan.joins):
        visit(("Join", name), [])


def validate(plan: Plan, loaded: LoadedRepo, warehouse: Warehouse) -> None:
    """Raise DefinitionError on the first problem, naming file, object, field and fix."""
    tables: dict[str, str] = {}
    for name in plan.names():
        node = plan.group_bys.get(name) or plan.joins.get(name) or plan.staging_queries[name]
        if node.output_table in tables:
            raise DefinitionError(
                f"{name!r} and {tables[node.output_table]!r} both write {node.output_table!r}",
                obj=name,
                field="name",
                fix="rename one of them",
                file=loaded.files.get(name),
            )
        tables[node.output_table] = name
    check_chaining_cycles(plan, loaded)
    for name, group_by in plan.group_bys.items():
        check_group_by(group_by, warehouse, loaded.files.get(name))
    for name, join in plan.joins.items():
        check_join(join, plan, warehouse, loaded.files.get(name))
    for name, group_by in plan.group_bys.items():
        check_chained_group_by(group_by, plan, warehouse, loaded.files.get(name))
    for name, join in plan.joins.items():
        if join.left.kind == "join":
            check_chained_source(
                f"Join({name!r})", 0, join.left, [], plan, warehouse, loaded.files.get(name), field="left"
            )
