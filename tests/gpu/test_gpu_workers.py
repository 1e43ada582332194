"""Workers on a CUDA device: deterministic kernels, Ray with fractional GPUs, exact deletion, ``verify``.

Each test compares GPU results with GPU results (local backend vs Ray actors, a replay vs a retrain): a
GPU's digests are reproducible on the same kind of GPU, they are not the CPU's.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from ostracon.cluster.execution.hooks import RoundHooks
from ostracon.cluster.execution.plan import load_config_dataset
from ostracon.cluster.execution.training import train
from ostracon.cluster.unlearning import unlearn_state_dir, verify_state_dir
from ostracon.nodes.models import build_model
from ostracon.nodes.seeding import CUBLAS_WORKSPACE_CONFIG, set_deterministic

from helpers import SISA, final_thetas, pick_ids, small_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SHARE = 0.25  # GPUs per worker actor: four actors share one GPU


def on_gpu(config, backend="local"):
    """``config`` with its workers on CUDA; on Ray each actor reserves a fraction of a GPU (0.25, less when
    the machine's GPUs cannot hold every actor at 0.25)."""
    share = min(SHARE, math.floor(torch.cuda.device_count() / config.num_workers * 10_000) / 10_000)
    return config.replace(**{"backend.name": backend, "backend.device": "cuda", "backend.num_gpus": share})


def where_workers_run(config, record):
    """Round hooks that record, once, each worker's device and the cuBLAS setting its process sees."""
    def hook(t, backend):
        if not record:  # a lambda: Ray ships it by value (a test module does not import on the actors)
            record.update(backend.call(range(config.num_workers), lambda w: (
                w.theta.device.type, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))))
    return RoundHooks(hook)


# ----- kernels --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, shape, params", [
    ("logreg", (1, 8, 8), {}),
    ("mlp", (1, 8, 8), {"hidden": 32}),
    ("cnn", (3, 32, 32), {"channels": [8, 16], "hidden": 32}),
    ("resnet18", (3, 32, 32), {"width": 16, "groups": 4}),
])
def test_every_builtin_model_trains_deterministically_on_cuda(name, shape, params):
    """Deterministic mode raises on an op without a deterministic CUDA kernel (AdaptiveAvgPool2d's backward
    did); two forward + backward passes on a uint8 batch cast on the device give the same bits."""
    set_deterministic(1)
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == CUBLAS_WORKSPACE_CONFIG
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, *shape), generator=g, dtype=torch.uint8).cuda()
    y = torch.randint(0, 10, (32,), generator=g).cuda()
    runs = []
    for _ in range(2):
        model = build_model(name, input_shape=shape, num_classes=10, seed=3, **params).cuda()
        logits = model(x.to(torch.float32) / 255)
        nn.functional.cross_entropy(logits, y).backward()
        runs.append([logits.detach().cpu(), *(p.grad.detach().cpu() for p in model.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


# ----- workers on the GPU, local and on Ray ---------------------------------------------------------------


@pytest.mark.usefixtures("ray_gpu_runtime")
def test_local_and_ray_are_bit_identical_on_the_gpu():
    config = small_config(training={"workers": 4, "f": 1, "rounds": 8, "eval_every": 4},
                          byzantine={"count": 1, "behaviour": "alie"}, unlearning={"slices": 2})
    seen_local: dict = {}
    seen_ray: dict = {}
    local = train(on_gpu(config), progress=False, hooks=where_workers_run(config, seen_local))
    remote = train(on_gpu(config, "ray"), progress=False, hooks=where_workers_run(config, seen_ray))
    assert seen_ray and set(seen_ray.values()) == {("cuda", CUBLAS_WORKSPACE_CONFIG)}, seen_ray
    assert {device for device, _ in seen_local.values()} == {"cuda"}, seen_local
    assert sorted(local.parameters) == sorted(remote.parameters)
    for j in local.parameters:
        assert np.array_equal(local.parameters[j], remote.parameters[j]), f"worker {j} differs"
    assert local.summary["worker_digests"] == remote.summary["worker_digests"]
    assert [m["accuracy"] for m in local.metrics] == [m["accuracy"] for m in remote.metrics]


@pytest.mark.usefixtures("ray_gpu_runtime")
def test_exact_deletion_on_ray_gpus_is_bit_identical_and_verifies(tmp_path):
    config = on_gpu(small_config(**SISA), "ray")
    state = tmp_path / "state"
    seen: dict = {}
    train(config, state, progress=False, hooks=where_workers_run(config, seen))
    assert {device for device, _ in seen.values()} == {"cuda"}, seen
    ids = pick_ids(config, 5, seed=7)
    cert = unlearn_state_dir(state, ids)
    assert set(cert["groups"]) == {"0", "1"}
    # A retrain from scratch without the ids, in this process on the same GPU: local == Ray bit for bit.
    fresh = train(config.replace(**{"backend.name": "local"}), None, progress=False,
                  dataset=load_config_dataset(config).without(ids))
    replayed = final_thetas(state, config)
    for j, theta in fresh.parameters.items():
        assert torch.equal(replayed[j], torch.from_numpy(theta)), f"worker {j} differs"
    assert cert["group_digests"] == fresh.summary["group_digests"]
    report = verify_state_dir(state)
    assert report["ok"], report["failures"]
