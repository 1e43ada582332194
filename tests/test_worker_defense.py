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
    backend.start(plan.specs, plan.shards)
    answered = backend.step([0, 1], 0, 0, 0, {})
    assert sorted(answered.vectors) == [0, 1]
    honest = [answered.vectors[0], answered.vectors[1]]
    attack = backend.attack([5], honest, 0)
    assert attack.failures == {}
    vector = attack.vectors[5]
    assert vector.shape == honest[0].shape and np.isfinite(vector).all()


def test_optimized_attack_skips_a_diverged_honest_node_as_pivot():
    # D-SGD under an attack can diverge: a node whose model is non-finite keeps it instead of mixing, so the
    # attacker's simulated defense must not use it as a pivot (the rule would refuse "pivot must be finite").
    config = small_config(training={"protocol": "monna", "rule": "mean", "workers": 6, "f": 1, "rounds": 4},
                          byzantine={"count": 1, "behaviour": "foe_optimized"})
    plan = make_plan(config)
    backend = LocalBackend()
    backend.start(plan.specs, plan.shards)
    answered = backend.step([0, 1, 2, 3, 4], 0, 0, 0, {})
    honest = [answered.vectors[j] for j in range(5)]
    honest[2] = np.full_like(honest[2], np.nan)
    attack = backend.attack([5], honest, 0)
    assert attack.failures == {}
    assert attack.vectors[5].shape == honest[0].shape


def test_the_attackers_defense_uses_the_rounds_budget():
    # With f = 2 declared and both budget units spent, NNA keeps every row: the defense is the plain mean
    # around each pivot, so the line-searched attack differs from the one facing f = 2.
    config = small_config(training={"protocol": "monna", "rule": "nna", "workers": 7, "f": 2, "rounds": 4,
                                    "pre": []}, byzantine={"count": 1, "behaviour": "alie_optimized"})
    plan = make_plan(config)
    backend = LocalBackend()
    backend.start(plan.specs, plan.shards)
    answered = backend.step(list(range(6)), 0, 0, 0, {})
    honest = [answered.vectors[j] for j in range(6)]
    declared = backend.attack([6], honest, 0).vectors[6]
    spent = backend.attack([6], honest, 0, 0).vectors[6]
    assert not np.array_equal(declared, spent)
