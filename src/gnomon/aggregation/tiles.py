"""Hop-aligned tiles: the pure helpers the online path uses to answer a window at any time q.

A tile is the IR of the events with ``start <= ts < start + hop``, ``start`` a multiple of the hop.
SPEC §2 makes the value at q aggregate ``window_start(q, W) <= ts < q`` with a hop-aligned tail, so

    value_at(q) = merge(tiles fully inside [window_start(q, W), floor(q, hop)))
                  + the raw "head" events with floor(q, hop) <= ts < q.

The hop of a tile set may be finer than the window's own hop (``hop_millis(W)``) as long as it divides
it (1m | 5m | 1h | 1d all do); the head is then shorter. Unwindowed (``window_ms=None``): every tile
that ends by ``floor(q, hop)``.

>>> from gnomon.aggregation import make_aggregator
>>> tiles = TileSet(make_aggregator("count", {}, "int"), hop_ms=60_000)
>>> for ts in (0, 30_000, 61_000, 125_000):
...     tiles.add(1, ts, seq=ts)
>>> tiles.aggregator.finalize(tiles.value_at(130_000, None, head=[(1, 125_000, 125_000)]))
4
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gnomon.aggregation.base import IR, Aggregator
from gnomon.definitions.windows import floor_to, window_start


def tile_start(ts: int, hop_ms: int) -> int:
    """Start of the tile holding ``ts``: ``floor(ts, hop)``.

    >>> tile_start(125_000, 60_000), tile_start(-1, 60_000)
    (120000, -60000)
    """
    return floor_to(ts, hop_ms)


def window_split(q: int, window_ms: int | None, hop_ms: int) -> tuple[int | None, int]:
    """``(tail_start, head_start)`` of the value at q: tiles cover ``[tail_start, head_start)``, raw
    events ``[head_start, q)``; ``tail_start`` is None when unbounded.

    >>> window_split(3_700_000, 3_600_000, 300_000)   # W = 1h, hop 5m
    (0, 3600000)
    """
    head_start = floor_to(q, hop_ms)
    tail_start = window_start(q, window_ms)
    if tail_start is not None and tail_start % hop_ms:
        raise ValueError(
            f"tiles of {hop_ms} ms cannot cover a window of {window_ms} ms: its start "
            f"{tail_start} is not a multiple of the tile hop; use the window's hop or a divisor"
        )
    return tail_start, head_start


def fold_tiles(
    aggregator: Aggregator, tiles: Mapping[int, IR], hop_ms: int, start: int | None, end: int
) -> IR:
    """Merge, oldest first, the tiles lying fully inside ``[start, end)`` (start None: unbounded).

    The result never aliases a stored tile, so the tiles stay untouched.
    """
    ir: IR = None
    for tile in sorted(tiles):
        if (start is None or tile >= start) and tile + hop_ms <= end:
            ir = aggregator.merge(ir, tiles[tile])
    return ir


class TileSet:
    """The per-hop tile IRs of one aggregation for one key, folded from events or stored tiles."""

    def __init__(self, aggregator: Aggregator, hop_ms: int, tiles: Mapping[int, IR] | None = None) -> None:
        if hop_ms <= 0:
            raise ValueError(f"hop_ms must be positive, got {hop_ms}")
        self.aggregator = aggregator
        self.hop_ms = hop_ms
        self.tiles: dict[int, IR] = dict(tiles or {})

    def add(self, value: Any, ts: int, seq: int, *extra: Any) -> None:
        """Fold one event into its tile (``extra``: e.g. the bucket of a bucketed aggregator)."""
        start = floor_to(ts, self.hop_ms)
        ir = self.aggregator.accumulate(self.tiles.get(start), value, ts, seq, *extra)
        if ir is not None:
            self.tiles[start] = ir

    def delete(self, value: Any, ts: int, seq: int, *extra: Any) -> None:
        """Remove one event from its tile (reversible operations only)."""
        start = floor_to(ts, self.hop_ms)
        ir = self.aggregator.retract(self.tiles.get(start), value, ts, seq, *extra)
        if ir is not None:
            self.tiles[start] = ir

    def merge_tile(self, start: int, ir: IR) -> None:
        """Merge a tile IR (e.g. read from a store) into the tile starting at ``start``."""
        if start % self.hop_ms:
            raise ValueError(f"tile start {start} is not a multiple of the hop {self.hop_ms}")
        merged = self.aggregator.merge(self.tiles.get(start), ir)
        if merged is not None:
            self.tiles[start] = merged

    def value_at(self, q: int, window_ms: int | None, head: Iterable[tuple[Any, ...]] = ()) -> IR:
        """The IR of the window at q: complete tiles plus the ``head`` events in ``[floor(q, hop), q)``.

        ``head`` holds ``(value, ts, seq, *extra)`` rows in source order; rows outside the head
        interval are skipped, so the caller may pass a superset.
        """
        tail_start, head_start = window_split(q, window_ms, self.hop_ms)
        ir = fold_tiles(self.aggregator, self.tiles, self.hop_ms, tail_start, head_start)
        for value, ts, seq, *extra in head:
            if head_start <= ts < q:
                ir = self.aggregator.accumulate(ir, value, ts, seq, *extra)
        return ir

    def drop_before(self, start: int) -> None:
        """Forget tiles starting before ``start`` (no window can reach them any more)."""
        for tile in [t for t in self.tiles if t < start]:
            del self.tiles[tile]

    def __len__(self) -> int:
        return len(self.tiles)
