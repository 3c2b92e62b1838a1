"""Tiles + head events give exactly the SPEC §2 window value at any q."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gnomon.aggregation import TileSet, make_aggregator, tile_start, window_split
from gnomon.definitions.windows import HOUR_MS, MINUTE_MS, hop_millis, window_start

AGGREGATIONS = [
    ("count", {}, "int"),
    ("sum", {}, "float"),
    ("last_k", {"k": 3}, "int"),
    ("approx_unique_count", {}, "int"),
    ("histogram", {}, "int"),
]
WINDOWS = [MINUTE_MS, 5 * MINUTE_MS, 59 * MINUTE_MS, HOUR_MS, 90 * MINUTE_MS, 13 * HOUR_MS, None]
events_strategy = st.lists(st.tuples(st.integers(0, 20), st.integers(0, 15 * HOUR_MS)), max_size=40).map(
    lambda pairs: [(value, ts, seq) for seq, (value, ts) in enumerate(pairs)]
)


@pytest.mark.parametrize("kind, params, input_type", AGGREGATIONS, ids=lambda x: str(x))
@settings(max_examples=40, deadline=None, database=None)
@given(
    events=events_strategy,
    window=st.sampled_from(WINDOWS),
    finer=st.booleans(),
    q=st.integers(0, 16 * HOUR_MS),
)
def test_value_at_equals_brute_force(
    kind: str, params: dict, input_type: str, events: list, window: int | None, finer: bool, q: int
) -> None:
    agg = make_aggregator(kind, params, input_type)
    hop = MINUTE_MS if finer or window is None else hop_millis(window)
    tiles = TileSet(agg, hop)
    for value, ts, seq in events:
        tiles.add(value, ts, seq)
    stored = {start: agg.clone(ir) for start, ir in tiles.tiles.items()}
    start = window_start(q, window)
    want = agg.finalize(agg.fold(row for row in events if (start is None or start <= row[1]) and row[1] < q))
    assert agg.finalize(tiles.value_at(q, window, head=events)) == want
    assert agg.finalize(tiles.value_at(q, window, head=events)) == want  # the tiles were not mutated
    assert {s: agg.finalize(ir) for s, ir in tiles.tiles.items()} == {
        s: agg.finalize(ir) for s, ir in stored.items()
    }


def test_tile_start_and_window_split() -> None:
    assert tile_start(HOUR_MS + 1, HOUR_MS) == HOUR_MS
    assert window_split(3 * HOUR_MS + 7, HOUR_MS, 5 * MINUTE_MS) == (2 * HOUR_MS, 3 * HOUR_MS)
    assert window_split(3 * HOUR_MS + 7, None, MINUTE_MS) == (None, 3 * HOUR_MS)
    with pytest.raises(ValueError, match="not a multiple"):
        window_split(3 * HOUR_MS + 7, HOUR_MS, 7 * MINUTE_MS)


def test_event_at_exactly_q_is_excluded() -> None:
    agg = make_aggregator("count", {}, "int")
    tiles = TileSet(agg, MINUTE_MS)
    events = [(1, 0, 0), (1, MINUTE_MS, 1)]
    for event in events:
        tiles.add(*event)
    assert agg.finalize(tiles.value_at(MINUTE_MS, None, head=events)) == 1


def test_merge_tile_delete_and_drop_before() -> None:
    agg = make_aggregator("sum", {}, "int")
    tiles = TileSet(agg, MINUTE_MS)
    tiles.add(5, 10, 0)
    tiles.merge_tile(0, agg.prepare(2, 20, 1))
    tiles.merge_tile(MINUTE_MS, agg.prepare(4, MINUTE_MS, 2))
    tiles.delete(5, 10, 0)
    assert agg.finalize(tiles.value_at(2 * MINUTE_MS, None)) == 6
    tiles.drop_before(MINUTE_MS)
    assert len(tiles) == 1
    assert agg.finalize(tiles.value_at(2 * MINUTE_MS, None)) == 4
    with pytest.raises(ValueError, match="not a multiple"):
        tiles.merge_tile(5, agg.prepare(1, 5, 3))
