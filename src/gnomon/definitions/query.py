"""`Query`: the SQL projection a source is read through."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gnomon.errors import DefinitionError

RESERVED_COLUMNS = ("ts", "ds", "mutation_ts", "is_before")


def _check_identifier(name: Any, obj: str, fld: str) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise DefinitionError(
            f"{name!r} is not a valid column name",
            obj=obj,
            field=fld,
            fix="use letters, digits and underscores, not starting with a digit",
        )
    return name


@dataclass(frozen=True)
class Query:
    """How to read a source: ``selects`` (output column -> SQL expression), ``wheres`` and time.

    ``selects=None`` reads every column as it is. ``time_column`` is a SQL expression giving
    epoch milliseconds (UTC).

    >>> Query(selects={"user": "user_id"}, time_column="ts").columns
    ('user',)
    """

    selects: Mapping[str, str] | None = None
    wheres: Sequence[str] = ()
    time_column: str = "ts"
    start_partition: str | None = None
    end_partition: str | None = None
    mutation_time_column: str = "mutation_ts"
    reversal_column: str = "is_before"
    _frozen: bool = field(default=True, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.selects is not None:
            if not isinstance(self.selects, Mapping) or not self.selects:
                raise DefinitionError(
                    "selects must be a non-empty dict of column -> SQL expression",
                    obj="Query",
                    field="selects",
                    fix='write e.g. selects={"user": "user_id"}',
                )
            for name, expr in self.selects.items():
                _check_identifier(name, "Query", "selects")
                if name in ("ds", "mutation_ts", "is_before"):
                    raise DefinitionError(
                        f"{name!r} is a reserved column name",
                        obj="Query",
                        field="selects",
                        fix=f"rename the output column, e.g. {name}_value",
                    )
                if not isinstance(expr, str) or not expr.strip():
                    raise DefinitionError(
                        f"the expression for {name!r} must be a non-empty SQL string",
                        obj="Query",
                        field="selects",
                    )
            object.__setattr__(self, "selects", MappingProxyType(dict(self.selects)))
        if isinstance(self.wheres, str):
            raise DefinitionError(
                "wheres must be a list of SQL conditions, not one string",
                obj="Query",
                field="wheres",
                fix=f"write wheres=[{self.wheres!r}]",
            )
        wheres = tuple(self.wheres or ())
        if any(not isinstance(w, str) or not w.strip() for w in wheres):
            raise DefinitionError("every where must be a non-empty SQL string", obj="Query", field="wheres")
        object.__setattr__(self, "wheres", wheres)
        if not isinstance(self.time_column, str) or not self.time_column.strip():
            raise DefinitionError(
                "time_column must be a SQL expression giving epoch milliseconds",
                obj="Query",
                field="time_column",
                fix='write time_column="ts"',
            )
        for name in ("start_partition", "end_partition"):
            value = getattr(self, name)
            if value is not None:
                _check_ds(value, "Query", name)

    @property
    def columns(self) -> tuple[str, ...]:
        """Selected output column names (empty when everything is selected)."""
        return tuple(self.selects) if self.selects is not None else ()

    def to_json(self) -> dict[str, Any]:
        return {
            "selects": dict(self.selects) if self.selects is not None else None,
            "wheres": list(self.wheres),
            "time_column": self.time_column,
            "start_partition": self.start_partition,
            "end_partition": self.end_partition,
            "mutation_time_column": self.mutation_time_column,
            "reversal_column": self.reversal_column,
        }


def _check_ds(value: Any, obj: str, fld: str) -> str:
    import datetime as dt

    try:
        dt.date.fromisoformat(value)
        if len(value) != 10:
            raise ValueError
    except (TypeError, ValueError):
        raise DefinitionError(
            f"{value!r} is not a YYYY-MM-DD date", obj=obj, field=fld, fix='write e.g. "2026-01-31"'
        ) from None
    return str(value)
