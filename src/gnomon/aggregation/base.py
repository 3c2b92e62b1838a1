"""The `Aggregator` protocol every operation implements, plus the type and value helpers they share.

An aggregator is a stateless, immutable description of one operation (kind, parameters, input type);
the state lives in the intermediate representation (IR) it creates and folds. `None` is the empty IR
everywhere, so callers never need an operation-specific "zero".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

IR = Any

#: accepted spellings of the scalar input types, mapped to their canonical names
_SCALAR_ALIASES = {
    "int": "int",
    "int64": "int",
    "int32": "int",
    "int16": "int",
    "int8": "int",
    "integer": "int",
    "bigint": "int",
    "long": "int",
    "float": "float",
    "float64": "float",
    "float32": "float",
    "double": "float",
    "bool": "bool",
    "boolean": "bool",
    "str": "str",
    "string": "str",
    "varchar": "str",
}
#: the output type name of each canonical scalar type
_OUTPUT_NAMES = {"int": "int64", "float": "float64", "bool": "bool", "str": "str"}


def parse_type(text: str) -> tuple[Any, ...]:
    """Parse a type name into ``("int",)``, ``("list", inner)`` or ``("map", inner)`` (map keys are str).

    >>> parse_type("list<float64>")
    ('list', ('float',))
    >>> parse_type("map<str, int>")
    ('map', ('int',))
    """
    name = text.strip().lower()
    if name.startswith("list<") and name.endswith(">"):
        return ("list", parse_type(name[5:-1]))
    if name.startswith("map<") and name.endswith(">"):
        key, sep, value = name[4:-1].partition(",")
        if not sep or _SCALAR_ALIASES.get(key.strip()) != "str":
            raise ValueError(f"map types must have str keys, got {text!r}")
        return ("map", parse_type(value))
    if name not in _SCALAR_ALIASES:
        raise ValueError(f"unknown type {text!r}; use int, float, bool, str, list<T> or map<str,T>")
    return (_SCALAR_ALIASES[name],)


def type_name(parsed: tuple[Any, ...]) -> str:
    """The output spelling of a parsed type: ``int64``, ``list<float64>``, ``map<str,int64>``."""
    if parsed[0] == "list":
        return f"list<{type_name(parsed[1])}>"
    if parsed[0] == "map":
        return f"map<str,{type_name(parsed[1])}>"
    return _OUTPUT_NAMES[parsed[0]]


def has_float(parsed: tuple[Any, ...]) -> bool:
    """Whether values of this type can hold floats (and so need NaN/Inf cleaning on output)."""
    return parsed[0] == "float" or (parsed[0] in ("list", "map") and has_float(parsed[1]))


def finite_or_none(x: float) -> float | None:
    """SPEC §3: NaN and ±Inf outputs become null."""
    return x if math.isfinite(x) else None


def clean_output(value: Any) -> Any:
    """Replace every NaN/±Inf float inside a finalized value (lists and maps included) by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [clean_output(v) for v in value]
    if isinstance(value, dict):
        return {k: clean_output(v) for k, v in value.items()}
    return value


def to_key(value: Any) -> str:
    """The string a value becomes as a histogram or bucket key.

    Bools become ``"true"``/``"false"`` (what SQL's ``CAST(b AS VARCHAR)`` gives, so offline SQL and
    this code agree); everything else is ``str(value)``, which for ints and floats is exactly DuckDB's
    ``CAST(x AS VARCHAR)`` too (shortest round-trip repr: ``1e+16``, ``-0.0``, ``nan``, ``inf``).

    >>> to_key(True), to_key(3), to_key(2.5), to_key("x")
    ('true', '3', '2.5', 'x')
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def float_order(x: float) -> tuple[int, float, float]:
    """Sort key giving floats a total order: -inf < … < -0.0 < 0.0 < … < inf < NaN.

    NaN sorts above every number (as in DuckDB and Spark); -0.0 sorts just below 0.0 so that
    results never depend on which of two equal zeros arrived first.
    """
    if x != x:
        return (1, 0.0, 0.0)
    return (0, x, math.copysign(1.0, x))


class Aggregator:
    """One operation as a monoid over its IR (SPEC §3).

    Contract, shared by every operation:

    - ``prepare(value, ts, seq)`` builds an IR holding one input; ``value`` is never None.
    - ``update(ir, value, ts, seq)`` folds one more input; it may mutate ``ir`` and returns the IR
      (``ir`` may be None, meaning empty).
    - ``merge(a, b)`` combines two IRs; it may mutate and return ``a`` but never mutates ``b`` and never
      returns a mutable object aliased with ``b`` (so folding stored tiles never corrupts them; immutable
      IRs such as FIRST's tuple or MIN's value may be shared). When ``a`` and
      ``b`` hold rows with the same ``(ts, seq)``, ``a``'s rows count as seen first.
    - ``delete(ir, value, ts, seq)`` removes one input; only when ``reversible``. ``ir`` may be None:
      the result is then a "delta" IR (negative counts) that is meaningful once merged.
    - ``finalize(ir)`` gives the output value or None; None for an empty IR (COUNT included) and for
      NaN/±Inf floats.
    - ``clone(ir)`` is an independent deep copy; ``restore(ir)`` re-establishes in-memory invariants
      after decoding (used by the codec).
    """

    kind: str = ""
    reversible: bool = False
    #: whether a list input is unpacked (every element updates the IR); FIRST/LAST/*_K keep lists whole
    unpacks_lists: bool = True

    def __init__(self, params: dict[str, Any], input_type: tuple[Any, ...], output_type: str) -> None:
        self.params = dict(params)
        self.input_type = input_type
        self.output_type = output_type

    # -- the monoid; subclasses implement prepare/update/_merge/finalize (and delete when reversible)
    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        raise NotImplementedError

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        raise NotImplementedError

    def merge(self, a: IR, b: IR) -> IR:
        """Combine two IRs (either may be None); see the class docstring for aliasing rules."""
        if b is None:
            return a
        if a is None:
            return self.clone(b)
        return self._merge(a, b)

    def _merge(self, a: IR, b: IR) -> IR:
        raise NotImplementedError

    def delete(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        raise TypeError(
            f"{self.kind.upper()} is not reversible: it cannot delete an input "
            "(SPEC §4: such deletes are no-ops until the next snapshot)"
        )

    def finalize(self, ir: IR) -> Any:
        raise NotImplementedError

    def clone(self, ir: IR) -> IR:
        return ir

    def restore(self, ir: IR) -> IR:
        return ir

    # -- conveniences for callers that hold raw column values
    def accumulate(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        """Fold one raw column value: skips None, unpacks lists when the operation does (SPEC §3)."""
        if value is None:
            return ir
        if self.unpacks_lists and isinstance(value, (list, tuple)):
            for element in value:
                if element is not None:
                    ir = self.update(ir, element, ts, seq)
            return ir
        return self.update(ir, value, ts, seq)

    def retract(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        """Delete one raw column value (the inverse of `accumulate`); only when reversible."""
        if value is None:
            return ir
        if self.unpacks_lists and isinstance(value, (list, tuple)):
            for element in value:
                if element is not None:
                    ir = self.delete(ir, element, ts, seq)
            return ir
        return self.delete(ir, value, ts, seq)

    def fold_values(self, values: Iterable[Any]) -> IR:
        """Accumulate bare values (no times: for order-insensitive operations), e.g. a window's distinct
        inputs; subclasses may do it in one tight loop."""
        ir: IR = None
        for seq, value in enumerate(values):
            ir = self.accumulate(ir, value, 0, seq)
        return ir

    def fold(self, rows: Iterable[tuple[Any, int, int]]) -> IR:
        """Accumulate ``(value, ts, seq)`` rows in order into a fresh IR (None if nothing non-null)."""
        ir: IR = None
        for value, ts, seq in rows:
            ir = self.accumulate(ir, value, ts, seq)
        return ir

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({self.kind}({params}) -> {self.output_type})"
