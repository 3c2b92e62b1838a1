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
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from gnomon.aggregation.base import IR, Aggregator
from gnomon.aggregation.codec import decode_ir, encode_ir
from gnomon.compile.features import OnlineFeature
from gnomon.definitions.windows import DAY_MS, window_start

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
    sliding = _Sliding(aggregator, tiles)
    out: list[Any] = []
    head_start_seen, head_ir, head_end = None, None, 0
    for _, q, _ in rows.queries:
        head_start = q - q % hop
        tail = window_start(q, window_ms)
        while sliding.hi < len(starts) and starts[sliding.hi] < head_start:
            sliding.push()
        while tail is not None and sliding.lo < sliding.hi and starts[sliding.lo] < tail:
            sliding.pop()
        if head_start != head_start_seen:  # the head restarts at each new hop; within one it grows
            head_start_seen, head_ir = head_start, None
            head_end = bisect.bisect_left(events_ts, head_start)
        stop = bisect.bisect_left(events_ts, q)
        for index in range(head_end, stop):
            head_ir = feature.accumulate(head_ir, rows.values(index), events_ts[index], events_seq[index])
        head_end = max(head_end, stop)
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
    """The task body: batches of tagged rows sorted by (keys, time, tag, seq) in, values per query out."""
    current: tuple[Any, ...] | None = None
    rows = _empty_rows(layout)
    answered: list[tuple[int, list[Any]]] = []
    for batch in batches:
        columns = {name: batch.column(name).to_pylist() for name in batch.schema.names}
        parted = [*layout.keys, "__part"] if "__part" in columns else layout.keys
        keys = list(zip(*(columns[k] for k in parted), strict=True))
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
        values = [row[index - 1] for _, row in answered]
        if pa.types.is_map(field.type):
            values = [None if v is None else list(v.items()) if isinstance(v, dict) else v for v in values]
        arrays.append(pa.array(values, field.type))
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
