"""A readable summary of a compiled plan, for `gnomon compile`."""

from __future__ import annotations

from gnomon.compile.plan import Meta, Plan
from gnomon.compile.validate import group_by_output_columns, join_feature_columns


def _window(ms: int | None) -> str:
    if ms is None:
        return "all history"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _meta_lines(meta: Meta) -> list[str]:
    """``owner … · tags …`` and the description, when the definition sets them."""
    about = []
    if meta.owner:
        about.append(f"owner {meta.owner}")
    if meta.tags:
        about.append(f"tags {', '.join(meta.tags)}")
    lines = [f"  {' · '.join(about)}"] if about else []
    if meta.description:
        lines.append(f"  {meta.description}")
    return lines


def summarize(plan: Plan) -> str:
    """One block per GroupBy, Join and StagingQuery: what it reads, computes and writes."""
    lines = []
    for name, group_by in plan.group_bys.items():
        tables = ", ".join(t for s in group_by.sources for t in (s.table, s.mutation_table) if t)
        topics = ", ".join(t for s in group_by.sources for t in (s.topic, s.mutation_topic) if t)
        lines.append(
            f"GroupBy {name}  ({group_by.accuracy}, keys: {', '.join(group_by.keys)}"
            f"{', online' if group_by.online else ''})"
        )
        lines.extend(_meta_lines(group_by.meta))
        lines.append(f"  reads  {tables}" + (f"; streams {topics}" if topics else ""))
        lines.append(f"  writes {group_by.output_table}")
        for feature in group_by.features:
            bucket = f", by {feature.bucket}" if feature.bucket else ""
            lines.append(
                f"    {feature.name:<40} {feature.operation}({feature.input_column}) over "
                f"{_window(feature.window_ms)}{bucket}"
            )
        for column in group_by.value_columns:
            lines.append(f"    {column:<40} value of the row")
        for derived, expression in group_by.derivations:
            if derived != "*":
                lines.append(f"    {derived:<40} = {expression}")
    for name, join in plan.joins.items():
        lines.append(f"Join {name}  (left: {join.left.table}{', online' if join.online else ''})")
        lines.extend(_meta_lines(join.meta))
        lines.append(f"  writes {join.output_table}")
        for part in join.parts:
            keys = ", ".join(
                f"{column}→{key}" if column != key else key for key, column in part.key_columns.items()
            )
            lines.append(
                f"    part {part.group_by} on {keys}: "
                f"{len(group_by_output_columns(plan.group_bys[part.group_by]))} column(s)"
            )
        derived_names = [d for d, _ in join.derivations if d != "*"]
        total = (
            len(join_feature_columns(join, plan))
            if not join.derivations or any(d == "*" for d, _ in join.derivations)
            else 0
        )
        lines.append(
            f"    {total + len(derived_names)} feature column(s)"
            f"{' incl. derived: ' + ', '.join(derived_names) if derived_names else ''}"
        )
    for name, staging in plan.staging_queries.items():
        lines.append(f"StagingQuery {name}  (from {staging.start_partition})")
        lines.extend(_meta_lines(staging.meta))
        lines.append(f"  writes {staging.output_table}")
    counts = (
        f"{len(plan.group_bys)} GroupBy, {len(plan.joins)} Join, {len(plan.staging_queries)} StagingQuery"
    )
    return "\n".join([*lines, "", counts])
