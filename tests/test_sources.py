"""Workers read their own rows (nodes/sources.py): a shard is a description, never rows; npz is
memory-mapped, integer features keep their dtype until the device, lost stores are rebuilt by their
worker from the source minus the ledger's ids."""

from __future__ import annotations

import pickle
import shutil
import zipfile

import numpy as np
import pytest

from ostracon.cluster.errors import DataError
from ostracon.cluster.execution.backend import LocalBackend
from ostracon.cluster.execution.plan import make_plan
from ostracon.cluster.execution.training import train
from ostracon.cluster.unlearning import unlearn_state_dir, verify_state_dir
from ostracon.nodes.data import load_dataset
from ostracon.nodes.shard_store import ShardStore
from ostracon.nodes.sources import map_npz_features, read_features, read_index, read_shard, source_spec

from helpers import SISA, small_config


def _digits_npz(path, dtype=np.uint8, compressed=False):
    """digits as integer pixel counts 0..16 (``dtype``), with string ids."""
    digits = load_dataset("digits")
    x = np.rint(digits.features * 16).astype(dtype)
    ids = np.array([f"img-{i:04d}" for i in range(len(digits))])
    (np.savez_compressed if compressed else np.savez)(path, X=x, y=digits.labels, ids=ids)
    return x, digits.labels, ids


def _config(path, **data):
    return small_config(data={"source": "npz", "path": str(path), **data}, **SISA)


def test_uncompressed_npz_is_memory_mapped_and_read_by_rows(tmp_path):
    x, _, _ = _digits_npz(tmp_path / "a.npz")
    mapped = map_npz_features(tmp_path / "a.npz")
    assert isinstance(mapped, np.memmap) and mapped.shape == x.shape and mapped.dtype == np.uint8
    rows = np.array([0, 5, 17, 1796])
    spec = source_spec(_config(tmp_path / "a.npz").data, seed=0)
    got = read_features(spec, rows)
    assert got.dtype == np.uint8 and np.array_equal(got, x[rows])
    # A compressed archive cannot be mapped: decompressed, then the same rows.
    _digits_npz(tmp_path / "c.npz", compressed=True)
    assert map_npz_features(tmp_path / "c.npz") is None
    assert np.array_equal(read_features(source_spec(_config(tmp_path / "c.npz").data, seed=0), rows), x[rows])


def test_float64_features_become_float32_and_are_checked_for_nan(tmp_path):
    _digits_npz(tmp_path / "f.npz", dtype=np.float64)
    spec = source_spec(_config(tmp_path / "f.npz").data, seed=0)
    assert read_features(spec, np.array([1, 2])).dtype == np.float32
    with np.load(tmp_path / "f.npz") as a:
        x, y, ids = a["X"].copy(), a["y"], a["ids"]
    x[3, 0] = np.nan
    np.savez(tmp_path / "f.npz", X=x, y=y, ids=ids)
    assert read_features(spec, np.array([1, 2])).shape == (2, 64)  # rows without the NaN read fine
    with pytest.raises(ValueError, match="key 'X' contains NaN"):
        read_features(spec, np.array([3]))


def test_every_row_is_held_once_and_a_shard_is_a_few_hundred_bytes(tmp_path):
    _digits_npz(tmp_path / "a.npz")
    config = _config(tmp_path / "a.npz")
    plan = make_plan(config)
    index = read_index(plan.source)
    held = [read_shard(plan.shards[j], index).ids for j in sorted(plan.shards)]
    everything = np.concatenate([*held, plan.test_ids])
    assert sorted(everything.tolist()) == sorted(index.ids.tolist())  # each id once: a worker or the test split
    for j, ids in enumerate(held):
        assert sorted(ids.tolist()) == plan.shard_ids(j).tolist()  # the driver's index agrees, without rows
        assert len(pickle.dumps(plan.shards[j])) < 1024
    assert "test_features" not in plan.__dict__  # the held-out features are not read until evaluated on


def test_uint8_features_train_and_unlearn_to_the_same_digests_as_their_float32_copy(tmp_path):
    x, y, ids = _digits_npz(tmp_path / "u8.npz")
    np.savez(tmp_path / "f32.npz", X=x.astype(np.float32), y=y, ids=ids)
    u8 = train(_config(tmp_path / "u8.npz"), tmp_path / "s8", progress=False)
    f32 = train(_config(tmp_path / "f32.npz"), tmp_path / "s32", progress=False)
    assert u8.summary["group_digests"] == f32.summary["group_digests"]
    plan = make_plan(_config(tmp_path / "u8.npz"))
    victims = [i for i in sorted(plan.placement) if plan.specs[plan.placement[i][1]].trains][:3]
    for mode in ("approximate", "exact"):  # an approximate update (ft) and an exact replay, on uint8 rows
        first = unlearn_state_dir(tmp_path / "s8", victims[:1] if mode == "approximate" else victims[1:], mode)
        second = unlearn_state_dir(tmp_path / "s32", victims[:1] if mode == "approximate" else victims[1:], mode)
        assert first["group_digests"] == second["group_digests"]
    store = ShardStore.open(tmp_path / "s8" / "stores" / "worker-0")
    assert store.features.dtype == np.uint8  # stored as the source stores it: 4x smaller than float32
    assert ShardStore.open(tmp_path / "s32" / "stores" / "worker-0").features.dtype == np.float32


def test_a_lost_store_is_rebuilt_by_its_worker_without_the_deleted_rows(tmp_path):
    _digits_npz(tmp_path / "a.npz")
    config = _config(tmp_path / "a.npz")
    state = tmp_path / "state"
    train(config, state, progress=False)
    plan = make_plan(config)
    victims = [i for i in sorted(plan.placement) if plan.placement[i][1] == 0][:3]
    unlearn_state_dir(state, victims)
    shutil.rmtree(state / "stores" / "worker-0")
    deleted_plan = make_plan(config, state_dir=state, exclude=victims)
    with LocalBackend() as backend:  # the worker itself, from its shard description: no driver-side repair
        backend.start([deleted_plan.specs[0]], deleted_plan.shards)
        rebuilt = backend.workers[0].store
    assert not set(victims) & set(rebuilt.ids.tolist())
    assert ShardStore.read_tombstones(state / "stores" / "worker-0") == set(victims)
    assert rebuilt.ids.tolist() == deleted_plan.shard_ids(0).tolist()
    assert verify_state_dir(state)["ok"]


def test_an_unreadable_worker_row_is_one_error_naming_the_worker_and_file(tmp_path):
    x, y, ids = _digits_npz(tmp_path / "a.npz", dtype=np.float32)
    config = _config(tmp_path / "a.npz")
    plan = make_plan(config)
    victim = int(np.flatnonzero(ids == plan.shard_ids(2)[0])[0])
    x = x.copy()
    x[victim, 5] = np.inf
    np.savez(tmp_path / "a.npz", X=x, y=y, ids=ids)
    with pytest.raises(DataError, match=r"worker 2 reading its rows of npz .*a\.npz.*NaN or Inf"):
        train(config, None, progress=False)


def test_a_truncated_npz_is_refused_before_any_worker_starts(tmp_path):
    _digits_npz(tmp_path / "a.npz")
    raw = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "a.npz").write_bytes(raw[: len(raw) // 2])
    assert not zipfile.is_zipfile(tmp_path / "a.npz")
    with pytest.raises(DataError, match=r"data\.path.*not an \.npz archive"):
        make_plan(_config(tmp_path / "a.npz"))


def test_a_deletion_updates_only_the_shards_holding_its_ids(tmp_path):
    config = small_config(**SISA)
    plan = make_plan(config, state_dir=tmp_path)
    first = [i for i in sorted(plan.placement) if plan.placement[i][1] == 1][:2]
    second = [i for i in sorted(plan.placement) if plan.placement[i][1] == 3][:1] + first[:1]
    updated = plan.with_deleted(first).with_deleted(second)
    assert updated.shards == make_plan(config, state_dir=tmp_path, exclude=first + second).shards
    assert {j for j in plan.shards if updated.shards[j] is not plan.shards[j]} == {1, 3}
    assert updated.with_deleted(first).shards == updated.shards  # deleting twice changes nothing


def test_a_large_held_out_split_is_streamed_and_scores_as_one_array():
    import torch

    from ostracon.nodes.sources import iter_held_out
    from ostracon.nodes.worker import evaluate_batches, evaluate_model

    config = small_config(data={"source": "synthetic", "samples": 30000, "features": 8, "test_fraction": 0.4})
    plan = make_plan(config)
    assert len(plan.test_ids) > 2 * 4096
    chunks = list(iter_held_out(plan.source, plan.rule, chunk_rows=4096))
    assert len(chunks) > 2 and all(len(c.ids) == 4096 for c in chunks[:-1])
    assert np.array_equal(np.concatenate([c.ids for c in chunks]), plan.test_ids)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 10))
    whole = evaluate_model(model, plan.test_features, plan.test_labels)
    assert evaluate_batches(model, ((c.features, c.labels) for c in chunks)) == whole  # bit for bit


def test_a_bad_row_found_by_a_worker_leaves_no_output_directory(tmp_path):
    from ostracon.cluster.cli import main

    x, y, ids = _digits_npz(tmp_path / "a.npz", dtype=np.float32)
    x = x.copy()
    x[7, 3] = np.nan
    np.savez(tmp_path / "a.npz", X=x, y=y, ids=ids)
    config = tmp_path / "c.toml"
    config.write_text(f'[data]\nsource = "npz"\npath = "{tmp_path / "a.npz"}"\n[training]\nworkers = 4\nrounds = 2\n')
    assert main(["train", "-c", str(config), "-o", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()  # nothing written: the run never started
    (tmp_path / "empty").mkdir()
    assert main(["train", "-c", str(config), "-o", str(tmp_path / "empty")]) == 2
    assert list((tmp_path / "empty").iterdir()) == []


def test_the_held_out_rows_are_read_once_per_state_not_per_deletion():
    plan = make_plan(small_config(**SISA))
    features = plan.test_features
    victim = sorted(plan.placement)[0]
    assert plan.with_deleted([victim]).test_features is features
