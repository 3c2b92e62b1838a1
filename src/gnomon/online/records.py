"""How online state is laid out in a store: keys, batch records, stream rows (stable, versioned).

- ``meta|<group_by>``: the latest upload: batch end, upload time, input types.
- ``batch|<group_by>|<batch_end>|<entity key>``: one key's state as of the batch end. Versioned by
  the batch end, so an upload in progress never mixes with the one being served, and a fetcher
  with a slightly stale ``meta`` still reads a complete, consistent batch.
- ``rows|<stream id>|<entity key>``: the key's streamed rows, a set keyed by event id (the stream id,
  `gnomon.compile.features.stream_id`, names the GroupBy and the definition the rows were written by).
- ``fold|<stream id>|<entity key>`` and ``foldwm|<stream id>|<entity key>``: the key's rows folded
  into hop tiles, and the marks a store write checks to refuse replays of them (`gnomon.online.fold`).
- ``pending|<group_by>``: while an upload runs, the time it started.

Entity keys are the JSON of the key values in GroupBy key order, so ``"42"`` and ``42`` differ, as
they do offline.
"""

from __future__ import annotations

import bisect
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import msgpack
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from gnomon.aggregation.codec import coerce, decode_value, encode_value

RECORD_VERSION = 1


def entity_key(values: Sequence[Any]) -> bytes:
    """Canonical bytes of a key tuple: its compact JSON, UTF-8 (orjson; the standard library for
    what orjson rejects, such as integers beyond 64 bits)."""
    try:
        return orjson.dumps(values if type(values) is list else list(values))
    except TypeError:  # integers beyond 64 bits, lone surrogates (kept, as the key JSON's code points)
        return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        )


def meta_key(group_by: str) -> bytes:
    return f"meta|{group_by}".encode()


def batch_key(group_by: str, batch_end: int, key: bytes) -> bytes:
    return f"batch|{group_by}|{batch_end}|".encode() + key


def rows_key(group_by: str, key: bytes) -> bytes:
    return f"rows|{group_by}|".encode() + key


def dead_letter_key(topic: str) -> bytes:
    return f"dead|{topic}".encode()


@dataclass(frozen=True)
class UploadMeta:
    """What the fetcher needs to know about the latest upload of a GroupBy: its batch end and time,
    input types, and the definition it was made by (`GroupByPlan.fingerprint`, the feature ids in
    the batch records' order, the stream rows' columns; absent in uploads older than fingerprints)."""

    batch_end: int
    uploaded_at: int
    accuracy: str
    input_types: dict[str, str]
    fingerprint: str | None = None
    feature_ids: tuple[str, ...] = ()
    row_columns: tuple[str, ...] = ()
    semantics: str = ""  # the JSON of `GroupByPlan.semantics`, to say what changed

    def encode(self) -> bytes:
        return encode_value(
            [
                RECORD_VERSION,
                self.batch_end,
                self.uploaded_at,
                self.accuracy,
                self.input_types,
                self.fingerprint,
                list(self.feature_ids),
                list(self.row_columns),
                self.semantics,
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> UploadMeta:
        version, batch_end, uploaded_at, accuracy, input_types, *definition = decode_value(data)
        if version != RECORD_VERSION:
            raise ValueError(f"unknown upload record version {version}")
        if not definition:
            return cls(batch_end, uploaded_at, accuracy, input_types)
        fingerprint, feature_ids, columns, semantics = definition
        return cls(
            batch_end,
            uploaded_at,
            accuracy,
            input_types,
            fingerprint,
            tuple(feature_ids),
            tuple(columns),
            semantics,
        )


_U32 = struct.Struct("<I")
_UNBOUNDED = -(2**63)  # the start stored for an unbounded feature's single collapsed IR


def encode_batch_state(features: Sequence[tuple[Sequence[int | None], Sequence[bytes]]]) -> bytes:
    """A TEMPORAL key's batch record: per feature, tile starts and their suffix IRs, laid out so a
    fetch can bisect the starts and slice out the one IR it needs without decoding the rest.

    Layout (little-endian): version byte 2, feature count F, F+1 block offsets (u32); each block:
    count n (u32), n starts (i64, ascending), n+1 IR offsets (u32, relative to the block's IR
    bytes), then the IR bytes.
    """
    blocks = []
    for starts, suffixes in features:
        n = len(starts)
        packed_starts = struct.pack(f"<{n}q", *[_UNBOUNDED if s is None else s for s in starts])
        offsets = [0]
        for blob in suffixes:
            offsets.append(offsets[-1] + len(blob))
        blocks.append(_U32.pack(n) + packed_starts + struct.pack(f"<{n + 1}I", *offsets) + b"".join(suffixes))
    header_size = 1 + 4 + 4 * (len(blocks) + 1)
    block_offsets = [header_size]
    for block in blocks:
        block_offsets.append(block_offsets[-1] + len(block))
    return (
        bytes([BATCH_STATE_VERSION])
        + _U32.pack(len(blocks))
        + struct.pack(f"<{len(blocks) + 1}I", *block_offsets)
        + b"".join(blocks)
    )


BATCH_STATE_VERSION = 2


class BatchState:
    """Reads one IR of an `encode_batch_state` record: the suffix for a window start."""

    def __init__(self, data: bytes) -> None:
        if not data or data[0] != BATCH_STATE_VERSION:
            raise ValueError(f"unknown batch record version {data[:1]!r}; re-run `gnomon upload`")
        self.view = memoryview(data)

    def suffix(self, feature: int, start: int | None) -> bytes | None:
        """The merged IR of the tiles starting at or after ``start`` (None: no such tile)."""
        view = self.view
        block = _U32.unpack_from(view, 5 + 4 * feature)[0]
        n = _U32.unpack_from(view, block)[0]
        if n == 0:
            return None
        starts = view[block + 4 : block + 4 + 8 * n].cast("q")
        position = 0 if start is None else bisect.bisect_left(starts, start)
        if position >= n:
            return None
        offsets_at = block + 4 + 8 * n
        begin, end = struct.unpack_from("<2I", view, offsets_at + 4 * position)
        blobs_at = offsets_at + 4 * (n + 1)
        return bytes(view[blobs_at + begin : blobs_at + end])


BATCH_ROWS_VERSION = 3


def encode_batch_rows(rows: Sequence[tuple[int, Sequence[Any]]]) -> bytes:
    """A batch record that keeps rows (entity GroupBys, lookups): ``0x03`` + the MessagePack array of
    ``[ts, values]`` in source order (values in `row_columns` order)."""
    packed: bytes = msgpack.packb([[ts, list(values)] for ts, values in rows], default=coerce)
    return bytes([BATCH_ROWS_VERSION]) + packed


def decode_batch_rows(data: bytes) -> list[tuple[int, list[Any]]]:
    """The rows of an `encode_batch_rows` record."""
    if data[:1] != bytes([BATCH_ROWS_VERSION]):
        raise ValueError(f"unknown batch rows record version {data[:1]!r}; re-run `gnomon upload`")
    return [(ts, values) for ts, values in _unpack(memoryview(data)[1:])]


STREAM_ROW_VERSION = 2
_STREAM_ROW_PREFIX = bytes([STREAM_ROW_VERSION])


@dataclass(frozen=True)
class StreamRow:
    """One streamed event as stored: its time, arrival, order and the columns the GroupBy reads.

    Encoding (version 2): the byte ``0x02``, then the MessagePack array ``[ts, arrived_at, seq,
    values]`` (ints, floats, str, bytes, bools, None, lists; map values as arrays of key/value
    pairs). Version 1 (the IR codec's tagged values) is still read.
    """

    ts: int
    arrived_at: int
    seq: int
    values: list[Any]  # in `row_columns(group_by)` order

    def encode(self) -> bytes:
        return encode_stream_rows([self.ts], self.arrived_at, [self.seq], [self.values])[0]

    @classmethod
    def decode(cls, data: bytes) -> StreamRow:
        if data[:1] == _STREAM_ROW_PREFIX:
            ts, arrived_at, seq, values = _unpack(memoryview(data)[1:])
        else:  # version 1 rows written before the MessagePack layout
            ts, arrived_at, seq, values = decode_value(data)
        return cls(ts, arrived_at, seq, values)


def encode_stream_rows(
    ts: Iterable[int], arrived_at: int | Iterable[int], seq: Iterable[int], values: Iterable[Sequence[Any]]
) -> list[bytes]:
    """`StreamRow.encode` of many rows (aligned iterables; ``arrived_at`` one time for all or one
    per row), in C as far as MessagePack allows."""
    pack = msgpack.Packer(default=coerce).pack
    prefix = _STREAM_ROW_PREFIX
    arrivals = repeat(arrived_at) if isinstance(arrived_at, int) else arrived_at
    return [prefix + packed for packed in map(pack, zip(ts, arrivals, seq, values))]  # noqa: B905 — repeat() is endless


def encode_stream_rows_columnar(
    ts: pa.Array, arrived_at: int | pa.Array, seq: pa.Array, values: Sequence[pa.Array]
) -> list[bytes] | None:
    """`encode_stream_rows` of Arrow columns, assembled column-wise; None when a column is not of a
    type this handles (integers up to 64 bits, floats, booleans, strings, all-null), for
    `encode_stream_rows` to do instead.

    The MessagePack here uses fixed-width forms (``0xd3`` int64, ``0xcb`` float64, ``0xdb`` str32)
    where `encode_stream_rows` uses the shortest; both decode to the same values."""
    pieces: list[Any] = [
        _STREAM_ROW_PREFIX + b"\x94",
        _fixed(0xD3, ts, ">i8"),
        b"\xd3" + arrived_at.to_bytes(8, "big", signed=True)
        if isinstance(arrived_at, int)
        else _fixed(0xD3, arrived_at, ">i8"),
        _fixed(0xD3, seq, ">i8"),
        bytes([0x90 | len(values)]) if len(values) < 16 else b"\xdc" + len(values).to_bytes(2, "big"),
    ]
    for column in values:
        piece = _value_piece(column)
        if piece is None:
            return None
        pieces.append(piece)
    joined: list[bytes] = pc.binary_join_element_wise(*pieces, b"").to_pylist()
    return joined


_NIL = pa.scalar(b"\xc0", pa.binary())


def _value_piece(column: pa.Array) -> pa.Array | None:
    type_ = column.type
    if pa.types.is_null(type_):
        return pa.array([b"\xc0"] * len(column), pa.binary())
    if pa.types.is_integer(type_) and type_ != pa.uint64():
        return _fixed(0xD3, column, ">i8")
    if pa.types.is_floating(type_):
        return _fixed(0xCB, column, ">f8")
    if pa.types.is_boolean(type_):
        piece = pc.if_else(column, pa.scalar(b"\xc3", pa.binary()), pa.scalar(b"\xc2", pa.binary()))
        return pc.if_else(pc.is_valid(column), piece, _NIL) if column.null_count else piece
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        lengths = pc.binary_length(column).fill_null(0).to_numpy(zero_copy_only=False).astype(">u4")
        header = _fixed_width(0xDB, lengths, 4)
        piece = pc.binary_join_element_wise(header, column.cast(pa.binary()), b"")
        return pc.if_else(pc.is_valid(column), piece, _NIL) if column.null_count else piece
    return None


def _fixed(marker: int, column: pa.Array, big_endian: str) -> pa.Array:
    """``marker`` + the 8 big-endian bytes of each value (nil for a null)."""
    values = column.fill_null(0).to_numpy(zero_copy_only=False).astype(big_endian)
    piece = _fixed_width(marker, values, 8)
    return pc.if_else(pc.is_valid(column), piece, _NIL) if column.null_count else piece


def _fixed_width(marker: int, values: np.ndarray[Any, Any], width: int) -> pa.Array:
    out = np.empty((len(values), width + 1), np.uint8)
    out[:, 0] = marker
    out[:, 1:] = values.view(np.uint8).reshape(-1, width)
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width + 1), len(values), [None, pa.py_buffer(out.tobytes())]
    ).cast(pa.binary())


def _unpack(data: memoryview) -> Any:
    return msgpack.unpackb(data, strict_map_key=False)
