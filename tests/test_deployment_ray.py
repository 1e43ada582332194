"""The warm deployment on real Ray actors: a deletion starts no actor and is bit-exact, and a worker
actor killed during the replay is restarted, its group's stage redone, and the result still exact."""

from __future__ import annotations


import pytest

from ostracon.cluster import Deployment
from test_deletion_core import assert_consistent, retrain_digests, trainer_ids

pytestmark = pytest.mark.slow

ON_RAY = {"backend.name": "ray"}


pytestmark = pytest.mark.usefixtures("ray_runtime")


def pids(dep):
    backend = dep._live.backend
    return backend.call(sorted(backend.actors), "pid")


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
            killed["pid"] = backend.call([0], "pid")[0]
            backend.kill(0)

    with Deployment(state, overrides=ON_RAY, on_round=kill_worker_0_once) as dep:
        others = {j: p for j, p in pids(dep).items() if j != 0}
        op = dep.delete(ids)
        final = list(dep.watch(op.id))[-1][1]
        assert final.state == "SUCCEEDED", final.message
        cert = dep.certificate(op.id)
        assert any("redone" in f["reason"] for f in cert["failures"]), cert["failures"]
        now = pids(dep)
        assert now[0] != killed["pid"], "Ray restarted the killed actor"
        assert {j: p for j, p in now.items() if j != 0} == others
        assert next(w for w in dep.status().workers if w.index == 0).restarts == 1
    assert_consistent(state, config, ids, retrain_digests(config, ids))
