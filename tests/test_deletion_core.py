"""The deletion core under faults: crashes at every step boundary, lost and damaged files, forged
records, data-less workers. After each, the state either repaired itself exactly or refused with a
message and changed nothing; `verify` names every kind of mismatch and never modifies the state."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ostracon.cluster import faults
from ostracon.cluster.execution.plan import load_config_dataset, make_plan
from ostracon.cluster.execution.training import train
from ostracon.cluster.storage.checkpoints import CheckpointStore
from ostracon.cluster.storage.ledger import open_ledger
from ostracon.cluster.unlearning import SourceChangedError, locate, unlearn_state_dir, verify_state_dir
from ostracon.nodes.shard_store import ShardStore, _write_rows  # a raw rows.npz write: the damage

from helpers import (
    SISA,
    assert_consistent,
    attacker_id,
    retrain_digests,
    shard_rows,
    small_config,
    stable_bytes,
    trainer_ids,
    tree_bytes,
)

# ----- crash at every step boundary --------------------------------------------------------------------

def test_a_crash_at_every_step_boundary_is_finished_exactly(tmp_path, trained, config):
    first = trainer_ids(config, 2, seed=1) + [attacker_id(config)]
    later = trainer_ids(config, 1, seed=2, groups=(1,))
    digests = retrain_digests(config, first + later)
    probe = tmp_path / "probe"
    shutil.copytree(trained, probe)
    with faults.recording() as points:
        unlearn_state_dir(probe, first)
    kinds = {p.split(":")[0] for p in points}
    assert {"deletion.journaled", "deletion.tombstoned", "deletion.replayed", "deletion.promoted",
            "deletion.published", "deletion.state_json", "deletion.certificate", "deletion.done"} <= kinds, points
    assert len(points) >= 12
    for point in points:
        work = tmp_path / point.replace(":", "_").replace("/", "_")
        shutil.copytree(trained, work)
        with faults.armed(point), pytest.raises(faults.InjectedFault):
            unlearn_state_dir(work, first)
        report = verify_state_dir(work, retrain=False)
        assert report["ok"], (point, report["failures"])  # a half-done request is pending, never a mismatch
        assert bool(report["pending"]) == (point != "deletion.done"), (point, report["pending"])
        cert = unlearn_state_dir(work, later)  # the next command finishes the interrupted one first
        assert cert["deleted"] == later
        if point != "deletion.done":
            assert cert["recovered"], point
        assert_consistent(work, config, first + later, digests)


def test_kill_9_after_the_first_tombstone_never_certifies_a_ghost(tmp_path, trained, config, monkeypatch):
    """The review's reproduction: a real kill -9 after the first store's tombstones, then a new request."""
    import subprocess
    import sys

    first = trainer_ids(config, 2, seed=5)
    later = trainer_ids(config, 1, seed=6, groups=(0,))
    state = tmp_path / "state"
    shutil.copytree(trained, state)
    env = dict(os.environ, OSTRACON_FAULT="deletion.tombstoned:worker-*")
    cmd = [sys.executable, "-m", "ostracon.cluster.cli", "unlearn", "--state-dir", str(state)]
    crashed = subprocess.run(cmd + ["--ids", ",".join(first)], env=env, capture_output=True, text=True)
    assert crashed.returncode == -9, crashed.stderr
    assert verify_state_dir(state, retrain=False)["pending"]
    done = subprocess.run(cmd + ["--ids", ",".join(later)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "finished interrupted request" in done.stdout
    assert_consistent(state, config, first + later, retrain_digests(config, first + later))


def test_resume_finishes_an_interrupted_request_without_a_new_one(state, config):
    ids = trainer_ids(config, 2, seed=7)
    with faults.armed("deletion.replayed:*"), pytest.raises(faults.InjectedFault):
        unlearn_state_dir(state, ids)
    result = unlearn_state_dir(state, resume_only=True)
    assert [c["deleted"] for c in result["recovered"]] == [ids]
    assert unlearn_state_dir(state, resume_only=True)["recovered"] == []
    assert_consistent(state, config, ids, retrain_digests(config, ids))


# ----- lost and damaged files ----------------------------------------------------------------------------

def _store_dir(state, worker):
    return state / "stores" / f"worker-{worker}"


def test_verify_names_each_kind_of_mismatch_and_changes_nothing(tmp_path, trained, config):
    ids = trainer_ids(config, 2, seed=8)
    base = tmp_path / "base"
    shutil.copytree(trained, base)
    cert = unlearn_state_dir(base, ids)
    where = locate(make_plan(config))
    victim_worker = where[ids[0]][1]
    live = next(i for i, (_, j, _) in sorted(where.items()) if j == victim_worker and i not in ids)

    def tombstone_removed(s):
        ShardStore.rebuild(_store_dir(s, victim_worker), *_rows(config, victim_worker, ids),
                           deleted=[i for i in ids if where[i][1] == victim_worker][1:])

    def forged_state_json(s):
        doc = json.loads((s / "state.json").read_text())
        doc["group_digests"]["0"] = "f" * 64
        (s / "state.json").write_text(json.dumps(doc))

    def certificate_lists_a_live_id(s):
        path = s / "certificates" / os.listdir(s / "certificates")[0]
        doc = json.loads(path.read_text())
        doc["deleted"].append(live)
        path.write_text(json.dumps(doc))

    def checkpoint_byte_changed(s):
        path = CheckpointStore(s).path(0, 1)
        blob = bytearray(Path(path).read_bytes())
        blob[len(blob) // 2] ^= 0x01
        Path(path).write_bytes(bytes(blob))

    def store_directory_lost(s):
        shutil.rmtree(_store_dir(s, 2))

    def deleted_row_written_back(s):  # the log still names the id, but rows.npz holds it again
        rows = _rows(config, victim_worker, [])
        order = np.argsort(rows[0])
        _write_rows(_store_dir(s, victim_worker), tuple(np.asarray(a)[order] for a in rows))

    def certificate_removed(s):
        os.remove(s / "certificates" / os.listdir(s / "certificates")[0])

    def certificate_forged(s):
        (s / "certificates" / "deletion-999999-v9.json").write_text(json.dumps({"deleted": []}))

    def checkpoint_removed(s):
        os.remove(CheckpointStore(s).path(1, 3))

    cases = {
        deleted_row_written_back: "DELETED_ID_LIVE",
        certificate_removed: "CERTIFICATE_MISSING",
        certificate_forged: "CERTIFICATE_UNKNOWN",
        checkpoint_removed: "CHECKPOINT_MISSING",
        tombstone_removed: "TOMBSTONE_MISMATCH",
        forged_state_json: "STATE_JSON_MISMATCH",
        certificate_lists_a_live_id: "CERTIFIED_ID_NOT_DELETED",
        checkpoint_byte_changed: "CHECKPOINT_HASH_MISMATCH",
        store_directory_lost: "STORE_MISSING",
    }
    assert verify_state_dir(base, retrain=False)["ok"]
    for damage, name in cases.items():
        work = tmp_path / damage.__name__
        shutil.copytree(base, work)
        damage(work)
        before = stable_bytes(work)
        report = verify_state_dir(work, retrain=False)
        assert not report["ok"]
        assert name in {f["name"] for f in report["failures"]}, (damage.__name__, report["failures"])
        assert stable_bytes(work) == before, f"verify modified the state ({damage.__name__})"
    assert cert["status"] == "deleted"
    # The written-back row also changes rows.npz's recorded hash.
    work = tmp_path / "deleted_row_written_back"
    assert "STORE_HASH_MISMATCH" in {f["name"] for f in verify_state_dir(work, retrain=False)["failures"]}


def test_verify_retrains_and_catches_a_published_digest_no_model_has(state):
    """A forged digest in the ledger itself (state.json rewritten to agree): only the retrain can tell."""
    import sqlite3

    db = sqlite3.connect(state / "ledger.sqlite")
    (record,) = db.execute("SELECT record FROM versions WHERE version = 1").fetchone()
    record = json.loads(record)
    record["group_digests"]["1"] = "e" * 64
    db.execute("UPDATE versions SET record = ? WHERE version = 1", (json.dumps(record, sort_keys=True),))
    db.commit()
    db.close()
    doc = json.loads((state / "state.json").read_text())
    doc["group_digests"]["1"] = "e" * 64
    (state / "state.json").write_text(json.dumps(doc))
    assert verify_state_dir(state, retrain=False)["ok"]  # every file agrees with the (forged) ledger...
    report = verify_state_dir(state)
    assert [f["name"] for f in report["failures"]] == ["MODEL_MISMATCH"], report["failures"]
    assert not report["groups"]["1"]["match"] and report["groups"]["0"]["match"]


def _rows(config, worker, deleted):
    data = shard_rows(make_plan(config, exclude=deleted), worker)
    return data.ids, data.features, data.labels, data.slices


def test_a_lost_store_is_rebuilt_without_resurrecting_anything(state, config):
    ids = trainer_ids(config, 2, seed=9, groups=(0,))
    unlearn_state_dir(state, ids)
    where = locate(make_plan(config))
    worker = where[ids[0]][1]
    shutil.rmtree(_store_dir(state, worker))
    assert {f["name"] for f in verify_state_dir(state, retrain=False)["failures"]} == {"STORE_MISSING"}
    later = trainer_ids(config, 1, seed=10, groups=(1,))
    cert = unlearn_state_dir(state, later)
    assert any(f"worker {worker}" in r for r in cert["repairs"]), cert["repairs"]
    assert_consistent(state, config, ids + later, retrain_digests(config, ids + later))


def test_a_corrupt_tombstone_log_is_reported_untouched_then_rebuilt(state, config):
    ids = trainer_ids(config, 1, seed=11, groups=(0,))
    unlearn_state_dir(state, ids)
    worker = locate(make_plan(config))[ids[0]][1]
    log = _store_dir(state, worker) / "tombstones.jsonl"
    blob = bytearray(log.read_bytes())
    blob[2] ^= 0xFF  # one byte: the line is no longer valid JSON
    log.write_bytes(bytes(blob))
    report = verify_state_dir(state, retrain=False)
    assert "TOMBSTONE_MISMATCH" in {f["name"] for f in report["failures"]}
    assert log.read_bytes() == bytes(blob), "verify must not truncate or rewrite the log"
    later = trainer_ids(config, 1, seed=12, groups=(1,))
    unlearn_state_dir(state, later)
    assert_consistent(state, config, ids + later, retrain_digests(config, ids + later))


def test_a_forged_tombstone_never_erases_an_innocent_row(state, config):
    ids = trainer_ids(config, 1, seed=13, groups=(0,))
    unlearn_state_dir(state, ids)
    where = locate(make_plan(config))
    worker = where[ids[0]][1]
    innocent = next(i for i, (_, j, _) in sorted(where.items()) if j == worker and i not in ids)
    log = _store_dir(state, worker) / "tombstones.jsonl"
    log.write_text(log.read_text().replace(json.dumps(ids[0]), json.dumps(innocent)))
    assert "TOMBSTONE_MISMATCH" in {f["name"] for f in verify_state_dir(state, retrain=False)["failures"]}
    later = trainer_ids(config, 1, seed=14, groups=(1,))
    unlearn_state_dir(state, later)
    store = ShardStore.open(_store_dir(state, worker))
    assert innocent in store and ids[0] not in store
    assert_consistent(state, config, ids + later, retrain_digests(config, ids + later))


@pytest.mark.parametrize("damage", ["flipped_byte", "corrupt_header", "missing"])
def test_a_damaged_checkpoint_is_repaired_by_an_exact_replay(state, config, damage):
    store = CheckpointStore(state)
    path = store.path(1, 1)
    if damage == "missing":
        os.remove(path)
    else:
        blob = bytearray(Path(path).read_bytes())
        where = len(blob) // 2 if damage == "flipped_byte" else 0
        blob[where] ^= 0xFF
        Path(path).write_bytes(bytes(blob))
    ids = trainer_ids(config, 1, seed=15, groups=(0,))  # a deletion in the OTHER group
    cert = unlearn_state_dir(state, ids)
    assert cert["groups"]["1"]["restarted_from_stage"] == 1, cert["groups"]
    assert any("group 1 stage 1" in r for r in cert["repairs"]), cert["repairs"]
    assert_consistent(state, config, ids, retrain_digests(config, ids))


def _npz_state(tmp_path):
    from ostracon.nodes.data import load_dataset

    digits = load_dataset("digits")
    ids = np.array([f"rec-{i:05d}" for i in range(len(digits))])
    path = tmp_path / "data.npz"
    np.savez(path, X=digits.features, y=digits.labels, ids=ids)
    config = small_config(data={"source": "npz", "path": str(path), "partition": "iid"}, **SISA)
    state = tmp_path / "state"
    train(config, state, progress=False)
    return digits, ids, path, config, state


def _rewrite(path, digits, ids, row, labels=None):
    features = digits.features.copy()
    features[row, 0] += 1.0
    np.savez(path, X=features, y=digits.labels if labels is None else labels, ids=ids)


@pytest.mark.parametrize("what", ["held-out features", "labels"])
def test_changed_source_data_is_refused_before_anything_changes(tmp_path, what):
    digits, ids, path, config, state = _npz_state(tmp_path)
    plan = make_plan(config)
    held_out = int(np.flatnonzero(ids == plan.test_ids[0])[0])
    if what == "labels":
        labels = digits.labels.copy()
        labels[held_out] = (labels[held_out] + 1) % 10
        np.savez(path, X=digits.features, y=labels, ids=ids)
    else:
        _rewrite(path, digits, ids, held_out)
    before = tree_bytes(state)
    with pytest.raises(SourceChangedError, match="differ.* this state was trained on"):
        unlearn_state_dir(state, [str(i) for i in sorted(plan.placement)[:1]])
    assert tree_bytes(state) == before
    assert {f["name"] for f in verify_state_dir(state)["failures"]} == {"SOURCE_CHANGED"}


def test_changed_training_rows_are_found_by_the_worker_that_reads_them(tmp_path):
    # The stores hold the rows trained on (hash-checked): deleting needs no source. A worker that has to
    # read its rows again (a lost store, verify's retrain) finds them changed and refuses.
    digits, ids, path, config, state = _npz_state(tmp_path)
    plan = make_plan(config)
    victim = sorted(plan.placement)[0]
    _, worker, _ = plan.placement[victim]
    _rewrite(path, digits, ids, int(np.flatnonzero(ids == victim)[0]))
    other = next(i for i in sorted(plan.placement) if plan.placement[i][1] != worker and
                 plan.specs[plan.placement[i][1]].trains)
    unlearn_state_dir(state, [other])
    assert {f["name"] for f in verify_state_dir(state)["failures"]} == {"SOURCE_CHANGED"}
    shutil.rmtree(state / "stores" / f"worker-{worker}")
    with pytest.raises(SourceChangedError, match=f"worker {worker}: .*differ from those this state was trained on"):
        unlearn_state_dir(state, [next(i for i in sorted(plan.placement) if i not in (other, victim))])
    assert not (state / "stores" / f"worker-{worker}" / "rows.npz").exists()


# ----- one writer per state directory --------------------------------------------------------------------

def test_a_second_writer_fails_fast_naming_the_holder(state, config):
    from ostracon.cluster.storage import statedir

    before = tree_bytes(state)
    with statedir.exclusive(state, "unlearn"):
        with pytest.raises(statedir.StateLockedError, match=f"pid {os.getpid()}"):
            unlearn_state_dir(state, trainer_ids(config, 1, seed=16))
        with pytest.raises(statedir.StateLockedError):
            verify_state_dir(state)
    assert {p: b for p, b in tree_bytes(state).items() if p != ".lock"} == \
        {p: b for p, b in before.items() if p != ".lock"}


# ----- workers without data --------------------------------------------------------------------------------

def test_a_worker_left_without_data_keeps_following_its_group(state, config):
    plan = make_plan(config)
    served = plan.honest(0)[0]
    everything = [str(i) for i in shard_rows(plan, served).ids]
    cert = unlearn_state_dir(state, everything)
    groups, workers = retrain_digests(config, everything)
    assert cert["group_digests"] == groups and cert["worker_digests"] == workers
    fresh = train(config, None, progress=False, dataset=load_config_dataset(config).without(everything))
    by_worker = fresh.metrics[-1]["accuracy"]
    initial = fresh.metrics[0]["accuracy"][str(served)]
    # The data-less served worker is trained (it mixes its group's models), not left at its initial model.
    assert by_worker[str(served)] >= initial + 0.15, (by_worker, initial)
    assert by_worker[str(served)] >= min(by_worker[str(j)] for j in plan.honest(0) if j != served) - 0.02
    assert cert["evaluation"]["honest_test_accuracy"]["min"] >= initial + 0.15


# ----- two processes at once (real CLI processes) ----------------------------------------------------------

def _cli(*args):
    import sys

    return [sys.executable, "-m", "ostracon.cluster.cli", *args]


def _wait_for_holder(path, proc, timeout=60.0):
    import time

    from ostracon.cluster.storage import statedir

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(os.path.join(path, ".lock")) and statedir.holder(path):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("the first process never took the lock")


def test_two_unlearns_at_once_one_proceeds_the_other_fails_fast(state, config):
    import subprocess

    first, second = trainer_ids(config, 2, seed=17)
    env = dict(os.environ, OSTRACON_FAULT="deletion.tombstoned", OSTRACON_FAULT_ACTION="sleep:8")
    holder = subprocess.Popen(_cli("unlearn", "--state-dir", str(state), "--ids", first), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_holder(str(state), holder)
    other = subprocess.run(_cli("unlearn", "--state-dir", str(state), "--ids", second), capture_output=True,
                           text=True, timeout=60)
    assert other.returncode == 2
    assert f"pid {holder.pid}" in other.stderr and "unlearn" in other.stderr, other.stderr
    out, err = holder.communicate(timeout=120)
    assert holder.returncode == 0, err
    assert_consistent(state, config, [first], retrain_digests(config, [first]))


def test_two_trains_into_one_directory_one_proceeds_the_other_fails_fast(tmp_path):
    import subprocess

    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nname = "mlp"\nparams = { hidden = 16 }\n'
                   '[training]\nworkers = 3\nf = 1\nrounds = 6\neval_every = 6\n[unlearning]\nslices = 2\n')
    out = tmp_path / "out"
    env = dict(os.environ, OSTRACON_FAULT="train.stage:0", OSTRACON_FAULT_ACTION="sleep:8")
    first = subprocess.Popen(_cli("train", "-c", str(cfg), "-o", str(out), "--no-progress"), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_holder(str(out), first)
    second = subprocess.run(_cli("train", "-c", str(cfg), "-o", str(out), "--no-progress"), capture_output=True,
                            text=True, timeout=60)
    assert second.returncode == 2
    assert "in use by pid" in second.stderr or "not empty" in second.stderr, second.stderr
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert not (out / "INCOMPLETE").exists()
    assert verify_state_dir(out)["ok"]


def test_an_interrupted_train_leaves_a_marked_directory_that_later_commands_refuse(tmp_path):
    import subprocess

    from ostracon.cluster.storage import statedir

    cfg = tmp_path / "c.toml"
    cfg.write_text('[training]\nworkers = 3\nf = 1\nrounds = 6\neval_every = 6\n[unlearning]\nslices = 2\n')
    out = tmp_path / "out"
    env = dict(os.environ, OSTRACON_FAULT="train.stage:1")
    crashed = subprocess.run(_cli("train", "-c", str(cfg), "-o", str(out), "--no-progress"), env=env,
                             capture_output=True, text=True)
    assert crashed.returncode == -9
    assert (out / "INCOMPLETE").exists()
    for args in (("unlearn", "--state-dir", str(out), "--ids", "1"), ("verify", "--state-dir", str(out))):
        refused = subprocess.run(_cli(*args), capture_output=True, text=True)
        assert refused.returncode == 2 and "incomplete training run" in refused.stderr, refused.stderr
    again = subprocess.run(_cli("train", "-c", str(cfg), "-o", str(out)), capture_output=True, text=True)
    assert again.returncode == 2 and "did not finish" in again.stderr
    with pytest.raises(statedir.StateDirError, match="incomplete"):
        verify_state_dir(out)


def test_a_corrupt_ledger_stops_every_command(state, config):
    from ostracon.cluster.storage.ledger import LedgerError

    path = state / "ledger.sqlite"
    blob = bytearray(path.read_bytes())
    for k in range(100, 4096, 7):  # wreck the first page: the schema itself
        blob[k] ^= 0x5A
    path.write_bytes(bytes(blob))
    before = tree_bytes(state)
    with pytest.raises(LedgerError, match="ledger"):
        unlearn_state_dir(state, trainer_ids(config, 1, seed=18))
    assert {p: b for p, b in tree_bytes(state).items() if not p.startswith("ledger.sqlite-")} == \
        {p: b for p, b in before.items() if not p.startswith("ledger.sqlite-")}
    assert [f["name"] for f in verify_state_dir(state)["failures"]] == ["LEDGER_CORRUPT"]


def test_a_certificate_is_never_overwritten(state, config):
    from ostracon.cluster.unlearning.certificates import CertificateConflictError

    ids = trainer_ids(config, 1, seed=19)
    with faults.armed("deletion.published"), pytest.raises(faults.InjectedFault):
        unlearn_state_dir(state, ids)
    with open_ledger(state, readonly=True) as ledger:
        (name,) = ledger.certificates()
    squatter = state / "certificates" / name
    squatter.parent.mkdir(exist_ok=True)
    squatter.write_text('{"deleted": []}\n')
    with pytest.raises(CertificateConflictError, match="never overwritten"):
        unlearn_state_dir(state, resume_only=True)
    assert squatter.read_text() == '{"deleted": []}\n'
    assert "CERTIFICATE_ALTERED" in {f["name"] for f in verify_state_dir(state, retrain=False)["failures"]}
