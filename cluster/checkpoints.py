"""Per-(group, stage) checkpoints: SISA's slice checkpoints, durable and auditable.

A checkpoint holds, for every training worker of one group at the end of one
stage, its parameters and momentum (the whole optimiser state: every random
draw is re-derived from ``(seed, node, stage, step)``), plus the digest of
the ids the stage trained on. Files are written atomically (temp + fsync +
rename) and loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np
import torch


from .plan import RunPlan, ids_digest

RNG_DERIVATION = "batch indices: torch.Generator seeded by sha256(seed:node:stage:step)"


class CheckpointStore:
    def __init__(self, state_dir: str | os.PathLike):
        self.root = os.path.join(os.fspath(state_dir), "checkpoints")

    def path(self, group: int, stage: int, suffix: str = "") -> str:
        return os.path.join(self.root, f"group-{group}", f"stage-{stage}.pt{suffix}")

    def save_stage(self, plan: RunPlan, session, groups: Sequence[int], stage: int,
                   suffix: str = "") -> dict[int, dict]:
        """Checkpoint every group of ``groups`` at the end of ``stage``; returns {group: info}.

        ``suffix`` writes a staged replacement (``stage-r.pt.replay``) that :meth:`promote` later
        moves over the current file, so the old checkpoint survives until its replacement is complete.
        """
        states = session.states(groups)
        infos = {}
        for g in groups:
            ids = stage_data_ids(session.backend, plan, g, stage)
            payload = {
                "format": 1,
                "group": g,
                "stage": stage,
                "seed": plan.config.seed,
                "rng": RNG_DERIVATION,
                "data_digest": ids_digest(ids),
                "workers": {
                    str(j): {
                        "theta": torch.from_numpy(np.array(states[j]["theta"], dtype=np.float32)),
                        "momentum": torch.from_numpy(np.array(states[j]["momentum"], dtype=np.float32)),
                    }
                    for j in plan.trainers(g)
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

    def exists(self, group: int, stage: int) -> bool:
        return os.path.exists(self.path(group, stage))

    def states(self, group: int, stage: int) -> dict[int, dict]:
        payload = self.load(group, stage)
        return {int(j): {"theta": w["theta"].numpy(), "momentum": w["momentum"].numpy()}
                for j, w in payload["workers"].items()}


def stage_data_ids(backend, plan: RunPlan, group: int, stage: int) -> list[str]:
    """Every id that ``group``'s workers train on in ``stage`` (slices ``0..stage``)."""
    per_worker = backend.call(plan.group_workers(group), "data_ids", stage)
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


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
