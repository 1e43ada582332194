"""Helpers shared by the test modules (the one place they live: no test module imports another).

Configs: :func:`small_config` (a quick digits/MLP run) and :data:`SISA` (the exact-unlearning acceptance
shape). Choosing ids: :func:`pick_ids`, :func:`trainer_ids`, :func:`attacker_id`. Checking a state
directory: :func:`tree_bytes`, :func:`stable_bytes`, :func:`final_thetas`, :func:`retrain_digests`,
:func:`assert_consistent`.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from ostracon.cluster.config import Config, from_dict
from ostracon.cluster.execution.plan import load_config_dataset, make_plan
from ostracon.cluster.execution.training import train
from ostracon.cluster.storage.checkpoints import CheckpointStore
from ostracon.cluster.storage.ledger import open_ledger
from ostracon.cluster.unlearning import locate, verify_state_dir
from ostracon.nodes.shard_store import ShardStore
from ostracon.nodes.sources import Rows, read_shard

# ----- configs -----------------------------------------------------------------------------------------


def shard_rows(plan, worker) -> Rows:
    """Worker ``worker``'s rows, read from the source as the worker itself reads them."""
    return read_shard(plan.shards[worker])


def small_config(**sections) -> Config:
    """A quick digits/MLP config; ``sections`` override whole keys, e.g. training={"rounds": 8}."""
    raw = {
        "seed": 0,
        "data": {"source": "digits", "partition": "dirichlet", "alpha": 1.0},
        "model": {"name": "mlp", "params": {"hidden": 32}},
        "training": {"protocol": "monna", "rule": "nna", "workers": 6, "f": 1, "rounds": 40,
                     "batch_size": 32, "lr": 0.5, "momentum": 0.9, "eval_every": 20},
        "byzantine": {"count": 1, "behaviour": "alie"},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return from_dict(raw)


# Issue acceptance for exact unlearning: S = 2 groups, R = 4 slices, 4 workers per group of which 1 Byzantine.
SISA = dict(training={"workers": 4, "f": 1, "rounds": 24, "eval_every": 24},
            byzantine={"count": 1, "behaviour": "alie"}, unlearning={"groups": 2, "slices": 4})


# ----- choosing ids ------------------------------------------------------------------------------------


def pick_ids(config, count, seed, groups=None):
    """``count`` random training ids, spread over every group."""
    where = locate(make_plan(config))
    rng = np.random.default_rng(seed)
    ids = sorted(where)
    chosen: list[str] = []
    groups = groups if groups is not None else range(config.unlearning.groups)
    for g in groups:  # at least one per group
        candidates = [i for i in ids if where[i][0] == g]
        chosen.append(candidates[rng.integers(len(candidates))])
    while len(chosen) < count:
        i = ids[rng.integers(len(ids))]
        if i not in chosen:
            chosen.append(i)
    return chosen


def trainer_ids(config, count, seed, groups=(0, 1)):
    """``count`` ids held by training (honest) workers, spread over ``groups``."""
    plan = make_plan(config)
    where = locate(plan)
    rng = np.random.default_rng(seed)
    chosen = []
    for k in range(count):
        g = groups[k % len(groups)]
        pool = sorted(i for i, (gg, j, _) in where.items() if gg == g and plan.specs[j].trains and i not in chosen)
        chosen.append(pool[rng.integers(len(pool))])
    return chosen


def attacker_id(config):
    """An id held by a Byzantine worker that never reads its data."""
    plan = make_plan(config)
    return next(i for i, (_, j, _) in sorted(locate(plan).items()) if not plan.specs[j].trains)


# ----- checking a state directory ----------------------------------------------------------------------


def tree_bytes(root) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    out = {}
    for base, _, files in os.walk(root):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def stable_bytes(state):
    """Every file's bytes, except SQLite's own shared-memory/WAL companions of a read connection."""
    return {p: b for p, b in tree_bytes(state).items() if not p.startswith("ledger.sqlite-")}


def final_thetas(state_dir, config) -> dict[int, torch.Tensor]:
    """Every stateful worker's parameters in the last stage checkpoint of its group."""
    store = CheckpointStore(state_dir)
    last = config.unlearning.slices - 1
    out = {}
    for g in range(config.unlearning.groups):
        for j, w in store.states(g, last).items():
            out[int(j)] = torch.from_numpy(w["theta"])
    return out


def retrain_digests(config, deleted):
    """(group digests, worker digests) of a retrain from scratch without ``deleted``."""
    fresh = train(config, None, progress=False, dataset=load_config_dataset(config).without(deleted))
    return fresh.summary["group_digests"], fresh.summary["worker_digests"]


def assert_consistent(state, config, deleted, digests):
    """certified = ledger = absent from every store = absent from the retrain, whose digests are published."""
    deleted = set(deleted)
    with open_ledger(state, readonly=True) as ledger:
        assert set(ledger.deletions()) == deleted
        assert not ledger.requests(unfinished_only=True)
        _, record = ledger.latest_version()
    certified = []
    for name in sorted(os.listdir(state / "certificates")):
        certified += json.loads((state / "certificates" / name).read_text())["deleted"]
    assert sorted(certified) == sorted(deleted), "every deleted id is in exactly one certificate"
    plan = make_plan(config, state_dir=state)
    where = locate(plan)
    for j, data in plan.shards.items():
        store = ShardStore.open(data.store_path)
        assert not deleted & set(store.ids.tolist()), f"worker {j} still holds a deleted id"
        assert ShardStore.read_tombstones(data.store_path) == {i for i in deleted if where[i][1] == j}
    groups, workers = digests
    assert record.group_digests == groups
    assert record.worker_digests == workers
    assert json.loads((state / "state.json").read_text())["group_digests"] == groups
    report = verify_state_dir(state, retrain=False)
    assert report["ok"] and not report["pending"], report["failures"]
