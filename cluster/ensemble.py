"""Prediction over the group models (SISA's aggregation of shard models).

``majority``: each group votes its argmax; ties go to the smallest class
index (deterministic). ``mean_proba``: argmax of the mean softmax. A majority
vote is itself robust to a minority of bad groups.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ostracon.nodes.worker import WorkerSpec, probabilities_model


def predict(specs: Sequence[WorkerSpec], thetas: Sequence[np.ndarray], features: np.ndarray,
            vote: str = "majority", batch_size: int = 4096) -> np.ndarray:
    """Class predictions of the ensemble of ``thetas`` (one per group) on ``features``."""
    if vote not in ("majority", "mean_proba"):
        raise ValueError(f"unknown vote {vote!r}; choose majority or mean_proba")
    models = [probabilities_model(s, th) for s, th in zip(specs, thetas)]
    num_classes = specs[0].num_classes
    out = []
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(features[start:start + batch_size], dtype=np.float32))
            if vote == "majority":
                votes = torch.zeros(x.shape[0], num_classes, dtype=torch.int64)
                for m in models:
                    votes[torch.arange(x.shape[0]), m(x).argmax(1)] += 1
                # argmax returns the first maximum: ties go to the smallest class index.
                out.append(votes.argmax(1))
            else:
                probs = torch.stack([torch.softmax(m(x), 1) for m in models]).mean(0)
                out.append(probs.argmax(1))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def ensemble_accuracy(specs, thetas, features, labels, vote: str = "majority") -> float:
    if len(labels) == 0:
        return float("nan")
    return float((predict(specs, thetas, features, vote) == labels).mean())
