"""Online derivations: the Python evaluator of plain arithmetic against DuckDB (the offline engine),
on random expressions and values, including NULLs, zero divisors, infinities and BIGINT overflow."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gnomon.online.derive import Deriver

COLUMNS = ["a", "b", "c"]  # a, c: BIGINT; b: DOUBLE


def _duckdb_only(deriver: Deriver) -> Deriver:
    deriver._python = _AlwaysNone()  # type: ignore[assignment]
    return deriver


class _AlwaysNone(dict):  # type: ignore[type-arg]
    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: Any) -> None:
        return None


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    if isinstance(x, float) and isinstance(y, float) and math.copysign(1, x) != math.copysign(1, y):
        return False  # -0.0 and 0.0 print differently
    return type(x) is type(y) and x == y


leaves = st.one_of(
    st.sampled_from(["a", "b", "c", "A", '"b"']),
    st.integers(-5, 5).map(str),
    st.sampled_from(["9223372036854775807", "0"]),
)
expressions = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        inner.map(lambda e: f"-({e})"),
        st.lists(inner, min_size=1, max_size=3).map(lambda es: f"coalesce({', '.join(es)})"),
    ),
    max_leaves=6,
)
bigints = st.one_of(st.none(), st.integers(-3, 3), st.integers(-(2**63), 2**63 - 1))
doubles = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1.5])
)


@settings(max_examples=300, deadline=None)
@given(st.lists(expressions, min_size=1, max_size=3), bigints, doubles, bigints)
def test_python_arithmetic_equals_duckdb(
    exprs: list[str], a: int | None, b: float | None, c: int | None
) -> None:
    derivations = [[f"d{i}", e] for i, e in enumerate(exprs)]
    row = {"a": a, "b": b if b is None else float(b), "c": c}
    # first rows fix the SQL types when a value is NULL: BIGINT for a and c, DOUBLE for b
    fast, slow = Deriver(derivations, [], COLUMNS), _duckdb_only(Deriver(derivations, [], COLUMNS))
    for deriver in (fast, slow):
        deriver._types.update({"a": "BIGINT", "b": "DOUBLE", "c": "BIGINT"})
    try:
        expected = slow.apply(row, {})
    except Exception as error:  # noqa: BLE001 — DuckDB's overflow: the fast path must fail the same way
        with pytest.raises(type(error)):
            fast.apply(row, {})
        return
    got = fast.apply(row, {})
    # plain arithmetic runs in Python, except where a constant part overflows: DuckDB folds such constants
    # (raising) or not depending on the operator, so those expressions are left to DuckDB
    compiled = fast._python[("BIGINT", "DOUBLE", "BIGINT")]
    assert compiled is not None or any("922337203685477580" in e for e in exprs), exprs
    assert all(_same(expected[k], got[k]) for k in expected), (exprs, row, expected, got)


def test_plain_arithmetic_skips_duckdb() -> None:
    deriver = Deriver([["ratio", "a / c"], ["s", "coalesce(a, 0) + 2 * c"]], [], COLUMNS)
    assert deriver.apply({"a": 7, "b": None, "c": 2}, {}) == {"ratio": 3.5, "s": 11}
    assert deriver._connection is not None and not hasattr(
        deriver._local, "connection"
    )  # DuckDB never opened


def test_other_sql_goes_to_duckdb() -> None:
    deriver = Deriver(
        [["*", "*"], ["r", "round(b * 1.5, 1)"], ["w", "CASE WHEN a > 1 THEN 'big' ELSE 'small' END"]],
        [],
        COLUMNS,
    )
    assert deriver.apply({"a": 3, "b": 2.0, "c": 1}, {"x": 1}) == {"x": 1, "r": 3.0, "w": "big"}
    assert hasattr(deriver._local, "connection")
