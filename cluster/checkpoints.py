"""Per-(group, stage) checkpoints: SISA's slice checkpoints, durable and auditable.

A checkpoint holds, for every stateful worker (trainers, and attackers that keep
state across rounds) of one group at the end of one
stage, its whole state (parameters, momentum and any per-worker rule state;
every random draw is re-derived from ``(seed, node, stage, step)``), plus the
digest of the ids the stage trained on. Its sha256 is recorded in the ledger
and checked before every use. Files are written atomically (temp + fsync +
rename) and loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np
import torch


from .errors import OstraconError
from .statedir import fsync_dir
from .plan import RunPlan, ids_digest

FORMAT = 2
RNG_DERIVATION = "batch indices: torch.Generator seeded by sha256(seed:node:stage:step)"


class CheckpointStore:
    def __init__(self, state_dir: str | os.PathLike):
        self.root = os.path.join(os.fspath(state_dir), "checkpoints")

    def path(self, group: int, stage: int, suffix: str = "") -> str:
        return os.path.join(self.root, f"group-{group}", f"stage-{stage}.pt{suffix}")

    def save_stage(self, plan: RunPlan, backend, states: dict[int, dict], groups: Sequence[int], stage: int,
                   suffix: str = "") -> dict[int, dict]:
        """Checkpoint every group of ``groups`` at the end of ``stage`` from the trainers' ``states``
        (as :meth:`Session.run_stage` returns them); returns ``{group: {path, data_digest, sha256}}``.

        ``suffix`` writes a staged replacement (``stage-r.pt.replay``) that :meth:`promote` later
        moves over the current file, so the old checkpoint survives until its replacement is complete.
        """
        infos = {}
        for g in groups:
            ids = stage_data_ids(backend, plan, g, stage)
            payload = {
                "format": FORMAT,
                "group": g,
                "stage": stage,
                "seed": plan.config.seed,
                "rng": RNG_DERIVATION,
                "data_digest": ids_digest(ids),
                # Every key of a worker's state (parameters, momentum, any rule state): all of it shapes later rounds.
                "workers": {
                    str(j): {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sorted(states[j].items())}
                    for j in plan.stateful(g)
                },
            }
            path = self.path(g, stage, suffix)
            write_atomic(path, payload)
            infos[g] = {"path": path, "data_digest": payload["data_digest"], "sha256": file_sha256(path)}
        return infos

    def promote(self, group: int, stage: int, suffix: str) -> str:
        """Replace the current checkpoint by its staged replacement (the old file is destroyed)."""
        path = self.path(group, stage)
        os.replace(self.path(group, stage, suffix), path)
        fsync_dir(os.path.dirname(path))
        return file_sha256(path)

    def load(self, group: int, stage: int) -> dict:
        return torch.load(self.path(group, stage), weights_only=True)

    def states(self, group: int, stage: int, sha256: str | None = None) -> dict[int, dict]:
        """The workers' states in checkpoint ``(group, stage)``; with ``sha256``, the file must have it."""
        return self.read_states(self.path(group, stage), sha256)

    @staticmethod
    def read_states(path: str, sha256: str | None = None) -> dict[int, dict]:
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
        path = self.path(group, stage)
        if not os.path.exists(path):
            return "missing"
        return None if file_sha256(path) == sha256 else "sha256 differs from the ledger"


class CheckpointError(OstraconError, RuntimeError):
    """A checkpoint a decision depends on is missing or differs from its recorded hash."""


def stage_data_ids(backend, plan: RunPlan, group: int, stage: int) -> list[str]:
    """Every id that ``group``'s training workers train on in ``stage`` (slices ``0..stage``)."""
    per_worker = backend.call(plan.trainers(group), "data_ids", stage)
    return [i for ids in per_worker.values() for i in ids]


def write_atomic(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
