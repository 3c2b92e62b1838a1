"""Empty windows, NaN/Inf, ties, type checks and the registry's errors."""

from __future__ import annotations

import math

import pytest

from gnomon.aggregation import make_aggregator
from gnomon.definitions.operations import ALL_KINDS, Operation
from gnomon.errors import DefinitionError

NAN, INF = float("nan"), float("inf")
PARAMS = {
    "first_k": {"k": 2},
    "last_k": {"k": 2},
    "top_k": {"k": 2},
    "bottom_k": {"k": 2},
    "bounded_unique_count": {"k": 2},
}


def run(kind: str, values: list, input_type: str = "float", **params: object) -> object:
    agg = make_aggregator(kind, params, input_type)
    return agg.finalize(agg.fold((value, i, i) for i, value in enumerate(values)))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_empty_window_is_null_for_every_operation(kind: str) -> None:
    agg = make_aggregator(kind, PARAMS.get(kind, {}), "float")
    assert agg.finalize(None) is None
    assert agg.fold([]) is None
    assert agg.fold([(None, 1, 1), ([], 2, 2)] if agg.unpacks_lists else [(None, 1, 1)]) is None


def test_count_is_null_when_everything_was_deleted() -> None:
    agg = make_aggregator("count", {}, "int")
    assert agg.finalize(agg.delete(agg.prepare(7, 1, 1), 7, 1, 1)) is None


@pytest.mark.parametrize(
    "kind, want",
    [
        ("count", 3),
        ("sum", None),
        ("average", None),
        ("variance", None),
        ("skew", None),
        ("kurtosis", None),
        ("min", 1.0),
        ("max", None),
        ("first", 1.0),
        ("last", None),
        ("unique_count", 3),
        ("approx_unique_count", 3),
        ("approx_percentile", [1.0]),
        ("histogram", {"1.0": 1, "2.0": 1, "nan": 1}),
    ],
)
def test_nan_input(kind: str, want: object) -> None:
    assert run(kind, [1.0, 2.0, NAN]) == want


def test_nan_sorts_above_every_number_and_becomes_null_in_lists() -> None:
    assert run("top_k", [1.0, NAN, INF, -INF], k=3) == [None, None, 1.0]
    assert run("bottom_k", [1.0, NAN, -INF], k=3) == [None, 1.0, None]
    assert run("min", [NAN, NAN]) is None
    assert run("last_k", [[1.0, NAN]], "list<float>", k=1) == [[1.0, None]]


def test_infinite_outputs_are_null() -> None:
    assert run("sum", [1e308, 1e308]) is None
    assert run("max", [1.0, INF]) is None
    assert run("average", [INF, 1.0]) is None
    assert run("sum", [INF, -INF]) is None


def test_nan_and_signed_zero_are_one_distinct_value_each() -> None:
    assert run("unique_count", [NAN, float("-nan"), 0.0, -0.0, NAN]) == 2
    assert run("bounded_unique_count", [NAN, NAN, 0.0, -0.0], k=5) == 2
    assert run("approx_unique_count", [NAN, float("-nan"), 0.0, -0.0]) == 2


def test_signed_zero_order_is_total() -> None:
    assert math.copysign(1.0, run("min", [0.0, -0.0])) == -1.0
    assert math.copysign(1.0, run("min", [-0.0, 0.0])) == -1.0
    assert math.copysign(1.0, run("max", [-0.0, 0.0])) == 1.0


def test_empty_string_is_counted_by_approx_unique_count() -> None:
    assert run("approx_unique_count", [""], "str") == 1
    assert run("approx_unique_count", ["", "a", ""], "str") == 2


def test_skew_and_kurtosis_need_enough_rows_and_some_variance() -> None:
    assert run("skew", [1.0, 2.0]) is None
    assert run("skew", [1.0, 2.0, 4.0]) is not None
    assert run("kurtosis", [1.0, 2.0, 4.0]) is None
    assert run("kurtosis", [3.0, 3.0, 3.0, 3.0]) is None
    assert run("skew", [5.0] * 10) is None
    assert run("kurtosis", [1.0, 2.0, 3.0, 4.0]) == pytest.approx(-1.36)
    assert run("variance", [5.0]) == 0.0


def test_ties_on_ts_keep_the_first_seen_row() -> None:
    agg = make_aggregator("last", {}, "str")
    ir = agg.update(agg.prepare("a", 5, 2), "b", 5, 1)  # seq 1 was seen before seq 2
    assert agg.finalize(ir) == "b"
    first = make_aggregator("first", {}, "str")
    assert first.finalize(first.update(first.prepare("a", 5, 1), "b", 5, 1)) == "a"  # full tie: arrival
    last_k = make_aggregator("last_k", {"k": 3}, "str")
    assert last_k.finalize(last_k.fold([("a", 1, 0), ("b", 2, 1), ("c", 2, 2)])) == ["b", "c", "a"]
    first_k = make_aggregator("first_k", {"k": 3}, "str")
    assert first_k.finalize(first_k.fold([("a", 2, 0), ("b", 1, 1), ("c", 1, 2)])) == ["b", "c", "a"]


def test_equal_ts_and_seq_across_a_merge_prefers_the_first_argument() -> None:
    agg = make_aggregator("first_k", {"k": 1}, "str")
    assert agg.finalize(agg.merge(agg.prepare("a", 1, 0), agg.prepare("b", 1, 0))) == ["a"]
    last = make_aggregator("last", {}, "str")
    assert last.finalize(last.merge(last.prepare("a", 1, 0), last.prepare("b", 1, 0))) == "a"


def test_sum_widens_and_bools_count_as_ints() -> None:
    assert run("sum", [True, True, False], "bool") == 2
    assert run("sum", [2**62, 2**62], "int") is None  # beyond int64
    assert run("average", [2**62, 2**62], "int") == 2.0**62
    assert run("sum", [1, 2], "float") == 3.0


def test_list_inputs_are_unpacked_except_by_first_last_and_their_k() -> None:
    assert run("count", [[1, 2], [3, None]], "list<int>") == 3
    assert run("first", [[1, 2], [3]], "list<int>") == [1, 2]
    assert make_aggregator("first", {}, "list<int>").output_type == "list<int64>"
    assert make_aggregator("top_k", {"k": 2}, "list<int>").output_type == "list<int64>"


def test_finalize_never_returns_a_list_the_ir_still_holds() -> None:
    agg = make_aggregator("first", {}, "list<int>")
    ir = agg.prepare([1, 2], 0, 0)
    agg.finalize(ir).append(3)
    assert agg.finalize(ir) == [1, 2]


def test_histogram_top_k_and_ordering() -> None:
    assert run("histogram", ["b", "a", "b", "c", "a", "d"], "str", k=2) == {"a": 2, "b": 2}
    assert list(run("histogram", ["c", "b", "b"], "str")) == ["b", "c"]
    assert run("histogram", [True, False, True], "bool") == {"true": 2, "false": 1}


def test_histogram_delete_drops_zero_counts() -> None:
    agg = make_aggregator("histogram", {}, "str")
    ir = agg.fold([("a", 1, 1), ("b", 1, 2)])
    ir = agg.delete(ir, "a", 1, 1)
    assert ir == {"b": 1}
    assert agg.finalize(agg.delete(ir, "b", 1, 2)) is None


@pytest.mark.parametrize(
    "kind", [k for k in ALL_KINDS if k not in ("count", "sum", "average", "variance", "histogram")]
)
def test_non_reversible_delete_raises_type_error(kind: str) -> None:
    agg = make_aggregator(kind, PARAMS.get(kind, {}), "float")
    assert not agg.reversible
    with pytest.raises(TypeError, match="not reversible"):
        agg.delete(agg.prepare(1.0, 0, 0), 1.0, 0, 0)


@pytest.mark.parametrize(
    "kind, input_type, output_type",
    [
        ("count", "str", "int64"),
        ("sum", "int", "int64"),
        ("sum", "bool", "int64"),
        ("sum", "float", "float64"),
        ("average", "int", "float64"),
        ("variance", "int", "float64"),
        ("skew", "float", "float64"),
        ("min", "str", "str"),
        ("max", "bool", "bool"),
        ("max", "int", "int64"),
        ("first", "float", "float64"),
        ("last_k", "str", "list<str>"),
        ("top_k", "float", "list<float64>"),
        ("unique_count", "str", "int64"),
        ("approx_unique_count", "int", "int64"),
        ("approx_percentile", "int", "list<float64>"),
        ("histogram", "int", "map<str,int64>"),
        ("approx_histogram_k", "str", "map<str,int64>"),
        ("sum", "map<str,float>", "map<str,float64>"),
    ],
)
def test_output_types(kind: str, input_type: str, output_type: str) -> None:
    assert make_aggregator(kind, PARAMS.get(kind, {}), input_type).output_type == output_type


def test_registry_errors_name_the_problem() -> None:
    with pytest.raises(DefinitionError, match="Did you mean 'average'"):
        make_aggregator("averag", {}, "float")
    with pytest.raises(DefinitionError, match="numeric input"):
        make_aggregator("sum", {}, "str")
    with pytest.raises(DefinitionError, match="needs parameter 'k'"):
        make_aggregator("top_k", {}, "int")
    with pytest.raises(DefinitionError, match="unknown type"):
        make_aggregator("count", {}, "decimal")
    with pytest.raises(DefinitionError, match="element_wise needs a list"):
        make_aggregator("sum", {}, "int", element_wise=True)


def test_operation_specs_are_accepted() -> None:
    agg = make_aggregator(Operation.LAST_K(2), None, "int")
    assert agg.params == {"k": 2}
    assert make_aggregator(Operation.APPROX_PERCENTILE, None, "float").params == {
        "percentiles": (0.5,),
        "k": 128,
    }
