"""`GroupBy`, `Aggregation`, `Accuracy` and `Derivation`."""

from __future__ import annotations

import enum
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gnomon.definitions.operations import Operation, OperationSpec
from gnomon.definitions.query import _check_ds, _check_identifier
from gnomon.definitions.sources import EntitySource, EventSource, JoinSource, Source
from gnomon.definitions.windows import Window
from gnomon.errors import DefinitionError, did_you_mean


def caller_module() -> str | None:
    """The module that built a definition (outside gnomon): the default name's dotted prefix."""
    frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if (
            module != "gnomon"
            and not module.startswith("gnomon.")
            and module != "dataclasses"
            and not module.startswith("<")
        ):
            return str(module)
        frame = frame.f_back  # type: ignore[assignment]
    return None


class Accuracy(enum.Enum):
    """TEMPORAL: values at the exact query time. SNAPSHOT: values as of the midnight before."""

    TEMPORAL = "temporal"
    SNAPSHOT = "snapshot"


@dataclass(frozen=True)
class Derivation:
    """An output column computed by a SQL expression over other output columns.

    ``Derivation("*", "*")`` keeps every raw column.
    """

    name: str
    expression: str

    def __post_init__(self) -> None:
        if self.name == "*" or self.expression == "*":
            if (self.name, self.expression) != ("*", "*"):
                raise DefinitionError(
                    "'*' must be both the name and the expression",
                    obj="Derivation",
                    field="name",
                    fix='write Derivation("*", "*") to keep every raw column',
                )
            return
        _check_identifier(self.name, "Derivation", "name")
        if not isinstance(self.expression, str) or not self.expression.strip():
            raise DefinitionError(
                "expression must be a non-empty SQL string",
                obj=f"Derivation({self.name!r})",
                field="expression",
            )

    @property
    def is_star(self) -> bool:
        return self.name == "*"


@dataclass(frozen=True)
class Aggregation:
    """One aggregation of an input column, over zero or more windows and optional bucket columns."""

    input_column: str
    operation: OperationSpec = Operation.LAST
    windows: Sequence[Window | str] | None = None
    buckets: Sequence[str] | None = None
    element_wise: bool = False

    def __post_init__(self) -> None:
        obj = f"Aggregation({self.input_column!r})"
        _check_identifier(self.input_column, obj, "input_column")
        if not isinstance(self.operation, OperationSpec):
            raise DefinitionError(
                f"operation must be an Operation, got {self.operation!r}",
                obj=obj,
                field="operation",
                fix="write e.g. operation=Operation.SUM",
            )
        try:
            object.__setattr__(self, "operation", self.operation.resolved())
        except DefinitionError as error:
            raise DefinitionError(str(error), obj=obj, field="operation") from None
        if self.windows is not None:
            if isinstance(self.windows, (str, Window)):
                raise DefinitionError(
                    "windows must be a list",
                    obj=obj,
                    field="windows",
                    fix=f"write windows=[{self.windows!r}]",
                )
            try:
                windows = tuple(Window.parse(w) for w in self.windows)
            except DefinitionError as error:
                raise DefinitionError(str(error), obj=obj, field="windows") from None
            if not windows:
                raise DefinitionError(
                    "windows is empty",
                    obj=obj,
                    field="windows",
                    fix="leave windows=None for all history, or list at least one window",
                )
            if len({w.millis for w in windows}) != len(windows):
                raise DefinitionError("the same window is listed twice", obj=obj, field="windows")
            object.__setattr__(self, "windows", windows)
        if self.buckets is not None:
            if isinstance(self.buckets, str):
                raise DefinitionError(
                    "buckets must be a list of column names",
                    obj=obj,
                    field="buckets",
                    fix=f"write buckets=[{self.buckets!r}]",
                )
            buckets = tuple(_check_identifier(b, obj, "buckets") for b in self.buckets)
            if not buckets:
                raise DefinitionError("buckets is empty", obj=obj, field="buckets", fix="leave buckets=None")
            object.__setattr__(self, "buckets", buckets)

    def output_columns(self) -> list[tuple[Window | None, str | None, str]]:
        """(window, bucket, column name) for each output column, in a stable order.

        >>> [c for _, _, c in Aggregation("view", Operation.COUNT, windows=["5h"]).output_columns()]
        ['view_count_5h']
        """
        windows: Sequence[Window | None] = (
            tuple(Window.parse(w) for w in self.windows) if self.windows else (None,)
        )
        buckets: Sequence[str | None] = self.buckets or (None,)
        columns: list[tuple[Window | None, str | None, str]] = []
        for bucket in buckets:
            for window in windows:
                name = f"{self.input_column}_{self.operation.output_name}"
                if window is not None:
                    name += f"_{window.name}"
                if bucket is not None:
                    name += f"_by_{bucket}"
                columns.append((window, bucket, name))
        return columns


def _as_list(value: Any, obj: str, fld: str) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(value, (str, bytes)):
        raise DefinitionError(f"{fld} must be a list", obj=obj, field=fld, fix=f"write {fld}=[{value!r}]")
    return (value,)


def check_metadata(obj: str, owner: Any, tags: Any, description: Any) -> tuple[str, ...]:
    """Check a definition's optional ``owner``, ``tags`` and ``description``; returns the tags as a
    tuple. They describe a definition for people (``gnomon compile``, the UI) and never change what
    it computes.

    >>> check_metadata("GroupBy", "ranking-team", ["user", "ranking"], None)
    ('user', 'ranking')
    """
    examples = {"owner": '"ranking-team"', "description": '"Views of an item by a user."'}
    for fld, value in (("owner", owner), ("description", description)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise DefinitionError(
                f"{fld} must be a non-empty string, got {value!r}",
                obj=obj,
                field=fld,
                fix=f"write e.g. {fld}={examples[fld]}, or leave it out",
            )
    if isinstance(tags, (str, bytes)):
        raise DefinitionError(
            "tags must be a list of strings", obj=obj, field="tags", fix=f"write tags=[{tags!r}]"
        )
    if not isinstance(tags, (list, tuple)):
        raise DefinitionError(
            f"tags must be a list of strings, got {type(tags).__name__}",
            obj=obj,
            field="tags",
            fix='write e.g. tags=["ranking", "user"]',
        )
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            raise DefinitionError(
                f"every tag must be a non-empty string, got {tag!r}",
                obj=obj,
                field="tags",
                fix='write e.g. tags=["ranking", "user"]',
            )
    repeated = [tag for tag, count in Counter(tags).items() if count > 1]
    if repeated:
        raise DefinitionError(
            f"tag {repeated[0]!r} is listed twice", obj=obj, field="tags", fix="list each tag once"
        )
    return tuple(tags)


@dataclass(frozen=True)
class GroupBy:
    """Aggregations of one or more sources by key: the unit of feature computation."""

    sources: Sequence[Source]
    keys: Sequence[str]
    aggregations: Sequence[Aggregation] | None = None
    accuracy: Accuracy | None = None
    online: bool = False
    derivations: Sequence[Derivation] = ()
    backfill_start_date: str | None = None
    output_namespace: str | None = None
    name: str | None = None
    owner: str | None = None
    tags: Sequence[str] = ()
    description: str | None = None
    defined_in: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "defined_in", self.defined_in or caller_module())
        obj = f"GroupBy({self.name!r})" if self.name else "GroupBy"
        object.__setattr__(self, "tags", check_metadata(obj, self.owner, self.tags, self.description))
        sources = _as_list(self.sources, obj, "sources")
        if not sources:
            raise DefinitionError("needs at least one source", obj=obj, field="sources")
        for source in sources:
            if not isinstance(source, (EventSource, EntitySource, JoinSource)):
                raise DefinitionError(
                    f"{source!r} is not a source",
                    obj=obj,
                    field="sources",
                    fix="use EventSource, EntitySource or JoinSource",
                )
        object.__setattr__(self, "sources", sources)
        keys = tuple(_as_list(self.keys, obj, "keys") if not isinstance(self.keys, str) else (self.keys,))
        if not keys:
            raise DefinitionError("needs at least one key", obj=obj, field="keys", fix='write keys=["user"]')
        for key in keys:
            _check_identifier(key, obj, "keys")
        if len(set(keys)) != len(keys):
            raise DefinitionError("a key is listed twice", obj=obj, field="keys")
        object.__setattr__(self, "keys", keys)
        if self.aggregations is not None:
            aggregations = _as_list(self.aggregations, obj, "aggregations")
            for agg in aggregations:
                if not isinstance(agg, Aggregation):
                    raise DefinitionError(f"{agg!r} is not an Aggregation", obj=obj, field="aggregations")
            object.__setattr__(self, "aggregations", aggregations)
        derivations = _as_list(self.derivations, obj, "derivations")
        for derivation in derivations:
            if not isinstance(derivation, Derivation):
                raise DefinitionError(f"{derivation!r} is not a Derivation", obj=obj, field="derivations")
        object.__setattr__(self, "derivations", derivations)
        if self.accuracy is not None and not isinstance(self.accuracy, Accuracy):
            raise DefinitionError(
                f"accuracy must be an Accuracy, got {self.accuracy!r}",
                obj=obj,
                field="accuracy",
                fix="use Accuracy.TEMPORAL or Accuracy.SNAPSHOT",
            )
        if self.backfill_start_date is not None:
            _check_ds(self.backfill_start_date, obj, "backfill_start_date")
        if self.name is not None and (
            not isinstance(self.name, str)
            or not self.name
            or not all(p.isidentifier() for p in self.name.split("."))
        ):
            raise DefinitionError(
                f"{self.name!r} is not a valid name",
                obj="GroupBy",
                field="name",
                fix='use dotted identifiers, e.g. "team.user_views"',
            )
        self._validate_columns(obj)

    def _validate_columns(self, obj: str) -> None:
        if not self.aggregations:  # an attribute lookup: the selected columns of the latest row before q
            for index, source in enumerate(self.sources):
                if not [c for c in source.query.columns if c not in self.keys]:
                    raise DefinitionError(
                        f"source {index} selects no column besides the keys, so there is nothing to look up",
                        obj=obj,
                        field="aggregations",
                        fix="list the columns to look up in the Query's selects, or add aggregations=[...]",
                    )
        needed = list(self.keys)
        for agg in self.aggregations or ():
            needed.append(agg.input_column)
            needed.extend(agg.buckets or ())
        for index, source in enumerate(self.sources):
            columns = source.query.columns
            if not columns:
                continue  # selects=None: checked against the table schema at compile time
            for column in needed:
                if column not in columns:
                    raise DefinitionError(
                        f"source {index} does not select {column!r} (it selects {', '.join(columns)})."
                        + did_you_mean(column, columns),
                        obj=obj,
                        field="sources",
                        fix=f"add {column!r} to that source's Query selects",
                    )

    @property
    def effective_accuracy(self) -> Accuracy:
        """SPEC §1: TEMPORAL when any source streams (topic or mutation topic), else SNAPSHOT."""
        if self.accuracy is not None:
            return self.accuracy
        return Accuracy.TEMPORAL if any(s.has_stream for s in self.sources) else Accuracy.SNAPSHOT

    def output_columns(self) -> list[str]:
        """Feature column names before derivations."""
        if not self.aggregations:
            columns: list[str] = []
            for source in self.sources:
                columns.extend(c for c in source.query.columns if c not in self.keys and c not in columns)
            return columns
        return [name for agg in self.aggregations for _, _, name in agg.output_columns()]
