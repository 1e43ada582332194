"""An optimized attacker when honest workers are absent: its simulated defense caps f like `receive` does."""

from __future__ import annotations

import numpy as np
import pytest

from ostracon.cluster.execution.backend import LocalBackend
from ostracon.cluster.execution.plan import make_plan

from helpers import small_config


@pytest.mark.parametrize("protocol, rule", [("monna", "nna"), ("server", "cwtm")])
@pytest.mark.parametrize("behaviour", ["alie_optimized", "foe_optimized"])
def test_optimized_attack_with_absent_honest_workers_does_not_raise(protocol, rule, behaviour):
    # 6 workers, declared f = 2, one attacker (worker 5); only workers 0 and 1 answered this round, so the
    # attacker's simulated defense sees 3 vectors, where the rule accepts at most f = 1.
    config = small_config(training={"protocol": protocol, "rule": rule, "workers": 6, "f": 2, "rounds": 4},
                          byzantine={"count": 1, "behaviour": behaviour})
    plan = make_plan(config)
    backend = LocalBackend()
    backend.start(plan.specs, plan.data)
    answered = backend.step([0, 1], 0, 0, 0, {})
    assert sorted(answered.vectors) == [0, 1]
    honest = [answered.vectors[0], answered.vectors[1]]
    attack = backend.attack([5], honest, 0)
    assert attack.failures == {}
    vector = attack.vectors[5]
    assert vector.shape == honest[0].shape and np.isfinite(vector).all()
