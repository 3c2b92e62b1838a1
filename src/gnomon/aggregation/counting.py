"""COUNT, SUM and AVERAGE: the reversible, additive operations.

IR shapes (lists, mutated in place):

- COUNT: ``int`` — the signed number of inputs.
- SUM / AVERAGE over int or bool: ``[count, total]`` with ``total`` an exact Python int.
- SUM / AVERAGE over float: ``[count, nonfinite, partials]``. ``partials`` is Shewchuk's list of
  non-overlapping floats whose exact sum is the exact sum of the finite inputs (the algorithm behind
  ``math.fsum``); ``nonfinite`` counts NaN/±Inf inputs, which poison the output (-> None).

Why exact float sums: the result then depends only on the multiset of inputs — not on their order,
on how tiles were split or merged, or on deletes (``(a + b) - b`` is exactly ``a``) — so the stream
worker, the fetcher and the offline engine give bit-identical sums. Keeping NaN/Inf out of the partials
keeps deletes exact for them too. A finite sum beyond the float range stays overflowed (-> None).

Counts are signed: deleting from an empty IR gives a "delta" IR (count < 0) that is meaningful once
merged. ``finalize`` returns None unless ``count > 0`` — an empty window is null, COUNT included.
Int sums outside int64 also finalize to None (the SQL engines would fail to cast them).
"""

from __future__ import annotations

import math
from typing import Any

from gnomon.aggregation.base import IR, Aggregator

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def add_exact(partials: list[float], x: float) -> None:
    """Add ``x`` to Shewchuk partials in place, keeping their exact sum (Python's ``msum`` recipe)."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


def exact_total(partials: list[float]) -> float | None:
    """The correctly rounded sum of the partials, or None when it overflowed."""
    for p in partials:
        if not math.isfinite(p):
            return None
    try:
        total = math.fsum(partials)
    except OverflowError:
        return None
    return total if math.isfinite(total) else None


class Count(Aggregator):
    """COUNT: the number of non-null inputs (NaN counts)."""

    kind = "count"
    reversible = True

    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        return 1

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        return 1 if ir is None else ir + 1

    def _merge(self, a: IR, b: IR) -> IR:
        return a + b

    def delete(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        return -1 if ir is None else ir - 1

    def finalize(self, ir: IR) -> Any:
        return ir if ir is not None and ir > 0 else None


class IntSum(Aggregator):
    """SUM over int/bool inputs: an exact int total (bool counts as 0/1)."""

    kind = "sum"
    reversible = True

    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        return [1, int(value)]

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if ir is None:
            return [1, int(value)]
        ir[0] += 1
        ir[1] += int(value)
        return ir

    def _merge(self, a: IR, b: IR) -> IR:
        a[0] += b[0]
        a[1] += b[1]
        return a

    def delete(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if ir is None:
            return [-1, -int(value)]
        ir[0] -= 1
        ir[1] -= int(value)
        return ir

    def clone(self, ir: IR) -> IR:
        return None if ir is None else list(ir)

    def finalize(self, ir: IR) -> Any:
        if ir is None or ir[0] <= 0:
            return None
        total = ir[1]
        return total if _INT64_MIN <= total <= _INT64_MAX else None


class IntAverage(IntSum):
    """AVERAGE over int/bool inputs: exact int total divided once (correctly rounded)."""

    kind = "average"

    def finalize(self, ir: IR) -> Any:
        if ir is None or ir[0] <= 0:
            return None
        return ir[1] / ir[0]


class FloatSum(Aggregator):
    """SUM over float inputs, summed exactly (see the module docstring)."""

    kind = "sum"
    reversible = True

    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        x = float(value)
        if math.isfinite(x):
            return [1, 0, [x]]
        return [1, 1, []]

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if ir is None:
            return self.prepare(value, ts, seq)
        x = float(value)
        ir[0] += 1
        if math.isfinite(x):
            add_exact(ir[2], x)
        else:
            ir[1] += 1
        return ir

    def _merge(self, a: IR, b: IR) -> IR:
        a[0] += b[0]
        a[1] += b[1]
        partials = a[2]
        for y in b[2]:
            add_exact(partials, y)
        return a

    def delete(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if ir is None:
            ir = [0, 0, []]
        x = float(value)
        ir[0] -= 1
        if math.isfinite(x):
            add_exact(ir[2], -x)
        else:
            ir[1] -= 1
        return ir

    def clone(self, ir: IR) -> IR:
        return None if ir is None else [ir[0], ir[1], list(ir[2])]

    def finalize(self, ir: IR) -> Any:
        if ir is None or ir[0] <= 0 or ir[1] != 0:
            return None
        return exact_total(ir[2])


class FloatAverage(FloatSum):
    """AVERAGE over float inputs: the exact sum, rounded once, divided by the count."""

    kind = "average"

    def finalize(self, ir: IR) -> Any:
        total = super().finalize(ir)
        if total is None:
            return None
        mean = total / ir[0]
        return mean if math.isfinite(mean) else None
