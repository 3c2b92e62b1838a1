"""The IR byte codec: exact, versioned, self-describing, strict about malformed input."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from datasketches import cpc_sketch, kll_doubles_sketch
from hypothesis import given, settings
from hypothesis import strategies as st

from gnomon.aggregation import decode_ir, encode_ir, make_aggregator
from gnomon.aggregation.codec import VERSION, decode_value, encode_value


def same(a: Any, b: Any) -> bool:
    """Structural equality that tells -0.0 from 0.0, compares NaNs by bits and lists from tuples."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([-(2**63), 2**63 - 1, 2**200, -(2**200)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0]),
    st.binary(max_size=6).map(lambda raw: struct.unpack(">d", raw.ljust(8, b"\xff"))[0]),  # NaN payloads
    st.text(max_size=6),
    st.binary(max_size=6),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=3), inner, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, database=None)
@given(values)
def test_any_value_round_trips_exactly(value: Any) -> None:
    data = encode_value(value)
    assert data[0] == VERSION == 1
    assert same(decode_value(data), value)


def test_signed_zero_nan_payload_and_big_ints_survive() -> None:
    odd_nan = struct.unpack(">d", b"\x7f\xf8\x00\x00\x00\x00\x00\x2a")[0]
    value = [-0.0, odd_nan, 2**63 - 1, -(2**63), 2**100, "é\ud800", b"\x00"]
    back = decode_value(encode_value(value))
    assert math.copysign(1.0, back[0]) == -1.0
    assert struct.pack(">d", back[1]) == struct.pack(">d", odd_nan)
    assert back[2:] == value[2:]


def test_sets_encode_canonically() -> None:
    assert encode_value({3, 1, 2}) == encode_value({2, 3, 1})
    assert decode_value(encode_value({"a", "b"})) == {"a", "b"}


def test_sketches_round_trip_through_their_own_serialization() -> None:
    cpc = cpc_sketch(8)
    kll = kll_doubles_sketch(64)
    for i in range(500):
        cpc.update(i)
        kll.update(float(i))
    cpc_back, kll_back = decode_value(encode_value([cpc, kll]))
    assert cpc_back.serialize() == cpc.serialize()
    assert kll_back.serialize() == kll.serialize()


def test_numpy_scalars_encode_as_plain_values() -> None:
    np = pytest.importorskip("numpy")
    assert decode_value(encode_value([np.int64(5), np.float64(-0.0), np.bool_(True)])) == [5, -0.0, True]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"\x02N", "version 2"),
        (b"\x01", "malformed"),
        (b"\x01d\x00\x00", "malformed"),
        (b"\x01s\x05ab", "malformed"),
        (b"\x01NN", "trailing"),
        (b"\x01?", "unknown tag"),
        (b"\x01kz\x00", "unknown sketch kind"),
        (b"\x01kc\x02\x00\x00", "malformed"),
    ],
)
def test_malformed_bytes_raise_value_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_value(data)


def test_unencodable_values_raise_type_error() -> None:
    with pytest.raises(TypeError, match="object"):
        encode_value(object())


def test_encode_ir_of_empty_ir() -> None:
    agg = make_aggregator("count", {}, "int")
    assert encode_ir(agg, None) == b"\x01N"
    assert decode_ir(agg, b"\x01N") is None
