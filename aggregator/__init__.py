"""Robust aggregation: rules, pre-aggregations and attacks, as pure functions on tensors.

>>> import torch
>>> from ostracon.aggregator import aggregate
>>> x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [1e9, -1e9]])
>>> aggregate(x, "cwtm", f=1)
tensor([1.5000, 0.5000])
>>> aggregate(x, "nna", f=1, pivot=x[0], pre=["nnm"]).shape
torch.Size([2])

Names are looked up in :data:`RULES`, :data:`PRE_AGGREGATIONS` and
:data:`ATTACKS`; importing this package registers all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from . import attacks, pre_aggregation, rules  # noqa: F401  (importing registers the names)
from .pre_aggregation import adaptive_robust_clipping, bucketing, nearest_neighbor_mixing, static_clipping
from .registry import (
    ATTACKS,
    PRE_AGGREGATIONS,
    RULES,
    get_attack,
    get_pre_aggregation,
    get_rule,
    register_attack,
    register_pre_aggregation,
    register_rule,
)
from .rules import (
    average,
    centered_clipping,
    coordinate_wise_median,
    coordinate_wise_trimmed_mean,
    geometric_median,
    krum,
    max_f,
    mean_around_median,
    minimum_diameter_averaging,
    multi_krum,
    nearest_neighbor_average,
)

PreStep = str | tuple[str, Mapping[str, Any]]


def _pre_step(step: object) -> tuple[str, dict[str, Any]]:
    """``"nnm"`` or ``("bucketing", {"bucket_size": 2})`` -> ``(name, params)``."""
    if isinstance(step, str):
        return step, {}
    if isinstance(step, (tuple, list)) and len(step) == 2 and isinstance(step[0], str) and isinstance(step[1], Mapping):
        return step[0], dict(step[1])
    raise ValueError(f"pre: each step must be a name or a (name, params_dict) pair, got {step!r}")


def aggregate(
    vectors: torch.Tensor,
    rule: str,
    *,
    f: int = 0,
    pivot: torch.Tensor | None = None,
    pre: Iterable[PreStep] = (),
    **params: Any,
) -> torch.Tensor:
    """Apply the pre-aggregations ``pre`` in order, then ``rule``; returns a ``(d,)`` tensor.

    ``pre`` holds names or ``(name, params)`` pairs; every step and the rule get
    the same ``f``; ``pivot`` and ``params`` go to the rule only. Unknown names
    and parameters raise ``ValueError``.
    """
    fn = get_rule(rule)
    steps = [_pre_step(s) for s in ((pre,) if isinstance(pre, str) else pre)]
    fns = [(get_pre_aggregation(name), p) for name, p in steps]  # resolve every name before any work
    for pre_fn, p in fns:
        vectors = pre_fn(vectors, f=f, **p)
    return fn(vectors, f=f, pivot=pivot, **params)


__all__ = [
    "ATTACKS",
    "PRE_AGGREGATIONS",
    "RULES",
    "adaptive_robust_clipping",
    "aggregate",
    "average",
    "bucketing",
    "centered_clipping",
    "coordinate_wise_median",
    "coordinate_wise_trimmed_mean",
    "geometric_median",
    "get_attack",
    "get_pre_aggregation",
    "get_rule",
    "krum",
    "max_f",
    "mean_around_median",
    "minimum_diameter_averaging",
    "multi_krum",
    "nearest_neighbor_average",
    "nearest_neighbor_mixing",
    "register_attack",
    "register_pre_aggregation",
    "register_rule",
    "static_clipping",
]
