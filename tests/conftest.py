"""Shared fixtures: small, fast configs on real data (scikit-learn's digits)."""

from __future__ import annotations

import os

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
