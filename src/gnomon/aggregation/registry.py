"""`make_aggregator`: from an operation kind, its parameters and the input type to an `Aggregator`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gnomon.aggregation.base import Aggregator, has_float, parse_type, type_name
from gnomon.aggregation.containers import BucketedAggregator, ElementWiseAggregator, MapAggregator
from gnomon.aggregation.counting import Count, FloatAverage, FloatSum, IntAverage, IntSum
from gnomon.aggregation.distinct import BoundedUniqueCount, UniqueCount
from gnomon.aggregation.histogram import ApproxHistogramK, Histogram
from gnomon.aggregation.moments import Kurtosis, Skew, Variance
from gnomon.aggregation.ordering import BottomK, First, FirstK, Last, LastK, Max, Min, TopK
from gnomon.aggregation.sketches import ApproxPercentile, ApproxUniqueCount
from gnomon.definitions.operations import ALL_KINDS, OperationSpec
from gnomon.errors import DefinitionError, did_you_mean

#: operations that keep a list input whole instead of unpacking it (SPEC §3)
WHOLE_VALUE_KINDS = frozenset({"first", "last", "first_k", "last_k"})
_NUMERIC_KINDS = frozenset({"sum", "average", "variance", "skew", "kurtosis", "approx_percentile"})
_NUMERIC_TYPES = frozenset({"int", "float", "bool"})
_VALUE_CLASSES: dict[str, type[Any]] = {
    "min": Min,
    "max": Max,
    "first": First,
    "last": Last,
    "first_k": FirstK,
    "last_k": LastK,
    "top_k": TopK,
    "bottom_k": BottomK,
}
_FLOAT64 = "float64"


def make_aggregator(
    kind: str | OperationSpec,
    params: Mapping[str, Any] | None,
    input_type: str,
    *,
    bucketed: bool = False,
    element_wise: bool = False,
) -> Aggregator:
    """Build the aggregator of one operation over inputs of ``input_type``.

    ``kind`` is a lower-case operation kind (``"last_k"``) or an `OperationSpec`; ``params`` are
    validated and defaulted as in ``Operation.<KIND>(...)``. ``input_type`` is ``int``, ``float``,
    ``bool``, ``str``, ``list<T>`` (unpacked, except by FIRST/LAST/FIRST_K/LAST_K which keep lists
    whole) or ``map<str,T>`` (aggregated per map key into a map). ``element_wise=True`` aggregates
    ``list<T>`` inputs position by position; ``bucketed=True`` wraps everything per bucket value.

    >>> agg = make_aggregator("average", {}, "int")
    >>> agg.finalize(agg.update(agg.prepare(1, ts=10, seq=0), 2, ts=11, seq=1)), agg.output_type
    (1.5, 'float64')
    >>> make_aggregator("last_k", {"k": 3}, "list<str>").output_type
    'list<list<str>>'
    """
    if isinstance(kind, OperationSpec):
        spec = kind.resolved() if params is None else OperationSpec(kind.kind, bound=False)(**params)
    else:
        name = str(kind).lower()
        if name not in ALL_KINDS:
            raise DefinitionError(
                f"unknown operation {kind!r}.{did_you_mean(name, ALL_KINDS)}",
                obj="Aggregation",
                field="operation",
                fix=f"use one of: {', '.join(ALL_KINDS)}",
            )
        spec = OperationSpec(name, bound=False)(**dict(params or {}))
    try:
        parsed = parse_type(input_type)
    except ValueError as exc:
        raise DefinitionError(str(exc), obj=f"Operation.{spec.kind.upper()}", field="input_type") from exc
    if element_wise:
        if parsed[0] != "list":
            raise DefinitionError(
                f"element_wise needs a list input, got {input_type!r}",
                obj="Aggregation",
                field="element_wise",
                fix="drop element_wise=True or aggregate a list column",
            )
        aggregator: Aggregator = ElementWiseAggregator(_make(spec, parsed[1]))
    elif parsed[0] == "map":
        aggregator = MapAggregator(_make(spec, parsed[1]))
    else:
        aggregator = _make(spec, parsed)
    return BucketedAggregator(aggregator) if bucketed else aggregator


def _make(spec: OperationSpec, value_type: tuple[Any, ...]) -> Aggregator:  # noqa: C901 — one branch per operation kind
    kind, params = spec.kind, spec.param_dict
    obj = f"Operation.{kind.upper()}"
    if value_type[0] == "map":
        raise DefinitionError("maps nested in lists or maps are not supported", obj=obj, field="input_type")
    element = value_type
    if kind not in WHOLE_VALUE_KINDS and value_type[0] == "list":
        element = value_type[1]
    if kind not in WHOLE_VALUE_KINDS and element[0] in ("list", "map"):
        raise DefinitionError(
            f"cannot aggregate values of type {type_name(value_type)}",
            obj=obj,
            field="input_type",
            fix="flatten the nested lists in the source query",
        )
    scalar = element[0]
    if kind in _NUMERIC_KINDS and scalar not in _NUMERIC_TYPES:
        raise DefinitionError(
            f"needs a numeric input (int, float or bool), got {type_name(element)}",
            obj=obj,
            field="input_column",
            fix="cast the column to a number in the query",
        )

    if kind == "count":
        return Count(params, element, "int64")
    if kind in ("sum", "average"):
        if scalar == "float":
            cls: type[Any] = FloatSum if kind == "sum" else FloatAverage
        else:
            cls = IntSum if kind == "sum" else IntAverage
        return cls(params, element, "int64" if kind == "sum" and scalar != "float" else _FLOAT64)  # type: ignore[no-any-return]
    if kind == "variance":
        return Variance(params, element, _FLOAT64)
    if kind == "skew":
        return Skew(params, element, _FLOAT64)
    if kind == "kurtosis":
        return Kurtosis(params, element, _FLOAT64)
    if kind in _VALUE_CLASSES:
        out = type_name(element)
        if kind in ("first_k", "last_k", "top_k", "bottom_k"):
            out = f"list<{out}>"
        return _VALUE_CLASSES[kind](  # type: ignore[no-any-return]
            params,
            element,
            out,
            is_float=element == ("float",),
            has_float=has_float(element),
        )
    if kind == "unique_count":
        return UniqueCount(params, element, "int64")
    if kind == "bounded_unique_count":
        return BoundedUniqueCount(params, element, "int64")
    if kind == "approx_unique_count":
        return ApproxUniqueCount(params, element, "int64")
    if kind == "approx_percentile":
        return ApproxPercentile(params, element, f"list<{_FLOAT64}>")
    if kind == "histogram":
        return Histogram(params, element, "map<str,int64>")
    if kind == "approx_histogram_k":
        return ApproxHistogramK(params, element, "map<str,int64>")
    raise AssertionError(f"operation {kind!r} has no aggregator")  # ALL_KINDS and this table disagree
