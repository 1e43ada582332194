"""Properties every rule and pre-aggregation must have, checked with hypothesis.

* the input is never modified (bit-for-bit, NaN rows included);
* the result has the input's dtype and device (float32, float64, bfloat16, float16);
* invariance to the row order (equivariance for ``nnm``/``arc``/``clipping``);
* agreement with a direct, slow implementation of each definition;
* the robustness contract: up to ``f`` rows replaced by NaN / +-inf / +-1e30 /
  mixtures of them, every rule but ``mean`` returns a finite vector close to
  the honest rows. With ``H`` the honest rows, ``mu`` their mean,
  ``R = max_{h in H} |h - mu|`` and ``[lo, hi]`` their coordinate-wise range,
  the bound checked is:

  - krum, multikrum, nna, mda: the result is a mean of honest rows (a bad row
    is infinitely far, or at least farther than every honest one, so it is
    never selected): ``|out - mu| <= R``; bounded_nna: a point between its
    (honest) pivot and NNA's result, so the same ball;
  - cwmed, cwtm: every kept value of a coordinate lies between honest values
    (at most ``f`` bad values per coordinate and ``f`` trimmed on each side):
    ``lo <= out <= hi`` coordinate-wise;
  - meamed: the median ``m`` lies in ``[lo, hi]`` and the ``n - f`` kept values
    are no farther from it than the farthest honest value (honest values alone
    are ``n - f`` candidates), so ``|out - m| <= hi - lo``, i.e.
    ``2 lo - hi <= out <= 2 hi - lo`` coordinate-wise (a bad row may hold
    ordinary values in its other coordinates, and those can be kept);
  - geometric_median: the classical breakdown bound for ``a`` bad rows out of
    ``n`` (Minsker 2015, Lemma 2.1), ``|out - mu| <= 2 (n - a) / (n - 2a) R``,
    plus ``nu`` for the smoothing;
  - centered_clipping: ``v0`` (the median) is in the box ``[lo, hi]``, the
    honest terms keep ``v`` a convex combination of ``v0`` and honest rows, and
    each bad row moves it by at most ``tau / n`` with ``tau`` (the median radius)
    ``<= |hi - lo|``: ``dist(out, box) <= (a / n) |hi - lo|``.

  Each bound gets a rounding slack of ``1e-9`` (float64) or ``1e-4`` (float32)
  times the data's scale.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ostracon.aggregator import PRE_AGGREGATIONS, RULES, get_pre_aggregation, get_rule

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = st.integers(0, 2**31)
ROBUST = sorted(set(RULES) - {"mean"})
ALL_RULES = sorted(RULES)
ORDER_FREE_PRE = ["nnm", "arc", "clipping"]  # row i of the output belongs to row i of the input


def max_f(rule: str, n: int) -> int:
    if rule == "mean":
        return n - 1
    if rule in ("krum", "multikrum"):
        return (n - 3) // 2  # n > 2f + 2
    return (n - 1) // 2  # n > 2f


PIVOTED = ("nna", "bounded_nna")  # rules that need a pivot


def anchor_for(pivot: torch.Tensor) -> torch.Tensor:
    """bounded_nna's anchor (the model before the local step): a step of norm ~0.3 |pivot| away, so the
    bound binds in some draws and not in others."""
    return pivot + 0.1 * torch.linspace(-1.0, 1.0, pivot.shape[0], dtype=pivot.dtype) * (1.0 + pivot.abs())


def run_rule(rule: str, x: torch.Tensor, f: int, pivot: torch.Tensor | None = None) -> torch.Tensor:
    if rule in PIVOTED and pivot is None:
        pivot = x[0]
    if rule == "bounded_nna":
        return get_rule(rule)(x, f=f, pivot=pivot, anchor=anchor_for(pivot))
    return get_rule(rule)(x, f=f, pivot=pivot)


def bits(x: torch.Tensor) -> torch.Tensor:
    """The raw bits of ``x`` (NaN == NaN), for exact comparisons."""
    return x.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[x.element_size()]).clone()


def randn(seed: int, n: int, d: int, dtype=torch.float64) -> torch.Tensor:
    """Rows in general position (no exact ties in distances), unlike small hypothesis floats."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


BAD_VALUES = [math.nan, math.inf, -math.inf, 1e30, -1e30]


@st.composite
def bad_row(draw, d: int):
    kind = draw(st.sampled_from(["nan", "inf", "-inf", "huge", "-huge", "mixed", "one-nan"]))
    if kind == "mixed":
        return draw(st.lists(st.sampled_from(BAD_VALUES), min_size=d, max_size=d))
    if kind == "one-nan":  # a single bad coordinate among ordinary ones
        row = draw(st.lists(st.floats(-10, 10, allow_subnormal=False), min_size=d, max_size=d))
        row[draw(st.integers(0, d - 1))] = math.nan
        return row
    value = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": 1e30, "-huge": -1e30}[kind]
    return [value] * d


@st.composite
def attacked(draw, rule: str):
    """``(x, honest, f, a, pivot)``: ``a <= f`` bad rows mixed into honest ones at random positions."""
    n = draw(st.integers(3, 9))
    f = draw(st.integers(0, max_f(rule, n)))
    a = draw(st.integers(0, f))
    d = draw(st.integers(1, 5))
    row = st.lists(st.floats(-10, 10, allow_subnormal=False), min_size=d, max_size=d)
    honest = draw(st.lists(row, min_size=n - a, max_size=n - a))
    bad = [draw(bad_row(d)) for _ in range(a)]
    order = draw(st.permutations(range(n)))
    rows = honest + bad
    return [rows[i] for i in order], honest, f, a


# --------------------------------------------------------------------------- robustness contract


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rule", ROBUST)
@SETTINGS
@given(data=st.data())
def test_robust_rules_stay_finite_and_near_the_honest_rows(rule, dtype, data):
    rows, honest, f, a = data.draw(attacked(rule))
    x = torch.tensor(rows, dtype=dtype)
    h = torch.tensor(honest, dtype=torch.float64)
    pivot = torch.tensor(honest[0], dtype=dtype)  # MoNNA's pivot: the node's own (honest) vector
    out = run_rule(rule, x, f, pivot).double()
    assert torch.isfinite(out).all(), (rule, out)

    n = x.shape[0]
    mu = h.mean(0)
    radius = float((h - mu).norm(dim=1).max())
    lo, hi = h.min(0).values, h.max(0).values
    slack = (1e-9 if dtype == torch.float64 else 1e-4) * (1.0 + float(h.abs().max()))
    if rule in ("krum", "multikrum", "nna", "mda", "bounded_nna"):
        # bounded_nna: a point between the (honest) pivot and NNA's result, both in the ball: so is it
        assert float((out - mu).norm()) <= radius + slack
    elif rule in ("cwmed", "cwtm"):
        assert bool(((out >= lo - slack) & (out <= hi + slack)).all()), (out, lo, hi)
    elif rule == "meamed":
        assert bool(((out >= 2 * lo - hi - slack) & (out <= 2 * hi - lo + slack)).all()), (out, lo, hi)
    elif rule == "geometric_median":
        bound = 2.0 * (n - a) / (n - 2 * a) * radius + 0.1  # nu = 0.1
        assert float((out - mu).norm()) <= bound + slack
    elif rule == "centered_clipping":
        outside = float((out - torch.minimum(torch.maximum(out, lo), hi)).norm())
        assert outside <= a / n * float((hi - lo).norm()) + slack
    else:  # pragma: no cover - a new rule needs its bound here
        pytest.fail(f"no bound stated for {rule}")


@pytest.mark.parametrize("name", sorted(PRE_AGGREGATIONS))
@SETTINGS
@given(data=st.data())
def test_pre_aggregation_then_cwtm_stays_finite_and_in_the_honest_box(name, data):
    rows, honest, f, a = data.draw(attacked("cwtm"))
    x = torch.tensor(rows, dtype=torch.float64)
    params = {"bucketing": {"bucket_size": 1, "generator": torch.Generator().manual_seed(0)}}.get(name, {})
    y = get_pre_aggregation(name)(x, f=f, **params)
    out = get_rule("cwtm")(y, f=f)
    assert torch.isfinite(out).all()
    h = torch.tensor(honest, dtype=torch.float64)
    # every pre-aggregation here maps honest rows into the honest box (means of honest rows, or shrunk
    # towards 0 -- so the box is widened to contain 0 for the clipping ones)
    lo, hi = h.min(0).values, h.max(0).values
    if name in ("clipping", "arc"):
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    assert bool(((out >= lo - 1e-9) & (out <= hi + 1e-9)).all())


# --------------------------------------------------------------------------- purity


def with_bad_rows(seed: int, n: int, d: int, dtype) -> torch.Tensor:
    x = randn(seed, n, d, dtype)
    x[0, 0] = math.nan
    x[-1] = math.inf
    return x


@pytest.mark.parametrize("rule", ALL_RULES)
@SETTINGS
@given(seed=SEEDS, n=st.integers(5, 9), d=st.integers(1, 40))
def test_rules_never_modify_their_input(rule, seed, n, d):
    x = with_bad_rows(seed, n, d, torch.float32)
    pivot = x[1].clone()
    before, pivot_before = bits(x), bits(pivot)
    run_rule(rule, x, f=min(2, max_f(rule, n)), pivot=pivot)
    assert torch.equal(bits(x), before) and torch.equal(bits(pivot), pivot_before)


@pytest.mark.parametrize("name", sorted(PRE_AGGREGATIONS))
@SETTINGS
@given(seed=SEEDS, n=st.integers(5, 9), d=st.integers(1, 40))
def test_pre_aggregations_never_modify_their_input(name, seed, n, d):
    x = with_bad_rows(seed, n, d, torch.float32)
    before = bits(x)
    out = get_pre_aggregation(name)(x, f=2)
    assert torch.equal(bits(x), before)
    assert out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rule", ALL_RULES)
def test_rules_keep_dtype_and_device_and_agree_with_float64(rule, dtype):
    x = randn(11, 7, 300, dtype)
    out = run_rule(rule, x, f=2)
    assert out.dtype == dtype and out.device == x.device and out.shape == (300,)
    ref = run_rule(rule, x.double(), f=2)  # same (rounded) input, computed in float64
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(PRE_AGGREGATIONS))
def test_pre_aggregations_keep_dtype_and_device(name, dtype):
    x = randn(12, 7, 300, dtype)
    out = get_pre_aggregation(name)(x, f=2)
    assert out.dtype == dtype and out.device == x.device and out.shape[1] == 300
    if name != "bucketing":
        ref = get_pre_aggregation(name)(x.double(), f=2)
        tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * 4)


# --------------------------------------------------------------------------- order


@pytest.mark.parametrize("rule", ALL_RULES)
@SETTINGS
@given(seed=SEEDS, n=st.integers(3, 9), d=st.integers(1, 30), perm_seed=SEEDS, data=st.data())
def test_rules_ignore_row_order(rule, seed, n, d, perm_seed, data):
    f = data.draw(st.integers(0, max_f(rule, n)))
    x = randn(seed, n, d)
    pivot = randn(seed + 1, 1, d)[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(perm_seed))
    a, b = run_rule(rule, x, f, pivot), run_rule(rule, x[perm], f, pivot)
    if rule == "cwmed" or (rule in ("cwtm", "meamed") and f > 0):  # f = 0 is the plain mean
        assert torch.equal(a, b)  # values are summed in sorted order: bit-identical
    else:  # the geometric median stops at a relative step of 1e-6: its start may move it that much
        tol = 1e-5 if rule == "geometric_median" else 1e-9
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ORDER_FREE_PRE)
@SETTINGS
@given(seed=SEEDS, n=st.integers(2, 9), d=st.integers(1, 30), perm_seed=SEEDS, data=st.data())
def test_pre_aggregations_follow_row_order(name, seed, n, d, perm_seed, data):
    f = data.draw(st.integers(0, n - 1))
    x = randn(seed, n, d)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(perm_seed))
    fn = get_pre_aggregation(name)
    torch.testing.assert_close(fn(x[perm], f=f), fn(x, f=f)[perm], rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- definitions, the slow way


def naive_sq(x: torch.Tensor) -> torch.Tensor:
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def naive_krum_order(x: torch.Tensor, f: int) -> list[int]:
    """Rows by Krum score; ties (mutual nearest neighbours share a score) by the sorted distance profile."""
    n = x.shape[0]
    dist = naive_sq(x)
    score = [float(torch.sort(torch.cat([dist[i, :i], dist[i, i + 1 :]])).values[: n - f - 2].sum()) for i in range(n)]
    return sorted(range(n), key=lambda i: (score[i], torch.sort(dist[i]).values.tolist(), i))


def krum_candidates(rule: str, x: torch.Tensor, f: int) -> list[torch.Tensor]:
    """Every output Krum / Multi-Krum may give when scores tie up to rounding: the rows (or means of n - f rows)
    whose scores are the smallest ones within a relative 1e-9."""
    n = x.shape[0]
    dist = naive_sq(x)
    score = [float(torch.sort(torch.cat([dist[i, :i], dist[i, i + 1 :]])).values[: n - f - 2].sum()) for i in range(n)]
    k = 1 if rule == "krum" else n - f
    cutoff = sorted(score)[k - 1]
    tol = 1e-9 * max(1.0, abs(cutoff))
    sure = [i for i in range(n) if score[i] < cutoff - tol]
    tied = [i for i in range(n) if abs(score[i] - cutoff) <= tol]
    return [x[sure + list(extra)].mean(0) for extra in itertools.combinations(tied, k - len(sure))]


def naive(rule: str, x: torch.Tensor, f: int, pivot: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    if rule == "mean":
        return x.mean(0)
    if rule == "cwmed":
        return torch.quantile(x, 0.5, dim=0)
    if rule == "cwtm":
        return torch.sort(x, dim=0).values[f : n - f].mean(0)
    if rule == "meamed":
        m = torch.quantile(x, 0.5, dim=0)
        keep = torch.topk((x - m).abs(), n - f, dim=0, largest=False).indices
        return torch.gather(x, 0, keep).mean(0)
    if rule == "krum":
        return x[naive_krum_order(x, f)[0]]
    if rule == "multikrum":
        return x[naive_krum_order(x, f)[: n - f]].mean(0)
    if rule == "nna":
        return x[torch.argsort(((x - pivot) ** 2).sum(1))[: n - f]].mean(0)
    if rule == "bounded_nna":
        move = naive("nna", x, f, pivot) - pivot
        radius = float((pivot - anchor_for(pivot)).norm())
        return pivot + move * min(1.0, radius / max(float(move.norm()), 1e-300))
    if rule == "mda":
        dist = naive_sq(x)
        best = min(
            itertools.combinations(range(n), n - f),
            key=lambda s: (max(float(dist[i, j]) for i in s for j in s), sum(float(dist[i, j]) for i in s for j in s)),
        )
        return x[list(best)].mean(0)
    if rule == "geometric_median":  # plain smoothed Weiszfeld from the mean, many iterations
        z = x.mean(0)
        for _ in range(1000):
            w = 1.0 / (x - z).norm(dim=1).clamp_min(0.1)
            z = (w[:, None] * x).sum(0) / w.sum()
        return z
    if rule == "centered_clipping":
        v = pivot  # the start when a pivot is given
        tau = float((x - v).norm(dim=1).median())  # lower median, as the rule's (n-1)//2 order statistic
        diff = x - v
        norms = diff.norm(dim=1)
        scale = torch.where(norms > 0, (tau / norms).clamp(max=1.0), torch.ones_like(norms))
        return v + (diff * scale[:, None]).mean(0)
    raise AssertionError(rule)


@pytest.mark.parametrize("rule", ALL_RULES)
@SETTINGS
@given(seed=SEEDS, n=st.integers(3, 8), d=st.integers(1, 12), data=st.data())
def test_rules_match_their_definition(rule, seed, n, d, data):
    f = data.draw(st.integers(0, max_f(rule, n)))
    x = randn(seed, n, d)
    pivot = x[data.draw(st.integers(0, n - 1))]
    ours, ref = run_rule(rule, x, f, pivot), naive(rule, x, f, pivot)
    if rule in ("krum", "multikrum"):  # exact score ties (mutual nearest neighbours) may break either way
        assert any(torch.allclose(ours, cand, rtol=1e-10, atol=1e-10) for cand in krum_candidates(rule, x, f))
    elif rule == "geometric_median":  # the minimiser need not be unique (e.g. even n in 1-D): compare objectives
        # Weiszfeld stops after 200 steps or a small step: within 1e-6 of the optimum's objective
        assert smoothed_objective(x, ours) <= smoothed_objective(x, ref) * (1 + 1e-6)
    else:
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def smoothed_objective(x: torch.Tensor, z: torch.Tensor, nu: float = 0.1) -> float:
    """``sum_i h(|z - x_i|)``, ``h(r) = r`` for ``r >= nu`` else ``r^2 / (2 nu) + nu / 2``: what Weiszfeld with
    weights ``1 / max(nu, r)`` minimises (each step minimises a quadratic majoriser of it)."""
    r = (x - z).norm(dim=1)
    return float(torch.where(r >= nu, r, r * r / (2 * nu) + nu / 2).sum())


def naive_pre(name: str, x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    if name == "nnm":
        dist = naive_sq(x)
        return torch.stack([x[torch.argsort(dist[i])[: n - f]].mean(0) for i in range(n)])
    if name == "clipping":
        norms = x.norm(dim=1, keepdim=True)
        return torch.where(norms > 2.0, x * 2.0 / norms, x)
    if name == "arc":
        k = int(2 * (f / n) * (n - f) + 1e-12)
        norms = x.norm(dim=1)
        if k == 0:
            return x.clone()
        order = torch.argsort(norms, descending=True)
        t = norms[order[k]]
        out = x.clone()
        for i in order[:k].tolist():
            out[i] = x[i] * t / norms[i]
        return out
    raise AssertionError(name)


@pytest.mark.parametrize("name", ORDER_FREE_PRE)
@SETTINGS
@given(seed=SEEDS, n=st.integers(2, 9), d=st.integers(1, 12), data=st.data())
def test_pre_aggregations_match_their_definition(name, seed, n, d, data):
    f = data.draw(st.integers(0, n - 1))
    x = randn(seed, n, d)
    torch.testing.assert_close(get_pre_aggregation(name)(x, f=f), naive_pre(name, x, f), rtol=1e-10, atol=1e-10)


@SETTINGS
@given(seed=SEEDS, n=st.integers(1, 12), d=st.integers(1, 12), s=st.integers(1, 5))
def test_bucketing_matches_its_definition(seed, n, d, s):
    x = randn(seed, n, d)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out = get_pre_aggregation("bucketing")(x, bucket_size=s, generator=torch.Generator().manual_seed(seed))
    expected = torch.stack([x[perm[i : i + s]].mean(0) for i in range(0, n, s)])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", ALL_RULES)
def test_rules_accept_non_contiguous_input(rule):
    x = randn(5, 7, 40)
    strided = x.T.contiguous().T  # same values, column-major strides
    assert not strided.is_contiguous()
    torch.testing.assert_close(run_rule(rule, strided, f=2), run_rule(rule, x, f=2), rtol=1e-12, atol=1e-12)
