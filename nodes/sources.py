"""Where a worker's rows come from: a description of a few hundred bytes, never the rows.

A :class:`ShardSource` names the data source (:class:`SourceSpec`), how samples are placed
(:class:`PlacementSpec`: the arguments of :func:`ostracon.nodes.partition.place`), which placement
position's rows the worker holds, the ids of those rows that the ledger deletes, and where the worker
keeps its store. The worker turns it into its rows itself (:func:`read_shard`): it reads the id and
label columns, places every id (the same function of ``(id, label, seed)`` the coordinator uses, so
digests never depend on who read the rows), and reads the features of its own rows only:

- ``npz``: ``y`` and ``ids`` are read; ``X`` is memory-mapped when the archive stores it uncompressed
  (``numpy.savez``) and only the worker's rows are copied out (``savez_compressed`` archives are
  decompressed once, then the same rows kept);
- ``parquet``: the ``id`` and ``label`` columns are read; ``features`` is streamed in record batches
  and only the worker's rows kept (one batch in memory at a time); files holding none of its rows are
  never opened for features;
- ``digits``, ``synthetic``, ``mnist``, ``fashion_mnist``, ``cifar10``: the built-in readers
  (``ostracon.nodes.data``), then the worker's rows kept.

Features stay in their stored dtype when it is an integer type (uint8 images stay uint8: the worker
casts a batch to float32 on its device, which is exact); floating features are float32.
"""

from __future__ import annotations

import functools
import hashlib
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import Dataset, check_npz_ids, check_npz_labels, load_dataset
from .partition import Placement, place

BUILT_IN = ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10")
NO_HOLDER = -1  # a worker that holds no rows (an attacker when only honest workers hold data)


class SourceChangedError(ValueError):
    """The rows a worker reads differ from the rows its state was trained on."""


@dataclass(frozen=True)
class SourceSpec:
    """A data source as the config names it (``data.*``); what ``load_dataset`` takes."""

    source: str
    path: str = ""
    shape: tuple[int, ...] = ()
    samples: int | None = None  # synthetic only
    features: int | None = None  # synthetic only
    classes: int | None = None  # synthetic only
    seed: int = 0
    # Cross-silo (``data.per_worker``): the files of the data-holding workers, in placement order; the
    # source is their concatenation and ``path`` the template they were named from.
    parts: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.source == MEMORY:
            return "the dataset given in memory"
        return f"{self.source}{' ' + self.path if self.path else ''}"

    def part(self, k: int) -> SourceSpec:
        """The source of part ``k`` alone (one worker's own file)."""
        return SourceSpec(source=self.source, path=self.parts[k], shape=self.shape)


@dataclass(frozen=True)
class PlacementSpec:
    """The arguments of :func:`ostracon.nodes.partition.place` but the data."""

    seed: int
    num_workers: int
    num_slices: int
    test_fraction: float
    partition: str
    alpha: float
    classes_per_worker: int

    def place(self, index: SourceIndex) -> Placement:
        return place(index.ids, index.labels, seed=self.seed, num_workers=self.num_workers,
                     num_slices=self.num_slices, test_fraction=self.test_fraction, partition=self.partition,
                     alpha=self.alpha, classes_per_worker=self.classes_per_worker,
                     num_classes=index.num_classes)


@dataclass(frozen=True)
class ShardSource:
    """What a worker needs to find its rows: the source, the placement, its placement position
    (``holder``; :data:`NO_HOLDER` for none), the ids of those rows the ledger deletes, where it keeps
    its store (None: in memory) and, once training recorded it, the digest its source rows must have."""

    source: SourceSpec
    placement: PlacementSpec
    holder: int
    deleted: tuple[str, ...] = ()
    store_path: str | None = None
    expected_digest: str | None = None


@dataclass(frozen=True)
class SourceIndex:
    """Every row's id and label, in source order, and what a row's features look like."""

    ids: np.ndarray  # <U, unique
    labels: np.ndarray  # int64
    num_classes: int
    feature_shape: tuple[int, ...]
    feature_dtype: np.dtype
    part: np.ndarray | None = None  # cross-silo: the part (file) of each row; None: one source

    def __len__(self) -> int:
        return len(self.ids)

    def digest(self) -> str:
        """sha256 over ids, labels, class count and feature shape and dtype: the source's index."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.ids).tobytes())
        h.update(np.ascontiguousarray(self.labels, dtype="<i8").tobytes())
        h.update(f"{self.num_classes}|{self.feature_shape}|{np.dtype(self.feature_dtype).str}".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class Rows:
    """A worker's rows: ids, features (stored dtype), labels, slices."""

    ids: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    slices: np.ndarray


def rows_digest(ids: np.ndarray, features: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over rows sorted by id (so a store, kept sorted, digests as its source rows): ids, labels,
    features bytes and dtype."""
    order = np.argsort(ids, kind="stable")
    ids, features, labels = ids[order], features[order], labels[order]
    ids = ids.astype(f"<U{max(int(np.char.str_len(ids).max()), 1)}") if ids.size else np.zeros(0, dtype="<U1")
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(ids).tobytes())
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    h.update(f"{features.dtype.str}|{features.shape[1:]}".encode())
    h.update(np.ascontiguousarray(features).tobytes())
    return h.hexdigest()


# ----- reading --------------------------------------------------------------------------------------
def read_index(source: SourceSpec, *, one_class_ok: bool = False) -> SourceIndex:
    """The ids and labels of every row (features are not read, except for the built-in sources)."""
    if source.parts:
        return _parts_index(source)
    if source.source == "npz":
        return _npz_index(Path(_need_path(source)), one_class_ok)
    if source.source == "parquet":
        from .parquet import read_parquet_index

        ids, labels, num_classes, shape, dtype = read_parquet_index(_need_path(source), source.shape,
                                                                    one_class_ok=one_class_ok)
        return SourceIndex(ids, labels, num_classes, shape, dtype)
    whole = _built_in(source)
    return SourceIndex(whole.ids, whole.labels, whole.num_classes, whole.feature_shape, whole.features.dtype)


def read_features(source: SourceSpec, positions: np.ndarray) -> np.ndarray:
    """The features of the rows at ``positions`` (ascending source positions), in source order."""
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size > 1 and not (np.diff(positions) > 0).all():
        raise ValueError("positions must be strictly ascending")
    if source.parts:
        return _parts_features(source, positions)
    if source.source == "npz":
        return _npz_features(Path(_need_path(source)), positions)
    if source.source == "parquet":
        from .parquet import read_parquet_features

        return read_parquet_features(_need_path(source), source.shape, positions)
    features: np.ndarray = _built_in(source).features[positions]
    return features


def read_rows(source: SourceSpec, index: SourceIndex, ids: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(features, labels)`` of ``ids`` (each must be in ``index``), in the order given."""
    wanted = np.asarray(list(ids), dtype=str)
    if wanted.size == 0:
        return np.zeros((0, *index.feature_shape), dtype=index.feature_dtype), np.zeros(0, dtype=np.int64)
    order = np.argsort(index.ids, kind="stable")
    at = np.searchsorted(index.ids[order], wanted)
    at = np.minimum(at, len(order) - 1)
    found = index.ids[order][at] == wanted
    if not found.all():
        raise KeyError(f"id(s) not in the source: {', '.join(wanted[~found][:10].tolist())}")
    positions = order[at]
    unique, back = np.unique(positions, return_inverse=True)
    return read_features(source, unique)[back], index.labels[positions]


def read_shard(shard: ShardSource, index: SourceIndex | None = None) -> Rows:
    """The worker's rows: those placed at ``shard.holder`` minus ``shard.deleted``. Checks them against
    ``shard.expected_digest`` (every row placed there, deleted ones included) when it is set."""
    if shard.holder == NO_HOLDER:  # nothing to read (and, cross-silo, no file of its own to read it from)
        empty = np.zeros(0, dtype=np.int64)
        return Rows(np.zeros(0, dtype="<U1"), np.zeros((0, 1), dtype=np.float32), empty, empty)
    index = index if index is not None else read_index(shard.source, one_class_ok=True)
    placement = shard.placement.place(index)
    positions = np.flatnonzero(placement.worker == shard.holder)
    features = read_features(shard.source, positions)
    ids, labels = index.ids[positions], index.labels[positions]
    if shard.expected_digest is not None:
        found = rows_digest(ids, features, labels)
        if found != shard.expected_digest:
            raise SourceChangedError(
                f"the rows of {shard.source.describe()} placed at position {shard.holder} differ from those "
                f"this state was trained on (sha256 {found[:16]}... != recorded {shard.expected_digest[:16]}...); "
                "exact deletion and verification need the original data")
    keep = ~np.isin(ids, np.asarray(shard.deleted, dtype=str)) if shard.deleted else np.ones(len(ids), bool)
    return Rows(ids[keep], features[keep], labels[keep], placement.slice[positions][keep])


@dataclass(frozen=True)
class HeldOut:
    """Held-out rows (in no worker's shard): ids, features in stored dtype, labels."""

    ids: np.ndarray
    features: np.ndarray
    labels: np.ndarray


HELD_OUT_CHUNK = 16384  # rows read at a time: a multiple of evaluation's 4096-row batches (same sums)


@functools.lru_cache(maxsize=1)
def _held_out_index(source: SourceSpec, placement: PlacementSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, labels, source positions) of the held-out rows, in source order."""
    index = read_index(source, one_class_ok=True)
    positions = np.flatnonzero(placement.place(index).is_test)
    return index.ids[positions], index.labels[positions], positions


@functools.lru_cache(maxsize=1)
def _small_held_out(source: SourceSpec, placement: PlacementSpec) -> HeldOut:
    ids, labels, positions = _held_out_index(source, placement)
    return HeldOut(ids, read_features(source, positions), labels)


def iter_held_out(source: SourceSpec, placement: PlacementSpec, chunk_rows: int = HELD_OUT_CHUNK) -> Iterator[HeldOut]:
    """The held-out rows in source order, ``chunk_rows`` at a time: a large split is streamed (read again
    at each evaluation, never held whole); one chunk or less is read once per process and kept."""
    ids, labels, positions = _held_out_index(source, placement)
    if len(positions) <= chunk_rows:
        yield _small_held_out(source, placement)
        return
    for start in range(0, len(positions), chunk_rows):
        part = slice(start, start + chunk_rows)
        yield HeldOut(ids[part], read_features(source, positions[part]), labels[part])


def held_out_digest(source: SourceSpec, placement: PlacementSpec) -> str:
    """sha256 over the held-out rows in source order (ids, labels, features and their dtype), streamed."""
    h = hashlib.sha256()
    for chunk in iter_held_out(source, placement):
        h.update("\n".join(chunk.ids.tolist()).encode() + b"\0")
        h.update(np.ascontiguousarray(chunk.labels, dtype="<i8").tobytes())
        h.update(f"{chunk.features.dtype.str}|{chunk.features.shape[1:]}".encode())
        h.update(np.ascontiguousarray(chunk.features).tobytes())
    return h.hexdigest()


def shard_digest(shard: ShardSource, index: SourceIndex | None = None) -> str:
    """The digest :func:`read_shard` checks: every row placed at the shard's position, deleted ones included."""
    full = read_shard(ShardSource(shard.source, shard.placement, shard.holder), index)
    return rows_digest(full.ids, full.features, full.labels)


_MEMORY: dict[str, Dataset] = {}
MEMORY = "memory"  # a Dataset handed to train(dataset=...): this process only


def register_dataset(dataset: Dataset) -> SourceSpec:
    """A :class:`SourceSpec` naming ``dataset``, held in this process (workers of the local backend read it)."""
    _MEMORY[str(id(dataset))] = dataset  # held here, so the id stays this dataset's
    return SourceSpec(source=MEMORY, path=str(id(dataset)))


def release() -> None:
    """Forget the built-in dataset this process read last (kept so that workers of one process share it)."""
    _built_in.cache_clear()
    _held_out_index.cache_clear()
    _small_held_out.cache_clear()


# ----- cross-silo: one file per worker ---------------------------------------------------------------
def _parts_index(source: SourceSpec) -> SourceIndex:
    """The index of every part, concatenated (what the coordinator reads: ids and labels only)."""
    found = [read_index(source.part(k), one_class_ok=True) for k in range(len(source.parts))]
    layouts = {(f.feature_shape, np.dtype(f.feature_dtype).str) for f in found}
    if len(layouts) > 1:
        raise ValueError(f"data.per_worker = {source.path!r}: the files hold features of different shapes or dtypes "
                         f"{sorted(layouts)}")
    ids = np.concatenate([f.ids for f in found])
    part = np.concatenate([np.full(len(f), k, dtype=np.int32) for k, f in enumerate(found)])
    unique, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if len(unique) != len(ids):
        dup = str(unique[counts > 1][0])
        files = [source.parts[k] for k, f in enumerate(found) if dup in f.ids]
        raise ValueError(f"{files[-1]}: id {dup!r} is also in {files[0]}; ids must be unique over every worker's file")
    labels = np.concatenate([f.labels for f in found])
    num_classes = int(labels.max()) + 1 if labels.size else 0
    if num_classes < 2:
        raise ValueError(f"data.per_worker = {source.path!r}: the files hold only label 0; a classifier needs at "
                         "least 2 classes")
    return SourceIndex(ids, labels, num_classes, found[0].feature_shape, found[0].feature_dtype, part)


def _parts_features(source: SourceSpec, positions: np.ndarray) -> np.ndarray:
    """Features at global positions (over the concatenated parts), each part's rows read from its file."""
    index = _parts_index(source)
    assert index.part is not None
    starts = np.concatenate([[0], np.cumsum(np.bincount(index.part, minlength=len(source.parts)))])
    out = []
    for k in range(len(source.parts)):
        lo, hi = np.searchsorted(positions, [starts[k], starts[k + 1]])
        if hi > lo:
            out.append(read_features(source.part(k), positions[lo:hi] - starts[k]))
    if not out:
        return np.zeros((0, *index.feature_shape), dtype=index.feature_dtype)
    return np.concatenate(out)


# ----- built-in sources -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _built_in(source: SourceSpec) -> Dataset:
    if source.source == MEMORY:
        if source.path not in _MEMORY:
            raise ValueError("data given in memory (train(dataset=...)) is readable only in the process that holds "
                             "it: use the local backend, or write it to a parquet or npz file")
        return _MEMORY[source.path]
    if source.source == "synthetic":
        return load_dataset("synthetic", seed=source.seed, samples=source.samples, features=source.features,
                            classes=source.classes)
    return load_dataset(source.source, path=source.path or None)


def _need_path(source: SourceSpec) -> str:
    if not source.path:
        what = "the .npz file" if source.source == "npz" else "a file, directory or URI"
        raise ValueError(f"source {source.source!r} needs path= ({what})")
    return source.path


# ----- npz ------------------------------------------------------------------------------------------
def _npz_check(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"npz source: no file at {path}")
    if not zipfile.is_zipfile(path):  # np.load would take it for a pickle, or fail on an empty file
        size = path.stat().st_size
        raise ValueError(f"{path}: not an .npz archive ({'empty file' if size == 0 else f'{size} bytes'}); "
                         "expected numpy.savez output with arrays X and y")


def _npz_index(path: Path, one_class_ok: bool = False) -> SourceIndex:
    _npz_check(path)
    with np.load(path, allow_pickle=False) as archive:
        for key in ("X", "y"):
            if key not in archive.files:
                raise ValueError(f"{path}: missing key {key!r} (found: {', '.join(archive.files) or 'none'})")
        y = _npz_member(archive, "y", path)
        raw_ids = _npz_member(archive, "ids", path) if "ids" in archive.files else None
    shape, dtype = _npz_x_header(path)
    n = check_npz_labels(y, path)
    if len(shape) < 2 or shape[0] != n:
        raise ValueError(f"{path}: key 'X' must have shape (N, ...) with N = len(y) = {n}, got {shape}")
    if dtype.kind not in "iuf":
        raise ValueError(f"{path}: key 'X' must be numeric, got dtype {dtype}")
    ids = np.arange(n).astype(f"<U{len(str(max(n - 1, 0)))}") if raw_ids is None else check_npz_ids(raw_ids, n, path)
    num_classes = int(y.max()) + 1
    if num_classes < 2 and not one_class_ok:
        raise ValueError(f"{path}: key 'y' holds only label 0; a classifier needs at least 2 classes")
    return SourceIndex(ids, y.astype(np.int64), num_classes, tuple(shape[1:]), _kept_dtype(dtype))


def _npz_member(archive: Any, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(archive[key])
    except ValueError as error:  # object arrays need pickle, which is refused
        raise ValueError(f"{path}: key {key!r} cannot be loaded without pickle ({error})") from error


def _kept_dtype(dtype: np.dtype) -> np.dtype:
    """Integer features keep their dtype (cast on the device); floating ones become float32."""
    return np.dtype(dtype) if np.dtype(dtype).kind in "iu" else np.dtype(np.float32)


def _npz_x_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    with zipfile.ZipFile(path) as archive, archive.open("X.npy") as member:
        version = np.lib.format.read_magic(member)
        shape, fortran, dtype = _read_header(member, version)
    return tuple(shape), np.dtype(dtype)


def _read_header(handle: Any, version: tuple[int, int]) -> tuple[tuple[int, ...], bool, np.dtype]:
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    return np.lib.format.read_array_header_2_0(handle)


def map_npz_features(path: Path) -> np.ndarray | None:
    """``X`` memory-mapped from the archive when it is stored uncompressed and C-ordered, else None."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("X.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as raw:
            raw.seek(info.header_offset)
            local = raw.read(30)
            if local[:4] != b"PK\x03\x04":
                return None
            name_len = int.from_bytes(local[26:28], "little")
            extra_len = int.from_bytes(local[28:30], "little")
            start = info.header_offset + 30 + name_len + extra_len
            raw.seek(start)
            version = np.lib.format.read_magic(raw)
            shape, fortran, dtype = _read_header(raw, version)
            offset = raw.tell()
    if fortran or np.dtype(dtype).hasobject:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))


def _npz_features(path: Path, positions: np.ndarray) -> np.ndarray:
    _npz_check(path)
    mapped = map_npz_features(path)
    if mapped is not None:
        x = np.asarray(mapped[positions])
        del mapped
    else:
        with np.load(path, allow_pickle=False) as archive:
            x = _npz_member(archive, "X", path)[positions]
    x = x.astype(_kept_dtype(x.dtype), copy=False)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"{path}: key 'X' contains NaN or Inf")
    return x


def source_spec(data: Any, seed: int) -> SourceSpec:
    """The :class:`SourceSpec` of a config's ``data`` section (``samples``/``features``/``classes``
    apply to ``synthetic`` only)."""
    synthetic = data.source == "synthetic"
    return SourceSpec(source=data.source, path=str(data.path or ""), shape=tuple(int(s) for s in data.shape),
                      samples=data.samples if synthetic else None, features=data.features if synthetic else None,
                      classes=data.classes if synthetic else None, seed=seed if synthetic else 0)
