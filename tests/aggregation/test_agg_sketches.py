"""Sketch operations beyond the exact regime: determinism of CPC, error bounds of KLL and frequent items."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from datasketches import frequent_strings_sketch

from gnomon.aggregation import decode_ir, encode_ir, make_aggregator
from gnomon.aggregation.histogram import lg_max_map_size
from gnomon.aggregation.sketches import estimate


def _merge_split(agg, rows, rng):  # type: ignore[no-untyped-def]
    cuts = sorted(rng.sample(range(1, len(rows)), 6))
    parts = [agg.fold(rows[a:b]) for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True)]
    rng.shuffle(parts)  # CPC merges are unions: any order
    while len(parts) > 1:
        i = rng.randrange(len(parts) - 1)
        parts[i : i + 2] = [agg.merge(parts[i], parts[i + 1])]
    return parts[0]


@pytest.mark.parametrize("lg_k, n, input_type", [(8, 3000, "int"), (11, 20000, "str"), (4, 500, "float")])
def test_cpc_estimate_depends_only_on_the_set_of_inputs(lg_k: int, n: int, input_type: str) -> None:
    rng = random.Random(lg_k)
    convert = {"int": int, "str": str, "float": lambda i: i / 7}[input_type]
    rows = [(convert(rng.randrange(n)), i, i) for i in range(2 * n)]
    agg = make_aggregator("approx_unique_count", {"lg_k": lg_k}, input_type)
    results = set()
    for _ in range(3):
        rng.shuffle(rows)
        results.add(agg.finalize(agg.fold(rows)))
        results.add(agg.finalize(_merge_split(agg, rows, rng)))
        results.add(agg.finalize(decode_ir(agg, encode_ir(agg, _merge_split(agg, rows, rng)))))
    assert len(results) == 1
    true = len({value for value, _, _ in rows})
    sketch = agg.fold(rows)
    assert abs(results.pop() - true) <= 4 * 0.7 / 2 ** (lg_k / 2) * true  # ~ 4 standard errors
    assert round(estimate(sketch, lg_k)) == agg.finalize(sketch)


def test_kll_quantiles_are_within_rank_error() -> None:
    rng = random.Random(3)
    values = [rng.gauss(0, 1) for _ in range(20000)]
    percentiles = [0.01, 0.1, 0.5, 0.9, 0.99]
    agg = make_aggregator("approx_percentile", {"percentiles": percentiles, "k": 200}, "float")
    ir = _merge_split(agg, [(v, i, i) for i, v in enumerate(values)], rng)
    got = agg.finalize(ir)
    ordered = sorted(values)
    epsilon = 2 * ir.normalized_rank_error(False)
    for p, q in zip(percentiles, got, strict=True):
        rank = sum(1 for v in ordered if v <= q) / len(ordered)
        assert abs(rank - p) <= epsilon, (p, q, rank)


def test_kll_is_exact_while_it_holds_at_most_k_inputs() -> None:
    agg = make_aggregator("approx_percentile", {"percentiles": [0.0, 0.5, 1.0], "k": 64}, "int")
    rows = [(v, i, i) for i, v in enumerate(random.Random(1).sample(range(1000), 64))]
    ordered = sorted(v for v, _, _ in rows)
    assert agg.finalize(agg.fold(rows)) == [ordered[0], ordered[31], ordered[63]]


def test_approx_histogram_switches_to_a_sketch_after_k_keys() -> None:
    agg = make_aggregator("approx_histogram_k", {"k": 3}, "str")
    ir = agg.fold([(key, 0, i) for i, key in enumerate("aabbbc")])
    assert ir == {"a": 2, "b": 3, "c": 1}
    ir = agg.update(ir, "d", 0, 9)
    assert isinstance(ir, frequent_strings_sketch)
    assert agg.finalize(ir) == {"b": 3, "a": 2, "c": 1}
    assert lg_max_map_size(3) == 6 and lg_max_map_size(8) == 7 and lg_max_map_size(100) == 11


@pytest.mark.parametrize("k", [2, 8])
def test_approx_histogram_counts_stay_within_the_sketch_bounds_after_purges(k: int) -> None:
    rng = random.Random(k)
    heavy = [f"heavy{int(rng.paretovariate(1.0))}" for _ in range(10000)]
    keys = heavy + [f"light{rng.randrange(5000)}" for _ in range(10000)]
    rng.shuffle(keys)
    truth = Counter(keys)
    agg = make_aggregator("approx_histogram_k", {"k": k}, "str")
    ir = _merge_split(agg, [(key, 0, i) for i, key in enumerate(keys)], rng)
    assert ir.num_active_items < len(truth)  # the sketch purged
    got = agg.finalize(ir)
    assert 0 < len(got) <= k
    for key, count in got.items():
        assert ir.get_lower_bound(key) <= truth[key] <= ir.get_upper_bound(key)
        assert count == ir.get_estimate(key)
    heaviest = [key for key, _ in truth.most_common(k)]
    assert set(heaviest[:1]) <= set(got)


def test_approx_histogram_merges_every_combination_of_dict_and_sketch() -> None:
    agg = make_aggregator("approx_histogram_k", {"k": 2}, "str")
    small = [("x", 0, 0), ("y", 0, 1), ("x", 0, 2)]
    big = [(key, 0, 10 + i) for i, key in enumerate("xyzzz")]
    for left, right in [(small, big), (big, small), (big, big)]:
        merged = agg.merge(agg.fold(left), agg.fold(right))
        counts = Counter(key for key, _, _ in left + right)
        want = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:2])
        assert agg.finalize(merged) == want
    two_small = agg.merge(agg.fold(small), agg.fold([("z", 0, 5)]))
    assert isinstance(two_small, frequent_strings_sketch)
    assert agg.finalize(two_small) == {"x": 2, "y": 1}
