"""Argument checks shared by every rule, pre-aggregation and attack.

Every check raises ``ValueError`` with a message naming the problem, so bad
input is refused before any arithmetic runs.
"""

from __future__ import annotations

import torch


def check_vectors(vectors: torch.Tensor, name: str = "vectors") -> torch.Tensor:
    """Require a non-empty floating-point ``(n, d)`` tensor."""
    if not isinstance(vectors, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (n, d), got {type(vectors).__name__}")
    if vectors.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(vectors.shape)}")
    n, d = vectors.shape
    if n == 0:
        raise ValueError(f"{name} is empty: need at least one row, got shape {tuple(vectors.shape)}")
    if d == 0:
        raise ValueError(f"{name} has zero columns, got shape {tuple(vectors.shape)}")
    if not vectors.is_floating_point():
        raise ValueError(f"{name} must have a floating-point dtype, got {vectors.dtype}")
    return vectors


def check_f(f: int, n: int, *, max_f: int, rule: str, requirement: str) -> int:
    """Require ``0 <= f <= max_f``; ``requirement`` states the rule's bound, e.g. ``"n > 2f"``."""
    if isinstance(f, bool) or not isinstance(f, int):
        raise ValueError(f"{rule}: f must be an int, got {f!r}")
    if f < 0:
        raise ValueError(f"{rule}: f must be >= 0, got f={f}")
    if f > max_f:
        raise ValueError(f"{rule}: f={f} is too large for n={n} (requires {requirement})")
    return f


def check_pivot(pivot: torch.Tensor | None, vectors: torch.Tensor, rule: str) -> torch.Tensor:
    """Require a pivot of shape ``(d,)`` matching ``vectors``'s columns."""
    if pivot is None:
        raise ValueError(f"{rule}: a pivot vector of shape ({vectors.shape[1]},) is required")
    if not isinstance(pivot, torch.Tensor) or pivot.dim() != 1 or pivot.shape[0] != vectors.shape[1]:
        shape = tuple(pivot.shape) if isinstance(pivot, torch.Tensor) else type(pivot).__name__
        raise ValueError(f"{rule}: pivot must have shape ({vectors.shape[1]},), got {shape}")
    return pivot
