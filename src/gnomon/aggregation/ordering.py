"""MIN, MAX, FIRST, LAST, FIRST_K, LAST_K, TOP_K and BOTTOM_K: operations that keep chosen inputs.

IR shapes:

- MIN / MAX: the kept value itself.
- FIRST / LAST: the tuple ``(ts, seq, value)`` of the kept row.
- FIRST_K / LAST_K: a list of ``(ts, seq, value)`` tuples in output order, at most k long.
  FIRST_K orders by ``(ts, seq)`` ascending (oldest first), LAST_K by ``(ts desc, seq asc)`` (newest
  first), so a ts tie always prefers the first-seen row and FIRST == FIRST_K(1)[0],
  LAST == LAST_K(1)[0]. Rows with equal ``(ts, seq)`` keep arrival order (``merge(a, b)``: a's first).
- TOP_K / BOTTOM_K: a list of values sorted ascending, at most k long (TOP_K keeps the largest and
  reverses on output).

Float ordering is total: -0.0 < 0.0 and NaN above every number (as in DuckDB and Spark), so results
never depend on arrival order. A NaN/±Inf that ends up in the output becomes None (also inside lists).
Merge compares ``(ts, seq)``: callers give seqs that are comparable across everything they merge
(e.g. a global source order), or equal seqs, in which case the position (a before b) decides.
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from gnomon.aggregation.base import IR, Aggregator, clean_output, float_order


class _ValueAggregator(Aggregator):
    """Shared output handling: floats are coerced on input and cleaned on output."""

    def __init__(
        self,
        params: dict[str, Any],
        input_type: tuple[Any, ...],
        output_type: str,
        *,
        is_float: bool,
        has_float: bool,
    ) -> None:
        super().__init__(params, input_type, output_type)
        self.is_float = is_float  # the kept values are plain floats: coerce ints to float
        self.has_float = has_float  # outputs may hold floats: clean NaN/Inf

    def _out(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            value = list(value)  # never hand out a list the IR still holds
        return clean_output(value) if self.has_float else value


class Min(_ValueAggregator):
    """MIN: the smallest input (NaN above every number, -0.0 below 0.0)."""

    kind = "min"

    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        return float(value) if self.is_float else value

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if self.is_float:
            value = float(value)
            if ir is None or _float_less(value, ir):
                return value
            return ir
        return value if ir is None or value < ir else ir

    def _merge(self, a: IR, b: IR) -> IR:
        return self.update(a, b, 0, 0)

    def finalize(self, ir: IR) -> Any:
        return None if ir is None else self._out(ir)


class Max(Min):
    """MAX: the largest input (NaN above every number, so a NaN input makes MAX null)."""

    kind = "max"

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if self.is_float:
            value = float(value)
            if ir is None or _float_less(ir, value):
                return value
            return ir
        return value if ir is None or value > ir else ir


def _float_less(x: float, y: float) -> bool:
    """``float_order(x) < float_order(y)`` without building the keys (the hot path of MIN/MAX)."""
    if x < y:
        return True
    if x == y:
        return x == 0.0 and math.copysign(1.0, x) < math.copysign(1.0, y)
    return y != y and x == x  # only NaN sorts above a number; x > y otherwise


class First(_ValueAggregator):
    """FIRST: the value of the earliest row by ``(ts, seq)``."""

    kind = "first"
    unpacks_lists = False

    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        return (ts, seq, float(value) if self.is_float else value)

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if ir is None or ts < ir[0] or (ts == ir[0] and seq < ir[1]):
            return (ts, seq, float(value) if self.is_float else value)
        return ir

    def _merge(self, a: IR, b: IR) -> IR:
        return b if b[0] < a[0] or (b[0] == a[0] and b[1] < a[1]) else a

    def finalize(self, ir: IR) -> Any:
        return None if ir is None else self._out(ir[2])


class Last(First):
    """LAST: the value of the latest row by ts; on a ts tie the first-seen row (smaller seq)."""

    kind = "last"

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if ir is None or ts > ir[0] or (ts == ir[0] and seq < ir[1]):
            return (ts, seq, float(value) if self.is_float else value)
        return ir

    def _merge(self, a: IR, b: IR) -> IR:
        return b if b[0] > a[0] or (b[0] == a[0] and b[1] < a[1]) else a


_oldest_first: Callable[[Any], Any] = itemgetter(0, 1)


def _newest_first(entry: tuple[int, int, Any]) -> tuple[int, int]:
    return (-entry[0], entry[1])


class FirstK(_ValueAggregator):
    """FIRST_K(k): the values of the k earliest rows, oldest first."""

    kind = "first_k"
    unpacks_lists = False
    newest_first = False
    _key = staticmethod(_oldest_first)

    def __init__(
        self,
        params: dict[str, Any],
        input_type: tuple[Any, ...],
        output_type: str,
        *,
        is_float: bool,
        has_float: bool,
    ) -> None:
        super().__init__(params, input_type, output_type, is_float=is_float, has_float=has_float)
        self.k: int = params["k"]

    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        return [(ts, seq, float(value) if self.is_float else value)]

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if ir is None:
            return self.prepare(value, ts, seq)
        entry = (ts, seq, float(value) if self.is_float else value)
        if self.newest_first and ts > ir[0][0]:  # the common stream case: a new newest row
            ir.insert(0, entry)
            if len(ir) > self.k:
                ir.pop()
            return ir
        key = self._key
        if len(ir) < self.k:
            insort(ir, entry, key=key)
        elif key(entry) < key(ir[-1]):
            insort(ir, entry, key=key)  # after equal keys: those rows were seen first
            ir.pop()
        return ir

    def _merge(self, a: IR, b: IR) -> IR:
        a.extend(b)
        a.sort(key=self._key)  # stable: on equal keys a's rows stay first
        del a[self.k :]
        return a

    def clone(self, ir: IR) -> IR:
        return None if ir is None else list(ir)

    def finalize(self, ir: IR) -> Any:
        if ir is None:
            return None
        return [self._out(entry[2]) for entry in ir]


class LastK(FirstK):
    """LAST_K(k): the values of the k latest rows, newest first (ts ties: first-seen row first)."""

    kind = "last_k"
    newest_first = True
    _key = staticmethod(_newest_first)


class TopK(_ValueAggregator):
    """TOP_K(k): the k largest values, sorted descending (duplicates kept)."""

    kind = "top_k"

    def __init__(
        self,
        params: dict[str, Any],
        input_type: tuple[Any, ...],
        output_type: str,
        *,
        is_float: bool,
        has_float: bool,
    ) -> None:
        super().__init__(params, input_type, output_type, is_float=is_float, has_float=has_float)
        self.k: int = params["k"]
        self.order: Callable[[Any], Any] | None = float_order if is_float else None

    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        return [float(value) if self.is_float else value]

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if self.is_float:
            value = float(value)
        if ir is None:
            return [value]
        order = self.order
        if len(ir) < self.k:
            insort(ir, value, key=order)
        elif (order(value) > order(ir[0])) if order else value > ir[0]:
            insort(ir, value, key=order)
            del ir[0]
        return ir

    def _merge(self, a: IR, b: IR) -> IR:
        a.extend(b)
        a.sort(key=self.order)
        if len(a) > self.k:
            del a[: len(a) - self.k]
        return a

    def clone(self, ir: IR) -> IR:
        return None if ir is None else list(ir)

    def finalize(self, ir: IR) -> Any:
        if ir is None:
            return None
        return self._out(ir[::-1])


class BottomK(TopK):
    """BOTTOM_K(k): the k smallest values, sorted ascending (duplicates kept)."""

    kind = "bottom_k"

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if self.is_float:
            value = float(value)
        if ir is None:
            return [value]
        order = self.order
        if len(ir) < self.k:
            insort(ir, value, key=order)
        elif (order(value) < order(ir[-1])) if order else value < ir[-1]:
            insort(ir, value, key=order)
            ir.pop()
        return ir

    def _merge(self, a: IR, b: IR) -> IR:
        a.extend(b)
        a.sort(key=self.order)
        del a[self.k :]
        return a

    def finalize(self, ir: IR) -> Any:
        if ir is None:
            return None
        return self._out(list(ir))
