"""Folding streamed rows into hop tiles: the online state of a key stays bounded however long it streams.

A TEMPORAL event GroupBy's streamed rows are, per key, folded into one IR per feature and hop tile
(the feature's own hop; a day for an unbounded one) once no fetch at "now" can need them as rows:

- a row is folded when every feature's tile holding it has ended (``ts < folded_until``, a multiple
  of the largest hop, at most ``now - fold_delay``), and when it was published at least
  ``fold_delay`` ago (and before an upload in progress started);
- per partition, the folded rows are exactly those with an offset up to a *watermark*: the store
  refuses a row with an offset up to the watermark and ``ts < folded_until`` (`FoldMarks`), so a
  replay of a folded event changes nothing (rows newer than the watermark stay rows, idempotent by
  event id as ever);
- rows an upload covers (``ts < batch end`` and arrived before it started) and rows older than every
  window are deleted, not folded; tiles folded under an older upload that the new one covers (start
  before its batch end) are dropped, and so are tiles older than every window.

A fetch then reads the batch record, O(window / hop) tiles and the rows not folded yet. A tile keeps
the first and last ``ts`` it holds: a fetch at a q strictly inside a tile (first < q <= last) would
need its rows, and answers ``FoldedPast`` instead of a value (a fetch at "now" never does: the tiles
that hold "now" are not closed, so not folded).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from gnomon.aggregation import decode_ir, encode_ir
from gnomon.compile.features import SOURCE_COLUMN, OnlineFeature, keeps_rows, online_features, row_columns
from gnomon.compile.plan import FeaturePlan, GroupByPlan
from gnomon.definitions.windows import DAY_MS, floor_to
from gnomon.offsets import offset_order
from gnomon.online.records import StreamRow, UploadMeta, meta_key
from gnomon.online.stores.base import OnlineStore

FOLD_VERSION = 1
_COUNTED_KEYS = 200_000  # keys whose rows a worker counts towards their next fold, at most


def can_fold(group_by: GroupByPlan) -> bool:
    """Event GroupBys with features and one source (rows of several sources tie in source order,
    which a tile does not keep): entity GroupBys and lookups keep rows."""
    return bool(group_by.features) and not keeps_rows(group_by) and SOURCE_COLUMN not in row_columns(group_by)


def tile_hop(feature: FeaturePlan) -> int:
    """The tile size of a feature: its hop, a day for an unbounded window."""
    return feature.hop_ms or DAY_MS


def fold_key(stream: str, key: bytes) -> bytes:
    return f"fold|{stream}|".encode() + key


def marks_key(stream: str, key: bytes) -> bytes:
    """The small record the store checks on every write (`FoldMarks`); ``rows|`` -> ``foldwm|``."""
    return f"foldwm|{stream}|".encode() + key


def marks_key_of(row_key: bytes) -> bytes | None:
    """`marks_key` of a stream rows key ``rows|<stream>|<key>`` (None for another key); the Redis
    script derives it the same way."""
    return b"foldwm" + row_key[4:] if row_key.startswith(b"rows|") else None


def pending_key(group_by: str) -> bytes:
    """Written by an upload while it runs: the time it started (rows published later are not folded)."""
    return f"pending|{group_by}".encode()


def partition_of(event_id: bytes) -> tuple[str, str]:
    """(partition key, offset) of a stream row's event id ``[topic:]partition:offset``."""
    text = event_id.decode()
    head, _, offset = text.rpartition(":")
    return head, offset


@dataclass
class FoldState:
    """A key's folded rows: per (feature id, tile start), the IR and the batch end it was folded under."""

    base: int = 0
    folded_until: int = -(2**62)
    watermarks: dict[str, str] = field(default_factory=dict)
    # (feature id, start) -> (batch end folded under, IR, first ts, last ts)
    tiles: dict[tuple[str, int], tuple[int, bytes, int, int]] = field(default_factory=dict)

    def encode(self) -> bytes:
        tiles = [[fid, start, *tile] for (fid, start), tile in sorted(self.tiles.items())]
        packed: bytes = msgpack.packb([FOLD_VERSION, self.base, self.folded_until, self.watermarks, tiles])
        return packed

    @classmethod
    def decode(cls, data: bytes) -> FoldState:
        version, base, folded_until, watermarks, tiles = msgpack.unpackb(data, strict_map_key=False)
        if version != FOLD_VERSION:
            raise ValueError(f"unknown fold record version {version}")
        found = {
            (fid, start): (tile_base, ir, first, last) for fid, start, tile_base, ir, first, last in tiles
        }
        return cls(base, folded_until, dict(watermarks), found)

    def marks(self) -> bytes:
        """`FoldMarks`: what a store write checks a row against."""
        packed: bytes = msgpack.packb([self.folded_until, self.watermarks])
        return packed

    def counted_tiles(self, batch_end: int) -> dict[tuple[str, int], tuple[bytes, int, int]]:
        """The tiles a fetch under the upload ending at ``batch_end`` counts (IR, first ts, last ts):
        those folded under it, and those of older uploads that start at or after it (the rest, it
        covers)."""
        return {
            k: (ir, first, last)
            for k, (base, ir, first, last) in self.tiles.items()
            if base == batch_end or k[1] >= batch_end
        }


def refused(marks: bytes | None, event_id: bytes, ts: int) -> bool:
    """Whether a store write must refuse a row: a replay of a folded event (the Python twin of the
    Redis script's check)."""
    if marks is None:
        return False
    folded_until, watermarks = msgpack.unpackb(marks, strict_map_key=False)
    return ts < folded_until and _below(event_id, watermarks)


def fold_rows(
    group_by: GroupByPlan,
    features: Sequence[OnlineFeature],
    rows: Sequence[tuple[bytes, StreamRow]],
    previous: FoldState | None,
    meta: UploadMeta,
    pending: int | None,
    now_ms: int,
    delay_ms: int,
) -> tuple[FoldState, list[bytes]]:
    """The new fold state of a key and the event ids of the rows it makes unnecessary."""
    ids = group_by.feature_ids()
    plans = {fid: f.plan for fid, f in zip(ids, features, strict=True)}
    largest = max(tile_hop(f.plan) for f in features)
    batch_end, uploaded_at = meta.batch_end, meta.uploaded_at
    state = previous or FoldState()
    folded_until = max(state.folded_until, floor_to(now_ms - delay_ms, largest))
    published_by = now_ms - delay_ms if pending is None else min(now_ms - delay_ms, pending)
    watermarks = dict(state.watermarks)
    for event_id, row in rows:
        if row.arrived_at <= published_by:
            partition, offset = partition_of(event_id)
            if partition not in watermarks or offset_order(offset) > offset_order(watermarks[partition]):
                watermarks[partition] = offset
    span = group_by.max_window_ms
    tiles: dict[tuple[str, int], Any] = {}
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    for (fid, start), (base, ir, first, last) in state.tiles.items():
        plan = plans.get(fid)
        if plan is None or (base < batch_end and start < batch_end) or _expired(plan, start, batch_end):
            continue
        tiles[fid, start] = decode_ir(features[ids.index(fid)].aggregator, ir)
        spans[fid, start] = (first, last)
    done: list[bytes] = []
    folding = []
    for event_id, row in rows:
        if row.ts < batch_end and row.arrived_at <= uploaded_at:
            done.append(event_id)  # the upload holds it
        elif span is not None and row.ts < batch_end - span:
            done.append(event_id)  # older than every window at any q >= batch end
        elif row.ts < folded_until and _below(event_id, watermarks):
            done.append(event_id)
            folding.append(row)
    folding.sort(key=lambda r: (r.ts, r.seq))
    for row in folding:
        for fid, feature in zip(ids, features, strict=True):
            start = floor_to(row.ts, tile_hop(feature.plan))
            if feature.plan.window_ms is not None and _expired(feature.plan, start, batch_end):
                continue
            ir = feature.accumulate(tiles.get((fid, start)), row.values, row.ts, row.seq)
            if ir is not None:
                tiles[fid, start] = ir
                first, last = spans.get((fid, start), (row.ts, row.ts))
                spans[fid, start] = (min(first, row.ts), max(last, row.ts))
    encoded = {
        k: (batch_end, encode_ir(features[ids.index(k[0])].aggregator, ir), *spans[k])
        for k, ir in tiles.items()
    }
    return FoldState(batch_end, folded_until, watermarks, encoded), done


def _expired(plan: FeaturePlan, start: int, batch_end: int) -> bool:
    """A tile no fetch at or after the batch end reads (before the earliest window start)."""
    if plan.window_ms is None:
        return False
    return start + tile_hop(plan) <= floor_to(batch_end - plan.window_ms, tile_hop(plan))


def _below(event_id: bytes, watermarks: dict[str, str]) -> bool:
    partition, offset = partition_of(event_id)
    watermark = watermarks.get(partition)
    return watermark is not None and offset_order(offset) <= offset_order(watermark)


class Folder:
    """Folds the keys a stream worker writes, every ``every`` rows of a key."""

    def __init__(
        self,
        group_by: GroupByPlan,
        store: OnlineStore,
        stream: str,
        every: int,
        delay_ms: int,
        clock: Any = time.time,
    ) -> None:
        self.group_by = group_by
        self.store = store
        self.stream = stream
        self.every = every
        self.delay_ms = delay_ms
        self.clock = clock
        self.rows_prefix = f"rows|{stream}|".encode()
        self._written: dict[bytes, int] = {}

    def wrote(self, row_keys: Sequence[bytes]) -> None:
        """Count rows written per key; fold the keys that reached ``every``."""
        due = []
        if len(self._written) > _COUNTED_KEYS:  # the counts are a cadence, not state: bounded memory
            self._written.clear()
        for row_key in row_keys:
            count = self._written.get(row_key, 0) + 1
            if count >= self.every:
                due.append(row_key)
                count = 0
            self._written[row_key] = count
        if due:
            self.fold([row_key[len(self.rows_prefix) :] for row_key in dict.fromkeys(due)])

    def fold(self, keys: Sequence[bytes], attempts: int = 3) -> int:
        """Fold these entity keys now; returns the rows made unnecessary."""
        raw_meta, raw_pending = self.store.get(
            [meta_key(self.group_by.name), pending_key(self.group_by.name)]
        )
        if raw_meta is None:
            return 0  # nothing uploaded: nothing to fold against
        meta = UploadMeta.decode(raw_meta)
        if meta.accuracy != "temporal":
            return 0
        features = online_features(self.group_by, meta.input_types)
        pending = None if raw_pending is None else int(raw_pending)
        removed = 0
        for key in keys:
            for _ in range(attempts):  # another folder changed the key in between: read it again
                row_key, key_fold = self.rows_prefix + key, fold_key(self.stream, key)
                [previous] = self.store.get([key_fold])
                rows = self.store.get_rows_with_ids([row_key])[0]
                decoded = [(event_id, StreamRow.decode(blob)) for event_id, blob in rows]
                state, done = fold_rows(
                    self.group_by,
                    features,
                    decoded,
                    None if previous is None else FoldState.decode(previous),
                    meta,
                    pending,
                    int(self.clock() * 1000),
                    self.delay_ms,
                )
                if not done:
                    break  # nothing to fold yet (rows too recent): leave the key as it is
                if self.store.apply_fold(
                    row_key,
                    key_fold,
                    previous,
                    state.encode(),
                    marks_key(self.stream, key),
                    state.marks(),
                    done,
                ):
                    removed += len(done)
                    break
        return removed
