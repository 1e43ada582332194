"""Placement depends on (id, label, seed, config) only: deleting or reordering rows moves no other sample."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ostracon.nodes.partition import PARTITIONS, place, unit_hash

NUM_CLASSES = 10


def _data(n=5000, seed=0):
    ids = np.char.add("s", np.arange(n).astype(str))
    labels = np.random.default_rng(seed).integers(0, NUM_CLASSES, n)
    return ids, labels


def _place(ids, labels, **overrides):
    config = dict(seed=7, num_workers=6, num_slices=4, test_fraction=0.2, num_classes=NUM_CLASSES)
    config.update(overrides)
    return place(ids, labels, **config)


def _configs():
    return [
        dict(partition="iid"),
        dict(partition="dirichlet", alpha=0.3),
        dict(partition="by_class", classes_per_worker=2),
        dict(partition="by_class", classes_per_worker=1, num_workers=3),  # classes 3..9 held by nobody
    ]


def test_unit_hash_matches_the_sha256_definition():
    ids = np.array(["0", "417", "train-12", "ü-unicode"])
    u = unit_hash(ids, 5, "worker")
    for i, value in zip(ids, u, strict=True):
        top = int.from_bytes(hashlib.sha256(f"5:worker:{i}".encode()).digest()[:8], "big") >> 11
        assert value == top / 2**53
    assert u.dtype == np.float64 and ((u >= 0) & (u < 1)).all()


def test_unit_hash_is_fast_and_uniform():
    ids = np.arange(70_000).astype(str)
    start = time.perf_counter()
    u = unit_hash(ids, 0, "test")
    assert time.perf_counter() - start < 1.0  # typically ~0.1 s
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert counts.min() > 6300 and counts.max() < 7700


def test_unit_hash_salts_and_seeds_are_independent():
    ids = np.arange(1000).astype(str)
    assert not np.array_equal(unit_hash(ids, 0, "test"), unit_hash(ids, 0, "worker"))
    assert not np.array_equal(unit_hash(ids, 0, "test"), unit_hash(ids, 1, "test"))
    assert np.array_equal(unit_hash(list(ids), 0, "test"), unit_hash(ids, 0, "test"))


@pytest.mark.parametrize("config", _configs())
def test_placement_is_deterministic_and_seeded(config):
    ids, labels = _data()
    a = _place(ids, labels, **config)
    b = _place(ids, labels, **config)
    c = _place(ids, labels, **{**config, "seed": 8})
    for field in ("is_test", "worker", "slice"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.worker, c.worker)
    assert a.worker.dtype == np.int64 and a.slice.dtype == np.int64 and a.is_test.dtype == bool


@pytest.mark.parametrize("config", _configs())
def test_ranges_and_test_rows(config):
    ids, labels = _data()
    p = _place(ids, labels, **config)
    n_workers = config.get("num_workers", 6)
    train = ~p.is_test
    assert abs(p.is_test.mean() - 0.2) < 0.03
    assert (p.worker[p.is_test] == -1).all() and (p.slice[p.is_test] == -1).all()
    assert ((p.worker[train] >= 0) & (p.worker[train] < n_workers)).all()
    assert ((p.slice[train] >= 0) & (p.slice[train] < 4)).all()


@settings(max_examples=25, deadline=None)
@given(
    config_index=st.integers(0, 3),
    removed=st.sets(st.integers(0, 399), max_size=150),
    seed=st.integers(0, 2**31 - 1),
)
def test_removing_rows_moves_no_other_sample(config_index, removed, seed):
    ids, labels = _data(400, seed=1)
    config = {**_configs()[config_index], "seed": seed}
    full = _place(ids, labels, **config)
    keep = np.setdiff1d(np.arange(400), sorted(removed))
    part = _place(ids[keep], labels[keep], **config)
    assert np.array_equal(part.is_test, full.is_test[keep])
    assert np.array_equal(part.worker, full.worker[keep])
    assert np.array_equal(part.slice, full.slice[keep])


@settings(max_examples=15, deadline=None)
@given(config_index=st.integers(0, 3), perm_seed=st.integers(0, 2**31 - 1))
def test_shuffling_rows_permutes_placements(config_index, perm_seed):
    ids, labels = _data(400, seed=2)
    perm = np.random.default_rng(perm_seed).permutation(400)
    full = _place(ids, labels, **_configs()[config_index])
    shuffled = _place(ids[perm], labels[perm], **_configs()[config_index])
    assert np.array_equal(shuffled.worker, full.worker[perm])
    assert np.array_equal(shuffled.slice, full.slice[perm])
    assert np.array_equal(shuffled.is_test, full.is_test[perm])


def _mean_label_entropy(p, labels, num_workers):
    entropies = []
    for w in range(num_workers):
        counts = np.bincount(labels[p.worker == w], minlength=NUM_CLASSES)
        if counts.sum() == 0:
            continue
        q = counts[counts > 0] / counts.sum()
        entropies.append(-(q * np.log(q)).sum())
    return float(np.mean(entropies))


def test_dirichlet_small_alpha_is_skewed_iid_is_balanced():
    ids, labels = _data(20000)
    iid = _place(ids, labels, partition="iid", num_workers=8)
    skewed = _place(ids, labels, partition="dirichlet", alpha=0.05, num_workers=8)
    flat = _place(ids, labels, partition="dirichlet", alpha=1000.0, num_workers=8)
    assert _mean_label_entropy(iid, labels, 8) > 0.98 * np.log(NUM_CLASSES)
    assert _mean_label_entropy(flat, labels, 8) > 0.97 * np.log(NUM_CLASSES)
    assert _mean_label_entropy(skewed, labels, 8) < 0.5 * np.log(NUM_CLASSES)
    counts = np.bincount(iid.worker[~iid.is_test], minlength=8)
    assert counts.min() > 0.9 * counts.mean() and counts.max() < 1.1 * counts.mean()


def test_by_class_workers_hold_only_their_classes():
    ids, labels = _data()
    p = _place(ids, labels, partition="by_class", num_workers=5, classes_per_worker=2)
    for w in range(5):
        held = set(np.unique(labels[p.worker == w]))
        assert held == {(2 * w) % 10, (2 * w + 1) % 10}


def test_by_class_spreads_unheld_classes_over_all_workers():
    ids, labels = _data()
    p = _place(ids, labels, partition="by_class", num_workers=3, classes_per_worker=1)
    unheld = ~p.is_test & (labels >= 3)
    assert set(np.unique(p.worker[unheld])) == {0, 1, 2}
    held = ~p.is_test & (labels < 3)
    assert np.array_equal(p.worker[held], labels[held])


def test_test_fraction_zero_and_single_slice():
    ids, labels = _data(500)
    p = _place(ids, labels, test_fraction=0.0, num_slices=1)
    assert not p.is_test.any() and (p.slice == 0).all()


def test_bad_arguments_name_the_argument():
    ids, labels = _data(50)
    with pytest.raises(ValueError, match="known partitions: " + ", ".join(PARTITIONS)):
        _place(ids, labels, partition="round_robin")
    for alpha in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            _place(ids, labels, partition="dirichlet", alpha=alpha)
    with pytest.raises(ValueError, match="num_workers"):
        _place(ids, labels, num_workers=0)
    with pytest.raises(ValueError, match="num_slices"):
        _place(ids, labels, num_slices=0)
    for fraction in (1.0, -0.1):
        with pytest.raises(ValueError, match="test_fraction"):
            _place(ids, labels, test_fraction=fraction)
    with pytest.raises(ValueError, match="classes_per_worker"):
        _place(ids, labels, partition="by_class", classes_per_worker=0)
    with pytest.raises(ValueError, match="labels"):
        _place(ids, labels + 10)
    with pytest.raises(ValueError, match="labels"):
        _place(ids, labels[:-1])
