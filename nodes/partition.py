"""Deterministic placement of samples: held-out test set, worker, slice.

Every decision is a function of ``(sample id, label, seed, config)`` only —
never of row order or dataset size — so deleting a sample moves no other
sample (SISA's exact unlearning relies on it: the retrained model must see
exactly the data it would have seen had the sample never existed).

Each decision draws a uniform number ``u = unit_hash(id, seed, salt)`` with
its own salt (``"test"``, ``"worker"``, ``"slice"``), so the three are
independent.
"""

from __future__ import annotations

import hashlib
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from hashlib import _Hash  # the type of hashlib.sha256(): only in the stubs

PARTITIONS = ("iid", "dirichlet", "by_class")

_TWO_POW_MINUS_53 = 2.0**-53


def unit_hash(ids: ArrayLike, seed: int, salt: str) -> np.ndarray:
    """``u_i = top53(sha256(f"{seed}:{salt}:{id_i}")) / 2**53``, float64 in [0, 1).

    53 bits is exactly the float64 mantissa, so ``u`` is exact and ``< 1``.
    """
    ids = _as_ids(ids)
    prefix = hashlib.sha256(f"{seed}:{salt}:".encode())
    # Hash the shared prefix once and copy its state per id (about 2x faster than rehashing it).
    digests = b"".join(_digest8(prefix, str(i)) for i in ids.tolist())
    top = np.frombuffer(digests, dtype=">u8").astype(np.uint64) >> np.uint64(11)
    return top.astype(np.float64) * _TWO_POW_MINUS_53


def _digest8(prefix: _Hash, sample_id: str) -> bytes:
    h = prefix.copy()
    h.update(sample_id.encode())
    return h.digest()[:8]


def _as_ids(ids: ArrayLike) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
    return arr if arr.dtype.kind == "U" else arr.astype(str)


@dataclass(frozen=True)
class Placement:
    """Where each row goes. Test rows have ``worker == slice == -1``."""

    is_test: np.ndarray  # bool (N,)
    worker: np.ndarray  # int64 (N,), in [0, num_workers), -1 for test rows
    slice: np.ndarray  # int64 (N,), in [0, num_slices), -1 for test rows

    def __len__(self) -> int:
        return len(self.is_test)


def place(
    ids: ArrayLike,
    labels: ArrayLike,
    *,
    seed: int,
    num_workers: int,
    num_slices: int = 1,
    test_fraction: float = 0.2,
    partition: str = "iid",
    alpha: float = 1.0,
    classes_per_worker: int = 2,
    num_classes: int,
) -> Placement:
    """Place every sample; see the module docstring for why each rule uses only the id and label.

    - test: ``unit_hash(id, "test") < test_fraction``.
    - ``iid``: ``worker = floor(u * num_workers)``.
    - ``dirichlet``: class ``c``'s worker proportions ``p_c ~ Dirichlet(alpha 1_n)`` drawn from
      ``default_rng([seed, c])`` (Hsu et al. 2019); ``worker = searchsorted(cumsum(p_c), u)``.
    - ``by_class``: worker ``w`` holds classes ``(w k + i) mod C`` for ``i < k``; a sample of
      class ``c`` goes to ``holders_c[floor(u |holders_c|)]``. A class nobody holds (when
      ``num_workers * k < C``) is spread over all workers by ``u``, so no sample is dropped.
    - ``slice = floor(unit_hash(id, "slice") * num_slices)``.
    """
    ids = _as_ids(ids)
    labels = _check_labels(labels, len(ids), num_classes)
    _check_int("num_workers", num_workers)
    _check_int("num_slices", num_slices)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) or not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}; known partitions: {', '.join(PARTITIONS)}")

    is_test = unit_hash(ids, seed, "test") < test_fraction
    u = unit_hash(ids, seed, "worker")
    if partition == "iid":
        worker = _scale(u, num_workers)
    elif partition == "dirichlet":
        worker = _dirichlet_workers(u, labels, seed, num_workers, alpha, num_classes)
    else:
        _check_int("classes_per_worker", classes_per_worker)
        worker = _by_class_workers(u, labels, num_workers, classes_per_worker, num_classes)
    slices = _scale(unit_hash(ids, seed, "slice"), num_slices)
    worker[is_test] = -1
    slices[is_test] = -1
    return Placement(is_test=is_test, worker=worker, slice=slices)


def _scale(u: np.ndarray, n: int) -> np.ndarray:
    """``floor(u * n)`` as int64, clipped to ``n - 1`` against rounding at u close to 1."""
    return np.minimum((u * n).astype(np.int64), n - 1)


def _dirichlet_workers(
    u: np.ndarray, labels: np.ndarray, seed: int, num_workers: int, alpha: float, num_classes: int
) -> np.ndarray:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    worker = np.empty(len(u), dtype=np.int64)
    for c in range(num_classes):
        rows = labels == c
        if not rows.any():
            continue
        # Seeded by (seed, class) only, so adding or removing samples never changes p_c.
        p = np.random.default_rng([seed, c]).dirichlet(np.full(num_workers, float(alpha)))
        cut = np.cumsum(p)
        worker[rows] = np.minimum(np.searchsorted(cut, u[rows], side="right"), num_workers - 1)
    return worker


def _by_class_workers(u: np.ndarray, labels: np.ndarray, num_workers: int, k: int, num_classes: int) -> np.ndarray:
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for w in range(num_workers):
        for c in sorted({(w * k + i) % num_classes for i in range(k)}):
            holders[c].append(w)
    worker = np.empty(len(u), dtype=np.int64)
    everyone = np.arange(num_workers, dtype=np.int64)
    for c in range(num_classes):
        rows = labels == c
        if not rows.any():
            continue
        options = np.asarray(holders[c], dtype=np.int64) if holders[c] else everyone
        worker[rows] = options[_scale(u[rows], len(options))]
    return worker


def _check_int(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_labels(labels: ArrayLike, n: int, num_classes: int) -> np.ndarray:
    _check_int("num_classes", num_classes)
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) like ids, got {labels.shape}")
    if n and labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, num_classes={num_classes}), got [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64)
