"""Derivations online: the same SQL, evaluated by the same engine (DuckDB) as offline, one row at a time."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import duckdb

from gnomon.compile.sql import quote

_SQL_TYPES = {bool: "BOOLEAN", int: "BIGINT", float: "DOUBLE", str: "VARCHAR"}


class Deriver:
    """Applies ``derivations`` to a row of raw output values (and request keys)."""

    def __init__(self, derivations: Sequence[Sequence[str]], keys: Sequence[str], raw_columns: Sequence[str]) -> None:
        self.keep_raw = any(name == "*" for name, _ in derivations)
        self.derived = [(name, expression) for name, expression in derivations if name != "*"]
        self.columns = [*keys, *[c for c in raw_columns if c not in keys]]
        self._local = threading.local()
        self._types: dict[str, str] = {}  # last seen SQL type per column; nulls reuse it

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
        statement = self._statement(tuple(types))
        connection = self._connection()
        values = connection.execute(statement, [row.get(c) for c in self.columns]).fetchone()
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
            inner = ", ".join(f"CAST(? AS {t}) AS {quote(c)}" for c, t in zip(self.columns, types, strict=True))
            outer = ", ".join(f"({expression}) AS {quote(name)}" for name, expression in self.derived)
            statement = statements[types] = f"SELECT {outer} FROM (SELECT {inner})"
        return statement
