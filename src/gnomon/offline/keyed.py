"""Point-in-time values per key from sorted rows, with hop tiles and the shared IR library.

This is the core of the engines that cannot express SPEC §2's windows as per-row frames (Spark): a
task receives Arrow batches holding, key after key, the key's *events* and *queries* sorted by time,
and answers every query with the same aggregators the online path uses (`gnomon.aggregation`):

- events are folded once into hop tiles (partial aggregates per (key, hop), SPEC §3's IRs);
- queries of a key are answered in time order: the tiles fully inside ``[window_start(q), floor(q, hop))``
  are merged with a two-stack sliding window (every tile is merged O(1) times however many queries
  there are), then the raw *head* events ``[floor(q, hop), q)`` are folded on top;
- entity rows are *versions* valid for ``__from < q <= __to`` on the day after their snapshot day, so a
  query folds the versions valid at q directly (a key's entity rows are few);
- a GroupBy without aggregations picks the latest row before q (ties: first in source order).

Rows are tagged: ``__tag = 0`` for a query, ``1`` for an event; a query sorts before the events of its
own time, which it must not see (``ts < q``).

Event features of ordinary keys take a faster road to the same values: many keys at once, each query's
window as an index range of the sorted events, reduced with numpy (`_fast_values`, at the end of this
module); the key-by-key IR fold above stays for what has no vectorised form and for hot keys' parts.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gnomon.aggregation.base import IR, Aggregator, to_key
from gnomon.aggregation.codec import decode_ir, encode_ir
from gnomon.aggregation.containers import BucketedAggregator
from gnomon.aggregation.counting import Count, FloatAverage, FloatSum, IntAverage, IntSum
from gnomon.aggregation.moments import Variance
from gnomon.aggregation.ordering import First, FirstK, Last, LastK, Max, Min
from gnomon.aggregation.sketches import ApproxUniqueCount
from gnomon.compile.features import OnlineFeature
from gnomon.definitions.windows import DAY_MS, window_start
from gnomon.offline.engines import cpc

QUERY, EVENT, TILE = 0, 1, 2


@dataclass
class KeyRows:
    """One key's events (sorted by ts, seq), column by column, and its queries (sorted by q)."""

    events_ts: list[int]
    events_seq: list[int]
    events_columns: list[list[Any]]  # one list per value column, in the layout's order
    events_meta: list[list[Any]]  # entity rows: the __kind, __ds, __from, __to columns; else empty
    queries: list[tuple[int, int, str | None]]  # (qid, q, snapshot ds)
    #: a hot key's part: per feature index, the (start, encoded IR) of the tiles computed by other
    #: tasks (`tile_rows`); the events are then only the head events of this part's queries
    tiles: dict[int, list[tuple[int, bytes]]] | None = None

    def values(self, index: int) -> list[Any]:
        """The value columns of event ``index``."""
        return [column[index] for column in self.events_columns]

    def meta(self, index: int) -> tuple[Any, ...]:
        return tuple(column[index] for column in self.events_meta)


class _Sliding:
    """The merge of a range of tiles that only moves forward (two stacks: suffix merges in front,
    a running merge at the back), giving a fresh IR for the current range."""

    def __init__(self, aggregator: Aggregator, tiles: list[IR]) -> None:
        self.aggregator = aggregator
        self.tiles = tiles
        self.lo = self.hi = 0
        self.front: list[IR] = []  # front[-1]: merge of tiles[lo:mid]
        self.back: IR = None  # merge of tiles[mid:hi]

    def push(self) -> None:
        self.back = self.aggregator.merge(self.back, self.tiles[self.hi])
        self.hi += 1

    def pop(self) -> None:
        if not self.front:
            merged: IR = None
            for index in range(self.hi - 1, self.lo - 1, -1):  # merge(earlier, later): earlier rows first
                merged = self.aggregator.merge(self.aggregator.merge(None, self.tiles[index]), merged)
                self.front.append(merged)
            self.back = None
        self.front.pop()
        self.lo += 1

    def value(self) -> IR:
        front = self.front[-1] if self.front else None
        return self.aggregator.merge(self.aggregator.merge(None, front), self.back)


def needed_ranges(
    events_ts: list[int], queries: Sequence[tuple[int, int, Any]], window_ms: int | None
) -> list[tuple[int, int]]:
    """The index ranges of the events some query's window reads: the union of ``[window_start(q), q)``
    (queries sorted by q); a short window over a long history folds only the events near its queries.

    >>> needed_ranges([0, 10, 20, 30, 40], [(1, 25, None), (2, 41, None)], None)
    [(0, 5)]
    """
    ranges: list[tuple[int, int]] = []
    for _, q, _ in queries:
        start = window_start(q, window_ms)
        low = 0 if start is None else bisect.bisect_left(events_ts, start)
        high = bisect.bisect_left(events_ts, q)
        if low >= high:
            continue
        if ranges and low <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], high))
        else:
            ranges.append((low, high))
    return ranges


def windowed_values(feature: OnlineFeature, rows: KeyRows, feature_index: int = 0) -> list[Any]:
    """The finalized value of one feature at each query of a key with only event rows."""
    aggregator = feature.aggregator
    accumulate = aggregator.accumulate
    window_ms = feature.plan.window_ms
    hop = feature.plan.hop_ms or DAY_MS
    events_ts, events_seq = rows.events_ts, rows.events_seq
    column = rows.events_columns[feature.input_index]
    buckets = None if feature.bucket_index is None else rows.events_columns[feature.bucket_index]
    starts: list[int] = []
    tiles: list[IR] = []
    if rows.tiles is not None:  # a hot key's part: its tiles were folded by other tasks
        for start, data in sorted(rows.tiles.get(feature_index, [])):
            starts.append(start)
            tiles.append(decode_ir(aggregator, data))
    for low, high in [] if rows.tiles is not None else needed_ranges(events_ts, rows.queries, window_ms):
        for index in range(low, high):
            value = column[index]
            if value is None or (buckets is not None and buckets[index] is None):
                continue
            ts = events_ts[index]
            start = ts - ts % hop
            if not starts or starts[-1] != start:
                starts.append(start)
                tiles.append(None)
            if buckets is None:
                tiles[-1] = accumulate(tiles[-1], value, ts, events_seq[index])
            else:
                tiles[-1] = accumulate(tiles[-1], value, ts, events_seq[index], buckets[index])  # type: ignore[call-arg]
    times = [q for _, q, _ in rows.queries]
    return sliding_values(aggregator, window_ms, hop, starts, tiles, times, _head_irs(feature, rows, hop))


def _head_irs(feature: OnlineFeature, rows: KeyRows, hop: int) -> Iterator[IR]:
    """Per query (in time order), the fold of the raw *head* events ``[floor(q, hop), q)``: it restarts
    at each new hop and grows within one."""
    events_ts, events_seq = rows.events_ts, rows.events_seq
    head_start_seen, head_ir, head_end = None, None, 0
    for _, q, _ in rows.queries:
        head_start = q - q % hop
        if head_start != head_start_seen:
            head_start_seen, head_ir = head_start, None
            head_end = bisect.bisect_left(events_ts, head_start)
        stop = bisect.bisect_left(events_ts, q)
        for index in range(head_end, stop):
            head_ir = feature.accumulate(head_ir, rows.values(index), events_ts[index], events_seq[index])
        head_end = max(head_end, stop)
        yield head_ir


def sliding_values(
    aggregator: Aggregator,
    window_ms: int | None,
    hop: int,
    starts: list[int],
    tiles: list[IR],
    times: list[int],
    heads: Iterable[IR],
) -> list[Any]:
    """The finalized values at query times ``times`` (ascending) of one key: the tiles (starting at
    ``starts``) fully inside ``[window_start(q), floor(q, hop))``, merged by a `_Sliding`, then the
    query's head IR (from ``heads``, one per query) on top."""
    sliding = _Sliding(aggregator, tiles)
    out: list[Any] = []
    for q, head_ir in zip(times, heads, strict=False):
        head_start = q - q % hop
        tail = window_start(q, window_ms)
        while sliding.hi < len(starts) and starts[sliding.hi] < head_start:
            sliding.push()
        while tail is not None and sliding.lo < sliding.hi and starts[sliding.lo] < tail:
            sliding.pop()
        out.append(aggregator.finalize(aggregator.merge(sliding.value(), head_ir)))
    return out


def _valid(meta: tuple[Any, ...], q: int, snap_ds: str | None) -> bool:
    """Whether a row counts at q: every event row does; an entity version when it belongs to the
    snapshot q reads and ``__from < q <= __to`` (nulls: unbounded)."""
    if not meta or meta[0] != "entities":
        return True
    _, ds, valid_from, valid_to = meta
    return ds == snap_ds and (valid_from is None or valid_from < q) and (valid_to is None or q <= valid_to)


def direct_values(feature: OnlineFeature, rows: KeyRows) -> list[Any]:
    """One feature at each query, folding the rows valid at q in (ts, seq) order (entity versions)."""
    aggregator = feature.aggregator
    out: list[Any] = []
    order = sorted(range(len(rows.events_ts)), key=lambda i: (rows.events_ts[i], rows.events_seq[i]))
    for _, q, snap_ds in rows.queries:
        start = window_start(q, feature.plan.window_ms)
        ir: IR = None
        for index in order:
            ts = rows.events_ts[index]
            if ts >= q:
                break
            if (start is None or ts >= start) and _valid(rows.meta(index), q, snap_ds):
                ir = feature.accumulate(ir, rows.values(index), ts, rows.events_seq[index])
        out.append(aggregator.finalize(ir))
    return out


def lookup_values(rows: KeyRows, width: int) -> list[list[Any]]:
    """Per query, the value columns of the latest valid row with ``ts < q`` (ties: first in source
    order), or nulls."""
    out: list[list[Any]] = []
    for _, q, snap_ds in rows.queries:
        best: int | None = None
        for index, ts in enumerate(rows.events_ts):
            if ts >= q or not _valid(rows.meta(index), q, snap_ds):
                continue
            if best is None or (ts, -rows.events_seq[index]) > (rows.events_ts[best], -rows.events_seq[best]):
                best = index
        out.append(rows.values(best) if best is not None else [None] * width)
    return out


def finite_lookup(value: Any, kind: pa.DataType) -> Any:
    """A looked-up value with NaN and ±Inf nulled as every output is (SPEC §3), the way the embedded
    engine's ``null_non_finite`` does: a float or float list element becomes null; a map of floats
    leaves such entries out (and is null when none is left).

    >>> finite_lookup([1.5, math.nan], pa.list_(pa.float64())), finite_lookup([("a", math.inf)], pa.map_(pa.string(), pa.float64()))
    ([1.5, None], None)
    """
    if value is None:
        return None
    if pa.types.is_floating(kind):
        return value if math.isfinite(value) else None
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return [finite_lookup(v, kind.value_type) for v in value]
    if pa.types.is_map(kind):
        items = list(value.items()) if isinstance(value, dict) else list(value)
        if pa.types.is_floating(kind.item_type):
            return [(k, v) for k, v in items if v is not None and math.isfinite(v)] or None
        return [(k, finite_lookup(v, kind.item_type)) for k, v in items]
    return value


@dataclass
class Layout:
    """Where things sit in the batches a task receives (column names) and what it answers."""

    keys: list[str]
    value_columns: list[str]  # event columns the features read (inputs and buckets) or a lookup returns
    features: list[OnlineFeature]  # empty: a lookup of ``value_columns``
    entities: bool  # rows carry __kind, __ds, __from, __to
    output: pa.Schema  # __qid, then one column per feature (or per looked-up column)


_META = ("__kind", "__ds", "__from", "__to")


def answer(layout: Layout, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The task body: batches of tagged rows sorted by (keys, time, tag, seq) in, values per query out.

    Event features are answered a chunk of whole keys at a time (`_answer_chunk`): with numpy for the
    operations that have a vectorised form (`_fast_values`), with the IR per key for the others; entity
    versions and lookups are answered key by key (`_answer_keys`)."""
    if layout.entities or not layout.features:
        yield from _answer_keys(layout, batches)
        return
    for chunk in _chunks(layout, batches):
        yield from _answer_chunk(layout, chunk)


def _answer_keys(layout: Layout, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Key by key: each key's rows gathered into `KeyRows` and answered with the IR."""
    current: tuple[Any, ...] | None = None
    rows = _empty_rows(layout)
    answered: list[tuple[int, list[Any]]] = []
    for batch in batches:
        columns = {name: batch.column(name).to_pylist() for name in batch.schema.names}
        keys = list(zip(*(columns[k] for k in _key_columns(layout, columns)), strict=True))
        begin = 0
        for end in [*_boundaries(keys), batch.num_rows]:  # each run of one key
            if end == begin:
                continue
            if keys[begin] != current:
                answered += _answer_key(layout, rows)
                current, rows = keys[begin], _empty_rows(layout)
            _add_run(layout, rows, columns, begin, end)
            begin = end
        if len(answered) >= 10_000:
            yield _batch(layout, answered)
            answered = []
    answered += _answer_key(layout, rows)
    if answered:
        yield _batch(layout, answered)


def _key_columns(layout: Layout, names: Iterable[str]) -> list[str]:
    """The columns that tell keys apart: the GroupBy's keys, and a hot key's part when there is one."""
    return [*layout.keys, "__part"] if "__part" in names else list(layout.keys)


def _boundaries(keys: list[tuple[Any, ...]]) -> list[int]:
    """Indices where a new key starts (after the first row)."""
    return [index for index in range(1, len(keys)) if keys[index] != keys[index - 1]]


def _add_run(layout: Layout, rows: KeyRows, columns: dict[str, list[Any]], begin: int, end: int) -> None:
    """Append rows ``[begin, end)`` of one key (queries and events, in time order) to ``rows``."""
    tags, times, seqs = columns["__tag"], columns["__t"], columns["__seq"]
    qids, snaps = columns.get("__qid", []), columns.get("__snap_ds", [])
    if "__ir" in columns and any(tags[index] == TILE for index in range(begin, end)):
        rows.tiles = rows.tiles if rows.tiles is not None else {}
        for index in range(begin, end):
            if tags[index] == TILE:
                rows.tiles.setdefault(columns["__f"][index], []).append(
                    (times[index], columns["__ir"][index])
                )
    if "__part" in columns and columns["__part"][begin] != -1 and rows.tiles is None:
        rows.tiles = {}  # a hot key's part without tiles: every window is in its head
    events = [index for index in range(begin, end) if tags[index] == EVENT]
    rows.queries += [(qids[i], times[i], snaps[i]) for i in range(begin, end) if tags[i] == QUERY]
    if not events:
        return
    if len(events) == events[-1] - events[0] + 1:  # contiguous: slice the columns
        low, high = events[0], events[-1] + 1
        rows.events_ts += times[low:high]
        rows.events_seq += seqs[low:high]
        for target, name in zip(rows.events_columns, layout.value_columns, strict=True):
            target += columns[name][low:high]
        for target, name in zip(rows.events_meta, _META if layout.entities else (), strict=False):
            target += columns[name][low:high]
        return
    rows.events_ts += [times[i] for i in events]
    rows.events_seq += [seqs[i] for i in events]
    for target, name in zip(rows.events_columns, layout.value_columns, strict=True):
        column = columns[name]
        target += [column[i] for i in events]
    for target, name in zip(rows.events_meta, _META if layout.entities else (), strict=False):
        column = columns[name]
        target += [column[i] for i in events]


def _empty_rows(layout: Layout) -> KeyRows:
    return KeyRows(
        [], [], [[] for _ in layout.value_columns], [[] for _ in _META] if layout.entities else [], []
    )


def _answer_key(layout: Layout, rows: KeyRows) -> list[tuple[int, list[Any]]]:
    if not rows.queries:
        return []
    if not layout.features:
        values = lookup_values(rows, len(layout.value_columns))
        kinds = [field.type for field in layout.output][1:]
        return [
            (qid, [finite_lookup(v, kind) for v, kind in zip(row, kinds, strict=True)])
            for (qid, _, _), row in zip(rows.queries, values, strict=True)
        ]
    per_feature = [
        direct_values(f, rows) if layout.entities else windowed_values(f, rows, index)
        for index, f in enumerate(layout.features)
    ]
    return [
        (qid, [column[index] for column in per_feature]) for index, (qid, _, _) in enumerate(rows.queries)
    ]


def _batch(layout: Layout, answered: Sequence[tuple[int, list[Any]]]) -> pa.RecordBatch:
    arrays = [pa.array([qid for qid, _ in answered], pa.int64())]
    for index, field in enumerate(layout.output):
        if index == 0:
            continue
        arrays.append(_arrow_values([row[index - 1] for _, row in answered], field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=layout.output)


def tile_rows(layout: Layout, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Hot keys' tiles, folded where the events are (rows partitioned by (key, day), sorted by time):
    one row per (key, feature, tile) with the encoded IR and the days of the queries that may read it
    (``__first`` .. ``__last``, null: no end), so that a key's history is folded by many tasks.

    A tile ``[s, s + hop)`` of a window W is read by a query at q when ``s + hop <= floor(q, hop)`` and
    ``window_start(q) <= s``, i.e. ``s + hop <= q < s + hop + W``.
    """
    current: tuple[Any, ...] | None = None
    rows = _empty_rows(layout)
    schema: pa.Schema | None = None
    for batch in batches:
        schema = schema or tile_schema(layout, batch.schema)
        columns = {name: batch.column(name).to_pylist() for name in batch.schema.names}
        keys = list(zip(*(columns[k] for k in layout.keys), strict=True))
        begin = 0
        for end in [*_boundaries(keys), batch.num_rows]:
            if end == begin:
                continue
            if keys[begin] != current:
                if current is not None:
                    yield _fold_tiles(layout, current, rows, schema)
                current, rows = keys[begin], _empty_rows(layout)
            _add_run(layout, rows, columns, begin, end)
            begin = end
    if current is not None and schema is not None:
        yield _fold_tiles(layout, current, rows, schema)


def _fold_tiles(layout: Layout, key: tuple[Any, ...], rows: KeyRows, schema: pa.Schema) -> pa.RecordBatch:
    out: dict[str, list[Any]] = {name: [] for name in schema.names}
    for feature_index, feature in enumerate(layout.features):
        hop = feature.plan.hop_ms or DAY_MS
        window = feature.plan.window_ms
        folded: dict[int, IR] = {}
        for index, ts in enumerate(rows.events_ts):
            start = ts - ts % hop
            folded[start] = feature.accumulate(
                folded.get(start), rows.values(index), ts, rows.events_seq[index]
            )
        for start, ir in folded.items():
            if ir is None:
                continue
            for name, value in zip(layout.keys, key, strict=True):
                out[name].append(value)
            out["__f"].append(feature_index)
            out["__t"].append(start)
            out["__ir"].append(encode_ir(feature.aggregator, ir))
            out["__first"].append((start + hop) // DAY_MS)
            out["__last"].append(None if window is None else (start + hop + window - 1) // DAY_MS)
    return pa.RecordBatch.from_pydict(out, schema=schema)


def tile_schema(layout: Layout, events: pa.Schema) -> pa.Schema:
    """The schema of `tile_rows`' output."""
    return pa.schema(
        [
            *(events.field(k) for k in layout.keys),
            pa.field("__f", pa.int32()),
            pa.field("__t", pa.int64()),
            pa.field("__ir", pa.binary()),
            pa.field("__first", pa.int64()),
            pa.field("__last", pa.int64()),
        ]
    )


# ---------------------------------------------------------------------- whole chunks of keys, with numpy
#
# The IR folds event by event in Python; for the common operations the value over a window is a
# function of the window's index range in the (key, ts, seq)-sorted events, so a chunk of many keys is
# answered with a few numpy passes: each query's inputs ``[lo, hi)`` (`_windows`), then one reduction
# per operation over those ranges. Every reduction gives exactly the IR's value (the test suite holds
# them to it, `tests/test_keyed_fast.py`); an operation or input type without one keeps the IR path.

#: rows per chunk: enough keys to amortise the numpy passes and the per-chunk work (`IconTable`)
CHUNK_ROWS = 200_000
_INT62 = 2**62
#: float sums are exact integers of units 2^emin when every finite input is within these magnitudes
#: (no overflow, no subnormal result: the IR's exact sums never overflow there either)
_FLOAT_RANGE = (2.0**-900, 2.0**900)
_LIMB_BITS = 32
_MAX_LIMBS = 12


def _chunks(layout: Layout, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.Table]:
    """The rows as tables of about `CHUNK_ROWS` rows holding whole keys (a key never straddles two)."""
    size = CHUNK_ROWS
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        if count < size:
            continue
        table = pa.Table.from_batches(pending)
        cut = _last_key_start(layout, table)
        if cut:
            yield table.slice(0, cut)
            pending, count = table.slice(cut).to_batches(), table.num_rows - cut
    if count:
        yield pa.Table.from_batches(pending)


def _last_key_start(layout: Layout, table: pa.Table) -> int:
    """The first row of the table's last key."""
    same = np.ones(table.num_rows, dtype=bool)
    for name in _key_columns(layout, table.schema.names):
        column = table.column(name)
        equal = pc.fill_null(pc.equal(column, column[table.num_rows - 1]), False)
        same &= equal.to_numpy()
    differs = np.flatnonzero(~same)
    return int(differs[-1]) + 1 if len(differs) else 0


def _answer_chunk(layout: Layout, table: pa.Table) -> Iterator[pa.RecordBatch]:
    """A chunk's answers: a hot key's parts (with tiles folded elsewhere) key by key, the rest at once."""
    table = table.combine_chunks()
    if "__part" in table.schema.names:
        hot = pc.fill_null(pc.not_equal(table.column("__part"), -1), False)
        if pc.any(hot).as_py():
            yield from _answer_keys(layout, table.filter(hot).to_batches())
            table = table.filter(pc.invert(hot)).combine_chunks()
    chunk = _Chunk(layout, table)
    if len(chunk.queries):
        yield _chunk_batch(layout, chunk)


class _Chunk:
    """Whole keys' rows (sorted by key, time, tag, seq) as numpy arrays: which rows start a key, are
    events, are queries."""

    def __init__(self, layout: Layout, table: pa.Table) -> None:
        self.table = table
        count = table.num_rows
        starts = np.zeros(count, dtype=bool)
        starts[:1] = True
        for name in _key_columns(layout, table.schema.names):
            column = table.column(name)
            if count > 1:
                differs = pc.not_equal(column.slice(1), column.slice(0, count - 1))
                starts[1:] |= pc.fill_null(differs, True).to_numpy()
        self.key_starts = np.flatnonzero(starts)
        self.rank = np.cumsum(starts) - 1  # the key's number in the chunk
        tags = table.column("__tag").to_numpy()
        self.times = table.column("__t").to_numpy().astype(np.int64)
        self.events = np.flatnonzero(tags == EVENT)
        self.queries = np.flatnonzero(tags == QUERY)


def _chunk_batch(layout: Layout, chunk: _Chunk) -> pa.RecordBatch:
    arrays: list[pa.Array | None] = [_fast_values(feature, chunk) for feature in layout.features]
    generic = [index for index, array in enumerate(arrays) if array is None]
    if generic:
        values = _generic_values(layout, chunk, generic)
        for index in generic:
            arrays[index] = _arrow_values(values[index], layout.output.field(index + 1).type)
    qids = chunk.table.column("__qid").take(pa.array(chunk.queries)).cast(pa.int64())
    columns = [qids.combine_chunks() if isinstance(qids, pa.ChunkedArray) else qids]
    for index, array in enumerate(arrays):
        assert array is not None
        columns.append(array.cast(layout.output.field(index + 1).type))
    return pa.RecordBatch.from_arrays(columns, schema=layout.output)


def _arrow_values(values: list[Any], kind: pa.DataType) -> pa.Array:
    """Finalized values as an Arrow array (a map as its list of items)."""
    if pa.types.is_map(kind):
        values = [None if v is None else list(v.items()) if isinstance(v, dict) else v for v in values]
    return pa.array(values, kind)


def _generic_values(layout: Layout, chunk: _Chunk, indices: list[int]) -> dict[int, list[Any]]:
    """The features ``indices`` at every query of the chunk, key by key with the IR (`windowed_values`)."""
    table = chunk.table
    used = {"__t", "__tag", "__seq", "__qid", "__snap_ds"}
    for index in indices:  # the other value columns are left empty: no IR here reads them
        feature = layout.features[index]
        used |= {feature.plan.input_column, *([feature.plan.bucket] if feature.plan.bucket else [])}
    columns = {
        name: table.column(name).to_pylist() if name in used else [None] * table.num_rows
        for name in table.schema.names
        if name in used or name in layout.value_columns
    }
    out: dict[int, list[Any]] = {index: [] for index in indices}
    bounds = [*chunk.key_starts.tolist(), table.num_rows]
    with_queries = np.zeros(table.num_rows + 1, dtype=bool)
    with_queries[chunk.queries] = True
    asked = np.concatenate([[0], np.cumsum(with_queries)])
    for begin, end in zip(bounds, bounds[1:], strict=False):
        if asked[end] == asked[begin]:
            continue
        rows = _empty_rows(layout)
        _add_run(layout, rows, columns, begin, end)
        for index in indices:
            out[index] += windowed_values(layout.features[index], rows, index)
    return out


@dataclass
class _Windows:
    """One feature's non-null inputs in a chunk, in (key, ts, seq) order, and the range of them each
    query's window reads: inputs ``lo[i]:hi[i]`` for query i."""

    values: pa.Array
    rank: np.ndarray
    ts: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    query_rank: np.ndarray
    q: np.ndarray
    window_ms: int | None
    hop: int
    valid: pa.Array  # which of the chunk's events are inputs


def _windows(feature: OnlineFeature, chunk: _Chunk) -> _Windows | None:
    """The window ranges: ``hi`` counts the inputs on rows before the query's (a query sorts before the
    events of its own time), ``lo`` is the first input at or after ``window_start(q)`` of the query's
    key, found on (key, ts) packed into one int64; None when they do not fit in one."""
    table = chunk.table
    values = table.column(feature.plan.input_column).chunk(0).take(pa.array(chunk.events))
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    if feature.plan.bucket is not None:  # a row without a bucket is left out (`BucketedAggregator`)
        buckets = table.column(feature.plan.bucket).chunk(0).take(pa.array(chunk.events))
        valid &= buckets.is_valid().to_numpy(zero_copy_only=False)
    rows = chunk.events[valid]
    before = np.zeros(table.num_rows + 1, dtype=np.int64)
    before[rows + 1] = 1
    np.cumsum(before, out=before)
    hi = before[chunk.queries]
    rank, ts = chunk.rank[rows], chunk.times[rows]
    query_rank, q = chunk.rank[chunk.queries], chunk.times[chunk.queries]
    window = feature.plan.window_ms
    lo = _window_lows(rank, ts, query_rank, q, window)
    if lo is None:
        return None
    hop = feature.plan.hop_ms or DAY_MS
    kept = pa.array(valid)
    return _Windows(values.filter(kept), rank, ts, lo, hi, query_rank, q, window, hop, kept)


def _window_lows(
    rank: np.ndarray, ts: np.ndarray, query_rank: np.ndarray, q: np.ndarray, window: int | None
) -> np.ndarray | None:
    """Per query, its key's first input at or after ``window_start(q, window)`` (vectorised); without
    a window, its key's first input."""
    if window is None:
        out: np.ndarray = np.searchsorted(rank, query_rank, side="left").astype(np.int64)
        return out
    # SPEC §2's rule itself over int64 arrays: numpy's integer % floors as Python's does
    starts: np.ndarray = window_start(q, window)  # type: ignore[arg-type, assignment]
    return _first_at(rank, ts, query_rank, starts)


def _first_at(
    rank: np.ndarray, ts: np.ndarray, query_rank: np.ndarray, times: np.ndarray
) -> np.ndarray | None:
    """Per query, the first input of its key at or after its time: one binary search on (key, ts)
    packed into an int64; None when they do not fit in one."""
    if not len(ts) or not len(times):
        return np.searchsorted(rank, query_rank, side="left").astype(np.int64)
    base = min(int(ts.min()), int(times.min()))
    span = max(int(ts.max()), int(times.max())) - base + 1
    if (max(int(rank.max()), int(query_rank.max())) + 1) * span >= _INT62:
        return None
    packed = rank * span + (ts - base)
    out: np.ndarray = np.searchsorted(packed, query_rank * span + (times - base), side="left").astype(
        np.int64
    )
    return out


def _fast_values(feature: OnlineFeature, chunk: _Chunk) -> pa.Array | None:
    """One feature at every query of the chunk with numpy, or None: no vectorised form (the IR then)."""
    kind = chunk.table.schema.field(feature.plan.input_column).type
    aggregator = feature.aggregator
    if feature.plan.bucket is not None and isinstance(aggregator, BucketedAggregator):
        aggregator = aggregator.inner
        bucket_kind = chunk.table.schema.field(feature.plan.bucket).type
        if not (_scalar_type(bucket_kind) and not pa.types.is_floating(bucket_kind)):
            return None
    handler = _FAST.get(type(aggregator))
    if handler is None or not _scalar_type(kind) or (feature.plan.bucket and handler is _variance):
        return None
    windows = _windows(feature, chunk)
    if windows is None or feature.plan.bucket is None:
        return None if windows is None else handler(aggregator, windows)
    buckets = chunk.table.column(feature.plan.bucket).chunk(0).take(pa.array(chunk.events))
    split = _by_bucket(windows, buckets.filter(windows.valid))
    if split is None:
        return None
    per_bucket, names, offsets = split
    items = handler(aggregator, per_bucket)
    if items is None:
        return None
    return _bucket_maps(items, names, per_bucket.query_rank, offsets)


def _by_bucket(windows: _Windows, buckets: pa.Array) -> tuple[_Windows, list[str], np.ndarray] | None:
    """A bucketed feature's inputs regrouped by (key, bucket), each group a key of its own, and one
    query per (query, bucket of its key): the inner operation's windows, the bucket names (`to_key`,
    sorted as the IR's maps are) and, per original query, where its (query, bucket) rows start."""
    distinct = pc.unique(buckets)
    names = sorted({to_key(value) for value in distinct.to_pylist()})
    if len(names) != len(distinct):
        return None
    code_of = np.array([names.index(to_key(value)) for value in distinct.to_pylist()], dtype=np.int64)
    codes = code_of[pc.index_in(buckets, value_set=distinct).to_numpy(zero_copy_only=False)]
    order = np.lexsort((np.arange(len(codes)), codes, windows.rank))
    rank, codes, ts = windows.rank[order], codes[order], windows.ts[order]
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = (rank[1:] != rank[:-1]) | (codes[1:] != codes[:-1])
    group = np.cumsum(new_group) - 1
    group_rank, group_code = rank[new_group], codes[new_group]
    first = np.searchsorted(group_rank, windows.query_rank, side="left")
    counts = np.searchsorted(group_rank, windows.query_rank, side="right") - first
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    asked = np.repeat(np.arange(len(counts)), counts)
    pair = np.repeat(first - offsets[:-1], counts) + np.arange(offsets[-1])
    q = windows.q[asked]
    lo = _window_lows(group, ts, pair, q, windows.window_ms)
    hi = _first_at(group, ts, pair, q)
    if lo is None or hi is None:
        return None
    values = windows.values.take(pa.array(order))
    split = _Windows(values, group, ts, lo, hi, pair, q, windows.window_ms, windows.hop, windows.valid)
    return split, [names[c] for c in group_code.tolist()], offsets


def _bucket_maps(items: pa.Array, names: list[str], pairs: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """Per query, the map of its buckets' non-null values (null when none is left)."""
    kept = items.is_valid().to_numpy(zero_copy_only=False)
    kept_before = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(kept, out=kept_before[1:])
    map_offsets = kept_before[offsets]
    keys = pa.array(names, pa.string()).take(pa.array(pairs[kept]))
    empty = pa.array(map_offsets[1:] == map_offsets[:-1])
    return pa.MapArray.from_arrays(
        pa.array(map_offsets, pa.int32()), keys, items.filter(pa.array(kept)), mask=empty
    )


def _scalar_type(kind: pa.DataType) -> bool:
    """Input types whose Arrow values are the IR's values one to one (no list to unpack, no decimal)."""
    return bool(
        (pa.types.is_integer(kind) and kind != pa.uint64())
        or pa.types.is_float32(kind)
        or pa.types.is_float64(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
    )


def _count(_: Aggregator, windows: _Windows) -> pa.Array:
    counts = windows.hi - windows.lo
    return pa.array(counts, mask=counts == 0)


def _numbers(values: pa.Array) -> np.ndarray | None:
    """Numeric inputs as int64 or float64 (None for other types)."""
    if pa.types.is_integer(values.type) or pa.types.is_boolean(values.type):
        target = pa.int64()
    elif pa.types.is_floating(values.type):
        target = pa.float64()
    else:
        return None
    out: np.ndarray = values.cast(target).to_numpy()
    return out


def _min_max(aggregator: Aggregator, windows: _Windows) -> pa.Array | None:
    """MIN/MAX: a sparse-table reduction over each range of order keys (floats ordered as the IR does:
    -0.0 below 0.0, NaN above everything, `float_order`)."""
    if pa.types.is_boolean(windows.values.type):
        return None
    numbers = _numbers(windows.values)
    if numbers is None:
        return None
    found = windows.hi > windows.lo
    pick = np.maximum if isinstance(aggregator, Max) else np.minimum
    if numbers.dtype == np.int64:
        best = _range_reduce(numbers, windows.lo, windows.hi, found, pick)
        return pa.array(best, mask=~found)
    best = _range_reduce(_order_keys(numbers), windows.lo, windows.hi, found, pick)
    floats = _order_keys(best).view(np.float64)  # the key map is its own inverse
    return pa.array(floats, mask=~found | ~np.isfinite(floats))


def _order_keys(values: np.ndarray) -> np.ndarray:
    """int64 keys in the IR's float order (a NaN as the canonical NaN, above +inf); on int64 keys, the
    inverse map (to float bits)."""
    if values.dtype == np.float64:
        values = np.where(np.isnan(values), np.nan, values)
    bits = values.view(np.int64)
    return np.where(bits < 0, bits ^ np.int64(0x7FFFFFFFFFFFFFFF), bits)


def _range_reduce(
    keys: np.ndarray, lo: np.ndarray, hi: np.ndarray, found: np.ndarray, pick: np.ufunc
) -> np.ndarray:
    """``pick.reduce(keys[lo:hi])`` per range (where ``found``), from a sparse table: level j holds the
    reduction of ``keys[i:i + 2^j]``, and a range is two overlapping blocks of its level."""
    out = np.zeros(len(lo), dtype=keys.dtype)
    lengths = np.where(found, hi - lo, 1)
    levels = np.frexp(lengths.astype(np.float64))[1] - 1  # floor(log2(length))
    level, width, top = keys, 1, int(levels.max()) if len(levels) else 0
    for index in range(top + 1):
        chosen = np.flatnonzero(found & (levels == index))
        if len(chosen):
            out[chosen] = pick(level[lo[chosen]], level[hi[chosen] - width])
        if index < top:
            level = pick(level[:-width], level[width:])
            width *= 2
    return out


def _picks(aggregator: Aggregator, windows: _Windows) -> pa.Array:
    """FIRST, LAST, FIRST_K and LAST_K: positions in the sorted inputs. Oldest first is ``lo, lo+1, ..``;
    newest first orders by (ts desc, seq asc), i.e. the same-ts groups from the last, each in its own
    order, so a window is a run of that order starting at the first row of its newest group."""
    lo, hi = windows.lo, windows.hi
    many = isinstance(aggregator, FirstK)
    counts = np.minimum(hi - lo, aggregator.k if isinstance(aggregator, FirstK) else 1)
    starts = lo
    order = None
    if type(aggregator) in (Last, LastK):
        count = len(windows.ts)
        group = np.ones(count, dtype=bool)
        group[1:] = (windows.rank[1:] != windows.rank[:-1]) | (windows.ts[1:] != windows.ts[:-1])
        group_start = np.maximum.accumulate(np.where(group, np.arange(count), 0))
        order = np.lexsort((np.arange(count), -windows.ts, windows.rank))
        position = np.empty(count, dtype=np.int64)
        position[order] = np.arange(count)
        starts = np.where(counts > 0, position[group_start[np.maximum(hi - 1, 0)]] if count else 0, 0)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    picked = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])
    if order is not None:
        picked = order[picked]
    values = windows.values.take(pa.array(picked))
    if pa.types.is_floating(values.type):  # NaN and ±Inf outputs are null (`clean_output`)
        values = pc.if_else(pc.is_finite(values), values, pa.nulls(len(values), values.type))
    missing = pa.array(counts == 0)
    if many:
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values, mask=missing)
    filled = np.zeros(len(counts), dtype=np.int64)
    filled[counts > 0] = np.arange(len(values))
    return values.take(pa.array(filled, mask=counts == 0))


def _sums(aggregator: Aggregator, windows: _Windows) -> pa.Array | None:
    """SUM and AVERAGE: the IR's sums are exact (a Python int, or Shewchuk partials rounded once), so
    the window's sum is computed exactly too, from prefix sums of integers (`_exact_sums`), and rounded
    once; the average divides that rounded sum by the count, as the IR does."""
    numbers = _numbers(windows.values)
    if numbers is None:
        return None
    counts = windows.hi - windows.lo
    average = isinstance(aggregator, (IntAverage, FloatAverage))
    if numbers.dtype == np.int64:
        return _int_sums(_int_totals(numbers, windows), counts, average)
    finite = np.isfinite(numbers)
    nonfinite = _range_counts(~finite, windows)
    magnitudes = np.abs(numbers[finite & (numbers != 0)])
    if len(magnitudes) and (magnitudes.min() < _FLOAT_RANGE[0] or magnitudes.max() > _FLOAT_RANGE[1]):
        return None
    mantissas, exponents = np.frexp(np.where(finite, numbers, 0.0))
    units = (mantissas * 2.0**53).astype(np.int64)  # value = units * 2^(exponent - 53), exactly
    lowest = np.where(units != 0, exponents - 53 + _trailing_zeros(units), 0)
    unit = int(lowest[units != 0].min()) if (units != 0).any() else 0
    totals = _exact_float_sums(units >> (lowest - exponents + 53), lowest - unit, windows)
    if totals is None:
        return None
    sums = np.ldexp(totals, unit)
    values = sums / np.maximum(counts, 1) if average else sums
    missing = (counts == 0) | (nonfinite > 0) | ~np.isfinite(values)
    return pa.array(np.where(missing, 0.0, values), mask=missing)


def _prefix(values: np.ndarray) -> np.ndarray:
    """Prefix sums along the first axis, with a leading zero row: ``out[i] = values[:i].sum(0)``."""
    out = np.zeros((len(values) + 1, *values.shape[1:]), dtype=values.dtype)
    np.cumsum(values, axis=0, out=out[1:])
    return out


def _range_counts(flags: np.ndarray, windows: _Windows) -> np.ndarray:
    prefix = _prefix(flags.astype(np.int64))
    out: np.ndarray = prefix[windows.hi] - prefix[windows.lo]
    return out


def _int_totals(numbers: np.ndarray, windows: _Windows) -> np.ndarray | list[int]:
    """Each window's exact int total: int64 prefix sums when no sum can overflow, else two 32-bit limbs
    summed apart and joined as Python ints."""
    largest = int(np.abs(numbers).max()) if len(numbers) else 0
    if largest * (len(numbers) + 1) < _INT62:
        prefix = _prefix(numbers)
        out: np.ndarray = prefix[windows.hi] - prefix[windows.lo]
        return out
    limbs = _prefix(np.stack([numbers >> _LIMB_BITS, numbers & 0xFFFFFFFF], axis=1))
    sums = (limbs[windows.hi] - limbs[windows.lo]).tolist()
    return [(high << _LIMB_BITS) + low for high, low in sums]


def _int_sums(totals: np.ndarray | list[int], counts: np.ndarray, average: bool) -> pa.Array:
    """IntSum / IntAverage's finalize: null when empty; a sum outside int64 is null; the average is the
    exact total divided once (Python's int / int, which floats compute alike below 2^53)."""
    missing = counts == 0
    if isinstance(totals, np.ndarray) and not average:
        return pa.array(totals, mask=missing)
    if isinstance(totals, np.ndarray) and (not len(totals) or np.abs(totals).max() < 2**53):
        return pa.array(totals / np.maximum(counts, 1), mask=missing)
    out: list[Any] = []
    for total, count in zip(list(totals), counts.tolist(), strict=True):
        if not count:
            out.append(None)
        elif average:
            out.append(int(total) / count)
        else:
            out.append(int(total) if -(2**63) <= total < 2**63 else None)
    return pa.array(out, pa.float64() if average else pa.int64())


def _trailing_zeros(units: np.ndarray) -> np.ndarray:
    """The trailing zero bits of each nonzero int64 (below 2^53 in magnitude)."""
    lowest_bit = (units & -units).astype(np.float64)
    out: np.ndarray = np.frexp(lowest_bit)[1] - 1
    return out


def _exact_float_sums(odd: np.ndarray, shifts: np.ndarray, windows: _Windows) -> np.ndarray | None:
    """Each window's ``sum(odd[i] << shifts[i])`` (odd below 2^53, shifts >= 0) rounded once to a float:
    int64 prefix sums when they cannot overflow (numpy's int64 -> float64 conversion rounds to nearest
    even), else base-2^32 limbs summed apart and joined as a Python int (whose float() rounds the same);
    None when that needs more than ``_MAX_LIMBS`` limbs."""
    magnitude = np.abs(odd)
    bits = np.frexp(magnitude.astype(np.float64))[1] + shifts
    width = int(bits.max()) if len(bits) else 0
    if width + int(len(odd) + 1).bit_length() < 62:
        prefix = _prefix(odd << shifts)
        out: np.ndarray = (prefix[windows.hi] - prefix[windows.lo]).astype(np.float64)
        return out
    digit, offset = shifts // _LIMB_BITS, shifts % _LIMB_BITS
    count = int(digit.max()) + 3
    if count > _MAX_LIMBS:
        return None
    low = (magnitude & 0xFFFFFFFF) << offset  # below 2^63
    high = (magnitude >> _LIMB_BITS) << offset  # below 2^52
    sign = np.where(odd < 0, -1, 1)
    limbs = np.zeros((len(odd), count), dtype=np.int64)
    rows = np.arange(len(odd))
    limbs[rows, digit] = sign * (low & 0xFFFFFFFF)
    limbs[rows, digit + 1] = sign * ((low >> _LIMB_BITS) + (high & 0xFFFFFFFF))
    limbs[rows, digit + 2] = sign * (high >> _LIMB_BITS)
    prefix = _prefix(limbs)
    return _round_limbs(prefix[windows.hi] - prefix[windows.lo])


def _carry(limbs: np.ndarray) -> np.ndarray:
    """The same integers (rows of base-2^32 limbs) with every limb but the last in [0, 2^32)."""
    limbs = limbs.copy()
    for index in range(limbs.shape[1] - 1):
        carry = limbs[:, index] >> _LIMB_BITS
        limbs[:, index] -= carry << _LIMB_BITS
        limbs[:, index + 1] += carry
    return limbs


def _round_limbs(limbs: np.ndarray) -> np.ndarray:
    """Each row's integer ``sum(limbs[:, j] << 32j)`` rounded once to the nearest float (ties to even),
    as Python's ``float(int)``: its top 63 bits with a sticky bit for the rest (which keeps a tie a
    tie and anything above it above), converted by int64 -> float64, then scaled."""
    count = len(limbs)
    limbs = _carry(np.concatenate([limbs, np.zeros((count, 2), dtype=np.int64)], axis=1))
    negative = limbs[:, -1] < 0
    limbs = _carry(np.where(negative[:, None], -limbs, limbs))
    width = limbs.shape[1]
    top = width - 1 - np.argmax(limbs[:, ::-1] != 0, axis=1)
    top_limb = limbs[np.arange(count), top]
    bits = _LIMB_BITS * top + np.frexp(top_limb.astype(np.float64))[1]
    shift = np.maximum(bits - 63, 0)
    mantissa = np.zeros(count, dtype=np.int64)
    sticky = np.zeros(count, dtype=bool)
    for index in range(width):
        offset = _LIMB_BITS * index - shift
        limb = limbs[:, index]
        down = np.clip(-offset, 0, 62)
        mantissa += np.where(offset >= 0, limb << np.clip(offset, 0, 62), limb >> down)
        sticky |= (offset < 0) & ((limb & ((np.int64(1) << down) - 1)) != 0)
    rounded = np.ldexp((mantissa | sticky).astype(np.float64), shift)
    out: np.ndarray = np.where(negative, -rounded, rounded)
    return out


def _approx_unique(aggregator: Aggregator, windows: _Windows) -> pa.Array | None:
    """APPROX_UNIQUE_COUNT: the IR's value over a window is a function of its number of distinct CPC
    coupons (`engines.cpc`); that number is counted per range from each input's previous input with the
    same coupon (`_distinct_counts`), and mapped with the library's own `IconTable`."""
    kind = windows.values.type
    duck_type = (
        "VARCHAR"
        if pa.types.is_string(kind) or pa.types.is_large_string(kind)
        else "DOUBLE"
        if pa.types.is_floating(kind)
        else "BOOLEAN"
        if pa.types.is_boolean(kind)
        else "BIGINT"
    )
    lg_k = aggregator.lg_k  # type: ignore[attr-defined]
    distinct = pc.unique(windows.values)
    numbers = cpc.coupons(distinct, duck_type, lg_k)
    _, first = np.unique(numbers, return_index=True)
    try:
        icon = cpc.IconTable(aggregator, distinct.take(pa.array(first)).to_pylist(), distinct.to_pylist())
    except cpc.HashMismatch:  # never expected: the IR folds them
        return None
    coupons = cpc.coupons(windows.values, duck_type, lg_k)
    counts = _distinct_counts(windows.rank, coupons, windows.lo, windows.hi)
    estimates = np.asarray(icon.values, dtype=np.int64)[counts]
    return pa.array(estimates, mask=counts == 0)


def _distinct_counts(rank: np.ndarray, items: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The number of distinct ``items`` in each range ``[lo, hi)`` of one key: the inputs i there whose
    previous input of the same key and item is before lo, i.e. ``#{i < hi: previous[i] < lo} - lo``
    (every i < lo counts)."""
    count = len(items)
    order = np.lexsort((np.arange(count), items, rank))
    same = (rank[order][1:] == rank[order][:-1]) & (items[order][1:] == items[order][:-1])
    previous = np.full(count, -1, dtype=np.int64)
    previous[order[1:][same]] = order[:-1][same]
    out: np.ndarray = _count_below(previous, hi, lo) - lo
    return out


def _count_below(values: np.ndarray, ends: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """``#{i < ends[j]: values[i] < limits[j]}`` per j (values in [-1, len)), on a merge-sort tree: the
    prefix ``[0, end)`` is one block of size 2^b per set bit b of end, and each level, sorted within
    its blocks, answers a block's count with one binary search."""
    count = len(values)
    out = np.zeros(len(ends), dtype=np.int64)
    stride = count + 2  # block * stride + (value + 1) sorts by block, then value
    positions = np.arange(count)
    level = 0
    while len(ends) and (1 << level) <= int(ends.max()):
        chosen = np.flatnonzero((ends >> level) & 1)
        if len(chosen):
            block = (ends[chosen] >> level) - 1
            packed = np.sort((positions >> level) * stride + values + 1)
            found = np.searchsorted(packed, block * stride + limits[chosen] + 1, side="left")
            out[chosen] += found - (block << level)
        level += 1
    return out


def _variance(aggregator: Aggregator, windows: _Windows) -> pa.Array | None:
    """VARIANCE: its float bits depend on how the IR merged tiles, so the IR's own two-stack merge
    (`sliding_values`) runs per key, but over tile and head IRs read from Welford states computed for
    every input at once (`_welford_states`): the tiles are those of the inputs some window reads (as
    `windowed_values` folds them), each the state at its last such input, and a query's head is the
    state at its last input when that input is in the query's own hop."""
    numbers = _numbers(windows.values)
    if numbers is None:
        return None
    count = len(numbers)
    if not count:
        return pa.nulls(len(windows.q), pa.float64())
    tile_start = windows.ts - windows.ts % windows.hop
    first = np.ones(count, dtype=bool)
    first[1:] = (windows.rank[1:] != windows.rank[:-1]) | (tile_start[1:] != tile_start[:-1])
    states = _welford_states(numbers.astype(np.float64), first)
    edges = np.zeros(count + 1, dtype=np.int64)  # inputs some window reads
    reads = windows.hi > windows.lo
    np.add.at(edges, windows.lo[reads], 1)
    np.add.at(edges, windows.hi[reads], -1)
    read = np.flatnonzero(np.cumsum(edges[:-1]) > 0)
    tile = np.cumsum(first) - 1
    last = read[np.append(tile[read][1:] != tile[read][:-1], True)] if len(read) else read
    last_head = np.maximum(windows.hi - 1, 0)
    in_hop = (windows.hi > 0) & (windows.rank[last_head] == windows.query_rank)
    in_hop &= tile_start[last_head] == windows.q - windows.q % windows.hop
    heads = np.where(in_hop, last_head, -1).tolist()
    out: list[Any] = []
    tile_keys, query_keys = windows.rank[last], windows.query_rank
    tile_bounds = np.searchsorted(tile_keys, np.arange(int(query_keys.max()) + 2) if len(query_keys) else [0])
    query_bounds = np.searchsorted(
        query_keys, np.arange(int(query_keys.max()) + 2) if len(query_keys) else [0]
    )
    starts, times = tile_start[last].tolist(), windows.q.tolist()
    for key in range(len(query_bounds) - 1):
        low, high = int(query_bounds[key]), int(query_bounds[key + 1])
        if low == high:
            continue
        tiles = range(int(tile_bounds[key]), int(tile_bounds[key + 1]))
        out += sliding_values(
            aggregator,
            windows.window_ms,
            windows.hop,
            starts[tiles.start : tiles.stop],
            [states(int(last[t])) for t in tiles],
            times[low:high],
            [None if head < 0 else states(head) for head in heads[low:high]],
        )
    return pa.array(out, pa.float64())


def _welford_states(values: np.ndarray, first: np.ndarray) -> Any:
    """``state(i)``: the Variance IR after folding the inputs of i's tile up to i (tiles start where
    ``first``), computed for all tiles at once, one position in the tile per step, with the very
    operations of `Variance.prepare` and `Variance.update` (so the same float bits)."""
    count = len(values)
    tile_first = np.maximum.accumulate(np.where(first, np.arange(count), 0))
    position = np.arange(count) - tile_first
    order = np.argsort(position, kind="stable")
    bounds = np.searchsorted(position[order], np.arange(int(position.max()) + 2) if count else [0])
    finite = np.isfinite(values)
    n = np.where(finite, 1, 0).astype(np.int64)
    mean = np.where(finite, values, 0.0)
    m2 = np.zeros(count)
    nonfinite = (~finite).astype(np.int64)
    with np.errstate(all="ignore"):
        for step in range(1, len(bounds) - 1):
            at = order[bounds[step] : bounds[step + 1]]
            before, x, ok = at - 1, values[at], finite[at]
            grown = n[before] + 1
            delta = x - mean[before]
            moved = mean[before] + delta / grown
            n[at] = np.where(ok, grown, n[before])
            m2[at] = np.where(ok, m2[before] + delta * (x - moved), m2[before])
            mean[at] = np.where(ok, moved, mean[before])
            nonfinite[at] = nonfinite[before] + ~ok
    n_list, mean_list, m2_list, bad_list = n.tolist(), mean.tolist(), m2.tolist(), nonfinite.tolist()

    def state(index: int) -> IR:
        return [n_list[index], mean_list[index], m2_list[index], bad_list[index], 0, 0.0, 0.0]

    return state


_FAST: dict[type, Any] = {
    Variance: _variance,
    Count: _count,
    Min: _min_max,
    Max: _min_max,
    First: _picks,
    Last: _picks,
    FirstK: _picks,
    LastK: _picks,
    IntSum: _sums,
    IntAverage: _sums,
    FloatSum: _sums,
    FloatAverage: _sums,
    ApproxUniqueCount: _approx_unique,
}
