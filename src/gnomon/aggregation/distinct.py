"""UNIQUE_COUNT and BOUNDED_UNIQUE_COUNT: exact distinct counts over a set IR.

IR: a ``set`` of normalised values; BOUNDED_UNIQUE_COUNT(k) keeps at most k of them, which is enough
because ``min(len(A ∪ B), k)`` is the same whether A and B were truncated at k or not.

Normalisation: floats are compared as numbers, so ``-0.0 == 0.0``, and every NaN is one value
(mapped to one shared NaN object — Python hashes NaNs by identity, so two NaN objects would otherwise
be two set members; `restore` re-applies this after decoding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gnomon.aggregation.base import IR, Aggregator

NAN = float("nan")


def normalize_float(value: Any) -> float:
    """-0.0 -> 0.0 and any NaN -> the shared `NAN`."""
    x = float(value)
    return NAN if x != x else x + 0.0


def _identity(value: Any) -> Any:
    return value


class UniqueCount(Aggregator):
    """UNIQUE_COUNT: the exact number of distinct inputs."""

    kind = "unique_count"

    def __init__(self, params: dict[str, Any], input_type: tuple[Any, ...], output_type: str) -> None:
        super().__init__(params, input_type, output_type)
        self.normalize: Callable[[Any], Any] = normalize_float if input_type == ("float",) else _identity

    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        return {self.normalize(value)}

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if ir is None:
            return {self.normalize(value)}
        ir.add(self.normalize(value))
        return ir

    def _merge(self, a: IR, b: IR) -> IR:
        a |= b
        return a

    def clone(self, ir: IR) -> IR:
        return None if ir is None else set(ir)

    def restore(self, ir: IR) -> IR:
        return None if ir is None else {self.normalize(v) for v in ir}

    def finalize(self, ir: IR) -> Any:
        return len(ir) if ir else None


class BoundedUniqueCount(UniqueCount):
    """BOUNDED_UNIQUE_COUNT(k): exact up to k distinct inputs, then k; keeps at most k values."""

    kind = "bounded_unique_count"

    def __init__(self, params: dict[str, Any], input_type: tuple[Any, ...], output_type: str) -> None:
        super().__init__(params, input_type, output_type)
        self.k: int = params["k"]

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if ir is None:
            return {self.normalize(value)}
        if len(ir) < self.k:
            ir.add(self.normalize(value))
        return ir

    def _merge(self, a: IR, b: IR) -> IR:
        room = self.k - len(a)
        if room > 0:
            for value in b:
                if value not in a:
                    a.add(value)
                    room -= 1
                    if room == 0:
                        break
        return a

    def finalize(self, ir: IR) -> Any:
        return min(len(ir), self.k) if ir else None
