"""The vectorised chunk path of `gnomon.offline.keyed` against its per-key IR path, on the same rows.

`keyed.answer` answers a chunk of keys at once with numpy for the operations that have a vectorised
form; `keyed._answer_keys` folds every key with the IR. Both must give the same values, bit for bit
(floats compared by their bits, not within a tolerance), on random rows with the cases that matter:
events exactly at q and at the hop-aligned window start, ties on ts, nulls, NaN, ±inf, -0.0, big ints
and floats of very different magnitudes (the exact sums' limbs), keys split across chunks.
"""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from gnomon.aggregation import make_aggregator
from gnomon.compile.features import OnlineFeature
from gnomon.compile.plan import FeaturePlan
from gnomon.definitions.windows import DAY_MS, HOUR_MS, MINUTE_MS, hop_millis, window_start
from gnomon.offline import keyed
from gnomon.offline.engines.spark import arrow_aggregation_type, output_arrow_type

WINDOWS = [None, 30 * MINUTE_MS, 5 * HOUR_MS, DAY_MS, 12 * DAY_MS]
OPERATIONS: list[tuple[str, dict[str, Any]]] = [
    ("count", {}),
    ("min", {}),
    ("max", {}),
    ("first", {}),
    ("last", {}),
    ("first_k", {"k": 3}),
    ("last_k", {"k": 3}),
    ("sum", {}),
    ("average", {}),
    ("approx_unique_count", {"lg_k": 8}),
    ("variance", {}),
]
#: bucketed features: (input, operation, params, bucket column); VARIANCE per bucket keeps the IR
BUCKETED: list[tuple[str, str, dict[str, Any], str]] = [
    ("f", "sum", {}, "s"),
    ("i", "count", {}, "s"),
    ("f", "average", {}, "i"),
    ("f", "max", {}, "s"),
    ("s", "last_k", {"k": 2}, "i"),
    ("s", "approx_unique_count", {"lg_k": 8}, "i"),
    ("f", "variance", {}, "s"),
]
NUMERIC = {"min", "max", "sum", "average", "variance"}
START = 1_767_225_600_000  # 2026-01-01


def _float(rng: random.Random, wide: bool) -> float | None:
    roll = rng.random()
    if roll < 0.08:
        return None
    if roll < 0.11:
        return rng.choice([math.nan, math.inf, -math.inf])
    if roll < 0.16:
        return rng.choice([0.0, -0.0])
    if wide and roll < 0.3:
        return (
            rng.choice([1.0, -1.0])
            * rng.random()
            * 2.0 ** rng.choice([rng.randint(-60, 60), rng.randint(-300, 300)])
        )
    return round(rng.uniform(-50, 120), rng.choice([0, 1, 2, 7]))


def _int(rng: random.Random, big: bool) -> int | None:
    if rng.random() < 0.08:
        return None
    if big and rng.random() < 0.3:
        return rng.randint(-(2**62), 2**62)
    return rng.randint(-20, 40)


def _str(rng: random.Random) -> str | None:
    if rng.random() < 0.08:
        return None
    return rng.choice(["", "a", "b", "item-7", "ü", "longer value of many bytes"]) + str(rng.randint(0, 6))


def _world(seed: int) -> tuple[pa.Table, list[int]]:
    """Tagged rows of a few keys sorted as the Spark tasks get them, and the query times used."""
    rng = random.Random(seed)
    wide, big = seed % 3 == 0, seed % 4 == 0
    rows: list[dict[str, Any]] = []
    seq = 0
    for user in range(rng.randint(1, 9)):
        key = f"u{user}"
        times = sorted(START + rng.randint(0, 20 * DAY_MS) for _ in range(rng.randint(0, 60)))
        times += [times[-1]] * rng.randint(0, 3) if times else []  # ties on ts
        for ts in sorted(times):
            seq += rng.randint(1, 5)
            rows.append(
                {
                    "user": key,
                    "__t": ts,
                    "__tag": keyed.EVENT,
                    "__seq": seq if rng.random() > 0.1 else seq + 10**6,  # seqs not in ts order
                    "f": _float(rng, wide),
                    "i": _int(rng, big),
                    "s": _str(rng),
                }
            )
        for _ in range(rng.randint(0, 25)):
            q = START + rng.randint(0, 22 * DAY_MS)
            if times and rng.random() < 0.4:  # exactly at an event, or at a window's (hop-aligned) start
                event = rng.choice(times)
                window = rng.choice([w for w in WINDOWS if w is not None])
                q = rng.choice(
                    [event, event + 1, event + window, event - event % hop_millis(window) + window]
                )
            rows.append({"user": key, "__t": q, "__tag": keyed.QUERY, "__seq": 0, "__qid": len(rows)})
    rows.sort(key=lambda r: (r["user"], r["__t"], r["__tag"], r["__seq"]))
    schema = pa.schema(
        [
            ("user", pa.string()),
            ("__t", pa.int64()),
            ("__tag", pa.int32()),
            ("__seq", pa.int64()),
            ("f", pa.float64()),
            ("i", pa.int64()),
            ("s", pa.string()),
            ("__qid", pa.int64()),
            ("__snap_ds", pa.string()),
            ("__part", pa.int64()),
        ]
    )
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    columns["__part"] = [-1] * len(rows)
    queries = [row["__t"] for row in rows if row["__tag"] == keyed.QUERY]
    return pa.Table.from_pydict(columns, schema=schema), queries


Feature = tuple[str, str, dict[str, Any], int | None, str | None]


def _layout(table: pa.Table, features: list[Feature]) -> keyed.Layout:
    value_columns = ["f", "i", "s"]
    online = []
    fields = [pa.field("__qid", pa.int64())]
    for index, (column, operation, params, window, bucket) in enumerate(features):
        kind = table.schema.field(column).type
        hop = None if window is None else hop_millis(window)
        plan = FeaturePlan(f"x{index}", column, operation, params, window, hop, bucket)
        aggregator = make_aggregator(operation, params, arrow_aggregation_type(kind), bucketed=bool(bucket))
        bucket_index = None if bucket is None else value_columns.index(bucket)
        online.append(OnlineFeature(plan, aggregator, value_columns.index(column), bucket_index))
        fields.append(pa.field(plan.name, output_arrow_type(aggregator.output_type, kind, operation)))
    return keyed.Layout(["user"], value_columns, online, False, pa.schema(fields))


def _features(seed: int) -> list[Feature]:
    rng = random.Random(seed)
    out: list[Feature] = []
    for operation, params in OPERATIONS:
        for column in ["f", "i"] if operation in NUMERIC else ["f", "i", "s"]:
            out.append((column, operation, params, rng.choice(WINDOWS), None))
    out += [(column, op, params, rng.choice(WINDOWS), bucket) for column, op, params, bucket in BUCKETED]
    return out


def _bits(value: Any) -> Any:
    """A value with its floats as their bits, so that -0.0 != 0.0 and every float compares exactly."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, list):
        return [_bits(v) for v in value]
    return value


def _answers(batches: list[pa.RecordBatch], schema: pa.Schema) -> dict[int, list[Any]]:
    table = pa.Table.from_batches(batches, schema=schema)
    rows = table.to_pylist()
    return {row["__qid"]: [_bits(row[name]) for name in schema.names[1:]] for row in rows}


@pytest.mark.parametrize("chunk_rows", [7, 200_000])
@pytest.mark.parametrize("seed", range(40))
def test_fast_path_is_the_ir(seed: int, chunk_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keyed, "CHUNK_ROWS", chunk_rows)
    table, _ = _world(seed)
    layout = _layout(table, _features(seed))
    batches = table.to_batches(max_chunksize=13)
    expected = _answers(list(keyed._answer_keys(layout, batches)), layout.output)
    got = _answers(list(keyed.answer(layout, batches)), layout.output)
    assert got.keys() == expected.keys()
    for qid, values in expected.items():
        for name, want, have in zip(layout.output.names[1:], values, got[qid], strict=True):
            assert have == want, (seed, qid, name, layout.features[int(name[1:])].plan)


def test_only_bucketed_variance_keeps_the_ir() -> None:
    """The chunk path keeps the IR only where there is no vectorised form (here: VARIANCE by bucket)."""
    table, _ = _world(5)
    layout = _layout(table, _features(5))
    chunk = keyed._Chunk(layout, table.combine_chunks())
    slow = [
        (f.plan.operation, f.plan.bucket) for f in layout.features if keyed._fast_values(f, chunk) is None
    ]
    assert slow == [("variance", "s")]


def test_limbs_round_as_python_floats() -> None:
    """`_round_limbs` (an integer as base-2^32 limbs -> the nearest float) is Python's float(int),
    ties to even included."""
    rng = random.Random(3)
    rows, expected = [], []
    for _ in range(5000):
        row = [rng.choice([0, 1, -1, 2**31, rng.randint(-(2**40), 2**40)]) for _ in range(5)]
        rows.append(row)
        expected.append(float(sum(limb << (32 * j) for j, limb in enumerate(row))))
    for _ in range(2000):  # exactly half-way between two floats
        value = rng.choice([1, -1]) * ((2 * rng.randint(2**52, 2**53 - 1) + 1) << rng.randint(0, 60))
        rows.append([(value >> (32 * j)) & 0xFFFFFFFF if j < 4 else value >> 128 for j in range(5)])
        expected.append(float(value))
    got = keyed._round_limbs(np.array(rows, dtype=np.int64)).tolist()
    assert [_bits(x) for x in got] == [_bits(x) for x in expected]


def test_window_bounds_by_hand() -> None:
    """An event at the window's hop-aligned start is in, one just before it out, one at q out."""
    window = 5 * HOUR_MS
    q = START + 7 * HOUR_MS + 3 * MINUTE_MS + 17
    start = window_start(q, window)
    assert start is not None
    times = [start - 1, start, start, q - 1, q, q]
    rows = [
        {"user": "u", "__t": t, "__tag": keyed.EVENT, "__seq": n, "f": float(n), "i": n, "s": str(n)}
        for n, t in enumerate(times)
    ]
    rows.append({"user": "u", "__t": q, "__tag": keyed.QUERY, "__seq": 0, "__qid": 99})
    rows.sort(key=lambda r: (r["__t"], r["__tag"], r["__seq"]))
    table, _ = _world(0)
    table = pa.Table.from_pylist([{**r, "__part": -1} for r in rows], schema=table.schema)
    features: list[Feature] = [
        ("i", "count", {}, window, None),
        ("i", "sum", {}, window, None),
        ("s", "last_k", {"k": 3}, window, None),
        ("s", "first", {}, window, None),
    ]
    layout = _layout(table, features)
    (batch,) = keyed.answer(layout, table.to_batches())
    assert batch.to_pylist() == [{"__qid": 99, "x0": 3, "x1": 1 + 2 + 3, "x2": ["3", "1", "2"], "x3": "1"}]
