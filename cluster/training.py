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

from . import faults, statedir
from . import ledger as ledger_mod
from .backends import Backend, make_backend
from .checkpoints import CheckpointStore
from .config import Config
from .ensemble import ensemble_accuracy
from .plan import RunPlan, dataset_digest, ids_digest, load_config_dataset, make_plan, stage_rounds
from .progress import progress_bar
from .protocols import Schedule, Session, elapsed

log = logging.getLogger(__name__)

NO_TEST_SPLIT = "no test split (data.test_fraction = 0): accuracy is not measured"


@dataclass
class TrainResult:
    config: Config
    summary: dict
    metrics: list[dict] = field(default_factory=list)
    parameters: dict[int, np.ndarray] = field(default_factory=dict)  # honest workers' final parameters
    schedule: dict = field(default_factory=dict)  # the timing events recorded (or imposed)


def served_worker(plan: RunPlan, group: int) -> int:
    """The worker whose model a group serves: its first honest worker (deterministic choice)."""
    return plan.honest(group)[0]


def train(config: Config, outdir: str | os.PathLike | None = None, *, backend: Backend | None = None,
          progress: bool = True, on_round: Callable[[int, Backend], None] | None = None,
          dataset=None, schedule: Schedule | None = None) -> TrainResult:
    """Train every group for every stage; return (and, with ``outdir``, write) the results.

    ``outdir`` must be new or empty; it is locked for the run, marked ``INCOMPLETE`` until every
    file is written, and becomes a state directory with a deletion ledger. ``schedule`` (a recorded
    one, from a state directory) is imposed instead of recording timing events: that is how
    ``verify`` retrains a run whose workers missed deadlines.
    """
    if outdir is None:
        return _train(config, None, backend, progress, on_round, dataset, schedule)
    outdir = os.fspath(outdir)
    statedir.prepare_new(outdir)
    with statedir.exclusive(outdir, "train"):
        statedir.mark_incomplete(outdir, f"training started {time.strftime('%Y-%m-%d %H:%M:%S')} by pid "
                                         f"{os.getpid()} did not finish")
        try:
            result = _train(config, outdir, backend, progress, on_round, dataset, schedule)
        except BaseException as exc:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {type(exc).__name__}: {exc}"
            statedir.mark_incomplete(outdir, f"training {reason}")
            raise
        statedir.clear_incomplete(outdir)
        faults.point("train.complete")
        return result


def _train(config: Config, outdir: str | None, backend: Backend | None, progress: bool, on_round,
           dataset, schedule: Schedule | None) -> TrainResult:
    began = time.perf_counter()
    if config.deterministic:
        set_deterministic(config.threads)
    source = dataset if dataset is not None else load_config_dataset(config)
    plan = make_plan(config, state_dir=outdir, dataset=source)
    ledger = None
    if outdir is not None:
        _write_json(os.path.join(outdir, "config.json"), config.to_dict())
        ledger = ledger_mod.create(outdir, {"source_digest": dataset_digest(source), "stages": stage_rounds(config),
                                            "config_sha256": _sha256_json(config.to_dict())})
    backend = backend or make_backend(config)
    checkpoints = CheckpointStore(outdir) if outdir is not None else None
    metrics: list[dict] = []
    metrics_file = open(os.path.join(outdir, "metrics.jsonl"), "w") if outdir else None
    try:
        backend.start(plan.specs, plan.data)
        session = Session(plan, backend, schedule=dict(schedule or {}), replay_schedule=schedule is not None,
                          max_stage_attempts=config.backend.max_restarts + 1)
        groups = plan.groups
        shown = [0]

        def after_round(t: int) -> None:
            if on_round is not None:
                on_round(t, backend)
            if t + 1 > shown[0]:  # a redone stage repeats rounds: the bar counts each round once
                bar.advance(t + 1 - shown[0])
                shown[0] = t + 1
            if (t + 1) % config.training.eval_every == 0 or t + 1 == config.training.rounds:
                record = evaluation_record(plan, session, t + 1, began)
                metrics.append(record)
                if metrics_file:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                bar.advance(0, round_message(record))

        checkpoint_index: dict[str, dict] = {}
        states = session.states(groups)  # the initial models
        metrics.append(evaluation_record(plan, session, 0, began))  # round 0: where training starts
        if metrics_file:
            metrics_file.write(json.dumps(metrics[0]) + "\n")
        with progress_bar(config.training.rounds, "train", enabled=progress) as bar:
            for stage in range(config.unlearning.slices):
                states = session.run_stage(groups, stage, states, on_round=after_round)
                if checkpoints is not None:
                    for g, info in checkpoints.save_stage(plan, backend, states, groups, stage).items():
                        checkpoint_index[f"{g}/{stage}"] = {k: info[k] for k in ("data_digest", "sha256")}
                    faults.point(f"train.stage:{stage}")
        leftover = session.take_failures()
        if leftover and metrics:  # failures after the last evaluation (a redone last stage) still count
            metrics[-1]["failures"].extend(leftover)
        params = session.honest_parameters(groups)
        summary = make_summary(plan, session, params, metrics, elapsed(began))
        summary["schedule_events"] = sum(len(w) for rounds in session.schedule.values() for w in rounds.values())
        if outdir is not None:
            record = version_record(summary, checkpoint_index)
            ledger.set_schedule(session.schedule)
            ledger.set_store_hashes(store_hashes(plan))
            ledger.publish(None, 1, record, None)
            write_state_json(outdir, ledger)
            summary["model_version"] = 1
            _write_json(os.path.join(outdir, "summary.json"), summary)
            write_accuracy_plot(metrics, os.path.join(outdir, "accuracy.png"), title=plot_title(config),
                                versions=[{"model_version": 1, **record["evaluation"]}])
        return TrainResult(config, summary, metrics, params, dict(session.schedule))
    finally:
        if metrics_file:
            metrics_file.close()
        if ledger is not None:
            ledger.close()
        backend.shutdown()


def version_record(summary: dict, checkpoint_index: dict) -> dict:
    """What the ledger keeps of a published model version."""
    return {
        "worker_digests": summary["worker_digests"],
        "group_digests": summary["group_digests"],
        "served_workers": summary["served_workers"],
        "checkpoints": checkpoint_index,
        "gradient_evaluations": summary["gradient_evaluations"],
        "evaluation": {"honest_test_accuracy": summary["honest_test_accuracy"],
                       "ensemble_test_accuracy": summary["ensemble_test_accuracy"]},
    }


def write_state_json(state_dir: str, ledger) -> dict:
    """``state.json``: a readable copy of the ledger's published version (derived, never trusted)."""
    state = derived_state(ledger)
    _write_json(os.path.join(state_dir, "state.json"), state)
    return state


def derived_state(ledger) -> dict:
    version, record = ledger.latest_version()
    first = ledger.versions()[0][2]
    return {
        "format": 2,
        "model_version": version,
        "stages": ledger.meta("stages"),
        "gradient_evaluations": first["gradient_evaluations"],
        "worker_digests": record["worker_digests"],
        "group_digests": record["group_digests"],
        "checkpoints": record["checkpoints"],
        # Groups serving approximately unlearned models, and the ids their checkpoints still carry.
        "approximate_models": record.get("approximate", {}),
        "unlearning_debt": record.get("debt", {}),
    }


def store_hashes(plan: RunPlan) -> dict[int, str]:
    """sha256 of every worker's ``rows.npz`` as it is on disk now."""
    from .checkpoints import file_sha256

    return {j: file_sha256(os.path.join(d.store_path, "rows.npz")) for j, d in plan.data.items() if d.store_path}


def plot_title(config: Config) -> str:
    t, b, u = config.training, config.byzantine, config.unlearning
    byz = f"{b.count} Byzantine ({b.behaviour})" if b.count else "no Byzantine"
    return (f"{config.data.source} / {config.model.name}: {u.groups} group(s) x {t.workers} workers, {byz}, "
            f"{t.protocol}+{t.rule}{'+' + '+'.join(p if isinstance(p, str) else p[0] for p in t.pre) if t.pre else ''}")


def _sha256_json(obj) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


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


def write_accuracy_plot(metrics: list[dict], path: str, *, title: str = "",
                        versions: list[dict] | None = None) -> bool:
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
        ax.plot(xs, [v["ensemble_test_accuracy"] for v in versions], marker="s", label="ensemble (vote)")
        for v in versions:
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


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, allow_nan=False)  # strict JSON: null, never NaN
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
