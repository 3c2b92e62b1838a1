"""JSON read and written exactly: orjson for speed, the standard library where orjson would change a
value (integers beyond 64 bits, which orjson reads as floats) or refuse one."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

# 19 digits in a row may be an integer beyond 64 bits (orjson would read it as a float); a long
# decimal fraction also matches, and is then only read by the (exact, slower) standard library
_LONG_DIGITS = re.compile(rb"\d{19}")


def loads(data: bytes) -> Any:
    """A JSON document with every integer exact (``NaN``/``Infinity`` read as floats, as Python does).

    >>> loads(b'[18446744073709551617, 1.5]')
    [18446744073709551617, 1.5]
    """
    if _LONG_DIGITS.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def dumps(value: Any) -> bytes:
    """Strict JSON: integers beyond 64 bits written exactly, NaN and ±Infinity (which JSON has no
    spelling for) written as null.

    >>> dumps({"k": float("nan"), "n": 2**64})
    b'{"k":null,"n":18446744073709551616}'
    """
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(_finite(value), separators=(",", ":"), allow_nan=False).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
