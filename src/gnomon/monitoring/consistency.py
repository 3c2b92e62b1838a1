"""The online–offline consistency job (SPEC §7): the fetches logged on day D, recomputed offline.

`check_consistency` reads the rows of ``logs.<join>`` (`gnomon.monitoring.fetch_log`) of day ``D``
whose status is ``Success``, builds a left frame of their keys (typed as the Join's left table types
them) and times, recomputes it with `Project.training_data` — the same engine and code as a
backfill — and compares every feature value by value, row by row (the engine keeps the left rows'
order, so position is the row id). Rows served by another definition of the Join (their
``join_fingerprint`` differs from the current plan's) are counted as *definition changed*, not
compared.

How values are compared (`Rule`):

- exact operations must be equal; floats within 1e-9 relative (or 1e-9 absolute near zero), because
  the online path sums exactly while a SQL engine may sum in another order. Lists and maps are equal
  when they have the same length (keys) and equal elements, floats inside with the same tolerance.
  Derived columns (derivations) compare the same way;
- ``APPROX_UNIQUE_COUNT(lg_k)``: each side is a CPC estimate within 3 standard errors (0.6 /
  sqrt(2^lg_k) relative) of the true count, so the two may differ by twice that (at least 1);
- ``APPROX_PERCENTILE(percentiles, k)``: each answer to percentile p is a value whose rank is within
  eps of p (eps: KLL's normalized rank error for k, 2.05% for the default k=128), so the answers to p
  must be ordered like the other side's answers to percentiles more than 2·eps away (online's answer
  to 0.5 may not exceed offline's answer to 0.9); equal answers always agree, and nulls must agree;
- ``APPROX_HISTOGRAM_K(k)``: a map of fewer than k keys is exact and must be equal; with k keys on
  both sides a frequent-items sketch may have answered, so each key's counts may differ by a quarter
  of the larger side's total (at least 1), and a key that only one side reports may be no heavier than
  the other side's lightest key plus that error.

Per feature the report gives rows compared, mismatches, the mismatch rate, the null rates online and
offline, SMAPE (numeric features: the mean of ``2|online − offline| / (|online| + |offline|)`` over
rows where both are non-null, 0 where both are 0; from 0 to 2), the largest absolute difference, and
up to `SAMPLE_KEYS` distinct mismatching keys with the time asked for and both values. The figures are
written to the ds-partitioned table ``consistency.<join>`` (`CONSISTENCY_SCHEMA`), atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gnomon import jsonio
from gnomon.compile.plan import JoinPlan, Plan, output_table
from gnomon.compile.sql import quote
from gnomon.errors import ExecutionError, UnknownObjectError
from gnomon.monitoring.fetch_log import join_fingerprint, join_key_fields, log_table, read_log

__all__ = [
    "CONSISTENCY_NAMESPACE",
    "CONSISTENCY_SCHEMA",
    "ConsistencyReport",
    "FeatureReport",
    "Rule",
    "check_consistency",
    "consistency_table",
    "feature_rules",
    "values_agree",
]

CONSISTENCY_NAMESPACE = "consistency"
CONSISTENCY_SCHEMA = pa.schema(
    [
        ("ds", pa.string()),
        ("feature", pa.string()),
        ("rows_compared", pa.int64()),
        ("mismatches", pa.int64()),
        ("mismatch_rate", pa.float64()),
        ("online_null_rate", pa.float64()),
        ("offline_null_rate", pa.float64()),
        ("smape", pa.float64()),
        ("max_abs_diff", pa.float64()),
        ("mismatching_keys", pa.string()),
    ]
)
SUCCESS = "Success"
SAMPLE_KEYS = 10
FLOAT_TOLERANCE = 1e-9
CPC_RELATIVE_ERROR = 0.6  # CPC's relative standard error is about 0.6 / sqrt(2^lg_k)
SKETCH_LEAF_DEPTH = {"approx_unique_count": 0, "approx_percentile": 1, "approx_histogram_k": 1}


def consistency_table(join_name: str) -> str:
    """The warehouse table of a Join's consistency figures.

    >>> consistency_table("team.user_item")
    'consistency.team_user_item'
    """
    return output_table(join_name, CONSISTENCY_NAMESPACE)


# ------------------------------------------------------------------ the report


@dataclass
class FeatureReport:
    """One feature's figures for one day (a row of ``consistency.<join>``)."""

    feature: str
    rule: str
    rows_compared: int
    mismatches: int
    online_null_rate: float | None
    offline_null_rate: float | None
    smape: float | None
    max_abs_diff: float | None
    mismatching_keys: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mismatch_rate(self) -> float | None:
        return self.mismatches / self.rows_compared if self.rows_compared else None

    def to_json(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "rule": self.rule,
            "rows_compared": self.rows_compared,
            "mismatches": self.mismatches,
            "mismatch_rate": self.mismatch_rate,
            "online_null_rate": self.online_null_rate,
            "offline_null_rate": self.offline_null_rate,
            "smape": self.smape,
            "max_abs_diff": self.max_abs_diff,
            "mismatching_keys": self.mismatching_keys,
        }


@dataclass
class ConsistencyReport:
    """What `check_consistency` found for one Join and day.

    ``rows_logged``: every row of the day's log; ``statuses``: how many had each status (only
    ``Success`` rows are compared); ``definition_changed``: Success rows served by another definition
    of the Join (not compared); ``rows_compared``: the rest, each compared feature by feature.
    """

    join: str
    ds: str
    rows_logged: int
    statuses: dict[str, int]
    definition_changed: int
    rows_compared: int
    features: list[FeatureReport]
    table: str | None = None  # where the figures were written (None: not written)

    @property
    def mismatches(self) -> int:
        """Mismatching values, summed over features."""
        return sum(f.mismatches for f in self.features)

    @property
    def mismatching_features(self) -> list[str]:
        return [f.feature for f in self.features if f.mismatches]

    def summary(self) -> str:
        """One line: what was compared and what differed."""
        text = f"{self.join} {self.ds}: {self.rows_compared} logged fetch(es) compared"
        if self.definition_changed:
            text += f", {self.definition_changed} skipped (definition changed)"
        if not self.rows_compared:
            return text
        failing = self.mismatching_features
        if not failing:
            return text + ", every feature matches"
        shown = ", ".join(failing[:5]) + (" …" if len(failing) > 5 else "")
        return text + f", {self.mismatches} mismatching value(s) in {len(failing)} feature(s): {shown}"

    def to_json(self) -> dict[str, Any]:
        return {
            "join": self.join,
            "ds": self.ds,
            "rows_logged": self.rows_logged,
            "statuses": dict(self.statuses),
            "definition_changed": self.definition_changed,
            "rows_compared": self.rows_compared,
            "mismatches": self.mismatches,
            "table": self.table,
            "features": [f.to_json() for f in self.features],
        }

    def to_table(self) -> pa.Table:
        """The rows of ``consistency.<join>`` partition ``ds`` (`CONSISTENCY_SCHEMA`)."""
        rows = [
            {
                "ds": self.ds,
                **{k: v for k, v in f.to_json().items() if k not in ("rule", "mismatching_keys")},
                "mismatching_keys": jsonio.dumps(f.mismatching_keys).decode(),
            }
            for f in self.features
        ]
        return pa.Table.from_pylist(rows, schema=CONSISTENCY_SCHEMA)

    def format(self) -> str:
        """The report as a terminal table, with the sampled mismatching keys below it."""
        lines = [self.summary()]
        others = {s: n for s, n in self.statuses.items() if s != SUCCESS}
        lines.append(
            f"logged {self.rows_logged} row(s)"
            + (f"; not compared, by status: {json.dumps(others, sort_keys=True)}" if others else "")
        )
        if not self.rows_logged:
            lines.append(
                f"(nothing in {log_table(self.join)} for {self.ds}: fetches are logged only with serving: {{log: "
                "{sample: ...}} in gnomon.yaml, by the server that answered them; see docs/monitoring.md)"
            )
        if self.features:
            lines += ["", *_table_lines(self.features)]
        for feature in self.features:
            if feature.mismatching_keys:
                lines += ["", f"mismatching keys of {feature.feature} (up to {SAMPLE_KEYS}):"]
                lines += [f"  {jsonio.dumps(sample).decode()}" for sample in feature.mismatching_keys]
        if self.table:
            lines += ["", f"written to {self.table}/ds={self.ds}"]
        return "\n".join(lines)


_HEADERS = ("feature", "compared", "mismatches", "rate", "null online", "null offline", "smape", "max |diff|")


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _table_lines(features: Sequence[FeatureReport]) -> list[str]:
    """Aligned columns: name, counts, rates (``-`` where a figure does not apply)."""
    cells = [
        [
            f.feature,
            str(f.rows_compared),
            str(f.mismatches),
            _number(f.mismatch_rate),
            _number(f.online_null_rate),
            _number(f.offline_null_rate),
            _number(f.smape),
            _number(f.max_abs_diff),
        ]
        for f in features
    ]
    widths = [max(len(row[i]) for row in [list(_HEADERS), *cells]) for i in range(len(_HEADERS))]
    return [
        "  ".join(
            text.ljust(width) if i == 0 else text.rjust(width)
            for i, (text, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [list(_HEADERS), *cells]
    ]


# ------------------------------------------------------------------ how each feature is compared


@dataclass(frozen=True)
class Rule:
    """How a feature's two values are compared: ``exact`` (floats within `FLOAT_TOLERANCE`) or a
    sketch operation's error bound (``approx_unique_count``, ``approx_percentile``,
    ``approx_histogram_k``) with its parameters."""

    operation: str = "exact"
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str) -> Any:
        return dict(self.params)[name]


EXACT = Rule()


def feature_rules(plan: Plan, join_name: str) -> dict[str, Rule]:
    """Output column -> `Rule` for the Join's sketch features; every other column compares exactly.

    A feature keeps its operation's rule only while it reaches the output as it is: a GroupBy or
    Join derivation of the same name replaces it with a derived (exactly compared) value.
    """
    join = plan.joins[join_name]
    rules: dict[str, Rule] = {}
    for part in join.parts:
        group_by = plan.group_bys[part.group_by]
        derived = {name for name, _ in group_by.derivations if name != "*"}
        for feature in group_by.features:
            if feature.operation in SKETCH_LEAF_DEPTH and feature.name not in derived:
                params = tuple(sorted((k, _frozen(v)) for k, v in feature.params.items()))
                rules[part.column_prefix + feature.name] = Rule(feature.operation, params)
    for name, _ in join.derivations:
        rules.pop(name, None)
    return rules


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# ------------------------------------------------------------------ the job


def check_consistency(project: Any, join_name: str, ds: str, write: bool = True) -> ConsistencyReport:
    """Compare the fetches of ``join_name`` logged on day ``ds`` with the offline values at the same
    keys and times; write the figures to ``consistency.<join>`` partition ``ds`` when ``write``.

    No logged rows (or none to compare) is not an error: the report says 0 rows compared, and its
    features (from the Join's output columns) are written with empty figures.
    """
    plan: Plan = project.plan
    join = plan.joins.get(join_name)
    if join is None:
        raise UnknownObjectError("Join", join_name, plan.joins)
    logged = read_log(project.warehouse, join_name, ds)
    statuses = _status_counts(logged)
    rows = _rows_to_compare(logged, join_fingerprint(plan, join_name))
    left = _left_frame(project, join, rows)
    offline = _offline_values(project, join, left)
    if offline.num_rows != rows.num_rows:
        raise ExecutionError(
            f"consistency of Join {join_name!r} on {ds}: the offline engine returned {offline.num_rows} "
            f"row(s) for {rows.num_rows} logged fetch(es); it must return one per left row, in order"
        )
    features = [c for c in offline.column_names if c not in left.column_names]
    online = _online_values(rows["features"], offline.select(features))
    rules = feature_rules(plan, join_name)
    reports = [
        _compare_feature(name, online, offline[name], rules.get(name, EXACT), rows) for name in features
    ]
    report = ConsistencyReport(
        join=join_name,
        ds=ds,
        rows_logged=logged.num_rows,
        statuses=statuses,
        definition_changed=statuses.get(SUCCESS, 0) - rows.num_rows,
        rows_compared=rows.num_rows,
        features=reports,
    )
    if write:
        table = consistency_table(join_name)
        project.warehouse.write_partition(table, ds, report.to_table())
        report.table = table
    return report


def _rows_to_compare(logged: pa.Table, fingerprint: str) -> pa.Table:
    """The Success rows served by the current definition: ``ts``, ``keys`` and ``features``."""
    rows = logged.select(["ts", "keys", "features"])
    if not logged.num_rows:
        return rows
    keep = pc.and_(pc.equal(logged["status"], SUCCESS), pc.equal(logged["join_fingerprint"], fingerprint))
    if pc.all(keep).as_py():  # the usual day: nothing to drop, and no copy of the JSON columns
        return rows
    return rows.filter(keep)


def _status_counts(logged: pa.Table) -> dict[str, int]:
    if not logged.num_rows:
        return {}
    counts = pc.value_counts(logged["status"]).to_pylist()
    return {str(item["values"]): int(item["counts"]) for item in counts}


# ------------------------------------------------------------------ the left frame


def _left_frame(project: Any, join: JoinPlan, rows: pa.Table) -> pa.Table:
    """The logged keys as the Join's left columns (typed as its left table types them) plus ``ts``."""
    fields = join_key_fields(join)
    types = _left_key_types(project, join, fields)
    if all(name in types for name in fields):
        keys = _parse_json(rows["keys"], pa.schema([(name, types[name]) for name in fields]))
    else:  # no left table data to type the keys by: the JSON's own types
        keys = pa.Table.from_pylist([jsonio.loads(k.encode()) for k in rows["keys"].to_pylist()])
        if not rows.num_rows:
            keys = pa.table({name: pa.array([], pa.string()) for name in fields})
    columns = {name: keys[name] if name in keys.column_names else pa.nulls(rows.num_rows) for name in fields}
    return pa.table({**columns, "ts": pc.cast(rows["ts"], pa.int64())})


def _left_key_types(project: Any, join: JoinPlan, fields: Sequence[str]) -> dict[str, pa.DataType]:
    """Each key field's type as the Join's left Query selects it from its table's latest schema
    (evaluated by DuckDB over an empty table); {} when the table has no data yet."""
    schema = project.warehouse.latest_schema(join.left.table)
    if schema is None:
        return {}
    if "ds" not in schema.names:
        schema = schema.append(pa.field("ds", pa.string()))
    selects = join.left.selects or {name: quote(name) for name in schema.names}
    wanted = [f"{selects[name]} AS {quote(name)}" for name in fields if name in selects]
    if not wanted:
        return {}
    con = duckdb.connect()
    try:
        con.register("left_schema", schema.empty_table())
        typed = con.sql(f"SELECT {', '.join(wanted)} FROM left_schema").to_arrow_table().schema
    except duckdb.Error:
        return {}
    finally:
        con.close()
    return {name: typed.field(name).type for name in typed.names}


def _parse_json(texts: pa.ChunkedArray | pa.Array, schema: pa.Schema) -> pa.Table:
    """JSON objects (one per row) as typed columns, parsed by DuckDB: a field missing from an object
    is null, fields the schema lacks are ignored. Columns come back with the schema's names, in
    order, cast to its types where DuckDB's Arrow output differs."""
    if not len(schema.names):
        return pa.table({})
    con = duckdb.connect()
    try:
        con.register("typed", schema.empty_table())
        duck_types = dict(
            zip(schema.names, [str(t) for t in con.sql("SELECT * FROM typed").types], strict=True)
        )
        con.register("texts", pa.table({"j": texts}))
        structure = json.dumps(duck_types).replace("'", "''")
        parsed = con.sql(f"SELECT unnest(json_transform(j, '{structure}')) FROM texts").to_arrow_table()
    finally:
        con.close()
    columns = {}
    for index, target in enumerate(schema):
        column = parsed.column(index)
        columns[target.name] = column if column.type == target.type else _cast(column, target.type)
    return pa.table(columns)


def _cast(column: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    try:
        return pc.cast(column, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return column  # same values, another spelling of the type (list field names): compared as is


# ------------------------------------------------------------------ offline and online values


def _offline_values(project: Any, join: JoinPlan, left: pa.Table) -> pa.Table:
    """The Join's values at each left row's keys and ``ts``, from the offline engine."""
    if join.left.kind != "entities":
        return project.training_data(join.name, left)
    # An entity left asks offline at ds + 1 day, a fetch at its own time: read the left as events,
    # whose rows ask at their ts (a left's kind decides nothing else about the values).
    from gnomon.offline.engine import open_engine

    as_events = replace(join, left=replace(join.left, kind="events"))
    engine = open_engine(project.warehouse, project.plan, project.config.offline)
    try:
        return engine.training_data(as_events, left)
    finally:
        engine.close()


def _online_values(texts: pa.ChunkedArray, offline: pa.Table) -> pa.Table:
    """The served values (the log's ``features`` JSON) typed like the offline columns. An integer
    column is also read as double, in ``<name>\\x00double``, so that a served 2.5 is not taken for 2."""
    values = _parse_json(texts, offline.schema)
    integers = [f for f in offline.schema if pa.types.is_integer(f.type)]
    if integers:
        doubles = _parse_json(texts, pa.schema([(f.name, pa.float64()) for f in integers]))
        for name in doubles.column_names:
            values = values.append_column(f"{name}\x00double", doubles[name])
    return values


# ------------------------------------------------------------------ comparing one feature


@dataclass
class _Outcome:
    """Per row whether the two values differ; for numeric features, over the rows where both are
    non-null, the absolute differences and the SMAPE terms."""

    mismatch: np.ndarray
    abs_diff: np.ndarray | None = None
    smape_terms: np.ndarray | None = None


def _compare_feature(
    name: str, online: pa.Table, offline: pa.ChunkedArray, rule: Rule, rows: pa.Table
) -> FeatureReport:
    """One feature's figures over every compared row."""
    served = online[name].combine_chunks()
    computed = offline.combine_chunks()
    doubles_name = f"{name}\x00double"
    doubles = online[doubles_name].combine_chunks() if doubles_name in online.column_names else None
    outcome = _compare_values(served, computed, doubles, rule)
    count = len(computed)
    diff, terms = outcome.abs_diff, outcome.smape_terms
    return FeatureReport(
        feature=name,
        rule=rule.operation,
        rows_compared=count,
        mismatches=int(outcome.mismatch.sum()),
        online_null_rate=served.null_count / count if count else None,
        offline_null_rate=computed.null_count / count if count else None,
        smape=float(terms.mean()) if terms is not None and terms.size else None,
        max_abs_diff=float(diff.max()) if diff is not None and diff.size else None,
        mismatching_keys=_sample_keys(rows, outcome.mismatch, served, computed),
    )


def _compare_values(online: pa.Array, offline: pa.Array, doubles: pa.Array | None, rule: Rule) -> _Outcome:
    """Dispatch on the rule and the column type: vectorised for numbers, other scalars and lists of
    scalars; value by value in Python for maps, structs, nested lists and the sketch rules."""
    kind = offline.type
    if pa.types.is_null(kind) or pa.types.is_null(online.type):  # no value on one side at all
        return _compare_python(online, offline, _close)
    if rule.operation == "approx_unique_count" and pa.types.is_integer(kind):
        lg_k = int(rule.param("lg_k"))
        return _compare_numbers(online, offline, doubles, _cpc_tolerance(lg_k))
    if rule.operation != "exact":
        levels = _depth(kind) - SKETCH_LEAF_DEPTH[rule.operation]
        if levels >= 0:
            return _compare_python(online, offline, _nested(levels, _sketch_leaf(rule)))
        return _compare_python(online, offline, _close)
    if _is_number(kind):
        return _compare_numbers(online, offline, doubles, None)
    if _is_flat_scalar(kind):
        return _compare_equal(online, offline)
    if _is_list(kind) and _is_scalar(kind.value_type):
        return _compare_lists(online, offline)
    if pa.types.is_map(kind) and _is_scalar(kind.key_type) and _is_scalar(kind.item_type):
        return _compare_maps(online, offline)
    return _compare_python(online, offline, _close)


def _is_scalar(kind: pa.DataType) -> bool:
    return _is_number(kind) or _is_flat_scalar(kind)


def _is_number(kind: pa.DataType) -> bool:
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind))


def _is_flat_scalar(kind: pa.DataType) -> bool:
    return not pa.types.is_nested(kind) and not _is_number(kind) and not pa.types.is_dictionary(kind)


def _is_list(kind: pa.DataType) -> bool:
    return bool(pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind))


def _depth(kind: pa.DataType) -> int:
    """How many list/map levels wrap the leaf values of a type."""
    if pa.types.is_map(kind):
        return 1 + _depth(kind.item_type)
    if _is_list(kind):
        return 1 + _depth(kind.value_type)
    return 0


def _valid(values: pa.Array) -> np.ndarray:
    return np.asarray(values.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _as_numpy(values: pa.Array, integer: bool) -> np.ndarray:
    target = pa.int64() if integer else pa.float64()
    return np.asarray(pc.fill_null(pc.cast(values, target), 0).to_numpy(zero_copy_only=False))


Tolerance = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _float_tolerance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1e-9 relative, or 1e-9 absolute near zero (a sum in another order leaves a tiny residue)."""
    return np.asarray(np.maximum(FLOAT_TOLERANCE * np.maximum(np.abs(a), np.abs(b)), FLOAT_TOLERANCE))


def _cpc_tolerance(lg_k: int) -> Tolerance:
    """Two CPC estimates of one count, each within 3 standard errors of it, at least 1 apart."""
    relative = 2 * 3 * CPC_RELATIVE_ERROR / math.sqrt(2**lg_k)

    def tolerance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.asarray(np.maximum(relative * np.maximum(np.abs(a), np.abs(b)), 1.0))

    return tolerance


def _compare_numbers(
    online: pa.Array, offline: pa.Array, doubles: pa.Array | None, tolerance: Tolerance | None
) -> _Outcome:
    """Numbers: integers exactly (unless ``tolerance``), floats within `_float_tolerance`; ``doubles``
    (the served values read as double) catches a served fraction where an integer is due."""
    on_valid, off_valid = _valid(online), _valid(offline)
    both = on_valid & off_valid
    integer = pa.types.is_integer(online.type) and pa.types.is_integer(offline.type)
    try:
        a, b = _as_numpy(online, integer), _as_numpy(offline, integer)
    except (pa.ArrowInvalid, OverflowError):  # an unsigned value beyond int64: compare as doubles
        integer = False
        a, b = _as_numpy(online, False), _as_numpy(offline, False)
    af, bf = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        difference = np.abs(af - bf)
        if integer and tolerance is None:
            equal = a == b
        else:
            equal = (af == bf) | (difference <= (tolerance or _float_tolerance)(af, bf))
        if doubles is not None:
            equal &= _as_numpy(doubles, False) == af
        denominator = np.abs(af) + np.abs(bf)
        terms = np.where(denominator == 0, 0.0, 2 * difference / np.where(denominator == 0, 1, denominator))
    mismatch = (on_valid != off_valid) | (both & ~equal)
    return _Outcome(mismatch, difference[both], terms[both])


def _compare_equal(online: pa.Array, offline: pa.Array) -> _Outcome:
    """Strings, booleans, dates and other flat values: equal, null only against null."""
    on_valid, off_valid = _valid(online), _valid(offline)
    if online.type != offline.type:
        try:
            online = pc.cast(online, offline.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return _compare_python(online, offline, _close)
    equal = np.asarray(pc.fill_null(pc.equal(online, offline), False).to_numpy(zero_copy_only=False), bool)
    return _Outcome((on_valid != off_valid) | (on_valid & off_valid & ~equal))


def _lengths(values: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.list_value_length(values), -1).to_numpy(zero_copy_only=False))


def _differs(online: pa.Array, offline: pa.Array) -> np.ndarray:
    """Element by element: numbers within the tolerance, other scalars equal."""
    if _is_number(offline.type):
        return _compare_numbers(online, offline, None, None).mismatch
    return _compare_equal(online, offline).mismatch


def _any_per_row(differs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per row of ``lengths`` (all positive) elements, whether any element differs."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.asarray(np.logical_or.reduceat(differs, starts), dtype=bool)


def _shape_mismatch(online: pa.Array, offline: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For lists (or maps as entry lists): the rows that already differ by nullness or length, the
    rows left to compare element by element (both present, same non-zero length), and the offline
    lengths."""
    on_valid, off_valid = _valid(online), _valid(offline)
    both = on_valid & off_valid
    on_length, off_length = _lengths(online), _lengths(offline)
    same_length = both & (on_length == off_length)
    mismatch = (on_valid != off_valid) | (both & ~same_length)
    return mismatch, np.flatnonzero(same_length & (off_length > 0)), off_length


def _compare_lists(online: pa.Array, offline: pa.Array) -> _Outcome:
    """Lists of scalars: the same length and equal elements (floats within the tolerance), compared
    over the flattened elements of the rows whose lengths agree."""
    mismatch, rows, off_length = _shape_mismatch(online, offline)
    if rows.size:
        taken = pa.array(rows)
        differs = _differs(pc.list_flatten(online.take(taken)), pc.list_flatten(offline.take(taken)))
        mismatch[rows[_any_per_row(differs, off_length[rows])]] = True
    return _Outcome(mismatch)


def _compare_maps(online: pa.Array, offline: pa.Array) -> _Outcome:
    """Maps of scalars, whatever their entries' order: the same number of entries, and once each
    row's entries are sorted by key (one vectorised sort over all rows), equal keys and values."""
    online, offline = _entry_lists(online), _entry_lists(offline)
    mismatch, rows, off_length = _shape_mismatch(online, offline)
    if rows.size:
        lengths = off_length[rows]
        row_of_entry = np.repeat(np.arange(rows.size), lengths)
        taken = pa.array(rows)
        on_entries = _sorted_entries(pc.list_flatten(online.take(taken)), row_of_entry)
        off_entries = _sorted_entries(pc.list_flatten(offline.take(taken)), row_of_entry)
        differs = _differs(on_entries.field(0), off_entries.field(0))
        differs |= _differs(on_entries.field(1), off_entries.field(1))
        mismatch[rows[_any_per_row(differs, lengths)]] = True
    return _Outcome(mismatch)


def _entry_lists(values: pa.Array) -> pa.Array:
    """A map array as the list of its (key, value) entries, which the list kernels accept."""
    entry = pa.struct([("key", values.type.key_type), ("value", values.type.item_type)])
    return pc.cast(values, pa.list_(entry))


def _sorted_entries(entries: pa.StructArray, row_of_entry: np.ndarray) -> pa.StructArray:
    """Map entries ordered by (row, key)."""
    order = pc.sort_indices(
        pa.table({"row": row_of_entry, "key": entries.field(0)}),
        sort_keys=[("row", "ascending"), ("key", "ascending")],
    )
    return entries.take(order)


def _compare_python(online: pa.Array, offline: pa.Array, close: Callable[[Any, Any], bool]) -> _Outcome:
    """Value by value in Python (maps become dicts): for nested values and the sketch rules."""
    served = _python_values(online)
    computed = _python_values(offline)
    equal = np.fromiter((close(a, b) for a, b in zip(served, computed, strict=True)), bool, len(computed))
    return _Outcome(~equal)


def _python_values(values: pa.Array) -> list[Any]:
    items: list[Any] = values.to_pylist()
    if not _has_map(values.type):
        return items
    return [_to_python(item, values.type) for item in items]


def _has_map(kind: pa.DataType) -> bool:
    if pa.types.is_map(kind):
        return True
    if _is_list(kind):
        return _has_map(kind.value_type)
    if pa.types.is_struct(kind):
        return any(_has_map(kind.field(i).type) for i in range(kind.num_fields))
    return False


def _to_python(value: Any, kind: pa.DataType) -> Any:
    """Arrow's Python value with every map (a list of pairs) turned into a dict."""
    if value is None:
        return None
    if pa.types.is_map(kind):
        return {key: _to_python(item, kind.item_type) for key, item in value}
    if _is_list(kind):
        return [_to_python(item, kind.value_type) for item in value]
    if pa.types.is_struct(kind):
        return {
            kind.field(i).name: _to_python(value[kind.field(i).name], kind.field(i).type)
            for i in range(kind.num_fields)
        }
    return value


# ------------------------------------------------------------------ value by value


def values_agree(online: Any, offline: Any, rule: Rule = EXACT) -> bool:
    """Whether one served value and one offline value agree under ``rule`` (plain Python values,
    maps as dicts): what the job decides for each row, one value at a time.

    >>> values_agree(0.1 + 0.2, 0.3), values_agree([1, 2], [1, 2.5])
    (True, False)
    >>> rule = Rule("approx_percentile", (("k", 200), ("percentiles", (0.1, 0.5, 0.9))))
    >>> values_agree([1.0, 5.0, 9.0], [1.0, 5.5, 9.0], rule), values_agree([1.0, 9.5, 9.0], [1.0, 5.0, 9.0], rule)
    (True, False)
    """
    if rule.operation == "exact":
        return _close(online, offline)
    return _sketch_leaf(rule)(online, offline)


def _close(a: Any, b: Any) -> bool:
    """Equal; floats within `FLOAT_TOLERANCE` (also inside lists and maps); a bool equals only a bool."""
    if a is None or b is None:
        return a is None and b is None
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if (
        isinstance(a, float | int)
        and isinstance(b, float | int)
        and (isinstance(a, float) or isinstance(b, float))
    ):
        return a == b or abs(a - b) <= max(FLOAT_TOLERANCE * max(abs(a), abs(b)), FLOAT_TOLERANCE)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[key], b[key]) for key in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _nested(levels: int, leaf: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    """``leaf`` applied inside ``levels`` of containers (buckets, map inputs, element-wise lists)."""

    def close(a: Any, b: Any) -> bool:
        if levels == 0:
            return leaf(a, b)
        if a is None or b is None:
            return a is None and b is None
        inner = _nested(levels - 1, leaf)
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(inner(a[key], b[key]) for key in a)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(inner(x, y) for x, y in zip(a, b, strict=True))
        return False

    return close


def _sketch_leaf(rule: Rule) -> Callable[[Any, Any], bool]:
    if rule.operation == "approx_unique_count":
        relative = 2 * 3 * CPC_RELATIVE_ERROR / math.sqrt(2 ** int(rule.param("lg_k")))
        return lambda a, b: _counts_close(a, b, relative)
    if rule.operation == "approx_percentile":
        from datasketches import kll_doubles_sketch

        percentiles = [float(p) for p in rule.param("percentiles")]
        epsilon = float(kll_doubles_sketch.get_normalized_rank_error(int(rule.param("k")), False))
        return lambda a, b: _percentiles_close(a, b, percentiles, epsilon)
    k = int(rule.param("k"))
    return lambda a, b: _histograms_close(a, b, k)


def _counts_close(a: Any, b: Any, relative: float) -> bool:
    if not isinstance(a, int) or not isinstance(b, int):
        return _close(a, b)
    return abs(a - b) <= max(1.0, relative * max(abs(a), abs(b)))


def _percentiles_close(a: Any, b: Any, percentiles: list[float], epsilon: float) -> bool:
    """Two KLL answers to the same percentiles, each within rank ``epsilon`` of the truth."""
    if not isinstance(a, list) or not isinstance(b, list) or not len(a) == len(b) == len(percentiles):
        return _close(a, b)
    return _ordered_like(a, b, percentiles, epsilon) and _ordered_like(b, a, percentiles, epsilon)


def _ordered_like(a: list[Any], b: list[Any], percentiles: list[float], epsilon: float) -> bool:
    """Each answer of ``a`` equals ``b``'s, or lies between ``b``'s answers to the percentiles more
    than 2·epsilon below and above it (a monotone truth cannot put it elsewhere)."""
    for p, value, other in zip(percentiles, a, b, strict=True):
        if value is None or other is None:
            if (value is None) != (other is None):
                return False
            continue
        if _close(value, other):
            continue
        below = [w for q, w in zip(percentiles, b, strict=True) if q < p - 2 * epsilon and w is not None]
        above = [w for q, w in zip(percentiles, b, strict=True) if q > p + 2 * epsilon and w is not None]
        if (below and value < max(below)) or (above and value > min(above)):
            return False
    return True


def _histograms_close(a: Any, b: Any, k: int) -> bool:
    """APPROX_HISTOGRAM_K(k): exact below k keys; with k keys on both sides, within the sketch's error."""
    if not isinstance(a, dict) or not isinstance(b, dict) or len(a) < k or len(b) < k or not a or not b:
        return _close(a, b)
    error = max(1.0, max(sum(a.values()), sum(b.values())) / 4)
    if any(abs(a[key] - b[key]) > error for key in a.keys() & b.keys()):
        return False
    lightest_a, lightest_b = min(a.values()), min(b.values())
    return all(a[key] <= lightest_b + error for key in a.keys() - b.keys()) and all(
        b[key] <= lightest_a + error for key in b.keys() - a.keys()
    )


# ------------------------------------------------------------------ the sample of mismatching keys


def _sample_keys(
    rows: pa.Table, mismatch: np.ndarray, online: pa.Array, offline: pa.Array
) -> list[dict[str, Any]]:
    """Up to `SAMPLE_KEYS` distinct mismatching keys, first occurrence each (in log order), with the
    time asked for and both values."""
    positions = np.flatnonzero(mismatch)
    if not positions.size:
        return []
    keys = pc.dictionary_encode(rows["keys"].take(pa.array(positions)).combine_chunks())
    _, first = np.unique(np.asarray(keys.indices.to_numpy(zero_copy_only=False)), return_index=True)
    chosen = positions[np.sort(first)[:SAMPLE_KEYS]]
    samples = []
    for position in chosen.tolist():
        samples.append(
            {
                "keys": jsonio.loads(rows["keys"][position].as_py().encode()),
                "ts": rows["ts"][position].as_py(),
                "online": _jsonable(_to_python(online[position].as_py(), online.type)),
                "offline": _jsonable(_to_python(offline[position].as_py(), offline.type)),
            }
        )
    return samples


def _jsonable(value: Any) -> Any:
    """A value JSON can hold: dict keys as strings, dates and other objects as their text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return str(value)
