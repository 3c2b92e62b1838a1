"""Direct, obviously-correct reference computations of every operation, and the cases to test.

Written independently of `gnomon.aggregation`: sorts, sets, Counters and exact Fractions over the whole
list of rows, never an IR. The property tests check the monoids against these.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from hypothesis import strategies as st

Row = tuple[Any, int, int]  # (value, ts, seq)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Case:
    """One operation over one input type, with the values to feed it."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    input_type: str = "float"
    values: str = "float"  # name of the value strategy in VALUES

    @property
    def id(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.kind}({params})[{self.input_type}]"


# -- value strategies -------------------------------------------------------------------------------
SPECIAL_FLOATS = [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1.0, -1.0, 2.5]
_any_float = st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(allow_nan=True, allow_infinity=True))
# sums of these can never overflow, so exact reference sums exist whatever the order
_sum_float = st.one_of(
    st.sampled_from(SPECIAL_FLOATS),
    st.floats(min_value=-1e300, max_value=1e300, allow_nan=False),
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False),
)
# well-conditioned moments: |mean| / spread is bounded, so 1e-9 relative accuracy is achievable
_moment_float = st.integers(-4000, 4000).map(lambda i: i / 8)
_int = st.one_of(st.integers(-5, 5), st.integers(-(10**6), 10**6), st.integers(INT64_MIN, INT64_MAX))
_small_int = st.integers(-(10**6), 10**6)
_str = st.one_of(st.sampled_from(["", "a", "b", "ab", "é", "Z"]), st.text(max_size=4))

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "float": _any_float,
    "sum_float": _sum_float,
    "moment_float": _moment_float,
    "moment_float_special": st.one_of(_moment_float, st.sampled_from([float("nan"), float("inf")])),
    "int": _int,
    "small_int": _small_int,
    "bool": st.booleans(),
    "str": _str,
    "list<int>": st.lists(st.integers(-3, 3), max_size=3),
    "list<float>": st.lists(st.sampled_from(SPECIAL_FLOATS), max_size=3),
}

CASES = [
    Case("count", {}, "int", "int"),
    Case("count", {}, "str", "str"),
    Case("sum", {}, "int", "int"),
    Case("sum", {}, "bool", "bool"),
    Case("sum", {}, "float", "sum_float"),
    Case("average", {}, "int", "int"),
    Case("average", {}, "float", "sum_float"),
    Case("variance", {}, "float", "moment_float"),
    Case("variance", {}, "float", "moment_float_special"),
    Case("variance", {}, "int", "small_int"),
    Case("skew", {}, "float", "moment_float"),
    Case("kurtosis", {}, "float", "moment_float"),
    Case("skew", {}, "float", "moment_float_special"),
    Case("min", {}, "float", "float"),
    Case("max", {}, "float", "float"),
    Case("min", {}, "str", "str"),
    Case("max", {}, "int", "int"),
    Case("max", {}, "bool", "bool"),
    Case("first", {}, "str", "str"),
    Case("last", {}, "float", "float"),
    Case("first", {}, "list<int>", "list<int>"),
    Case("first_k", {"k": 3}, "int", "int"),
    Case("last_k", {"k": 3}, "str", "str"),
    Case("last_k", {"k": 2}, "list<float>", "list<float>"),
    Case("first_k", {"k": 1}, "float", "float"),
    Case("top_k", {"k": 3}, "float", "float"),
    Case("bottom_k", {"k": 3}, "float", "float"),
    Case("top_k", {"k": 4}, "str", "str"),
    Case("bottom_k", {"k": 2}, "int", "int"),
    Case("unique_count", {}, "float", "float"),
    Case("unique_count", {}, "str", "str"),
    Case("bounded_unique_count", {"k": 3}, "float", "float"),
    Case("bounded_unique_count", {"k": 4}, "int", "small_int"),
    Case("approx_unique_count", {"lg_k": 10}, "str", "str"),
    Case("approx_unique_count", {}, "float", "float"),
    Case("approx_unique_count", {}, "int", "int"),
    Case("approx_percentile", {"percentiles": [0.0, 0.25, 0.5, 0.99, 1.0], "k": 128}, "float", "float"),
    Case("approx_percentile", {}, "int", "small_int"),
    Case("histogram", {}, "str", "str"),
    Case("histogram", {"k": 2}, "list<int>", "list<int>"),  # a list column, unpacked
    Case("histogram", {}, "bool", "bool"),
    Case("histogram", {"k": 3}, "float", "float"),
    Case("approx_histogram_k", {"k": 3}, "str", "str"),
    Case("approx_histogram_k", {}, "int", "small_int"),
]
REVERSIBLE_KINDS = {"count", "sum", "average", "variance", "histogram"}
SKETCH_KINDS = {"approx_unique_count", "approx_percentile", "approx_histogram_k"}


def rows_strategy(case: Case, max_size: int = 30) -> st.SearchStrategy[list[Row]]:
    """Rows with few distinct ts (many ties) and unique seqs in source order."""
    values = VALUES[case.values]
    return st.lists(st.tuples(values, st.integers(0, 12)), max_size=max_size).map(
        lambda pairs: [(value, ts, seq) for seq, (value, ts) in enumerate(pairs)]
    )


# -- reference computations --------------------------------------------------------------------------
def clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    return value


def float_key(x: float) -> tuple[bool, float, float]:
    return (math.isnan(x), 0.0 if math.isnan(x) else x, math.copysign(1.0, x))


def histogram_key(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def distinct_token(value: Any) -> Any:
    if isinstance(value, float):
        return "NaN-token" if math.isnan(value) else value + 0.0
    return value


def top(counts: Counter[str], k: int | None) -> dict[str, int]:
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return dict(ranked if k is None else ranked[:k])


def central_moments(values: list[float]) -> tuple[int, Fraction, Fraction, Fraction]:
    exact = [Fraction(v) for v in values]
    n = len(exact)
    mean = sum(exact) / n
    return (
        n,
        sum((x - mean) ** 2 for x in exact),
        sum((x - mean) ** 3 for x in exact),
        sum((x - mean) ** 4 for x in exact),
    )


def expected(case: Case, rows: list[Row]) -> Any:
    """The output of ``case`` over ``rows``, computed directly."""
    rows = unpack(case, rows)
    if not rows:
        return None
    kind, params = case.kind, case.params
    values = [value for value, _, _ in rows]
    is_float = case.input_type == "float"
    if kind == "count":
        return len(values)
    if kind in ("sum", "average"):
        if is_float:
            if not all(math.isfinite(v) for v in values):
                return None
            total = math.fsum(values)
            return total if kind == "sum" else total / len(values)
        int_total = sum(int(v) for v in values)
        if kind == "average":
            return int_total / len(values)
        return int_total if INT64_MIN <= int_total <= INT64_MAX else None
    if kind in ("variance", "skew", "kurtosis"):
        floats = [float(v) for v in values]
        if not all(math.isfinite(v) for v in floats):
            return None
        n, m2, m3, m4 = central_moments(floats)
        if kind == "variance":
            return float(m2 / n)
        if n < (3 if kind == "skew" else 4) or m2 == 0:
            return None
        if kind == "skew":
            return math.sqrt(n) * float(m3) / float(m2) ** 1.5
        return float(n * m4 / (m2 * m2) - 3)
    if kind in ("min", "max", "top_k", "bottom_k"):
        ordered = sorted(values, key=float_key) if is_float else sorted(values)
        if kind == "min":
            return clean(ordered[0])
        if kind == "max":
            return clean(ordered[-1])
        k = params["k"]
        return clean(ordered[::-1][:k] if kind == "top_k" else ordered[:k])
    if kind in ("first", "last", "first_k", "last_k"):
        if kind in ("first", "first_k"):
            chosen = sorted(rows, key=lambda r: (r[1], r[2]))
        else:
            chosen = sorted(rows, key=lambda r: (-r[1], r[2]))
        if kind in ("first", "last"):
            return clean(chosen[0][0])
        return [clean(list(r[0]) if isinstance(r[0], list) else r[0]) for r in chosen[: params["k"]]]
    if kind == "unique_count":
        return len({distinct_token(v) for v in values})
    if kind == "bounded_unique_count":
        return min(params["k"], len({distinct_token(v) for v in values}))
    if kind == "approx_unique_count":  # the exact answer; tests allow the sketch's error
        return len({distinct_token(v) for v in values})
    if kind == "approx_percentile":
        ordered = sorted(v for v in (float(x) for x in values) if not math.isnan(v))
        if not ordered:
            return None
        n = len(ordered)
        percentiles = params.get("percentiles", [0.5])
        return [clean(ordered[min(n - 1, max(0, math.ceil(p * n) - 1))]) for p in percentiles]
    if kind in ("histogram", "approx_histogram_k"):
        default_k = None if kind == "histogram" else 8
        return top(Counter(histogram_key(v) for v in values), params.get("k", default_k))
    raise AssertionError(kind)


def unpack(case: Case, rows: list[Row]) -> list[Row]:
    """Rows as the IR sees them: list values of unpacking operations become one row per element."""
    if case.kind in ("first", "last", "first_k", "last_k"):
        return rows
    flat: list[Row] = []
    for value, ts, seq in rows:
        if isinstance(value, list):
            flat.extend((element, ts, seq) for element in value)
        else:
            flat.append((value, ts, seq))
    return flat


def assert_matches(case: Case, actual: Any, want: Any, rows: list[Row]) -> None:
    """``actual == want`` exactly, or within float / sketch error where the operation allows it.

    ``rows`` (every row involved, deleted ones included) set the scale of the float tolerance.
    """
    kind = case.kind
    if kind in ("variance", "skew", "kurtosis") and want is not None and actual is not None:
        finite = [float(v) for v, _, _ in unpack(case, rows) if math.isfinite(float(v))]
        scale = max([1.0] + [v * v for v in finite])
        abs_tol = 1e-12 * scale if kind == "variance" else 1e-8
        assert math.isclose(actual, want, rel_tol=1e-9, abs_tol=abs_tol), (actual, want)
        return
    if kind == "approx_unique_count" and want is not None and actual is not None:
        assert abs(actual - want) <= 1 + 0.1 * want, (actual, want)
        return
    assert actual == want, (actual, want)
    assert (actual is None) == (want is None)
