"""Parquet data: a file, a directory of ``.parquet`` files, or an object-store URI, read with pyarrow.

Columns: ``id`` (string or integer, unique over every file), ``label`` (integer, >= 0) and
``features`` (a list or fixed-size list of numbers per row); ``shape`` (e.g. ``(3, 32, 32)``)
reshapes each row's features, whose length must then be the product of ``shape``; without it every
row must have the same length. Other columns are ignored and never read.

Paths: a local path, or a URI that ``pyarrow.fs.FileSystem.from_uri`` understands
(``s3://bucket/prefix``): credentials, region and endpoint come from the standard AWS environment
variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL``), as with every AWS tool. A directory (or prefix) is read in sorted file-name
order; the order never matters to training, since placement depends on ids only.

Every problem is a ``ValueError`` (``FileNotFoundError`` for a path with no parquet file) naming the
file and the column, raised before the caller writes anything.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

ID, LABEL, FEATURES = "id", "label", "features"
COLUMNS = (ID, LABEL, FEATURES)


def read_parquet(path: str | os.PathLike[str],
                 shape: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(ids, features float32 (N, *shape), labels int64, num_classes)`` of every row under ``path``."""
    import pyarrow.fs as pafs  # imported here: only the parquet source needs pyarrow

    fs, files = _files(str(os.fspath(path)), pafs)
    want = tuple(int(s) for s in shape)
    ids_parts, x_parts, y_parts = [], [], []
    for name in files:
        ids, x, y = _read_file(fs, name, want)
        ids_parts.append(ids)
        x_parts.append(x)
        y_parts.append(y)
    ids = np.concatenate(ids_parts)
    _unique_over_files(files, ids_parts, ids)
    widths = {x.shape[1:] for x in x_parts}
    if len(widths) > 1:
        raise ValueError(f"{path}: files hold features of different lengths {sorted(widths)}; give data.shape or make "
                         "them equal")
    labels = np.concatenate(y_parts)
    num_classes = int(labels.max()) + 1
    if num_classes < 2:
        raise ValueError(f"{path}: column 'label' holds only label 0; a classifier needs at least 2 classes")
    return ids, np.concatenate(x_parts), labels, num_classes


def _unique_over_files(files: Sequence[str], ids_parts: Sequence[np.ndarray], ids: np.ndarray) -> None:
    """Each file's ids (``ids_parts``) are unique already; an id of ``ids`` (all of them) in two files names both."""
    if len(files) < 2:
        return
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) == len(ids):
        return
    first = str(unique[counts > 1][0])
    where = [name for name, ids in zip(files, ids_parts, strict=True) if first in ids]
    raise ValueError(f"{where[-1]}: column 'id': id {first!r} is also in {where[0]}; ids must be unique over every "
                     "file")


def _files(path: str, pafs: Any) -> tuple[Any, list[str]]:
    """The filesystem and the parquet files ``path`` names (one file, or every ``*.parquet`` under it)."""
    try:
        fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), os.path.abspath(path))
        info = fs.get_file_info(root)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"parquet source: cannot open {path}: {exc}") from None
    if info.type == pafs.FileType.File:
        return fs, [root]
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"parquet source: nothing at {path}")
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = sorted(f.path for f in found if f.type == pafs.FileType.File and f.path.endswith(".parquet"))
    if not files:
        raise FileNotFoundError(f"parquet source: no .parquet file under {path}")
    return fs, files


def _read_file(fs: Any, name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fs.open_input_file(name) as handle:
            parquet = pq.ParquetFile(handle)
            schema = parquet.schema_arrow
            missing = [c for c in COLUMNS if c not in schema.names]
            if missing:
                raise ValueError(f"{name}: missing column(s) {', '.join(map(repr, missing))} (found: "
                                 f"{', '.join(schema.names) or 'none'}); expected id, label, features")
            table = parquet.read(columns=list(COLUMNS))
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise ValueError(f"{name}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    features = _features(name, table.column(FEATURES), shape)
    return _ids(name, table.column(ID)), features, _labels(name, table.column(LABEL))


def _ids(name: str, column: Any) -> np.ndarray:
    import pyarrow as pa

    kind = column.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)):
        raise ValueError(f"{name}: column 'id' must hold strings or integers, got {kind}")
    if column.null_count:
        raise ValueError(f"{name}: column 'id' has {column.null_count} null value(s)")
    ids: np.ndarray = column.cast(pa.string()).to_numpy(zero_copy_only=False).astype(str)
    if ids.size and np.char.str_len(ids).min() == 0:
        raise ValueError(f"{name}: column 'id' contains an empty id")
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != len(ids):
        dups = unique[counts > 1]
        shown = ", ".join(repr(str(d)) for d in dups[:10])
        more = f" and {len(dups) - 10} more" if len(dups) > 10 else ""
        raise ValueError(f"{name}: column 'id' has duplicates: {shown}{more}")
    return ids


def _labels(name: str, column: Any) -> np.ndarray:
    import pyarrow as pa

    if not pa.types.is_integer(column.type):
        raise ValueError(f"{name}: column 'label' must hold integers, got {column.type}")
    if column.null_count:
        raise ValueError(f"{name}: column 'label' has {column.null_count} null value(s)")
    labels: np.ndarray = column.to_numpy().astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name}: column 'label' has negative labels (min {labels.min()})")
    return labels


def _features(name: str, column: Any, shape: tuple[int, ...], keep_integers: bool = False,
              rows: np.ndarray | None = None, width: tuple[int, str] | None = None) -> np.ndarray:
    """The rows of ``column`` as an array ``(rows, *shape)``. ``rows``: each row's number in the file, for
    messages (default 0, 1, ...); ``width``: without ``shape``, the length every row must have and where it
    comes from (default: this column's first row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise ValueError(f"{name}: column 'features' must hold a list of numbers per row, got {kind}")
    inner = kind.value_type
    if not (pa.types.is_integer(inner) or pa.types.is_floating(inner)):
        raise ValueError(f"{name}: column 'features' must hold numbers, got lists of {inner}")
    count = len(column)

    def row(k: int) -> int:
        return int(rows[k]) if rows is not None else int(k)

    if column.null_count:
        first = int(np.flatnonzero(np.asarray(pc.is_null(column)))[0])
        raise ValueError(f"{name}: column 'features' has {column.null_count} null row(s) (row {row(first)})")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False) if count else np.zeros(0, dtype=np.int64)
    if shape:
        size, wanted = math.prod(shape), f"data.shape = {list(shape)} needs {math.prod(shape)}"
    elif width is not None:
        size, wanted = width[0], f"{width[1]} has {width[0]}"
    else:
        size = int(lengths[0]) if count else 0
        wanted = f"the first row has {size}"
    bad = np.flatnonzero(lengths != size)
    if bad.size:
        raise ValueError(f"{name}: column 'features': row {row(int(bad[0]))} has {int(lengths[bad[0]])} values; "
                         f"{wanted}")
    flat = pc.list_flatten(column)
    if flat.null_count:  # every row holds `size` values now: value k is row k // size's
        first = int(np.flatnonzero(np.asarray(pc.is_null(flat)))[0])
        raise ValueError(f"{name}: column 'features' has null values inside rows (row {row(first // size)})")
    values = flat.to_numpy(zero_copy_only=False)
    kept = values.dtype if keep_integers and values.dtype.kind in "iu" else np.float32
    x: np.ndarray = values.astype(kept).reshape((count, *(shape or (size,))))
    if x.dtype.kind == "f":
        finite = np.isfinite(x.reshape(count, -1)).all(axis=1)
        if not finite.all():
            raise ValueError(f"{name}: column 'features' contains NaN or Inf (row {row(int(np.argmin(finite)))})")
    return x


def _first_width(name: str, parquet: Any) -> int:
    """The length of the first row's features (read from the schema for a fixed-size list): without
    ``data.shape`` every row must have it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = parquet.schema_arrow.field(FEATURES).type
    if pa.types.is_fixed_size_list(kind):
        return int(kind.list_size)
    for batch in parquet.iter_batches(batch_size=1, columns=[FEATURES]):
        if batch.num_rows:
            head = batch.column(0)
            if head.null_count:
                raise ValueError(f"{name}: column 'features' has null row(s) (row 0); without data.shape the "
                                 "first row gives every row's length")
            return int(pc.list_value_length(head)[0].as_py())
    return 0


def _kept_dtype(kinds: set[np.dtype]) -> np.dtype:
    """The features' dtype over files whose value types are ``kinds``: one integer type is kept, anything
    else is float32."""
    if len(kinds) == 1 and next(iter(kinds)).kind in "iu":
        return next(iter(kinds))
    return np.dtype(np.float32)


# ----- reading by parts: the index (ids and labels) once, then only a worker's rows ------------------
def read_parquet_index(path: str | os.PathLike[str], shape: Sequence[int] = (), *, one_class_ok: bool = False
                       ) -> tuple[np.ndarray, np.ndarray, int, tuple[int, ...], np.dtype]:
    """``(ids, labels, num_classes, feature_shape, feature_dtype)`` reading only the ``id`` and ``label``
    columns (and the first row's features when no ``shape`` is given). ``one_class_ok``: a part of a
    dataset (one worker's file) may hold a single class."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, files = _files(str(os.fspath(path)), pafs)
    want = tuple(int(s) for s in shape)
    ids_parts, y_parts, kinds = [], [], set()
    first_width: int | None = None
    for name in files:
        try:
            with fs.open_input_file(name) as handle:
                parquet = pq.ParquetFile(handle)
                schema = parquet.schema_arrow
                missing = [c for c in COLUMNS if c not in schema.names]
                if missing:
                    raise ValueError(f"{name}: missing column(s) {', '.join(map(repr, missing))} (found: "
                                     f"{', '.join(schema.names) or 'none'}); expected id, label, features")
                kinds.add(_feature_value_type(name, schema.field(FEATURES).type))
                table = parquet.read(columns=[ID, LABEL])
                if first_width is None and not want and parquet.metadata.num_rows:
                    first_width = _first_width(name, parquet)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            raise ValueError(f"{name}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
        ids_parts.append(_ids(name, table.column(ID)))
        y_parts.append(_labels(name, table.column(LABEL)))
    ids = np.concatenate(ids_parts)
    _unique_over_files(files, ids_parts, ids)
    labels = np.concatenate(y_parts)
    if labels.size == 0:
        raise ValueError(f"{path}: holds no rows")
    num_classes = int(labels.max()) + 1
    if num_classes < 2 and not one_class_ok:
        raise ValueError(f"{path}: column 'label' holds only label 0; a classifier needs at least 2 classes")
    return ids, labels, num_classes, want or (first_width or 0,), _kept_dtype(kinds)


def read_parquet_features(path: str | os.PathLike[str], shape: Sequence[int], positions: np.ndarray,
                          batch_rows: int = 2048) -> np.ndarray:
    """The features of the rows at ``positions`` (ascending, over the files in sorted order), streamed one
    record batch at a time; files holding none of them are not read (their footers are). The shape and
    dtype are those :func:`read_parquet_index` gives: ``shape``, else the first row's length (every wanted
    row must have it); one integer value type over every file is kept, anything else becomes float32.
    Only the wanted rows are checked."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, files = _files(str(os.fspath(path)), pafs)
    want = tuple(int(s) for s in shape)
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size and positions[0] < 0:
        raise ValueError(f"{path}: row position {int(positions[0])} is negative")
    parts: list[np.ndarray] = []
    kinds: set[np.dtype] = set()
    width: tuple[int, str] | None = None
    offset = 0
    for name in files:
        try:
            with fs.open_input_file(name) as handle:
                parquet = pq.ParquetFile(handle, pre_buffer=False, buffer_size=1 << 20)
                schema = parquet.schema_arrow
                if FEATURES not in schema.names:
                    raise ValueError(f"{name}: missing column(s) 'features' (found: "
                                     f"{', '.join(schema.names) or 'none'}); expected id, label, features")
                kinds.add(_feature_value_type(name, schema.field(FEATURES).type))
                rows = parquet.metadata.num_rows
                if width is None and not want and rows:
                    width = (_first_width(name, parquet), f"the first row (of {name})")
                lo, hi = np.searchsorted(positions, [offset, offset + rows])
                mine = positions[lo:hi] - offset
                start = 0
                if mine.size:
                    for batch in parquet.iter_batches(batch_size=batch_rows, columns=[FEATURES]):
                        n = batch.num_rows
                        a, b = np.searchsorted(mine, [start, start + n])
                        if b > a:
                            taken = batch.column(0).take(pa.array(mine[a:b] - start))
                            parts.append(_features(name, taken, want, keep_integers=True, rows=mine[a:b],
                                                   width=width))
                        start += n
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            raise ValueError(f"{name}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
        offset += rows
    if positions.size and positions[-1] >= offset:
        raise ValueError(f"{path}: holds {offset} rows; row position {int(positions[-1])} is beyond them (did the "
                         "source change since its index was read?)")
    dtype = _kept_dtype(kinds)
    if not parts:
        return np.zeros((0, *(want or ((width[0] if width else 0),))), dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)


def _feature_value_type(name: str, kind: Any) -> np.dtype:
    import pyarrow as pa

    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise ValueError(f"{name}: column 'features' must hold a list of numbers per row, got {kind}")
    inner = kind.value_type
    if not (pa.types.is_integer(inner) or pa.types.is_floating(inner)):
        raise ValueError(f"{name}: column 'features' must hold numbers, got lists of {inner}")
    return np.dtype(inner.to_pandas_dtype()) if pa.types.is_integer(inner) else np.dtype(np.float32)

