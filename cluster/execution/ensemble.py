"""Prediction over the group models (SISA's aggregation of shard models).

``majority``: each group votes its argmax; ties go to the smallest class
index (deterministic). ``mean_proba``: argmax of the mean softmax. A majority
vote is itself robust to a minority of bad groups.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ostracon.nodes.worker import Weights, WorkerSpec, model_predictions, probabilities_model


def predict(specs: Sequence[WorkerSpec], thetas: Sequence[Weights], features: np.ndarray,
            vote: str = "majority", batch_size: int = 4096) -> np.ndarray:
    """Class predictions of the ensemble of ``thetas`` (one per group) on ``features``."""
    return predict_with_probabilities(specs, thetas, features, vote, batch_size)[0]


def predict_with_probabilities(specs: Sequence[WorkerSpec], thetas: Sequence[Weights], features: np.ndarray,
                               vote: str = "majority", batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """``(labels int64 (n,), probabilities float32 (n, C))``: labels by ``vote``, probabilities the
    mean softmax over the group models (what ``mean_proba`` votes on)."""
    check_vote(vote)
    each = [model_predictions(probabilities_model(s, th), features, batch_size)
            for s, th in zip(specs, thetas, strict=True)]
    return combine(each, vote, specs[0].num_classes)


def check_vote(vote: str) -> None:
    if vote not in ("majority", "mean_proba"):
        raise ValueError(f"unknown vote {vote!r}; choose majority or mean_proba")


def combine(each: Sequence[tuple[np.ndarray, np.ndarray]], vote: str,
            num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble's ``(labels, mean probabilities)`` from each group model's ``(argmax labels,
    probabilities)`` (``nodes.worker.model_predictions``, computed where the model lives)."""
    check_vote(vote)
    n = len(each[0][0]) if each else 0
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, num_classes), dtype=np.float32)
    probs = torch.stack([torch.tensor(np.asarray(p)) for _, p in each]).mean(0)  # copies: Ray's are read-only
    if vote == "majority":
        votes = torch.zeros(n, num_classes, dtype=torch.int64)
        for labels, _ in each:
            votes[torch.arange(n), torch.tensor(np.asarray(labels))] += 1
        # argmax returns the first maximum: ties go to the smallest class index.
        chosen = votes.argmax(1)
    else:
        chosen = probs.argmax(1)
    return chosen.numpy().astype(np.int64), probs.to(torch.float32).numpy()


def ensemble_accuracy(specs, thetas, features, labels, vote: str = "majority") -> float:
    if len(labels) == 0:
        return float("nan")
    return float((predict(specs, thetas, features, vote) == labels).mean())
