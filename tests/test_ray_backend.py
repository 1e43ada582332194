"""The Ray backend, for real: one actor per worker on a local Ray runtime shared by this module."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import ray
import torch

from ostracon.cluster.errors import ConfigError
from ostracon.cluster.execution.hooks import RoundHooks
from ostracon.cluster.execution.plan import load_config_dataset, make_plan
from ostracon.cluster.execution.ray_backend import RayBackend
from ostracon.cluster.execution.training import train
from ostracon.cluster.unlearning import locate, unlearn_state_dir, verify_state_dir
from ostracon.nodes.worker import Worker

from helpers import SISA, final_thetas, pick_ids, shard_rows, small_config

pytestmark = pytest.mark.usefixtures("ray_runtime")


def on_ray(config):
    return config.replace(**{"backend.name": "ray"})


@pytest.mark.parametrize("training", [
    {"protocol": "monna", "rule": "nna"},
    {"protocol": "server", "rule": "cwtm", "pre": ["nnm"]},
])
def test_local_and_ray_are_bit_identical(training):
    config = small_config(training={**training, "workers": 6, "f": 1, "rounds": 8, "eval_every": 4},
                          byzantine={"count": 1, "behaviour": "alie"}, unlearning={"slices": 2})
    local = train(config, progress=False)
    remote = train(on_ray(config), progress=False)
    assert sorted(local.parameters) == sorted(remote.parameters) == [0, 1, 2, 3, 4]
    for j in local.parameters:
        assert np.array_equal(local.parameters[j], remote.parameters[j]), f"worker {j} differs"
    assert local.summary["worker_digests"] == remote.summary["worker_digests"]
    assert [m["accuracy"] for m in local.metrics] == [m["accuracy"] for m in remote.metrics]


def test_killed_worker_mid_training_is_redone_exactly_and_verifies(tmp_path):
    """kill -9 of a worker actor mid-stage: Ray restarts it, the group's stage is redone from its start,
    and the published models are bit-identical to a run without the kill (so `verify` passes)."""
    config = small_config(training={"workers": 6, "f": 1, "rounds": 40, "eval_every": 20},
                          byzantine={"count": 1, "behaviour": "alie"}, unlearning={"slices": 2})
    reference = train(config, progress=False)  # local == ray without faults (test above)
    pids = {}

    def kill_worker_2_once(t, backend):
        if t == 15 and "before" not in pids:
            pids["before"] = backend.pids([2])[2]
            backend.kill(2)
        if t == 35:
            pids["after"] = backend.pids([2])[2]

    result = train(on_ray(config), tmp_path / "run", progress=False, hooks=RoundHooks(kill_worker_2_once))
    assert pids["before"] != pids["after"]  # a new process: Ray really restarted the actor
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    failures = [f for m in lines for f in m.get("failures", [])]
    assert any(f["worker"] == 2 and f["reason"] == "actor died" for f in failures), failures
    assert any("stage 0 redone" in f["reason"] for f in failures), failures
    assert result.summary["worker_digests"] == reference.summary["worker_digests"]
    report = verify_state_dir(tmp_path / "run")
    assert report["ok"], report["failures"]


def test_killed_worker_mid_replay_still_ends_bit_exact(tmp_path):
    config = on_ray(small_config(**SISA))
    state = tmp_path / "state"
    train(config, state, progress=False)
    plan = make_plan(config)
    where = locate(plan)
    ids = [i for i in pick_ids(config, 8, seed=9) if plan.specs[where[i][1]].trains][:4]
    victim = plan.trainers(where[ids[0]][0])[0]
    killed = []

    def kill_once(t, backend):
        if not killed:
            killed.append((t, backend.pids([victim])[victim]))
            backend.kill(victim)

    cert = unlearn_state_dir(state, ids, hooks=RoundHooks(kill_once))
    assert killed
    assert any(f["worker"] == victim and f["reason"] == "actor died" for f in cert["failures"]), cert["failures"]
    assert any("redone" in f["reason"] for f in cert["failures"]), cert["failures"]
    fresh = train(config.replace(**{"backend.name": "local"}), None, progress=False,
                  dataset=load_config_dataset(config).without(ids))
    assert cert["group_digests"] == fresh.summary["group_digests"]
    assert cert["worker_digests"] == fresh.summary["worker_digests"]


def test_a_crash_between_promotions_on_ray_is_finished_exactly(tmp_path):
    """Fault injection on Ray: the process dies after the first checkpoint promotion; the next
    request finishes it, and both deletions end bit-exact."""
    from ostracon.cluster import faults

    config = on_ray(small_config(**SISA))
    state = tmp_path / "state"
    train(config, state, progress=False)
    plan = make_plan(config)
    where = locate(plan)
    honest = [i for i in pick_ids(config, 10, seed=21) if plan.specs[where[i][1]].trains]
    first, later = honest[:2], honest[2:3]
    with faults.armed("deletion.promoted:*"), pytest.raises(faults.InjectedFault):
        unlearn_state_dir(state, first)
    cert = unlearn_state_dir(state, later)
    assert cert["recovered"] == [1] and cert["deleted"] == later
    fresh = train(config.replace(**{"backend.name": "local"}), None, progress=False,
                  dataset=load_config_dataset(config).without(first + later))
    assert cert["group_digests"] == fresh.summary["group_digests"]
    assert verify_state_dir(state, retrain=False)["ok"]


def test_straggler_run_with_a_deadline_verifies(tmp_path):
    """A worker that misses round deadlines: the events are recorded, and replays and verify impose them."""
    config = on_ray(small_config(training={"workers": 4, "f": 1, "rounds": 8, "eval_every": 8,
                                           "round_deadline_s": 0.15},
                                 byzantine={"count": 1, "behaviour": "straggler", "params": {"delay_s": 0.4}},
                                 unlearning={"slices": 2}))
    state = tmp_path / "state"
    result = train(config, state, progress=False)
    assert result.summary["schedule_events"] > 0, "the straggler never missed a deadline"
    events = result.schedule.events
    assert {j for rounds in events.values() for w in rounds.values() for j in w} == {3}
    # Every round the straggler was absent, it spent the group's whole budget (f = 1); replays impose it.
    assert result.schedule.budgets == {k: dict.fromkeys(rounds, 0) for k, rounds in events.items()}
    report = verify_state_dir(state)
    assert report["ok"], report["failures"]
    where = locate(make_plan(config))
    victim = next(i for i in sorted(where) if where[i][1] == 0 and where[i][2] == 0)
    cert = unlearn_state_dir(state, [victim])
    fresh = train(config, None, progress=False, exclude=[victim], schedule=result.schedule)
    assert cert["group_digests"] == fresh.summary["group_digests"]


def test_exact_unlearning_on_ray_is_bit_identical_to_retraining(tmp_path):
    config = on_ray(small_config(**SISA))
    state = tmp_path / "state"
    train(config, state, progress=False)
    ids = pick_ids(config, 5, seed=7)
    cert = unlearn_state_dir(state, ids)
    assert set(cert["groups"]) == {"0", "1"}
    # Retrain from scratch in-process: local == ray bit for bit (test_local_and_ray_are_bit_identical).
    fresh = train(config.replace(**{"backend.name": "local"}), None, progress=False,
                  dataset=load_config_dataset(config).without(ids))
    replayed = final_thetas(state, config)
    for j, theta in fresh.parameters.items():
        assert torch.equal(replayed[j], torch.from_numpy(theta)), f"worker {j} differs"
    assert cert["group_digests"] == fresh.summary["group_digests"]


def test_restarted_actor_never_sees_a_deleted_sample(tmp_path):
    config = small_config(training={"workers": 4, "f": 1, "rounds": 8, "eval_every": 8},
                          byzantine={"count": 1, "behaviour": "alie"})
    state = tmp_path / "state"
    train(config, state, progress=False)
    where = locate(make_plan(config))
    victim = next(i for i in sorted(where) if where[i][1] == 1)
    unlearn_state_dir(state, [victim])
    plan = make_plan(on_ray(config), state_dir=state)
    backend = RayBackend(on_ray(config))
    try:
        backend.start(plan.specs, plan.shards)  # built from the ORIGINAL rows + the store on disk
        assert victim not in backend.call([1], Worker.data_ids, 0)[1]
        pid = backend.pids([1])[1]
        backend.kill(1)
        deadline = time.monotonic() + 60
        while backend.pids([1])[1] == pid:  # control calls wait while Ray restarts the actor
            assert time.monotonic() < deadline, "the actor was not restarted"
            time.sleep(0.2)
        ids = backend.call([1], Worker.data_ids, 0)[1]
        assert victim not in ids and len(ids) == len(shard_rows(plan, 1).ids) - 1
    finally:
        backend.shutdown()


def test_bad_config_fails_before_any_actor_starts(tmp_path, capsys):
    from ray._private import state as ray_state  # the public state API needs the dashboard

    from ostracon.cluster.cli import main

    config = tmp_path / "c.toml"
    config.write_text('[training]\nworkers = 6\nf = 1\n[backend]\nname = "ray"\n')
    before = len(ray_state.actors())
    assert main(["train", "-c", str(config), "-o", str(tmp_path / "out"), "--set", "training.f=3"]) == 2
    assert "training.f" in capsys.readouterr().err
    assert len(ray_state.actors()) == before
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="training.f"):
        on_ray(small_config()).replace(**{"training.f": 3})


def test_placement_group_wait_is_bounded_by_start_timeout(tmp_path):
    from ostracon.cluster.errors import ClusterError

    # 4 bundles of 2 CPUs on a 2-CPU runtime can never be placed: fail after start_timeout_s, naming it.
    config = on_ray(small_config(training={"workers": 4, "f": 1, "rounds": 2, "eval_every": 2},
                                 backend={"placement": "pack", "num_cpus": 2.0, "start_timeout_s": 1.0}))
    with pytest.raises(ClusterError, match=r"backend\.placement = 'pack'.*start_timeout_s = 1s"):
        train(config, progress=False)
    assert not ray.util.placement_group_table() or all(
        pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())
