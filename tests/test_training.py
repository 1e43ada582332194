"""Training on the in-process backend: outputs, determinism, protocols, faults."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ostracon.cluster.execution.training import train
from ostracon.cluster.storage.statedir import StateDirError

from helpers import small_config


def test_monna_trains_digits_and_writes_outputs(tmp_path):
    config = small_config(training={"rounds": 60, "eval_every": 20})
    result = train(config, tmp_path / "run", progress=False)
    out = tmp_path / "run"
    resolved = json.loads((out / "config.json").read_text())
    assert resolved == config.to_dict()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [0, 20, 40, 60]  # round 0: the initial models
    honest = [str(s) for s in range(5)]  # workers 0..4 honest, 5 Byzantine
    assert sorted(lines[-1]["accuracy"]) == honest
    summary = json.loads((out / "summary.json").read_text())
    assert summary == result.summary
    assert summary["honest_test_accuracy"]["min"] > 0.8, summary
    assert summary["rounds"] == 60
    # 5 honest trainers x batch 32 x 60 rounds (the ALIE worker computes no gradient)
    assert summary["gradient_evaluations"] == 5 * 32 * 60
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(summary["worker_digests"]) == set(honest)
    # Accuracy improves over training.
    assert lines[-1]["honest_accuracy"]["mean"] >= lines[0]["honest_accuracy"]["mean"]


def test_same_seed_is_bit_identical_and_seed_matters():
    config = small_config(training={"rounds": 10, "eval_every": 10})
    a = train(config, progress=False)
    b = train(config, progress=False)
    assert a.summary["worker_digests"] == b.summary["worker_digests"]
    for j in a.parameters:
        assert np.array_equal(a.parameters[j], b.parameters[j])
    c = train(config.replace(seed=1), progress=False)
    assert c.summary["worker_digests"] != a.summary["worker_digests"]


def test_server_protocol_all_honest_share_one_model():
    config = small_config(training={"protocol": "server", "rule": "cwtm", "rounds": 60, "eval_every": 60,
                                    "pre": ["nnm"]},
                          byzantine={"count": 1, "behaviour": "sign_flip"})
    result = train(config, progress=False)
    digests = set(result.summary["worker_digests"].values())
    assert len(digests) == 1  # the server broadcasts one model
    assert result.summary["honest_test_accuracy"]["min"] > 0.6


def test_dsgd_breaks_under_gaussian_attack_while_monna_holds():
    attack = {"count": 2, "behaviour": "gaussian"}
    dsgd = train(small_config(training={"protocol": "server", "rule": "mean", "f": 2, "rounds": 40},
                              byzantine=attack), progress=False)
    monna = train(small_config(training={"f": 2, "rounds": 60}, byzantine=attack), progress=False)
    assert dsgd.summary["honest_test_accuracy"]["max"] < 0.5
    assert monna.summary["honest_test_accuracy"]["min"] > 0.75


def test_crashed_worker_is_absent_and_reported(tmp_path):
    config = small_config(training={"rounds": 40, "eval_every": 20},
                          byzantine={"count": 1, "behaviour": "crash", "params": {"round": 5}})
    train(config, tmp_path / "run", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    failures = [f for m in lines for f in m["failures"]]
    assert {f["worker"] for f in failures} == {5}
    assert sorted(f["round"] for f in failures) == list(range(5, 40))
    assert lines[-1]["honest_accuracy"]["min"] > 0.5


def test_label_flip_worker_trains_on_flipped_labels():
    config = small_config(training={"rounds": 20, "eval_every": 20},
                          byzantine={"count": 1, "behaviour": "label_flip"})
    result = train(config, progress=False)
    # label_flip workers compute gradients: 6 trainers x 32 x 20
    assert result.summary["gradient_evaluations"] == 6 * 32 * 20


def test_refuses_to_overwrite_a_trained_state(tmp_path):
    config = small_config(training={"rounds": 4, "eval_every": 4})
    train(config, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "summary.json").read_bytes()
    with pytest.raises(StateDirError, match="already holds a trained state"):
        train(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "summary.json").read_bytes() == before


def test_groups_train_in_isolation_and_vote():
    config = small_config(training={"workers": 3, "f": 1, "rounds": 90, "eval_every": 90},
                          byzantine={"count": 0}, unlearning={"groups": 2, "slices": 3})
    result = train(config, progress=False)
    assert set(result.summary["group_digests"]) == {"0", "1"}
    assert result.summary["group_digests"]["0"] != result.summary["group_digests"]["1"]
    assert result.summary["ensemble_test_accuracy"] > 0.7


def test_straggler_misses_the_round_deadline(tmp_path):
    config = small_config(training={"rounds": 6, "eval_every": 6, "round_deadline_s": 0.05},
                          byzantine={"count": 1, "behaviour": "straggler", "params": {"delay_s": 0.1}})
    train(config, tmp_path / "run", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    failures = [f for m in lines for f in m["failures"]]
    assert [(f["round"], f["worker"], f["reason"]) for f in failures] == [
        (t, 5, "missed deadline") for t in range(6)]


def test_bucketing_is_seeded_and_a_shrunken_round_keeps_training(tmp_path):
    """Randomised pre-aggregation is reproducible, and crashed workers never make the rule refuse its f."""
    config = small_config(training={"protocol": "server", "rule": "cwtm", "workers": 9, "f": 2, "rounds": 30,
                                    "eval_every": 30, "pre": [{"name": "bucketing", "bucket_size": 2}]},
                          byzantine={"count": 2, "behaviour": "crash", "params": {"round": 2}})
    a = train(config, tmp_path / "a", progress=False)
    b = train(config, progress=False)
    assert a.summary["worker_digests"] == b.summary["worker_digests"]
    assert len(a.summary["worker_digests"]) == 7
    assert a.summary["failures"] == 2 * 28  # both crashed workers absent from round 2 on
    c = train(config.replace(seed=5), progress=False)
    assert c.summary["worker_digests"] != a.summary["worker_digests"]


def test_mimic_variant_attacker_resumes_bit_identically_from_its_state():
    # Exact replay restarts workers from get_state(): the attacker's warm-up state must come back too.
    from ostracon.cluster.execution.backend import build_worker
    from ostracon.cluster.execution.plan import make_plan

    plan = make_plan(small_config(byzantine={"count": 1, "behaviour": "mimic_variant", "params": {"warmup": 4}}))
    attacker = plan.specs[plan.attackers(0)[0]]
    d = build_worker(attacker, plan.shards[attacker.index]).parameters().shape[0]
    rng = np.random.default_rng(0)
    # 5 honest vectors per round, spread mostly along a few directions that change with the round
    vectors = {t: [(rng.standard_normal(d) * (1 + i)).astype(np.float32) for i in range(5)] for t in range(8)}
    one = build_worker(attacker, plan.shards[attacker.index])
    full = [one.attack(vectors[t], t) for t in range(8)]
    first = build_worker(attacker, plan.shards[attacker.index])
    for t in range(3):
        first.attack(vectors[t], t)
    state = first.get_state()
    assert {"theta", "momentum", "mimic_direction", "mimic_target"} <= set(state)
    assert all(v.dtype == np.float32 for v in state.values())
    resumed = build_worker(attacker, plan.shards[attacker.index])
    resumed.set_state(state)
    later = [resumed.attack(vectors[t], t) for t in range(3, 8)]
    assert all(np.array_equal(a, b) for a, b in zip(full[3:], later, strict=True))
    fresh = build_worker(attacker, plan.shards[attacker.index])  # without the state it may pick differently
    assert fresh.get_state().keys() == {"theta", "momentum"}
    # after the warm-up (4 rounds) the target is fixed: the copy follows one honest index
    targets = {next(i for i, v in enumerate(vectors[t]) if np.array_equal(v, full[t])) for t in range(4, 8)}
    assert len(targets) == 1


def test_a_diverged_monna_worker_finishes_the_run():
    # D-SGD (monna + mean) under FOE with eps = 9: the mean is -2 x the honest mean each round, so the
    # parameters overflow; the run must end with non-finite models (scored 0), not a refused pivot.
    config = small_config(training={"rule": "mean", "f": 1, "rounds": 150, "eval_every": 150, "lr": 0.5},
                          byzantine={"count": 2, "behaviour": "foe", "params": {"eps": 9.0}})
    result = train(config, progress=False)
    assert not all(np.isfinite(theta).all() for theta in result.parameters.values())
    assert result.summary["honest_test_accuracy"]["max"] == 0.0


def test_set_deterministic_turns_on_deterministic_kernels_in_a_fresh_process():
    """The eager flag alone (no torch._inductor import: ~1 s per Ray actor) still selects deterministic kernels."""
    import subprocess
    import sys

    code = ("import sys, torch; from ostracon.nodes.seeding import set_deterministic; set_deterministic(1); "
            "print(torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "1"]
