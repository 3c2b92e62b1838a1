"""Property tests of every operation's monoid against the direct reference computations in `naive`."""

from __future__ import annotations

from typing import Any

import pytest
from datasketches import frequent_items_error_type, frequent_strings_sketch
from hypothesis import given, settings
from hypothesis import strategies as st

from gnomon.aggregation import Aggregator, decode_ir, encode_ir, make_aggregator

from .naive import CASES, REVERSIBLE_KINDS, Case, Row, assert_matches, expected, rows_strategy

PROPERTY = settings(max_examples=35, deadline=None, database=None)


def is_frequent_items_sketch(ir: Any) -> bool:
    return isinstance(ir, frequent_strings_sketch)


def sketch_contents(sketch: Any) -> tuple[Any, ...]:
    items = sorted(sketch.get_frequent_items(frequent_items_error_type.NO_FALSE_NEGATIVES))
    return items, sketch.total_weight, sketch.num_active_items


def aggregator(case: Case) -> Aggregator:
    return make_aggregator(case.kind, case.params, case.input_type)


def fold(agg: Aggregator, rows: list[Row]) -> Any:
    """Fold with the primitive calls: prepare for the first input, update after (lists unpacked)."""
    ir = None
    for value, ts, seq in rows:
        if ir is None and not (agg.unpacks_lists and isinstance(value, list)):
            ir = agg.prepare(value, ts, seq)
        else:
            ir = agg.accumulate(ir, value, ts, seq)
    return ir


def merge_in_order(agg: Aggregator, irs: list[Any], data: st.DataObject) -> Any:
    """Merge IRs of contiguous chunks with a random bracketing, checking ``b`` is never mutated."""
    if len(irs) == 1:
        return irs[0]
    cut = data.draw(st.integers(1, len(irs) - 1))
    left = merge_in_order(agg, irs[:cut], data)
    right = merge_in_order(agg, irs[cut:], data)
    before = encode_ir(agg, right)
    merged = agg.merge(left, right)
    assert encode_ir(agg, right) == before, "merge mutated its second argument"
    return merged


def chunks(rows: list[Row], data: st.DataObject) -> list[list[Row]]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(rows)), max_size=5)))
    bounds = [0, *cuts, len(rows)]
    return [rows[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@PROPERTY
@given(data=st.data())
def test_fold_matches_direct_computation(case: Case, data: st.DataObject) -> None:
    rows = data.draw(rows_strategy(case))
    agg = aggregator(case)
    assert_matches(case, agg.finalize(fold(agg, rows)), expected(case, rows), rows)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@PROPERTY
@given(data=st.data())
def test_merging_any_split_equals_the_whole(case: Case, data: st.DataObject) -> None:
    rows = data.draw(rows_strategy(case))
    agg = aggregator(case)
    parts = [fold(agg, chunk) for chunk in chunks(rows, data)]
    merged = agg.finalize(merge_in_order(agg, parts, data))
    assert_matches(case, merged, expected(case, rows), rows)
    if case.kind not in ("variance", "skew", "kurtosis"):  # exact ops: bit-identical to the fold
        assert merged == agg.finalize(fold(agg, rows))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@PROPERTY
@given(data=st.data())
def test_result_depends_only_on_the_set_of_rows(case: Case, data: st.DataObject) -> None:
    """Seqs make ties explicit, so folding the same rows in any arrival order gives the same output."""
    rows = data.draw(rows_strategy(case))
    shuffled = data.draw(st.permutations(rows))
    agg = aggregator(case)
    got = agg.finalize(fold(agg, shuffled))
    if case.kind in ("variance", "skew", "kurtosis"):
        assert_matches(case, got, expected(case, rows), rows)
    else:
        assert got == agg.finalize(fold(agg, rows))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@PROPERTY
@given(data=st.data())
def test_codec_round_trip(case: Case, data: st.DataObject) -> None:
    rows = data.draw(rows_strategy(case))
    more = data.draw(rows_strategy(case, max_size=8))
    agg = aggregator(case)
    ir = fold(agg, rows)
    encoded = encode_ir(agg, ir)
    assert encoded[0] == 1
    decoded = decode_ir(agg, encoded)
    if is_frequent_items_sketch(ir):  # re-serialising rehashes the sketch's map: compare contents
        assert sketch_contents(decoded) == sketch_contents(ir)
    else:
        assert encode_ir(agg, decoded) == encoded
    assert agg.finalize(decoded) == agg.finalize(ir)
    # the decoded IR keeps working exactly like the original (e.g. NaN stays one distinct value)
    for value, ts, seq in more:
        ir = agg.accumulate(ir, value, ts, seq + 1000)
        decoded = agg.accumulate(decoded, value, ts, seq + 1000)
    assert agg.finalize(decoded) == agg.finalize(ir)


REVERSIBLE = [case for case in CASES if case.kind in REVERSIBLE_KINDS]


@pytest.mark.parametrize("case", REVERSIBLE, ids=lambda c: c.id)
@PROPERTY
@given(data=st.data())
def test_delete_undoes_update(case: Case, data: st.DataObject) -> None:
    rows = data.draw(rows_strategy(case))
    extra = [(value, ts, seq + 1000) for value, ts, seq in data.draw(rows_strategy(case, max_size=10))]
    agg = aggregator(case)
    ir = fold(agg, rows + extra)
    for value, ts, seq in data.draw(st.permutations(extra)):
        ir = agg.retract(ir, value, ts, seq)
    assert_matches(case, agg.finalize(ir), expected(case, rows), rows + extra)


@pytest.mark.parametrize("case", REVERSIBLE, ids=lambda c: c.id)
@PROPERTY
@given(data=st.data())
def test_delta_ir_of_deletes_and_inserts_merges_exactly(case: Case, data: st.DataObject) -> None:
    """A mutation stream applied to an empty tile (deletes first: negative counts), merged later."""
    rows = data.draw(rows_strategy(case))
    deleted = [
        rows[i] for i in sorted(data.draw(st.sets(st.integers(0, max(len(rows) - 1, 0))))) if i < len(rows)
    ]
    inserted = [(value, ts, seq + 1000) for value, ts, seq in data.draw(rows_strategy(case, max_size=6))]
    agg = aggregator(case)
    delta = None
    for value, ts, seq in deleted:
        delta = agg.retract(delta, value, ts, seq)
    for value, ts, seq in inserted:
        delta = agg.accumulate(delta, value, ts, seq)
    remaining = [row for row in rows if row not in deleted] + inserted
    want = expected(case, remaining)
    base = fold(agg, rows)
    assert_matches(case, agg.finalize(agg.merge(agg.clone(base), delta)), want, rows + inserted)
    assert_matches(case, agg.finalize(agg.merge(agg.clone(delta), base)), want, rows + inserted)
