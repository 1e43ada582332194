"""Approximate unlearning on real data: each method forgets on every honest model with a Byzantine
worker in the group, bad hyperparameters change nothing, SalUn leaves its masked-out weights alone,
the gate rolls back a destructive update to exact, unlearning debt makes the next exact replay start
early enough, a crash at any step is finished, and ``verify`` never calls an approximate group a match."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from ostracon.cluster import faults
from ostracon.cluster.errors import ConfigError
from ostracon.cluster.execution.plan import make_plan
from ostracon.cluster.execution.training import train
from ostracon.cluster.storage.ledger import open_ledger
from ostracon.cluster.unlearning import locate, unlearn_state_dir, verify_state_dir
from ostracon.cluster.unlearning.trained import final_thetas, open_state
from ostracon.nodes.approximate import METHODS
from ostracon.nodes.sources import read_index, read_rows
from ostracon.nodes.worker import probabilities_model

from helpers import assert_consistent, attacker_id, retrain_digests, shard_rows, small_config, trainer_ids, tree_bytes

# One group of 5 MoNNA workers, one of them a Byzantine ALIE attacker, trained long enough to be good.
METHOD_CONFIG = dict(training={"workers": 5, "f": 1, "rounds": 120, "eval_every": 120},
                     byzantine={"count": 1, "behaviour": "alie"}, unlearning={"groups": 1, "slices": 2})
FORGET_CLASS = 3
NO_GATE = {"unlearning.gate.max_test_drop": 1.0, "unlearning.gate.max_retain_drop": 1.0,
           "unlearning.gate.max_forget_gap": 1.0}


@pytest.fixture(scope="module")
def method_config():
    return small_config(**METHOD_CONFIG)


@pytest.fixture(scope="module")
def method_state(tmp_path_factory, method_config):
    state = tmp_path_factory.mktemp("methods") / "state"
    train(method_config, state, progress=False)
    return state


def class_ids(config, label):
    """Every training id of class ``label`` held by a worker that trains on it."""
    plan = make_plan(config)
    out = []
    for j in plan.shards:
        if plan.specs[j].trains:
            data = shard_rows(plan, j)
            out += data.ids[data.labels == label].tolist()
    return sorted(out)


def honest_models(state) -> tuple[dict, object]:
    st = open_state(state, readonly=True)
    try:
        _, record = st.ledger.latest_version()
        return final_thetas(st, record), st.plan
    finally:
        st.close()


def forget_confidence(plan, thetas, config, ids):
    """Per honest worker: (accuracy, mean true-class probability) on ``ids``."""
    source = make_plan(config).source
    features, labels = read_rows(source, read_index(source), ids)
    x = torch.from_numpy(features.astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    out = {}
    for j, theta in thetas.items():
        with torch.no_grad():
            p = torch.softmax(probabilities_model(plan.specs[j], theta)(x), 1)
        out[j] = (float((p.argmax(1) == y).float().mean()), float(p.gather(1, y[:, None]).mean()))
    return out


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_forgets_on_every_honest_model_with_a_byzantine_worker(tmp_path, method_state, method_config,
                                                                           method):
    ids = class_ids(method_config, FORGET_CLASS)
    before_models, plan = honest_models(method_state)
    assert any(s.is_byzantine for s in plan.specs) and len(before_models) == 4
    before = forget_confidence(plan, before_models, method_config, ids)
    assert min(acc for acc, _ in before.values()) > 0.8  # the class was learned
    state = tmp_path / "state"
    shutil.copytree(method_state, state)
    cert = unlearn_state_dir(state, ids, mode="approximate", method=method, overrides=NO_GATE)
    assert cert["mode"] == "approximate" and cert["method"] == method
    assert "NOT claimed equal" in cert["guarantee"] and "group_digests" not in cert  # no exactness claim
    after = forget_confidence(plan, honest_models(state)[0], method_config, ids)
    for j in before:
        assert after[j][1] < before[j][1] - 0.05, (method, j, before[j], after[j])  # every honest model forgets
    with open_ledger(state, readonly=True) as ledger:
        _, record = ledger.latest_version()
    assert list(record.debts["0"].ids) == sorted(ids) and record.debts["0"].earliest_stage == 0


@pytest.mark.parametrize("method", sorted(METHODS))
def test_invalid_hyperparameters_fail_before_anything_changes(state, config, method):
    good = trainer_ids(config, 1, seed=4)
    before = tree_bytes(state)
    field = "alpha" if method == "ssd" else "lr"
    for overrides, message in (({f"unlearning.{method}.{field}": -1.0}, f"unlearning.{method}.{field} must be"),
                               ({f"unlearning.{method}.no_such_param": 1}, f"unlearning.{method}.no_such_param"),
                               ({f"unlearning.{method}.{field}": "fast"},
                                f"unlearning.{method}.{field} must be a number")):
        with pytest.raises(ConfigError, match=message):
            unlearn_state_dir(state, good, mode="approximate", method=method, overrides=overrides)
        assert tree_bytes(state) == before
    with pytest.raises(ConfigError, match="unknown unlearning method 'nope'"):
        unlearn_state_dir(state, good, mode="approximate", method="nope")
    with pytest.raises(Exception, match="only backend"):
        unlearn_state_dir(state, good, mode="approximate", overrides={"training.lr": 1.0})
    assert tree_bytes(state) == before


def test_salun_leaves_masked_out_weights_bit_identical(tmp_path, method_state, method_config):
    ids = class_ids(method_config, FORGET_CLASS)
    before, _ = honest_models(method_state)
    state = tmp_path / "state"
    shutil.copytree(method_state, state)
    unlearn_state_dir(state, ids, mode="approximate", method="salun",
                      overrides={**NO_GATE, "unlearning.salun.sparsity": 0.2})
    after, _ = honest_models(state)
    changed = {j: np.flatnonzero(after[j] != before[j]) for j in before}
    d = before[next(iter(before))].size
    for j in before:
        assert 0 < changed[j].size <= int(round(0.2 * d)), (j, changed[j].size, d)
        assert np.array_equal(after[j][np.setdiff1d(np.arange(d), changed[j])],
                              before[j][np.setdiff1d(np.arange(d), changed[j])])
    union = np.unique(np.concatenate(list(changed.values())))
    assert union.size <= int(round(0.2 * d))  # one shared mask: every honest model moved inside it only


def test_a_destructive_update_is_rolled_back_and_the_request_ends_exact(state, config):
    ids = trainer_ids(config, 2, seed=11)
    cert = unlearn_state_dir(state, ids, mode="approximate", method="ga",
                             overrides={"unlearning.ga.lr": 1000.0, "unlearning.ga.steps": 3})
    assert cert["mode"] == "exact" and cert["requested_mode"] == "approximate"
    approximate, exact = cert["phases"]
    assert approximate["passed"] is False and approximate["outcome"].startswith("rolled back")
    assert any("dropped" in r or "not finite" in r for g in approximate["groups"].values() for r in g["gate"]["failed"])
    assert exact["mode"] == "exact"
    assert_consistent(state, config, ids, retrain_digests(config, ids))
    with open_ledger(state, readonly=True) as ledger:
        assert ledger.latest_version()[1].debt is None


def _slice_of(config, i):
    return locate(make_plan(config))[i][2]


def test_debt_makes_a_later_exact_replay_start_early_enough(state, config):
    plan = make_plan(config)
    where = locate(plan)
    trains = [i for i, (g, j, _) in sorted(where.items()) if g == 0 and plan.specs[j].trains]
    first = next(i for i in trains if where[i][2] == 0)  # approximate: slice 0, the checkpoints all carry it
    later = next(i for i in trains if where[i][2] == 3)  # exact: slice 3 alone would replay only stage 3
    cert = unlearn_state_dir(state, [first], mode="approximate", method="ft", overrides=NO_GATE)
    assert cert["mode"] == "approximate" and cert["unlearning_debt"]["0"]["earliest_stage"] == 0
    report = verify_state_dir(state)
    assert not report["ok"] and [f["name"] for f in report["failures"]] == ["APPROXIMATE_NOT_VERIFIABLE"]
    assert report["groups"]["0"]["match"] is None and report["groups"]["1"]["match"] is True
    allowed = verify_state_dir(state, allow_approximate=True)
    assert allowed["ok"] and "0" in allowed["approximate"]
    cert = unlearn_state_dir(state, [later])
    assert cert["groups"]["0"]["restarted_from_stage"] == 0  # no later than the debt, though `later` is in slice 3
    state_json = json.loads((state / "state.json").read_text())
    assert state_json["unlearning_debt"] == {} and state_json["approximate_models"] == {}
    assert_consistent(state, config, [first, later], retrain_digests(config, [first, later]))


def test_approximate_then_exact_publishes_both_and_ends_exact(state, config):
    ids = trainer_ids(config, 2, seed=13)
    cert = unlearn_state_dir(state, ids, mode="approximate_then_exact", method="ft", overrides=NO_GATE)
    assert cert["mode"] == "exact" and cert["requested_mode"] == "approximate_then_exact"
    approximate, exact = cert["phases"]
    assert approximate["outcome"] == "published" and approximate["model_version_after"] == 2
    assert approximate["groups"] and all("metrics_after" in g for g in approximate["groups"].values())
    assert exact["model_version_after"] == 3 and exact["groups"]
    with open_ledger(state, readonly=True) as ledger:
        versions = ledger.versions()
    assert [v for v, _, _ in versions] == [1, 2, 3] and versions[1][2].debt and versions[2][2].debt is None
    assert_consistent(state, config, ids, retrain_digests(config, ids))


def test_a_crash_at_every_step_of_an_approximate_deletion_is_finished(tmp_path, trained, config):
    ids = trainer_ids(config, 2, seed=17)
    later = trainer_ids(config, 1, seed=18, groups=(1,))
    digests = retrain_digests(config, ids + later)
    probe = tmp_path / "probe"
    shutil.copytree(trained, probe)
    with faults.recording() as points:
        unlearn_state_dir(probe, ids, mode="approximate_then_exact", method="ft", overrides=NO_GATE)
    kinds = {p.split(":")[0] for p in points}
    assert {"deletion.journaled", "approximate.updated", "deletion.tombstoned", "approximate.saved",
            "approximate.published", "deletion.replayed", "deletion.published", "deletion.done"} <= kinds, points
    for point in dict.fromkeys(points):  # a name met twice (both phases tombstone) crashes at its first
        work = tmp_path / point.replace(":", "_").replace("/", "_")
        shutil.copytree(trained, work)
        with faults.armed(point), pytest.raises(faults.InjectedFault):
            unlearn_state_dir(work, ids, mode="approximate_then_exact", method="ft", overrides=NO_GATE)
        report = verify_state_dir(work, retrain=False)
        assert report["ok"], (point, report["failures"])  # half-done: pending, never a mismatch
        cert = unlearn_state_dir(work, later)  # the next command finishes the interrupted one (exactly)
        assert cert["deleted"] == later
        assert_consistent(work, config, ids + later, digests)


def test_verify_cli_exit_codes_for_an_approximate_state(state, config):
    ids = trainer_ids(config, 1, seed=19)
    cli = [sys.executable, "-m", "ostracon.cluster.cli"]
    done = subprocess.run(cli + ["unlearn", "--state-dir", str(state), "--ids", ids[0], "--mode", "approximate",
                                 "--method", "ft", "--set", "unlearning.gate.max_test_drop=1",
                                 "--set", "unlearning.gate.max_retain_drop=1",
                                 "--set", "unlearning.gate.max_forget_gap=1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "APPROXIMATELY with ft" in done.stdout and "unlearning debt" in done.stdout
    failed = subprocess.run(cli + ["verify", "--state-dir", str(state)], capture_output=True, text=True)
    assert failed.returncode == 1 and "approximate, not verifiable" in failed.stdout, failed.stdout
    passed = subprocess.run(cli + ["verify", "--state-dir", str(state), "--allow-approximate"],
                            capture_output=True, text=True)
    assert passed.returncode == 0 and "APPROXIMATE, not verifiable" in passed.stdout, passed.stdout
    bad = subprocess.run(cli + ["unlearn", "--state-dir", str(state), "--ids", ids[0], "--method", "ft"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "needs an approximate mode" in bad.stderr


def test_a_damaged_approximate_model_is_repaired_by_the_next_request(state, config):
    first, second = trainer_ids(config, 2, seed=23, groups=(0,))
    unlearn_state_dir(state, [first], mode="approximate", method="ft", overrides=NO_GATE)
    with open_ledger(state, readonly=True) as ledger:
        approximate_file = state / "checkpoints" / ledger.latest_version()[1].approximate_models["0"].file
    approximate_file.write_bytes(approximate_file.read_bytes()[:-7] + b"garbage")
    report = verify_state_dir(state, retrain=False, allow_approximate=True)
    assert [f["name"] for f in report["failures"]] == ["CHECKPOINT_HASH_MISMATCH"], report["failures"]
    cert = unlearn_state_dir(state, [second], mode="approximate", method="ft", overrides=NO_GATE)
    assert cert["mode"] == "exact" and "damaged" in cert["phases"][0]["error"]
    assert any("approximate model of group 0" in r for r in cert["repairs"]), cert["repairs"]
    assert_consistent(state, config, [first, second], retrain_digests(config, [first, second]))


def test_kill_9_after_the_approximate_model_is_saved_ends_exact(tmp_path, trained, config):
    """A real kill -9 between saving the approximate model and publishing it: nothing approximate was
    published, so `--resume` finishes the request exactly (the certificate says the update was interrupted)."""
    import os

    ids = trainer_ids(config, 2, seed=29)
    state = tmp_path / "state"
    shutil.copytree(trained, state)
    cli = [sys.executable, "-m", "ostracon.cluster.cli", "unlearn", "--state-dir", str(state)]
    gate_off = [a for key, value in NO_GATE.items() for a in ("--set", f"{key}={value}")]
    crashed = subprocess.run(cli + ["--ids", ",".join(ids), "--mode", "approximate", "--method", "rl"] + gate_off,
                             env=dict(os.environ, OSTRACON_FAULT="approximate.saved:*"), capture_output=True, text=True)
    assert crashed.returncode == -9, crashed.stderr
    assert verify_state_dir(state, retrain=False)["pending"]
    done = subprocess.run(cli + ["--resume"], capture_output=True, text=True)
    assert done.returncode == 0 and "finished 1 interrupted request" in done.stdout, done.stdout + done.stderr
    [name] = [p.name for p in (state / "certificates").iterdir()]
    cert = json.loads((state / "certificates" / name).read_text())
    assert cert["mode"] == "exact" and cert["requested_mode"] == "approximate"
    assert "interrupted" in cert["phases"][0]["outcome"]
    assert_consistent(state, config, ids, retrain_digests(config, ids))


def test_ids_no_model_read_are_deleted_exactly_even_in_approximate_mode(state, config):
    ids = [attacker_id(config)]
    cert = unlearn_state_dir(state, ids, mode="approximate", method="salun")
    assert cert["mode"] == "exact" and cert["not_replayed"] == ids and cert["gradient_evaluations"] == 0
    assert cert["phases"][0]["outcome"].startswith("not needed")
    assert_consistent(state, config, ids, retrain_digests(config, ids))
