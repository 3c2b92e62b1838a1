"""APPROX_UNIQUE_COUNT (CPC sketch) and APPROX_PERCENTILE (KLL sketch), from Apache DataSketches.

APPROX_UNIQUE_COUNT(lg_k) IR: a ``datasketches.cpc_sketch(lg_k)``.

- What is hashed: ints and bools as int64, floats as float64 (DataSketches maps -0.0 to 0.0 and every
  NaN to one canonical NaN), strings as their UTF-8 bytes. An int and an equal float are different
  values; the column type fixes which one a feature sees.
- DataSketches silently ignores the empty string; we count it as the canonical-NaN float instead,
  whose 8 bytes (``00 00 00 00 00 00 f8 7f``) no UTF-8 string can produce, so it collides with nothing.
- ``finalize`` always goes through a ``cpc_union`` and reads the union's result, i.e. the ICON
  estimator, which is a function of the sketch's bit matrix alone. A directly updated sketch would use
  its HIP estimator, which depends on the update order, so the same window tiled differently online
  and offline could round to different counts. The estimate is rounded to the nearest int.

APPROX_PERCENTILE(percentiles, k) IR: a ``datasketches.kll_doubles_sketch(k)``. The output is
``get_quantiles(percentiles, inclusive=True)``: the smallest input whose inclusive rank reaches the
percentile (the same as DuckDB's ``quantile_disc`` and the Java library's default), so the 0.5
percentile of 1..10 is 5. KLL ignores NaN inputs. The sketch is exact while it holds at most k
inputs; beyond that it compacts with random coin flips, so the answer is within the sketch's rank
error (``normalized_rank_error``) but may differ between runs and merge orders.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from datasketches import cpc_sketch, cpc_union, kll_doubles_sketch

from gnomon.aggregation.base import IR, Aggregator, finite_or_none

_EMPTY_STRING_STANDIN = float("nan")


class ApproxUniqueCount(Aggregator):
    """APPROX_UNIQUE_COUNT(lg_k): distinct count estimated by a CPC sketch."""

    kind = "approx_unique_count"

    def __init__(self, params: dict[str, Any], input_type: tuple[Any, ...], output_type: str) -> None:
        super().__init__(params, input_type, output_type)
        self.lg_k: int = params["lg_k"]
        self._convert = {"int": int, "bool": int, "float": float}.get(input_type[0], _string_item)

    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        sketch = cpc_sketch(self.lg_k)
        sketch.update(self._convert(value))
        return sketch

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if ir is None:
            return self.prepare(value, ts, seq)
        ir.update(self._convert(value))
        return ir

    def fold_values(self, values: Iterable[Any]) -> IR:
        """One sketch from many values in a tight loop (the offline engine's hot path)."""
        sketch = None
        convert = self._convert
        for value in values:
            if value is None:
                continue
            if sketch is None:
                sketch = cpc_sketch(self.lg_k)
            sketch.update(convert(value))
        return sketch

    def _merge(self, a: IR, b: IR) -> IR:
        union = cpc_union(self.lg_k)
        union.update(a)
        union.update(b)
        return union.get_result()

    def clone(self, ir: IR) -> IR:
        return None if ir is None else cpc_sketch.deserialize(ir.serialize())

    def finalize(self, ir: IR) -> Any:
        if ir is None:
            return None
        return round(estimate(ir, self.lg_k))


def estimate(sketch: Any, lg_k: int) -> float:
    """The order-independent (ICON) estimate of a CPC sketch: read through a union."""
    union = cpc_union(lg_k)
    union.update(sketch)
    return float(union.get_result().get_estimate())


def _string_item(value: Any) -> Any:
    text = str(value)
    return text if text else _EMPTY_STRING_STANDIN


class ApproxPercentile(Aggregator):
    """APPROX_PERCENTILE(percentiles, k): quantiles of the inputs from a KLL sketch."""

    kind = "approx_percentile"

    def __init__(self, params: dict[str, Any], input_type: tuple[Any, ...], output_type: str) -> None:
        super().__init__(params, input_type, output_type)
        self.k: int = params["k"]
        self.percentiles: list[float] = [float(p) for p in params["percentiles"]]

    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        sketch = kll_doubles_sketch(self.k)
        sketch.update(float(value))
        return sketch

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if ir is None:
            return self.prepare(value, ts, seq)
        ir.update(float(value))
        return ir

    def _merge(self, a: IR, b: IR) -> IR:
        a.merge(b)
        return a

    def clone(self, ir: IR) -> IR:
        return None if ir is None else kll_doubles_sketch.deserialize(ir.serialize())

    def finalize(self, ir: IR) -> Any:
        if ir is None or ir.is_empty():
            return None
        return [finite_or_none(q) for q in ir.get_quantiles(self.percentiles, True)]
