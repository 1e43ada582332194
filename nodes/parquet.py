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


def _features(name: str, column: Any, shape: tuple[int, ...], keep_integers: bool = False) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise ValueError(f"{name}: column 'features' must hold a list of numbers per row, got {kind}")
    inner = kind.value_type
    if not (pa.types.is_integer(inner) or pa.types.is_floating(inner)):
        raise ValueError(f"{name}: column 'features' must hold numbers, got lists of {inner}")
    rows = len(column)
    if column.null_count:
        raise ValueError(f"{name}: column 'features' has {column.null_count} null row(s)")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False) if rows else np.zeros(0, dtype=np.int64)
    width = math.prod(shape) if shape else (int(lengths[0]) if rows else 0)
    bad = np.flatnonzero(lengths != width)
    if bad.size:
        wanted = f"data.shape = {list(shape)} needs {width}" if shape else f"the first row has {width}"
        raise ValueError(f"{name}: column 'features': row {int(bad[0])} has {int(lengths[bad[0]])} values; {wanted}")
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    if values.size != rows * width:  # nulls inside a row's list
        raise ValueError(f"{name}: column 'features' has null values inside rows")
    kept = values.dtype if keep_integers and values.dtype.kind in "iu" else np.float32
    x: np.ndarray = values.astype(kept).reshape((rows, *(shape or (width,))))
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"{name}: column 'features' contains NaN or Inf")
    return x


# ----- reading by parts: the index (ids and labels) once, then only a worker's rows ------------------
def read_parquet_index(path: str | os.PathLike[str], shape: Sequence[int] = ()
                       ) -> tuple[np.ndarray, np.ndarray, int, tuple[int, ...], np.dtype]:
    """``(ids, labels, num_classes, feature_shape, feature_dtype)`` reading only the ``id`` and ``label``
    columns (and the first row's features when no ``shape`` is given)."""
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
                    head = next(parquet.iter_batches(batch_size=1, columns=[FEATURES]))
                    first_width = len(head.column(0)[0].values)
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
    if num_classes < 2:
        raise ValueError(f"{path}: column 'label' holds only label 0; a classifier needs at least 2 classes")
    integer = {k.kind for k in kinds} <= set("iu") and len(kinds) == 1
    dtype = next(iter(kinds)) if integer else np.dtype(np.float32)
    return ids, labels, num_classes, want or (first_width or 0,), dtype


def read_parquet_features(path: str | os.PathLike[str], shape: Sequence[int], positions: np.ndarray,
                          batch_rows: int = 8192) -> np.ndarray:
    """The features of the rows at ``positions`` (ascending, over the files in sorted order), streamed one
    record batch at a time; files holding none of them are not read."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, files = _files(str(os.fspath(path)), pafs)
    want = tuple(int(s) for s in shape)
    parts: list[np.ndarray] = []
    offset = 0
    for name in files:
        with fs.open_input_file(name) as handle:
            parquet = pq.ParquetFile(handle)
            rows = parquet.metadata.num_rows
            lo, hi = np.searchsorted(positions, [offset, offset + rows])
            mine = positions[lo:hi] - offset
            if mine.size:
                start = 0
                try:
                    for batch in parquet.iter_batches(batch_size=batch_rows, columns=[FEATURES]):
                        n = batch.num_rows
                        a, b = np.searchsorted(mine, [start, start + n])
                        if b > a:
                            taken = batch.column(0).take(pa.array(mine[a:b] - start))
                            parts.append(_features(name, taken, want, keep_integers=True))
                        start += n
                except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
                    raise ValueError(f"{name}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
        offset += rows
    if not parts:
        return np.zeros((0, *(want or (0,))), dtype=np.float32)
    widths = {p.shape[1:] for p in parts}
    if len(widths) > 1:
        raise ValueError(f"{path}: files hold features of different lengths {sorted(widths)}; give data.shape or make "
                         "them equal")
    dtypes = {p.dtype for p in parts}
    out = np.concatenate(parts) if len(dtypes) == 1 else np.concatenate([p.astype(np.float32) for p in parts])
    return out


def _feature_value_type(name: str, kind: Any) -> np.dtype:
    import pyarrow as pa

    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise ValueError(f"{name}: column 'features' must hold a list of numbers per row, got {kind}")
    inner = kind.value_type
    if not (pa.types.is_integer(inner) or pa.types.is_floating(inner)):
        raise ValueError(f"{name}: column 'features' must hold numbers, got lists of {inner}")
    return np.dtype(inner.to_pandas_dtype()) if pa.types.is_integer(inner) else np.dtype(np.float32)

