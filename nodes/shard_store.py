"""One worker's data store: its rows, sorted by id, and a durable deletion log.

On disk a store is a directory with two files:

``rows.npz``
    the live rows: an uncompressed (``ZIP_STORED``) archive of ``.npy`` arrays
    ``ids`` (fixed-width unicode), ``features`` (float32), ``labels`` (int64),
    ``slices`` (int64), sorted by id, loaded with ``allow_pickle=False``.
    Uncompressed on purpose: a deleted sample's bytes can be searched for, and
    are provably absent.
``tombstones.jsonl``
    an append-only log, one JSON line per deletion batch:
    ``{"ids": [...], "time": <unix seconds>}``. Only the ids of deleted samples
    are kept, never their features or labels.

Deletion (docs/design.md, invariant 3) is durable before it returns: validate, append
the ids to the log and ``fsync`` it, then compact — write the surviving rows to
``rows.npz.tmp``, ``fsync``, ``os.replace`` it over ``rows.npz``, ``fsync`` the
directory. Opening a store re-applies the whole log and re-compacts if the data
file still holds a tombstoned row (a crash between log append and compaction),
so a deleted id is never seen again, even when the store is rebuilt from the
original source with :meth:`ShardStore.from_arrays`.

One process owns a store directory at a time (the worker actor that holds the
shard); the state directory's lock (``ostracon.cluster``) keeps other writers out.
In a state directory the stores are derived data: the deletion ledger is the
source of truth, and a lost or damaged store is rebuilt from it
(:meth:`ShardStore.rebuild`), never from the source data alone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.typing import ArrayLike

from .durable import TMP_SUFFIX, fsync_dir, write_atomic, write_bytes_atomic

ROWS_FILE = "rows.npz"
LOG_FILE = "tombstones.jsonl"
# Created owner-only whatever the umask (rows.npz goes through durable.write_atomic: the process umask,
# 077 under `ostracon train/serve/unlearn`, decides its mode).
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_FORMAT_VERSION = 1

# A store's rows, column by column: (ids, features, labels, slices).
Rows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class CorruptStoreError(ValueError):
    """A store file exists but cannot be read as a store (not a crash artefact we can repair)."""


class ShardStore:
    """A worker's rows (sorted by id, read-only arrays) plus the set of deleted ids."""

    def __init__(
        self,
        ids: np.ndarray,
        features: np.ndarray,
        labels: np.ndarray,
        slices: np.ndarray,
        deleted: set[str],
        path: Path | None,
    ) -> None:
        """Internal: use :meth:`from_arrays` or :meth:`open`. Arrays must already be validated and sorted."""
        self.ids, self.features, self.labels, self.slices = (_read_only(a) for a in (ids, features, labels, slices))
        self._deleted = set(deleted)
        self.path = path

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_arrays(
        cls,
        ids: ArrayLike,
        features: ArrayLike,
        labels: ArrayLike,
        slices: ArrayLike,
        path: str | os.PathLike[str] | None = None,
    ) -> ShardStore:
        """Build a store from rows in any order.

        ``path=None``: in memory only. With a directory ``path``: if it already
        holds a store, open it (re-applying its tombstones) and require that the
        given rows, minus tombstoned ids, are exactly its rows — rebuilding from
        the original source can never resurrect a deleted id, and a store built
        from different data is refused (``ValueError``) instead of silently mixed.
        Otherwise the rows minus any already-logged tombstones are written durably.
        """
        rows = _validate_rows(ids, features, labels, slices)
        if path is None:
            return cls(*rows, deleted=set(), path=None)
        path = Path(path)
        if (path / ROWS_FILE).exists():
            store = cls.open(path)
            store._require_same_rows(_drop(rows, store._deleted))
            return store
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        deleted = _read_log(path)  # a log without rows: crash during first creation
        rows = _drop(rows, deleted)
        _write_rows(path, rows)
        if not (path / LOG_FILE).exists():
            _create_empty_log(path)
        fsync_dir(path)
        return cls(*rows, deleted=deleted, path=path)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ShardStore:
        """Open the store in directory ``path``, re-applying its tombstone log (and finishing a crashed compaction)."""
        path = Path(path)
        if not (path / ROWS_FILE).is_file():
            raise FileNotFoundError(f"no shard store at {path} (missing {path / ROWS_FILE})")
        _remove_stale_temporaries(path)
        deleted = _read_log(path)
        rows = _read_rows(path)
        survivors = _drop(rows, deleted)
        if len(survivors[0]) != len(rows[0]):
            _write_rows(path, survivors)  # the crash left tombstoned rows on disk: finish the compaction
        return cls(*survivors, deleted=deleted, path=path)

    @classmethod
    def rebuild(
        cls,
        path: str | os.PathLike[str],
        ids: ArrayLike,
        features: ArrayLike,
        labels: ArrayLike,
        slices: ArrayLike,
        deleted: Iterable[str],
    ) -> ShardStore:
        """Rewrite the store in ``path`` from scratch: ``deleted`` is its whole tombstone log (one batch)
        and the given rows minus ``deleted`` its rows. Used to repair a lost or damaged store from a
        trusted record of deletions; both files are replaced atomically, the log first."""
        path = Path(path)
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        deleted = set(_request_ids(sorted(deleted)))
        rows = _drop(_validate_rows(ids, features, labels, slices), deleted)
        _write_log(path, sorted(deleted))
        _write_rows(path, rows)
        return cls(*rows, deleted=deleted, path=path)

    @staticmethod
    def read_tombstones(path: str | os.PathLike[str], *, repair: bool = True) -> set[str]:
        """The deleted ids logged in store directory ``path`` without loading its rows (empty if no log).

        ``repair=False`` never writes (an audit): a partial last line is ignored instead of cut off."""
        return _read_log(Path(path), repair=repair)

    @staticmethod
    def rows_file(path: str | os.PathLike[str]) -> Path:
        return Path(path) / ROWS_FILE

    # ----------------------------------------------------------------- queries

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, sample_id: object) -> bool:
        if not isinstance(sample_id, str):
            return False
        return bool(_member(self.ids, np.asarray([sample_id]))[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one sample's features."""
        return tuple(self.features.shape[1:])

    def view(self, max_slice: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, features, labels)`` of rows with ``slice <= max_slice`` (SISA stage ``max_slice``), sorted by id."""
        keep = self.slices <= max_slice
        return self.ids[keep], self.features[keep], self.labels[keep]

    def unknown(self, ids: Iterable[str]) -> list[str]:
        """The given ids that are neither live nor deleted here (first-seen order, no repeats)."""
        wanted = _request_ids(ids)
        if not wanted:
            return []
        live = _member(self.ids, np.asarray(wanted))
        return [i for i, is_live in zip(wanted, live, strict=True) if not is_live and i not in self._deleted]

    def deleted(self) -> set[str]:
        """Every tombstoned id (a copy)."""
        return set(self._deleted)

    # ----------------------------------------------------------------- deletion

    def delete(self, ids: Iterable[str]) -> list[str]:
        """Delete ``ids`` durably; return the ids removed by this call (request order, no repeats).

        Unknown ids (neither live nor deleted) raise ``KeyError`` listing them and
        change nothing; ids already deleted are an idempotent no-op.
        """
        wanted = _request_ids(ids)
        missing = self.unknown(wanted)
        if missing:
            raise KeyError(f"unknown sample id(s) in this shard: {_preview(missing)}")
        fresh = [i for i in wanted if i not in self._deleted]
        if not fresh:
            return []
        if self.path is not None:
            _append_tombstones(self.path, fresh)  # durable from here on: the deletion is acknowledged after this
        rows = _drop((self.ids, self.features, self.labels, self.slices), set(fresh))
        # Hide the rows in memory first: if compaction fails, the log still wins on the next open.
        self._deleted.update(fresh)
        self.ids, self.features, self.labels, self.slices = (_read_only(a) for a in rows)
        if self.path is not None:
            _write_rows(self.path, rows)
        return fresh

    # ----------------------------------------------------------------- internals

    def _require_same_rows(self, rows: Rows) -> None:
        """Refuse a rebuild whose rows (after tombstones) differ from the stored ones."""
        ids, features, labels, slices = rows
        same = (
            np.array_equal(ids, self.ids)
            and np.array_equal(labels, self.labels)
            and np.array_equal(slices, self.slices)
            and features.shape == self.features.shape
            and np.array_equal(features, self.features, equal_nan=True)
        )
        if same:
            return
        extra = np.setdiff1d(ids, self.ids)
        gone = np.setdiff1d(self.ids, ids)
        detail = (
            f"{len(extra)} given id(s) not in the store (e.g. {_preview(extra.tolist(), 5)}), "
            f"{len(gone)} stored id(s) not given (e.g. {_preview(gone.tolist(), 5)})"
            if len(extra) or len(gone)
            else "same ids but different features, labels or slices"
        )
        raise ValueError(
            f"the store at {self.path} holds different rows than the given arrays: {detail}; "
            "open it with ShardStore.open; a state directory's stores are repaired from its deletion ledger"
        )


# --------------------------------------------------------------------- row helpers


def _read_only(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False  # callers get views of the store; they must not edit it in place
    return a


def _validate_rows(ids: ArrayLike, features: ArrayLike, labels: ArrayLike, slices: ArrayLike) -> Rows:
    """Check and normalise rows, then sort them by id (Python ``str`` order = code-point order)."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    if ids.size and ids.dtype.kind != "U":
        raise ValueError(f"ids must be strings (unicode array), got dtype {ids.dtype}")
    ids = ids.astype(f"<U{max(ids.dtype.itemsize // 4, 1)}") if ids.size else np.zeros(0, dtype="<U1")
    n = len(ids)
    features = np.asarray(features)
    labels = np.asarray(labels)
    slices = np.asarray(slices)
    if features.ndim < 2 or features.shape[0] != n:
        raise ValueError(f"features must have shape ({n}, ...), got {features.shape}")
    if features.dtype.kind not in "iuf":
        raise ValueError(f"features must be numeric, got dtype {features.dtype}")
    for name, arr in (("labels", labels), ("slices", slices)):
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
        if n and arr.dtype.kind not in "iu":
            raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    if n and slices.min() < 0:
        raise ValueError(f"slices must be >= 0, got min {slices.min()}")
    if n and (np.char.str_len(ids).min() == 0 or _has_embedded_nul(ids)):
        raise ValueError("ids must be non-empty and contain no NUL character")
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    if n > 1:
        dup = ids[1:] == ids[:-1]
        if dup.any():
            raise ValueError(f"duplicate ids: {_preview(np.unique(ids[1:][dup]).tolist())}")
    return (
        ids,
        # integer features (uint8 images) keep their dtype: the worker casts a batch on its device
        np.ascontiguousarray(features[order], dtype=features.dtype if features.dtype.kind in "iu" else np.float32),
        labels[order].astype(np.int64),
        slices[order].astype(np.int64),
    )


def _has_embedded_nul(ids: np.ndarray) -> bool:
    """A NUL followed by another character (numpy drops trailing NULs, so ids would silently change)."""
    codes = np.ascontiguousarray(ids).view(np.uint32).reshape(len(ids), -1)
    return bool(((codes[:, :-1] == 0) & (codes[:, 1:] != 0)).any())


def _member(sorted_ids: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Vectorised ``query[i] in sorted_ids`` by binary search."""
    if len(sorted_ids) == 0:
        return np.zeros(len(query), dtype=bool)
    pos = np.searchsorted(sorted_ids, query)
    found: np.ndarray = sorted_ids[np.minimum(pos, len(sorted_ids) - 1)] == query
    return found


def _drop(rows: Rows, deleted: set[str]) -> Rows:
    """Rows whose id is not in ``deleted``."""
    if not deleted:
        return rows
    ids, features, labels, slices = rows
    keep = ~np.isin(ids, np.asarray(sorted(deleted)))
    if keep.all():
        return rows
    return ids[keep], features[keep], labels[keep], slices[keep]


def _request_ids(ids: Iterable[str]) -> list[str]:
    """A deletion request as a list of unique str ids (first-seen order)."""
    if isinstance(ids, (str, bytes)):
        raise TypeError("ids must be an iterable of str ids, not a single string")
    seen: dict[str, None] = {}
    for i in ids:
        if not isinstance(i, str):
            raise TypeError(f"sample ids must be str, got {type(i).__name__} {i!r}")
        seen[str(i)] = None
    return list(seen)


def _preview(items: Sequence[object], limit: int = 20) -> str:
    shown = ", ".join(repr(str(i)) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# --------------------------------------------------------------------- files


def _remove_stale_temporaries(path: Path) -> None:
    """Delete leftovers of an interrupted compaction: they may hold rows deleted since."""
    for tmp in path.glob(f"*{TMP_SUFFIX}"):
        tmp.unlink()


def _write_rows(path: Path, rows: Rows) -> None:
    """Atomically replace ``rows.npz`` (``durable.write_atomic``)."""
    ids, features, labels, slices = rows
    # np.savez (not savez_compressed): members are stored raw, so deleted bytes can be searched for.
    write_atomic(path / ROWS_FILE, lambda handle: np.savez(
        handle, version=np.int64(_FORMAT_VERSION), ids=ids, features=features, labels=labels, slices=slices))


def _read_rows(path: Path) -> Rows:
    file = path / ROWS_FILE
    try:
        with np.load(file, allow_pickle=False) as archive:
            version = int(archive["version"])
            if version != _FORMAT_VERSION:
                raise CorruptStoreError(f"{file}: unsupported store format version {version}")
            ids, features, labels, slices = (archive[k] for k in ("ids", "features", "labels", "slices"))
    except CorruptStoreError:
        raise
    except Exception as error:  # zip/npy/CRC errors all mean the same thing here
        raise CorruptStoreError(f"{file}: unreadable shard store data ({error})") from error
    n = len(ids)
    if (
        ids.ndim != 1
        or (n and ids.dtype.kind != "U")
        or (features.dtype != np.float32 and features.dtype.kind not in "iu")
        or features.shape[:1] != (n,)
        or labels.dtype != np.int64
        or labels.shape != (n,)
        or slices.dtype != np.int64
        or slices.shape != (n,)
        or (n > 1 and not bool(np.all(ids[1:] > ids[:-1])))
    ):
        raise CorruptStoreError(f"{file}: arrays have unexpected dtypes, shapes or order")
    return ids, features, labels, slices


def _private_append(path: Path) -> BinaryIO:
    """Open ``path`` for appending; created 0600 (a store's files hold raw rows and deleted ids)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE), "ab")


def _create_empty_log(path: Path) -> None:
    with _private_append(path / LOG_FILE) as handle:
        handle.flush()
        os.fsync(handle.fileno())


def _append_tombstones(path: Path, ids: list[str]) -> None:
    """Append one deletion batch to the log and fsync it (the durability point of a deletion)."""
    line = json.dumps({"ids": ids, "time": time.time()}, ensure_ascii=False) + "\n"
    log = path / LOG_FILE
    created = not log.exists()
    with _private_append(log) as handle:
        handle.write(line.encode("utf-8"))  # one write: a crash leaves at most a partial last line
        handle.flush()
        os.fsync(handle.fileno())
    if created:
        fsync_dir(path)


def _write_log(path: Path, ids: list[str]) -> None:
    """Replace the log atomically by one batch holding ``ids`` (an empty file when there are none)."""
    line = (json.dumps({"ids": ids, "time": time.time()}, ensure_ascii=False) + "\n") if ids else ""
    write_bytes_atomic(path / LOG_FILE, line.encode("utf-8"))


def _read_log(path: Path, repair: bool = True) -> set[str]:
    """All tombstoned ids; a partial final line (crash mid-append, never acknowledged) is cut off."""
    log = path / LOG_FILE
    if not log.exists():
        return set()
    blob = log.read_bytes()
    end = blob.rfind(b"\n") + 1  # bytes up to and including the last newline
    deleted: set[str] = set()
    for number, raw in enumerate(blob[:end].split(b"\n")[:-1], start=1):
        deleted.update(_parse_log_line(log, number, raw))
    if end < len(blob) and repair:
        _truncate(log, end)  # only after every complete line parsed: a corrupt log is left untouched
    return deleted


def _parse_log_line(log: Path, number: int, raw: bytes) -> list[str]:
    try:
        entry = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptStoreError(f"{log}: line {number} is not valid JSON ({error})") from error
    ids = entry.get("ids") if isinstance(entry, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise CorruptStoreError(f'{log}: line {number} must be an object with "ids": a list of strings')
    return ids


def _truncate(log: Path, size: int) -> None:
    """Cut the log to ``size`` bytes, durably, so the next append starts on a fresh line."""
    with open(log, "r+b") as handle:
        handle.truncate(size)
        handle.flush()
        os.fsync(handle.fileno())
