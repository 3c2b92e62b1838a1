"""Gnomon's aggregation library: every SPEC §3 operation as a monoid over an IR, in plain Python.

This one implementation is shared by the stream worker, the fetcher and the offline engine (for what
it cannot express in SQL), so the paths agree by construction.

>>> agg = make_aggregator("last_k", {"k": 2}, "str")
>>> ir = agg.prepare("a", ts=1, seq=0)
>>> ir = agg.update(ir, "b", ts=3, seq=1)
>>> ir = agg.merge(ir, agg.prepare("c", ts=2, seq=2))
>>> agg.finalize(ir), agg.output_type
(['b', 'c'], 'list<str>')
>>> agg.finalize(decode_ir(agg, encode_ir(agg, ir)))
['b', 'c']

Operations (module · IR · reversible):

=========================  ============  ===================================================  ====
COUNT                      counting      int                                                  yes
SUM, AVERAGE (int, bool)   counting      [count, exact int total]                             yes
SUM, AVERAGE (float)       counting      [count, nonfinite, exact Shewchuk partials]          yes
VARIANCE                   moments       [n, mean, m2, nonfinite, del_n, del_mean, del_m2]    yes
SKEW, KURTOSIS             moments       [n, mean, m2, m3, m4]                                no
MIN, MAX                   ordering      the value                                            no
FIRST, LAST                ordering      (ts, seq, value)                                     no
FIRST_K, LAST_K            ordering      [(ts, seq, value), …] in output order, ≤ k           no
TOP_K, BOTTOM_K            ordering      [value, …] ascending, ≤ k                            no
UNIQUE_COUNT               distinct      set                                                  no
BOUNDED_UNIQUE_COUNT(k)    distinct      set of ≤ k values                                    no
APPROX_UNIQUE_COUNT(lg_k)  sketches      datasketches.cpc_sketch                              no
APPROX_PERCENTILE          sketches      datasketches.kll_doubles_sketch                      no
HISTOGRAM(k)               histogram     dict[str, int] (signed counts)                       yes
APPROX_HISTOGRAM_K(k)      histogram     dict[str, int] (≤ k keys), then frequent_strings     no
=========================  ============  ===================================================  ====

Containers (`containers`): `BucketedAggregator` (``dict[bucket, IR]``), `MapAggregator` (map inputs,
``dict[key, IR]``), `ElementWiseAggregator` (``list[IR]``). `codec` holds the versioned byte encoding,
`tiles` the hop-aligned tile helpers of the online path.

Decisions (details in each module's docstring):

- None is the empty IR; ``finalize`` of an empty window is None, COUNT included. Reversible IRs keep
  signed counts so a delete from an empty tile yields a delta IR that is exact once merged, and they
  finalize to None unless the count is positive.
- Float SUM/AVERAGE are exact (Shewchuk partials, rounded once), so they depend only on the multiset
  of inputs: bit-identical whatever the tiling, merge order or deletes.
- NaN/±Inf inputs make SUM/AVERAGE/VARIANCE/SKEW/KURTOSIS null; NaN/±Inf in any output (also inside
  lists and maps) become None. Ordering is total: -0.0 < 0.0 < … < NaN. Distinct counts treat -0.0 as
  0.0 and all NaNs as one value.
- Ties: FIRST/LAST/FIRST_K/LAST_K order by ``(ts, seq)`` (LAST by ts desc) and prefer the smaller seq;
  rows with equal ``(ts, seq)`` keep arrival order, ``merge(a, b)`` putting a's rows first.
- APPROX_UNIQUE_COUNT always reads the CPC ICON estimate through a ``cpc_union``, so it is
  independent of update order and of how sketches were merged; the empty string is counted.
- APPROX_PERCENTILE uses inclusive ranks (0.5 of 1..10 is 5, like DuckDB's ``quantile_disc``).
- HISTOGRAM keys and bucket keys are ``str(value)``, except bools: ``"true"``/``"false"`` as SQL
  casts give. Outputs are ordered by count desc then key; bucket/map outputs by key.
- Non-reversible ``delete`` raises TypeError; callers apply SPEC §4's "no-op until the next snapshot".
"""

from __future__ import annotations

from gnomon.aggregation.base import IR, Aggregator, to_key
from gnomon.aggregation.codec import VERSION, decode_ir, encode_ir
from gnomon.aggregation.containers import BucketedAggregator, ElementWiseAggregator, MapAggregator
from gnomon.aggregation.registry import WHOLE_VALUE_KINDS, make_aggregator
from gnomon.aggregation.tiles import TileSet, fold_tiles, tile_start, window_split

__all__ = [
    "IR",
    "VERSION",
    "WHOLE_VALUE_KINDS",
    "Aggregator",
    "BucketedAggregator",
    "ElementWiseAggregator",
    "MapAggregator",
    "TileSet",
    "decode_ir",
    "encode_ir",
    "fold_tiles",
    "make_aggregator",
    "tile_start",
    "to_key",
    "window_split",
]
