"""APPROX_UNIQUE_COUNT as SQL: the CPC sketch's coupons of each input value, counted per window.

`gnomon.aggregation.sketches.ApproxUniqueCount` finalizes a window's CPC sketch through a
``cpc_union``, i.e. with DataSketches' ICON estimator, which is a function of ``(lg_k, C)`` alone, where
``C`` is the number of distinct *coupons* of the values the sketch saw: a value's coupon is a
(row, column) pair taken from the 128-bit MurmurHash3 of its bytes (seed 9001), and a sketch (or a
union of sketches) is exactly the set of its values' coupons. So the IR's finalized value over a
window is ``icon(lg_k, count(DISTINCT coupon))``, and the offline engine computes it without building
a sketch per window:

1. the coupon of every distinct input value, vectorised here with numpy (`coupons`), hashing the
   bytes DataSketches' Python binding hashes (`_hash_inputs`);
2. ``count(DISTINCT coupon)`` per window, in SQL (a window frame or a GROUP BY, no lists);
3. ``icon(lg_k, C)`` read from the library itself (`IconTable`): values with distinct coupons are fed
   one at a time into one sketch, and after the ``C``-th the union's estimate is ``icon(lg_k, C)``.

Step 3 also checks step 1: each of those values must add exactly one coupon to the library's sketch
(its HIP estimate moves). Should the hashing here ever disagree with the library's, `IconTable` says so
and the engine folds those windows with the IR instead, so values never change.

What the library hashes (Python binding, DataSketches 5): a Python int in ``[0, 2**64)`` as its 8
little-endian bytes; any other int (negative ones) converted to a float; a float as its IEEE-754 bytes
with -0.0 as 0.0 and every NaN as ``0x7ff8000000000000``; a str as its UTF-8 bytes. The IR counts an
empty string as the canonical NaN (DataSketches would skip it) and bools as the ints 0 and 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SEED = 9001  # DataSketches' default update seed
_C1 = np.uint64(0x87C37B91114253D5)
_C2 = np.uint64(0x4CF5AD432745937F)
_NAN_BITS = np.uint64(0x7FF8000000000000)
_U64 = np.uint64


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << _U64(r)) | (x >> _U64(64 - r))


def _fmix(k: np.ndarray) -> np.ndarray:
    k = k ^ (k >> _U64(33))
    k = k * _U64(0xFF51AFD7ED558CCD)
    k = k ^ (k >> _U64(33))
    k = k * _U64(0xC4CEB9FE1A85EC53)
    out: np.ndarray = k ^ (k >> _U64(33))
    return out


def _mix_k1(k1: np.ndarray) -> np.ndarray:
    return _rotl(k1 * _C1, 31) * _C2


def _mix_k2(k2: np.ndarray) -> np.ndarray:
    return _rotl(k2 * _C2, 33) * _C1


def _finalize(h1: np.ndarray, h2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MurmurHash3_x64_128's last steps, once the length is mixed in (call under np.errstate)."""
    h1 = h1 + h2
    h2 = h2 + h1
    h1, h2 = _fmix(h1), _fmix(h2)
    h1 = h1 + h2
    h2 = h2 + h1
    return h1, h2


def murmur3_x64_128(data: np.ndarray, offsets: np.ndarray, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """MurmurHash3_x64_128 of each byte string ``data[offsets[i]:offsets[i + 1]]``: ``(h1, h2)`` as uint64.

    >>> h1, h2 = murmur3_x64_128(np.frombuffer(b"hello", np.uint8), np.array([0, 5]), seed=0)
    >>> hex(int(h1[0])), hex(int(h2[0]))
    ('0xcbd8a7b341bd9b02', '0x5b1e906a48ae1d19')
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    starts, lengths = offsets[:-1], offsets[1:] - offsets[:-1]
    count = len(lengths)
    padded = np.zeros(len(data) + 16, dtype=np.uint8)
    padded[: len(data)] = data
    h1 = np.full(count, seed, dtype=np.uint64)
    h2 = np.full(count, seed, dtype=np.uint64)
    blocks = lengths >> 4
    with np.errstate(over="ignore"):
        for block in range(int(blocks.max()) if count else 0):
            rows = np.flatnonzero(blocks > block)
            base = starts[rows] + 16 * block
            k1, k2 = _word(padded, base), _word(padded, base + 8)
            a, b = h1[rows], h2[rows]
            a ^= _mix_k1(k1)
            a = _rotl(a, 27) + b
            a = a * _U64(5) + _U64(0x52DCE729)
            b ^= _mix_k2(k2)
            b = _rotl(b, 31) + a
            b = b * _U64(5) + _U64(0x38495AB5)
            h1[rows], h2[rows] = a, b
        tail = lengths & 15
        base = starts + 16 * blocks
        k1 = np.zeros(count, dtype=np.uint64)
        k2 = np.zeros(count, dtype=np.uint64)
        for index in range(15):  # tail bytes, zero past each string's end
            byte = np.where(tail > index, padded[base + index], 0).astype(np.uint64)
            if index < 8:
                k1 |= byte << _U64(8 * index)
            else:
                k2 |= byte << _U64(8 * (index - 8))
        h2 = np.where(tail > 8, h2 ^ _mix_k2(k2), h2)
        h1 = np.where(tail > 0, h1 ^ _mix_k1(k1), h1)
        h1 ^= lengths.astype(np.uint64)
        h2 ^= lengths.astype(np.uint64)
        return _finalize(h1, h2)


def _word(padded: np.ndarray, base: np.ndarray) -> np.ndarray:
    """The little-endian uint64 at each byte offset ``base``."""
    word = np.zeros(len(base), dtype=np.uint64)
    for index in range(8):
        word |= padded[base + index].astype(np.uint64) << _U64(8 * index)
    return word


def coupon_of_hashes(h1: np.ndarray, h2: np.ndarray, lg_k: int) -> np.ndarray:
    """DataSketches' ``row_col_from_two_hashes``: ``row << 6 | col`` with row = the low lg_k bits of h1
    and col = the leading zeros of h2 (at most 63), as int64."""
    smeared = h2.copy()  # every bit below the highest set bit set too: its popcount is the bit length
    for shift in (1, 2, 4, 8, 16, 32):
        smeared |= smeared >> _U64(shift)
    col = np.minimum(64 - np.bitwise_count(smeared).astype(np.int64), 63)
    row = (h1 & _U64((1 << lg_k) - 1)).astype(np.int64)
    coupon = (row << 6) | col
    # DataSketches avoids its hash table's empty value, UINT32_MAX (never reached for lg_k <= 26)
    return np.asarray(coupon, dtype=np.int64)


#: DuckDB column types whose values this module hashes exactly as the IR does (anything else: the IR)
INT_TYPES = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "BOOLEAN"}
)
FLOAT_TYPES = frozenset({"FLOAT", "DOUBLE"})
STRING_TYPES = frozenset({"VARCHAR"})


def supported(duck_type: str) -> bool:
    """Whether `coupons` hashes values of this DuckDB scalar type exactly as the IR does."""
    return duck_type in INT_TYPES or duck_type in FLOAT_TYPES or duck_type in STRING_TYPES


def _hash_inputs(values: pa.Array, duck_type: str) -> tuple[np.ndarray, np.ndarray]:
    """The bytes the IR's sketch hashes for each (non-null) value, as (data, offsets)."""
    count = len(values)
    if duck_type in STRING_TYPES:
        strings = pc.cast(values, pa.large_string())
        lengths = pc.binary_length(strings).to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64)[
            strings.offset : strings.offset + count + 1
        ]
        raw = (
            np.frombuffer(strings.buffers()[2], dtype=np.uint8)
            if strings.buffers()[2]
            else np.zeros(0, np.uint8)
        )
        empty = lengths == 0
        if not empty.any():
            return raw, offsets
        # the empty string is counted as the canonical-NaN float: 8 bytes, appended after the text bytes
        nan = np.frombuffer(_NAN_BITS.tobytes(), dtype=np.uint8)
        data = np.concatenate([raw, nan])
        starts = np.where(empty, len(raw), offsets[:-1])
        ends = np.where(empty, len(raw) + 8, offsets[1:])
        # rebuild as one contiguous buffer: gather each value's bytes
        sizes = ends - starts
        new_offsets = np.zeros(count + 1, dtype=np.int64)
        np.cumsum(sizes, out=new_offsets[1:])
        gather = np.repeat(starts - new_offsets[:-1], sizes) + np.arange(new_offsets[-1])
        return data[gather], new_offsets
    if duck_type in FLOAT_TYPES:
        floats = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
        bits = (floats + 0.0).view(np.uint64).copy()  # + 0.0 turns -0.0 into 0.0
        bits[np.isnan(floats)] = _NAN_BITS
    else:
        ints = pc.cast(values, pa.int64() if duck_type != "UBIGINT" else pa.uint64()).to_numpy(
            zero_copy_only=False
        )
        if ints.dtype == np.uint64:
            bits = ints.astype(np.uint64)
        else:
            # the binding hashes an int >= 0 as uint64, a negative one as the float it converts to
            negative = ints < 0
            bits = ints.view(np.uint64).copy()
            as_float = (ints[negative].astype(np.float64) + 0.0).view(np.uint64)
            bits[negative] = as_float
    data = bits.astype("<u8").view(np.uint8)
    return data, np.arange(count + 1, dtype=np.int64) * 8


def coupons(values: pa.Array, duck_type: str, lg_k: int) -> np.ndarray:
    """The CPC coupon (``row << 6 | col``, int64) each non-null value updates a sketch with."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    data, offsets = _hash_inputs(values, duck_type)
    if duck_type in STRING_TYPES:
        h1, h2 = murmur3_x64_128(data, offsets)
    else:  # one 8-byte word per value: a handful of vector operations, no tail loop
        h1, h2 = murmur3_words(data.view("<u8").astype(np.uint64))
    return coupon_of_hashes(h1, h2, lg_k)


def murmur3_words(words: np.ndarray, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """`murmur3_x64_128` of each uint64 as its 8 little-endian bytes: no full block, an 8-byte tail.

    >>> words = np.array([0, 1, 2**63 + 5], dtype=np.uint64)
    >>> general = murmur3_x64_128(words.astype("<u8").view(np.uint8), np.arange(4) * 8)
    >>> all((a == b).all() for a, b in zip(murmur3_words(words), general))
    True
    """
    length = np.uint64(8)
    with np.errstate(over="ignore"):
        h1 = np.full(len(words), seed, dtype=np.uint64) ^ _mix_k1(words) ^ length
        h2 = np.full(len(words), seed, dtype=np.uint64) ^ length
        return _finalize(h1, h2)


class HashMismatch(RuntimeError):
    """The coupons computed here disagree with DataSketches' (a library change): use the IR."""


class IconTable:
    """The IR's finalized value for C = 1..n distinct coupons, read from DataSketches itself.

    ``representatives`` are input values with pairwise distinct coupons (by `coupons`): fed one at a
    time to one sketch through the aggregator, each must add a coupon (the sketch's HIP estimate moves
    exactly when one is new), and after the C-th the aggregator's ``finalize`` is the value for C.
    ``others`` (the remaining values, a sample is enough) must then add none. Either check failing
    means the coupons here are not DataSketches': `HashMismatch`.
    """

    CHECKED_OTHERS = 20_000

    def __init__(self, aggregator: Any, representatives: list[Any], others: list[Any]) -> None:
        values: list[int] = [0]
        ir = None
        previous = 0.0
        for value in representatives:
            ir = aggregator.update(ir, value, 0, 0)
            estimate = ir.get_estimate()
            if estimate == previous:
                raise HashMismatch(f"value {value!r} added no coupon to DataSketches' CPC sketch")
            previous = estimate
            values.append(aggregator.finalize(ir))
        step = max(1, len(others) // self.CHECKED_OTHERS)
        for value in others[::step]:
            ir = aggregator.update(ir, value, 0, 0)
            if ir.get_estimate() != previous:
                raise HashMismatch(f"value {value!r} added a coupon DataSketches' CPC sketch did not have")
        self.values = values

    def arrow(self) -> pa.Table:
        """``(__c, __estimate)`` for C = 1..n."""
        return pa.table(
            {
                "__c": pa.array(range(1, len(self.values)), pa.int64()),
                "__estimate": pa.array(self.values[1:], pa.int64()),
            }
        )
