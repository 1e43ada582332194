"""Prediction over the group models (SISA's aggregation of shard models).

``majority``: each group votes its argmax; ties go to the smallest class
index (deterministic). ``mean_proba``: argmax of the mean softmax. A majority
vote is itself robust to a minority of bad groups.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ostracon.nodes.worker import Weights, WorkerSpec, probabilities_model


def predict(specs: Sequence[WorkerSpec], thetas: Sequence[Weights], features: np.ndarray,
            vote: str = "majority", batch_size: int = 4096) -> np.ndarray:
    """Class predictions of the ensemble of ``thetas`` (one per group) on ``features``."""
    return predict_with_probabilities(specs, thetas, features, vote, batch_size)[0]


def predict_with_probabilities(specs: Sequence[WorkerSpec], thetas: Sequence[Weights], features: np.ndarray,
                               vote: str = "majority", batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """``(labels int64 (n,), probabilities float32 (n, C))``: labels by ``vote``, probabilities the
    mean softmax over the group models (what ``mean_proba`` votes on)."""
    if vote not in ("majority", "mean_proba"):
        raise ValueError(f"unknown vote {vote!r}; choose majority or mean_proba")
    models = [probabilities_model(s, th) for s, th in zip(specs, thetas, strict=True)]
    num_classes = specs[0].num_classes
    labels, probabilities = [], []
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(features[start:start + batch_size], dtype=np.float32))
            logits = [m(x) for m in models]
            probs = torch.stack([torch.softmax(z, 1) for z in logits]).mean(0)
            if vote == "majority":
                votes = torch.zeros(x.shape[0], num_classes, dtype=torch.int64)
                for z in logits:
                    votes[torch.arange(x.shape[0]), z.argmax(1)] += 1
                # argmax returns the first maximum: ties go to the smallest class index.
                labels.append(votes.argmax(1))
            else:
                labels.append(probs.argmax(1))
            probabilities.append(probs.to(torch.float32))
    if not labels:
        return np.zeros(0, dtype=np.int64), np.zeros((0, num_classes), dtype=np.float32)
    return torch.cat(labels).numpy().astype(np.int64), torch.cat(probabilities).numpy()


def ensemble_accuracy(specs, thetas, features, labels, vote: str = "majority") -> float:
    if len(labels) == 0:
        return float("nan")
    return float((predict(specs, thetas, features, vote) == labels).mean())
