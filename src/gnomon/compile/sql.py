"""SQL expressions: transpiling from the repo's dialect to an engine's, and finding column references."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import sqlglot
from sqlglot import exp

from gnomon.errors import DefinitionError

_DIALECTS = {"duckdb": "duckdb", "spark": "spark"}


@lru_cache(maxsize=4096)
def transpile(expression: str, read: str = "duckdb", write: str = "duckdb") -> str:
    """One SQL expression rewritten for ``write``; identical text when the dialects match.

    >>> transpile("IF(x = 1, 1, 0)", read="spark")
    'CASE WHEN x = 1 THEN 1 ELSE 0 END'
    """
    if read == write:
        parse(expression, read)  # still reject malformed SQL early
        return expression
    return sqlglot.transpile(expression, read=_DIALECTS[read], write=_DIALECTS[write])[0]


@lru_cache(maxsize=4096)
def parse(expression: str, dialect: str = "duckdb") -> exp.Expr:
    try:
        return sqlglot.parse_one(expression, read=_DIALECTS[dialect])
    except sqlglot.errors.ParseError as error:
        raise DefinitionError(
            f"cannot parse SQL {expression!r}: {error.errors[0]['description'] if error.errors else error}",
            fix="check the expression's syntax",
        ) from None


def referenced_columns(expression: str, dialect: str = "duckdb") -> set[str]:
    """Bare column names an expression reads (lambda parameters and struct fields excluded)."""
    tree = parse(expression, dialect)
    lambda_params = {p.name for node in tree.find_all(exp.Lambda) for p in node.expressions}
    names = set()
    for column in tree.find_all(exp.Column):
        if column.table:  # a.b: a struct field or a qualified column; check the root only
            names.add(column.parts[0].name)
        else:
            names.add(column.name)
    return names - lambda_params


def quote(name: str) -> str:
    """A DuckDB identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def row_id_sql(columns: Sequence[str]) -> str:
    """The identity of a raw entity row, as the online path matches a delete to its row: 63 bits of
    the MD5 of the row's JSON (the same for equal values whatever their integer or float width).

    >>> import duckdb
    >>> duckdb.sql(f"SELECT {row_id_sql(['x'])} = (SELECT {row_id_sql(['x'])} FROM (SELECT 0.0 AS x)) "
    ...            "FROM (SELECT -0.0::DOUBLE AS x)").fetchall()[0][0]
    True
    """
    packed = ", ".join(f"{quote(c)} := {quote(c)}" for c in columns)
    # -0.0 equals 0.0 as a value (offline groups them together): one spelling in the JSON; the
    # pattern can only match a text containing "-0.0", so the regex runs only there
    json = f"CAST(to_json(struct_pack({packed})) AS VARCHAR)"
    spelled = f"regexp_replace({json}, '([:\\[,])-0\\.0([,\\]}}])', '\\10.0\\2', 'g')"
    text = f"CASE WHEN contains({json}, '-0.0') THEN {spelled} ELSE {json} END"
    return f"(md5_number_lower({text}) & 9223372036854775807)::BIGINT"
