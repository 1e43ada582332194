"""Shared fixtures: small, fast configs on real data (scikit-learn's digits)."""

from __future__ import annotations

import os
import shutil

import pytest

# Tests run the in-process backend in this process: pin threads like the workers do (before torch loads).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from helpers import SISA, small_config


@pytest.fixture
def make_config():
    return small_config


@pytest.fixture(scope="module")
def config():
    """The SISA config (one per test module)."""
    return small_config(**SISA)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, config):
    """A state directory trained once per module with ``config`` (in process; backend.* may be overridden
    when it is served or unlearned)."""
    from ostracon.cluster.execution.training import train

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
