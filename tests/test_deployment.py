"""The warm deployment on the in-process backend: the operations journal (states, events, watch,
idempotency, cancel, coalescing), validation that changes nothing, bit-exact warm deletions, and a
kill -9 of a serving process with one operation RUNNING and others PENDING."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ostracon.cluster import (
    Deployment,
    HeldOutIdsError,
    IdempotencyConflictError,
    OperationNotFoundError,
    PreconditionError,
    RequestError,
    UnknownIdsError,
)
from ostracon.cluster.execution.hooks import RoundHooks
from ostracon.cluster.execution.plan import make_plan
from ostracon.cluster.storage.ledger import open_ledger
from ostracon.cluster.storage.statedir import StateLockedError
from ostracon.cluster.unlearning import unlearn_state_dir, verify_state_dir

from helpers import assert_consistent, retrain_digests, stable_bytes, trainer_ids


def wait_done(dep, op_id):
    """Every event of ``op_id`` until its final state (watch ends there)."""
    return list(dep.watch(op_id))


def test_a_warm_exact_deletion_is_bit_exact_and_fully_observable(state, config):
    ids = trainer_ids(config, 2, seed=11)
    with Deployment(state) as dep:
        assert dep.ready and dep.backend_name == "local" and dep.input_shape == (64,)
        features = make_plan(config).test_features[:5]
        _, _, before = dep.predict(features)
        op = dep.delete(list(reversed(ids)))
        assert op.state == "PENDING" and op.mode == "exact" and op.model_version == 0
        events = wait_done(dep, op.id)
        assert [s for s, _ in events] == list(range(1, len(events) + 1))
        states = [o.state for _, o in events]
        assert states[0] == "PENDING" and states[-1] == "SUCCEEDED" and "RUNNING" in states
        progress = [o.progress for _, o in events if o.state == "RUNNING"]
        assert progress == sorted(progress) and len(progress) > 1  # one event per replayed stage
        done = dep.operation(op.id)
        assert done.state == "SUCCEEDED" and done.progress == 1.0 and done.model_version == before + 1
        # Watch replays stored events after a sequence, and ends at once after the final one.
        assert [s for s, _ in dep.watch(op.id, after_sequence=2)] == [s for s, _ in events[2:]]
        assert list(dep.watch(op.id, after_sequence=events[-1][0])) == []
        cert = dep.certificate(op.id).to_dict()
        assert sorted(cert["deleted"]) == sorted(ids) and cert["model_version_after"] == done.model_version
        labels, probabilities, version = dep.predict(features)
        assert version == done.model_version and labels.dtype == np.int64 and labels.shape == (5,)
        assert probabilities.dtype == np.float32 and probabilities.shape == (5, 10)
        assert np.allclose(probabilities.sum(1), 1.0, atol=1e-5)
        assert dep.status().model_version == done.model_version and dep.status().queue_depth == 0
    assert_consistent(state, config, ids, retrain_digests(config, ids))


def test_validation_errors_change_nothing(state, config):
    plan = make_plan(config)
    some = trainer_ids(config, 1, seed=3)
    with Deployment(state, max_ids_per_request=3) as dep:
        before = stable_bytes(state)
        cases = [
            (RequestError, dict(ids=[])),
            (RequestError, dict(ids=[""])),
            (RequestError, dict(ids=some + ["a", "b", "c"])),
            (UnknownIdsError, dict(ids=some + ["no-such-id"])),
            (HeldOutIdsError, dict(ids=[str(plan.test_ids[0])])),
            (RequestError, dict(ids=some, mode="bogus")),
            (RequestError, dict(ids=some, mode="exact", method="salun")),
            (RequestError, dict(ids=some, mode="approximate", method="no_such_method")),
            (RequestError, dict(ids=some * 4)),  # counted as given, duplicates included (tests/test_input_bounds.py)
            (RequestError, dict(ids=["i" * 257])),
            (RequestError, dict(ids=some, idempotency_key="k" * 257)),
        ]
        for error, kwargs in cases:
            with pytest.raises(error) as info:
                dep.delete(**kwargs)
            if error is RequestError:
                assert str(info.value).split(":")[0] in ("sample_ids", "mode", "method", "idempotency_key")
        with pytest.raises(UnknownIdsError, match="no-such-id"):
            dep.delete(["no-such-id"])
        with pytest.raises(UnknownIdsError, match="no-such-id"):
            dep.delete(["no-such-id"], mode="approximate")
        with pytest.raises(OperationNotFoundError):
            dep.operation("op-999999")
        assert dep.operations() == ([], "")
        assert stable_bytes(state) == before


def test_idempotency_cancel_and_paging(state, config):
    a, b = trainer_ids(config, 2, seed=21)
    with Deployment(state) as dep:
        first = dep.delete([a, b], idempotency_key="k1")
        again = dep.delete([b, a], idempotency_key="k1")
        assert again.id == first.id
        with pytest.raises(IdempotencyConflictError):
            dep.delete([a], idempotency_key="k1")
        wait_done(dep, first.id)
        with pytest.raises(PreconditionError, match="PENDING"):
            dep.cancel(first.id)
        # Already-deleted ids are an idempotent no-op that succeeds.
        noop = dep.delete([a])
        assert wait_done(dep, noop.id)[-1][1].state == "SUCCEEDED"
        assert dep.certificate(noop.id).to_dict()["status"] == "noop"
        ops, token = dep.operations(page_size=1)
        assert [o.id for o in ops] == [noop.id] and token
        ops, token = dep.operations(page_size=1, page_token=token)
        assert [o.id for o in ops] == [first.id] and token == ""


def test_pending_operations_are_coalesced_and_cancel_works(state, config):
    ids = trainer_ids(config, 4, seed=31)
    with Deployment(state) as dep:
        # Hold the worker thread: submit while it cannot take the queue (it waits on the wake event).
        with dep_paused(dep):
            ops = [dep.delete([i]) for i in ids[:3]]
            cancelled = dep.delete([ids[3]])
            assert dep.cancel(cancelled.id).state == "CANCELLED"
            assert dep.status().queue_depth == 3
        finals = [wait_done(dep, op.id)[-1][1] for op in ops]
        assert all(o.state == "SUCCEEDED" for o in finals)
        certs = [dep.certificate(op.id).to_dict() for op in ops]
        assert len({c["request_id"] for c in certs}) == 1, "one ledger request for the pending operations"
        assert sorted(certs[0]["deleted"]) == sorted(ids[:3])
        assert dep.operation(cancelled.id).state == "CANCELLED"
    with open_ledger(state, readonly=True) as ledger:
        assert len(ledger.requests()) == 1 and set(ledger.deletions()) == set(ids[:3])
    assert_consistent(state, config, ids[:3], retrain_digests(config, ids[:3]))


class dep_paused:
    """Keep the deployment's worker thread from taking the queue inside the block."""

    def __init__(self, dep):
        self.dep = dep

    def __enter__(self):
        self.dep._paused.acquire()

    def __exit__(self, *exc):
        self.dep._paused.release()
        self.dep._wake.set()


def test_unlearn_refuses_a_served_directory_pointing_to_delete(state, config):
    with Deployment(state), pytest.raises(StateLockedError, match="ostracon delete"):
        unlearn_state_dir(state, trainer_ids(config, 1, seed=41))


CRASH_SCRIPT = textwrap.dedent("""
    import sys
    from ostracon.cluster import Deployment
    from ostracon.cluster.execution.hooks import RoundHooks
    state, first, rest = sys.argv[1], sys.argv[2], sys.argv[3:]

    def submit_the_rest_while_the_first_runs(t, backend):
        while rest:  # from the replay of the first operation: these stay PENDING behind it
            print(dep.delete([rest.pop(0)]).id, flush=True)

    dep = Deployment(state, hooks=RoundHooks(submit_the_rest_while_the_first_runs))
    dep.start()
    print(dep.delete([first]).id, flush=True)
    dep._thread.join()  # OSTRACON_FAULT kills the process at the first replayed stage
""")


def test_kill_9_while_running_and_pending_completes_every_operation_once(state, config):
    ids = trainer_ids(config, 4, seed=51)
    env = dict(os.environ, OSTRACON_FAULT="deletion.replayed:*")
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(state), *ids], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr
    acknowledged = proc.stdout.split()
    assert len(acknowledged) == len(ids)
    with open_ledger(state, readonly=True) as ledger:
        assert [len(r.ids) for r in ledger.requests(unfinished_only=True)] == [1], "one request half-done"
        states = dict(ledger._query("SELECT id, state FROM operations"))
    assert sorted(states.values()) == ["PENDING"] * (len(ids) - 1) + ["RUNNING"]
    with Deployment(state) as dep:
        finals = {op_id: wait_done(dep, op_id)[-1][1] for op_id in acknowledged}
        assert all(op.state == "SUCCEEDED" for op in finals.values())
        covered = {}
        for op_id, op in finals.items():
            cert = dep.certificate(op_id).to_dict()
            assert set(op.sample_ids) <= set(cert["deleted"]) | set(cert["already_deleted"])
            covered[cert["request_id"]] = cert["deleted"]
    deleted = sorted(i for op in finals.values() for i in op.sample_ids)
    assert sorted(i for ids_ in covered.values() for i in ids_) == deleted, "each id in exactly one certificate"
    assert_consistent(state, config, deleted, retrain_digests(config, deleted))
    assert verify_state_dir(state)["ok"]
    with open_ledger(state, readonly=True) as ledger:
        rows = ledger._query("SELECT state, request_id FROM operations")
    assert all(s == "SUCCEEDED" and rid is not None for s, rid in rows)


def test_a_replay_that_keeps_failing_fails_the_operation_and_publishes_nothing(state, config):
    from ostracon.cluster.execution.session import StageFailedError

    ids = trainer_ids(config, 2, seed=61)
    failing = {"on": True}

    def worker_lost_for_good(t, backend):
        if failing["on"]:
            raise StageFailedError("stage 1 of group(s) [0] failed 4 times (test)")

    with open_ledger(state, readonly=True) as ledger:
        version_before = ledger.latest_version()[0]
    with Deployment(state, hooks=RoundHooks(worker_lost_for_good)) as dep:
        op = dep.delete(ids)
        final = wait_done(dep, op.id)[-1][1]
        assert final.state == "FAILED" and "nothing was published" in final.message and final.model_version == 0
        with pytest.raises(PreconditionError):
            dep.certificate(op.id)
        assert dep.status().model_version == version_before
        with open_ledger(state, readonly=True) as ledger:
            assert ledger.latest_version()[0] == version_before and not ledger.deletions()
            assert [r.step for r in ledger.requests()] == ["abandoned"]
        failing["on"] = False
        retry = dep.delete(ids)
        assert wait_done(dep, retry.id)[-1][1].state == "SUCCEEDED"
        assert dep.operation(op.id).state == "FAILED"
    assert_consistent(state, config, ids, retrain_digests(config, ids))


def test_an_empty_directory_with_a_config_is_trained_then_served(tmp_path, trained, config):
    cfg = tmp_path / "config.json"
    shutil.copy(trained / "config.json", cfg)
    state = tmp_path / "fresh"
    with Deployment(state, config_path=cfg) as dep:
        assert dep.ready and dep.status().model_version == 1
        assert len(dep.status().workers) == len(make_plan(config).specs)
    with open_ledger(state, readonly=True) as served, open_ledger(trained, readonly=True) as reference:
        assert served.latest_version()[1].group_digests == reference.latest_version()[1].group_digests


NO_GATE = {"unlearning.gate.max_test_drop": 1.0, "unlearning.gate.max_retain_drop": 1.0,
           "unlearning.gate.max_forget_gap": 1.0}


def test_warm_approximate_modes_publish_then_settle(state, config):
    """approximate: one operation, a gated update on the live workers, debt; approximate_then_exact: the
    approximate version is served while the replay runs, and the operation ends exact (both phases)."""
    a, b = trainer_ids(config, 2, seed=31)
    with Deployment(state, overrides={**NO_GATE, "unlearning.method": "ft"}) as dep:
        features = make_plan(config).test_features[:4]
        op = dep.delete([a], mode="approximate")
        messages = [o.message for _, o in wait_done(dep, op.id)]
        assert dep.operation(op.id).state == "SUCCEEDED", messages
        cert = dep.certificate(op.id).to_dict()
        assert cert["mode"] == "approximate" and cert["method"] == "ft" and cert["unlearning_debt"]
        assert dep.predict(features)[2] == cert["model_version_after"] == 2
        op = dep.delete([b], mode="approximate_then_exact", method="salun")
        events = [o for _, o in wait_done(dep, op.id)]
        assert any("approximate version 3 published" in o.message for o in events), [o.message for o in events]
        cert = dep.certificate(op.id).to_dict()
        assert cert["mode"] == "exact" and cert["requested_mode"] == "approximate_then_exact"
        assert [p["mode"] for p in cert["phases"]] == ["approximate", "exact"]
        assert cert["phases"][0]["method"] == "salun" and cert["model_version_after"] == 4
        assert dep.predict(features)[2] == 4
    # b's exact replay of its group cleared that group's debt; a's group may still carry it
    report = verify_state_dir(state, allow_approximate=True)
    assert report["ok"], report["failures"]


APPROXIMATE_CRASH_SCRIPT = textwrap.dedent("""
    import sys
    from ostracon.cluster import Deployment
    state, mode, sample = sys.argv[1:4]
    overrides = {"unlearning.method": "ft", "unlearning.gate.max_test_drop": 1.0,
                 "unlearning.gate.max_retain_drop": 1.0, "unlearning.gate.max_forget_gap": 1.0}
    dep = Deployment(state, overrides=overrides)
    dep.start()
    print(dep.delete([sample], mode=mode).id, flush=True)
    dep._thread.join()  # OSTRACON_FAULT kills the process
""")


@pytest.mark.parametrize("mode, point, first_phase", [
    ("approximate", "approximate.updated", "interrupted"),  # before anything approximate was published
    ("approximate_then_exact", "approximate.published", "published"),  # after: the exact phase is what remains
])
def test_kill_9_of_a_serving_process_during_an_approximate_operation(state, config, mode, point, first_phase):
    ids = trainer_ids(config, 1, seed=61)
    proc = subprocess.run([sys.executable, "-c", APPROXIMATE_CRASH_SCRIPT, str(state), mode, ids[0]],
                          env=dict(os.environ, OSTRACON_FAULT=point), capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr
    [op_id] = proc.stdout.split()
    with Deployment(state, overrides={**NO_GATE, "unlearning.method": "ft"}) as dep:
        final = wait_done(dep, op_id)[-1][1]
        assert final.state == "SUCCEEDED", final.message
        cert = dep.certificate(op_id).to_dict()
    assert cert["mode"] == "exact" and cert["requested_mode"] == mode
    assert first_phase in cert["phases"][0]["outcome"], cert["phases"][0]
    assert_consistent(state, config, ids, retrain_digests(config, ids))
