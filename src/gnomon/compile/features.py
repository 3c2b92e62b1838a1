"""A GroupBy's features bound to aggregators, and the columns a row of its sources carries.

Shared by the online path (upload, stream worker, fetcher) and the engines that fold rows with the IR
library (Spark), so every path folds a row into a feature the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gnomon.aggregation import Aggregator, make_aggregator
from gnomon.compile.plan import FeaturePlan, GroupByPlan

#: what a row of an entity source carries besides its columns: the mutation that wrote it (null for
#: snapshot rows), whether it removes a row, and the identity of the raw row it inserts or removes
MUTATION_COLUMNS = ("__mutation_ts", "__is_before", "__row_id")
#: the index (in ``GroupBy.sources``) of the source a streamed event row came from
SOURCE_COLUMN = "__source"


def keeps_rows(group_by: GroupByPlan) -> bool:
    """Whether the online state of a GroupBy is its rows rather than tile IRs: entity sources (a
    delete must find its row, for every operation) and attribute lookups (the latest row)."""
    return not group_by.features or any(s.kind == "entities" for s in group_by.sources)


def row_columns(group_by: GroupByPlan) -> list[str]:
    """The columns a streamed row keeps: every aggregation input and bucket (or, for a lookup, every
    looked-up column), sorted; then `MUTATION_COLUMNS` for entity sources, or `SOURCE_COLUMN` for
    the events of a GroupBy with several sources."""
    if not group_by.features:
        columns = set(group_by.value_columns)
    else:
        columns = {f.input_column for f in group_by.features} | {
            f.bucket for f in group_by.features if f.bucket
        }
    entities = any(s.kind == "entities" for s in group_by.sources)
    if entities:
        return sorted(columns) + list(MUTATION_COLUMNS)
    # rows of several sources tie on ts in source order, as offline: the row carries its source's index
    return sorted(columns) + ([SOURCE_COLUMN] if len(group_by.sources) > 1 and group_by.features else [])


@dataclass
class OnlineFeature:
    """One output column: its plan, aggregator, and where its inputs sit in a stream row."""

    plan: FeaturePlan
    aggregator: Aggregator
    input_index: int
    bucket_index: int | None

    def accumulate(self, ir: Any, values: list[Any], ts: int, seq: int) -> Any:
        value = values[self.input_index]
        if self.bucket_index is None:
            return self.aggregator.accumulate(ir, value, ts, seq)
        bucket = values[self.bucket_index]
        if bucket is None:
            return ir
        return self.aggregator.accumulate(ir, value, ts, seq, bucket)  # type: ignore[call-arg]


def online_features(group_by: GroupByPlan, input_types: dict[str, str]) -> list[OnlineFeature]:
    columns = row_columns(group_by)
    features = []
    for feature in group_by.features:
        aggregator = make_aggregator(
            feature.operation,
            feature.params,
            input_types[feature.input_column],
            bucketed=feature.bucket is not None,
            element_wise=feature.element_wise,
        )
        features.append(
            OnlineFeature(
                feature,
                aggregator,
                columns.index(feature.input_column),
                columns.index(feature.bucket) if feature.bucket else None,
            )
        )
    return features


def stream_id(group_by: GroupByPlan) -> str:
    """The name a GroupBy's stream state is kept under: its name and a hash of its semantics and
    stream-row columns, so rows written for one definition are never read by another (a changed
    definition streams into new rows, from the start of its topics, under a new consumer group)."""
    import hashlib

    text = group_by.fingerprint + "|" + ",".join(row_columns(group_by))
    return f"{group_by.name}@{hashlib.sha256(text.encode()).hexdigest()[:12]}"
