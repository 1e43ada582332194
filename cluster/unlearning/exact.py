"""Exact deletion: SISA replay over MoNNA, as a sequence of durable, recoverable steps.

Deleting sample ``x`` (worker ``j``, slice ``k``): journal the request in the ledger, make every
shard store agree with the ledger (tombstones; a lost or damaged store is rebuilt from the source
minus the ledger's ids), restore the group's checkpoint from the end of stage ``k - 1`` (``k = 0``:
the seeded initial model) and replay stages ``k..R-1`` with the recorded schedule; ids that land in
one group are replayed once, from the earliest affected stage. A checkpoint that fails its recorded
sha256 moves its group's replay start to it (a repair, exact by determinism). Then the replacements
are promoted over the old checkpoints (which trained on the deleted ids, and are destroyed), the new
version and the certificate are committed to the ledger in one transaction, and ``state.json``, the
certificate file and the run's outputs are derived from it.

Steps (``faults.point`` names; docs/design.md, "Durable-step order"): ``deletion.journaled`` ->
``deletion.tombstoned:worker-J`` ... ->
``deletion.tombstoned`` -> ``deletion.replayed:group-G/stage-S`` ... ->
``deletion.promoted:group-G/stage-S`` ... -> ``deletion.published`` -> ``deletion.state_json`` ->
``deletion.certificate`` -> ``deletion.done``. A crash anywhere before ``published`` is finished by
the next command (the replay is redone: deterministic); after it, only the derived files are
rewritten from the ledger. Nothing is ever certified that the ledger, the stores and the published
models do not all agree on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ostracon.nodes.worker import Weights, Worker, evaluate, model_predictions, probabilities_model

from .. import faults
from ..execution.backend import Backend, make_backend
from ..execution.ensemble import check_vote, combine
from ..execution.hooks import NO_HOOKS, Hooks
from ..execution.session import Session, elapsed
from ..execution.training import plot_title, served_worker, stats
from ..storage.checkpoints import CheckpointError
from ..storage.outputs import update_outputs, write_state_json
from ..storage.records import Certificate, CheckpointInfo, Cost, Request, VersionRecord, checkpoint_key
from ..vocabulary import DeletionMode, PhaseOutcome, RequestStep
from . import certificates
from .gate import group_data, group_metrics, summarize
from .trained import (
    TrainedState,
    approximate_problems,
    checkpoint_problems,
    digests,
    final_thetas,
    forget_by_group,
    published_states,
    sync_stores,
)

log = logging.getLogger(__name__)

REPLAY_SUFFIX = ".replay"
NO_REPLAY_REASON = "held by a Byzantine worker whose behaviour never reads its data: no model depends on it"
GUARANTEE = ("exact: every published model is bit-identical to a retrain from scratch without the deleted ids "
             "(same config, seed and recorded schedule); `ostracon verify` recomputes it")
INTERRUPTED = (f"the approximate update was {PhaseOutcome.INTERRUPTED} before it was published (or the process "
               "restarted); the request was carried out exactly")

__all__ = ["LiveWorkers", "ReplayResult", "abandon_request", "evaluate_version", "finish_published",
           "published_states", "recover", "refresh_outputs", "replay_groups", "run_request", "start_workers"]


@dataclass
class ReplayResult:
    checkpoints: dict[tuple[int, int], CheckpointInfo] = field(default_factory=dict)
    gradient_evaluations: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class LiveWorkers:
    """A started backend holding the plan's workers, and the seeded initial states they had right after
    start (stage-0 replays begin there). Whoever started it owns it: replays never stop it.

    ``outputs``: set by a warm cluster that decides when to rewrite the files for people to read
    (``summary.json``, ``metrics.jsonl``, ``accuracy.png``: every version, redrawn): an exact request it
    carries out hands it the number of published deleted ids instead of rewriting them itself."""

    backend: Backend
    initial: dict[int, dict[str, np.ndarray]]
    outputs: Callable[[int], None] | None = None
    # What the published version's models scored on the held-out split, by (worker, weights digest): a
    # request re-evaluates only the models it changed (its groups'), the others are the same bytes.
    scores: dict[tuple[int, str], _Score] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class _Score:
    """One model on the held-out split: its accuracy, and (a served model) its ensemble predictions."""

    accuracy: float
    predictions: tuple[np.ndarray, np.ndarray] | None = None


def start_workers(st: TrainedState, groups: Sequence[int] | Mapping[int, int] | None = None,
                  backend: Backend | None = None) -> LiveWorkers:
    """Start the workers of ``groups`` (all by default) on ``backend`` (the config's by default)."""
    plan = st.plan
    chosen = plan.groups if groups is None else sorted(groups)
    backend = backend or make_backend(st.config)
    backend.start([s for s in plan.specs if s.group in chosen], plan.shards)
    try:
        initial = backend.call([j for g in chosen for j in plan.stateful(g)], Worker.get_state)
    except BaseException:
        backend.shutdown()
        raise
    return LiveWorkers(backend, initial)


def replay_groups(st: TrainedState, starts: Mapping[int, int], live: LiveWorkers,
                  hooks: Hooks = NO_HOOKS) -> ReplayResult:
    """Replay each group ``g`` of ``starts`` from stage ``starts[g]`` with the recorded schedule on the
    started workers of ``live``, writing staged checkpoints (``*.replay``); a worker failure redoes the
    group's stage. ``hooks.on_stage`` is told when each stage is checkpointed."""
    config, plan = st.config, st.plan
    backend = live.backend
    _, record = st.ledger.latest_version()
    store = st.checkpoints
    result = ReplayResult()
    session = Session(plan, backend, schedule=st.ledger.schedule(), replay_schedule=True,
                      max_stage_attempts=config.backend.max_restarts + 1)
    states: dict[int, dict[str, np.ndarray]] = {}
    first, last = min(starts.values()), config.unlearning.slices - 1
    for stage in range(first, last + 1):
        for g in sorted(g for g, k in starts.items() if k == stage):
            if stage == 0:
                states.update({j: live.initial[j] for j in plan.stateful(g)})
            else:
                states.update(store.states(g, stage - 1, record.checkpoint(g, stage - 1)))
        active = sorted(g for g, k in starts.items() if k <= stage)
        states = session.run_stage(active, stage, states, on_round=lambda t: hooks.on_round(t, backend))
        for g, info in session.checkpoint(store, states, active, stage, suffix=REPLAY_SUFFIX).items():
            result.checkpoints[(g, stage)] = info
            faults.point(f"deletion.replayed:group-{g}/stage-{stage}")
        hooks.on_stage(stage, first, last)
    result.gradient_evaluations = int(sum(session.gradient_evaluations.values()))
    result.failures = session.take_failures()
    return result


def replay_starts(st: TrainedState, request: Request) -> tuple[dict[int, int], list[str], list[str]]:
    """Where each group's replay begins: the earliest slice of a deleted id its training workers
    held, or an earlier damaged checkpoint. Returns (starts, ids needing no replay, repairs)."""
    plan = st.plan
    starts: dict[int, int] = {}
    not_replayed = []
    for i in request.ids:
        d = st.deletions[i]
        if plan.specs[d.worker].trains:
            starts[d.group] = min(starts.get(d.group, d.slice), d.slice)
        else:
            not_replayed.append(i)
    _, record = st.ledger.latest_version()
    repairs = []
    for g, problem in sorted(approximate_problems(st).items()):
        debt = record.debt_of(g)
        assert debt is not None  # an approximate model always comes with its debt
        repairs.append(f"approximate model of group {g} {problem}: group {g} replayed exactly from stage "
                       f"{debt.earliest_stage}")
        starts[g] = min(starts.get(g, debt.earliest_stage), debt.earliest_stage)
    for g in list(starts):
        owed = record.debt_of(g)
        if owed is not None:  # the checkpoints from the debt's stage on still carry approximately deleted ids
            starts[g] = min(starts[g], owed.earliest_stage)
    for (g, s), problem in sorted(checkpoint_problems(st).items()):
        if s < starts.get(g, st.config.unlearning.slices):
            repairs.append(f"checkpoint group {g} stage {s} {problem}: group {g} replayed from stage {s}")
            log.warning("checkpoint of group %d, stage %d is %s; replaying the group from stage %d", g, s, problem, s)
        starts[g] = min(starts.get(g, s), s)
    return starts, not_replayed, repairs


def run_request(st: TrainedState, request: Request, *, backend: Backend | None = None,
                live: LiveWorkers | None = None, hooks: Hooks = NO_HOOKS, began: float | None = None,
                phases: Sequence[Mapping[str, Any]] | None = None) -> Certificate:
    """Carry a journaled request through every remaining step exactly; returns its certificate.

    With ``live`` (a warm cluster) the replay runs on its started workers, whose stores are re-read
    after the driver tombstones them; else ``backend`` (or the config's) is started and stopped.
    A request of an approximate mode ends here when its approximate update failed the gate
    (``phases`` says why), was interrupted, or (approximate_then_exact) for its exact phase."""
    began = time.perf_counter() if began is None else began
    ledger, config, plan = st.ledger, st.config, st.plan
    if request.step is RequestStep.PUBLISHED:
        return finish_published(st, request.id, live)
    # A warm cluster audited every store when it started: a request audits the stores it touches. A cold
    # command starts here, so it audits them all.
    repairs = sync_stores(st, None if live is None else live.backend,
                          workers=None if live is None else st.request_workers(request.ids))
    if request.step is RequestStep.JOURNALED:
        ledger.set_step(request.id, RequestStep.TOMBSTONED)
    faults.point("deletion.tombstoned")
    version, record = ledger.latest_version()
    starts, not_replayed, checkpoint_repairs = replay_starts(st, request)
    repairs += checkpoint_repairs
    if not starts:
        result = ReplayResult()
    elif live is not None:
        result = replay_groups(st, starts, live, hooks)
    else:
        cold = start_workers(st, starts, backend)  # the command line's replay: start, replay, stop
        try:
            result = replay_groups(st, starts, cold, hooks)
        finally:
            cold.backend.shutdown()
    index = dict(record.checkpoints)
    for (g, s), info in sorted(result.checkpoints.items()):
        sha = st.checkpoints.promote(g, s, REPLAY_SUFFIX)  # the old checkpoint trained on a deleted id: destroyed
        if sha != info.sha256:
            raise CheckpointError(f"checkpoint group {g} stage {s} changed on disk between its replay and its "
                                  "promotion")
        index[checkpoint_key(g, s)] = info
        faults.point(f"deletion.promoted:group-{g}/stage-{s}")
    # Other groups' approximate models and their debt stay as they were; replayed groups' are cleared.
    approximate = {g: m for g, m in record.approximate_models.items() if int(g) not in starts}
    debt = {g: d for g, d in record.debts.items() if int(g) not in starts}
    indebted = bool(approximate or debt)
    thetas = final_thetas(st, replace(record, checkpoints=index, approximate=approximate))
    worker_digests, group_digests = digests(st, thetas)
    evaluation = evaluate_version(st, thetas, live=live, worker_digests=worker_digests)
    rounds = config.unlearning.slices
    new_version = version + 1
    guarantee = GUARANTEE
    if indebted:
        guarantee = (GUARANTEE.replace("every published model", "every replayed group's model") +
                     f"; group(s) {', '.join(sorted(debt))} still serve approximate models (unlearning debt)")
    cert = Certificate(
        mode=DeletionMode.EXACT,
        **certificates.request_fields(st, request, version, new_version),
        guarantee=guarantee,
        groups={
            str(g): {
                "restarted_from_stage": k,
                "restored_checkpoint": None if k == 0 else checkpoint_key(g, k - 1),
                "replayed_stages": list(range(k, rounds)),
                "checkpoints_before": {str(s): record.checkpoint(g, s).to_dict() for s in range(k, rounds)},
                "checkpoints_after": {str(s): index[checkpoint_key(g, s)].to_dict() for s in range(k, rounds)},
                "digest_before": record.group_digests[str(g)],
                "digest_after": group_digests[str(g)],
            }
            for g, k in sorted(starts.items())
        },
        not_replayed=tuple(not_replayed),
        not_replayed_reason=NO_REPLAY_REASON if not_replayed else None,
        repairs=tuple(repairs),
        failures=tuple(result.failures),
        worker_digests=worker_digests,
        group_digests=group_digests,
        cost=Cost(result.gradient_evaluations, ledger.full_retrain_cost()),
        evaluation=evaluation,
        time=certificates.now(),
        wall_time_s=elapsed(began),
    )
    if request.mode.is_approximate:
        exact_phase = {"mode": DeletionMode.EXACT.value, "model_version_after": new_version,
                       "gradient_evaluations": result.gradient_evaluations, "evaluation": evaluation,
                       "groups": {str(g): {"metrics": summarize(group_metrics(st, g, thetas, group_data(st, g, ids)))}
                                  for g, ids in sorted(forget_by_group(st, request.ids).items())}}
        cert = _with_phases(cert, request.mode, [*_approximate_phase(st, request, phases), exact_phase])
    new_record = VersionRecord(
        worker_digests=worker_digests,
        group_digests=group_digests,
        served_workers={str(g): served_worker(plan, g) for g in plan.groups},
        checkpoints=index,
        gradient_evaluations=ledger.full_retrain_cost(),
        evaluation=evaluation,
        approximate=approximate if indebted else None,
        debt=debt if indebted else None,
    )
    ledger.publish(request.id, new_version, new_record, (certificates.certificate_name(request.id, new_version), cert))
    faults.point("deletion.published")
    return finish_published(st, request.id, live)


def _with_phases(cert: Certificate, requested: DeletionMode, phases: Sequence[Mapping[str, Any]]) -> Certificate:
    return replace(cert, requested_mode=requested, phases=tuple(dict(p) for p in phases))


def _approximate_phase(st: TrainedState, request: Request,
                       phases: Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    """The approximate phase of a request that ends exactly: from the caller, from the version it
    published (approximate_then_exact), or a note that it was interrupted."""
    if phases is not None:
        return list(phases)
    published = st.ledger.version_of(request.id) if request.step is RequestStep.APPROXIMATED else None
    if published is not None and published[1].phase is not None:
        return [published[1].phase]
    return [{"mode": DeletionMode.APPROXIMATE.value, "outcome": INTERRUPTED}]


def finish_published(st: TrainedState, request_id: int, live: LiveWorkers | None = None) -> Certificate:
    """The steps after the commit point, all derived from the ledger (idempotent). The files for people to
    read are rewritten here, or handed to ``live.outputs`` when a warm cluster refreshes them itself."""
    write_state_json(st.state_dir, st.ledger)
    faults.point("deletion.state_json")
    found = st.ledger.certificate_of(request_id)
    if found is None:
        raise CheckpointError(f"request {request_id} is published but the ledger holds no certificate for it")
    name, body = found
    certificates.write_exclusive(st.state_dir, name, body)
    faults.point("deletion.certificate")
    if live is not None and live.outputs is not None:
        live.outputs(st.published_count())
    else:
        refresh_outputs(st, st.published_count())
    st.ledger.set_step(request_id, RequestStep.DONE)
    faults.point("deletion.done")
    return Certificate.from_json(body)


def refresh_outputs(st: TrainedState, deleted_samples: int) -> None:
    """Rewrite the files for people to read (``summary.json``, ``metrics.jsonl``, ``accuracy.png``) from the
    ledger."""
    update_outputs(st.state_dir, st.ledger, title=plot_title(st.config), deleted_samples=deleted_samples)


def recover(st: TrainedState, *, backend: Backend | None = None, live: LiveWorkers | None = None,
            hooks: Hooks = NO_HOOKS) -> list[Certificate]:
    """Finish every acknowledged request an earlier command left unfinished; returns their certificates."""
    certs = []
    for request in st.ledger.requests(unfinished_only=True):
        log.warning("finishing interrupted deletion request %d of %d id(s) (it stopped after step %r)",
                    request.id, len(request.ids), request.step.value)
        certs.append(run_request(st, request, backend=backend, live=live, hooks=hooks))
        backend = None  # a cold backend serves one replay: the next one starts its own
    return certs


def abandon_request(st: TrainedState, request_id: int, live: LiveWorkers | None = None,
                    also: Any = None) -> list[str]:
    """Roll back a request whose replay kept failing, before anything was published: the ledger stops
    deleting its ids (``also(db)`` runs in that transaction), staged checkpoints are removed, and the
    stores (and the live workers) are made to agree with the ledger again. Returns the repairs."""
    st.ledger.abandon(request_id, also)
    st.checkpoints.discard_staged(st.plan.groups, st.config.unlearning.slices, REPLAY_SUFFIX)
    st.refresh(full=True)  # the request's ids are no longer deleted
    # A dead worker rebuilds from the repaired store if it restarts: failing to reach it is only logged.
    return sync_stores(st, None if live is None else live.backend, tolerate_dead_workers=True)


def evaluate_version(st: TrainedState, thetas: Mapping[int, Weights], *, live: LiveWorkers | None = None,
                     worker_digests: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Honest test accuracy (stats over the workers) and the ensemble's, on the held-out split. With
    ``live`` and the version's ``worker_digests``, a model whose weights a warm cluster already scored is
    not evaluated again (only the replayed groups' are), and ``live.scores`` keeps this version's."""
    plan = st.plan
    if len(plan.test_labels) == 0:
        return {"honest_test_accuracy": None, "ensemble_test_accuracy": None}
    served = [served_worker(plan, g) for g in plan.groups]
    known = live.scores if live is not None and worker_digests is not None else {}
    scores: dict[tuple[int, str], _Score] = {}
    acc = {}
    each = []
    for j, theta in thetas.items():
        key = (j, worker_digests[str(j)]) if worker_digests is not None else (j, "")
        score = known.get(key)
        if score is None or (j in served and score.predictions is None):
            accuracy = evaluate(plan.specs[j], theta, plan.test_features, plan.test_labels)[0]
            predictions = model_predictions(probabilities_model(plan.specs[j], theta), plan.test_features) \
                if j in served else None
            score = _Score(accuracy, predictions)
        scores[key] = score
        acc[j] = score.accuracy
    for j in served:
        score = scores[(j, worker_digests[str(j)]) if worker_digests is not None else (j, "")]
        assert score.predictions is not None
        each.append(score.predictions)
    # The ensemble's vote over the served models (``execution.ensemble.ensemble_accuracy``, from their predictions).
    check_vote(st.config.unlearning.vote)
    voted, _ = combine(each, st.config.unlearning.vote, plan.specs[served[0]].num_classes)
    ensemble = float((voted == plan.test_labels).mean())
    if live is not None and worker_digests is not None:
        live.scores = scores  # this version's only: memory stays one version's worth
    return {"honest_test_accuracy": stats(list(acc.values())), "ensemble_test_accuracy": round(ensemble, 6)}
