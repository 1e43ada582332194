"""Shared fixtures: small, fast configs on real data (scikit-learn's digits)."""

from __future__ import annotations

import os
import shutil

import pytest

from ostracon.cluster.config import Config, from_dict

# Tests run the in-process backend in this process: pin threads like the workers do.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def small_config(**sections) -> Config:
    """A quick digits/MLP config; ``sections`` override whole keys, e.g. training={"rounds": 8}."""
    raw = {
        "seed": 0,
        "data": {"source": "digits", "partition": "dirichlet", "alpha": 1.0},
        "model": {"name": "mlp", "params": {"hidden": 32}},
        "training": {"protocol": "monna", "rule": "nna", "workers": 6, "f": 1, "rounds": 40,
                     "batch_size": 32, "lr": 0.5, "momentum": 0.9, "eval_every": 20},
        "byzantine": {"count": 1, "behaviour": "alie"},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return from_dict(raw)


@pytest.fixture
def make_config():
    return small_config


# Issue acceptance for exact unlearning: S = 2 groups, R = 4 slices, 4 workers per group of which 1 Byzantine.
SISA = dict(training={"workers": 4, "f": 1, "rounds": 24, "eval_every": 24},
            byzantine={"count": 1, "behaviour": "alie"}, unlearning={"groups": 2, "slices": 4})


@pytest.fixture(scope="module")
def config():
    """The SISA config (one per test module)."""
    return small_config(**SISA)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, config):
    """A state directory trained once per module with ``config`` (in process; backend.* may be overridden
    when it is served or unlearned)."""
    from ostracon.cluster.training import train

    state = tmp_path_factory.mktemp("trained") / "state"
    train(config, state, progress=False)
    return state


@pytest.fixture
def state(tmp_path, trained):
    """A private copy of ``trained`` for one test to damage or change."""
    copy = tmp_path / "state"
    shutil.copytree(trained, copy)
    return copy


@pytest.fixture(scope="module")
def ray_runtime():
    """One local Ray runtime per test module (modules opt in with ``pytestmark``)."""
    import ray

    ray.shutdown()
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield
    ray.shutdown()
