"""The compiled plan: small, serialisable, engine-neutral. Engines execute plans, not definitions."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from gnomon.compile.repo import LoadedRepo
from gnomon.compile.sql import transpile
from gnomon.definitions import EntitySource, EventSource, GroupBy, Join, JoinSource, StagingQuery
from gnomon.definitions.group_by import Accuracy
from gnomon.definitions.windows import hop_millis

PLAN_VERSION = 1
DEFAULT_NAMESPACE = "features"


def output_table(name: str, namespace: str | None) -> str:
    """``a.b.c`` in namespace ``ns`` backfills into ``ns.a_b_c`` (SPEC §6)."""
    return f"{namespace or DEFAULT_NAMESPACE}.{name.replace('.', '_')}"


@dataclass(frozen=True)
class SourcePlan:
    """A source read through its Query, expressions already in the engine's dialect (DuckDB)."""

    kind: str  # "events" | "entities" | "join"
    table: str  # events table, snapshot table, or the upstream Join's output table
    selects: dict[str, str] | None
    wheres: list[str]
    time_column: str
    topic: str | None = None
    mutation_table: str | None = None
    mutation_topic: str | None = None
    cumulative: bool = False
    start_partition: str | None = None
    end_partition: str | None = None
    upstream_join: str | None = None
    mutation_time_column: str = "mutation_ts"
    reversal_column: str = "is_before"


@dataclass(frozen=True)
class FeaturePlan:
    """One output column of a GroupBy: an operation over an input, a window and maybe a bucket."""

    name: str
    input_column: str
    operation: str
    params: dict[str, Any]
    window_ms: int | None
    hop_ms: int | None
    bucket: str | None = None
    element_wise: bool = False


@dataclass(frozen=True)
class Meta:
    """What a definition says about itself for people: its owner, tags, description and the module
    that defines it. Shown by ``gnomon compile`` and the UI; never part of a fingerprint
    (`without_meta`), so editing it recomputes and re-uploads nothing."""

    owner: str | None = None
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    defined_in: str | None = None

    @classmethod
    def of(cls, definition: GroupBy | Join | StagingQuery) -> Meta:
        return cls(
            owner=definition.owner,
            tags=list(definition.tags),
            description=definition.description,
            defined_in=definition.defined_in,
        )


def without_meta(node: GroupByPlan | JoinPlan | StagingQueryPlan) -> dict[str, Any]:
    """``asdict(node)`` less its `Meta`: what a plan object's fingerprints hash (the runner's task
    fingerprints, the fetch log's ``join_fingerprint``)."""
    body = asdict(node)
    body.pop("meta", None)
    return body


@dataclass(frozen=True)
class GroupByPlan:
    name: str
    output_table: str
    keys: list[str]
    sources: list[SourcePlan]
    features: list[FeaturePlan]
    value_columns: list[str]  # GroupBys without aggregations: the row's columns
    accuracy: str
    online: bool
    derivations: list[list[str]]  # [name, expression]; ["*", "*"] keeps raw columns
    backfill_start_date: str | None = None
    meta: Meta = field(default_factory=Meta)

    @property
    def max_window_ms(self) -> int | None:
        """The longest window plus its hop (how far back a query reads), None if any is unbounded."""
        spans = [(f.window_ms or 0) + (f.hop_ms or 0) for f in self.features]
        if not self.features or any(f.window_ms is None for f in self.features):
            return None
        return max(spans)

    @property
    def raw_columns(self) -> list[str]:
        return [f.name for f in self.features] if self.features else list(self.value_columns)

    def semantics(self) -> dict[str, Any]:
        """What the stored state of a GroupBy depends on besides its features: its sources (tables,
        topics, Queries), keys, looked-up columns and accuracy — not its name, output namespace,
        derivations or online flag."""
        return {
            "sources": [asdict(s) for s in self.sources],
            "keys": list(self.keys),
            "value_columns": list(self.value_columns),
            "accuracy": self.accuracy,
        }

    @property
    def fingerprint(self) -> str:
        """A short, stable hash of `semantics` (16 hex digits)."""
        return _digest(self.semantics())

    def feature_ids(self) -> list[str]:
        """Per feature, a hash of what its value is (input, operation, parameters, window, bucket),
        not of its name or position: an upload serves any later definition whose features it holds."""
        return [_digest({k: v for k, v in asdict(f).items() if k != "name"}) for f in self.features]


def _digest(value: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class JoinPartPlan:
    group_by: str
    key_columns: dict[str, str]  # GroupBy key -> left column
    column_prefix: str  # prepended to each GroupBy output column


@dataclass(frozen=True)
class JoinPlan:
    name: str
    output_table: str
    left: SourcePlan
    parts: list[JoinPartPlan]
    derivations: list[list[str]]
    online: bool
    meta: Meta = field(default_factory=Meta)


@dataclass(frozen=True)
class StagingQueryPlan:
    name: str
    output_table: str
    query: str
    start_partition: str
    meta: Meta = field(default_factory=Meta)


@dataclass
class Plan:
    """Everything a repo computes, by name."""

    dialect: str
    group_bys: dict[str, GroupByPlan] = field(default_factory=dict)
    joins: dict[str, JoinPlan] = field(default_factory=dict)
    staging_queries: dict[str, StagingQueryPlan] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted([*self.group_bys, *self.joins, *self.staging_queries])

    def to_json(self) -> str:
        """Stable, diff-friendly JSON (sorted keys, one value per line)."""
        body = {
            "version": PLAN_VERSION,
            "dialect": self.dialect,
            "group_bys": {k: asdict(v) for k, v in self.group_bys.items()},
            "joins": {k: asdict(v) for k, v in self.joins.items()},
            "staging_queries": {k: asdict(v) for k, v in self.staging_queries.items()},
        }
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Plan:
        body = json.loads(text)
        plan = cls(dialect=body["dialect"])
        for name, gb in body["group_bys"].items():
            gb["sources"] = [SourcePlan(**s) for s in gb["sources"]]
            gb["features"] = [FeaturePlan(**f) for f in gb["features"]]
            gb["meta"] = Meta(**gb.get("meta", {}))  # plans written before Meta have none
            plan.group_bys[name] = GroupByPlan(**gb)
        for name, join in body["joins"].items():
            join["left"] = SourcePlan(**join["left"])
            join["parts"] = [JoinPartPlan(**p) for p in join["parts"]]
            join["meta"] = Meta(**join.get("meta", {}))
            plan.joins[name] = JoinPlan(**join)
        for name, sq in body["staging_queries"].items():
            sq["meta"] = Meta(**sq.get("meta", {}))
            plan.staging_queries[name] = StagingQueryPlan(**sq)
        return plan


def source_plan(
    source: EventSource | EntitySource | JoinSource, loaded: LoadedRepo, dialect: str
) -> SourcePlan:
    query = source.query
    selects = (
        None
        if query.selects is None
        else {name: transpile(expr, dialect) for name, expr in query.selects.items()}
    )
    common: dict[str, Any] = dict(
        selects=selects,
        wheres=[transpile(w, dialect) for w in query.wheres],
        time_column=transpile(query.time_column, dialect),
        start_partition=query.start_partition,
        end_partition=query.end_partition,
        mutation_time_column=query.mutation_time_column,
        reversal_column=query.reversal_column,
    )
    if isinstance(source, EventSource):
        return SourcePlan(
            kind="events", table=source.table, topic=source.topic, cumulative=source.cumulative, **common
        )
    if isinstance(source, EntitySource):
        return SourcePlan(
            kind="entities",
            table=source.snapshot_table,
            mutation_table=source.mutation_table,
            mutation_topic=source.mutation_topic,
            **common,
        )
    upstream = loaded.name_of(source.join)
    # online, the rows of a JoinSource are the parent's left events enriched with its features
    left_topic = source.join.left.topic if isinstance(source.join.left, EventSource) else None
    return SourcePlan(
        kind="join",
        table=output_table(upstream, source.join.output_namespace),
        topic=left_topic,
        upstream_join=upstream,
        **common,
    )


def group_by_plan(name: str, group_by: GroupBy, loaded: LoadedRepo, dialect: str) -> GroupByPlan:
    features = []
    for agg in group_by.aggregations or ():
        op = agg.operation.to_json()
        for window, bucket, column in agg.output_columns():
            window_ms = window.millis if window is not None else None
            features.append(
                FeaturePlan(
                    name=column,
                    input_column=agg.input_column,
                    operation=op["kind"],
                    params=op["params"],
                    window_ms=window_ms,
                    hop_ms=hop_millis(window_ms) if window_ms is not None else None,
                    bucket=bucket,
                    element_wise=agg.element_wise,
                )
            )
    return GroupByPlan(
        name=name,
        output_table=output_table(name, group_by.output_namespace),
        keys=list(group_by.keys),
        sources=[source_plan(s, loaded, dialect) for s in group_by.sources],
        features=features,
        value_columns=group_by.output_columns() if not group_by.aggregations else [],
        accuracy=group_by.effective_accuracy.value,
        online=group_by.online,
        derivations=[
            [d.name, transpile(d.expression, dialect) if not d.is_star else "*"] for d in group_by.derivations
        ],
        backfill_start_date=group_by.backfill_start_date,
        meta=Meta.of(group_by),
    )


def join_plan(name: str, join: Join, loaded: LoadedRepo, dialect: str) -> JoinPlan:
    parts = []
    for part in join.right_parts:
        group_by_name = loaded.name_of(part.group_by)
        prefix = f"{part.prefix}_" if part.prefix else ""
        parts.append(
            JoinPartPlan(
                group_by=group_by_name,
                key_columns={key: part.left_column_for(key) for key in part.group_by.keys},
                column_prefix=f"{prefix}{group_by_name.replace('.', '_')}_",
            )
        )
    return JoinPlan(
        name=name,
        output_table=output_table(name, join.output_namespace),
        left=source_plan(join.left, loaded, dialect),
        parts=parts,
        derivations=[
            [d.name, transpile(d.expression, dialect) if not d.is_star else "*"] for d in join.derivations
        ],
        online=join.online,
        meta=Meta.of(join),
    )


def build_plan(loaded: LoadedRepo, dialect: str = "duckdb") -> Plan:
    """Compile every loaded definition; GroupBys used only inside Joins must be named."""
    plan = Plan(dialect=dialect)
    for name, obj in sorted(loaded.objects.items()):
        if isinstance(obj, GroupBy):
            plan.group_bys[name] = group_by_plan(name, obj, loaded, dialect)
        elif isinstance(obj, Join):
            plan.joins[name] = join_plan(name, obj, loaded, dialect)
        elif isinstance(obj, StagingQuery):
            plan.staging_queries[name] = StagingQueryPlan(
                name=name,
                output_table=output_table(name, obj.output_namespace),
                query=transpile_statement(obj.query, dialect),
                start_partition=obj.start_partition,
                meta=Meta.of(obj),
            )
    return plan


def transpile_statement(sql: str, dialect: str) -> str:
    """A whole query; templates ({{ … }}) are left alone (filled in at run time)."""
    if dialect == "duckdb":
        return sql
    import re

    import sqlglot

    holes: list[str] = []

    def hide(match: re.Match[str]) -> str:
        holes.append(match.group(0))
        return f"GNOMONTEMPLATE{len(holes) - 1}X"

    hidden = re.sub(r"\{\{.*?\}\}", hide, sql)
    out = sqlglot.transpile(hidden, read=dialect, write="duckdb")[0]
    for index, hole in enumerate(holes):
        out = out.replace(f"GNOMONTEMPLATE{index}X", hole)
    return out


__all__ = [
    "Accuracy",
    "FeaturePlan",
    "GroupByPlan",
    "JoinPartPlan",
    "JoinPlan",
    "Meta",
    "Plan",
    "SourcePlan",
    "StagingQueryPlan",
    "build_plan",
    "output_table",
    "without_meta",
]
