"""The coordinator's view of the training data: ids and where each is placed, never rows.

An :class:`IdIndex` answers "does this id exist, and where is it placed?" from sorted numpy arrays
(about 50 bytes per id, against ~160 for a Python dict of tuples), by binary search.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np

# Columns of IdIndex.where.
GROUP, WORKER, SLICE, HOLDER, POSITION = range(5)


class IdIndex(Mapping[str, tuple[int, int, int]]):
    """Training id -> ``(group, worker, slice)``; also each id's placement position (``holder``) and its
    row position in the source (``position``), for the readers."""

    def __init__(self, ids: np.ndarray, where: np.ndarray):
        order = np.argsort(ids, kind="stable")
        self.ids = np.ascontiguousarray(ids[order])
        self.where = np.ascontiguousarray(where[order], dtype=np.int64).reshape(len(order), 5)

    def _find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each key, whether it is there)."""
        if len(self.ids) == 0:
            return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
        at = np.minimum(np.searchsorted(self.ids, keys), len(self.ids) - 1)
        return at, self.ids[at] == keys

    def __getitem__(self, key: str) -> tuple[int, int, int]:
        at, found = self._find(np.asarray([str(key)]))
        if not found[0]:
            raise KeyError(key)
        g, j, s = self.where[at[0], :3].tolist()
        return int(g), int(j), int(s)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self._find(np.asarray([key]))[1][0])

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids.tolist())

    def __len__(self) -> int:
        return len(self.ids)

    def as_dict(self) -> dict[str, tuple[int, int, int]]:
        """Every id -> (group, worker, slice) as a dict (for tools and tests: ~160 bytes per id)."""
        rows = self.where[:, :3].tolist()
        return {i: (g, j, s) for i, (g, j, s) in zip(self.ids.tolist(), rows, strict=True)}

    def select(self, ids: Iterable[str]) -> np.ndarray:
        """Rows of the index for ``ids`` (all must be present; KeyError names the first missing)."""
        keys = np.asarray(list(ids), dtype=str)
        if keys.size == 0:
            return np.zeros(0, dtype=np.int64)
        at, found = self._find(keys)
        if not found.all():
            raise KeyError(str(keys[~found][0]))
        return at

    def held_by(self, holder: int) -> np.ndarray:
        """Ids placed at placement position ``holder`` (sorted)."""
        return self.ids[self.where[:, HOLDER] == holder]

    def of_group(self, workers: Iterable[int]) -> np.ndarray:
        """Ids owned by any of ``workers`` (sorted)."""
        return self.ids[np.isin(self.where[:, WORKER], np.fromiter(workers, dtype=np.int64))]
