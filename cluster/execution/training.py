"""``train``: run a config end to end and write its results.

Writes to ``outdir`` (when given): ``config.json`` (resolved config),
``metrics.jsonl`` (one object per evaluation), ``summary.json`` and
``accuracy.png``; the durable state (shard stores, stage checkpoints) lives
under the same directory, which is the ``state_dir`` of later unlearning.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from ostracon.nodes.data import Dataset
from ostracon.nodes.durable import file_sha256
from ostracon.nodes.seeding import set_deterministic
from ostracon.nodes.sources import NO_HOLDER, SourceIndex
from ostracon.nodes.worker import Weights, Worker, theta_of, weights_digest

from .. import faults
from ..config import Config
from ..errors import DataError, SourceChangedError
from ..storage import ledger as ledger_mod
from ..storage import statedir
from ..storage.checkpoints import CheckpointStore
from ..storage.ledger import Ledger
from ..storage.outputs import METRICS_JSONL, SUMMARY_JSON, write_accuracy_plot, write_json, write_state_json
from ..storage.records import CheckpointInfo, Schedule, VersionRecord, checkpoint_key
from .backend import Backend, make_backend
from .ensemble import combine
from .hooks import NO_HOOKS, Hooks
from .plan import RunPlan, config_source, ids_digest, make_plan, read_config_index, stage_rounds
from .progress import progress_bar
from .session import Session, elapsed

log = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
NO_TEST_SPLIT = "no test split (data.test_fraction = 0): accuracy is not measured"
PER_WORKER_TEST = ("data.per_worker: each worker is evaluated on the held-out rows of its own file; there is no "
                   "common test set, so no ensemble accuracy")


@dataclass
class TrainResult:
    config: Config
    summary: dict
    metrics: list[dict] = field(default_factory=list)
    parameters: dict[int, np.ndarray] = field(default_factory=dict)  # honest workers' final parameters
    schedule: Schedule = field(default_factory=Schedule)  # the timing events and budgets recorded (or imposed)


def served_worker(plan: RunPlan, group: int) -> int:
    """The worker whose model a group serves: its first honest worker (deterministic choice)."""
    return plan.honest(group)[0]


def train(config: Config, outdir: str | os.PathLike[str] | None = None, *, backend: Backend | None = None,
          progress: bool = True, hooks: Hooks = NO_HOOKS, dataset: Dataset | None = None,
          schedule: Schedule | None = None, index: SourceIndex | None = None,
          exclude: Iterable[str] = (), digests: Mapping[str, Any] | None = None) -> TrainResult:
    """Train every group for every stage; return (and, with ``outdir``, write) the results.

    ``outdir`` must be new or empty; it is locked for the run, marked ``INCOMPLETE`` until every
    file is written, and becomes a state directory with a deletion ledger. ``schedule`` (a recorded
    one, from a state directory) is imposed instead of recording timing events: that is how
    ``verify`` retrains a run whose workers missed deadlines. ``hooks.on_round`` is told each round.
    The workers read their rows from ``config.data`` (``dataset``: rows held by this process instead,
    local backend only); ``index`` is the source's index when the caller read it already; the ids of
    ``exclude`` are placed as always but held by no worker (``verify``'s retrain without the deleted),
    and ``digests`` what a state recorded its source's rows hash to (``make_plan``).
    """
    if outdir is None:
        return _train(config, None, backend, progress, hooks, dataset, schedule, index, exclude, digests)
    outdir = os.fspath(outdir)
    existed = os.path.isdir(outdir)
    statedir.prepare_new(outdir)
    try:
        with statedir.exclusive(outdir, "train"):
            statedir.mark_incomplete(outdir, f"training started {time.strftime('%Y-%m-%d %H:%M:%S')} by pid "
                                             f"{os.getpid()} did not finish")
            try:
                result = _train(config, outdir, backend, progress, hooks, dataset, schedule, index, exclude,
                                digests)
            except BaseException as exc:
                reason = ("interrupted" if isinstance(exc, KeyboardInterrupt)
                          else f"failed: {type(exc).__name__}: {exc}")
                statedir.mark_incomplete(outdir, f"training {reason}")
                raise
            statedir.clear_incomplete(outdir)
            faults.point("train.complete")
    except (DataError, SourceChangedError):
        # A worker found its rows unreadable before the first round: leave the directory as it was.
        _clear(outdir, remove=not existed)
        raise
    return result


def _clear(outdir: str, *, remove: bool) -> None:
    """Remove what a run that never started wrote (the directory too when it created it)."""
    if remove:
        shutil.rmtree(outdir, ignore_errors=True)
        return
    for name in os.listdir(outdir):
        path = os.path.join(outdir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


def _train(config: Config, outdir: str | None, backend: Backend | None, progress: bool, hooks: Hooks,
           dataset: Dataset | None, schedule: Schedule | None, index: SourceIndex | None, exclude: Iterable[str],
           digests: Mapping[str, Any] | None) -> TrainResult:
    began = time.perf_counter()
    if config.deterministic:
        set_deterministic(config.threads)
    source = config_source(config, dataset)
    index = index if index is not None and dataset is None else read_config_index(config, source)
    plan = make_plan(config, state_dir=outdir, dataset=dataset, index=index, exclude=exclude, digests=digests)
    ledger: Ledger | None = None
    if outdir is not None:
        write_json(os.path.join(outdir, CONFIG_JSON), config.to_dict())
        ledger = ledger_mod.create(outdir, {INDEX_DIGEST: index.digest(), "stages": stage_rounds(config),
                                            "config_sha256": _sha256_json(config.to_dict())})
    del index  # the plan keeps the ids it needs
    backend = backend or make_backend(config)
    checkpoints = CheckpointStore(outdir) if outdir is not None else None
    metrics: list[dict[str, Any]] = []
    # Closed in the finally below, which also stops the backend: one cleanup for both.
    metrics_file: IO[str] | None = open(os.path.join(outdir, METRICS_JSONL), "w") if outdir else None  # noqa: SIM115
    try:
        backend.start(plan.specs, plan.shards)
        if ledger is not None:
            ledger.set_meta(source_digests(plan, backend))
        session = Session(plan, backend, schedule=copy.deepcopy(schedule) if schedule is not None else Schedule(),
                          replay_schedule=schedule is not None,
                          max_stage_attempts=config.backend.max_restarts + 1)
        groups = plan.groups
        shown = [0]

        def after_round(t: int) -> None:
            hooks.on_round(t, backend)
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

        checkpoint_index: dict[str, CheckpointInfo] = {}
        states = session.states(groups)  # the initial models
        metrics.append(evaluation_record(plan, session, 0, began))  # round 0: where training starts
        if metrics_file:
            metrics_file.write(json.dumps(metrics[0]) + "\n")
        with progress_bar(config.training.rounds, "train", enabled=progress) as bar:
            for stage in range(config.unlearning.slices):
                states = session.run_stage(groups, stage, states, on_round=after_round)
                if checkpoints is not None:
                    for g, info in session.checkpoint(checkpoints, states, groups, stage).items():
                        checkpoint_index[checkpoint_key(g, stage)] = info
                    faults.point(f"train.stage:{stage}")
        leftover = session.take_failures()
        if leftover and metrics:  # failures after the last evaluation (a redone last stage) still count
            metrics[-1]["failures"].extend(leftover)
        weights = honest_weights(plan, session, groups)
        params = {j: theta_of(w) for j, w in weights.items()}
        summary = make_summary(plan, session, weights, metrics, elapsed(began))
        summary["schedule_events"] = session.schedule.event_count()
        # Rounds (per group) in which silent workers spent part of the fault budget.
        summary["budget_rounds"] = sum(len(rounds) for rounds in session.schedule.budgets.values())
        if outdir is not None and ledger is not None:
            record = version_record(summary, checkpoint_index)
            ledger.set_schedule(session.schedule)
            ledger.set_store_hashes(store_hashes(plan))
            ledger.publish(None, 1, record, None)
            write_state_json(outdir, ledger)
            summary["model_version"] = 1
            write_json(os.path.join(outdir, SUMMARY_JSON), summary)
            write_accuracy_plot(metrics, os.path.join(outdir, "accuracy.png"), title=plot_title(config),
                                versions=[{"model_version": 1, **record.evaluation}])
        return TrainResult(config, summary, metrics, params, session.schedule)
    finally:
        if metrics_file:
            metrics_file.close()
        if ledger is not None:
            ledger.close()
        backend.shutdown()


def version_record(summary: Mapping[str, Any], checkpoint_index: Mapping[str, CheckpointInfo]) -> VersionRecord:
    """What the ledger keeps of the version a training run publishes."""
    return VersionRecord(
        worker_digests=summary["worker_digests"],
        group_digests=summary["group_digests"],
        served_workers=summary["served_workers"],
        checkpoints=dict(checkpoint_index),
        gradient_evaluations=summary["gradient_evaluations"],
        evaluation={"honest_test_accuracy": summary["honest_test_accuracy"],
                    "ensemble_test_accuracy": summary["ensemble_test_accuracy"]},
    )


def store_hashes(plan: RunPlan) -> dict[int, str]:
    """sha256 of every worker's ``rows.npz`` as it is on disk now."""
    return {j: file_sha256(os.path.join(d.store_path, "rows.npz")) for j, d in plan.shards.items() if d.store_path}


INDEX_DIGEST, SHARD_DIGESTS, TEST_DIGEST = "index_digest", "shard_digests", "test_digest"


def source_digests(plan: RunPlan, backend: Backend) -> dict[str, object]:
    """What a state's source must still hash to: each placement position's rows (digested by a worker
    holding them, from its store: nothing is deleted yet) and the held-out rows (by a worker too)."""
    first: dict[int, int] = {}
    for j, holder in sorted(plan.holders.items()):
        if holder != NO_HOLDER:
            first.setdefault(holder, j)
    digests = backend.call(sorted(first.values()), Worker.rows_digest)
    test = None
    if not plan.source.parts:  # cross-silo: each worker's held-out rows are in its own file (its shard digest)
        some = min(plan.shards)
        test = backend.call([some], Worker.held_out_digest)[some]
    return {SHARD_DIGESTS: {str(h): digests[j] for h, j in sorted(first.items())}, TEST_DIGEST: test}


def honest_weights(plan: RunPlan, session: Session, groups: list[int] | range) -> dict[int, Weights]:
    """Every honest worker's weights now: its parameters, with its buffers when its model has any."""
    return session.backend.call([j for g in groups for j in plan.honest(g)], Worker.weights)


def model_digests(plan: RunPlan, thetas: Mapping[int, Weights]) -> tuple[dict[str, str], dict[str, str]]:
    """(worker digests, group digests) of a model version: every honest worker's weights digest (its
    parameter digest when the model has no buffers), and each group's served worker's (the one place digests
    are computed)."""
    workers = {str(j): weights_digest(theta) for j, theta in sorted(thetas.items())}
    return workers, {str(g): workers[str(served_worker(plan, g))] for g in plan.groups}


def plot_title(config: Config) -> str:
    t, b, u = config.training, config.byzantine, config.unlearning
    byz = f"{b.count} Byzantine ({b.behaviour})" if b.count else "no Byzantine"
    return (f"{config.data.source} / {config.model.name}: {u.groups} group(s) x {t.workers} workers, {byz}, "
            f"{t.protocol}+{t.rule}{'+' + '+'.join(p if isinstance(p, str) else p[0] for p in t.pre) if t.pre else ''}")


def _sha256_json(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def evaluation_record(plan: RunPlan, session: Session, round_: int, began: float) -> dict:
    session.flush(plan.groups)
    # Each worker evaluates its own model on the held-out rows it reads itself: scalars come back.
    scores = session.backend.call([j for g in plan.groups for j in plan.honest(g)], Worker.evaluate_held_out)
    acc = {j: a for j, (a, _) in sorted(scores.items())}
    loss = {j: v for j, (_, v) in sorted(scores.items())}
    return {
        "round": round_,
        "accuracy": {str(j): _finite(a) for j, a in acc.items()},
        "loss": {str(j): _finite(v) for j, v in loss.items()},
        "honest_accuracy": stats([a for a in acc.values() if math.isfinite(a)]),
        "failures": session.take_failures(),
        "elapsed_s": elapsed(began),
    }


def make_summary(plan: RunPlan, session: Session, params: Mapping[int, Weights], metrics: list[dict],
                 wall_s: float) -> dict:
    config = plan.config
    acc = metrics[-1]["accuracy"]  # the last round is always evaluated, on these same parameters
    served = {g: served_worker(plan, g) for g in plan.groups}
    ensemble = None
    if len(plan.test_labels) and not plan.source.parts:
        # The served workers' votes on the held-out rows (computed where the models are; no rows move).
        each = session.backend.call(sorted(set(served.values())), Worker.held_out_predictions)
        labels, _ = combine([each[served[g]] for g in plan.groups], config.unlearning.vote, plan.num_classes)
        ensemble = round(float((labels == plan.test_labels).mean()), 6)
    failures = sum(len(m["failures"]) for m in metrics)
    worker_digests, group_digests = model_digests(plan, params)
    return {
        "rounds": config.training.rounds,
        "honest_test_accuracy": stats([a for a in acc.values() if a is not None]),
        "ensemble_test_accuracy": ensemble,
        **({"note": NO_TEST_SPLIT} if not len(plan.test_labels) else
           {"note": PER_WORKER_TEST} if plan.source.parts else {}),
        "wall_time_s": wall_s,
        "gradient_evaluations": int(sum(session.gradient_evaluations.values())),
        "failures": failures,
        "worker_digests": worker_digests,
        "group_digests": group_digests,
        "served_workers": {str(g): j for g, j in served.items()},
        "train_samples": int(sum(len(plan.shard_ids(j)) for j in plan.shards)),
        "test_samples": int(len(plan.test_labels)),
        "data_digest": ids_digest(i for j in plan.shards for i in plan.shard_ids(j).tolist()),
    }


def stats(values: list[float]) -> dict[str, float | None]:
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
