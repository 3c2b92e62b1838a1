"""`Join` and `JoinPart`: point-in-time lookups of GroupBys for every row of a left source."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from gnomon.definitions.group_by import Derivation, GroupBy, _as_list, caller_module, check_metadata
from gnomon.definitions.query import _check_identifier
from gnomon.definitions.sources import EntitySource, EventSource, JoinSource
from gnomon.errors import DefinitionError


@dataclass(frozen=True)
class JoinPart:
    """One GroupBy looked up by a Join. ``key_mapping`` maps left columns to GroupBy keys."""

    group_by: GroupBy
    key_mapping: Mapping[str, str] | None = None
    prefix: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.group_by, GroupBy):
            raise DefinitionError(
                f"group_by must be a GroupBy, got {type(self.group_by).__name__}",
                obj="JoinPart",
                field="group_by",
            )
        if self.key_mapping is not None:
            if not isinstance(self.key_mapping, Mapping):
                raise DefinitionError(
                    "key_mapping must be a dict of left column -> GroupBy key",
                    obj="JoinPart",
                    field="key_mapping",
                    fix='write key_mapping={"user_id": "user"}',
                )
            for left, key in self.key_mapping.items():
                _check_identifier(left, "JoinPart", "key_mapping")
                if key not in self.group_by.keys:
                    raise DefinitionError(
                        f"{key!r} is not a key of the GroupBy (keys: {', '.join(self.group_by.keys)})",
                        obj="JoinPart",
                        field="key_mapping",
                    )
            object.__setattr__(self, "key_mapping", MappingProxyType(dict(self.key_mapping)))
        if self.prefix is not None:
            _check_identifier(self.prefix, "JoinPart", "prefix")

    def left_column_for(self, key: str) -> str:
        """The left column that supplies GroupBy key ``key``."""
        for left, mapped in (self.key_mapping or {}).items():
            if mapped == key:
                return left
        return key


@dataclass(frozen=True)
class Join:
    """Training data: every left row enriched with the right parts' values at the row's time."""

    left: EventSource | EntitySource | JoinSource
    right_parts: Sequence[JoinPart]
    derivations: Sequence[Derivation] = ()
    online: bool = False
    name: str | None = None
    output_namespace: str | None = None
    owner: str | None = None
    tags: Sequence[str] = ()
    description: str | None = None
    defined_in: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "defined_in", self.defined_in or caller_module())
        obj = f"Join({self.name!r})" if self.name else "Join"
        object.__setattr__(self, "tags", check_metadata(obj, self.owner, self.tags, self.description))
        if not isinstance(self.left, (EventSource, EntitySource, JoinSource)):
            raise DefinitionError(
                "left must be an EventSource, EntitySource or JoinSource", obj=obj, field="left"
            )
        parts = _as_list(self.right_parts, obj, "right_parts")
        if not parts:
            raise DefinitionError("needs at least one JoinPart", obj=obj, field="right_parts")
        for part in parts:
            if not isinstance(part, JoinPart):
                raise DefinitionError(
                    f"{part!r} is not a JoinPart",
                    obj=obj,
                    field="right_parts",
                    fix="wrap each GroupBy: JoinPart(group_by=...)",
                )
        object.__setattr__(self, "right_parts", parts)
        derivations = _as_list(self.derivations, obj, "derivations")
        for derivation in derivations:
            if not isinstance(derivation, Derivation):
                raise DefinitionError(f"{derivation!r} is not a Derivation", obj=obj, field="derivations")
        object.__setattr__(self, "derivations", derivations)
        left_columns = self.left.query.columns
        if left_columns:
            for index, part in enumerate(parts):
                for key in part.group_by.keys:
                    column = part.left_column_for(key)
                    if column not in left_columns:
                        raise DefinitionError(
                            f"right_parts[{index}] needs left column {column!r} for GroupBy key {key!r}, "
                            f"but the left selects only {', '.join(left_columns)}",
                            obj=obj,
                            field="right_parts",
                            fix=f"select {column!r} on the left, or map it: JoinPart(..., key_mapping={{'<left column>': {key!r}}})",
                        )


@dataclass(frozen=True)
class StagingQuery:
    """Arbitrary SQL run daily, with ``{{ start_date }}``, ``{{ end_date }}``, ``{{ latest_date }}`` and
    ``{{ max_date(table=ns.t) }}`` filled in. The query must select a ``ds`` column."""

    name: str
    query: str
    start_partition: str
    output_namespace: str | None = None
    owner: str | None = None
    tags: Sequence[str] = ()
    description: str | None = None
    defined_in: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        from gnomon.definitions.query import _check_ds

        object.__setattr__(self, "defined_in", self.defined_in or caller_module())
        if not isinstance(self.name, str) or not all(p.isidentifier() for p in self.name.split(".")):
            raise DefinitionError(f"{self.name!r} is not a valid name", obj="StagingQuery", field="name")
        if not isinstance(self.query, str) or not self.query.strip():
            raise DefinitionError(
                "query must be a non-empty SQL string", obj=f"StagingQuery({self.name!r})", field="query"
            )
        _check_ds(self.start_partition, f"StagingQuery({self.name!r})", "start_partition")
        obj = f"StagingQuery({self.name!r})"
        object.__setattr__(self, "tags", check_metadata(obj, self.owner, self.tags, self.description))


Definition = GroupBy | Join | StagingQuery
