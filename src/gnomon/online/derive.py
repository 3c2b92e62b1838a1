"""Derivations online: the same SQL as offline, with the same semantics, one row at a time.

A row's derivations run in DuckDB — the offline engine — unless every one of them is plain
arithmetic (columns, integer literals, ``+ - * /``, unary minus, parentheses, ``COALESCE``), which is
evaluated in Python with DuckDB's rules, about a hundred times faster than a DuckDB statement:
BIGINT or DOUBLE by the operands' SQL types, NULL in gives NULL out, ``/`` is DOUBLE division with
IEEE results for a zero divisor (``±inf``, ``nan``), and a BIGINT result beyond 64 bits hands the row
to DuckDB (which reports the overflow). Tests compare both evaluators on random expressions.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import duckdb
import sqlglot
from sqlglot import exp

from gnomon.compile.sql import quote

_SQL_TYPES = {bool: "BOOLEAN", int: "BIGINT", float: "DOUBLE", str: "VARCHAR"}


class Deriver:
    """Applies ``derivations`` to a row of raw output values (and request keys)."""

    def __init__(
        self, derivations: Sequence[Sequence[str]], keys: Sequence[str], raw_columns: Sequence[str]
    ) -> None:
        self.keep_raw = any(name == "*" for name, _ in derivations)
        self.derived = [(name, expression) for name, expression in derivations if name != "*"]
        self.columns = [*keys, *[c for c in raw_columns if c not in keys]]
        self._local = threading.local()
        self._types: dict[str, str] = {}  # last seen SQL type per column; nulls reuse it
        self._python: dict[tuple[str, ...], list[Callable[[dict[str, Any]], Any]] | None] = {}

    def apply(self, row: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
        """The output features: raw ones when kept, then each derivation's value."""
        if not self.derived:
            return dict(raw) if self.keep_raw else {}
        types = []
        for column in self.columns:
            value = row.get(column)
            sql_type = _SQL_TYPES.get(type(value))
            if sql_type is not None:
                self._types[column] = sql_type
            types.append(self._types.get(column, "DOUBLE"))
        key = tuple(types)
        if key not in self._python:
            self._python[key] = _compile_all(
                [expression for _, expression in self.derived], dict(zip(self.columns, types, strict=True))
            )
        compiled = self._python[key]
        values: Sequence[Any] | None = None
        if compiled is not None:
            try:
                values = [evaluate(row) for evaluate in compiled]
            except _NotPlainArithmetic:
                values = None
        if values is None:
            values = (
                self._connection()
                .execute(self._statement(key), [row.get(c) for c in self.columns])
                .fetchone()
            )
        derived = {name: value for (name, _), value in zip(self.derived, values, strict=True)}  # type: ignore[arg-type]
        return {**raw, **derived} if self.keep_raw else derived

    def _connection(self) -> duckdb.DuckDBPyConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = duckdb.connect()
            self._local.statements = {}
        return connection

    def _statement(self, types: tuple[str, ...]) -> str:
        self._connection()
        statements: dict[tuple[str, ...], str] = self._local.statements
        statement = statements.get(types)
        if statement is None:
            inner = ", ".join(
                f"CAST(? AS {t}) AS {quote(c)}" for c, t in zip(self.columns, types, strict=True)
            )
            outer = ", ".join(f"({expression}) AS {quote(name)}" for name, expression in self.derived)
            statement = statements[types] = f"SELECT {outer} FROM (SELECT {inner})"
        return statement


class _NotPlainArithmetic(Exception):
    """A value the Python evaluator does not handle (left to DuckDB)."""


_INT64 = (-(2**63), 2**63 - 1)
_Evaluate = Callable[[dict[str, Any]], Any]


def _compile_all(expressions: Sequence[str], types: dict[str, str]) -> list[_Evaluate] | None:
    """Python evaluators of ``expressions`` for columns of these SQL types, or None when one of them
    is more than plain arithmetic."""
    by_lower = {}
    for column, sql_type in types.items():
        if column.lower() in by_lower:
            return None  # DuckDB identifiers ignore case: leave the ambiguity to DuckDB
        by_lower[column.lower()] = (column, sql_type)
    compiled = []
    for expression in expressions:
        try:
            tree = sqlglot.parse_one(expression, read="duckdb")
        except sqlglot.errors.ParseError:
            return None  # DuckDB reports it
        node = _compile(tree, by_lower)
        if node is None:
            return None
        compiled.append(node[0])
    return compiled


def _compile(node: exp.Expr, columns: dict[str, tuple[str, str]]) -> tuple[_Evaluate, str] | None:
    """(evaluator, SQL type BIGINT or DOUBLE) of a plain arithmetic expression, else None."""
    compiled = _compile_node(node, columns)
    if compiled is not None and not isinstance(node, exp.Literal) and node.find(exp.Column) is None:
        try:  # DuckDB folds constants when it binds: an overflow there fails even where it is not reached
            compiled[0]({})
        except _NotPlainArithmetic:
            return None
    return compiled


def _compile_node(node: exp.Expr, columns: dict[str, tuple[str, str]]) -> tuple[_Evaluate, str] | None:
    if isinstance(node, exp.Paren):
        return _compile(node.this, columns)
    if isinstance(node, exp.Column) and not node.table:
        found = columns.get(node.name.lower())
        if found is None or found[1] not in ("BIGINT", "DOUBLE"):
            return None
        return _column(found[0], found[1]), found[1]
    if isinstance(node, exp.Literal) and not node.is_string and node.is_int:
        value = int(node.this)
        return (lambda row: value), "BIGINT"
    if isinstance(node, exp.Neg):
        inner = _compile(node.this, columns)
        if inner is None:
            return None
        return _arithmetic(lambda a, b: -a, inner, inner), inner[1]
    if isinstance(node, (exp.Add, exp.Sub, exp.Mul, exp.Div)):
        left, right = _compile(node.this, columns), _compile(node.expression, columns)
        if left is None or right is None:
            return None
        if isinstance(node, exp.Div):
            return _division(left[0], right[0]), "DOUBLE"
        operation = {exp.Add: _add, exp.Sub: _sub, exp.Mul: _mul}[type(node)]
        result_type = "DOUBLE" if "DOUBLE" in (left[1], right[1]) else "BIGINT"
        return _arithmetic(operation, left, right, result_type), result_type
    if isinstance(node, exp.Coalesce):
        parts = [_compile(part, columns) for part in [node.this, *node.expressions]]
        if any(part is None for part in parts):
            return None
        result_type = "DOUBLE" if any(part[1] == "DOUBLE" for part in parts if part) else "BIGINT"
        evaluators = [part[0] for part in parts if part]
        cast = float if result_type == "DOUBLE" else int

        def coalesce(row: dict[str, Any]) -> Any:
            for evaluate in evaluators:
                value = evaluate(row)
                if value is not None:
                    return cast(value)
            return None

        return coalesce, result_type
    return None


def _column(name: str, sql_type: str) -> _Evaluate:
    wanted = int if sql_type == "BIGINT" else float

    def read(row: dict[str, Any]) -> Any:
        value = row.get(name)
        if value is None:
            return None
        if type(value) is not wanted:
            raise _NotPlainArithmetic(name)
        return value

    return read


def _add(a: Any, b: Any) -> Any:
    return a + b


def _sub(a: Any, b: Any) -> Any:
    return a - b


def _mul(a: Any, b: Any) -> Any:
    return a * b


def _arithmetic(
    operation: Callable[[Any, Any], Any],
    left: tuple[_Evaluate, str],
    right: tuple[_Evaluate, str],
    result_type: str | None = None,
) -> _Evaluate:
    evaluate_left, evaluate_right = left[0], right[0]
    as_double = (result_type or left[1]) == "DOUBLE"

    def apply(row: dict[str, Any]) -> Any:
        a, b = evaluate_left(row), evaluate_right(row)
        if a is None or b is None:
            return None
        if as_double:
            return operation(float(a), float(b))
        result = operation(a, b)
        if not _INT64[0] <= result <= _INT64[1]:
            raise _NotPlainArithmetic("BIGINT overflow")  # DuckDB raises its own error for it
        return result

    return apply


def _division(evaluate_left: _Evaluate, evaluate_right: _Evaluate) -> _Evaluate:
    def divide(row: dict[str, Any]) -> Any:
        a, b = evaluate_left(row), evaluate_right(row)
        if a is None or b is None:
            return None
        a, b = float(a), float(b)
        if b == 0.0:
            if a == 0.0 or math.isnan(a):
                return math.nan
            return math.copysign(math.inf, a) * math.copysign(1.0, b)
        return a / b

    return divide
