"""``train``: run a config end to end and write its results.

Writes to ``outdir`` (when given): ``config.json`` (resolved config),
``metrics.jsonl`` (one object per evaluation), ``summary.json`` and
``accuracy.png``; the durable state (shard stores, stage checkpoints) lives
under the same directory, which is the ``state_dir`` of later unlearning.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ostracon.nodes.models import parameter_digest
from ostracon.nodes.seeding import set_deterministic
from ostracon.nodes.worker import evaluate

from .backends import Backend, make_backend
from .checkpoints import CheckpointStore
from .config import Config
from .ensemble import ensemble_accuracy
from .plan import RunPlan, ids_digest, make_plan, stage_rounds
from .progress import progress_bar
from .protocols import Session, elapsed

log = logging.getLogger(__name__)

NO_TEST_SPLIT = "no test split (data.test_fraction = 0): accuracy is not measured"


@dataclass
class TrainResult:
    config: Config
    summary: dict
    metrics: list[dict] = field(default_factory=list)
    parameters: dict[int, np.ndarray] = field(default_factory=dict)  # honest workers' final parameters


def served_worker(plan: RunPlan, group: int) -> int:
    """The worker whose model a group serves: its first honest worker (deterministic choice)."""
    return plan.honest(group)[0]


def train(config: Config, outdir: str | os.PathLike | None = None, *, backend: Backend | None = None,
          progress: bool = True, on_round: Callable[[int, Backend], None] | None = None,
          dataset=None) -> TrainResult:
    """Train every group for every stage; return (and, with ``outdir``, write) the results."""
    began = time.perf_counter()
    if config.deterministic:
        set_deterministic(config.threads)
    if outdir is not None:
        outdir = os.fspath(outdir)
        if os.path.exists(os.path.join(outdir, "state.json")):
            raise FileExistsError(f"{outdir} already holds a trained state; choose a new output directory")
        os.makedirs(outdir, exist_ok=True)
        _write_json(os.path.join(outdir, "config.json"), config.to_dict())
    plan = make_plan(config, state_dir=outdir, dataset=dataset)
    backend = backend or make_backend(config)
    checkpoints = CheckpointStore(outdir) if outdir is not None else None
    metrics: list[dict] = []
    metrics_file = open(os.path.join(outdir, "metrics.jsonl"), "w") if outdir else None
    try:
        backend.start(plan.specs, plan.data)
        session = Session(plan, backend)
        groups = plan.groups

        def after_round(t: int) -> None:
            if on_round is not None:
                on_round(t, backend)
            bar.advance(1)
            if (t + 1) % config.training.eval_every == 0 or t + 1 == config.training.rounds:
                record = evaluation_record(plan, session, t + 1, began)
                metrics.append(record)
                if metrics_file:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                bar.advance(0, round_message(record))

        checkpoint_index: dict[str, dict] = {}
        with progress_bar(config.training.rounds, "train", enabled=progress) as bar:
            for stage in range(config.unlearning.slices):
                session.run_stage(groups, stage, on_round=after_round)
                if checkpoints is not None:
                    for g, info in checkpoints.save_stage(plan, session, groups, stage).items():
                        checkpoint_index[f"{g}/{stage}"] = {k: info[k] for k in ("data_digest", "sha256")}
        session.flush(groups)
        params = session.honest_parameters(groups)
        summary = make_summary(plan, session, params, metrics, elapsed(began))
        if outdir is not None:
            _write_json(os.path.join(outdir, "summary.json"), summary)
            _write_json(os.path.join(outdir, "state.json"), {
                "format": 1, "model_version": 1, "stages": stage_rounds(config),
                "gradient_evaluations": summary["gradient_evaluations"],
                "worker_digests": summary["worker_digests"], "group_digests": summary["group_digests"],
                "checkpoints": checkpoint_index,
            })
            write_accuracy_plot(metrics, os.path.join(outdir, "accuracy.png"))
        return TrainResult(config, summary, metrics, params)
    finally:
        if metrics_file:
            metrics_file.close()
        backend.shutdown()


def evaluation_record(plan: RunPlan, session: Session, round_: int, began: float) -> dict:
    session.flush(plan.groups)
    params = session.honest_parameters(plan.groups)
    acc, loss = {}, {}
    for j, theta in sorted(params.items()):
        acc[j], loss[j] = evaluate(plan.specs[j], theta, plan.test_features, plan.test_labels)
    return {
        "round": round_,
        "accuracy": {str(j): _finite(a) for j, a in acc.items()},
        "loss": {str(j): _finite(v) for j, v in loss.items()},
        "honest_accuracy": _stats([a for a in acc.values() if math.isfinite(a)]),
        "failures": session.take_failures(),
        "elapsed_s": elapsed(began),
    }


def make_summary(plan: RunPlan, session: Session, params: dict[int, np.ndarray], metrics: list[dict],
                 wall_s: float) -> dict:
    config = plan.config
    acc = metrics[-1]["accuracy"]  # the last round is always evaluated, on these same parameters
    served = {g: served_worker(plan, g) for g in plan.groups}
    ensemble = None
    if len(plan.test_labels):
        ensemble = round(ensemble_accuracy([plan.specs[served[g]] for g in plan.groups],
                                           [params[served[g]] for g in plan.groups],
                                           plan.test_features, plan.test_labels, config.unlearning.vote), 6)
    failures = sum(len(m["failures"]) for m in metrics)
    return {
        "rounds": config.training.rounds,
        "honest_test_accuracy": _stats([a for a in acc.values() if a is not None]),
        "ensemble_test_accuracy": ensemble,
        **({} if len(plan.test_labels) else {"note": NO_TEST_SPLIT}),
        "wall_time_s": wall_s,
        "gradient_evaluations": int(sum(session.gradient_evaluations.values())),
        "failures": failures,
        "worker_digests": {str(j): parameter_digest(as_tensor(th)) for j, th in sorted(params.items())},
        "group_digests": {str(g): parameter_digest(as_tensor(params[served[g]])) for g in plan.groups},
        "served_workers": {str(g): j for g, j in served.items()},
        "train_samples": int(sum(len(d.ids) for d in plan.data.values())),
        "test_samples": int(len(plan.test_labels)),
        "data_digest": ids_digest(i for d in plan.data.values() for i in d.ids),
    }


def as_tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(np.array(array, dtype=np.float32))


def _stats(values: list[float]) -> dict:
    """min/mean/max, rounded; None (JSON null, never NaN) when nothing was measured."""
    if not values:
        return {"min": None, "mean": None, "max": None}
    return {"min": round(min(values), 6), "mean": round(sum(values) / len(values), 6), "max": round(max(values), 6)}


def _finite(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


def round_message(record: dict) -> str:
    acc = record["honest_accuracy"]
    if acc["mean"] is None:
        return f"round {record['round']}: no test split, accuracy not measured"
    return f"round {record['round']}: honest acc min {acc['min']:.3f} mean {acc['mean']:.3f}"


def write_accuracy_plot(metrics: list[dict], path: str) -> None:
    """Honest test accuracy (mean, with the min-max band) against the round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [m["round"] for m in metrics if m["honest_accuracy"]["mean"] is not None]
    if metrics and not rounds:
        return  # no test split: accuracy was never measured, so there is nothing to plot
    fig, ax = plt.subplots(figsize=(6, 4))
    if rounds:
        lo = [m["honest_accuracy"]["min"] for m in metrics]
        mid = [m["honest_accuracy"]["mean"] for m in metrics]
        hi = [m["honest_accuracy"]["max"] for m in metrics]
        ax.fill_between(rounds, lo, hi, alpha=0.25, label="honest min-max")
        ax.plot(rounds, mid, marker="o", label="honest mean")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, allow_nan=False)  # strict JSON: null, never NaN
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
