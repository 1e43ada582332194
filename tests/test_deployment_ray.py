"""The warm deployment on real Ray actors: a deletion starts no actor and is bit-exact, and a worker
actor killed during the replay is restarted, its group's stage redone, and the result still exact."""

from __future__ import annotations

import re

import pytest

from ostracon.cluster import Deployment
from ostracon.cluster.execution.hooks import RoundHooks
from ostracon.cluster.unlearning import verify_state_dir

from helpers import assert_consistent, retrain_digests, trainer_ids

ON_RAY = {"backend.name": "ray"}
NO_GATE = {"unlearning.gate.max_test_drop": 1.0, "unlearning.gate.max_retain_drop": 1.0,
           "unlearning.gate.max_forget_gap": 1.0}

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_runtime")]


def pids(dep):
    backend = dep._live.backend
    return backend.pids(sorted(backend.actors))


def test_a_warm_deletion_on_ray_starts_no_actor_and_is_bit_exact(state, config):
    first, second = trainer_ids(config, 2, seed=71), trainer_ids(config, 1, seed=72)
    with Deployment(state, overrides=ON_RAY) as dep:
        assert dep.ready and dep.backend_name == "ray"
        before = pids(dep)
        for ids in (first, second):  # two deletions on the same warm actors
            op = dep.delete(ids)
            final = list(dep.watch(op.id))[-1][1]
            assert final.state == "SUCCEEDED", final.message
        assert pids(dep) == before, "a deletion started or restarted an actor"
        status = dep.status()
        assert status.backend == "ray" and all(w.alive and w.restarts == 0 for w in status.workers)
    deleted = first + second
    assert_consistent(state, config, deleted, retrain_digests(config, deleted))


def test_a_worker_killed_during_the_replay_is_redone_and_still_exact(state, config):
    ids = trainer_ids(config, 1, seed=81, groups=(0,))
    killed = {}

    def kill_worker_0_once(t, backend):
        if not killed:
            killed["pid"] = backend.pids([0])[0]
            backend.kill(0)

    with Deployment(state, overrides=ON_RAY, hooks=RoundHooks(kill_worker_0_once)) as dep:
        others = {j: p for j, p in pids(dep).items() if j != 0}
        op = dep.delete(ids)
        final = list(dep.watch(op.id))[-1][1]
        assert final.state == "SUCCEEDED", final.message
        cert = dep.certificate(op.id).to_dict()
        assert any("redone" in f["reason"] for f in cert["failures"]), cert["failures"]
        now = pids(dep)
        assert now[0] != killed["pid"], "Ray restarted the killed actor"
        assert {j: p for j, p in now.items() if j != 0} == others
        assert next(w for w in dep.status().workers if w.index == 0).restarts == 1
    assert_consistent(state, config, ids, retrain_digests(config, ids))


def test_a_worker_killed_during_an_approximate_update_falls_back_to_exact(state, config):
    """The approximate update runs on the live actors; an actor killed mid-update voids it (never
    published), and the request ends exact on the restarted actor."""
    ids = trainer_ids(config, 1, seed=91, groups=(0,))
    killed = {}

    def kill_worker_1_once(t, backend):
        if not killed:
            killed["pid"] = backend.pids([1])[1]
            backend.kill(1)

    with Deployment(state, overrides={**ON_RAY, **NO_GATE, "unlearning.method": "rl"},
                    hooks=RoundHooks(kill_worker_1_once)) as dep:
        op = dep.delete(ids, mode="approximate")
        final = list(dep.watch(op.id))[-1][1]
        assert final.state == "SUCCEEDED" and "rolled back" in final.message, final.message
        cert = dep.certificate(op.id).to_dict()
        assert cert["mode"] == "exact" and cert["requested_mode"] == "approximate"
        # the round that lost the actor, or the next call on the restarted one (which holds no unlearning job)
        assert re.search(r"died|ActorDied|ActorUnavailable|not unlearning|restarted", cert["phases"][0]["error"]), \
            cert["phases"][0]
        assert pids(dep)[1] != killed["pid"]
        op = dep.delete(trainer_ids(config, 1, seed=92, groups=(1,)), mode="approximate")  # the next one still works
        final = list(dep.watch(op.id))[-1][1]
        assert final.state == "SUCCEEDED" and dep.certificate(op.id).to_dict()["mode"] == "approximate", final.message
    report = verify_state_dir(state, allow_approximate=True)
    assert report["ok"] and list(report["approximate"]) == ["1"], report
