"""Hyperparameters of the approximate unlearning methods (``ostracon.nodes.approximate``).

Plain frozen dataclasses with documented defaults, importable without torch: the config schema
(``unlearning.<method>.<param>``) is built from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Params:
    """Hyperparameters every iterative method has."""

    steps: int = 10  # unlearning rounds
    lr: float = 0.05  # step size of the unlearning optimiser
    momentum: float = 0.9  # heavy-ball momentum of the unlearning optimiser (fresh: starts at 0)
    batch_size: int = 32  # retained rows per trainer per round
    retain_weight: float = 1.0  # weight of the retained-data cross-entropy term

    def validate(self, where: str) -> None:
        _check(where, "steps", self.steps, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
        _check(where, "lr", self.lr, lambda v: v > 0, "> 0")
        _check(where, "momentum", self.momentum, lambda v: 0 <= v < 1, "in [0, 1)")
        _check(where, "batch_size", self.batch_size, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
        _check(where, "retain_weight", self.retain_weight, lambda v: v >= 0, ">= 0")


@dataclass(frozen=True)
class FTParams(Params):
    steps: int = 15


@dataclass(frozen=True)
class GAParams(Params):
    steps: int = 5
    lr: float = 0.01
    retain_weight: float = 0.0


@dataclass(frozen=True)
class NPOParams(Params):
    beta: float = 0.5  # NPO's inverse temperature

    def validate(self, where: str) -> None:
        super().validate(where)
        _check(where, "beta", self.beta, lambda v: v > 0, "> 0")


@dataclass(frozen=True)
class RLParams(Params):
    forget_weight: float = 1.0  # weight of the random-label term

    def validate(self, where: str) -> None:
        super().validate(where)
        _check(where, "forget_weight", self.forget_weight, lambda v: v >= 0, ">= 0")


@dataclass(frozen=True)
class L1SparseParams(Params):
    steps: int = 15
    gamma: float = 5e-4  # initial L1 strength, decays linearly to 0 over the steps

    def validate(self, where: str) -> None:
        super().validate(where)
        _check(where, "gamma", self.gamma, lambda v: v >= 0, ">= 0")


@dataclass(frozen=True)
class SalUnParams(RLParams):
    sparsity: float = 0.5  # fraction of the weights (largest forget-gradient saliency) that may change

    def validate(self, where: str) -> None:
        super().validate(where)
        _check(where, "sparsity", self.sparsity, lambda v: 0 < v <= 1, "in (0, 1]")


@dataclass(frozen=True)
class SSDParams:
    alpha: float = 10.0  # selection: a parameter is dampened when I_forget > alpha * I_retain
    lam: float = 1.0  # dampening: scaled by min(lam * I_retain / I_forget, 1)
    retain_batches: int = 8  # batches of retained rows per trainer for I_retain
    batch_size: int = 32

    steps = 0  # one-shot: no rounds

    def validate(self, where: str) -> None:
        _check(where, "alpha", self.alpha, lambda v: v > 0, "> 0")
        _check(where, "lam", self.lam, lambda v: v > 0, "> 0")
        _check(where, "retain_batches", self.retain_batches, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
        _check(where, "batch_size", self.batch_size, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")


def _check(where: str, name: str, value: Any, ok: Callable[[Any], bool], wanted: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{where}.{name} must be {wanted}, got {value!r}")


# Method name -> its hyperparameters (the registry in ``approximate`` pairs each with its function).
PARAMS = {"ft": FTParams, "ga": GAParams, "npo": NPOParams, "rl": RLParams, "l1_sparse": L1SparseParams,
          "salun": SalUnParams, "ssd": SSDParams}
