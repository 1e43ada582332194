"""Data sources: bundled, synthetic, and the on-disk formats read without torchvision."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from ostracon.nodes.data import SOURCES, Dataset, load_cifar_batch, load_dataset, read_idx

# --------------------------------------------------------------------- digits / synthetic


def test_digits_shapes_and_ranges():
    d = load_dataset("digits")
    assert len(d) == 1797 and d.feature_shape == (64,) and d.num_classes == 10
    assert d.ids.dtype.kind == "U" and d.ids[417] == "417"
    assert d.features.dtype == np.float32 and d.features.min() == 0.0 and d.features.max() == 1.0
    assert d.labels.dtype == np.int64 and set(np.unique(d.labels)) == set(range(10))
    assert len(np.unique(d.ids)) == len(d)


def test_samples_keeps_a_prefix_with_unchanged_ids():
    d = load_dataset("digits", samples=100)
    assert len(d) == 100 and d.ids[-1] == "99"


def test_synthetic_is_deterministic_and_seeded():
    a = load_dataset("synthetic", seed=3, samples=500, features=7, classes=4)
    b = load_dataset("synthetic", seed=3, samples=500, features=7, classes=4)
    c = load_dataset("synthetic", seed=4, samples=500, features=7, classes=4)
    assert a.features.shape == (500, 7) and a.num_classes == 4 and a.ids.dtype.kind == "U"
    assert np.array_equal(a.features, b.features) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.features, c.features)
    assert set(np.unique(a.labels)) == set(range(4))


def test_synthetic_row_depends_on_seed_and_index_only():
    small = load_dataset("synthetic", seed=1, samples=1000, features=5)
    large = load_dataset("synthetic", seed=1, samples=70000, features=5)  # crosses a block boundary
    assert np.array_equal(small.features, large.features[:1000])
    assert np.array_equal(small.labels, large.labels[:1000])


def test_synthetic_scales_to_a_million_rows():
    d = load_dataset("synthetic", samples=1_000_000, features=8)
    assert d.features.shape == (1_000_000, 8) and d.ids[-1] == "999999"
    assert d.ids.dtype == np.dtype("<U6")  # minimal width, not object


def test_synthetic_separation_controls_difficulty():
    def nearest_mean_accuracy(sep):
        d = load_dataset("synthetic", samples=4000, features=16, classes=5, separation=sep)
        means = np.stack([d.features[d.labels == c].mean(0) for c in range(5)])
        pred = np.argmin(((d.features[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
        return (pred == d.labels).mean()

    assert nearest_mean_accuracy(8.0) > 0.95 > nearest_mean_accuracy(0.5)


def test_bad_source_and_params():
    with pytest.raises(ValueError, match="known sources: " + ", ".join(SOURCES)):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="unknown param.*colour"):
        load_dataset("synthetic", colour="red")
    with pytest.raises(ValueError, match="features"):
        load_dataset("digits", features=3)
    with pytest.raises(ValueError, match="samples"):
        load_dataset("synthetic", samples=0)
    with pytest.raises(ValueError, match="classes"):
        load_dataset("digits", classes=5)  # labels go up to 9
    with pytest.raises(ValueError, match="path"):
        load_dataset("mnist")


def test_without_drops_the_given_ids():
    d = load_dataset("digits", samples=10)
    rest = d.without(["3", "7", "not-there"])
    assert list(rest.ids) == ["0", "1", "2", "4", "5", "6", "8", "9"]
    assert np.array_equal(rest.features, d.features[[0, 1, 2, 4, 5, 6, 8, 9]])
    assert len(d.without([])) == 10


def test_dataset_checks_dtypes():
    with pytest.raises(ValueError, match="unicode"):
        Dataset(np.arange(3).astype(object), np.zeros((3, 2), np.float32), np.zeros(3, np.int64), 2)


# --------------------------------------------------------------------- MNIST (real idx encoding)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """LeCun's idx format: 0, 0, dtype code 0x08 (ubyte), ndim, big-endian uint32 dims, data."""
    assert array.dtype == np.uint8
    blob = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob += array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(blob)
    else:
        path.write_bytes(blob)


def _fake_mnist(root: Path, folder: str, n_train=6, n_test=4, gz_test=True):
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    tr_x = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    tr_y = rng.integers(0, 10, n_train).astype(np.uint8)
    te_x = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    te_y = rng.integers(0, 10, n_test).astype(np.uint8)
    ext = ".gz" if gz_test else ""
    _write_idx(raw / "train-images-idx3-ubyte", tr_x)
    _write_idx(raw / "train-labels-idx1-ubyte", tr_y)
    _write_idx(raw / f"t10k-images-idx3-ubyte{ext}", te_x)
    _write_idx(raw / f"t10k-labels-idx1-ubyte{ext}", te_y)
    return tr_x, tr_y, te_x, te_y


@pytest.mark.parametrize("source,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_reads_idx_and_gz(tmp_path, source, folder):
    tr_x, tr_y, te_x, te_y = _fake_mnist(tmp_path, folder)
    d = load_dataset(source, path=tmp_path)
    assert d.features.shape == (10, 1, 28, 28) and d.features.dtype == np.float32 and d.num_classes == 10
    assert list(d.ids[:2]) == ["train-0", "train-1"] and d.ids[6] == "test-0" and d.ids.dtype.kind == "U"
    assert np.array_equal(d.features[:6, 0], tr_x.astype(np.float32) / 255)
    assert np.array_equal(d.features[6:, 0], te_x.astype(np.float32) / 255)
    assert np.array_equal(d.labels, np.concatenate([tr_y, te_y]).astype(np.int64))
    test_only = load_dataset(source, path=tmp_path, split="test")
    assert list(test_only.ids) == [f"test-{i}" for i in range(4)]
    assert np.array_equal(test_only.features, d.features[6:])


def test_mnist_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="downloads are disabled") as info:
        load_dataset("mnist", path=tmp_path)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in str(info.value)


def test_mnist_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", path=tmp_path, split="validation")


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 5) + b"\x00\x01")
    with pytest.raises(ValueError, match="needs 5"):
        read_idx(short)


# --------------------------------------------------------------------- CIFAR-10 (real pickle batches)


def _fake_cifar(root: Path, per_batch=3, protocol=2):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * per_batch}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        batches[name] = (data, labels)
    return batches


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_reads_python_batches(tmp_path, protocol):
    batches = _fake_cifar(tmp_path, protocol=protocol)
    d = load_dataset("cifar10", path=tmp_path)
    assert d.features.shape == (18, 3, 32, 32) and d.num_classes == 10
    assert d.ids[0] == "train-0" and d.ids[14] == "train-14" and d.ids[15] == "test-0"
    data, labels = batches["data_batch_2"]
    # Row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32.
    row = data[1]
    assert d.features[4, 1, 2, 5] == np.float32(row[1024 + 2 * 32 + 5]) / np.float32(255)
    assert np.array_equal(d.features[4].reshape(-1), row.astype(np.float32) / np.float32(255))
    assert d.labels[4] == labels[1]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_reader_refuses_arbitrary_globals(tmp_path):
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load global"):
        load_cifar_batch(evil)


def test_cifar_missing_batch(tmp_path):
    with pytest.raises(FileNotFoundError, match="downloads are disabled") as info:
        load_dataset("cifar10", path=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in str(info.value)


# --------------------------------------------------------------------- npz


def _npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_npz_with_string_and_int_ids(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    d = load_dataset("npz", path=_npz(tmp_path, X=x, y=np.array([0, 2, 1, 2]), ids=np.array(["a", "b", "c", "d"])))
    assert list(d.ids) == ["a", "b", "c", "d"] and d.num_classes == 3
    assert d.features.dtype == np.float32 and np.array_equal(d.features, x.astype(np.float32))
    d = load_dataset("npz", path=_npz(tmp_path, X=x, y=np.array([0, 2, 1, 2]), ids=np.array([10, 20, 30, 40])))
    assert list(d.ids) == ["10", "20", "30", "40"] and d.ids.dtype.kind == "U"
    d = load_dataset("npz", path=_npz(tmp_path, X=x, y=np.array([0, 1, 1, 0])), classes=5)
    assert list(d.ids) == ["0", "1", "2", "3"] and d.num_classes == 5


def test_npz_errors_name_the_key(tmp_path):
    x = np.zeros((3, 2))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_dataset("npz", path=tmp_path / "nope.npz")
    with pytest.raises(ValueError, match="missing key 'y'"):
        load_dataset("npz", path=_npz(tmp_path, X=x))
    with pytest.raises(ValueError, match="'y'.*integer"):
        load_dataset("npz", path=_npz(tmp_path, X=x, y=np.array([0.0, 1.0, 1.0])))
    with pytest.raises(ValueError, match="'X'"):
        load_dataset("npz", path=_npz(tmp_path, X=np.zeros((2, 2)), y=np.array([0, 1, 1])))
    with pytest.raises(ValueError, match="'X'.*NaN"):
        load_dataset("npz", path=_npz(tmp_path, X=np.full((3, 2), np.nan), y=np.array([0, 1, 1])))
    dup_ids = np.array(["a", "b", "a", "b"])
    with pytest.raises(ValueError, match=r"duplicates: 'a', 'b'"):
        load_dataset("npz", path=_npz(tmp_path, X=np.zeros((4, 2)), y=np.array([0, 1, 1, 0]), ids=dup_ids))
    with pytest.raises(ValueError, match="'ids'"):
        load_dataset("npz", path=_npz(tmp_path, X=x, y=np.array([0, 1, 1]), ids=np.array(["a", "b"])))
    with pytest.raises(ValueError, match="'ids'.*pickle"):
        load_dataset("npz", path=_npz(tmp_path, X=x, y=np.array([0, 1, 1]), ids=np.array(["a", 1, None], dtype=object)))
