"""A deliberately naive oracle for SPEC §2–§4.

Written straight from the SPEC, with plain loops over every row, and independent of Gnomon's own
aggregation and offline code (only `gnomon.definitions` is read, to walk the user's definitions).
It is slow on purpose: each value at a query time ``q`` re-reads every row of the key and selects
those inside the window. Tests compare the engine with it.

Semantics decided for Gnomon (beyond the SPEC text), which the oracle follows exactly:

- Null inputs are ignored; a window without a non-null input gives None, COUNT too.
- NaN inputs take part: SUM / AVERAGE / VARIANCE / SKEW / KURTOSIS over a NaN (or ±Inf) give None;
  any NaN or ±Inf float in an output (also inside a list or a map) becomes None.
  MIN / MAX / TOP_K / BOTTOM_K order NaN above every number; UNIQUE_COUNT counts all NaN as one value.
- Source order ("seq") of rows = (ds partition, source index in GroupBy.sources, file name, row number).
  FIRST / LAST order by ts, and on a ts tie both keep the first-seen row. FIRST_K orders by
  (ts asc, seq asc), LAST_K by (ts desc, seq asc).
- SKEW is the population g1 = sqrt(n)·M3 / M2^1.5 (None if n < 3 or M2 == 0); KURTOSIS the excess
  g2 = n·M4 / M2² − 3 (None if n < 4 or M2 == 0), with Mk = Σ (x − mean)^k.
- HISTOGRAM(k): {str(value): count}; with k, the k largest counts, ties broken by key ascending.
- Buckets: a map bucket value (str) -> value; null buckets ignored; None values dropped; {} -> None.
- List inputs: every element updates, except FIRST / LAST / FIRST_K / LAST_K (the list is one value).
  Map inputs: aggregate per map key into a map. element_wise=True: position by position into a list.

Entities (SPEC §4), as decided for Gnomon:

- An EntitySource without ``mutation_table`` reads snapshot ``ds(q) - 1`` only.
- With a ``mutation_table`` the rows at q are the table's STATE at q, found by replaying changes
  (independently of the engine's "snapshot ds(q)-1 + mutations of ds(q)" recipe): start from the
  EARLIEST snapshot partition (file order), then apply every mutation row of every mutation partition
  with ``end of that snapshot day <= mutation_ts < q``, ordered by (mutation_ts, before-rows first, ds,
  file row number). An after row (``is_before`` false) is appended to the state list; a before row
  removes the FIRST state row equal to it on every column but mutation_ts / is_before / ds (None
  equals None, NaN equals NaN), and does nothing when there is none. The state list order is the
  rows' source order. Across sources, a state row's seq is (ds, source index, file, list position)
  with ds = ds(q) if the row was appended on q's day (mutation partition ds(q)), else ds(q) - 1
  (snapshot ds(q) - 1), mirroring the (ds, source, file, row) order of every other source.
  Deletes are exact for every operation: values are always recomputed from the state rows.
  A query needs ``ds(q) - 1 >=`` the earliest snapshot day (else `MissingPartition`).
- A cumulative EventSource (SCD type 2) reads only the latest partition present, rows as events.
- A GroupBy without aggregations is an attribute lookup: its output columns are taken from the key's
  row with the greatest ts < q (ties: first in source order); no such row gives None everywhere.
  Columns of the picked row are returned as they are (a null stays null, not filled from another
  row), except that NaN and ±Inf become None as in every other output. Its backfill partition D
  holds the keys with a row with ts < D+1 00:00.

Sketch operations return a marker (`ApproxUniqueCount`, `ApproxPercentiles`, `ApproxHistogram`)
holding the exact answer; `compare_values` checks the engine's answer against the sketch's
documented error (see each marker for the tolerance and why).

SQL is not evaluated: source selects and time columns must be plain column names, and derivations
are given to the oracle as Python functions (name -> function of the output row).
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from gnomon.definitions import Accuracy, Aggregation, EntitySource, EventSource, GroupBy, Join, Window
from gnomon.definitions.windows import hop_millis

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
PART_FILE = "part-0.parquet"  # the one file `Warehouse.write_partition` writes per partition

# table -> ds -> rows (dicts, in file order)
Tables = Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]
Derive = Callable[[Mapping[str, Any]], Any]


# --------------------------------------------------------------------------------------------- time


def ds_of(ts: int) -> str:
    """The UTC date holding epoch-ms ``ts``."""
    return (dt.date(1970, 1, 1) + dt.timedelta(days=ts // DAY_MS)).isoformat()


def midnight(ds: str) -> int:
    """Epoch ms of 00:00 UTC starting day ``ds``."""
    return (dt.date.fromisoformat(ds) - dt.date(1970, 1, 1)).days * DAY_MS


def shift_ds(ds: str, days: int) -> str:
    return (dt.date.fromisoformat(ds) + dt.timedelta(days=days)).isoformat()


def ds_range(start: str, end: str) -> list[str]:
    """Every ds from start to end inclusive."""
    days = (dt.date.fromisoformat(end) - dt.date.fromisoformat(start)).days
    return [shift_ds(start, i) for i in range(days + 1)]


def iso(ts: int) -> str:
    """Readable UTC time with milliseconds, for failure messages."""
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ts)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def window_start(q: int, window: Window | None) -> int | None:
    """SPEC §2: the first included ts, floor(q - W, hop(W)); None when unbounded."""
    if window is None:
        return None
    hop = hop_millis(window.millis)
    return (q - window.millis) - (q - window.millis) % hop


def in_window(ts: int, q: int, window: Window | None) -> bool:
    """floor(q - W, hop(W)) <= ts < q; unwindowed: ts < q."""
    start = window_start(q, window)
    return ts < q and (start is None or ts >= start)


# --------------------------------------------------------------------------------------- sketches


@dataclass(frozen=True)
class ApproxUniqueCount:
    """Exact distinct count; the engine's CPC estimate must lie within 3 standard errors.

    CPC's documented relative standard error is about 0.6 / sqrt(2^lg_k) (HIP estimator,
    DataSketches' CPC accuracy page: 0.589/sqrt(k)); 3 sigma is a 99.7% bound: 11% for lg_k=8. Far
    below 2^lg_k distinct values CPC is near-exact, so at least ±1 is allowed for tiny counts.
    """

    exact: int
    lg_k: int

    def tolerance(self) -> float:
        return max(1.0, 3 * 0.6 / math.sqrt(2**self.lg_k) * self.exact)

    def mismatch(self, got: Any) -> str | None:
        if not _is_int(got):
            return f"expected an int64 estimate of {self.exact}, got {got!r}"
        if abs(got - self.exact) > self.tolerance():
            return f"estimate {got} is off the exact {self.exact} by more than {self.tolerance():.2f}"
        return None


def kll_rank_error(k: int) -> float:
    """KLL's documented single-sided normalized rank error at 99% confidence (about 2.05% for k=128)."""
    try:
        import datasketches

        return float(datasketches.kll_floats_sketch.get_normalized_rank_error(k, False))
    except ImportError:  # the formula DataSketches documents for it
        return 2.296 / k**0.9723


@dataclass(frozen=True)
class ApproxPercentiles:
    """The sorted window values; each returned quantile must have a rank within the KLL error of p.

    A value v is accepted for percentile p when its rank interval [#(x < v), #(x <= v)] / n meets
    [p - eps, p + eps], eps = KLL's documented rank error for k (2.05% for k=128). This accepts
    every quantile definition (inclusive, exclusive, interpolated) that a sketch might use.
    """

    values: tuple[float, ...]
    percentiles: tuple[float, ...]
    k: int

    def mismatch(self, got: Any) -> str | None:
        if not isinstance(got, list) or len(got) != len(self.percentiles):
            return f"expected a list of {len(self.percentiles)} floats, got {got!r}"
        n = len(self.values)
        eps = kll_rank_error(self.k) + 1e-12
        for p, value in zip(self.percentiles, got, strict=True):
            if not isinstance(value, float):
                return f"percentile {p}: expected a float, got {value!r}"
            below = sum(1 for x in self.values if x < value) / n
            at_most = sum(1 for x in self.values if x <= value) / n
            if below > p + eps or at_most < p - eps:
                return (
                    f"percentile {p}: {value!r} has rank [{below:.4f}, {at_most:.4f}], not within {eps:.4f} "
                    f"of {p} (n={n}, sorted values {_short(list(self.values))})"
                )
        return None


@dataclass(frozen=True)
class ApproxHistogram:
    """Exact counts; with at most k distinct keys APPROX_HISTOGRAM_K must be exact.

    Beyond k keys a frequent-items sketch answers: at most k keys, each a real value, each count
    within the sketch's a-priori error (3.5/maxMapSize · n, DataSketches' frequent-items bound; we
    allow n/4, i.e. any map size of 16 or more), and no reported key lighter than a key left out by
    more than that error.
    """

    counts: Mapping[str, int]
    k: int

    def mismatch(self, got: Any) -> str | None:
        if len(self.counts) <= self.k:
            return None if got == dict(self.counts) else f"expected exactly {dict(self.counts)}, got {got!r}"
        if not isinstance(got, dict) or not 0 < len(got) <= self.k:
            return f"expected a map of at most {self.k} keys, got {got!r}"
        n = sum(self.counts.values())
        error = max(1.0, n / 4)
        for key, count in got.items():
            if key not in self.counts:
                return f"key {key!r} is not a value in the window; exact counts {dict(self.counts)}"
            if abs(count - self.counts[key]) > error:
                return f"count of {key!r} is {count}, exact {self.counts[key]} (error allowed {error})"
        lightest = min(self.counts[key] for key in got)
        left_out = [key for key in self.counts if key not in got]
        if len(got) == self.k and any(self.counts[key] > lightest + error for key in left_out):
            return f"reported {got!r} leaves out a heavier key; exact counts {dict(self.counts)}"
        return None


SKETCHES = (ApproxUniqueCount, ApproxPercentiles, ApproxHistogram)


# ------------------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Row:
    """One source row after the Query: its time, its source order and its selected columns."""

    ts: int
    seq: tuple[Any, ...]
    columns: Mapping[str, Any]


@dataclass(frozen=True)
class Update:
    """One non-null input value with the time and source order of the row it came from."""

    ts: int
    seq: tuple[Any, ...]
    value: Any


_WHOLE_VALUE_KINDS = ("first", "last", "first_k", "last_k")  # a list input is one value for these


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _order_key(value: Any) -> tuple[int, Any]:
    """Order NaN above every number (MIN / MAX / TOP_K / BOTTOM_K)."""
    return (1, 0.0) if _is_nan(value) else (0, value)


def _distinct_key(value: Any) -> Any:
    """UNIQUE_COUNT counts every NaN as the same value (Python sets would keep each NaN apart)."""
    return "<NaN>" if _is_nan(value) else value


def _finite_floats(values: list[Any]) -> bool:
    return all(not isinstance(v, float) or math.isfinite(v) for v in values)


def _deviations(values: list[Any]) -> list[float]:
    """x - mean for every x, with the mean computed exactly (no cancellation in the oracle)."""
    exact = [Fraction(v) for v in values]
    mean = sum(exact) / len(exact)
    return [float(x - mean) for x in exact]


def apply_operation(operation: Any, updates: list[Update]) -> Any:
    """The value of one operation over scalar updates (already non-null), before NaN cleanup."""
    if not updates:
        return None
    kind, params = operation.kind, operation.param_dict
    values = [u.value for u in updates]
    n = len(values)
    if kind == "count":
        return n
    if kind in ("sum", "average", "variance", "skew", "kurtosis"):
        if not _finite_floats(values):
            return None  # a NaN or ±Inf input makes the result NaN or ±Inf, which becomes null
        floats = any(isinstance(v, float) for v in values)
        if kind == "sum":
            return math.fsum(values) if floats else sum(int(v) for v in values)
        if kind == "average":
            return math.fsum(values) / n if floats else sum(int(v) for v in values) / n
        deviations = _deviations(values)
        m2 = math.fsum(d * d for d in deviations)
        if kind == "variance":
            return m2 / n
        if len(set(values)) == 1:  # M2 == 0 exactly
            return None
        if kind == "skew":
            return None if n < 3 else math.sqrt(n) * math.fsum(d**3 for d in deviations) / m2**1.5
        return None if n < 4 else n * math.fsum(d**4 for d in deviations) / m2**2 - 3
    if kind == "min":
        return min(values, key=_order_key)
    if kind == "max":
        return max(values, key=_order_key)
    if kind == "first":
        return min(updates, key=lambda u: (u.ts, u.seq)).value
    if kind == "last":
        return min(updates, key=lambda u: (-u.ts, u.seq)).value
    if kind == "first_k":
        return [u.value for u in sorted(updates, key=lambda u: (u.ts, u.seq))[: params["k"]]]
    if kind == "last_k":
        return [u.value for u in sorted(updates, key=lambda u: (-u.ts, u.seq))[: params["k"]]]
    if kind == "top_k":
        return sorted(values, key=_order_key, reverse=True)[: params["k"]]
    if kind == "bottom_k":
        return sorted(values, key=_order_key)[: params["k"]]
    distinct = len({_distinct_key(v) for v in values})
    if kind == "unique_count":
        return distinct
    if kind == "bounded_unique_count":
        return min(distinct, params["k"])
    if kind == "approx_unique_count":
        return ApproxUniqueCount(distinct, params["lg_k"])
    if kind == "approx_percentile":
        return ApproxPercentiles(
            tuple(sorted(float(v) for v in values)), tuple(params["percentiles"]), params["k"]
        )
    counts = Counter(str(v) for v in values)
    if kind == "histogram":
        if params["k"] is None:
            return dict(counts)
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: params["k"]])
    if kind == "approx_histogram_k":
        return ApproxHistogram(dict(counts), params["k"])
    raise NotImplementedError(kind)


def clean_output(value: Any) -> Any:
    """NaN and ±Inf outputs become null, also inside lists and maps."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [clean_output(v) for v in value]
    if isinstance(value, dict):
        return {k: clean_output(v) for k, v in value.items()}
    return value


def aggregate(aggregation: Aggregation, rows: Iterable[Row]) -> Any:
    """The value of ``aggregation`` (no buckets) over the given rows, all inside the window."""
    operation = aggregation.operation
    updates = [Update(r.ts, r.seq, r.columns[aggregation.input_column]) for r in rows]
    updates = [u for u in updates if u.value is not None]
    if not updates:
        return None
    if aggregation.element_wise:
        lengths = {len(u.value) for u in updates}
        assert len(lengths) == 1, f"element_wise input lists of different lengths {lengths}"
        return [
            clean_output(
                apply_operation(
                    operation, [Update(u.ts, u.seq, u.value[i]) for u in updates if u.value[i] is not None]
                )
            )
            for i in range(lengths.pop())
        ]
    if isinstance(updates[0].value, Mapping):
        by_key: dict[str, list[Update]] = {}
        for u in updates:
            for key, value in u.value.items():
                if value is not None:
                    by_key.setdefault(key, []).append(Update(u.ts, u.seq, value))
        result = {key: clean_output(apply_operation(operation, group)) for key, group in by_key.items()}
        result = {key: value for key, value in result.items() if value is not None}
        return result or None
    if operation.kind not in _WHOLE_VALUE_KINDS and isinstance(updates[0].value, list):
        updates = [Update(u.ts, u.seq, v) for u in updates for v in u.value if v is not None]
    return clean_output(apply_operation(operation, updates))


def aggregate_column(
    aggregation: Aggregation, window: Window | None, bucket: str | None, rows: Iterable[Row], q: int
) -> Any:
    """One output column's value at q over one key's rows (SPEC §2 window, §3 buckets)."""
    start = window_start(q, window)  # in_window(ts, q, window), with the start computed once
    selected = [r for r in rows if r.ts < q and (start is None or r.ts >= start)]
    if bucket is None:
        return aggregate(aggregation, selected)
    by_bucket: dict[str, list[Row]] = {}
    for row in selected:
        if row.columns[bucket] is not None:
            by_bucket.setdefault(str(row.columns[bucket]), []).append(row)
    result = {b: aggregate(aggregation, group) for b, group in by_bucket.items()}
    result = {b: value for b, value in result.items() if value is not None}
    return result or None


# ------------------------------------------------------------------------------------------ oracle


def _column(expression: str) -> str:
    if not expression.isidentifier():
        raise NotImplementedError(f"the oracle reads plain columns only, not SQL like {expression!r}")
    return expression


def _project_row(query: Any, raw: Mapping[str, Any], seq: tuple[Any, ...]) -> Row | None:
    """Apply a source's Query to one raw row (plain column selects only); None when its time is null."""
    if query.wheres:
        raise NotImplementedError("the oracle does not evaluate wheres")
    if query.selects is None:
        columns = {k: v for k, v in raw.items() if k != "ds"}
    else:
        columns = {name: raw[_column(expr)] for name, expr in query.selects.items()}
    ts = raw[_column(query.time_column)]
    return None if ts is None else Row(ts, seq, columns)


def _project(source: Any, source_index: int, ds: str, rows: Sequence[Mapping[str, Any]]) -> list[Row]:
    """Apply a source's Query to the rows of one partition (plain column selects only)."""
    projected = []
    for row_number, raw in enumerate(rows):
        row = _project_row(source.query, raw, (ds, source_index, PART_FILE, row_number))
        if row is not None:
            projected.append(row)
    return projected


# ------------------------------------------------------------------------------ entity mutations


@dataclass(frozen=True)
class StateRow:
    """One row of an entity table's state: its raw columns, and when it was appended.

    ``since`` is the mutation_ts of the after row that appended it, None for a row of the initial
    snapshot.
    """

    columns: Mapping[str, Any]
    since: int | None


@dataclass(frozen=True)
class Change:
    """One mutation row, with the sort key of SPEC §4's replay: (mutation_ts, before first, ds, row)."""

    mutation_ts: int
    is_before: bool
    ds: str
    row_number: int
    columns: Mapping[str, Any]  # raw columns, without mutation_ts / is_before / ds

    def sort_key(self) -> tuple[Any, ...]:
        return (self.mutation_ts, not self.is_before, self.ds, self.row_number)


class _NaN:
    """Stands for every NaN in a match key (NaN equals NaN when matching a before row)."""

    def __repr__(self) -> str:
        return "NaN"


_NAN = _NaN()


def _match_value(value: Any) -> Any:
    """A hashable, comparable stand-in for a column value: NaN equals NaN, lists and maps by content."""
    if _is_nan(value):
        return _NAN
    if isinstance(value, (list, tuple)):
        return ("<list>", tuple(_match_value(v) for v in value))
    if isinstance(value, Mapping):
        return ("<map>", tuple(sorted((repr(k), _match_value(v)) for k, v in value.items())))
    return (isinstance(value, bool), value)  # True must not equal 1


def match_key(columns: Sequence[str], row: Mapping[str, Any]) -> tuple[Any, ...]:
    """Rows with equal match keys are equal on every one of ``columns`` (a missing column is None)."""
    return tuple(_match_value(row.get(c)) for c in columns)


def mutation_changes(
    mutations: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    mutation_time_column: str = "mutation_ts",
    reversal_column: str = "is_before",
) -> list[Change]:
    """Every mutation row of every partition (ds -> rows in file order), in replay order."""
    reserved = {mutation_time_column, reversal_column, "ds"}
    changes = []
    for ds in sorted(mutations):
        for row_number, row in enumerate(mutations[ds]):
            when, before = row[mutation_time_column], row[reversal_column]
            assert _is_int(when), f"mutation row {row_number} of ds={ds}: {mutation_time_column} is {when!r}"
            assert isinstance(before, bool), (
                f"mutation row {row_number} of ds={ds}: {reversal_column} is {before!r}"
            )
            changes.append(
                Change(when, before, ds, row_number, {k: v for k, v in row.items() if k not in reserved})
            )
    changes.sort(key=Change.sort_key)
    return changes


def apply_changes(initial: Sequence[Mapping[str, Any]], changes: Iterable[Change]) -> list[StateRow]:
    """Replay changes (already filtered and in replay order) over the initial rows, SPEC §4 as decided:
    an after row is appended; a before row removes the first equal row, or does nothing."""
    changes = list(changes)
    rows = [{k: v for k, v in row.items() if k != "ds"} for row in initial]
    columns = sorted({c for r in rows for c in r} | {c for change in changes for c in change.columns})
    return _apply_keyed(
        [(row, match_key(columns, row)) for row in rows],
        [(change, match_key(columns, change.columns)) for change in changes],
    )


def _apply_keyed(
    initial: Sequence[tuple[Mapping[str, Any], tuple[Any, ...]]],
    changes: Iterable[tuple[Change, tuple[Any, ...]]],
) -> list[StateRow]:
    """`apply_changes` with every row's match key already computed."""
    state = [StateRow(row, None) for row, _ in initial]
    keys = [key for _, key in initial]
    for change, key in changes:
        if not change.is_before:
            state.append(StateRow(dict(change.columns), change.mutation_ts))
            keys.append(key)
        elif key in keys:
            position = keys.index(key)
            del state[position]
            del keys[position]
    return state


def replay(
    initial: Sequence[Mapping[str, Any]],
    mutations: Mapping[str, Sequence[Mapping[str, Any]]],
    q: int,
    *,
    after: int | None = None,
    mutation_time_column: str = "mutation_ts",
    reversal_column: str = "is_before",
) -> list[StateRow]:
    """The state at q: ``initial`` rows, then every mutation with ``after <= mutation_ts < q``."""
    changes = mutation_changes(
        mutations, mutation_time_column=mutation_time_column, reversal_column=reversal_column
    )
    return apply_changes(
        initial, [c for c in changes if c.mutation_ts < q and (after is None or c.mutation_ts >= after)]
    )


def _partition_allowed(query: Any, ds: str) -> bool:
    return (query.start_partition is None or ds >= query.start_partition) and (
        query.end_partition is None or ds <= query.end_partition
    )


class MissingPartition(LookupError):
    """The oracle needed a partition the test data does not have."""


class Oracle:
    """Values of GroupBys and Joins over in-memory tables, computed the slow, obvious way.

    ``tables``: table -> ds -> rows in file order (exactly what was written to the warehouse).
    ``derivations``: derivation name -> Python function of the output row, standing in for its SQL.
    """

    def __init__(self, tables: Tables, derivations: Mapping[str, Derive] | None = None) -> None:
        self.tables = tables
        self.derivations = dict(derivations or {})
        self._cache: dict[Any, Any] = {}

    # ---- source rows

    def entity_state(self, source: EntitySource, q: int) -> list[StateRow]:
        """The entity table's state at q (its rows in source order), replayed from the earliest snapshot."""
        query = source.query
        snapshots = self.tables.get(source.snapshot_table, {})
        needed = shift_ds(ds_of(q), -1)
        if not snapshots or needed < min(snapshots):
            raise MissingPartition(f"{source.snapshot_table} ds={needed} (state at {iso(q)})")
        earliest = min(snapshots)
        assert source.mutation_table is not None
        mutation_time_column, reversal_column = (
            _column(query.mutation_time_column),
            _column(query.reversal_column),
        )
        prepared_key = (
            "changes",
            source.snapshot_table,
            source.mutation_table,
            mutation_time_column,
            reversal_column,
        )
        if prepared_key not in self._cache:  # every row with its match key, computed once
            after = midnight(earliest) + DAY_MS
            changes = [
                c
                for c in mutation_changes(
                    self.tables.get(source.mutation_table, {}),
                    mutation_time_column=mutation_time_column,
                    reversal_column=reversal_column,
                )
                if c.mutation_ts >= after
            ]
            initial = [{k: v for k, v in row.items() if k != "ds"} for row in snapshots[earliest]]
            columns = sorted(
                {c for r in initial for c in r} | {c for change in changes for c in change.columns}
            )
            self._cache[prepared_key] = (
                [(row, match_key(columns, row)) for row in initial],
                [(change, match_key(columns, change.columns)) for change in changes],
            )
        state_key = ("state", *prepared_key, q)
        if state_key not in self._cache:
            initial, changes = self._cache[prepared_key]
            self._cache[state_key] = _apply_keyed(initial, [(c, k) for c, k in changes if c.mutation_ts < q])
        return self._cache[state_key]  # type: ignore[no-any-return]

    def _entity_rows(self, source: EntitySource, index: int, q: int) -> list[Row]:
        """A mutated entity source's rows at q; seq (ds, index, file, list position), see the module doc."""
        today, yesterday = ds_of(q), shift_ds(ds_of(q), -1)
        rows = []
        for position, state_row in enumerate(self.entity_state(source, q)):
            appended_today = state_row.since is not None and state_row.since >= midnight(today)
            row = _project_row(
                source.query,
                state_row.columns,
                (today if appended_today else yesterday, index, PART_FILE, position),
            )
            if row is not None:
                rows.append(row)
        return rows

    def source_rows(self, group_by: GroupBy, q: int) -> list[Row]:
        """Every row the GroupBy may see at q: all event partitions (the latest only if cumulative),
        snapshot ds(q) - 1 of entities without mutations, the replayed state at q of entities with."""
        rows: list[Row] = []
        for index, source in enumerate(group_by.sources):
            if isinstance(source, EventSource):
                partitions = self.tables.get(source.table, {})
                allowed = [ds for ds in sorted(partitions) if _partition_allowed(source.query, ds)]
                if source.cumulative:  # every partition holds the full history: read the latest only
                    allowed = allowed[-1:]
                for ds in allowed:
                    rows.extend(_project(source, index, ds, partitions[ds]))
            elif isinstance(source, EntitySource):
                if source.mutation_table is not None:
                    rows.extend(self._entity_rows(source, index, q))
                    continue
                snapshot = shift_ds(ds_of(q), -1)
                partitions = self.tables.get(source.snapshot_table, {})
                if snapshot not in partitions:
                    raise MissingPartition(f"{source.snapshot_table} ds={snapshot}")
                rows.extend(_project(source, index, snapshot, partitions[snapshot]))
            else:
                raise NotImplementedError(type(source).__name__)
        rows.sort(key=lambda r: r.seq)
        return rows

    def rows_by_key(self, group_by: GroupBy, q: int) -> dict[tuple[Any, ...], list[Row]]:
        """Source rows grouped by key; rows with a null key belong to no key."""
        entities = [s for s in group_by.sources if isinstance(s, EntitySource)]
        if any(s.mutation_table is not None for s in entities):
            when: Any = q  # the state changes at every mutation
        else:
            when = ds_of(q) if entities else None
        cache_key = ("rows", id(group_by), when)
        if cache_key not in self._cache:
            grouped: dict[tuple[Any, ...], list[Row]] = {}
            for row in self.source_rows(group_by, q):
                key = tuple(row.columns[k] for k in group_by.keys)
                if None not in key:
                    grouped.setdefault(key, []).append(row)
            self._cache[cache_key] = (group_by, grouped)  # keep group_by alive so id() stays unique
        return self._cache[cache_key][1]

    # ---- GroupBy

    def has_input(self, group_by: GroupBy, rows: Sequence[Row], q: int) -> bool:
        """SPEC §2: a key is in backfill partition D when it has an input row in any window at q."""
        windows: list[Window | None] = []
        for aggregation in group_by.aggregations or ():
            windows.extend(aggregation.windows or (None,))
        return any(in_window(r.ts, q, w) for r in rows for w in windows or [None])

    def raw_values(self, group_by: GroupBy, rows: Sequence[Row], q: int) -> dict[str, Any]:
        if not group_by.aggregations:
            return self.lookup_values(group_by, rows, q)
        return {
            name: aggregate_column(aggregation, window, bucket, rows, q)
            for aggregation in group_by.aggregations
            for window, bucket, name in aggregation.output_columns()
        }

    @staticmethod
    def lookup_values(group_by: GroupBy, rows: Sequence[Row], q: int) -> dict[str, Any]:
        """A GroupBy without aggregations: the columns of the row with the greatest ts < q (ties: the
        first in source order), None everywhere without one; NaN and ±Inf become None."""
        columns = group_by.output_columns()
        before = [r for r in rows if r.ts < q]
        if not before:
            return dict.fromkeys(columns)
        picked = min(before, key=lambda r: (-r.ts, r.seq))
        return {c: clean_output(picked.columns.get(c)) for c in columns}

    def derive(
        self, derivations: Sequence[Any], base: dict[str, Any], raw_columns: Sequence[str]
    ) -> dict[str, Any]:
        """Apply derivations; without Derivation("*", "*") the raw feature columns are dropped."""
        if not derivations:
            return base
        keep_raw = any(d.is_star for d in derivations)
        out = {k: v for k, v in base.items() if keep_raw or k not in raw_columns}
        for derivation in derivations:
            if not derivation.is_star:
                out[derivation.name] = clean_output(self.derivations[derivation.name](base))
        return out

    def group_by_values(self, group_by: GroupBy, key: tuple[Any, ...], q: int) -> dict[str, Any]:
        """The GroupBy's output columns (after its derivations) for one key at q."""
        cache_key = ("values", id(group_by), key, q)
        if cache_key not in self._cache:
            rows = self.rows_by_key(group_by, q).get(key, [])
            raw = self.raw_values(group_by, rows, q)
            self._cache[cache_key] = self.derive(group_by.derivations, raw, list(raw))
        return self._cache[cache_key]

    def group_by_backfill(self, group_by: GroupBy, ds: str) -> list[dict[str, Any]]:
        """Backfill partition ds: values at q = ds + 1 day 00:00 for every key with input in a window."""
        q = midnight(ds) + DAY_MS
        output = []
        for key, rows in self.rows_by_key(group_by, q).items():
            if self.has_input(group_by, rows, q):
                record = dict(zip(group_by.keys, key, strict=True))
                record.update(self.group_by_values(group_by, key, q))
                record["ds"] = ds
                output.append(record)
        return output

    # ---- Join

    @staticmethod
    def query_time(join: Join, group_by: GroupBy, left_row: Mapping[str, Any]) -> int:
        """SPEC §2's table: the q each right part is evaluated at for one left row."""
        if isinstance(join.left, EntitySource):
            return midnight(left_row["ds"]) + DAY_MS
        ts = left_row["ts"]
        if group_by.effective_accuracy is Accuracy.TEMPORAL:
            return ts
        return ts - ts % DAY_MS

    @staticmethod
    def part_columns(part: Any) -> list[str]:
        """A JoinPart's output names: ``{prefix_}{group_by_name with dots -> _}_{column}``."""
        group_by = part.group_by
        columns = group_by.output_columns()
        if group_by.derivations:
            keep_raw = any(d.is_star for d in group_by.derivations)
            columns = [c for c in columns if keep_raw] + [
                d.name for d in group_by.derivations if not d.is_star
            ]
        prefix = f"{part.prefix}_" if part.prefix else ""
        assert group_by.name, "give every GroupBy in an oracle test a name"
        return [f"{prefix}{group_by.name.replace('.', '_')}_{c}" for c in columns]

    def join_rows(self, join: Join, left_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Every left row (same count, duplicates kept) with its features and derivations appended."""
        output = []
        raw_columns = [c for part in join.right_parts for c in self.part_columns(part)]
        for left_row in left_rows:
            record = dict(left_row)
            for part in join.right_parts:
                group_by = part.group_by
                names = self.part_columns(part)
                key = tuple(left_row[part.left_column_for(k)] for k in group_by.keys)
                if None in key:
                    values: list[Any] = [None] * len(names)
                else:
                    values = list(
                        self.group_by_values(
                            group_by, key, self.query_time(join, group_by, left_row)
                        ).values()
                    )
                record.update(zip(names, values, strict=True))
            output.append(self.derive(join.derivations, record, raw_columns))
        return output

    def left_rows(self, join: Join, start_ds: str, end_ds: str) -> list[dict[str, Any]]:
        """The Join's left rows for a backfill of [start_ds, end_ds], each with its ``ds`` partition."""
        left = join.left
        table = left.table if isinstance(left, EventSource) else left.snapshot_table
        partitions = self.tables.get(table, {})
        rows = []
        for ds in ds_range(start_ds, end_ds):
            if ds not in partitions:
                raise MissingPartition(f"{table} ds={ds}")
            for row in _project(left, 0, ds, partitions[ds]):
                rows.append({**row.columns, "ts": row.ts, "ds": ds})
        return rows

    def join_backfill(self, join: Join, start_ds: str, end_ds: str) -> list[dict[str, Any]]:
        return self.join_rows(join, self.left_rows(join, start_ds, end_ds))


# ------------------------------------------------------------------------------------- comparison


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def compare_values(expected: Any, got: Any, rel: float = 1e-9, abs_tol: float = 1e-9) -> str | None:
    """None when ``got`` matches ``expected``, else why not. Types are checked (int64 is not float64)."""
    if isinstance(expected, SKETCHES):
        return expected.mismatch(got)
    if expected is None or got is None:
        return None if expected is got else f"expected {_short(expected)}, got {_short(got)}"
    if isinstance(expected, bool):
        return None if isinstance(got, bool) and got == expected else f"expected {expected!r}, got {got!r}"
    if _is_int(expected):
        return None if _is_int(got) and got == expected else f"expected int {expected!r}, got {got!r}"
    if isinstance(expected, float):
        if not isinstance(got, float):
            return f"expected float {expected!r}, got {type(got).__name__} {got!r}"
        return (
            None
            if math.isclose(expected, got, rel_tol=rel, abs_tol=abs_tol)
            else f"expected {expected!r}, got {got!r}"
        )
    if isinstance(expected, list):
        if not isinstance(got, list) or len(got) != len(expected):
            return f"expected list {_short(expected)}, got {_short(got)}"
        for index, (e, g) in enumerate(zip(expected, got, strict=True)):
            problem = compare_values(e, g, rel, abs_tol)
            if problem:
                return f"[{index}]: {problem} (whole: expected {_short(expected)}, got {_short(got)})"
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(got) != set(expected):
            return f"expected map {_short(expected)}, got {_short(got)}"
        for key in expected:
            problem = compare_values(expected[key], got[key], rel, abs_tol)
            if problem:
                return f"[{key!r}]: {problem}"
        return None
    return None if expected == got else f"expected {expected!r}, got {got!r}"


def assert_exercised(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """The data must exercise the features: no expected feature column is null on every row (so that
    a comparison cannot pass vacuously)."""
    empty = [c for c in columns if all(row.get(c) is None for row in rows)]
    assert not empty, f"the test data leaves these columns null on every row: {empty}"


def assert_rows_match(
    expected: Sequence[Mapping[str, Any]],
    got: Sequence[Mapping[str, Any]],
    identity: Sequence[str],
    *,
    context: Callable[[Mapping[str, Any]], str] | None = None,
    limit: int = 15,
) -> None:
    """Compare two row lists as multisets matched on the ``identity`` columns, then column by column.

    ``context(expected_row)`` may add a description (e.g. the window's input rows) to each failure.
    """
    problems: list[str] = []
    expected_columns = set().union(*(r.keys() for r in expected)) if expected else set()
    got_columns = set().union(*(r.keys() for r in got)) if got else set()
    if expected and got and expected_columns != got_columns:
        problems.append(
            f"columns differ: missing {sorted(expected_columns - got_columns)}, "
            f"unexpected {sorted(got_columns - expected_columns)}"
        )

    def ident(row: Mapping[str, Any]) -> str:
        return repr(tuple(row.get(c) for c in identity))

    expected_sorted = sorted(expected, key=ident)
    got_sorted = sorted(got, key=ident)
    expected_ids = Counter(ident(r) for r in expected)
    got_ids = Counter(ident(r) for r in got)
    if expected_ids != got_ids:
        missing, extra = expected_ids - got_ids, got_ids - expected_ids
        problems.append(
            f"rows differ ({len(expected)} expected, {len(got)} got): missing {_short(dict(missing), 800)}, "
            f"unexpected {_short(dict(extra), 800)}"
        )
    else:
        for want, have in zip(expected_sorted, got_sorted, strict=True):
            for column in sorted(want):
                if column not in have:
                    continue
                problem = compare_values(want[column], have[column])
                if problem:
                    extra_text = f"\n      {context(want)}" if context else ""
                    problems.append(f"{ident(want)} {column}: {problem}{extra_text}")
    if problems:
        shown = problems[:limit]
        more = f"\n  … and {len(problems) - limit} more" if len(problems) > limit else ""
        raise AssertionError(
            f"{len(problems)} mismatch(es) against the oracle:\n  " + "\n  ".join(shown) + more
        )


# ------------------------------------------------------------------------------ rows <-> Arrow plumbing


def arrow_rows(table: Any) -> list[dict[str, Any]]:
    """A pyarrow Table as Python rows, with map columns as dicts (Arrow gives lists of pairs)."""
    import pyarrow as pa

    def convert(value: Any, arrow_type: Any) -> Any:
        if value is None:
            return None
        if pa.types.is_map(arrow_type):
            return {k: convert(v, arrow_type.item_type) for k, v in value}
        if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
            return [convert(v, arrow_type.value_type) for v in value]
        return value

    columns = {
        name: [convert(v, table.schema.field(name).type) for v in table.column(name).to_pylist()]
        for name in table.column_names
    }
    return [{name: columns[name][i] for name in table.column_names} for i in range(table.num_rows)]


def write_tables(warehouse: Any, tables: Tables, schemas: Mapping[str, Any]) -> None:
    """Write every partition of ``tables`` through ``warehouse.write_partition`` with explicit schemas."""
    import pyarrow as pa

    for table, partitions in tables.items():
        for ds, rows in partitions.items():
            warehouse.write_partition(table, ds, pa.Table.from_pylist(list(rows), schema=schemas[table]))
