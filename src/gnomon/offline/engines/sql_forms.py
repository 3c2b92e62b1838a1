"""Vectorised DuckDB forms of the aggregation operations.

Each form is the SQL twin of an IR in ``gnomon.aggregation`` over one window's rows; the oracle and
parity tests prove the two equal. Operations with no exact SQL twin (the moment ratios and the
sketches) return None here, and the engine folds them with the IR code itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gnomon.compile.plan import FeaturePlan
from gnomon.errors import DefinitionError

ORDER_KEY_ASC = "struct_pack(t := ts, s := __seq)"
ORDER_KEY_DESC = "struct_pack(t := ts, s := -__seq)"  # newest first, first-seen wins a tie

NUMERIC_PREFIXES = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "FLOAT",
    "DOUBLE",
    "DECIMAL",
    "BOOLEAN",
)
FLOAT_PREFIXES = ("FLOAT", "DOUBLE", "DECIMAL")

# Folded by the IR code: no exact SQL twin (moment ratios need the IR's merge formulas; sketches
# must be the DataSketches ones so that offline and online agree).
IR_FOLDED = frozenset({"skew", "kurtosis", "approx_unique_count", "approx_percentile", "approx_histogram_k"})


def finite(expr: str) -> str:
    """NaN and ±Inf outputs become null (SPEC §3)."""
    return f"(CASE WHEN isfinite({expr}) THEN {expr} END)"


def null_non_finite(column: str, duck_type: str) -> str:
    """NaN and ±Inf become null in any float output: scalars, list elements and map values."""
    if duck_type in ("DOUBLE", "FLOAT"):
        return finite(column)
    if duck_type in ("DOUBLE[]", "FLOAT[]"):
        return f"list_transform({column}, lambda e: {finite('e')})"
    if duck_type.startswith("MAP(") and duck_type.endswith(("DOUBLE)", "FLOAT)")):
        # an entry whose value is not finite is left out, as the IR's finalize leaves out a null value
        return f"NULLIF(map_from_entries(list_filter(map_entries({column}), lambda e: isfinite(e.value))), MAP {{}})"
    if duck_type.startswith("MAP(") and duck_type.endswith(("DOUBLE[])", "FLOAT[])")):
        return (
            f"map_from_entries(list_transform(map_entries({column}), lambda e: {{'key': e.key, 'value': "
            f"list_transform(e.value, lambda v: {finite('v')})}}))"
        )
    return column


def _sum(x: str, input_type: str, f: str) -> str:
    if input_type == "BOOLEAN":
        return f"CAST(SUM(CAST({x} AS BIGINT)){f} AS BIGINT)"
    if input_type.startswith(FLOAT_PREFIXES):
        return finite(f"SUM(CAST({x} AS DOUBLE)){f}")
    return f"CAST(SUM({x}){f} AS BIGINT)"


def _histogram(x: str, k: int | None, f: str) -> str:
    counts = f"CAST(histogram(CAST({x} AS VARCHAR)){f} AS MAP(VARCHAR, BIGINT))"
    if k is None:
        return counts
    # keep the k largest counts, ties broken by key ascending
    ranked = f"list_sort(list_transform(map_entries({counts}), lambda e: {{'n': -e.value, 'k': e.key}}))"
    kept = f"list_transform(list_slice({ranked}, 1, {k}), lambda e: {{'key': e.k, 'value': -e.n}})"
    return f"map_from_entries({kept})"


# Each form takes (column, input type, params, filter clause); the filter clause (the window and
# non-null condition) must follow every aggregate call directly.
_FORMS: dict[str, Callable[[str, str, dict[str, Any], str], str]] = {
    "count": lambda x, t, p, f: f"NULLIF(COUNT({x}){f}, 0)",
    "sum": lambda x, t, p, f: _sum(x, t, f),
    "average": lambda x, t, p, f: finite(f"AVG(CAST({x} AS DOUBLE)){f}"),
    # DuckDB's VAR_POP of a lone NaN is 0; adding 0 * SUM makes any NaN or ±Inf input poison it
    "variance": lambda x, t, p, f: finite(
        f"(VAR_POP(CAST({x} AS DOUBLE)){f} + 0 * SUM(CAST({x} AS DOUBLE)){f})"
    ),
    "min": lambda x, t, p, f: f"MIN({x}){f}",
    "max": lambda x, t, p, f: f"MAX({x}){f}",
    "first": lambda x, t, p, f: f"arg_min({x}, {ORDER_KEY_ASC}){f}",
    "last": lambda x, t, p, f: f"arg_max({x}, {ORDER_KEY_DESC}){f}",
    "first_k": lambda x, t, p, f: f"arg_min({x}, {ORDER_KEY_ASC}, {p['k']}){f}",
    "last_k": lambda x, t, p, f: f"arg_max({x}, {ORDER_KEY_DESC}, {p['k']}){f}",
    "top_k": lambda x, t, p, f: f"max({x}, {p['k']}){f}",
    "bottom_k": lambda x, t, p, f: f"min({x}, {p['k']}){f}",
    "unique_count": lambda x, t, p, f: f"NULLIF(COUNT(DISTINCT {x}){f}, 0)",
    "bounded_unique_count": lambda x, t, p, f: f"NULLIF(LEAST(COUNT(DISTINCT {x}){f}, {p['k']}), 0)",
    "histogram": lambda x, t, p, f: _histogram(x, p.get("k"), f),
}


def check_input_type(feature: FeaturePlan, owner: str, input_type: str) -> None:
    """Reject an input the operation cannot take, naming the aggregation."""
    base = input_type.split("[")[0].split("(")[0]
    numeric_only = {"sum", "average", "variance", "skew", "kurtosis", "approx_percentile"}
    if feature.operation in numeric_only and not base.startswith(NUMERIC_PREFIXES):
        raise DefinitionError(
            f"{feature.operation.upper()} needs a numeric input, but {feature.input_column!r} is {input_type}",
            obj=owner,
            field=f"aggregations[{feature.name}]",
            fix=f'cast it in the Query, e.g. "CAST(... AS DOUBLE)", or use an operation for {input_type} values',
        )


# Computed as window aggregates over one sorted stream of events and queries (DuckDB evaluates
# these with segment trees, without materialising query × event pairs); the rest use the range join.
FRAMED = frozenset(
    {
        "count",
        "sum",
        "average",
        "variance",
        "min",
        "max",
        "first",
        "last",
        "first_k",
        "last_k",
        "top_k",
        "bottom_k",
    }
)


def sql_form(feature: FeaturePlan, column: str, input_type: str, suffix: str) -> str | None:
    """The SQL aggregate for this feature, ``suffix`` (a FILTER and maybe an OVER clause) following
    every aggregate call; None when the IR folds it."""
    if feature.operation in IR_FOLDED:
        return None
    return _FORMS[feature.operation](column, input_type, feature.params, suffix)
