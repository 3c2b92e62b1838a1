"""JSON read and written exactly: orjson for speed, the standard library where orjson would change a
value (integers beyond 64 bits, which orjson reads as floats) or refuse one."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

# 19 digits in a row may be an integer beyond 64 bits (orjson would read it as a float); a long
# decimal fraction also matches, and is then only read by the (exact, slower) standard library
_LONG_DIGITS = b"0" * 19
# every ASCII digit to "0" and every other byte to " ": a run of digits is then a plain substring
_DIGITS_ONLY = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))


def loads(data: bytes, *, checked: bool = False) -> Any:
    """A JSON document with every integer exact (``NaN``/``Infinity`` read as floats, as Python does).
    ``checked``: `has_long_digits` was false for a text holding ``data`` (one pass for a batch).

    >>> loads(b'[18446744073709551617, 1.5]')
    [18446744073709551617, 1.5]
    """
    if checked or not has_long_digits(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def has_long_digits(data: bytes) -> bool:
    """Whether ``data`` may hold an integer orjson cannot read exactly; false for the batch of
    documents joined makes `loads` of each skip the check.

    >>> has_long_digits(b'{"id": 12345678901234567890}'), has_long_digits(b'{"id": 42}')
    (True, False)
    """
    return _LONG_DIGITS in data.translate(_DIGITS_ONLY)


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
