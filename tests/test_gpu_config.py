"""GPU settings checked on the CPU: backend.device against backend.num_gpus, training.precision, the cuBLAS
setting of deterministic mode (driver and Ray actors), and resnet18's pooling giving the CPU's bits."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from ostracon.cluster.cli import EXAMPLES_DIR, main
from ostracon.cluster.config import from_dict
from ostracon.cluster.errors import ConfigError
from ostracon.nodes import seeding
from ostracon.nodes.models import build_model


def backend(**values):
    return {"backend": values}


@pytest.mark.parametrize("raw, names", [
    (backend(name="ray", device="cuda"), ("backend.device", "backend.num_gpus")),
    (backend(name="ray", device="cuda:0", num_gpus=0.0), ("backend.device", "backend.num_gpus")),
    (backend(name="ray", device="cuda:1", num_gpus=0.25), ("backend.device", "backend.num_gpus")),
    (backend(name="ray", device="cuda:2", num_gpus=2.0), ("backend.device", "backend.num_gpus")),
    (backend(name="ray", device="cuda", num_gpus=1.5), ("backend.num_gpus",)),
    (backend(name="ray", num_gpus=0.25), ("backend.num_gpus", "backend.device")),
    (backend(name="local", num_gpus=1.0), ("backend.num_gpus", "backend.device")),
    (backend(device="gpu"), ("backend.device",)),
    (backend(device="cuda:x"), ("backend.device",)),
    ({"training": {"precision": "bf16"}}, ("training.precision", "fp32")),
    ({"training": {"precision": "fp16"}}, ("training.precision",)),
])
def test_gpu_settings_are_checked_with_one_line_naming_the_keys(raw, names):
    with pytest.raises(ConfigError) as info:
        from_dict(raw)
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message


def test_bf16_is_refused_because_exact_unlearning_needs_fp32():
    with pytest.raises(ConfigError, match="exact unlearning needs fp32"):
        from_dict({"training": {"precision": "bf16"}})
    assert from_dict({}).training.precision == "fp32"


@pytest.mark.parametrize("values", [
    dict(name="ray", device="cuda", num_gpus=0.25),
    dict(name="ray", device="cuda:0", num_gpus=0.5),
    dict(name="ray", device="cuda:1", num_gpus=2.0),
    dict(name="ray", device="cpu", num_gpus=0.0),
])
def test_ray_gpu_settings_need_no_gpu_on_the_driver(values):
    assert from_dict(backend(**values)).backend.device == values["device"]


def test_local_cuda_needs_a_cuda_device_here(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"backend\.device = 'cuda' with backend\.name = 'local'.*is_available"):
        from_dict(backend(device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert from_dict(backend(device="cuda", num_gpus=0.5)).backend.device == "cuda"  # num_gpus: Ray's only
    with pytest.raises(ConfigError, match=r"backend\.device = 'cuda:1': this machine has 1 CUDA device"):
        from_dict(backend(device="cuda:1"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_train_on_cuda_without_a_gpu_is_one_line_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "-c", os.path.join(EXAMPLES_DIR, "digits_monna.toml"), "-o", str(out), "--no-progress",
                 "--set", "backend.device=cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert "backend.device" in err[-1] and "Traceback" not in "\n".join(err)
    assert not out.exists()


def test_set_deterministic_sets_the_cublas_workspace_only_with_cuda(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seeding.set_deterministic(threads)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seeding.set_deterministic(threads)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the environment's own choice is kept
    seeding.set_deterministic(threads)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


@pytest.mark.parametrize("device, num_gpus, deterministic, expected", [
    ("cuda", 0.25, True, {"env_vars": {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}}),
    ("cuda", 0.25, False, None),
    ("cpu", 0.0, True, None),
])
def test_ray_actors_get_the_cublas_setting_in_their_runtime_env(monkeypatch, device, num_gpus, deterministic,
                                                                  expected):
    from ostracon.cluster.execution.ray_backend import actor_runtime_env

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    config = from_dict({"deterministic": deterministic, "data": {"source": "digits"},
                        "training": {"workers": 3, "f": 0, "rounds": 2},
                        "backend": {"name": "ray", "device": device, "num_gpus": num_gpus, "num_cpus": 1.0}})
    assert actor_runtime_env(config) == expected
    if expected:
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the driver's own choice travels to the actors
        assert actor_runtime_env(config) == {"env_vars": {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}}


def _pool_then_head(model, x, pool):
    out = torch.relu(model.stem_norm(model.stem(x)))
    return model.head(pool(model.stages(out)))


@pytest.mark.parametrize("shape, width", [((3, 32, 32), 16), ((1, 28, 28), 8), ((3, 17, 13), 8)])
def test_resnet18_mean_pooling_gives_the_cpu_bits_of_adaptive_avg_pool2d(shape, width):
    """resnet18 pools with a mean over H, W (AdaptiveAvgPool2d has no deterministic CUDA backward); on the
    CPU the forward pass and every gradient are bit-identical to what adaptive_avg_pool2d gave."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand((8, *shape), generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    runs = []
    for pool in (lambda t: torch.flatten(nn.functional.adaptive_avg_pool2d(t, 1), 1), None):
        model = build_model("resnet18", input_shape=shape, num_classes=10, seed=3, width=width, groups=4)
        logits = model(x) if pool is None else _pool_then_head(model, x, pool)
        nn.functional.cross_entropy(logits, y).backward()
        runs.append([logits.detach(), *(p.grad for p in model.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
