"""Bring your own model: ``model.name = "package.module:function"`` (tests/byo_models.py), with BatchNorm,
dropout and registered buffers, trained for real on digits, deleted exactly and verified, locally and on Ray."""

from __future__ import annotations

import byo_models
import numpy as np
import pytest
import ray
import torch

from ostracon.cluster.cli import main
from ostracon.cluster.errors import ConfigError
from ostracon.cluster.execution.backend import build_worker
from ostracon.cluster.execution.plan import load_config_dataset, make_plan, validate_run
from ostracon.cluster.execution.training import train
from ostracon.cluster.storage.checkpoints import CheckpointStore
from ostracon.cluster.unlearning import locate, unlearn_state_dir, verify_state_dir
from ostracon.nodes.models import (
    MODELS,
    build_model,
    flat_parameters,
    model_buffers,
    model_digest,
    parameter_digest,
)
from ostracon.nodes.worker import (
    BUFFER_PREFIX,
    evaluate_model,
    probabilities_model,
    spec_model,
    weights_digest,
)

from helpers import SISA, small_config

USER = "byo_models:buffered_net"


def late_ids(config, stage):
    """One id per group from an honest trainer's slice ``stage``: the replay must start from the checkpoint of
    stage ``stage - 1`` (parameters, momentum and buffers), not from the initial model."""
    plan = make_plan(config)
    where = sorted(locate(plan).items())
    return [next(i for i, (gg, j, s) in where if gg == g and s == stage and plan.specs[j].trains)
            for g in plan.groups]


def user_config(**sections):
    sections = {**SISA, **sections}
    return small_config(model={"name": USER, "params": {"hidden": 16, "dropout": 0.1}}, **sections)


def test_a_user_build_is_seeded_bit_for_bit_and_leaves_the_global_rng_alone():
    def build(seed):
        return build_model(USER, input_shape=(64,), num_classes=10, seed=seed, hidden=16)

    state = torch.get_rng_state()
    a = build(5)
    assert torch.equal(torch.get_rng_state(), state), "building must not consume or reseed the global RNG"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(999)  # a different global RNG state must not matter
        b = build(5)
    c = build(6)
    assert torch.equal(flat_parameters(a), flat_parameters(b))
    assert not torch.equal(flat_parameters(a), flat_parameters(c))
    assert model_digest(a) == model_digest(b) != model_digest(c)
    buffers = model_buffers(a)
    assert buffers["bn.num_batches_tracked"].dtype == np.int64 and buffers["rows_seen"].dtype == np.int64
    # The module's own initialisation (nn.Linear.reset_parameters) under the seed, not the built-ins' rule.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        own = byo_models.buffered_net(input_shape=(64,), num_classes=10, hidden=16)
    assert torch.equal(flat_parameters(own), flat_parameters(a))
    assert a.training


def test_builtin_digests_are_parameter_digests():
    """A model without buffers digests as before (the demo's digests and tests/fixtures/state_v0 rely on it)."""
    model = build_model("mlp", input_shape=(64,), num_classes=10, seed=0, hidden=16)
    theta = flat_parameters(model)
    assert model_buffers(model) == {}
    assert model_digest(model) == parameter_digest(theta) == weights_digest(theta.numpy())
    assert MODELS == ("logreg", "mlp", "cnn", "resnet18")
    user = build_model(USER, input_shape=(64,), num_classes=10, seed=0)
    assert model_digest(user) != parameter_digest(user), "buffers are part of a user model's digest"


@pytest.mark.parametrize("name,match", [
    ("no_such_package_xyz.models:net", r"^model\.name = 'no_such_package_xyz\.models:net': cannot import"),
    ("byo_models:missing", r"^model\.name = 'byo_models:missing': module 'byo_models' has no attribute"),
    ("byo_models:NOT_CALLABLE", r"^model\.name = 'byo_models:NOT_CALLABLE': 'NOT_CALLABLE' is not callable"),
])
def test_a_model_path_that_does_not_resolve_is_a_config_error(name, match):
    with pytest.raises(ConfigError, match=match) as info:
        small_config(model={"name": name})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name,match", [
    ("byo_models:not_a_module", "returned a list, not a torch.nn.Module"),
    ("byo_models:broken", "failed: RuntimeError: this builder always fails$"),
])
def test_a_builder_that_fails_is_a_config_error_before_training(name, match):
    config = small_config(model={"name": name, "params": {}})  # it imports: the config is valid
    with pytest.raises(ConfigError, match=match) as info:
        validate_run(config)
    assert "model.name = " in str(info.value) and "\n" not in str(info.value)


def test_train_refuses_a_bad_model_path_before_creating_its_output(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('[model]\nname = "no_such_package_xyz:net"\n')
    out = tmp_path / "out"
    assert main(["train", "-c", str(config), "-o", str(out), "--no-progress"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("ostracon: error: model.name = 'no_such_package_xyz:net': cannot import") and "\n" not in err
    assert not out.exists()


def test_buffers_are_worker_state_in_their_own_dtype_and_stay_local(tmp_path):
    config = user_config()
    state = tmp_path / "state"
    result = train(config, state, progress=False)
    plan = make_plan(config)
    store = CheckpointStore(state)
    last = config.unlearning.slices - 1
    states = store.states(0, last)
    honest = plan.honest(0)
    for j in honest:
        s = states[j]
        assert s["theta"].dtype == np.float32
        assert s[BUFFER_PREFIX + "bn.num_batches_tracked"].dtype == np.int64
        assert s[BUFFER_PREFIX + "rows_seen"].dtype == np.int64
        assert int(s[BUFFER_PREFIX + "rows_seen"]) == int(s[BUFFER_PREFIX + "bn.num_batches_tracked"]) * 32 > 0
    # Parameters mix (MoNNA keeps a group's honest models close); buffers never do: each worker's running
    # statistics are its own data's.
    means = [states[j][BUFFER_PREFIX + "bn.running_mean"] for j in honest]
    assert not all(np.array_equal(means[0], m) for m in means[1:])
    # The digest of a worker covers its buffers, and evaluation runs in eval() with them loaded.
    served = int(result.summary["served_workers"]["0"])
    weights = {"theta": states[served]["theta"],
               **{k: v for k, v in states[served].items() if k.startswith(BUFFER_PREFIX)}}
    assert result.summary["group_digests"]["0"] == weights_digest(weights)
    model = probabilities_model(plan.specs[served], weights)
    assert not model.training
    assert torch.equal(model.bn.running_var, torch.from_numpy(weights[BUFFER_PREFIX + "bn.running_var"]))
    acc, _ = evaluate_model(model, plan.test_features, plan.test_labels)
    assert result.metrics[-1]["accuracy"][str(served)] == round(acc, 6) > 0.5
    # With the initial buffers the same parameters predict differently: the buffers matter.
    initial = {BUFFER_PREFIX + k: v for k, v in model_buffers(spec_model(plan.specs[served])).items()}
    other = probabilities_model(plan.specs[served], {"theta": weights["theta"], **initial})
    assert evaluate_model(other, plan.test_features, plan.test_labels)[0] != acc
    with pytest.raises(ValueError, match="missing"):  # parameters alone are not this model's weights
        probabilities_model(plan.specs[served], weights["theta"])


def test_a_worker_restores_its_buffers_from_state():
    config = user_config()
    plan = make_plan(config)
    j = plan.honest(0)[0]
    first = build_worker(plan.specs[j], plan.shards[j])
    for step in range(3):
        first.step(0, step, step)
    state = first.get_state()
    assert int(state[BUFFER_PREFIX + "bn.num_batches_tracked"]) == 3
    second = build_worker(plan.specs[j], plan.shards[j])
    second.set_state(state)
    assert weights_digest(second.weights()) == weights_digest(first.weights())
    assert np.array_equal(second.step(0, 3, 3), first.step(0, 3, 3)), "the same step from the same state"
    missing = {k: v for k, v in state.items() if k != BUFFER_PREFIX + "rows_seen"}
    with pytest.raises(ValueError, match="missing rows_seen"):
        second.set_state(missing)


def test_exact_deletion_of_a_user_model_with_buffers_verifies(tmp_path):
    config = user_config()
    state = tmp_path / "state"
    trained = train(config, state, progress=False)
    ids = late_ids(config, stage=2)
    cert = unlearn_state_dir(state, ids)
    assert cert["status"] == "deleted" and cert["group_digests"] != trained.summary["group_digests"]
    fresh = train(config, None, progress=False, dataset=load_config_dataset(config).without(ids))
    assert cert["group_digests"] == fresh.summary["group_digests"]
    assert cert["worker_digests"] == fresh.summary["worker_digests"]
    report = verify_state_dir(state)
    assert report["ok"], report["failures"]
    assert report["groups"] and all(row["match"] for row in report["groups"].values()), report["groups"]


# ----- Ray: the module reaches the workers through the job's runtime_env (py_modules) -------------------


@pytest.fixture(scope="module")
def ray_with_user_module():
    ray.shutdown()
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False,
             runtime_env={"py_modules": [byo_models]})
    yield
    ray.shutdown()


def test_on_ray_a_user_model_trains_deletes_exactly_and_verifies(tmp_path, ray_with_user_module):
    @ray.remote
    def where_it_imports_from() -> str:
        import byo_models as shipped

        return str(shipped.__file__)

    origin = ray.get(where_it_imports_from.remote())
    assert origin != byo_models.__file__, "the Ray worker imports the copy shipped in the runtime_env"

    config = user_config(backend={"name": "ray"})
    state = tmp_path / "state"
    trained = train(config, state, progress=False)
    ids = late_ids(config, stage=3)
    cert = unlearn_state_dir(state, ids)
    assert cert["group_digests"] != trained.summary["group_digests"]
    # A retrain in-process gives the Ray replay's digests: local and Ray are bit-identical, buffers included.
    fresh = train(config.replace(**{"backend.name": "local"}), None, progress=False,
                  dataset=load_config_dataset(config).without(ids))
    assert cert["group_digests"] == fresh.summary["group_digests"]
    assert cert["worker_digests"] == fresh.summary["worker_digests"]
    report = verify_state_dir(state)  # retrains on Ray
    assert report["ok"], report["failures"]
    assert report["groups"] and all(row["match"] for row in report["groups"].values()), report["groups"]
