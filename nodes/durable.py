"""The one atomic, durable file write every layer uses (docs/design.md, "Durability").

``write_atomic(path, write)`` writes through ``write(handle)`` into ``PATH.tmp``, flushes and fsyncs
it, renames it over ``path`` and fsyncs the directory: after it returns the new content survives a
power cut, and a crash at any point leaves either the old file or the new one, never a mix.
``create_exclusive`` is the same for files that must never be overwritten (certificates). It lives
in ``nodes`` because a worker's shard store (here) and the coordinator's state directory
(``ostracon.cluster.storage``) both need it and dependencies point ``cluster -> nodes``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a create, rename or unlink inside ``path`` durable (POSIX: fsync the directory itself)."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` by what ``write(handle)`` writes: temporary file, fsync, rename, fsync the directory."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = path + TMP_SUFFIX
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(directory)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    write_atomic(path, lambda handle: handle.write(data))


def create_exclusive(path: str | os.PathLike[str], data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists (atomic ``os.link`` of a synced temporary file);
    returns False, writing nothing, when ``path`` already exists."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(path):
        return False
    tmp = f"{path}.{os.getpid()}{TMP_SUFFIX}"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)
    fsync_dir(directory)
    return True


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
