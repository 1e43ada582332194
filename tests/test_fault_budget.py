"""Silent workers spend the fault budget: a round with ``k`` workers that sent nothing (crashed, past
the deadline, busy) runs its rule and pre-aggregations with ``max(0, f - k)``, on both protocols;
each such round's budget is recorded in the schedule, replays and ``verify`` impose it, and a state
trained before (no policy in its ledger) keeps the declared ``f`` in its replays."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from ostracon.cluster.execution.plan import make_plan
from ostracon.cluster.execution.training import train
from ostracon.cluster.storage.ledger import SILENT_SPEND_KEY, ledger_path, open_ledger
from ostracon.cluster.storage.records import Schedule
from ostracon.cluster.unlearning import locate, unlearn_state_dir, verify_state_dir
from ostracon.nodes.worker import round_budget

from helpers import assert_consistent, retrain_digests, small_config

CRASH_ROUND = 4


def crashed(at: int = CRASH_ROUND, **training) -> dict:
    """6 workers of which 2 crash at round ``at``; f = 2 and no pre-aggregation, so a spent budget
    leaves f = 0, where NNA and CWTM are the plain mean of what arrived."""
    return dict(training={"workers": 6, "f": 2, "rounds": 16, "eval_every": 16, "pre": [], **training},
                byzantine={"count": 2, "behaviour": "crash", "params": {"round": at}})


def close(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> bool:
    return all(np.allclose(a[j], b[j], rtol=1e-4, atol=1e-5) for j in a)


def test_round_budget_spends_one_unit_per_silent_worker():
    assert [round_budget(3, k) for k in range(6)] == [3, 2, 1, 0, 0, 0]
    assert round_budget(0, 2) == 0


@pytest.mark.parametrize("protocol,rule", [("monna", "nna"), ("server", "cwtm")])
def test_two_crashed_workers_leave_a_budget_of_zero(protocol, rule):
    """With both Byzantine workers silent, the robust rule keeps every vector that arrived: it ends where
    the plain mean ends (same data, same batches); the declared f would have discarded 2 of the 4."""
    robust = train(small_config(**crashed(0, protocol=protocol, rule=rule)), progress=False)
    mean = train(small_config(**crashed(0, protocol=protocol, rule="mean")), progress=False)
    declared = train(small_config(**crashed(0, protocol=protocol, rule=rule)), progress=False,
                     schedule=Schedule(silent_spend=False))
    assert close(robust.parameters, mean.parameters)
    assert not close(declared.parameters, mean.parameters), "the declared f should have discarded vectors"
    budgets = robust.schedule.budgets
    assert budgets == {(0, 0): dict.fromkeys(range(16), 0)}
    assert robust.summary["budget_rounds"] == 16
    assert declared.summary["budget_rounds"] == 0


def test_one_silent_worker_spends_one_unit():
    config = small_config(training={"workers": 6, "f": 2, "rounds": 8, "eval_every": 8},
                          byzantine={"count": 1, "behaviour": "crash", "params": {"round": 3}})
    result = train(config, progress=False)
    assert result.schedule.budgets == {(0, 0): dict.fromkeys(range(3, 8), 1)}


def test_budgets_are_recorded_and_replays_are_exact(tmp_path):
    """Crash at round r of stage 0; delete ids of stage 1: the replay runs with the recorded budgets and
    ends bit-identical to a retrain from scratch; verify retrains and matches."""
    config = small_config(**crashed(rounds=16), unlearning={"slices": 2})
    state = tmp_path / "state"
    result = train(config, state, progress=False)
    with open_ledger(state, readonly=True) as ledger:
        recorded = ledger.schedule()
    assert recorded.silent_spend
    assert recorded.budgets == result.schedule.budgets
    assert set(recorded.budgets) == {(0, 0), (0, 1)}
    plan = make_plan(config)
    where = locate(plan)
    victims = sorted(i for i, (g, j, s) in where.items() if s == 1 and plan.specs[j].trains)[:3]
    digests = retrain_digests(config, victims)
    unlearn_state_dir(state, victims)
    assert_consistent(state, config, victims, digests)
    report = verify_state_dir(state)
    assert report["ok"], report["failures"]


def test_a_state_trained_before_keeps_the_declared_budget_in_replays(tmp_path):
    """A ledger without the policy (made before silent workers spent f) is replayed with the declared f:
    shown here by removing the policy from a state trained with it, which verify then cannot match."""
    config = small_config(**crashed(rounds=8))
    state = tmp_path / "state"
    train(config, state, progress=False)
    assert verify_state_dir(state)["ok"]
    with sqlite3.connect(ledger_path(state)) as db:
        db.execute("DELETE FROM meta WHERE key = ?", (SILENT_SPEND_KEY,))
        db.execute("DELETE FROM round_budgets")
    with open_ledger(state, readonly=True) as ledger:
        assert not ledger.schedule().silent_spend
    report = verify_state_dir(state)
    assert not report["ok"]
    assert "MODEL_MISMATCH" in str(report["failures"]), report["failures"]


def test_a_straggler_past_the_deadline_spends_the_budget_and_verify_imposes_it(tmp_path):
    config = small_config(training={"workers": 4, "f": 1, "rounds": 6, "eval_every": 6, "round_deadline_s": 0.05},
                          byzantine={"count": 1, "behaviour": "straggler", "params": {"delay_s": 0.1}})
    state = tmp_path / "state"
    result = train(config, state, progress=False)
    late = {t for rounds in result.schedule.events.values() for t in rounds}
    assert late, "the straggler never missed the deadline"
    assert result.schedule.budgets == {(0, 0): dict.fromkeys(sorted(late), 0)}
    report = verify_state_dir(state)
    assert report["ok"], report["failures"]
