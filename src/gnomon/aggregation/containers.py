"""Container aggregators that run any inner aggregator per bucket, per map key or per list position.

- `BucketedAggregator` (``buckets=["col"]``): IR ``dict[str, inner IR]`` keyed by the row's bucket
  value (`to_key`); a row with a null bucket is ignored. Output ``map[str, inner output]``.
- `MapAggregator` (map inputs, a dict or Arrow's list of (key, value) pairs): the same IR keyed by the
  input map's keys; null map values are skipped.
- `ElementWiseAggregator` (``element_wise=True``): IR ``list[inner IR | None]``, one per position;
  every row's list must have the window's length, else ValueError naming both lengths.

Finalize drops entries whose inner output is None and returns None when nothing is left (for
element-wise: when no position has a value), so "no non-null input" stays null at every level.
Map outputs are ordered by key so that equal windows give equal outputs however they were folded.
Values are passed to the inner aggregator's `accumulate`/`retract`, so list values are unpacked or kept
whole exactly as they would be without the container.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gnomon.aggregation.base import IR, Aggregator, to_key


class _KeyedAggregator(Aggregator):
    """Shared dict-of-inner-IRs logic of buckets and map inputs."""

    def __init__(self, inner: Aggregator, input_type: tuple[Any, ...]) -> None:
        super().__init__(inner.params, input_type, f"map<str,{inner.output_type}>")
        self.inner = inner
        self.kind = inner.kind
        self.reversible = inner.reversible

    def _merge(self, a: IR, b: IR) -> IR:
        inner = self.inner
        for key, value in b.items():
            a[key] = inner.merge(a.get(key), value)
        return a

    def clone(self, ir: IR) -> IR:
        return None if ir is None else {key: self.inner.clone(value) for key, value in ir.items()}

    def restore(self, ir: IR) -> IR:
        return None if ir is None else {key: self.inner.restore(value) for key, value in ir.items()}

    def finalize(self, ir: IR) -> Any:
        if not ir:
            return None
        out = {}
        for key in sorted(ir):
            value = self.inner.finalize(ir[key])
            if value is not None:
                out[key] = value
        return out or None

    def _fold_into(self, ir: IR, key: Any, value: Any, ts: int, seq: int, *, delete: bool) -> IR:
        key = to_key(key)
        current = None if ir is None else ir.get(key)
        if delete:
            new = self.inner.retract(current, value, ts, seq)
        else:
            new = self.inner.accumulate(current, value, ts, seq)
        if new is None:
            return ir
        if ir is None:
            return {key: new}
        ir[key] = new
        return ir


class BucketedAggregator(_KeyedAggregator):
    """An inner aggregation per bucket value: ``update(ir, value, ts, seq, bucket)``."""

    def __init__(self, inner: Aggregator) -> None:
        super().__init__(inner, inner.input_type)
        self.unpacks_lists = inner.unpacks_lists

    def prepare(self, value: Any, ts: int, seq: int, bucket: Any = None) -> IR:
        return self.update(None, value, ts, seq, bucket)

    def update(self, ir: IR, value: Any, ts: int, seq: int, bucket: Any = None) -> IR:
        if bucket is None:
            return ir
        return self._fold_into(ir, bucket, value, ts, seq, delete=False)

    def delete(self, ir: IR, value: Any, ts: int, seq: int, bucket: Any = None) -> IR:
        if not self.reversible:
            return self.inner.delete(ir, value, ts, seq)  # raises the inner's TypeError
        if bucket is None:
            return ir
        return self._fold_into(ir, bucket, value, ts, seq, delete=True)

    def accumulate(self, ir: IR, value: Any, ts: int, seq: int, bucket: Any = None) -> IR:
        if value is None:
            return ir
        return self.update(ir, value, ts, seq, bucket)

    def retract(self, ir: IR, value: Any, ts: int, seq: int, bucket: Any = None) -> IR:
        if value is None:
            return ir
        return self.delete(ir, value, ts, seq, bucket)


class MapAggregator(_KeyedAggregator):
    """An inner aggregation per key of a map input; the value is a ``dict``."""

    unpacks_lists = False

    def __init__(self, inner: Aggregator) -> None:
        super().__init__(inner, ("map", inner.input_type))

    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        return self.update(None, value, ts, seq)

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        for key, element in _entries(value):
            if element is not None and key is not None:
                ir = self._fold_into(ir, key, element, ts, seq, delete=False)
        return ir

    def delete(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if not self.reversible:
            return self.inner.delete(ir, value, ts, seq)
        for key, element in _entries(value):
            if element is not None and key is not None:
                ir = self._fold_into(ir, key, element, ts, seq, delete=True)
        return ir


def _entries(value: Any) -> Iterable[tuple[Any, Any]]:
    """A map input's entries: a dict, or the ``[(key, value), …]`` list Arrow's ``to_pylist`` gives."""
    return value.items() if isinstance(value, Mapping) else value


class ElementWiseAggregator(Aggregator):
    """An inner aggregation per list position over equal-length list inputs."""

    unpacks_lists = False

    def __init__(self, inner: Aggregator) -> None:
        super().__init__(inner.params, ("list", inner.input_type), f"list<{inner.output_type}>")
        self.inner = inner
        self.kind = inner.kind
        self.reversible = inner.reversible

    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        return self.update(None, value, ts, seq)

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        return self._fold(ir, value, ts, seq, delete=False)

    def delete(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if not self.reversible:
            return self.inner.delete(ir, value, ts, seq)
        return self._fold(ir, value, ts, seq, delete=True)

    def _fold(self, ir: IR, value: Any, ts: int, seq: int, *, delete: bool) -> IR:
        if ir is None:
            ir = [None] * len(value)
        elif len(ir) != len(value):
            raise ValueError(
                f"element_wise {self.kind} needs lists of one length: the window holds "
                f"lists of length {len(ir)}, this row has length {len(value)}"
            )
        fold = self.inner.retract if delete else self.inner.accumulate
        for position, element in enumerate(value):
            if element is not None:
                ir[position] = fold(ir[position], element, ts, seq)
        return ir

    def _merge(self, a: IR, b: IR) -> IR:
        if len(a) != len(b):
            raise ValueError(
                f"element_wise {self.kind} needs lists of one length: cannot merge IRs "
                f"of length {len(a)} and {len(b)}"
            )
        merge = self.inner.merge
        for position, value in enumerate(b):
            a[position] = merge(a[position], value)
        return a

    def clone(self, ir: IR) -> IR:
        return None if ir is None else [self.inner.clone(value) for value in ir]

    def restore(self, ir: IR) -> IR:
        return None if ir is None else [self.inner.restore(value) for value in ir]

    def finalize(self, ir: IR) -> Any:
        if ir is None:
            return None
        out = [self.inner.finalize(value) for value in ir]
        return out if any(value is not None for value in out) else None
