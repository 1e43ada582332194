"""The gate of an approximate deletion: the affected groups' honest models evaluated on the request's
forget rows, the group's retained data and the test split (``evaluation.unlearning_metrics``), before and
after, against ``unlearning.gate``; and the per-group summaries certificates carry (both phases of a
request that ends exact are summarised the same way)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ostracon.nodes.sources import read_rows
from ostracon.nodes.worker import Weights

from ..config import GateConfig
from .evaluation import unlearning_metrics
from .trained import TrainedState


@dataclass(frozen=True)
class GroupData:
    """What a group's models are evaluated on: ``(features, labels)`` pairs."""

    forget: tuple[np.ndarray, np.ndarray]
    retain: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


def rows_of(st: TrainedState, ids: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(features, labels)`` of ``ids``, read from the source for this evaluation only (never kept)."""
    return read_rows(st.plan.source, st.index, ids)


def retained_rows(st: TrainedState, group: int, exclude: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """The group's training rows minus ``exclude`` (the retained data the group trains on), read from the
    source for this evaluation only."""
    excluded = np.asarray(sorted(exclude), dtype=str)
    ids = np.concatenate([st.plan.shard_ids(j) for j in st.plan.group_workers(group)])
    return rows_of(st, ids[~np.isin(ids, excluded)].tolist())


def group_data(st: TrainedState, group: int, forget_ids: Collection[str]) -> GroupData:
    """The forget rows of ``group``, its retained data (its rows minus them) and the test split; read once
    per group and request, whatever number of models is evaluated on them."""
    return GroupData(rows_of(st, forget_ids), retained_rows(st, group, forget_ids),
                     (st.plan.test_features, st.plan.test_labels))


def group_metrics(st: TrainedState, group: int, thetas: Mapping[int, Weights],
                  data: GroupData) -> dict[int, dict[str, Any]]:
    """UA/RA/TA/MIA of every honest model of ``group`` (``thetas``: worker -> weights)."""
    return {j: unlearning_metrics(st.plan.specs[j], thetas[j], data.forget, data.retain, data.test,
                                  seed=st.config.seed)
            for j in st.plan.honest(group)}


def gate(before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]], thresholds: GateConfig,
         forget_size: int) -> dict[str, Any]:
    """Check every honest model against ``unlearning.gate``; returns ``{"passed", "failed": [reasons],
    "thresholds", "worst": {...}}``.

    The forget check allows ``max_forget_gap`` plus two binomial standard deviations,
    ``2 * sqrt(TA (1 - TA) / n)`` for ``n`` forget rows: a model retrained without a random sample still
    classifies it right with probability ~TA, so one or two correctly classified samples prove nothing."""
    failed: list[str] = []
    worst = {"test_drop": 0.0, "retain_drop": 0.0, "forget_gap": -1.0}
    for j in sorted(after):
        a, b = after[j], before[j]
        if not a["finite"]:
            failed.append(f"worker {j}: the updated model is not finite")
            continue
        test_drop, retain_drop = b["TA"] - a["TA"], b["RA"] - a["RA"]
        forget_gap = (1.0 - a["UA"]) - a["TA"] if not np.isnan(a["UA"]) else -1.0
        worst = {"test_drop": max(worst["test_drop"], test_drop), "retain_drop": max(worst["retain_drop"], retain_drop),
                 "forget_gap": max(worst["forget_gap"], forget_gap)}
        if test_drop > thresholds.max_test_drop:
            failed.append(f"worker {j}: test accuracy dropped {test_drop:.3f} > max_test_drop "
                          f"{thresholds.max_test_drop}")
        if retain_drop > thresholds.max_retain_drop:
            failed.append(f"worker {j}: retained-data accuracy dropped {retain_drop:.3f} > max_retain_drop "
                          f"{thresholds.max_retain_drop}")
        allowed = thresholds.max_forget_gap + 2.0 * math.sqrt(max(a["TA"] * (1.0 - a["TA"]), 0.0) / max(1, forget_size))
        if forget_gap > allowed:
            failed.append(f"worker {j}: forget-set accuracy exceeds test accuracy by {forget_gap:.3f} > "
                          f"{allowed:.3f} (max_forget_gap {thresholds.max_forget_gap} + 2 binomial s.d. for "
                          f"{forget_size} row(s))")
    return {"passed": not failed, "failed": failed, "thresholds": dataclasses.asdict(thresholds),
            "worst": {k: round(v, 6) for k, v in worst.items()}}


def summarize(metrics: dict[int, dict[str, Any]]) -> dict[str, dict[str, float] | None]:
    """Mean and worst (over honest models) of each metric, rounded for a certificate."""
    keys = ("UA", "RA", "TA", "MIA")
    out: dict[str, dict[str, float] | None] = {}
    for k in keys:
        values = [m[k] for m in metrics.values() if not np.isnan(m[k])]
        out[k] = {"mean": round(float(np.mean(values)), 6), "min": round(float(np.min(values)), 6),
                  "max": round(float(np.max(values)), 6)} if values else None
    return out
