"""Exact unlearning on the in-process backend: bit-exactness, durability, request validation."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from ostracon.cluster.execution.plan import ids_digest, load_config_dataset, make_plan
from ostracon.cluster.execution.training import train
from ostracon.cluster.storage.checkpoints import CheckpointStore
from ostracon.cluster.unlearning import UnlearningError, locate, unlearn_state_dir, verify_state_dir
from ostracon.nodes.shard_store import ShardStore

from helpers import SISA, final_thetas, pick_ids, shard_rows, small_config, tree_bytes


@pytest.fixture(scope="module")
def sisa_config():
    return small_config(**SISA)


def test_exact_deletion_is_bit_identical_to_retraining(tmp_path, sisa_config):
    state = tmp_path / "state"
    trained = train(sisa_config, state, progress=False)
    ids = pick_ids(sisa_config, 5, seed=3)
    cert = unlearn_state_dir(state, ids)
    assert cert["status"] == "deleted" and sorted(cert["deleted"]) == sorted(ids)
    plan = make_plan(sisa_config)
    trains = {i: plan.specs[cert["placement"][i]["worker"]].trains for i in ids}
    # Ids held by an attacker (it never reads its data) are tombstoned without a replay.
    assert sorted(cert["not_replayed"]) == sorted(i for i in ids if not trains[i])
    assert set(cert["groups"]) == {str(cert["placement"][i]["group"]) for i in ids if trains[i]}
    fresh = train(sisa_config, None, progress=False, dataset=load_config_dataset(sisa_config).without(ids))
    replayed = final_thetas(state, sisa_config)
    honest = sorted(fresh.parameters)
    assert honest and set(honest) <= set(replayed)
    for j in honest:
        expected = torch.from_numpy(fresh.parameters[j])
        assert torch.equal(replayed[j], expected), f"worker {j} differs from retraining"
    assert cert["group_digests"] == fresh.summary["group_digests"]
    assert cert["worker_digests"] == fresh.summary["worker_digests"]
    # The deletion really changed the models, and the replay cost less than a full retrain.
    assert cert["group_digests"] != trained.summary["group_digests"]
    assert 0 < cert["gradient_evaluations"] <= cert["full_retrain_gradient_evaluations"]
    assert cert["full_retrain_gradient_evaluations"] == trained.summary["gradient_evaluations"]
    for g, row in cert["groups"].items():
        k = row["restarted_from_stage"]
        assert k == min(cert["placement"][i]["slice"] for i in ids if cert["placement"][i]["group"] == int(g)
                        and trains[i])
        assert row["replayed_stages"] == list(range(k, 4))
    assert verify_state_dir(state)["ok"]


def test_deleted_data_is_gone_from_disk(tmp_path, sisa_config):
    state = tmp_path / "state"
    train(sisa_config, state, progress=False)
    plan = make_plan(sisa_config, state_dir=state)
    ids = pick_ids(sisa_config, 4, seed=5)
    where = locate(plan)
    rows = {}
    for i in ids:
        data = shard_rows(plan, where[i][1])
        rows[i] = data.features[list(data.ids).index(i)].tobytes()
    before = {p: hashlib.sha256(b).hexdigest() for p, b in tree_bytes(state).items() if p.endswith(".pt")}
    cert = unlearn_state_dir(state, ids)
    files = tree_bytes(state)
    assert not any(p.endswith((".replay", ".tmp")) for p in files)
    # The feature bytes of deleted samples appear in no file; a surviving sample's bytes still do.
    survivor = next(i for i in sorted(where) if i not in ids and where[i][1] == where[ids[0]][1])
    data = shard_rows(plan, where[survivor][1])
    survivor_bytes = data.features[list(data.ids).index(survivor)].tobytes()
    blob = b"".join(files.values())
    assert survivor_bytes in blob
    for i, feature_bytes in rows.items():
        assert feature_bytes not in blob, f"features of deleted id {i} still on disk"
    # No store holds the ids any more (only the tombstone log names them).
    for d in plan.shards.values():
        store = ShardStore.open(d.store_path)
        assert not set(ids) & set(store.ids.tolist())
    # Every live checkpoint's data digest is the digest of the surviving ids its training workers hold.
    store = CheckpointStore(state)
    for g in range(2):
        for stage in range(4):
            surviving = [i for i, (gg, w, s) in where.items()
                         if gg == g and s <= stage and i not in ids and plan.specs[w].trains]
            assert torch.load(store.path(g, stage), weights_only=True)["data_digest"] == ids_digest(surviving)
    # Superseded checkpoints are gone: no file holds their bytes any more.
    after = {hashlib.sha256(b).hexdigest() for p, b in files.items() if p.endswith(".pt")}
    superseded = {p for g, row in cert["groups"].items() for p in
                  (f"checkpoints/group-{g}/stage-{s}.pt" for s in row["replayed_stages"])}
    assert superseded
    for p in superseded:
        assert before[p] not in after
    # Certificates record sha256s before/after that match what was on disk.
    for g, row in cert["groups"].items():
        for s in row["replayed_stages"]:
            assert row["checkpoints_before"][str(s)]["sha256"] == before[f"checkpoints/group-{g}/stage-{s}.pt"]
            assert row["checkpoints_after"][str(s)]["sha256"] in after


def test_ids_named_only_in_tombstones_and_certificates(tmp_path):
    """With distinctive ids (user data), grep every file: only the ledger, tombstones and certificates name them."""
    from ostracon.nodes.data import load_dataset

    digits = load_dataset("digits")
    ids = np.array([f"user-{i:05d}-rec" for i in range(len(digits))])
    path = tmp_path / "data.npz"
    np.savez(path, X=digits.features, y=digits.labels, ids=ids)
    config = small_config(data={"source": "npz", "path": str(path), "partition": "iid"}, **SISA)
    state = tmp_path / "state"
    train(config, state, progress=False)
    chosen = pick_ids(config, 3, seed=11)
    unlearn_state_dir(state, chosen)
    for rel, blob in tree_bytes(state).items():
        allowed = rel.endswith("tombstones.jsonl") or rel.startswith(("certificates/", "ledger.sqlite"))
        for i in chosen:
            if not allowed:
                assert i.encode() not in blob, f"{i} found in {rel}"


def test_bad_requests_change_nothing(tmp_path, sisa_config):
    state = tmp_path / "state"
    train(sisa_config, state, progress=False)
    before = tree_bytes(state)
    plan = make_plan(sisa_config)
    good = pick_ids(sisa_config, 1, seed=1, groups=[0])[0]
    test_id = str(plan.test_ids[0])
    cases = [
        ([], "empty"),
        ([good, "no-such-id", "another-missing"], "'no-such-id', 'another-missing'"),
        ([good, good], f"duplicate sample id\\(s\\) in the request: '{good}'"),
        ([test_id], f"held-out test split.*{test_id}"),
        ([good, 7], "non-empty strings"),
    ]
    for ids, message in cases:
        with pytest.raises(UnlearningError, match=message):
            unlearn_state_dir(state, ids)
        assert tree_bytes(state) == before, f"state changed after rejected request {ids}"
    with pytest.raises(UnlearningError, match="unknown mode"):
        unlearn_state_dir(state, [good], mode="fast")
    assert tree_bytes(state) == before
    with pytest.raises(UnlearningError, match="needs an approximate mode"):
        unlearn_state_dir(state, [good], mode="exact", method="salun")
    assert tree_bytes(state) == before


def test_repeated_and_partly_repeated_deletions(tmp_path, sisa_config):
    state = tmp_path / "state"
    train(sisa_config, state, progress=False)
    first, second = pick_ids(sisa_config, 2, seed=2, groups=[0])
    cert1 = unlearn_state_dir(state, [first])
    snapshot = tree_bytes(state)
    noop = unlearn_state_dir(state, [first])
    assert noop["status"] == "noop" and noop["already_deleted"] == [first]
    assert tree_bytes(state) == snapshot  # idempotent: nothing rewritten
    cert2 = unlearn_state_dir(state, [first, second])
    assert cert2["deleted"] == [second] and cert2["already_deleted"] == [first]
    assert cert2["model_version_after"] == cert1["model_version_after"] + 1
    fresh = train(sisa_config, None, progress=False,
                  dataset=load_config_dataset(sisa_config).without([first, second]))
    assert cert2["group_digests"] == fresh.summary["group_digests"]


def test_verify_detects_a_tampered_state(tmp_path, sisa_config):
    state = tmp_path / "state"
    train(sisa_config, state, progress=False)
    assert verify_state_dir(state)["ok"]
    doc = json.loads((state / "state.json").read_text())
    doc["group_digests"]["1"] = "0" * 64
    (state / "state.json").write_text(json.dumps(doc))
    report = verify_state_dir(state)
    assert not report["ok"]
    assert [f["name"] for f in report["failures"]] == ["STATE_JSON_MISMATCH"], report["failures"]


def test_outputs_show_every_published_version(tmp_path, sisa_config):
    """summary.json, metrics.jsonl and accuracy.png follow the deletions (not only version 1)."""
    state = tmp_path / "state"
    train(sisa_config, state, progress=False)
    plot_before = (state / "accuracy.png").read_bytes()
    ids = pick_ids(sisa_config, 3, seed=12)
    cert = unlearn_state_dir(state, ids)
    summary = json.loads((state / "summary.json").read_text())
    assert summary["model_version"] == 2
    assert summary["group_digests"] == cert["group_digests"]
    assert [v["model_version"] for v in summary["versions"]] == [1, 2]
    assert summary["ensemble_test_accuracy"] == cert["evaluation"]["ensemble_test_accuracy"]
    assert summary["versions"][1]["ensemble_test_accuracy"] == cert["evaluation"]["ensemble_test_accuracy"]
    rows = [json.loads(x) for x in (state / "metrics.jsonl").read_text().splitlines()]
    assert [r["model_version"] for r in rows if r.get("kind") == "model_version"] == [1, 2]
    assert rows[0]["round"] == 0
    assert (state / "accuracy.png").read_bytes() != plot_before  # redrawn with version 2


def test_an_id_held_by_an_attacker_is_tombstoned_without_a_replay(tmp_path, sisa_config):
    state = tmp_path / "state"
    trained = train(sisa_config, state, progress=False)
    plan = make_plan(sisa_config)
    where = locate(plan)
    held = next(i for i, (_, j, _) in sorted(where.items()) if not plan.specs[j].trains)
    cert = unlearn_state_dir(state, [held])
    assert cert["not_replayed"] == [held] and cert["groups"] == {}
    assert cert["gradient_evaluations"] == 0
    assert "never reads its data" in cert["not_replayed_reason"]
    assert cert["model_version_after"] == 2 and cert["group_digests"] == trained.summary["group_digests"]
    store = ShardStore.open(state / "stores" / f"worker-{where[held][1]}")
    assert held not in store and held in store.deleted()
    assert verify_state_dir(state)["ok"]


def test_a_stateful_attacker_is_checkpointed_so_replays_stay_exact(tmp_path):
    """mimic_variant's attacker learns its target during a warm-up: a replay from a later stage must
    restore that state from the checkpoint, or the attack (and the models) would differ."""
    config = small_config(**{**SISA, "byzantine": {"count": 1, "behaviour": "mimic_variant",
                                                   "params": {"warmup": 8}}})
    state = tmp_path / "state"
    train(config, state, progress=False)
    plan = make_plan(config)
    where = locate(plan)
    attacker = plan.attackers(0)[0]
    assert attacker in CheckpointStore(state).states(0, 1)
    late = [i for i, (g, j, s) in sorted(where.items()) if g == 0 and s == 3 and plan.specs[j].trains][:2]
    cert = unlearn_state_dir(state, late)
    assert cert["groups"]["0"]["restarted_from_stage"] == 3
    fresh = train(config, None, progress=False, dataset=load_config_dataset(config).without(late))
    assert cert["group_digests"] == fresh.summary["group_digests"]
    assert cert["worker_digests"] == fresh.summary["worker_digests"]
