"""HISTOGRAM and APPROX_HISTOGRAM_K: counts per distinct input, as ``map[str, int64]``.

Inputs become keys with `gnomon.aggregation.base.to_key` (``str(value)``, bools as ``"true"`` /
``"false"`` like SQL casts).

HISTOGRAM(k=None) IR: ``dict[str, int]`` of signed counts; reversible (a delete decrements and drops a
key whose count reaches 0; a delete from an empty IR leaves a negative "delta" count). ``finalize``
keeps positive counts only; with k, the k largest counts, ties broken by key ascending. Outputs are
ordered by count descending then key.

APPROX_HISTOGRAM_K(k) IR: the exact ``dict[str, int]`` while it holds at most k distinct keys, then a
``datasketches.frequent_strings_sketch``. The sketch's ``lg_max_map_size`` is
``max(6, ceil(log2(k)) + 4)``: a hash map of at least 16·k slots, so about 12·k keys are tracked
exactly before any purge and the a-priori count error is at most 3.5/2^lg_max_map_size of the total
weight (under 3% for k <= 8). ``finalize`` reads the items the sketch can vouch for
(``NO_FALSE_NEGATIVES``) and returns the k with the largest estimates (ties: key ascending) — exact
counts while the sketch has not purged.
"""

from __future__ import annotations

import math
from typing import Any

from datasketches import frequent_items_error_type, frequent_strings_sketch

from gnomon.aggregation.base import IR, Aggregator, to_key


def _largest(counts: list[tuple[str, int]], k: int | None) -> dict[str, int]:
    counts.sort(key=lambda item: (-item[1], item[0]))
    if k is not None:
        del counts[k:]
    return dict(counts)


class Histogram(Aggregator):
    """HISTOGRAM(k=None): exact counts per key; with k, the k most frequent keys."""

    kind = "histogram"
    reversible = True

    def __init__(self, params: dict[str, Any], input_type: tuple[Any, ...], output_type: str) -> None:
        super().__init__(params, input_type, output_type)
        self.k: int | None = params.get("k")

    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        return {to_key(value): 1}

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if ir is None:
            return {to_key(value): 1}
        key = to_key(value)
        ir[key] = ir.get(key, 0) + 1
        return ir

    def delete(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if ir is None:
            return {to_key(value): -1}
        key = to_key(value)
        count = ir.get(key, 0) - 1
        if count:
            ir[key] = count
        else:
            del ir[key]
        return ir

    def _merge(self, a: IR, b: IR) -> IR:
        for key, count in b.items():
            total = a.get(key, 0) + count
            if total:
                a[key] = total
            else:
                a.pop(key, None)
        return a

    def clone(self, ir: IR) -> IR:
        return None if ir is None else dict(ir)

    def finalize(self, ir: IR) -> Any:
        if not ir:
            return None
        positive = [(key, count) for key, count in ir.items() if count > 0]
        return _largest(positive, self.k) if positive else None


def lg_max_map_size(k: int) -> int:
    """The frequent-items map size used for APPROX_HISTOGRAM_K(k) (see the module docstring)."""
    return min(26, max(6, math.ceil(math.log2(k)) + 4))


class ApproxHistogramK(Aggregator):
    """APPROX_HISTOGRAM_K(k): exact counts up to k keys, then a frequent-items sketch."""

    kind = "approx_histogram_k"

    def __init__(self, params: dict[str, Any], input_type: tuple[Any, ...], output_type: str) -> None:
        super().__init__(params, input_type, output_type)
        self.k: int = params["k"]
        self.lg_max_map_size = lg_max_map_size(self.k)

    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        return {to_key(value): 1}

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        key = to_key(value)
        if ir is None:
            return {key: 1}
        if type(ir) is dict:
            if key in ir:
                ir[key] += 1
                return ir
            if len(ir) < self.k:
                ir[key] = 1
                return ir
            ir = self._to_sketch(ir)
        ir.update(key)
        return ir

    def _to_sketch(self, counts: dict[str, int]) -> Any:
        sketch = frequent_strings_sketch(self.lg_max_map_size)
        for key, count in counts.items():
            sketch.update(key, count)
        return sketch

    def _merge(self, a: IR, b: IR) -> IR:
        if type(a) is dict and type(b) is dict:
            for key, count in b.items():
                a[key] = a.get(key, 0) + count
            return a if len(a) <= self.k else self._to_sketch(a)
        if type(a) is dict:
            sketch = self._to_sketch(a)
            sketch.merge(b)
            return sketch
        if type(b) is dict:
            for key, count in b.items():
                a.update(key, count)
            return a
        a.merge(b)
        return a

    def clone(self, ir: IR) -> IR:
        if ir is None or type(ir) is dict:
            return None if ir is None else dict(ir)
        return frequent_strings_sketch.deserialize(ir.serialize())

    def finalize(self, ir: IR) -> Any:
        if ir is None:
            return None
        if type(ir) is dict:
            return _largest(list(ir.items()), self.k)
        items = ir.get_frequent_items(frequent_items_error_type.NO_FALSE_NEGATIVES)
        return _largest([(item, int(est)) for item, est, _lower, _upper in items], self.k) or None
