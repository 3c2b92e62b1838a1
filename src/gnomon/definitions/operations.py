"""The aggregation operations of SPEC §3 as immutable, parametrised specs.

``Operation.COUNT`` is a spec; parametric operations are called to set their parameters
(``Operation.LAST_K(3)``); one whose parameters all have defaults may be used bare or called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gnomon.errors import DefinitionError

_REQUIRED = object()


@dataclass(frozen=True)
class _OpInfo:
    kind: str
    params: tuple[tuple[str, Any], ...] = ()  # (name, default or _REQUIRED), in call order
    reversible: bool = False
    k_in_name: bool = False  # LAST_K(3) is named "last3"


_OPS: dict[str, _OpInfo] = {
    info.kind: info
    for info in (
        _OpInfo("count", reversible=True),
        _OpInfo("sum", reversible=True),
        _OpInfo("average", reversible=True),
        _OpInfo("variance", reversible=True),
        _OpInfo("skew"),
        _OpInfo("kurtosis"),
        _OpInfo("min"),
        _OpInfo("max"),
        _OpInfo("first"),
        _OpInfo("last"),
        _OpInfo("first_k", (("k", _REQUIRED),), k_in_name=True),
        _OpInfo("last_k", (("k", _REQUIRED),), k_in_name=True),
        _OpInfo("top_k", (("k", _REQUIRED),), k_in_name=True),
        _OpInfo("bottom_k", (("k", _REQUIRED),), k_in_name=True),
        _OpInfo("unique_count"),
        _OpInfo("bounded_unique_count", (("k", _REQUIRED),)),
        _OpInfo("approx_unique_count", (("lg_k", 8),)),
        _OpInfo("approx_percentile", (("percentiles", (0.5,)), ("k", 128))),
        _OpInfo("histogram", (("k", None),), reversible=True),
        _OpInfo("approx_histogram_k", (("k", 8),)),
    )
}


@dataclass(frozen=True)
class OperationSpec:
    """One operation with its parameters bound (or still unbound, when ``bound`` is False)."""

    kind: str
    params: tuple[tuple[str, Any], ...] = ()
    bound: bool = True
    _info: _OpInfo = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_info", _OPS[self.kind])

    def __call__(self, *args: Any, **kwargs: Any) -> OperationSpec:
        info = self._info
        upper = self.kind.upper()
        if len(args) > len(info.params):
            raise DefinitionError(
                f"takes at most {len(info.params)} parameter(s), got {len(args)}",
                obj=f"Operation.{upper}",
                field="params",
                fix=f"see the SPEC §3 table for {upper}'s parameters",
            )
        names = [name for name, _ in info.params]
        values: dict[str, Any] = dict(zip(names, args, strict=False))
        for key, value in kwargs.items():
            if key not in names:
                raise DefinitionError(
                    f"unknown parameter {key!r}",
                    obj=f"Operation.{upper}",
                    field=key,
                    fix=f"parameters are: {', '.join(names) or 'none'}",
                )
            if key in values:
                raise DefinitionError("parameter given twice", obj=f"Operation.{upper}", field=key)
            values[key] = value
        bound = []
        for name, default in info.params:
            value = values.get(name, default)
            if value is _REQUIRED:
                raise DefinitionError(
                    f"needs parameter {name!r}",
                    obj=f"Operation.{upper}",
                    field=name,
                    fix=f"write e.g. Operation.{upper}(3)",
                )
            bound.append((name, _check_param(self.kind, name, value)))
        return OperationSpec(self.kind, tuple(bound), True)

    @property
    def reversible(self) -> bool:
        return self._info.reversible

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def resolved(self) -> OperationSpec:
        """This spec with defaults bound; raises if a required parameter is missing."""
        return self if self.bound else self()

    @property
    def output_name(self) -> str:
        """``count``, ``average``, ``last3``, ``top5`` … (SPEC §3 naming)."""
        spec = self.resolved()
        if spec._info.k_in_name:
            return f"{spec.kind[: -len('_k')]}{spec.param_dict['k']}"
        return spec.kind

    def __repr__(self) -> str:
        upper = f"Operation.{self.kind.upper()}"
        if not self._info.params:
            return upper
        if not self.bound:
            return upper
        return f"{upper}({', '.join(f'{k}={v!r}' for k, v in self.params)})"

    def to_json(self) -> dict[str, Any]:
        spec = self.resolved()
        return {
            "kind": spec.kind,
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.params},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OperationSpec:
        return cls(data["kind"], bound=False)(**data.get("params", {}))


def _check_param(kind: str, name: str, value: Any) -> Any:
    obj = f"Operation.{kind.upper()}"
    if name in ("k", "lg_k"):
        if value is None and kind == "histogram":
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DefinitionError(
                f"{name} must be a positive whole number, got {value!r}", obj=obj, field=name
            )
        if name == "lg_k" and not 4 <= value <= 26:
            raise DefinitionError(
                f"lg_k must be between 4 and 26 (CPC sketch), got {value}", obj=obj, field=name
            )
        if kind == "approx_percentile" and not 8 <= value <= 65535:
            raise DefinitionError(
                f"k must be between 8 and 65535 (KLL sketch), got {value}", obj=obj, field=name
            )
        return value
    if name == "percentiles":
        values = [value] if isinstance(value, (int, float)) else value
        try:
            values = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            values = ()
        if not values or any(not 0.0 <= v <= 1.0 for v in values):
            raise DefinitionError(
                f"percentiles must be a non-empty list of numbers in [0, 1], got {value!r}",
                obj=obj,
                field=name,
                fix="write e.g. Operation.APPROX_PERCENTILE([0.5, 0.99])",
            )
        return values
    raise AssertionError(name)


def _spec(kind: str) -> OperationSpec:
    info = _OPS[kind]
    has_required = any(default is _REQUIRED for _, default in info.params)
    if not info.params:
        return OperationSpec(kind, (), True)
    if has_required:
        return OperationSpec(kind, (), False)
    return OperationSpec(kind, bound=False)()


class Operation:
    """The operations of SPEC §3. Parametric ones are called: ``Operation.LAST_K(3)``."""

    COUNT = _spec("count")
    SUM = _spec("sum")
    AVERAGE = _spec("average")
    VARIANCE = _spec("variance")
    SKEW = _spec("skew")
    KURTOSIS = _spec("kurtosis")
    MIN = _spec("min")
    MAX = _spec("max")
    FIRST = _spec("first")
    LAST = _spec("last")
    FIRST_K = _spec("first_k")
    LAST_K = _spec("last_k")
    TOP_K = _spec("top_k")
    BOTTOM_K = _spec("bottom_k")
    UNIQUE_COUNT = _spec("unique_count")
    BOUNDED_UNIQUE_COUNT = _spec("bounded_unique_count")
    APPROX_UNIQUE_COUNT = _spec("approx_unique_count")
    APPROX_PERCENTILE = _spec("approx_percentile")
    HISTOGRAM = _spec("histogram")
    APPROX_HISTOGRAM_K = _spec("approx_histogram_k")


ALL_KINDS = tuple(_OPS)
