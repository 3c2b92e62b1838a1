"""Sources: events (append-only logs), entities (daily snapshots + mutations), other Joins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gnomon.definitions.query import Query
from gnomon.errors import DefinitionError

if TYPE_CHECKING:
    from gnomon.definitions.join import Join


def _check_table(value: Any, obj: str, fld: str, required: bool = True) -> None:
    if value is None and not required:
        return
    if (
        not isinstance(value, str)
        or value.count(".") != 1
        or not all(p.isidentifier() for p in value.split("."))
    ):
        raise DefinitionError(
            f"{value!r} is not a warehouse table name",
            obj=obj,
            field=fld,
            fix='write "namespace.table", e.g. "user_activity.user_views"',
        )


def _check_query(query: Any, obj: str) -> None:
    if not isinstance(query, Query):
        raise DefinitionError(
            f"query must be a gnomon.Query, got {type(query).__name__}",
            obj=obj,
            field="query",
            fix='write query=Query(selects={...}, time_column="ts")',
        )


@dataclass(frozen=True)
class EventSource:
    """An append-only event log: a ``ds``-partitioned table, and optionally a stream topic."""

    table: str
    topic: str | None = None
    query: Query = None  # type: ignore[assignment]
    cumulative: bool = False

    def __post_init__(self) -> None:
        _check_table(self.table, "EventSource", "table")
        _check_query(self.query, "EventSource")
        if self.topic is not None and (not isinstance(self.topic, str) or not self.topic):
            raise DefinitionError("topic must be a non-empty string", obj="EventSource", field="topic")

    @property
    def has_stream(self) -> bool:
        return self.topic is not None


@dataclass(frozen=True)
class EntitySource:
    """A table snapshotted daily (partition D = the table at the end of D), plus optional mutations."""

    snapshot_table: str
    mutation_table: str | None = None
    mutation_topic: str | None = None
    query: Query = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _check_table(self.snapshot_table, "EntitySource", "snapshot_table")
        _check_table(self.mutation_table, "EntitySource", "mutation_table", required=False)
        _check_query(self.query, "EntitySource")
        if self.mutation_topic is not None and self.mutation_table is None:
            raise DefinitionError(
                "a mutation_topic needs a mutation_table for backfills",
                obj="EntitySource",
                field="mutation_table",
                fix='add mutation_table="ns.table_mutations"',
            )

    @property
    def has_stream(self) -> bool:
        return self.mutation_topic is not None


@dataclass(frozen=True)
class JoinSource:
    """The output rows of another Join, read as events (chaining)."""

    join: Join
    query: Query = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        from gnomon.definitions.join import Join

        if not isinstance(self.join, Join):
            raise DefinitionError("join must be a gnomon.Join", obj="JoinSource", field="join")
        _check_query(self.query, "JoinSource")

    @property
    def has_stream(self) -> bool:
        """Online, a JoinSource streams the parent Join's left topic, enriched with its features."""
        return isinstance(self.join.left, EventSource) and self.join.left.topic is not None


Source = EventSource | EntitySource | JoinSource
