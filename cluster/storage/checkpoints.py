"""Per-(group, stage) checkpoints: SISA's slice checkpoints, durable and auditable.

A checkpoint holds, for every stateful worker (trainers, and attackers that keep
state across rounds) of one group at the end of one
stage, its whole state (parameters, momentum, the model's buffers if it has any,
and any per-worker rule state; every random draw is re-derived from
``(seed, node, stage, step)``), plus the
digest of the ids the stage trained on. Its sha256 is recorded in the ledger
and checked before every use. Files are written atomically (temp + fsync +
rename) and loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch

from ostracon.nodes.durable import file_sha256, fsync_dir, write_atomic
from ostracon.nodes.worker import BUFFER_PREFIX

from ..errors import OstraconError
from ..vocabulary import DeletionMode
from .records import ApproximateModel, CheckpointInfo

FORMAT = 2
APPROXIMATE_FORMAT = 1
RNG_DERIVATION = "batch indices: torch.Generator seeded by sha256(seed:node:stage:step)"

# A worker's whole state: parameters, momentum and any per-worker rule state as float32 arrays, and the
# model's buffers (``buffer.<name>``) in their own dtype (``num_batches_tracked`` is int64).
WorkerState = Mapping[str, np.ndarray]

__all__ = ["CheckpointError", "CheckpointStore", "WorkerState", "file_sha256", "write_torch"]


class CheckpointError(OstraconError, RuntimeError):
    """A checkpoint a decision depends on is missing or differs from its recorded hash."""


def write_torch(path: str, payload: Mapping[str, object]) -> None:
    """``torch.save`` through the one atomic write (``ostracon.nodes.durable``)."""
    write_atomic(path, lambda fh: torch.save(dict(payload), fh))


def _tensors(states: Mapping[int, WorkerState]) -> dict[str, dict[str, torch.Tensor]]:
    # Every key of a worker's state (parameters, momentum, buffers, any rule state): all of it shapes later
    # rounds. Buffers keep their dtype; the rest is float32, as in every checkpoint written before buffers.
    return {str(j): {k: torch.from_numpy(np.array(v) if k.startswith(BUFFER_PREFIX) else np.array(v, dtype=np.float32))
                     for k, v in sorted(state.items())}
            for j, state in states.items()}


class CheckpointStore:
    def __init__(self, state_dir: str | os.PathLike[str]):
        self.root = os.path.join(os.fspath(state_dir), "checkpoints")

    def path(self, group: int, stage: int, suffix: str = "") -> str:
        return os.path.join(self.root, f"group-{group}", f"stage-{stage}.pt{suffix}")

    def save(self, group: int, stage: int, states: Mapping[int, WorkerState], *, seed: int, data_digest: str,
             suffix: str = "") -> CheckpointInfo:
        """Checkpoint ``group`` at the end of ``stage``: ``states`` of its stateful workers (in index order),
        ``data_digest`` of the ids the stage trained on. ``suffix`` writes a staged replacement
        (``stage-r.pt.replay``) that :meth:`promote` later moves over the current file, so the old
        checkpoint survives until its replacement is complete."""
        path = self.path(group, stage, suffix)
        write_torch(path, {"format": FORMAT, "group": group, "stage": stage, "seed": seed, "rng": RNG_DERIVATION,
                           "data_digest": data_digest, "workers": _tensors(states)})
        return CheckpointInfo(data_digest, file_sha256(path))

    def save_approximate(self, group: int, version: int, states: Mapping[int, WorkerState]) -> ApproximateModel:
        """The approximately unlearned model of ``group`` published as ``version``."""
        relative = os.path.join(f"group-{group}", f"approximate-v{version}.pt")
        path = os.path.join(self.root, relative)
        write_torch(path, {"format": APPROXIMATE_FORMAT, "group": group, "version": version,
                           "kind": DeletionMode.APPROXIMATE.value,
                           "workers": _tensors(states)})
        return ApproximateModel(relative, file_sha256(path))

    def promote(self, group: int, stage: int, suffix: str) -> str:
        """Replace the current checkpoint by its staged replacement (the old file is destroyed)."""
        path = self.path(group, stage)
        os.replace(self.path(group, stage, suffix), path)
        fsync_dir(os.path.dirname(path))
        return file_sha256(path)

    def discard_staged(self, groups: range | list[int], stages: int, suffix: str) -> None:
        """Remove staged replacements left by a replay that will not be promoted."""
        for group in groups:
            for stage in range(stages):
                staged = self.path(group, stage, suffix)
                if os.path.exists(staged):
                    os.remove(staged)

    def states(self, group: int, stage: int, info: CheckpointInfo | None = None) -> dict[int, dict[str, np.ndarray]]:
        """The workers' states in checkpoint ``(group, stage)``; with ``info``, the file must have its sha256."""
        return self.read_states(self.path(group, stage), None if info is None else info.sha256)

    def approximate_states(self, model: ApproximateModel) -> dict[int, dict[str, np.ndarray]]:
        return self.read_states(os.path.join(self.root, model.file), model.sha256)

    def approximate_problem(self, model: ApproximateModel) -> str | None:
        """None if the approximate model file has its recorded hash, else what is wrong with it."""
        return self._problem(os.path.join(self.root, model.file), model.sha256)

    @staticmethod
    def read_states(path: str, sha256: str | None = None) -> dict[int, dict[str, np.ndarray]]:
        """The workers' states in the checkpoint file ``path`` (with ``sha256``, the file must have it)."""
        if sha256 is not None:
            found = file_sha256(path) if os.path.exists(path) else None
            if found != sha256:
                raise CheckpointError(f"checkpoint {path} is {'missing' if found is None else 'damaged'} "
                                      f"(sha256 {found or '-'} != recorded {sha256})")
        payload = torch.load(path, weights_only=True)
        return {int(j): {k: v.numpy() for k, v in w.items()} for j, w in payload["workers"].items()}

    def check(self, group: int, stage: int, sha256: str) -> str | None:
        """None if the checkpoint has the recorded hash, else what is wrong with it."""
        return self._problem(self.path(group, stage), sha256)

    @staticmethod
    def _problem(path: str, sha256: str) -> str | None:
        if not os.path.exists(path):
            return "missing"
        return None if file_sha256(path) == sha256 else "sha256 differs from the ledger"
