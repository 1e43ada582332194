"""The approximate-unlearning evaluation suite on real data: scikit-learn's digits and small MLPs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ostracon.cluster.unlearning import evaluation as ev
from ostracon.nodes.data import load_dataset
from ostracon.nodes.models import flat_parameters
from ostracon.nodes.worker import WorkerSpec, initial_parameters, spec_model

SPEC = WorkerSpec(index=0, group=0, seed=0, model="mlp", input_shape=(64,), num_classes=10)
FRACTIONS = ("UA", "RA", "TA", "MIA", "forget_confidence", "test_confidence")


def _train(features: np.ndarray, labels: np.ndarray, steps: int = 300) -> np.ndarray:
    """Full-batch SGD with momentum from the spec's initial draw: a small training set is fitted exactly."""
    torch.manual_seed(0)
    model = spec_model(SPEC)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return flat_parameters(model).detach().numpy().copy()


@pytest.fixture(scope="module")
def setup():
    """Digits split into a small training set A (150 rows, overfitted), 300 held-out rows H, and a test set T.

    ``forget`` = the first 50 rows of A. ``full`` is trained on all of A (nothing unlearned), ``retrain``
    on A minus the forget set (exact unlearning)."""
    data = load_dataset("digits")
    x, y = data.features, data.labels
    perm = np.random.default_rng(0).permutation(len(y))
    a, h, t = perm[:150], perm[150:450], perm[450:]
    split = lambda rows: (x[rows], y[rows])  # noqa: E731
    return {
        "forget": split(a[:50]), "retain": split(a[50:]), "all_a": split(a), "held_out": split(h), "test": split(t),
        "full": _train(*split(a)), "retrain": _train(*split(a[50:])),
        "initial": initial_parameters(SPEC).numpy(),
    }


def _metrics(s, theta, **kw):
    return ev.unlearning_metrics(SPEC, theta, s["forget"], s["retain"], s["test"], **kw)


# --------------------------------------------------------------------- model outputs


def test_probabilities_are_a_distribution(setup):
    x, y = setup["test"]
    p = ev.probabilities(SPEC, setup["full"], x)
    assert p.shape == (len(y), 10) and p.dtype == np.float64
    assert np.all(p >= 0) and np.allclose(p.sum(1), 1.0)
    assert ev.probabilities(SPEC, setup["full"], x[:0]).shape == (0, 10)
    # batching does not change the result
    np.testing.assert_allclose(ev.probabilities(SPEC, setup["full"], x, batch_size=97), p, rtol=0, atol=1e-12)
    conf = ev.true_class_confidence(p, y)
    np.testing.assert_array_equal(conf, p[np.arange(len(y)), y])
    assert math.isnan(ev.accuracy(p[:0], y[:0]))


def test_metrics_are_fractions_and_training_helps(setup):
    trained, untrained = _metrics(setup, setup["full"]), _metrics(setup, setup["initial"])
    for m in (trained, untrained):
        assert set(m) == set(ev.METRIC_KEYS)
        assert m["finite"] is True
        for k in FRACTIONS:
            assert isinstance(m[k], float) and 0.0 <= m[k] <= 1.0, (k, m[k])
    assert trained["RA"] > untrained["RA"] + 0.5
    assert trained["TA"] > untrained["TA"] + 0.5
    assert trained["RA"] == 1.0 and trained["UA"] == 0.0  # A is fitted exactly


def test_mia_members_look_like_members(setup):
    """Forget set drawn from the training data -> the attack calls it member; held-out forget set -> less so."""
    s = setup
    members = ev.unlearning_metrics(SPEC, s["full"], s["forget"], s["retain"], s["test"])
    held_out = ev.unlearning_metrics(SPEC, s["full"], s["held_out"], s["all_a"], s["test"])
    assert members["MIA"] <= 0.02
    assert held_out["MIA"] >= members["MIA"] + 0.05
    assert members["forget_confidence"] > held_out["forget_confidence"]


def test_mia_on_separable_confidences():
    rng = np.random.default_rng(1)
    retain, test = rng.uniform(0.95, 1.0, 500), rng.uniform(0.0, 0.5, 400)
    assert ev.mia_efficacy(retain, test, rng.uniform(0.95, 1.0, 100)) == 0.0
    assert ev.mia_efficacy(retain, test, rng.uniform(0.0, 0.5, 100)) == 1.0
    assert ev.mia_efficacy(retain, test, np.r_[np.full(30, 0.99), np.full(70, 0.1)]) == pytest.approx(0.7)


def test_mia_is_deterministic(setup):
    s = setup
    a = ev.unlearning_metrics(SPEC, s["full"], s["held_out"], s["all_a"], s["test"], seed=3)
    b = ev.unlearning_metrics(SPEC, s["full"], s["held_out"], s["all_a"], s["test"], seed=3)
    assert a == b
    rng = np.random.default_rng(2)
    conf = rng.uniform(0, 1, 3000), rng.uniform(0, 1, 3000), rng.uniform(0, 1, 200)
    assert ev.mia_efficacy(*conf, seed=7, max_per_class=500) == ev.mia_efficacy(*conf, seed=7, max_per_class=500)


def test_mia_edge_cases():
    conf = np.linspace(0, 1, 50)
    assert math.isnan(ev.mia_efficacy(conf, conf, []))  # nothing to attack
    assert math.isnan(ev.mia_efficacy([], conf, conf))  # one class only
    assert math.isnan(ev.mia_efficacy(conf, [], conf))
    assert math.isnan(ev.mia_efficacy(np.r_[conf, np.nan], conf, conf))  # diverged model
    with pytest.raises(ValueError):
        ev.mia_efficacy(conf, conf, conf, max_per_class=0)


def test_retain_subsample(setup):
    s = setup
    capped = ev.unlearning_metrics(SPEC, s["initial"], s["forget"], s["retain"], s["test"], max_retain=40, seed=1)
    again = ev.unlearning_metrics(SPEC, s["initial"], s["forget"], s["retain"], s["test"], max_retain=40, seed=1)
    assert capped == again
    assert capped["RA"] * 40 == pytest.approx(round(capped["RA"] * 40))  # an accuracy over 40 rows


def test_empty_forget_set(setup):
    x, y = setup["forget"]
    m = ev.unlearning_metrics(SPEC, setup["full"], (x[:0], y[:0]), setup["retain"], setup["test"])
    assert math.isnan(m["UA"]) and math.isnan(m["MIA"]) and math.isnan(m["forget_confidence"])
    assert m["RA"] == 1.0 and m["finite"] is True
    c = ev.compare_to_exact(SPEC, setup["full"], setup["retrain"], (x[:0], y[:0]), setup["retain"], setup["test"])
    assert math.isnan(c["kl_forget"]) and c["kl_test"] > 0 and math.isnan(c["avg_gap"])


def test_non_finite_model_fails_without_raising(setup):
    theta = setup["full"].copy()
    theta[3] = np.nan
    m = _metrics(setup, theta)
    assert m["finite"] is False
    assert m["RA"] == 0.0 and m["TA"] == 0.0 and m["UA"] == 1.0
    assert math.isnan(m["MIA"]) and math.isnan(m["forget_confidence"])
    p = ev.probabilities(SPEC, theta, setup["test"][0])
    assert np.isnan(p).all() and ev.accuracy(p, setup["test"][1]) == 0.0
    c = ev.compare_to_exact(SPEC, theta, setup["retrain"], setup["forget"], setup["retain"], setup["test"])
    assert c["approx"]["finite"] is False and c["exact"]["finite"] is True
    assert math.isnan(c["avg_gap"]) and not c["avg_gap"] <= 100.0  # a gate's threshold fails it
    assert math.isnan(c["kl_test"])
    inf_theta = setup["full"].copy()
    inf_theta[0] = np.inf
    assert _metrics(setup, inf_theta)["finite"] is False


# --------------------------------------------------------------------- against the exact model


def test_gaps_and_kl_of_a_model_with_itself_are_zero(setup):
    s = setup
    c = ev.compare_to_exact(SPEC, s["retrain"], s["retrain"], s["forget"], s["retain"], s["test"])
    assert c["approx"] == c["exact"]
    assert c["gaps"] == {"UA": 0.0, "RA": 0.0, "TA": 0.0, "MIA": 0.0, "avg_gap": 0.0}
    assert c["avg_gap"] == 0.0 and c["kl_forget"] == 0.0 and c["kl_test"] == 0.0


def test_compare_full_model_to_retrain(setup):
    """The model that never forgot against the exact retrain: it fits the forget set, the retrain does not."""
    s = setup
    c = ev.compare_to_exact(SPEC, s["full"], s["retrain"], s["forget"], s["retain"], s["test"])
    assert c["approx"] == _metrics(s, s["full"]) and c["exact"] == _metrics(s, s["retrain"])
    assert c["approx"]["UA"] == 0.0 and c["exact"]["UA"] > 0.0
    assert c["gaps"]["UA"] == pytest.approx(100 * c["exact"]["UA"])
    assert c["avg_gap"] == pytest.approx(np.mean([c["gaps"][k] for k in ev.GAP_KEYS]))
    assert c["avg_gap"] > 0
    assert c["kl_forget"] > c["kl_test"] > 0  # the outputs differ most where the training sets differ


def test_gaps_formula():
    approx = {"UA": 0.10, "RA": 0.95, "TA": 0.90, "MIA": 0.20, "extra": 1.0}
    exact = {"UA": 0.12, "RA": 0.97, "TA": 0.91, "MIA": 0.30}
    g = ev.gaps(approx, exact)
    assert g == pytest.approx({"UA": 2.0, "RA": 2.0, "TA": 1.0, "MIA": 10.0, "avg_gap": 3.75})
    assert ev.gaps(approx, exact, keys=("UA",)) == pytest.approx({"UA": 2.0, "avg_gap": 2.0})
    with pytest.raises(KeyError):
        ev.gaps(approx, exact, keys=("extra",))


def test_kl_divergence():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10), size=50)
    q = rng.dirichlet(np.ones(10), size=50)
    assert ev.kl_divergence(p, p) == 0.0
    expected = np.mean(np.sum(p * np.log(p / q), axis=1))
    assert ev.kl_divergence(p, q) == pytest.approx(expected) and expected > 0
    # zero reference mass contributes nothing; zero mass in p is clipped at 1e-12
    one_hot = np.eye(3)[[0, 1]]
    assert ev.kl_divergence(one_hot, one_hot) == 0.0
    assert ev.kl_divergence(one_hot, np.array([[0.0, 0.5, 0.5], [0.2, 0.8, 0.0]])) == pytest.approx(
        (-math.log(1e-12) - math.log(0.8)) / 2)
    assert math.isnan(ev.kl_divergence(p[:0], q[:0]))
    with pytest.raises(ValueError):
        ev.kl_divergence(p, q[:3])
