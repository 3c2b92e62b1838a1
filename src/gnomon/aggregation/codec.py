"""The stable, versioned byte encoding of IRs (what the online store and tiles hold).

Layout: one version byte (`VERSION` = 1), then one tagged value:

=====  ==========================================================================
tag    payload
=====  ==========================================================================
``N``  None
``T``  True;  ``F`` False
``i``  int: zigzag, then unsigned LEB128 varint (any size; Python sums may pass int64)
``d``  float: IEEE-754 binary64, big-endian (keeps -0.0, ±Inf and NaN payloads bit for bit)
``s``  str: varint byte length, UTF-8 (``surrogatepass``, so any Python str round-trips)
``b``  bytes: varint length, raw bytes
``l``  list / ``t`` tuple: varint count, items
``m``  dict: varint count, key then value per entry, in insertion order
``e``  set: varint count, items ordered by their encoding (so equal sets encode equally)
``k``  sketch: one kind byte (``c`` cpc, ``q`` kll doubles, ``f`` frequent strings), varint length,
       the sketch's own ``serialize()`` bytes
=====  ==========================================================================

New tags or kinds may be added within version 1; changing the meaning of an existing one needs a new
version byte, and decoders keep reading every older version.
"""

from __future__ import annotations

import operator
import struct
from typing import Any

from datasketches import cpc_sketch, frequent_strings_sketch, kll_doubles_sketch

from gnomon.aggregation.base import IR, Aggregator

VERSION = 1

_DOUBLE = struct.Struct(">d")
_SKETCH_KINDS: dict[type, bytes] = {
    cpc_sketch: b"c",
    kll_doubles_sketch: b"q",
    frequent_strings_sketch: b"f",
}
_CONTAINER_TYPES: tuple[type[Any], ...] = (list, tuple, dict, set, frozenset, bytes)
_SKETCH_TYPES: dict[int, Any] = {kind[0]: cls for cls, kind in _SKETCH_KINDS.items()}


def encode_ir(aggregator: Aggregator, ir: IR) -> bytes:
    """Encode an IR of ``aggregator`` to bytes (first byte: the codec version)."""
    out = bytearray((VERSION,))
    _encode(ir, out)
    return bytes(out)


def decode_ir(aggregator: Aggregator, data: bytes) -> IR:
    """Decode bytes from `encode_ir` back into an IR of ``aggregator``; exact round trip."""
    return aggregator.restore(decode_value(data))


def encode_value(value: Any) -> bytes:
    """Encode any plain value (the IR building blocks) with the version byte."""
    out = bytearray((VERSION,))
    _encode(value, out)
    return bytes(out)


def decode_value(data: bytes) -> Any:
    """Decode bytes from `encode_value`/`encode_ir`; raises ValueError on malformed input."""
    view = memoryview(data)
    if len(view) == 0:
        raise ValueError("cannot decode an empty byte string as an IR")
    if view[0] != VERSION:
        raise ValueError(f"unknown IR codec version {view[0]} (this Gnomon reads version {VERSION})")
    try:
        value, position = _decode(view, 1)
    except (IndexError, struct.error, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"malformed IR bytes: {exc}") from exc
    if position != len(view):
        raise ValueError(f"malformed IR bytes: {len(view) - position} trailing byte(s)")
    return value


def _write_varint(n: int, out: bytearray) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _encode(value: Any, out: bytearray) -> None:
    kind = type(value)
    if value is None:
        out += b"N"
    elif kind is bool:
        out += b"T" if value else b"F"
    elif kind is int:
        out += b"i"
        _write_varint(value << 1 if value >= 0 else ((-value) << 1) - 1, out)
    elif kind is float:
        out += b"d"
        out += _DOUBLE.pack(value)
    elif kind is str:
        data = value.encode("utf-8", "surrogatepass")
        out += b"s"
        _write_varint(len(data), out)
        out += data
    elif kind is list or kind is tuple:
        out += b"l" if kind is list else b"t"
        _write_varint(len(value), out)
        for item in value:
            _encode(item, out)
    elif kind is dict:
        out += b"m"
        _write_varint(len(value), out)
        for key, item in value.items():
            _encode(key, out)
            _encode(item, out)
    elif kind is set or kind is frozenset:
        parts: list[bytes] = []
        for item in value:
            buffer = bytearray()
            _encode(item, buffer)
            parts.append(bytes(buffer))
        parts.sort()
        out += b"e"
        _write_varint(len(parts), out)
        for encoded in parts:
            out += encoded
    elif kind is bytes or kind is bytearray:
        out += b"b"
        _write_varint(len(value), out)
        out += value
    elif kind in _SKETCH_KINDS:
        data = value.serialize()
        out += b"k"
        out += _SKETCH_KINDS[kind]
        _write_varint(len(data), out)
        out += data
    else:
        _encode(coerce(value), out)


def coerce(value: Any) -> Any:
    """Map subclasses and numpy scalars onto the plain types above (a bool stays a bool)."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    for plain in _CONTAINER_TYPES:
        if isinstance(value, plain):
            return plain(value)
    if type(value).__name__ in ("bool_", "bool"):  # numpy.bool_ is not a bool subclass
        return bool(value)
    try:
        return operator.index(value)  # ints and numpy integers
    except TypeError:
        pass
    if hasattr(value, "__float__"):
        return float(value)
    raise TypeError(f"cannot encode {type(value).__name__} in an IR")


def _read_varint(view: memoryview, position: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        byte = view[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def _decode(view: memoryview, position: int) -> tuple[Any, int]:  # noqa: C901 — one branch per type tag
    tag = view[position]
    position += 1
    if tag == 0x4E:  # N
        return None, position
    if tag == 0x54:  # T
        return True, position
    if tag == 0x46:  # F
        return False, position
    if tag == 0x69:  # i
        z, position = _read_varint(view, position)
        return (z >> 1) if not z & 1 else -((z + 1) >> 1), position
    if tag == 0x64:  # d
        end = position + 8
        if end > len(view):
            raise IndexError("truncated float")
        return _DOUBLE.unpack(view[position:end])[0], end
    if tag in (0x73, 0x62):  # s, b
        length, position = _read_varint(view, position)
        end = position + length
        if end > len(view):
            raise IndexError("truncated string")
        data = bytes(view[position:end])
        return (data.decode("utf-8", "surrogatepass") if tag == 0x73 else data), end
    if tag in (0x6C, 0x74, 0x65):  # l, t, e
        count, position = _read_varint(view, position)
        items = []
        for _ in range(count):
            item, position = _decode(view, position)
            items.append(item)
        if tag == 0x6C:
            return items, position
        return (tuple(items) if tag == 0x74 else set(items)), position
    if tag == 0x6D:  # m
        count, position = _read_varint(view, position)
        mapping = {}
        for _ in range(count):
            key, position = _decode(view, position)
            mapping[key], position = _decode(view, position)
        return mapping, position
    if tag == 0x6B:  # k
        sketch_type = _SKETCH_TYPES.get(view[position])
        if sketch_type is None:
            raise ValueError(f"malformed IR bytes: unknown sketch kind {view[position]!r}")
        length, position = _read_varint(view, position + 1)
        end = position + length
        if end > len(view):
            raise IndexError("truncated sketch")
        try:
            return sketch_type.deserialize(bytes(view[position:end])), end
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"malformed IR bytes: bad {sketch_type.__name__}: {exc}") from exc
    raise ValueError(f"malformed IR bytes: unknown tag {tag!r} at byte {position - 1}")
