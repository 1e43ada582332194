"""Hand-checked examples for every rule, argument errors, and the shared helpers.

Every expected number below is worked out by hand from the rule's definition
(the comment next to it shows the arithmetic), not read off the code.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ostracon import aggregator
from ostracon.aggregator import RULES, aggregate, distances, get_rule
from ostracon.aggregator import rules as rules_mod

T = torch.float64


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=T)


def close(actual: torch.Tensor, expected, atol: float = 1e-9) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# --------------------------------------------------------------------------- mean


def test_mean_hand():
    close(aggregate(t([[0, 0], [2, 4], [4, 2]]), "mean"), [2, 2])  # (0+2+4)/3, (0+4+2)/3


def test_mean_propagates_nan():
    assert torch.isnan(aggregate(t([[0.0], [math.nan]]), "mean")).all()


# --------------------------------------------------------------------------- coordinate-wise


CW5 = [[0, 7], [1, 1], [2, 2], [6, 3], [-50, 50]]


def test_cwmed_odd():
    # col 0 sorted: -50 0 1 2 6 -> 1 ; col 1 sorted: 1 2 3 7 50 -> 3
    close(aggregate(t(CW5), "cwmed", f=2), [1, 3])


def test_cwmed_even_takes_mean_of_two_middle_values():
    # col 0: 1 2 | 3 4 -> 2.5 ; col 1: -40 10 | 20 30 -> 15
    close(aggregate(t([[1, 10], [2, 20], [3, 30], [4, -40]]), "cwmed", f=1), [2.5, 15])


def test_cwtm_hand():
    # f=1: col 0 drops -50 and 6 -> (0+1+2)/3 = 1 ; col 1 drops 1 and 50 -> (2+3+7)/3 = 4
    close(aggregate(t(CW5), "cwtm", f=1), [1, 4])


def test_cwtm_f2_is_median_for_n5():
    close(aggregate(t(CW5), "cwtm", f=2), [1, 3])


def test_cwtm_f0_is_mean():
    close(aggregate(t(CW5), "cwtm", f=0), [(0 + 1 + 2 + 6 - 50) / 5, (7 + 1 + 2 + 3 + 50) / 5])


def test_meamed_hand():
    # col 0: median 1, |x - 1| = 1 0 1 5 51 -> keep 0 1 2 6 -> 9/4
    # col 1: median 3, |x - 3| = 4 2 1 0 47 -> keep 7 1 2 3 -> 13/4
    close(aggregate(t(CW5), "meamed", f=1), [9 / 4, 13 / 4])


def test_meamed_even_n_and_tie_keeps_lower_value():
    # col 0: 0 1 3 10, median 2, distances 2 1 1 8 -> keep 0 1 3 -> 4/3
    # col 1: 0 2 4 9, median 3, distances 3 1 1 6 -> keep 0 2 4 -> 2
    close(aggregate(t([[0, 0], [1, 2], [3, 4], [10, 9]]), "meamed", f=1), [4 / 3, 2])
    # n=3, f=1: values 0 2 4, median 2, distances 2 0 2: tie between 0 and 4 -> lower kept -> (0+2)/2
    close(aggregate(t([[0.0], [2.0], [4.0]]), "meamed", f=1), [1.0])


@pytest.mark.parametrize(
    "rule, expected",
    [
        # col 0 sorts to 1 2 3 inf nan(=inf), col 1 to -inf 1 2 3 nan(=inf)
        ("cwmed", [3, 2]),  # the middle values
        ("cwtm", [3, 2]),  # f=2 drops two from each end: the middle value
        ("meamed", [2, 2]),  # 3 values closest to the median: {1,2,3} in both columns
    ],
)
def test_coordinatewise_nan_counts_as_plus_inf(rule, expected):
    x = t([[math.nan, -math.inf], [1, 1], [2, 2], [3, 3], [math.inf, math.nan]])
    close(aggregate(x, rule, f=2), expected)


# --------------------------------------------------------------------------- krum family

LINE = [[0, 0], [1, 0], [3, 0], [6, 0], [100, 0]]
# squared distances and n-f-2 = 2 nearest others (f=1):
#   x0: 1 9 36 9e3  -> 1+9 = 10      x1: 1 4 25 ... -> 1+4 = 5
#   x2: 9 4 9 ...   -> 4+9 = 13      x3: 36 25 9 ... -> 9+25 = 34     x4: huge


def test_krum_hand():
    close(aggregate(t(LINE), "krum", f=1), [1, 0])


def test_multikrum_hand():
    close(aggregate(t(LINE), "multikrum", f=1), [(1 + 0 + 3 + 6) / 4, 0])  # m = n - f = 4 lowest scores
    close(aggregate(t(LINE), "multikrum", f=1, m=2), [(1 + 0) / 2, 0])
    close(aggregate(t(LINE), "multikrum", f=1, m=1), [1, 0])  # m=1 is krum


def test_krum_returns_a_copy_not_a_view():
    x = t(LINE)
    out = aggregate(x, "krum", f=1)
    out += 1.0
    assert torch.equal(x, t(LINE))


# --------------------------------------------------------------------------- geometric median


def test_geometric_median_symmetric_square():
    close(aggregate(t([[0, 0], [2, 0], [0, 2], [2, 2]]), "geometric_median"), [1, 1], atol=1e-6)


def test_geometric_median_one_dimension_is_the_median():
    # z = 1: weights 1/max(nu,|z-x|) = 1, 10, 1/99 -> (0 + 10 + 100/99) / (1 + 10 + 1/99) = 1 exactly
    close(aggregate(t([[0.0], [1.0], [100.0]]), "geometric_median", f=1), [1.0], atol=1e-6)


def test_geometric_median_zero_iterations_is_the_medoid():
    # medoid: the row whose 3rd smallest squared distance (self included) is smallest:
    # 0 -> 2.56, 1 -> 1, 1.6 -> 0.81, 2.5 -> 2.25, 100 -> huge
    close(aggregate(t([[0.0], [1.0], [1.6], [2.5], [100.0]]), "geometric_median", iterations=0), [1.6])


# --------------------------------------------------------------------------- centered clipping


def test_centered_clipping_hand_one_iteration():
    x = t([[3, 4], [0, 0.5], [-0.6, 0.8]])
    # v0 = 0, tau = 1: norms 5, 0.5, 1 -> factors 1/5, 1, 1 -> clipped (0.6,0.8) (0,0.5) (-0.6,0.8)
    out = aggregate(x, "centered_clipping", f=1, pivot=t([0, 0]), tau=1.0)
    close(out, [0.0, (0.8 + 0.5 + 0.8) / 3])


def test_centered_clipping_hand_two_iterations():
    x = [[3, 4], [0, 0.5], [-0.6, 0.8]]
    v = [0.0, 0.7]  # after one iteration (previous test)
    step = [0.0, 0.0]
    for row in x:
        dx, dy = row[0] - v[0], row[1] - v[1]
        c = min(1.0, 1.0 / math.hypot(dx, dy))
        step[0] += c * dx / 3
        step[1] += c * dy / 3
    expected = [v[0] + step[0], v[1] + step[1]]
    close(aggregate(t(x), "centered_clipping", f=1, pivot=t([0, 0]), tau=1.0, iterations=2), expected)


def test_centered_clipping_defaults_center_median_and_median_radius():
    x = [[0.0], [1.0], [5.0]]
    # v0 = cwmed = 1; radii 1, 0, 4 -> tau = median = 1; factors 1, (dist 0), 1/4
    expected = 1.0 + ((0 - 1) * 1 + 0 + (5 - 1) * 0.25) / 3
    close(aggregate(t(x), "centered_clipping", f=1), [expected])


def test_centered_clipping_zero_iterations_returns_pivot_copy():
    p = t([7.0, 8.0])
    out = aggregate(t(LINE), "centered_clipping", pivot=p, iterations=0)
    close(out, [7.0, 8.0])
    assert out.data_ptr() != p.data_ptr()


# --------------------------------------------------------------------------- mda


def test_mda_hand():
    # drop 10 -> {0,1,2} diameter 2, every other choice keeps 10 -> mean 1
    close(aggregate(t([[0, 0], [1, 0], [2, 0], [10, 0]]), "mda", f=1), [1, 0])


def test_mda_tie_on_diameter_broken_by_spread_not_index():
    a, b, v, u = [0, 0], [2, 0], [1, -1.2], [1, 1.5]
    # {a,b,u} and {a,b,v} both have diameter |ab| = 2 ({a,u,v}, {b,u,v} contain |uv| > 2);
    # spread (sum of squared pairwise distances): {a,b,u} 4 + 3.25 + 3.25 = 10.5, {a,b,v} 4 + 2.44 + 2.44 = 8.88
    # rows ordered [a, b, v, u]: dropping v comes first in enumeration, the spread picks {a,b,v}
    close(aggregate(t([a, b, v, u]), "mda", f=1), [(0 + 2 + 1) / 3, -1.2 / 3])


def test_mda_refuses_too_many_subsets():
    x = torch.randn(20, 3, dtype=T)
    with pytest.raises(ValueError, match=r"C\(20, 5\) = 15504 subsets, more than max_subsets=1000"):
        aggregate(x, "mda", f=5, max_subsets=1000)
    aggregate(x, "mda", f=5, max_subsets=15504)  # exactly at the limit is fine


# --------------------------------------------------------------------------- nna


def test_nna_hand_pivot_in_vectors():
    x = t([[0, 0], [1, 0], [0, 2], [5, 5]])
    # to x0: 0 1 4 50 -> keep x0 x1 x2
    close(aggregate(x, "nna", f=1, pivot=x[0]), [1 / 3, 2 / 3])


def test_nna_hand_external_pivot():
    x = t([[0, 0], [1, 0], [0, 2], [5, 5]])
    # to (4,4): 32 25 20 2 -> keep x3 x2 x1 -> ((5+0+1)/3, (5+2+0)/3)
    close(aggregate(x, "nna", f=1, pivot=t([4, 4])), [2, 7 / 3])


def test_nna_ties_keep_lower_index():
    x = t([[0.0], [1.0], [-1.0]])  # both others at distance 1 from the pivot 0
    close(aggregate(x, "nna", f=1, pivot=t([0.0])), [0.5])  # keeps x0 and x1


def test_bounded_nna_hand_clips_the_move_to_c_times_the_local_step():
    x = t([[0, 0], [4, 0], [4, 0], [100, 100]])
    pivot, anchor = t([0, 0]), t([0, 1])  # local step of norm 1
    # nna keeps x0 x1 x2 -> (8/3, 0); the move 8/3 is clipped to c * 1
    close(aggregate(x, "bounded_nna", f=1, pivot=pivot, anchor=anchor), [1, 0])
    close(aggregate(x, "bounded_nna", f=1, pivot=pivot, anchor=anchor, c=2.0), [2, 0])
    close(aggregate(x, "bounded_nna", f=1, pivot=pivot, anchor=anchor, c=3.0), [8 / 3, 0])  # inside: plain nna
    close(aggregate(x, "bounded_nna", f=1, pivot=pivot, anchor=anchor, c=0.0), [0, 0])  # no mixing at all
    close(aggregate(x, "bounded_nna", f=1, pivot=pivot), [8 / 3, 0])  # no anchor: plain nna


def test_bounded_nna_checks_anchor_and_c():
    x, p = t([[0, 0], [1, 0], [2, 0]]), t([0, 0])
    with pytest.raises(ValueError, match="bounded_nna: anchor must be finite"):
        aggregate(x, "bounded_nna", f=1, pivot=p, anchor=t([math.inf, 0]))
    with pytest.raises(ValueError, match=r"bounded_nna: anchor must have shape \(2,\)"):
        aggregate(x, "bounded_nna", f=1, pivot=p, anchor=t([0, 0, 0]))
    for c in (-1.0, math.nan, True):
        with pytest.raises(ValueError, match="bounded_nna: c must be"):
            aggregate(x, "bounded_nna", f=1, pivot=p, anchor=p, c=c)
    with pytest.raises(ValueError, match="bounded_nna: a pivot"):
        aggregate(x, "bounded_nna", f=1)


# --------------------------------------------------------------------------- aggregate()


def test_aggregate_applies_pre_steps_in_order():
    x = t([[0.0], [1.0], [3.0], [10.0]])
    # nnm f=1 -> 4/3 4/3 4/3 14/3 (see test_pre_aggregation), then clipping c=2 keeps them but 14/3 -> 2
    out = aggregate(x, "mean", f=1, pre=["nnm", ("clipping", {"c": 2.0})])
    close(out, [(3 * 4 / 3 + 2.0) / 4])


def test_aggregate_accepts_single_name_and_list_pairs():
    x = t([[0.0], [1.0], [3.0], [10.0]])
    assert torch.equal(aggregate(x, "mean", f=1, pre="nnm"), aggregate(x, "mean", f=1, pre=[["nnm", {}]]))


def test_aggregate_errors():
    x = t(LINE)
    with pytest.raises(ValueError, match="unknown rule 'nope'"):
        aggregate(x, "nope")
    with pytest.raises(ValueError, match="unknown pre-aggregation 'nope'"):
        aggregate(x, "mean", pre=["nope"])
    with pytest.raises(ValueError, match="pre: each step must be"):
        aggregate(x, "mean", pre=[("nnm",)])
    with pytest.raises(ValueError, match="unknown parameter.*'bucket'"):
        aggregate(x, "mean", pre=[("bucketing", {"bucket": 2})])


def test_public_api():
    for name in ("RULES", "PRE_AGGREGATIONS", "ATTACKS", "get_rule", "get_pre_aggregation", "get_attack", "aggregate"):
        assert hasattr(aggregator, name)
    assert set(RULES) == {
        "mean", "cwmed", "cwtm", "krum", "multikrum", "geometric_median", "centered_clipping", "meamed", "mda", "nna",
        "bounded_nna",
    }
    assert set(aggregator.PRE_AGGREGATIONS) == {"nnm", "bucketing", "clipping", "arc"}
    assert aggregator.ATTACKS, "attacks must be registered by importing aggregator"


# --------------------------------------------------------------------------- argument errors

ALL_RULES = sorted(RULES)
REQUIREMENT = {
    "mean": "n > f", "krum": r"n > 2f \+ 2", "multikrum": r"n > 2f \+ 2",
}


def call(rule, x, **kw):
    if rule in ("nna", "bounded_nna") and "pivot" not in kw:
        kw["pivot"] = x[0] if x.dim() == 2 and x.shape[0] else torch.zeros(x.shape[-1], dtype=x.dtype)
    return get_rule(rule)(x, **kw)


@pytest.mark.parametrize("rule", ALL_RULES)
def test_rule_argument_errors(rule):
    x = torch.randn(7, 3, dtype=T)
    with pytest.raises(ValueError, match="empty"):
        get_rule(rule)(torch.empty(0, 3, dtype=T), pivot=torch.zeros(3, dtype=T))
    with pytest.raises(ValueError, match="2-D"):
        get_rule(rule)(torch.zeros(3, dtype=T), pivot=torch.zeros(3, dtype=T))
    with pytest.raises(ValueError, match="floating-point"):
        get_rule(rule)(torch.zeros(7, 3, dtype=torch.int64), pivot=torch.zeros(3, dtype=T))
    with pytest.raises(ValueError, match=rf"f=7 is too large for n=7 \(requires {REQUIREMENT.get(rule, 'n > 2f')}\)"):
        call(rule, x, f=7)
    with pytest.raises(ValueError, match="f must be >= 0"):
        call(rule, x, f=-1)
    with pytest.raises(ValueError, match="f must be an int"):
        call(rule, x, f=1.0)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) 'bogus'"):
        call(rule, x, f=1, bogus=3)
    with pytest.raises(ValueError, match=r"pivot must have shape \(3,\)"):
        call(rule, x, f=1, pivot=torch.zeros(4, dtype=T))
    with pytest.raises(ValueError, match="pivot must be finite"):
        call(rule, x, f=1, pivot=torch.tensor([0.0, math.nan, 0.0], dtype=T))


@pytest.mark.parametrize(
    "rule, f, good, bad",
    [
        ("cwtm", 3, 7, 6), ("cwmed", 3, 7, 6), ("meamed", 2, 5, 4), ("mda", 2, 5, 4), ("nna", 2, 5, 4),
        ("bounded_nna", 2, 5, 4),
        ("geometric_median", 2, 5, 4), ("centered_clipping", 2, 5, 4), ("krum", 2, 7, 6), ("multikrum", 1, 5, 4),
    ],
)
def test_requirement_boundary(rule, f, good, bad):
    call(rule, torch.randn(good, 2, dtype=T), f=f)
    with pytest.raises(ValueError, match="too large"):
        call(rule, torch.randn(bad, 2, dtype=T), f=f)


@pytest.mark.parametrize(
    "rule, params, message",
    [
        ("geometric_median", {"nu": 0.0}, "nu must be > 0"),
        ("geometric_median", {"nu": math.inf}, "nu must be a finite real"),
        ("geometric_median", {"iterations": -1}, "iterations must be >= 0"),
        ("geometric_median", {"iterations": 2.5}, "iterations must be an int"),
        ("geometric_median", {"tol": -1e-3}, "tol must be >= 0"),
        ("centered_clipping", {"tau": 0.0}, "tau must be > 0"),
        ("centered_clipping", {"tau": "1"}, "tau must be a finite real"),
        ("centered_clipping", {"iterations": True}, "iterations must be an int"),
        ("multikrum", {"m": 0}, r"m must be in \[1, 6\]"),
        ("multikrum", {"m": 7}, r"m must be in \[1, 6\]"),
        ("mda", {"max_subsets": 0}, "max_subsets must be >= 1"),
    ],
)
def test_bad_parameter_values(rule, params, message):
    with pytest.raises(ValueError, match=message):
        get_rule(rule)(torch.randn(7, 3, dtype=T), f=1, **params)


def test_nna_requires_pivot():
    with pytest.raises(ValueError, match=r"nna: a pivot vector of shape \(3,\) is required"):
        aggregate(torch.randn(5, 3), "nna", f=1)


def test_pivot_on_other_dtype_is_accepted():
    x = torch.randn(5, 3, dtype=torch.float32)
    out = aggregate(x, "nna", f=1, pivot=x[0].double())
    assert out.dtype == torch.float32


# --------------------------------------------------------------------------- helpers


def naive_sq_distances(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def test_pairwise_sq_distances_match_definition():
    x = torch.randn(9, 50, dtype=T)
    torch.testing.assert_close(distances.pairwise_sq_distances(x), naive_sq_distances(x))


def test_pairwise_sq_distances_centring_beats_cancellation():
    # float32 rows sharing a large common part: |x|^2 ~ 1e10 while the distances are ~1e-2
    g = torch.Generator().manual_seed(0)
    base = torch.full((10_000,), 1000.0)
    x = (base + 1e-3 * torch.randn(8, 10_000, generator=g)).float()
    exact = naive_sq_distances(x)
    ours = distances.pairwise_sq_distances(x)
    raw = distances.distances_from_gram(*distances.gram(x))  # the uncentred Gram pass alone
    assert (ours - exact).abs().max() < 1e-3 * exact.max()
    assert (raw - exact).abs().max() > 10 * exact.max()  # proves the test can see cancellation


def test_pairwise_sq_distances_unmeasurable_rows_are_infinitely_far():
    x = torch.randn(6, 4, dtype=torch.float32)
    x[1, 2] = math.nan
    x[3, 0] = math.inf
    x[4] = 1e30  # finite, but |x|^2 overflows float32
    dist = distances.pairwise_sq_distances(x)
    bad = torch.tensor([False, True, False, True, True, False])
    assert torch.isinf(dist[bad]).all() and torch.isinf(dist[:, bad]).all()
    good = ~bad
    torch.testing.assert_close(dist[good][:, good], naive_sq_distances(x[good]), rtol=1e-5, atol=1e-5)


def test_sq_distances_to_is_direct_and_exact():
    g = torch.Generator().manual_seed(1)
    x = (1000.0 + 1e-3 * torch.randn(5, 20_000, generator=g)).float()
    p = x[2].clone()
    exact = ((x.double() - p.double()) ** 2).sum(1)
    torch.testing.assert_close(distances.sq_distances_to(x, p), exact, rtol=1e-4, atol=0)


def test_row_norms_survive_overflow():
    x = torch.full((2, 1000), 1e30, dtype=torch.float32)
    x[1, 0] = math.nan
    norms = distances.row_norms(x)
    assert math.isclose(float(norms[0]), 1e30 * math.sqrt(1000), rel_tol=1e-5)
    assert math.isnan(float(norms[1]))


def test_weighted_rows_never_reads_zero_weight_rows():
    x = t([[1.0, 2.0], [math.nan, math.inf], [3.0, 4.0]])
    close(distances.weighted_rows(x, t([0.5, 0.0, 0.5])), [2.0, 3.0])
    close(distances.weighted_rows(x, t([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])), [[1.0, 2.0], [6.0, 8.0]])


@pytest.mark.parametrize("n", range(1, 13))
def test_batcher_network_sorts_every_binary_input(n):
    # 0-1 principle: a comparator network sorts every input iff it sorts every 0/1 input
    net = rules_mod._batcher(n)
    for bits in itertools.product((0, 1), repeat=n):
        v = list(bits)
        for a, b in net:
            if v[a] > v[b]:
                v[a], v[b] = v[b], v[a]
        assert v == sorted(v)


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13, 32])
def test_pruned_network_keeps_group_contents(n):
    groups = rules_mod._median_groups(n)
    net = rules_mod._network(n, groups)
    assert len(net) <= len(rules_mod._batcher(n))
    g = torch.Generator().manual_seed(n)
    for _ in range(50):
        v = torch.randn(n, generator=g).tolist()
        w = list(v)
        for a, b in net:
            if w[a] > w[b]:
                w[a], w[b] = w[b], w[a]
        s = sorted(v)
        for label in set(groups):
            idx = [j for j in range(n) if groups[j] == label]
            assert sorted(w[j] for j in idx) == [s[j] for j in idx]


def test_chunked_paths_match_single_chunk(monkeypatch):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 2500, generator=g, dtype=T)
    x[2, 100] = math.nan
    pivot = x[0].clone()
    whole = {r: call(r, x, f=2, pivot=pivot) for r in ALL_RULES}
    monkeypatch.setattr(distances, "CHUNK_BYTES", 1)
    monkeypatch.setattr(distances, "MIN_CHUNK", 300)  # 9 chunks, the last one partial
    for r in ALL_RULES:
        torch.testing.assert_close(call(r, x, f=2, pivot=pivot), whole[r], rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("n, f", [(1, 1), (5, 1), (6, 3), (7, 2), (4, 4)])
def test_mda_subsets_are_itertools_combinations_in_order(n, f):
    marks = rules_mod._subsets_removing(n, f, torch.device("cpu"))
    got = [tuple(torch.nonzero(marks[:, s]).flatten().tolist()) for s in range(marks.shape[1])]
    assert got == list(itertools.combinations(range(n), f))


def test_weighted_rows_with_bad_mask_reads_every_other_row():
    x = t([[1.0, 2.0], [math.nan, math.inf], [3.0, 4.0], [5.0, 6.0]])
    bad = torch.tensor([False, True, False, False])
    close(distances.weighted_rows(x, t([0.5, 0.0, 0.5, 0.0]), bad), [2.0, 3.0])
    clean = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=T)
    close(distances.weighted_rows(clean, t([0.0, 1.0]), torch.zeros(2, dtype=torch.bool)), [3.0, 4.0])


@pytest.mark.parametrize("offset, passes", [(0.0, 1), (1000.0, 2)])
def test_robust_gram_centres_only_when_it_pays(monkeypatch, offset, passes):
    g = torch.Generator().manual_seed(5)
    x = (offset + torch.randn(9, 5000, generator=g)).float()
    calls = []
    real = distances.gram
    monkeypatch.setattr(distances, "gram", lambda *a: calls.append(len(a)) or real(*a))
    gmat, bad, center = distances.robust_gram(x)
    assert len(calls) == passes
    y = x.double() - x[center].double()
    torch.testing.assert_close(gmat, y @ y.T, rtol=1e-4, atol=1e-4 * float((y * y).sum(1).max()))
    assert not bad.any()
