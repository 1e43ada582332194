"""The files derived from the ledger for people to read: ``state.json``, ``summary.json``,
``metrics.jsonl`` and ``accuracy.png``. Each is rewritten whole (``write_json``: the one atomic
write) and never trusted: ``verify`` compares ``state.json`` with the ledger."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ostracon.nodes.durable import write_bytes_atomic

from .ledger import Ledger

log = logging.getLogger(__name__)

STATE_JSON = "state.json"
SUMMARY_JSON = "summary.json"
METRICS_JSONL = "metrics.jsonl"
ACCURACY_PNG = "accuracy.png"
MODEL_VERSION_ROW = "model_version"  # the "kind" of a metrics.jsonl row that describes a published version


def write_json(path: str, obj: object) -> None:
    """Strict JSON (null, never NaN), indented with sorted keys, written atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode())


def derived_state(ledger: Ledger) -> dict[str, Any]:
    """What ``state.json`` holds: a readable copy of the ledger's published version."""
    version, record = ledger.latest_version()
    return {
        "format": 2,
        "model_version": version,
        "stages": ledger.meta("stages"),
        "gradient_evaluations": ledger.full_retrain_cost(),
        "worker_digests": dict(record.worker_digests),
        "group_digests": dict(record.group_digests),
        "checkpoints": {k: v.to_dict() for k, v in record.checkpoints.items()},
        # Groups serving approximately unlearned models, and the ids their checkpoints still carry.
        "approximate_models": {g: m.to_dict() for g, m in record.approximate_models.items()},
        "unlearning_debt": {g: d.to_dict() for g, d in record.debts.items()},
    }


def write_state_json(state_dir: str, ledger: Ledger) -> dict[str, Any]:
    state = derived_state(ledger)
    write_json(os.path.join(state_dir, STATE_JSON), state)
    return state


def read_metrics(state_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(state_dir, METRICS_JSONL)
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def update_outputs(state_dir: str, ledger: Ledger, *, title: str, deleted_samples: int) -> None:
    """``summary.json``, ``metrics.jsonl`` and ``accuracy.png`` show every published version."""
    versions = [{"model_version": v, **rec.evaluation} for v, _, rec in ledger.versions()]
    latest_version, latest = ledger.latest_version()
    summary_path = os.path.join(state_dir, SUMMARY_JSON)
    try:
        with open(summary_path) as fh:
            summary = json.load(fh)
    except (OSError, ValueError):
        summary = {}
    summary.update({"model_version": latest_version, "worker_digests": dict(latest.worker_digests),
                    "group_digests": dict(latest.group_digests), "versions": versions,
                    "honest_test_accuracy": latest.evaluation["honest_test_accuracy"],
                    "ensemble_test_accuracy": latest.evaluation["ensemble_test_accuracy"],
                    "deleted_samples": deleted_samples})
    write_json(summary_path, summary)
    rows = [r for r in read_metrics(state_dir) if r.get("kind") != MODEL_VERSION_ROW]
    rows += [{"kind": MODEL_VERSION_ROW, **v} for v in versions]
    write_bytes_atomic(os.path.join(state_dir, METRICS_JSONL), "".join(json.dumps(r) + "\n" for r in rows).encode())
    if versions[-1]["ensemble_test_accuracy"] is not None:
        write_accuracy_plot([r for r in rows if "round" in r], os.path.join(state_dir, ACCURACY_PNG),
                            title=title, versions=versions)


def write_accuracy_plot(metrics: Sequence[Mapping[str, Any]], path: str, *, title: str = "",
                        versions: Sequence[Mapping[str, Any]] | None = None) -> bool:
    """Left: honest test accuracy (mean, min-max band) against the round, from round 0. Right (when
    given): the honest mean and the ensemble accuracy of every published model version, so a
    deletion's effect shows. Returns False (and writes nothing) when there is no test split."""
    rounds = [m["round"] for m in metrics if m["honest_accuracy"]["mean"] is not None
              and math.isfinite(m["honest_accuracy"]["mean"])]
    if not rounds:
        log.info("no test split (data.test_fraction = 0): no accuracy plot")
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in metrics if m["round"] in rounds]
    panels = 2 if versions else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    lo = [m["honest_accuracy"]["min"] for m in shown]
    mid = [m["honest_accuracy"]["mean"] for m in shown]
    hi = [m["honest_accuracy"]["max"] for m in shown]
    ax.fill_between(rounds, lo, hi, alpha=0.25, label="honest min-max")
    ax.plot(rounds, mid, marker="o", label="honest mean")
    ax.set_xlabel("round (training of model version 1)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if versions:
        ax = axes[0][1]
        xs = [v["model_version"] for v in versions]
        ax.plot(xs, [v["honest_test_accuracy"]["mean"] for v in versions], marker="o", label="honest mean")
        voted = [v for v in versions if v["ensemble_test_accuracy"] is not None]  # None: not measured
        if voted:
            ax.plot([v["model_version"] for v in voted], [v["ensemble_test_accuracy"] for v in voted], marker="s",
                    label="ensemble (vote)")
        for v in voted:
            ax.annotate(f"{v['ensemble_test_accuracy']:.3f}", (v["model_version"], v["ensemble_test_accuracy"]),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        ax.set_xlabel("model version (each deletion publishes one)")
        ax.set_xticks(xs)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
