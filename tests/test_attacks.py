"""Attacks on exchanged vectors: hand-checked values, purity, errors, optimised search."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from ostracon.aggregator import aggregate, attacks  # importing the package registers the real rules
from ostracon.aggregator.registry import ATTACKS, get_attack, get_rule

ALL = ["sign_flip", "alie", "foe", "mimic", "mimic_variant", "gaussian", "inf", "nan", "alie_optimized",
       "foe_optimized"]
OPTIMISED = ["alie_optimized", "foe_optimized"]

H = torch.tensor([[1.0, 2.0, 3.0], [3.0, -2.0, 5.0]])  # mean [2, 0, 4], population std [1, 2, 1]


def _mean_defense(v: torch.Tensor) -> torch.Tensor:
    return v.mean(dim=0)


def _call(name, honest, **kw):
    """Call an attack, giving the optimised ones a defense unless the test sets one."""
    if name in OPTIMISED:
        kw.setdefault("defense", _mean_defense)
    return get_attack(name)(honest, **kw)


def _honest(h=8, d=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    # Shared offset + per-worker noise: a realistic cloud of honest vectors.
    return (torch.randn(d, generator=g) + 0.5 * torch.randn(h, d, generator=g)).to(dtype)


def _distance(honest, byz, defense, num_byzantine):
    """The objective, recomputed here independently of attacks.attack_distance."""
    vectors = torch.cat([honest, byz.unsqueeze(0).repeat(num_byzantine, 1)])
    return float(torch.linalg.vector_norm(defense(vectors).double() - honest.double().mean(dim=0)))


def test_every_attack_is_registered():
    assert set(ALL) <= set(ATTACKS)


# --------------------------------------------------------------------------- hand-checked values


def test_sign_flip_is_minus_the_mean():
    assert torch.equal(_call("sign_flip", H), torch.tensor([-2.0, 0.0, -4.0]))


def test_alie_with_explicit_tau_uses_population_std():
    # mean [2, 0, 4] - 1.5 * [1, 2, 1] (population std: the two rows differ by 2, 4, 2)
    assert torch.allclose(_call("alie", H, tau=1.5), torch.tensor([0.5, -3.0, 2.5]))
    assert torch.allclose(_call("alie", H, tau=-1.0), torch.tensor([3.0, 2.0, 5.0]))


@pytest.mark.parametrize("n, f", [(10, 2), (25, 5), (50, 12), (7, 1)])
def test_alie_z_max_matches_the_paper(n, f):
    s = n // 2 + 1 - f  # supporters needed, Baruch et al. 2019
    expected = NormalDist().inv_cdf((n - s) / n)
    assert attacks.alie_z_max(n, f) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_alie_default_tau_is_z_max_of_h_plus_num_byzantine():
    honest = _honest(h=7, d=4)
    z = NormalDist().inv_cdf((10 - (10 // 2 + 1 - 2)) / 10)  # n = 7 + 3, f = 2
    expected = honest.mean(0) - z * honest.std(0, correction=0)
    out = _call("alie", honest, f=2, num_byzantine=3)
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n, f", [(4, 3), (2, 0), (1, 0)])
def test_alie_z_max_refuses_degenerate_counts(n, f):
    with pytest.raises(ValueError, match="z_max"):
        attacks.alie_z_max(n, f)


def test_foe_is_minus_eps_times_the_mean():
    assert torch.allclose(_call("foe", H), torch.tensor([-0.2, 0.0, -0.4]))  # default eps = 0.1
    assert torch.allclose(_call("foe", H, eps=100.0), torch.tensor([-200.0, 0.0, -400.0]))
    assert torch.equal(_call("foe", H, eps=0.0), torch.zeros(3))


def test_mimic_copies_the_target_without_aliasing():
    honest = H.clone()
    out = _call("mimic", honest, target=1)
    assert torch.equal(out, torch.tensor([3.0, -2.0, 5.0]))
    assert torch.equal(_call("mimic", honest), honest[0])  # default target 0
    out.add_(1.0)  # writing to the result must not reach the honest rows
    assert torch.equal(honest, H)


def test_gaussian_matches_a_seeded_draw():
    g = torch.Generator().manual_seed(7)
    out = _call("gaussian", torch.zeros(4, 5), mu=3.0, sigma=2.0, generator=g)
    expected = torch.randn(5, generator=torch.Generator().manual_seed(7)) * 2.0 + 3.0
    assert torch.allclose(out, expected)


def test_gaussian_is_deterministic_per_seed_and_differs_across_seeds():
    honest = torch.zeros(3, 64)
    a = _call("gaussian", honest, generator=torch.Generator().manual_seed(1))
    b = _call("gaussian", honest, generator=torch.Generator().manual_seed(1))
    c = _call("gaussian", honest, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_gaussian_defaults_are_mean_zero_sigma_200():
    out = _call("gaussian", torch.zeros(1, 40_000), generator=torch.Generator().manual_seed(0))
    assert abs(out.mean().item()) < 200 * 5 / math.sqrt(40_000)  # 5 standard errors
    assert out.std().item() == pytest.approx(200.0, rel=0.03)
    assert torch.equal(_call("gaussian", torch.zeros(2, 3), mu=-1.5, sigma=0.0), torch.full((3,), -1.5))


def test_inf_and_nan():
    assert torch.equal(_call("inf", H), torch.full((3,), math.inf))
    assert _call("nan", H).isnan().all()


# --------------------------------------------------------------------------- purity, dtype, device


@pytest.mark.parametrize("name", ALL)
def test_attacks_never_modify_honest(name):
    honest = _honest(h=5, d=4, dtype=torch.float32)
    before = honest.clone()
    _call(name, honest, f=1, num_byzantine=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(honest, before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("name", ALL)
def test_attacks_keep_dtype_device_and_shape(name, dtype):
    honest = _honest(h=5, d=4, dtype=dtype)
    out = _call(name, honest, f=1, num_byzantine=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4,) and out.dtype == dtype and out.device == honest.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALL)
def test_attacks_stay_on_cuda(name):
    honest = _honest(h=5, d=4, dtype=torch.float32).cuda()
    out = _call(name, honest, f=1, num_byzantine=2, generator=torch.Generator().manual_seed(0))
    assert out.device == honest.device and out.dtype == honest.dtype


# --------------------------------------------------------------------------- optimised attacks

F, NB = 3, 3
DEFENSES = {
    "cwtm": lambda honest: (lambda v: get_rule("cwtm")(v, f=F)),
    "krum": lambda honest: (lambda v: get_rule("krum")(v, f=F)),
    "nna": lambda honest: (lambda v: get_rule("nna")(v, f=F, pivot=honest.mean(0))),
    "mean": lambda honest: (lambda v: get_rule("mean")(v, f=F)),
    "nnm+cwtm": lambda honest: (lambda v: aggregate(v, "cwtm", f=F, pre=["nnm"])),
}
# The default grids, written out here independently of the module.
ALIE_GRID = [10.0 * i / 20 for i in range(21)]
FOE_GRID = [0.01 * 10 ** (i / 4) for i in range(17)]


@pytest.mark.parametrize("rule", sorted(DEFENSES))
def test_alie_optimized_beats_default_and_every_grid_point(rule):
    honest = _honest(h=8, d=6, seed=3)
    defense = DEFENSES[rule](honest)
    out = _call("alie_optimized", honest, f=F, num_byzantine=NB, defense=defense)
    got = _distance(honest, out, defense, NB)
    default = _distance(honest, _call("alie", honest, f=F, num_byzantine=NB), defense, NB)
    assert got >= default * (1 - 1e-9)
    for tau in ALIE_GRID:
        byz = honest.mean(0) - tau * honest.std(0, correction=0)
        assert got >= _distance(honest, byz, defense, NB) * (1 - 1e-9), tau


@pytest.mark.parametrize("rule", sorted(DEFENSES))
def test_foe_optimized_beats_default_and_every_grid_point(rule):
    honest = _honest(h=8, d=6, seed=4)
    defense = DEFENSES[rule](honest)
    out = _call("foe_optimized", honest, f=F, num_byzantine=NB, defense=defense)
    got = _distance(honest, out, defense, NB)
    default = _distance(honest, _call("foe", honest), defense, NB)
    assert got >= default * (1 - 1e-9)
    for eps in FOE_GRID:
        assert got >= _distance(honest, -eps * honest.mean(0), defense, NB) * (1 - 1e-9), eps


def test_optimised_output_is_the_attack_at_the_reported_factor():
    honest = _honest(seed=5)
    defense = DEFENSES["cwtm"](honest)
    tau, dist = attacks.best_factor("alie", honest, f=F, num_byzantine=NB, defense=defense)
    out = _call("alie_optimized", honest, f=F, num_byzantine=NB, defense=defense)
    assert torch.equal(out, _call("alie", honest, tau=tau))
    assert dist == pytest.approx(_distance(honest, out, defense, NB), rel=1e-12)
    eps, _ = attacks.best_factor("foe", honest, f=F, num_byzantine=NB, defense=defense)
    assert torch.equal(_call("foe_optimized", honest, f=F, num_byzantine=NB, defense=defense),
                       _call("foe", honest, eps=eps))


def test_optimised_search_finds_the_edge_against_the_mean():
    # Against the plain mean the distance grows linearly with the factor: the best is the grid's top.
    honest = _honest(seed=6)
    defense = DEFENSES["mean"](honest)
    assert torch.equal(_call("alie_optimized", honest, f=F, num_byzantine=NB, defense=defense),
                       _call("alie", honest, tau=10.0))
    assert torch.equal(_call("foe_optimized", honest, num_byzantine=NB, defense=defense, high=50.0),
                       _call("foe", honest, eps=50.0))


def test_optimised_search_uses_the_real_defense():
    # Against cwtm the edge of the grid is trimmed away, so the optimum must lie inside it.
    honest = _honest(seed=7)
    tau, _ = attacks.best_factor("alie", honest, f=F, num_byzantine=NB, defense=DEFENSES["cwtm"](honest))
    assert 0.0 < tau < 10.0


@pytest.mark.parametrize("name", OPTIMISED)
def test_optimised_explicit_factors_are_all_beaten(name):
    honest = _honest(seed=8)
    defense = DEFENSES["krum"](honest)
    factors = [0.0, 0.3, 1.0, 2.5, 7.0]
    out = _call(name, honest, f=F, num_byzantine=NB, defense=defense, factors=factors)
    got = _distance(honest, out, defense, NB)
    plain = name.removesuffix("_optimized")
    key = "tau" if plain == "alie" else "eps"
    for x in factors:
        assert got >= _distance(honest, _call(plain, honest, **{key: x}), defense, NB) * (1 - 1e-9), x


@pytest.mark.parametrize("name", OPTIMISED)
def test_optimised_always_considers_the_default_factor(name):
    # Factor 0 alone is a weak attack; the default factor (z_max, eps=0.1) must still be tried.
    honest = _honest(seed=10)
    defense = DEFENSES["krum" if name == "alie_optimized" else "mean"](honest)
    out = _call(name, honest, f=F, num_byzantine=NB, defense=defense, factors=[0.0], refine=0)
    plain = name.removesuffix("_optimized")
    default = _distance(honest, _call(plain, honest, f=F, num_byzantine=NB), defense, NB)
    key = "tau" if plain == "alie" else "eps"
    assert default > _distance(honest, _call(plain, honest, **{key: 0.0}), defense, NB)  # the case bites
    assert _distance(honest, out, defense, NB) >= default * (1 - 1e-9)


@pytest.mark.parametrize("name", OPTIMISED)
def test_optimised_is_deterministic_and_cost_is_bounded(name):
    honest = _honest(seed=9)
    rule = DEFENSES["nna"](honest)
    calls = []

    def defense(v):
        calls.append(1)
        return rule(v)

    a = _call(name, honest, f=F, num_byzantine=NB, defense=defense)
    first = len(calls)
    b = _call(name, honest, f=F, num_byzantine=NB, defense=defense)
    assert torch.equal(a, b)
    assert 10 <= first <= 40


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", OPTIMISED)
def test_optimised_attacks_require_a_defense(name):
    with pytest.raises(ValueError, match="defense"):
        get_attack(name)(H, f=0, num_byzantine=1)


@pytest.mark.parametrize("name", ALL)
def test_unknown_parameters_are_named(name):
    with pytest.raises(ValueError, match="bogus_knob"):
        _call(name, H, bogus_knob=1)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    "honest",
    [torch.zeros(0, 3), torch.zeros(3), torch.zeros(2, 0), torch.ones(2, 3, dtype=torch.int64), [[1.0, 2.0]]],
    ids=["empty", "1-D", "no-columns", "integer", "list"],
)
def test_bad_honest_is_refused(name, honest):
    with pytest.raises(ValueError):
        _call(name, honest)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kw", [{"f": -1}, {"f": 1.5}, {"num_byzantine": 0}, {"num_byzantine": True}])
def test_bad_counts_are_refused(name, kw):
    with pytest.raises(ValueError):
        _call(name, H, **kw)


@pytest.mark.parametrize(
    "name, kw",
    [
        ("alie", {"tau": math.inf}),
        ("alie", {"tau": "1"}),
        ("foe", {"eps": -0.1}),
        ("foe", {"eps": math.nan}),
        ("mimic", {"target": 2}),
        ("mimic", {"target": -1}),
        ("gaussian", {"sigma": -1.0}),
        ("gaussian", {"sigma": math.inf}),
        ("gaussian", {"mu": math.nan}),
        ("gaussian", {"generator": 3}),
        ("alie_optimized", {"factors": []}),
        ("alie_optimized", {"factors": [1.0, math.nan]}),
        ("alie_optimized", {"factors": [1.0], "low": 0.0}),
        ("alie_optimized", {"low": 5.0, "high": 1.0}),
        ("alie_optimized", {"steps": 0}),
        ("alie_optimized", {"refine": -1}),
        ("foe_optimized", {"factors": [-1.0]}),
        ("foe_optimized", {"low": 0.0}),
        ("foe_optimized", {"defense": "cwtm"}),
    ],
)
def test_bad_parameter_values_are_refused(name, kw):
    with pytest.raises(ValueError):
        _call(name, H, **kw)


def test_defense_with_wrong_output_shape_is_refused():
    with pytest.raises(ValueError, match="shape"):
        _call("alie_optimized", H, defense=lambda v: v)


# --------------------------------------------------------------------------- ALIE's search direction


@pytest.mark.parametrize("rule", sorted(DEFENSES))
def test_alie_optimized_sign_picks_the_side_and_both_is_never_worse(rule):
    honest = _honest(h=8, d=6, seed=11)
    defense = DEFENSES[rule](honest)
    mu, sd = honest.mean(0), honest.std(0, correction=0)
    down, up, both = (_call("alie_optimized", honest, f=F, num_byzantine=NB, defense=defense, sign=s)
                      for s in (-1, 1, 0))
    assert torch.equal(down, _call("alie_optimized", honest, f=F, num_byzantine=NB, defense=defense))  # default
    # The side of the mean each search sends (tau = 0 is the mean itself, on both sides).
    assert bool(((down - mu) <= 1e-12).all()) and bool(((up - mu) >= -1e-12).all())
    best_one_side = max(_distance(honest, down, defense, NB), _distance(honest, up, defense, NB))
    assert _distance(honest, both, defense, NB) >= best_one_side * (1 - 1e-9)
    for tau in ALIE_GRID:  # +1 searches mean + tau std over the same grid
        assert _distance(honest, up, defense, NB) >= _distance(honest, mu + tau * sd, defense, NB) * (1 - 1e-9)


@pytest.mark.parametrize("sign", [2, -2, 0.5, True, "up", None])
def test_alie_optimized_rejects_a_bad_sign(sign):
    with pytest.raises(ValueError, match="sign"):
        _call("alie_optimized", H, sign=sign)
    with pytest.raises(ValueError, match="sign"):
        _call("foe_optimized", H, sign=1)


# --------------------------------------------------------------------------- mimic as in the bucketing paper


def test_mimic_direction_finds_the_top_eigenvector_and_the_farthest_worker():
    # Spread along e0 (+-3) dominates spread along e1 (+-1): the power iteration turns e0 + e1 into +-e0.
    honest = torch.tensor([[3.0, 1.0, 5.0], [-3.0, 1.0, 5.0], [0.0, -1.0, 5.0], [0.0, -1.0, 5.0]], dtype=torch.float64)
    z = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    for k in range(30):
        z = attacks.mimic_direction(honest, z, k)
    assert abs(float(z[0])) == pytest.approx(1.0, abs=1e-3) and abs(float(z[2])) < 1e-9
    target = attacks.mimic_target(honest, z)
    assert target == (0 if float(z[0]) > 0 else 1)  # the worker farthest along +z
    out = get_attack("mimic_variant")(honest, direction=z)
    assert torch.equal(out, honest[target]) and out.data_ptr() != honest[target].data_ptr()
    assert torch.equal(get_attack("mimic_variant")(honest, direction=z, target=2), honest[2])


def test_mimic_direction_is_pure_and_keeps_z_on_zero_spread():
    honest = _honest(h=5, d=4, seed=12)
    before, z = honest.clone(), torch.ones(4, dtype=torch.float64) / 2
    z_before = z.clone()
    new = attacks.mimic_direction(honest, z, 3)
    assert torch.equal(honest, before) and torch.equal(z, z_before)
    assert float(torch.linalg.vector_norm(new)) == pytest.approx(1.0)
    same = honest[:1].repeat(3, 1)
    assert torch.equal(attacks.mimic_direction(same, z, 0), z)


@pytest.mark.parametrize("params", [{"target": 5}, {"target": -1}, {"direction": torch.ones(2)}, {"warmup": -1}])
def test_mimic_variant_rejects_bad_params(params):
    with pytest.raises(ValueError, match="mimic_variant"):
        get_attack("mimic_variant")(H, **params)
