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

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ostracon.nodes.approximate import get_method, saliency_mask
from ostracon.nodes.models import parameter_digest

from .. import faults
from ..backends import Backend
from ..checkpoints import CheckpointError, file_sha256, write_atomic
from ..ledger import APPROXIMATED, TOMBSTONED, Request
from ..protocols import Session, elapsed
from ..training import as_tensor, served_worker, write_state_json
from . import certificates
from .gate import gate, group_data, group_metrics, summarize
from .exact import LiveWorkers, evaluate_version, final_thetas, finish_published, published_states, run_request, \
    start_workers
from .requests import validate_request
from .state import TrainedState, forget_by_group, sync_stores

log = logging.getLogger(__name__)

GUARANTEE = ("approximate: the published models were updated by an approximate unlearning method and checked "
             "by the gate; they are NOT claimed equal to a retrain from scratch, and the stage checkpoints "
             "still carry the deleted samples' influence (unlearning debt) until an exact replay clears it")


class ApproximateFailed(RuntimeError):
    """The approximate update could not run (a worker died or failed): the request falls back to exact."""


@dataclass
class UpdateResult:
    groups: list[int]
    states: dict[int, dict] = field(default_factory=dict)  # every stateful worker of the groups, after
    gradient_evaluations: int = 0
    failures: list[dict] = field(default_factory=list)


def update_groups(st: TrainedState, by_group: dict[int, list[str]], method: str, params, live: LiveWorkers,
                  key: str, on_round=None) -> UpdateResult:
    """Run approximate method ``method`` on the groups of ``by_group`` from their published models, on
    the started workers of ``live`` (whose stores still hold the forget rows)."""
    plan, backend = st.plan, live.backend
    spec = get_method(method)
    groups = sorted(by_group)
    _, record = st.ledger.latest_version()
    last = st.config.unlearning.slices - 1
    session = Session(plan, backend, replay_schedule=True, server_lr=getattr(params, "lr", None))
    start: dict[int, dict] = {}
    for g in groups:
        start.update(published_states(st, record, g))
    trainers = {g: plan.trainers(g) for g in groups}
    everyone = [j for g in groups for j in trainers[g]]
    members = [j for g in groups for j in plan.group_workers(g)]
    values = dataclasses.asdict(params)
    try:
        session.flush(groups)
        known = backend.call(members, "incarnation")  # a worker restarted mid-update would have lost its job
        session.load_states(start)
        counts = backend.call_each({
            j: ("begin_unlearning", {"method": method, "params": values, "key": key, "stage": last,
                                     "forget_ids": [i for i in by_group[plan.specs[j].group]
                                                    if plan.placement[i][1] == j]})
            for j in everyone})
        holders = {g: [j for j in trainers[g] if counts[j]] for g in groups}
        weights = {j: counts[j] for j in everyone}
        if spec.masked:
            saliency = backend.call([j for g in groups for j in holders[g]], "forget_saliency")
            masks = {g: saliency_mask(torch.from_numpy(_weighted_mean([saliency[j] for j in holders[g]],
                                                                      [weights[j] for j in holders[g]])),
                                      params.sparsity).numpy() for g in groups}
            backend.call_each({j: ("set_unlearning_mask", masks[plan.specs[j].group]) for j in everyone})
        if spec.one_shot:
            _dampen(backend, plan, groups, holders, trainers, weights, params)
        else:
            for step in range(params.steps):
                terms = backend.call_each({j: ("forget_term", step) for g in groups for j in holders[g]})
                shared = {}
                for g in groups:
                    got = [(terms[j], weights[j]) for j in holders[g] if terms.get(j) is not None]
                    shared[g] = _weighted_mean([v for v, _ in got], [w for _, w in got]) if got else None
                backend.call_each({j: ("set_forget_term", shared[plan.specs[j].group]) for j in everyone})
                failed = session.run_round(groups, last, step, step)
                if failed:
                    raise ApproximateFailed(f"a worker of group(s) {sorted(failed)} died during the approximate update")
                if on_round is not None:
                    on_round(step, backend)
            session.flush(groups)
        rows = backend.call(everyone, "end_unlearning")
        if backend.call(members, "incarnation") != known:
            raise ApproximateFailed("a worker restarted during the approximate update")
        states = session.states(groups)
    except Exception as exc:  # noqa: BLE001 - a dead actor, a diverged update: the request goes exact
        _end_quietly(backend, everyone)
        if isinstance(exc, ApproximateFailed):
            raise
        raise ApproximateFailed(f"the approximate update failed: {type(exc).__name__}: {exc}") from exc
    return UpdateResult(groups, states, int(sum(rows.values())), session.take_failures())


def _dampen(backend, plan, groups, holders, trainers, weights, params) -> None:
    """SSD: I_F = row-weighted mean over the holders, I_R = coordinate median over the trainers."""
    forget = backend.call([j for g in groups for j in holders[g]], "importance", "forget")
    retain = backend.call([j for g in groups for j in trainers[g]], "importance", "retain")
    calls = {}
    for g in groups:
        i_forget = _weighted_mean([forget[j] for j in holders[g]], [weights[j] for j in holders[g]])
        rows = [retain[j] for j in trainers[g] if retain[j] is not None]
        i_retain = np.median(np.stack(rows), axis=0).astype(np.float32) if rows else np.zeros_like(i_forget)
        calls.update({j: ("dampen", i_forget, i_retain, params.alpha, params.lam) for j in trainers[g]})
    backend.call_each(calls)


def _end_quietly(backend, workers) -> None:
    try:
        backend.call(workers, "end_unlearning")
    except Exception:  # noqa: BLE001 - a dead worker holds no unlearning state; a restarted one neither
        pass


def _weighted_mean(vectors, weights) -> np.ndarray:
    total = float(sum(weights))
    out = np.zeros_like(np.asarray(vectors[0], dtype=np.float64))
    for v, w in zip(vectors, weights):
        out += (w / total) * np.asarray(v, dtype=np.float64)
    return out.astype(np.float32)


# ----- the modes ---------------------------------------------------------------------------------------
def delete_approximate(st: TrainedState, ids: list[str], *, method: str | None = None, then_exact: bool = False,
                       backend: Backend | None = None, live: LiveWorkers | None = None, on_round=None,
                       on_stage=None, began: float | None = None) -> dict:
    """Validate, journal and carry out an approximate deletion (``then_exact``: approximate_then_exact)."""
    began = time.perf_counter() if began is None else began
    mode = "approximate_then_exact" if then_exact else "approximate"
    method = method or st.config.unlearning.method
    params = st.config.unlearning.method_params(method)
    fresh, already = validate_request(ids, st.plan.placement, st.deletions, st.plan.test_ids.tolist())
    if not fresh:
        version, _ = st.ledger.latest_version()
        return {"kind": certificates.KIND, "mode": mode, "method": method, "status": "noop", "requested": list(ids),
                "already_deleted": already, "model_version": version}
    request = st.ledger.journal(list(ids), {i: st.plan.placement[i] for i in fresh}, mode)
    faults.point("deletion.journaled")
    return carry_out(st, request, method, params, backend=backend, live=live, on_round=on_round, on_stage=on_stage,
                     began=began)


def carry_out(st: TrainedState, request: Request, method: str, params, *, backend=None, live=None, on_round=None,
              on_stage=None, began: float, on_published=None) -> dict:
    """Steps 2-6 for a journaled approximate request (``st.plan`` still gives its rows to their workers)."""
    by_group = forget_by_group(st, request.ids)
    then_exact = request.mode == "approximate_then_exact"
    version, record = st.ledger.latest_version()
    phase = {"mode": "approximate", "method": method, "params": dataclasses.asdict(params),
             "model_version_before": version}
    result = None
    if by_group:
        owned = live is None
        workers = live or start_workers(st, by_group, backend)
        try:
            before_thetas = {j: s["theta"] for g in by_group for j, s in published_states(st, record, g).items()}
            result = update_groups(st, by_group, method, params, workers, f"request-{request.id}", on_round)
            after_thetas = {j: result.states[j]["theta"] for j in result.states}
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
    else:  # no model ever read these ids (attackers'): tombstoning them is exact, and free
        phase.update(outcome="not needed: no model trained on these ids; they were tombstoned, which is exact")
        st.refresh()
        return run_request(st, request, None, on_round, began, live=live, on_stage=on_stage, phases=[phase])
    phase["wall_time_s"] = elapsed(began)
    if not phase["passed"]:
        reasons = phase.get("error") or "; ".join(r for g in phase["groups"].values() for r in g["gate"]["failed"])
        phase["outcome"] = f"rolled back: {reasons}; the request was carried out exactly"
        log.warning("request %d: the approximate update failed the gate (%s); falling back to exact", request.id, reasons)
        st.refresh()
        return run_request(st, request, None, on_round, began, live=live, on_stage=on_stage, phases=[phase])
    phase["outcome"] = "published"
    return _publish(st, request, phase, result, live=live, then_exact=then_exact, on_round=on_round,
                    on_stage=on_stage, began=began, on_published=on_published)


def _publish(st: TrainedState, request: Request, phase: dict, result: UpdateResult | None, *, live, then_exact,
             on_round, on_stage, began, on_published) -> dict:
    ledger, plan = st.ledger, st.plan
    st.refresh()  # from here on the workers' data no longer holds the request's ids
    hashes = ledger.store_hashes()
    repairs = sync_stores(st)
    if live is not None:
        now = ledger.store_hashes()
        live.reopen_stores([j for j in plan.data if now.get(j) != hashes.get(j)])
    ledger.set_step(request.id, TOMBSTONED)
    faults.point("deletion.tombstoned")
    version, record = ledger.latest_version()
    new_version = version + 1
    approximate = dict(record.get("approximate", {}))
    debt = {g: dict(d) for g, d in record.get("debt", {}).items()}
    by_group = forget_by_group(st, request.ids)
    for g in sorted(by_group):
        relative = os.path.join(f"group-{g}", f"approximate-v{new_version}.pt")
        path = os.path.join(st.checkpoints.root, relative)
        write_atomic(path, {"format": 1, "group": g, "version": new_version, "kind": "approximate",
                            "workers": {str(j): {k: torch.from_numpy(np.array(v, dtype=np.float32))
                                                 for k, v in sorted(result.states[j].items())}
                                        for j in plan.stateful(g)}})
        approximate[str(g)] = {"file": relative, "sha256": file_sha256(path)}
        ids = sorted(set(debt.get(str(g), {}).get("ids", [])) | set(by_group[g]))
        stages = [st.deletions[i].slice for i in by_group[g]] + (
            [debt[str(g)]["earliest_stage"]] if str(g) in debt else [])
        debt[str(g)] = {"ids": ids, "earliest_stage": min(stages)}
        faults.point(f"approximate.saved:group-{g}")
    new_record = dict(record)
    new_record.update(approximate=approximate, debt=debt)
    thetas = final_thetas(st, new_record)
    worker_digests = {str(j): parameter_digest(as_tensor(theta)) for j, theta in sorted(thetas.items())}
    new_record["worker_digests"] = worker_digests
    new_record["group_digests"] = {str(g): worker_digests[str(served_worker(plan, g))] for g in plan.groups}
    new_record["evaluation"] = evaluate_version(st, thetas)
    phase["model_version_after"] = new_version
    phase["evaluation"] = new_record["evaluation"]
    full_cost = ledger.versions()[0][2]["gradient_evaluations"]
    if then_exact:
        new_record["phase"] = phase
        ledger.publish(request.id, new_version, new_record, None, step=APPROXIMATED)
        faults.point("approximate.published")
        write_state_json(st.state_dir, ledger)  # readers see the approximate version at once
        if on_published is not None:
            on_published(new_version)
        request = dataclasses.replace(request, step=APPROXIMATED)
        return run_request(st, request, None, on_round, began, live=live, on_stage=on_stage)
    cert = {
        "kind": certificates.KIND,
        "mode": "approximate",
        "method": phase["method"],
        "params": phase["params"],
        "status": "deleted",
        "guarantee": GUARANTEE,
        **certificates.request_fields(st, request, version, new_version),
        "groups": phase["groups"],
        "unlearning_debt": {g: debt[g] for g in sorted(debt) if int(g) in by_group},
        "not_updated": sorted(set(request.ids) - {i for ids in by_group.values() for i in ids}),
        "repairs": repairs,
        "failures": result.failures if result else [],
        "gradient_evaluations": phase["gradient_evaluations"],
        "full_retrain_gradient_evaluations": full_cost,
        "cost_ratio": round(phase["gradient_evaluations"] / max(1, full_cost), 6),
        "evaluation": new_record["evaluation"],
        "time": certificates.now(),
        "wall_time_s": elapsed(began),
    }
    name = certificates.certificate_name(request.id, new_version)
    ledger.publish(request.id, new_version, new_record, (name, certificates.encode(cert)))
    faults.point("deletion.published")
    return finish_published(st, request.id)
