"""Models: seed-only initialisation, no buffers, flat parameter vector and its digest."""

from __future__ import annotations

import hashlib

import pytest
import torch

from ostracon.nodes.models import MODELS, build_model, flat_parameters, load_flat_parameters, parameter_digest

# (name, input shape, params) kept small so the whole file runs in a few seconds.
CASES = [
    ("logreg", (64,), {}),
    ("mlp", (64,), {"hidden": 16, "layers": 2}),
    ("mlp", (1, 28, 28), {}),
    ("cnn", (1, 28, 28), {"channels": (4, 8), "hidden": 16}),
    ("cnn", (3, 32, 32), {"channels": (4, 8), "hidden": 16}),
    ("resnet18", (3, 32, 32), {"width": 8, "groups": 4}),
    ("resnet18", (1, 28, 28), {"width": 8, "groups": 4}),
]
IDS = [f"{name}-{'x'.join(map(str, shape))}" for name, shape, _ in CASES]


def _build(name, shape, params, seed=0, num_classes=10):
    return build_model(name, input_shape=shape, num_classes=num_classes, seed=seed, **params)


@pytest.mark.parametrize("name,shape,params", CASES, ids=IDS)
def test_forward_shape_and_no_buffers(name, shape, params):
    model = _build(name, shape, params)
    out = model(torch.rand(3, *shape))
    assert out.shape == (3, 10)
    assert list(model.buffers()) == []
    out.sum().backward()  # parameters are real leaves that train
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name,shape,params", CASES, ids=IDS)
def test_initialisation_depends_on_seed_only(name, shape, params):
    with torch.random.fork_rng(devices=[]):  # leave the global RNG as other tests expect it
        torch.manual_seed(123)
        a = flat_parameters(_build(name, shape, params, seed=5))
        torch.manual_seed(999)  # a different global RNG state must not matter
        state = torch.get_rng_state()
        b = flat_parameters(_build(name, shape, params, seed=5))
        assert torch.equal(torch.get_rng_state(), state)  # and building must not consume it
    c = flat_parameters(_build(name, shape, params, seed=6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.isfinite(a).all()


def test_default_resnet18_uses_group_norm_and_runs_on_cifar_shapes():
    model = build_model("resnet18", input_shape=(3, 32, 32), num_classes=10, seed=0)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "GroupNorm" in kinds and not any("BatchNorm" in k for k in kinds)
    assert 11_000_000 < sum(p.numel() for p in model.parameters()) < 11_300_000
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_default_init_matches_pytorch_scheme_scale():
    model = build_model("logreg", input_shape=(100,), num_classes=10, seed=0)
    weight, bias = model[1].weight, model[1].bias
    bound = 1 / 100**0.5  # kaiming_uniform(a=sqrt(5)) and the bias both give U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert weight.abs().max() <= bound and bias.abs().max() <= bound
    assert weight.abs().max() > 0.9 * bound


def test_flat_round_trip():
    model = _build("cnn", (1, 28, 28), {"channels": (4, 8), "hidden": 16})
    vector = flat_parameters(model)
    assert vector.dtype == torch.float32 and vector.dim() == 1 and vector.is_contiguous()
    assert vector.numel() == sum(p.numel() for p in model.parameters())
    vector += 1.0  # a detached copy: editing it leaves the model alone
    assert not torch.equal(flat_parameters(model), vector)
    other = _build("cnn", (1, 28, 28), {"channels": (4, 8), "hidden": 16}, seed=1)
    load_flat_parameters(other, vector)
    assert torch.equal(flat_parameters(other), vector)
    x = torch.rand(2, 1, 28, 28)
    load_flat_parameters(model, vector)
    assert torch.equal(model(x), other(x))


def test_load_flat_parameters_rejects_wrong_size():
    model = _build("logreg", (64,), {})
    with pytest.raises(ValueError, match=r"expected \(650,\).*\(649,\)|\(649,\).*expected \(650,\)"):
        load_flat_parameters(model, torch.zeros(649))
    with pytest.raises(ValueError, match="650"):
        load_flat_parameters(model, torch.zeros(2, 325))
    before = flat_parameters(model)
    with pytest.raises(ValueError):
        load_flat_parameters(model, torch.zeros(650, dtype=torch.int64))
    assert torch.equal(flat_parameters(model), before)


def test_digest_is_stable_and_bit_sensitive():
    model = _build("mlp", (64,), {"hidden": 16})
    vector = flat_parameters(model)
    digest = parameter_digest(model)
    assert digest == parameter_digest(vector) == parameter_digest(vector.to(torch.float64))
    assert digest == hashlib.sha256(vector.numpy().astype("<f4").tobytes()).hexdigest()
    flipped = vector.clone()
    flipped.view(torch.int32)[17] ^= 1  # one bit of one parameter
    assert parameter_digest(flipped) != digest
    assert parameter_digest(_build("mlp", (64,), {"hidden": 16})) == digest


def test_bad_names_and_params():
    with pytest.raises(ValueError, match="known models: " + ", ".join(MODELS)):
        build_model("vgg16", input_shape=(3, 32, 32), num_classes=10, seed=0)
    with pytest.raises(ValueError, match="unknown param.*dropout"):
        build_model("mlp", input_shape=(64,), num_classes=10, seed=0, dropout=0.5)
    with pytest.raises(ValueError, match="unknown param"):
        build_model("logreg", input_shape=(64,), num_classes=10, seed=0, hidden=3)
    with pytest.raises(ValueError, match="image"):
        build_model("cnn", input_shape=(64,), num_classes=10, seed=0)
    with pytest.raises(ValueError, match="hidden"):
        build_model("mlp", input_shape=(64,), num_classes=10, seed=0, hidden=0)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", input_shape=(64,), num_classes=1, seed=0)
