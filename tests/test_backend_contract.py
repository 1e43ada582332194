"""The Backend contract (cluster/execution/backend.py), one suite run against every backend.

Training and unlearning are written once against ``Backend``: whatever one backend answers, the other
must answer too, bit for bit. Ray runs on a real local runtime shared by this module."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ostracon.cluster.execution.backend import LOCAL_NODE, LocalBackend, StepResult, make_backend
from ostracon.cluster.execution.plan import make_plan
from ostracon.nodes.messages import Assign
from ostracon.nodes.worker import Worker

from helpers import shard_rows, small_config

BACKEND_NAMES = ("local", "ray")
CONFIG = small_config(training={"workers": 4, "f": 1, "rounds": 8, "eval_every": 8},
                      byzantine={"count": 1, "behaviour": "alie"}, unlearning={"slices": 2})


@pytest.fixture(scope="module")
def plan():
    return make_plan(CONFIG)


@pytest.fixture(scope="module", params=BACKEND_NAMES)
def backend(request, plan):
    """A started backend of each kind, with every worker of the plan, shared by the tests below in their
    order (each test leaves the workers as the next one expects: steps before assignments before kills)."""
    if request.param == "ray":
        request.getfixturevalue("ray_runtime")
    started = make_backend(CONFIG.replace(**{"backend.name": request.param}))
    started.start(plan.specs, plan.shards)
    with started:
        yield started


@pytest.fixture(scope="module")
def reference(plan):
    """What the in-process backend answers: the reference every backend must match bit for bit."""
    with LocalBackend() as local:
        local.start(plan.specs, plan.shards)
        states = local.call(plan.trainers_all(), Worker.get_state)
        trainers = plan.trainers(0)
        first = local.step(trainers, 0, 0, 0, {})
        attack = local.attack(plan.attackers(0), [first.vectors[j] for j in trainers], 0)
        return {"states": states,
                "vectors": {j: np.asarray(v) for j, v in first.vectors.items()},
                "attack": {j: np.asarray(v) for j, v in attack.vectors.items()}}


def test_call_runs_a_worker_method_on_each_listed_worker(backend, plan):
    workers = [s.index for s in plan.specs]
    ids = backend.call(workers, Worker.data_ids, 0)
    assert sorted(ids) == workers
    for j in plan.trainers_all():
        expected = shard_rows(plan, j).ids[shard_rows(plan, j).slices <= 0].tolist()
        assert sorted(ids[j]) == sorted(expected), f"worker {j}"


def test_call_each_passes_each_worker_its_own_arguments(backend, plan):
    j, k = plan.trainers(0)[:2]
    got = backend.call_each(Worker.data_ids, {j: (0,), k: (1,)})
    assert set(got) == {j, k}
    assert len(got[k]) == len(shard_rows(plan, k).ids)  # slices 0..1: every row of a 2-slice shard
    assert len(got[j]) == int((shard_rows(plan, j).slices <= 0).sum()) < len(shard_rows(plan, j).ids)


def test_initial_states_match_the_reference(backend, plan, reference):
    states = backend.call(plan.trainers_all(), Worker.get_state)
    assert sorted(states) == sorted(reference["states"])
    for j, state in states.items():
        assert sorted(state) == sorted(reference["states"][j])
        for key in state:
            assert np.array_equal(state[key], reference["states"][j][key]), f"worker {j} {key}"


def test_step_and_attack_return_handles_the_backend_fetches(backend, plan, reference):
    trainers = plan.trainers(0)
    result = backend.step(trainers, 0, 0, 0, {})
    assert isinstance(result, StepResult) and not result.failures and sorted(result.vectors) == trainers
    fetched = backend.fetch([result.vectors[j] for j in trainers])
    for j, vector in zip(trainers, fetched, strict=True):
        assert vector.dtype == np.float32
        assert np.array_equal(vector, reference["vectors"][j]), f"worker {j}"
    attackers = plan.attackers(0)
    assert attackers, "the contract config has an attacker in group 0"
    attack = backend.attack(attackers, [result.vectors[j] for j in trainers], 0)
    assert sorted(attack.vectors) == attackers
    for j, vector in zip(attackers, backend.fetch([attack.vectors[j] for j in attackers]), strict=True):
        assert np.array_equal(vector, reference["attack"][j]), f"attacker {j}"


def test_deliver_applies_a_message_without_a_step(backend, plan):
    j = plan.trainers(0)[0]
    before = backend.call([j], Worker.parameters)[j]
    new = np.arange(before.size, dtype=np.float32) / before.size
    backend.deliver({j: Assign(backend.put(new))})
    after = backend.call([j], Worker.parameters)[j]
    assert np.array_equal(after, new) and not np.array_equal(after, before)


def test_a_failing_call_raises_and_the_backend_stays_usable(backend, plan):
    j = plan.trainers(0)[0]
    wrong = {"theta": np.zeros(3, dtype=np.float32), "momentum": np.zeros(3, dtype=np.float32)}
    with pytest.raises(Exception, match="state has shape"):
        backend.call([j], Worker.set_state, wrong)
    assert backend.call([j], Worker.data_ids, 0)[j]


def test_nodes_names_where_each_worker_runs(backend, plan):
    workers = [s.index for s in plan.specs]
    nodes = backend.nodes(workers)
    assert sorted(nodes) == workers
    assert all(isinstance(n, str) and n for n in nodes.values())
    if isinstance(backend, LocalBackend):
        assert set(nodes.values()) == {LOCAL_NODE}
    else:
        assert LOCAL_NODE not in nodes.values() and len(set(nodes.values())) == 1  # one Ray node here


def test_kill_restarts_the_worker_where_a_backend_can(backend, plan):
    j = plan.trainers(0)[0]
    before = backend.call([j], Worker.incarnation)[j]
    if isinstance(backend, LocalBackend):
        with pytest.raises(NotImplementedError, match="cannot kill"):
            backend.kill(j)
        assert backend.call([j], Worker.incarnation)[j] == before
        return
    backend.kill(j)
    deadline = time.monotonic() + 60
    after = before
    while after == before and time.monotonic() < deadline:  # the kill is asynchronous; calls wait for the restart
        after = backend.call([j], Worker.incarnation)[j]
        time.sleep(0.1)
    assert after != before, "the killed worker did not come back as a new process within 60 s"
    assert backend.call([j], Worker.data_ids, 0)[j]  # rebuilt from its store


def test_leaving_the_context_shuts_the_backend_down(backend):
    """Last: the module's backend ends here (shutting down twice is harmless: the fixture does it again)."""
    assert backend.call([0], Worker.data_ids, 0)[0]
    with backend:
        pass
    with pytest.raises(Exception):  # noqa: B017 - each backend fails in its own way; it must fail
        backend.call([0], Worker.data_ids, 0)
    backend.shutdown()
