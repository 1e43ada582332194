"""Approximate deletion: a fast update of the affected groups' models, gated, with exact fallback.

Order of operations (``faults.point`` names in brackets), each step durable before the next:

1. journal the request in the ledger [``deletion.journaled``]; the forget rows are still in the
   stores: the workers that hold them read them there, and they never leave those workers;
2. run the method on the affected groups (``ostracon.nodes.approximate``: the forget term computed
   where the rows are and applied by every trainer of the group, mixed with the group's robust rule)
   [``approximate.updated``];
3. the gate: every honest model of each updated group is evaluated before and after (test, retained
   and forget-set accuracy, MIA-efficacy: ``evaluation.py``) against ``unlearning.gate``; an update that
   fails (or a worker that died during it) is discarded and the request is carried out exactly;
4. tombstone and compact the stores [``deletion.tombstoned:worker-J`` ..., ``deletion.tombstoned``];
5. save the updated models (``checkpoints/group-G/approximate-vN.pt``) [``approximate.saved:group-G``];
6. publish the version with its *unlearning debt* (per group: the ids whose influence the stage
   checkpoints still carry, and the earliest stage it starts at) and the certificate
   [``deletion.published``], then the derived files, as an exact deletion does.

Mode ``approximate_then_exact`` publishes step 6 without a certificate (request step
``approximated``) and goes on with the exact replay, which starts no later than the debt and clears
it; its certificate records both phases. A crash before step 6 leaves a journaled request that the
next command finishes *exactly* (the forget rows may be gone by then; exact is always possible);
after it, the exact phase (or only the derived files) is what remains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ostracon.nodes.approximate import get_method, saliency_mask
from ostracon.nodes.worker import Worker, model_weights

from .. import faults
from ..execution.backend import Backend
from ..execution.hooks import NO_HOOKS, Hooks
from ..execution.session import Session, elapsed
from ..storage.checkpoints import CheckpointError
from ..storage.outputs import write_state_json
from ..storage.records import Certificate, Cost, Debt, Request, Schedule
from ..vocabulary import DeletionMode, PhaseOutcome, RequestStep
from . import certificates
from .exact import LiveWorkers, evaluate_version, finish_published, run_request, start_workers
from .gate import gate, group_data, group_metrics, summarize
from .trained import TrainedState, digests, final_thetas, forget_by_group, published_states, sync_stores

log = logging.getLogger(__name__)

MethodParams = Any  # one of the frozen dataclasses of ``ostracon.nodes.approximate_params.PARAMS``

GUARANTEE = ("approximate: the published models were updated by an approximate unlearning method and checked "
             "by the gate; they are NOT claimed equal to a retrain from scratch, and the stage checkpoints "
             "still carry the deleted samples' influence (unlearning debt) until an exact replay clears it")


class ApproximateFailed(RuntimeError):
    """The approximate update could not run (a worker died or failed): the request falls back to exact."""


@dataclass
class UpdateResult:
    groups: list[int]
    states: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # every stateful worker, after
    gradient_evaluations: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)


def update_groups(st: TrainedState, by_group: Mapping[int, Sequence[str]], method: str, params: MethodParams,
                  live: LiveWorkers, key: str, hooks: Hooks = NO_HOOKS) -> UpdateResult:
    """Run approximate method ``method`` on the groups of ``by_group`` from their published models, on
    the started workers of ``live`` (whose stores still hold the forget rows)."""
    plan, backend = st.plan, live.backend
    spec = get_method(method)
    groups = sorted(by_group)
    _, record = st.ledger.latest_version()
    last = st.config.unlearning.slices - 1
    # No training events to impose (these are new rounds), but the state's budget policy holds.
    policy = Schedule(silent_spend=st.ledger.silent_spend())
    session = Session(plan, backend, schedule=policy, replay_schedule=True, server_lr=getattr(params, "lr", None))
    start: dict[int, dict[str, np.ndarray]] = {}
    for g in groups:
        start.update(published_states(st, record, g))
    trainers = {g: plan.trainers(g) for g in groups}
    everyone = [j for g in groups for j in trainers[g]]
    members = [j for g in groups for j in plan.group_workers(g)]
    values = dataclasses.asdict(params)
    try:
        session.flush(groups)
        known = backend.call(members, Worker.incarnation)  # a worker restarted mid-update would have lost its job
        session.load_states(start)
        counts = backend.call_each(Worker.begin_unlearning, {
            j: ({"method": method, "params": values, "key": key, "stage": last,
                 "forget_ids": [i for i in by_group[plan.specs[j].group] if plan.placement[i][1] == j]},)
            for j in everyone})
        holders = {g: [j for j in trainers[g] if counts[j]] for g in groups}
        weights = {j: counts[j] for j in everyone}
        if spec.masked:
            saliency = backend.call([j for g in groups for j in holders[g]], Worker.forget_saliency)
            masks = {g: saliency_mask(torch.from_numpy(_weighted_mean([saliency[j] for j in holders[g]],
                                                                      [weights[j] for j in holders[g]])),
                                      params.sparsity).numpy() for g in groups}
            backend.call_each(Worker.set_unlearning_mask, {j: (masks[plan.specs[j].group],) for j in everyone})
        if spec.one_shot:
            _dampen(backend, groups, holders, trainers, weights, params)
        else:
            for step in range(params.steps):
                terms = backend.call([j for g in groups for j in holders[g]], Worker.forget_term, step)
                shared = {}
                for g in groups:
                    got = [(terms[j], weights[j]) for j in holders[g] if terms.get(j) is not None]
                    shared[g] = _weighted_mean([v for v, _ in got], [w for _, w in got]) if got else None
                backend.call_each(Worker.set_forget_term, {j: (shared[plan.specs[j].group],) for j in everyone})
                failed = session.run_round(groups, last, step, step)
                if failed:
                    raise ApproximateFailed(f"a worker of group(s) {sorted(failed)} died during the approximate update")
                hooks.on_round(step, backend)
            session.flush(groups)
        rows = backend.call(everyone, Worker.end_unlearning)
        if backend.call(members, Worker.incarnation) != known:
            raise ApproximateFailed("a worker restarted during the approximate update")
        states = session.states(groups)
    except Exception as exc:
        _end_quietly(backend, everyone)
        if isinstance(exc, ApproximateFailed):
            raise
        raise ApproximateFailed(f"the approximate update failed: {type(exc).__name__}: {exc}") from exc
    return UpdateResult(groups, states, int(sum(rows.values())), session.take_failures())


def _dampen(backend: Backend, groups: Sequence[int], holders: Mapping[int, Sequence[int]],
            trainers: Mapping[int, Sequence[int]], weights: Mapping[int, int], params: MethodParams) -> None:
    """SSD: I_F = row-weighted mean over the holders, I_R = coordinate median over the trainers."""
    forget = backend.call([j for g in groups for j in holders[g]], Worker.importance, "forget")
    retain = backend.call([j for g in groups for j in trainers[g]], Worker.importance, "retain")
    calls: dict[int, tuple[Any, ...]] = {}
    for g in groups:
        i_forget = _weighted_mean([forget[j] for j in holders[g]], [weights[j] for j in holders[g]])
        rows = [row for j in trainers[g] if (row := retain[j]) is not None]
        i_retain = np.median(np.stack(rows), axis=0).astype(np.float32) if rows else np.zeros_like(i_forget)
        calls.update(dict.fromkeys(trainers[g], (i_forget, i_retain, params.alpha, params.lam)))
    backend.call_each(Worker.dampen, calls)


def _end_quietly(backend: Backend, workers: Sequence[int]) -> None:
    # A dead worker holds no unlearning state; a restarted one neither.
    with contextlib.suppress(Exception):
        backend.call(workers, Worker.end_unlearning)


def _weighted_mean(vectors: Sequence[Any], weights: Sequence[int]) -> np.ndarray:
    total = float(sum(weights))
    out = np.zeros_like(np.asarray(vectors[0], dtype=np.float64))
    for v, w in zip(vectors, weights, strict=True):
        out += (w / total) * np.asarray(v, dtype=np.float64)
    return out.astype(np.float32)


# ----- a journaled approximate-mode request ---------------------------------------------------------------
def carry_out(st: TrainedState, request: Request, method: str, params: MethodParams, *,
              backend: Backend | None = None, live: LiveWorkers | None = None, hooks: Hooks = NO_HOOKS,
              began: float | None = None) -> Certificate:
    """Steps 2-6 for a journaled approximate-mode request (``st.plan`` still gives its rows to their workers)."""
    began = time.perf_counter() if began is None else began
    by_group = forget_by_group(st, request.ids)
    version, record = st.ledger.latest_version()
    phase: dict[str, Any] = {"mode": DeletionMode.APPROXIMATE.value, "method": method,
                             "params": dataclasses.asdict(params), "model_version_before": version}
    if not by_group:  # no model ever read these ids (attackers'): tombstoning them is exact, and free
        phase.update(outcome=f"{PhaseOutcome.NOT_NEEDED}: no model trained on these ids; they were tombstoned, "
                             "which is exact")
        st.refresh()
        return run_request(st, request, live=live, hooks=hooks, began=began, phases=[phase])
    result = None
    owned = live is None
    workers = live or start_workers(st, sorted(by_group), backend)
    try:
        before_thetas = {j: model_weights(s) for g in by_group for j, s in published_states(st, record, g).items()}
        result = update_groups(st, by_group, method, params, workers, f"request-{request.id}", hooks)
        after_thetas = {j: model_weights(result.states[j]) for j in result.states}
        checks, metrics_before, metrics_after = {}, {}, {}
        for g, ids in sorted(by_group.items()):
            data = group_data(st, g, ids)
            metrics_before[g] = group_metrics(st, g, before_thetas, data)
            metrics_after[g] = group_metrics(st, g, after_thetas, data)
            checks[g] = gate(metrics_before[g], metrics_after[g], st.config.unlearning.gate, len(ids))
        phase["groups"] = {str(g): {"metrics_before": summarize(metrics_before[g]),
                                    "metrics_after": summarize(metrics_after[g]), "gate": checks[g]}
                           for g in sorted(by_group)}
        phase["gradient_evaluations"] = result.gradient_evaluations
        phase["passed"] = all(c["passed"] for c in checks.values())
    except (ApproximateFailed, CheckpointError) as exc:  # a damaged published model: the replay repairs it
        log.warning("request %d: %s; carrying it out exactly", request.id, exc)
        phase.update(passed=False, error=str(exc))
    finally:
        if owned:
            workers.backend.shutdown()
    faults.point("approximate.updated")
    phase["wall_time_s"] = elapsed(began)
    if not phase["passed"] or result is None:
        reasons = phase.get("error") or "; ".join(r for g in phase["groups"].values() for r in g["gate"]["failed"])
        phase["outcome"] = f"{PhaseOutcome.ROLLED_BACK}: {reasons}; the request was carried out exactly"
        log.warning("request %d: the approximate update failed the gate (%s); falling back to exact", request.id,
                    reasons)
        st.refresh()
        return run_request(st, request, live=live, hooks=hooks, began=began, phases=[phase])
    phase["outcome"] = PhaseOutcome.PUBLISHED.value
    return _publish(st, request, phase, result, live=live, hooks=hooks, began=began)


def _publish(st: TrainedState, request: Request, phase: dict[str, Any], result: UpdateResult, *,
             live: LiveWorkers | None, hooks: Hooks, began: float) -> Certificate:
    ledger, plan = st.ledger, st.plan
    st.refresh()  # from here on the workers' data no longer holds the request's ids
    # A warm cluster audited every store when it started: a request audits the stores it touches.
    repairs = sync_stores(st, None if live is None else live.backend,
                          workers=None if live is None else st.request_workers(request.ids))
    ledger.set_step(request.id, RequestStep.TOMBSTONED)
    faults.point("deletion.tombstoned")
    version, record = ledger.latest_version()
    new_version = version + 1
    approximate = dict(record.approximate_models)
    debt = dict(record.debts)
    by_group = forget_by_group(st, request.ids)
    for g in sorted(by_group):
        approximate[str(g)] = st.checkpoints.save_approximate(
            g, new_version, {j: result.states[j] for j in plan.stateful(g)})
        stages = [st.deletions[i].slice for i in by_group[g]]
        owed = debt.get(str(g))
        debt[str(g)] = owed.plus(by_group[g], stages) if owed else Debt(tuple(sorted(set(by_group[g]))), min(stages))
        faults.point(f"approximate.saved:group-{g}")
    thetas = final_thetas(st, dataclasses.replace(record, approximate=approximate))
    worker_digests, group_digests = digests(st, thetas)
    evaluation = evaluate_version(st, thetas)
    phase["model_version_after"] = new_version
    phase["evaluation"] = evaluation
    new_record = dataclasses.replace(record, worker_digests=worker_digests, group_digests=group_digests,
                                     evaluation=evaluation, approximate=approximate, debt=debt)
    if request.mode.then_exact:
        ledger.publish(request.id, new_version, dataclasses.replace(new_record, phase=phase), None,
                       step=RequestStep.APPROXIMATED)
        faults.point("approximate.published")
        write_state_json(st.state_dir, ledger)  # readers see the approximate version at once
        hooks.on_published(new_version)
        request = dataclasses.replace(request, step=RequestStep.APPROXIMATED)
        return run_request(st, request, live=live, hooks=hooks, began=began)
    cert = Certificate(
        mode=DeletionMode.APPROXIMATE,
        method=phase["method"],
        params=phase["params"],
        guarantee=GUARANTEE,
        **certificates.request_fields(st, request, version, new_version),
        groups=phase["groups"],
        unlearning_debt={g: debt[g] for g in sorted(debt) if int(g) in by_group},
        not_updated=tuple(sorted(set(request.ids) - {i for ids in by_group.values() for i in ids})),
        repairs=tuple(repairs),
        failures=tuple(result.failures),
        cost=Cost(phase["gradient_evaluations"], ledger.full_retrain_cost()),
        evaluation=evaluation,
        time=certificates.now(),
        wall_time_s=elapsed(began),
    )
    ledger.publish(request.id, new_version, new_record, (certificates.certificate_name(request.id, new_version), cert))
    faults.point("deletion.published")
    return finish_published(st, request.id)
