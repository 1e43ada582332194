"""Data sources: every dataset a worker can train on, as plain numpy arrays.

A :class:`Dataset` carries a stable string id per sample. Ids, not row
positions, are what placement (``ostracon.nodes.partition``), the shard store and
deletion requests refer to, so they must not change when rows are added,
removed or reordered.

Sources (``load_dataset(source, ...)``):

``digits``
    scikit-learn's bundled 8x8 digits (1797 rows, no download); features
    ``(N, 64)`` scaled to [0, 1]; ids are the row index (``"417"``).
``synthetic``
    a seeded Gaussian mixture; ``samples``, ``features``, ``classes``,
    ``separation`` (distance between class means in units of the noise
    standard deviation, on average). Row ``i`` depends only on
    ``(seed, i)``, never on ``samples``; ids are the row index.
``mnist``, ``fashion_mnist``
    idx-ubyte files (optionally ``.gz``) under ``<path>/MNIST/raw`` or
    ``<path>/FashionMNIST/raw`` (torchvision's layout, ``download=False``);
    features ``(N, 1, 28, 28)`` in [0, 1].
``cifar10``
    the python batches under ``<path>/cifar-10-batches-py``; features
    ``(N, 3, 32, 32)`` in [0, 1].
``npz``
    a user file at ``path`` with arrays ``X``, ``y`` and optional ``ids``.
``parquet``
    ``path`` is a file, a directory of ``.parquet`` files, or a URI (``s3://bucket/prefix``) with
    columns ``id``, ``label``, ``features``; param ``shape`` reshapes each row's features
    (``ostracon.nodes.parquet``).

For the image sources, param ``split`` is ``"train"``, ``"test"`` or ``"all"``
(default: both, concatenated); ids are ``"train-<i>"`` / ``"test-<i>"`` with
``i`` the index inside the official split file(s), so an id means the same
sample whichever split was loaded. The held-out set of a run is chosen by
``ostracon.nodes.partition`` (hash of the id), not by the official split.

``samples`` on a non-synthetic source keeps the first ``samples`` rows (ids
unchanged). ``classes`` overrides ``num_classes`` (must exceed every label).
``seed`` is used by ``synthetic`` only; the other sources are fixed files.
Nothing is ever downloaded: a missing file is a ``FileNotFoundError``.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.npyio import NpzFile

from .parquet import read_parquet

SOURCES = ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "npz", "parquet")
IMAGE_SPLITS = ("train", "test", "all")

# Rows per independent random stream of the synthetic source (row i's values never depend on N).
_SYNTHETIC_BLOCK = 65536


@dataclass(frozen=True)
class Dataset:
    """Samples with stable string ids.

    ``ids`` is a fixed-width unicode array (``<U``), ``features`` float32
    ``(N, *feature_shape)``, ``labels`` int64 ``(N,)`` in ``[0, num_classes)``.
    """

    ids: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        if self.ids.dtype.kind != "U" or self.ids.ndim != 1:
            raise ValueError(f"ids must be a 1-D unicode array, got dtype {self.ids.dtype} shape {self.ids.shape}")
        if self.features.dtype != np.float32 or self.features.ndim < 2:
            raise ValueError(
                f"features must be float32 of shape (N, ...), got {self.features.dtype} {self.features.shape}"
            )
        if self.labels.dtype != np.int64 or self.labels.ndim != 1:
            raise ValueError(f"labels must be int64 of shape (N,), got {self.labels.dtype} {self.labels.shape}")
        n = len(self.ids)
        if self.features.shape[0] != n or self.labels.shape[0] != n:
            raise ValueError(
                f"row counts differ: ids {n}, features {self.features.shape[0]}, labels {self.labels.shape[0]}"
            )

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one sample's features."""
        return tuple(self.features.shape[1:])

    def __len__(self) -> int:
        return len(self.ids)

    def without(self, ids: Iterable[str]) -> Dataset:
        """The rows whose id is not in ``ids`` (order kept)."""
        drop = np.asarray(list(ids), dtype=str)
        keep = ~np.isin(self.ids, drop)
        return Dataset(self.ids[keep], self.features[keep], self.labels[keep], self.num_classes)


def load_dataset(
    source: str,
    *,
    path: str | os.PathLike[str] | None = None,
    seed: int = 0,
    samples: int | None = None,
    features: int | None = None,
    classes: int | None = None,
    **params: Any,
) -> Dataset:
    """Load ``source`` (one of :data:`SOURCES`); see the module docstring for each source's params."""
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; known sources: {', '.join(SOURCES)}")
    if source == "synthetic":
        return _synthetic(seed, samples, features, classes, params)
    if features is not None:
        raise ValueError(f"param 'features' applies only to source 'synthetic', not {source!r}")
    if source == "digits":
        _reject_params(source, params, allowed=())
        ids, x, y, k = _digits()
    elif source == "npz":
        _reject_params(source, params, allowed=())
        ids, x, y, k = _npz(_require_path(source, path))
    elif source == "parquet":
        _reject_params(source, params, allowed=("shape",))
        ids, x, y, k = read_parquet(_require_path(source, path), params.get("shape") or ())
    else:
        _reject_params(source, params, allowed=("split",))
        split = params.get("split", "all")
        if split not in IMAGE_SPLITS:
            raise ValueError(f"split must be one of {IMAGE_SPLITS}, got {split!r}")
        reader = _cifar10 if source == "cifar10" else _mnist_like
        ids, x, y, k = reader(source, Path(_require_path(source, path)), split)
    if samples is not None:
        _check_positive_int("samples", samples)
        ids, x, y = ids[:samples], x[:samples], y[:samples]
    return Dataset(ids, x, y, _num_classes(y, k, classes))


# --------------------------------------------------------------------- helpers


def _reject_params(source: str, params: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        hint = f"; accepted: {', '.join(allowed)}" if allowed else ""
        raise ValueError(f"unknown param(s) for source {source!r}: {', '.join(unknown)}{hint}")


def _require_path(source: str, path: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
    if path is None:
        what = "the .npz file" if source == "npz" else "the dataset root directory"
        raise ValueError(f"source {source!r} needs path= ({what})")
    return path


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _num_classes(labels: np.ndarray, default: int, override: int | None) -> int:
    """``override`` if given (checked against the labels), else ``default``."""
    if override is None:
        return default
    _check_positive_int("classes", override)
    if labels.size and int(labels.max()) >= override:
        raise ValueError(f"classes={override} but labels go up to {int(labels.max())}")
    return int(override)


def _index_ids(n: int, prefix: str = "") -> np.ndarray:
    """``prefix + str(i)`` for ``i < n`` as a minimal-width unicode array."""
    width = len(str(max(n - 1, 0)))
    digits = np.arange(n).astype(f"<U{width}")
    if not prefix:
        return digits
    return np.char.add(prefix, digits).astype(f"<U{len(prefix) + width}")


# --------------------------------------------------------------------- digits / synthetic


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)  # pixel counts are 0..16
    y = bunch.target.astype(np.int64)
    return _index_ids(len(y)), x, y, 10


def _synthetic(
    seed: int, samples: int | None, features: int | None, classes: int | None, params: Mapping[str, Any]
) -> Dataset:
    """Gaussian mixture: class means ~ N(0, s^2 I) with s = separation / sqrt(2 d), unit noise."""
    _reject_params("synthetic", params, allowed=("separation",))
    n = _check_positive_int("samples", 10000 if samples is None else samples)
    d = _check_positive_int("features", 32 if features is None else features)
    k = _check_positive_int("classes", 10 if classes is None else classes, minimum=2)
    separation = float(params.get("separation", 3.0))
    if not np.isfinite(separation) or separation < 0:
        raise ValueError(f"separation must be a finite number >= 0, got {params.get('separation')!r}")
    # E||mu_a - mu_b|| ~= s * sqrt(2d) = separation, whatever the dimension.
    means = np.random.default_rng([seed, 0]).standard_normal((k, d)) * (separation / np.sqrt(2.0 * d))
    means = means.astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    for block, start in enumerate(range(0, n, _SYNTHETIC_BLOCK)):
        stop = min(start + _SYNTHETIC_BLOCK, n)
        # One stream per fixed-size block: row i depends on (seed, i) only, not on n.
        rng = np.random.default_rng([seed, 1, block])
        labels = rng.integers(0, k, size=_SYNTHETIC_BLOCK)[: stop - start]
        noise = rng.standard_normal((_SYNTHETIC_BLOCK, d), dtype=np.float32)[: stop - start]
        y[start:stop] = labels
        x[start:stop] = means[labels] + noise
    return Dataset(_index_ids(n), x, y, k)


# --------------------------------------------------------------------- MNIST / Fashion-MNIST

_MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _splits(split: str) -> tuple[str, ...]:
    return ("train", "test") if split == "all" else (split,)


def _mnist_like(source: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    raw = root / _MNIST_FOLDERS[source] / "raw"
    parts = []
    for part in _splits(split):
        image_name, label_name = _MNIST_FILES[part]
        images = read_idx(_find_raw_file(raw, image_name, source))
        labels = read_idx(_find_raw_file(raw, label_name, source))
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{source} {part}: images {images.shape} and labels {labels.shape} do not match "
                "(expected (N, rows, cols) and (N,))"
            )
        parts.append((part, images, labels))
    return _stack_image_parts(parts, num_classes=10, channels_last=False)


def _find_raw_file(raw: Path, name: str, source: str) -> Path:
    """``raw/name`` or ``raw/name.gz``; a clear error when neither exists."""
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{source}: expected {raw / name} (or {name}.gz); downloads are disabled, "
        f"place the raw files there (torchvision layout)"
    )


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode one idx file (LeCun's format; gzip if the name ends in ``.gz``).

    Layout: two zero bytes, a dtype code, the number of dimensions, then each
    dimension as a big-endian uint32, then the data in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        blob = handle.read()
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (bad magic number {blob[:4].hex()})")
    ndim = blob[3]
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise ValueError(f"{path}: truncated idx header")
    shape = tuple(int(v) for v in np.frombuffer(blob, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[blob[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(blob) - header != expected:
        raise ValueError(f"{path}: idx data has {len(blob) - header} bytes, shape {shape} needs {expected}")
    return np.frombuffer(blob, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _stack_image_parts(
    parts: Iterable[tuple[str, np.ndarray, np.ndarray]], num_classes: int, channels_last: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Concatenate (split, uint8 images, labels) parts; ids ``"<split>-<i>"``; pixels to [0, 1]."""
    ids: list[np.ndarray] = []
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for part, images, labels in parts:
        x = np.asarray(images, dtype=np.float32) / np.float32(255.0)
        if x.ndim == 3:
            x = x[:, None, :, :]  # greyscale: add the channel axis, (N, 1, H, W)
        elif channels_last:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        ids.append(_index_ids(len(labels), prefix=f"{part}-"))
        xs.append(x)
        ys.append(np.asarray(labels, dtype=np.int64))
    y = np.concatenate(ys)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    width = max(i.dtype.itemsize // 4 for i in ids)
    return np.concatenate(ids).astype(f"<U{width}"), np.concatenate(xs), y, num_classes


# --------------------------------------------------------------------- CIFAR-10

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}

# The only globals a CIFAR batch (a dict of bytes, ints, lists and one uint8 array) may name.
_CIFAR_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array reconstruction (no code execution via globals)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def load_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch: ``(uint8 images (N, 32, 32, 3), labels (N,))``.

    The batches are pickles; they are read with an unpickler that refuses every
    global but numpy array reconstruction, so a tampered file cannot run code.
    """
    with open(path, "rb") as handle:
        try:
            batch = _RestrictedUnpickler(handle, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
            raise ValueError(f"{path}: not a CIFAR-10 batch ({error})") from error
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 batch (top level is {type(batch).__name__}, expected dict)")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: key 'data' must be a uint8 array of shape (N, 3072)")
    if not isinstance(labels, list) or len(labels) != data.shape[0]:
        raise ValueError(f"{path}: key 'labels' must be a list of {data.shape[0]} ints")
    labels_arr = np.asarray(labels)
    if labels_arr.size and labels_arr.dtype.kind not in "iu":
        raise ValueError(f"{path}: key 'labels' must hold ints")
    # Rows are 1024 red, then green, then blue values, each plane row-major.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels_arr.astype(np.int64)


def _cifar10(source: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    folder = root / _CIFAR_FOLDER
    parts = []
    for part in _splits(split):
        images, labels = [], []
        for name in _CIFAR_FILES[part]:
            file = folder / name
            if not file.is_file():
                raise FileNotFoundError(
                    f"{source}: expected {file}; downloads are disabled, extract cifar-10-python.tar.gz under {root}"
                )
            x, y = load_cifar_batch(file)
            images.append(x)
            labels.append(y)
        parts.append((part, np.concatenate(images), np.concatenate(labels)))
    return _stack_image_parts(parts, num_classes=10, channels_last=True)


# --------------------------------------------------------------------- npz


def _npz(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz source: no file at {path}")
    if not zipfile.is_zipfile(path):  # np.load would take it for a pickle, or fail on an empty file
        size = path.stat().st_size
        raise ValueError(f"{path}: not an .npz archive ({'empty file' if size == 0 else f'{size} bytes'}); "
                         "expected numpy.savez output with arrays X and y")
    with np.load(path, allow_pickle=False) as archive:
        x = _npz_array(archive, "X", path)
        y = _npz_array(archive, "y", path)
        raw_ids = _npz_array(archive, "ids", path) if "ids" in archive.files else None
    n = check_npz_labels(y, path)
    if x.ndim < 2 or x.shape[0] != n:
        raise ValueError(f"{path}: key 'X' must have shape (N, ...) with N = len(y) = {n}, got {x.shape}")
    if x.dtype.kind not in "iuf":
        raise ValueError(f"{path}: key 'X' must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: key 'X' contains NaN or Inf")
    ids = _index_ids(n) if raw_ids is None else check_npz_ids(raw_ids, n, path)
    num_classes = int(y.max()) + 1
    if num_classes < 2:
        raise ValueError(f"{path}: key 'y' holds only label 0; a classifier needs at least 2 classes")
    return ids, x, y.astype(np.int64), num_classes


def check_npz_labels(y: np.ndarray, path: Path) -> int:
    """Refuse labels that are not a non-empty 1-D array of integers >= 0; returns the row count."""
    if y.ndim != 1:
        raise ValueError(f"{path}: key 'y' must be 1-D (N,), got shape {y.shape}")
    if y.size == 0:
        raise ValueError(f"{path}: holds no samples (key 'y' is empty)")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{path}: key 'y' must hold integer labels, got dtype {y.dtype}")
    if y.min() < 0:
        raise ValueError(f"{path}: key 'y' has negative labels (min {y.min()})")
    return int(y.shape[0])


def _npz_array(archive: NpzFile, key: str, path: Path) -> np.ndarray:
    if key not in archive.files:
        raise ValueError(f"{path}: missing key {key!r} (found: {', '.join(archive.files) or 'none'})")
    try:
        return archive[key]
    except ValueError as error:  # object arrays need pickle, which is refused
        raise ValueError(f"{path}: key {key!r} cannot be loaded without pickle ({error})") from error


def check_npz_ids(raw: np.ndarray, n: int, path: Path) -> np.ndarray:
    """Convert ids (str, bytes or int) to unicode and require them unique."""
    if raw.shape != (n,):
        raise ValueError(f"{path}: key 'ids' must have shape ({n},), got {raw.shape}")
    if raw.dtype.kind == "S":
        raw = np.char.decode(raw, "utf-8")
    elif raw.dtype.kind not in "Uiu":
        raise ValueError(f"{path}: key 'ids' must hold strings or integers, got dtype {raw.dtype}")
    ids = raw.astype(str)
    if ids.size and np.char.str_len(ids).min() == 0:
        raise ValueError(f"{path}: key 'ids' contains an empty id")
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != n:
        dups = unique[counts > 1]
        shown = ", ".join(repr(str(d)) for d in dups[:20])
        more = f" and {len(dups) - 20} more" if len(dups) > 20 else ""
        raise ValueError(f"{path}: key 'ids' has duplicates: {shown}{more}")
    return ids
