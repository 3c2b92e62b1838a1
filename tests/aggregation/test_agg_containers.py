"""Buckets, map inputs and element-wise lists around any inner operation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gnomon.aggregation import (
    BucketedAggregator,
    ElementWiseAggregator,
    MapAggregator,
    decode_ir,
    encode_ir,
    make_aggregator,
)

from .naive import CASES, VALUES, Case, assert_matches, expected, rows_strategy

PROPERTY = settings(max_examples=30, deadline=None, database=None)
INNER = [
    c
    for c in CASES
    if c.id
    in {
        "count()[str]",
        "sum()[float]",
        "variance()[float]",
        "last_k(k=3)[str]",
        "histogram()[str]",
        "approx_unique_count(lg_k=10)[str]",
        "top_k(k=3)[float]",
        "first()[list<int>]",
    }
]
BUCKETS = st.sampled_from([None, "x", "y", 1, True])


def _group(rows: list[tuple[Any, ...]]) -> dict[str, list[tuple[Any, int, int]]]:
    groups: dict[str, list[tuple[Any, int, int]]] = {}
    for value, ts, seq, key in rows:
        if key is not None:
            name = ("true" if key else "false") if isinstance(key, bool) else str(key)
            groups.setdefault(name, []).append((value, ts, seq))
    return groups


def _check_keyed(
    case: Case,
    got: Any,
    groups: dict[str, list[tuple[Any, int, int]]],
    scale: dict[str, list[tuple[Any, int, int]]] | None = None,
) -> None:
    """``got`` holds the expected output per group; ``scale``: all rows seen (deleted ones too)."""
    scale = scale or groups
    want = {key: expected(case, rows) for key, rows in groups.items()}
    want = {key: value for key, value in want.items() if value is not None}
    if not want:
        assert got is None
        return
    assert list(got) == sorted(want)
    for key, value in want.items():
        assert_matches(case, got[key], value, scale[key])


def _split_merge(agg: Any, irs: list[Any]) -> Any:
    merged = None
    for ir in irs:
        merged = agg.merge(merged, ir)
    return merged


@pytest.mark.parametrize("case", INNER, ids=lambda c: c.id)
@PROPERTY
@given(data=st.data())
def test_bucketed(case: Case, data: st.DataObject) -> None:
    base = data.draw(rows_strategy(case, max_size=20))
    rows = [(value, ts, seq, data.draw(BUCKETS)) for value, ts, seq in base]
    agg = make_aggregator(case.kind, case.params, case.input_type, bucketed=True)
    assert isinstance(agg, BucketedAggregator)
    assert agg.output_type.startswith("map<str,")
    cut = data.draw(st.integers(0, len(rows)))
    irs = []
    for part in (rows[:cut], rows[cut:]):
        ir = None
        for value, ts, seq, bucket in part:
            ir = agg.accumulate(ir, value, ts, seq, bucket)
        irs.append(ir)
    merged = decode_ir(agg, encode_ir(agg, _split_merge(agg, irs)))
    _check_keyed(case, agg.finalize(merged), _group(rows))
    if agg.reversible and rows:
        for value, ts, seq, bucket in rows[:cut]:
            merged = agg.retract(merged, value, ts, seq, bucket)
        _check_keyed(case, agg.finalize(merged), _group(rows[cut:]), scale=_group(rows))


@pytest.mark.parametrize("case", INNER, ids=lambda c: c.id)
@PROPERTY
@given(data=st.data())
def test_map_inputs(case: Case, data: st.DataObject) -> None:
    element = st.one_of(st.none(), VALUES[case.values])
    maps = data.draw(
        st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]), element, max_size=3), max_size=15)
    )
    rows = [(value, i % 5, i) for i, value in enumerate(maps)]
    agg = make_aggregator(case.kind, case.params, f"map<str,{case.input_type}>")
    assert isinstance(agg, MapAggregator)
    cut = data.draw(st.integers(0, len(rows)))
    merged = _split_merge(agg, [agg.fold(rows[:cut]), agg.fold(rows[cut:])])
    merged = decode_ir(agg, encode_ir(agg, merged))
    flat = [(v, ts, seq, key) for m, ts, seq in rows for key, v in m.items() if v is not None]
    _check_keyed(case, agg.finalize(merged), _group(flat))


@pytest.mark.parametrize("case", INNER, ids=lambda c: c.id)
@PROPERTY
@given(data=st.data())
def test_element_wise(case: Case, data: st.DataObject) -> None:
    length = data.draw(st.integers(0, 3))
    element = st.one_of(st.none(), VALUES[case.values])
    lists = data.draw(st.lists(st.lists(element, min_size=length, max_size=length), max_size=15))
    rows = [(value, i % 5, i) for i, value in enumerate(lists)]
    agg = make_aggregator(case.kind, case.params, f"list<{case.input_type}>", element_wise=True)
    assert isinstance(agg, ElementWiseAggregator)
    cut = data.draw(st.integers(0, len(rows)))
    merged = _split_merge(agg, [agg.fold(rows[:cut]), agg.fold(rows[cut:])])
    got = agg.finalize(decode_ir(agg, encode_ir(agg, merged)))
    columns = [
        [(values[i], ts, seq) for values, ts, seq in rows if values[i] is not None] for i in range(length)
    ]
    want = [expected(case, column) for column in columns]
    if all(value is None for value in want):
        assert got is None
        return
    for got_value, want_value, column in zip(got, want, columns, strict=True):
        assert_matches(case, got_value, want_value, column)


def test_element_wise_length_mismatch_names_both_lengths() -> None:
    agg = make_aggregator("sum", {}, "list<int>", element_wise=True)
    ir = agg.prepare([1, 2, 3], 0, 0)
    with pytest.raises(ValueError, match="length 3.*length 2"):
        agg.update(ir, [1, 2], 1, 1)
    with pytest.raises(ValueError, match="length 3 and 1"):
        agg.merge(ir, agg.prepare([1], 2, 2))


def test_bucketed_ignores_null_buckets_and_wraps_map_and_list_containers() -> None:
    agg = make_aggregator("sum", {}, "int", bucketed=True)
    ir = agg.prepare(5, 0, 0, None)
    assert ir is None
    ir = agg.update(ir, 2, 0, 1, "a")
    ir = agg.update(ir, 3, 0, 2, False)
    assert agg.finalize(ir) == {"a": 2, "false": 3}
    nested = make_aggregator("count", {}, "list<int>", bucketed=True, element_wise=True)
    assert nested.output_type == "map<str,list<int64>>"
    assert nested.finalize(nested.accumulate(None, [1, None], 0, 0, "b")) == {"b": [1, None]}


def test_non_reversible_containers_refuse_deletes() -> None:
    for agg in (
        make_aggregator("max", {}, "int", bucketed=True),
        make_aggregator("max", {}, "map<str,int>"),
        make_aggregator("max", {}, "list<int>", element_wise=True),
    ):
        assert not agg.reversible
        with pytest.raises(TypeError, match="not reversible"):
            agg.delete(None, 1, 0, 0)


def test_map_inputs_accept_arrow_key_value_pairs() -> None:
    agg = make_aggregator("sum", {}, "map<str,int>")
    rows = [([("a", 1), ("b", None)], 0, 0), ({"a": 2, "c": 5}, 1, 1)]
    assert agg.finalize(agg.fold(rows)) == {"a": 3, "c": 5}
