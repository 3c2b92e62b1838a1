"""How online state is laid out in a store: keys, batch records, stream rows (stable, versioned).

- ``meta|<group_by>``: the latest upload: batch end, upload time, input types.
- ``batch|<group_by>|<batch_end>|<entity key>``: one key's state as of the batch end. Versioned by
  the batch end, so an upload in progress never mixes with the one being served, and a fetcher
  with a slightly stale ``meta`` still reads a complete, consistent batch.
- ``rows|<group_by>|<entity key>``: the key's streamed rows, a set keyed by event id.

Entity keys are the JSON of the key values in GroupBy key order, so ``"42"`` and ``42`` differ, as
they do offline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gnomon.aggregation.codec import decode_value, encode_value

RECORD_VERSION = 1


def entity_key(values: Sequence[Any]) -> bytes:
    """Canonical bytes of a key tuple."""
    return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False).encode()


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
    """What the fetcher needs to know about the latest upload of a GroupBy."""

    batch_end: int
    uploaded_at: int
    accuracy: str
    input_types: dict[str, str]

    def encode(self) -> bytes:
        return encode_value([RECORD_VERSION, self.batch_end, self.uploaded_at, self.accuracy, self.input_types])

    @classmethod
    def decode(cls, data: bytes) -> UploadMeta:
        version, batch_end, uploaded_at, accuracy, input_types = decode_value(data)
        if version != RECORD_VERSION:
            raise ValueError(f"unknown upload record version {version}")
        return cls(batch_end, uploaded_at, accuracy, input_types)


@dataclass(frozen=True)
class StreamRow:
    """One streamed event as stored: its time, arrival, order and the columns the GroupBy reads."""

    ts: int
    arrived_at: int
    seq: int
    values: list[Any]  # in `row_columns(group_by)` order

    def encode(self) -> bytes:
        return encode_value([self.ts, self.arrived_at, self.seq, self.values])

    @classmethod
    def decode(cls, data: bytes) -> StreamRow:
        ts, arrived_at, seq, values = decode_value(data)
        return cls(ts, arrived_at, seq, values)
