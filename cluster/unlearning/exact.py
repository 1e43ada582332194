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

Steps (``faults.point`` names): ``deletion.journaled`` -> ``deletion.tombstoned:worker-J`` ... ->
``deletion.tombstoned`` -> ``deletion.replayed:group-G/stage-S`` ... ->
``deletion.promoted:group-G/stage-S`` ... -> ``deletion.published`` -> ``deletion.state_json`` ->
``deletion.certificate`` -> ``deletion.done``. A crash anywhere before ``published`` is finished by
the next command (the replay is redone: deterministic); after it, only the derived files are
rewritten from the ledger. Nothing is ever certified that the ledger, the stores and the published
models do not all agree on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ostracon.nodes.models import parameter_digest
from ostracon.nodes.worker import evaluate

from .. import faults
from ..backends import Backend, make_backend
from ..checkpoints import CheckpointError
from ..ensemble import ensemble_accuracy
from ..ledger import APPROXIMATED, DONE, JOURNALED, PUBLISHED, TOMBSTONED, Request
from ..protocols import Session, elapsed
from ..training import _stats, _write_json, as_tensor, served_worker, write_accuracy_plot, write_state_json, plot_title
from . import certificates
from .gate import group_data, group_metrics, summarize
from .state import TrainedState, approximate_problems, checkpoint_problems, forget_by_group, sync_stores

log = logging.getLogger(__name__)

REPLAY_SUFFIX = ".replay"
NO_REPLAY_REASON = "held by a Byzantine worker whose behaviour never reads its data: no model depends on it"
GUARANTEE = ("exact: every published model is bit-identical to a retrain from scratch without the deleted ids "
             "(same config, seed and recorded schedule); `ostracon verify` recomputes it")
INTERRUPTED = ("the approximate update was interrupted before it was published (or the process restarted); "
               "the request was carried out exactly")


@dataclass
class ReplayResult:
    checkpoints: dict[tuple[int, int], dict] = field(default_factory=dict)
    gradient_evaluations: int = 0
    failures: list[dict] = field(default_factory=list)


@dataclass
class LiveWorkers:
    """A started backend holding the plan's workers, and the seeded initial states they had right after
    start (stage-0 replays begin there). Whoever started it owns it: replays never stop it."""

    backend: Backend
    initial: dict[int, dict]

    def reopen_stores(self, workers) -> None:
        """Make the live workers re-read their stores from disk after the driver changed them."""
        if workers:
            self.backend.call(sorted(workers), "reopen_store")


def start_workers(st: TrainedState, groups=None, backend: Backend | None = None) -> LiveWorkers:
    """Start the workers of ``groups`` (all by default) on ``backend`` (the config's by default)."""
    plan = st.plan
    groups = plan.groups if groups is None else sorted(groups)
    backend = backend or make_backend(st.config)
    backend.start([s for s in plan.specs if s.group in groups], plan.data)
    try:
        initial = backend.call([j for g in groups for j in plan.stateful(g)], "get_state")
    except BaseException:
        backend.shutdown()
        raise
    return LiveWorkers(backend, initial)


def replay_groups(st: TrainedState, starts: dict[int, int], live: LiveWorkers, on_round=None,
                  on_stage=None) -> ReplayResult:
    """Replay each group ``g`` of ``starts`` from stage ``starts[g]`` with the recorded schedule on the
    started workers of ``live``, writing staged checkpoints (``*.replay``); a worker failure redoes the
    group's stage. ``on_stage(stage, first, last)`` is told when each stage is checkpointed."""
    config, plan = st.config, st.plan
    backend = live.backend
    _, record = st.ledger.latest_version()
    store = st.checkpoints
    result = ReplayResult()
    session = Session(plan, backend, schedule=st.ledger.schedule(), replay_schedule=True,
                      max_stage_attempts=config.backend.max_restarts + 1)
    states: dict[int, dict] = {}
    first, last = min(starts.values()), config.unlearning.slices - 1
    for stage in range(first, last + 1):
        for g in sorted(g for g, k in starts.items() if k == stage):
            if stage == 0:
                states.update({j: live.initial[j] for j in plan.stateful(g)})
            else:
                states.update(store.states(g, stage - 1, sha256=record["checkpoints"][f"{g}/{stage - 1}"]["sha256"]))
        active = sorted(g for g, k in starts.items() if k <= stage)
        hook = (lambda t: on_round(t, backend)) if on_round is not None else None
        states = session.run_stage(active, stage, states, on_round=hook)
        for g, info in store.save_stage(plan, backend, states, active, stage, suffix=REPLAY_SUFFIX).items():
            result.checkpoints[(g, stage)] = {"data_digest": info["data_digest"], "sha256": info["sha256"]}
            faults.point(f"deletion.replayed:group-{g}/stage-{stage}")
        if on_stage is not None:
            on_stage(stage, first, last)
    result.gradient_evaluations = int(sum(session.gradient_evaluations.values()))
    result.failures = session.take_failures()
    return result


def replay_cold(st: TrainedState, starts: dict[int, int], backend: Backend | None, on_round=None,
                on_stage=None) -> ReplayResult:
    """The command line's replay: start the affected groups' workers, replay, shut them down."""
    live = start_workers(st, starts, backend)
    try:
        return replay_groups(st, starts, live, on_round, on_stage)
    finally:
        live.backend.shutdown()


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
        stage = record["debt"][str(g)]["earliest_stage"]
        repairs.append(f"approximate model of group {g} {problem}: group {g} replayed exactly from stage {stage}")
        starts[g] = min(starts.get(g, stage), stage)
    for g in list(starts):
        debt = record.get("debt", {}).get(str(g))
        if debt is not None:  # the checkpoints from the debt's stage on still carry approximately deleted ids
            starts[g] = min(starts[g], debt["earliest_stage"])
    for (g, s), problem in sorted(checkpoint_problems(st).items()):
        if s < starts.get(g, st.config.unlearning.slices):
            repairs.append(f"checkpoint group {g} stage {s} {problem}: group {g} replayed from stage {s}")
            log.warning("checkpoint of group %d, stage %d is %s; replaying the group from stage %d", g, s, problem, s)
        starts[g] = min(starts.get(g, s), s)
    return starts, not_replayed, repairs


def run_request(st: TrainedState, request: Request, backend: Backend | None = None, on_round=None,
                began: float | None = None, *, live: LiveWorkers | None = None, on_stage=None,
                phases: list[dict] | None = None) -> dict:
    """Carry a journaled request through every remaining step exactly; returns its certificate.

    With ``live`` (a warm cluster) the replay runs on its started workers, whose stores are re-read
    after the driver tombstones them; else ``backend`` (or the config's) is started and stopped.
    A request of an approximate mode ends here when its approximate update failed the gate
    (``phases`` says why), was interrupted, or (approximate_then_exact) for its exact phase."""
    began = time.perf_counter() if began is None else began
    ledger, config, plan = st.ledger, st.config, st.plan
    if request.step == PUBLISHED:
        return finish_published(st, request.id)
    hashes = ledger.store_hashes()
    repairs = sync_stores(st)
    if live is not None:
        now = ledger.store_hashes()
        live.reopen_stores([j for j in plan.data if now.get(j) != hashes.get(j)])
    if request.step == JOURNALED:
        ledger.set_step(request.id, TOMBSTONED)
    faults.point("deletion.tombstoned")
    version, record = ledger.latest_version()
    starts, not_replayed, checkpoint_repairs = replay_starts(st, request)
    repairs += checkpoint_repairs
    if not starts:
        result = ReplayResult()
    elif live is not None:
        result = replay_groups(st, starts, live, on_round, on_stage)
    else:
        result = replay_cold(st, starts, backend, on_round, on_stage)
    index = dict(record["checkpoints"])
    for (g, s), info in sorted(result.checkpoints.items()):
        sha = st.checkpoints.promote(g, s, REPLAY_SUFFIX)  # the old checkpoint trained on a deleted id: destroyed
        if sha != info["sha256"]:
            raise CheckpointError(f"checkpoint group {g} stage {s} changed on disk between its replay and its promotion")
        index[f"{g}/{s}"] = info
        faults.point(f"deletion.promoted:group-{g}/stage-{s}")
    approximate = {g: v for g, v in record.get("approximate", {}).items() if int(g) not in starts}
    debt = {g: v for g, v in record.get("debt", {}).items() if int(g) not in starts}  # replayed: cleared
    thetas = final_thetas(st, {"checkpoints": index, "approximate": approximate})
    worker_digests = {str(j): parameter_digest(as_tensor(theta)) for j, theta in sorted(thetas.items())}
    group_digests = {str(g): worker_digests[str(served_worker(plan, g))] for g in plan.groups}
    full_cost = ledger.versions()[0][2]["gradient_evaluations"]
    rounds = config.unlearning.slices
    new_version = version + 1
    cert = {
        "kind": certificates.KIND,
        "mode": "exact",
        "status": "deleted",
        "guarantee": GUARANTEE,
        **certificates.request_fields(st, request, version, new_version),
        "groups": {
            str(g): {
                "restarted_from_stage": k,
                "restored_checkpoint": None if k == 0 else f"{g}/{k - 1}",
                "replayed_stages": list(range(k, rounds)),
                "checkpoints_before": {str(s): record["checkpoints"][f"{g}/{s}"] for s in range(k, rounds)},
                "checkpoints_after": {str(s): index[f"{g}/{s}"] for s in range(k, rounds)},
                "digest_before": record["group_digests"][str(g)],
                "digest_after": group_digests[str(g)],
            }
            for g, k in sorted(starts.items())
        },
        "not_replayed": not_replayed,
        "not_replayed_reason": NO_REPLAY_REASON if not_replayed else None,
        "repairs": repairs,
        "failures": result.failures,
        "worker_digests": worker_digests,
        "group_digests": group_digests,
        "gradient_evaluations": result.gradient_evaluations,
        "full_retrain_gradient_evaluations": full_cost,
        "cost_ratio": round(result.gradient_evaluations / max(1, full_cost), 6),
        "evaluation": evaluate_version(st, thetas),
        "time": certificates.now(),
        "wall_time_s": elapsed(began),
    }
    if approximate or debt:  # other groups' approximate models and their debt stay as they were
        cert["guarantee"] = (GUARANTEE.replace("every published model", "every replayed group's model") +
                             f"; group(s) {', '.join(sorted(debt))} still serve approximate models (unlearning debt)")
    if request.mode != "exact":
        cert["requested_mode"] = request.mode
        cert["phases"] = _phases(st, request, phases, cert, thetas)
    new_record = {
        "worker_digests": worker_digests,
        "group_digests": group_digests,
        "served_workers": {str(g): served_worker(plan, g) for g in plan.groups},
        "checkpoints": index,
        "gradient_evaluations": full_cost,
        "evaluation": cert["evaluation"],
    }
    if approximate or debt:
        new_record.update(approximate=approximate, debt=debt)
    name = certificates.certificate_name(request.id, new_version)
    ledger.publish(request.id, new_version, new_record, (name, certificates.encode(cert)))
    faults.point("deletion.published")
    return finish_published(st, request.id)


def _phases(st: TrainedState, request: Request, phases: list[dict] | None, cert: dict, thetas) -> list[dict]:
    """The phases of an approximate-mode request that ends exactly: the approximate one (from the caller,
    from the version it published, or a note that it was interrupted), then this exact one."""
    if phases is None:
        published = st.ledger.version_of(request.id) if request.step == APPROXIMATED else None
        phases = [published[1]["phase"]] if published else [{"mode": "approximate", "outcome": INTERRUPTED}]
    exact = {"mode": "exact", "model_version_after": cert["model_version_after"],
             "gradient_evaluations": cert["gradient_evaluations"], "evaluation": cert["evaluation"],
             "groups": {str(g): {"metrics": summarize(group_metrics(st, g, thetas, group_data(st, g, ids)))}
                        for g, ids in sorted(forget_by_group(st, request.ids).items())}}
    return list(phases) + [exact]


def finish_published(st: TrainedState, request_id: int) -> dict:
    """The steps after the commit point, all derived from the ledger (idempotent)."""
    write_state_json(st.state_dir, st.ledger)
    faults.point("deletion.state_json")
    name, body = next((n, b) for n, (rid, _, b) in st.ledger.certificates().items() if rid == request_id)
    path = certificates.write_exclusive(st.state_dir, name, body)
    faults.point("deletion.certificate")
    update_outputs(st)
    st.ledger.set_step(request_id, DONE)
    faults.point("deletion.done")
    cert = json.loads(body)
    cert["certificate_path"] = path
    return cert


def recover(st: TrainedState, backend: Backend | None = None, on_round=None, *,
            live: LiveWorkers | None = None) -> list[dict]:
    """Finish every acknowledged request an earlier command left unfinished; returns their certificates."""
    certs = []
    for request in st.ledger.requests(unfinished_only=True):
        log.warning("finishing interrupted deletion request %d of %d id(s) (it stopped after step %r)",
                    request.id, len(request.ids), request.step)
        certs.append(run_request(st, request, backend, on_round, live=live))
        backend = None  # a cold backend serves one replay: the next one starts its own
    return certs


def abandon_request(st: TrainedState, request_id: int, live: LiveWorkers | None = None, also=None) -> list[str]:
    """Roll back a request whose replay kept failing, before anything was published: the ledger stops
    deleting its ids (``also(db)`` runs in that transaction), staged checkpoints are removed, and the
    stores (and the live workers) are made to agree with the ledger again. Returns the repairs."""
    st.ledger.abandon(request_id, also)
    for group in st.plan.groups:
        for stage in range(st.config.unlearning.slices):
            staged = st.checkpoints.path(group, stage, REPLAY_SUFFIX)
            if os.path.exists(staged):
                os.remove(staged)
    st.refresh()
    hashes = st.ledger.store_hashes()
    repairs = sync_stores(st)
    if live is not None:
        now = st.ledger.store_hashes()
        try:
            live.reopen_stores([j for j in st.plan.data if now.get(j) != hashes.get(j)])
        except Exception as exc:  # noqa: BLE001 - a dead worker rebuilds from the repaired store if it restarts
            log.warning("a live worker could not re-read its store after the rollback: %s", exc)
    return repairs


def published_states(st: TrainedState, record: dict, group: int) -> dict[int, dict]:
    """The published states of ``group``'s stateful workers (hash-checked): its approximate model if an
    approximate deletion updated it since its last replay, else its last stage checkpoint."""
    approximate = record.get("approximate", {}).get(str(group))
    if approximate is not None:
        return st.checkpoints.read_states(os.path.join(st.checkpoints.root, approximate["file"]), approximate["sha256"])
    last = st.config.unlearning.slices - 1
    return st.checkpoints.states(group, last, sha256=record["checkpoints"][f"{group}/{last}"]["sha256"])


def final_thetas(st: TrainedState, record: dict) -> dict[int, np.ndarray]:
    """Every honest worker's published parameters (``record``: a version record, or at least its
    ``checkpoints`` index and ``approximate`` models)."""
    out = {}
    for g in st.plan.groups:
        states = published_states(st, record, g)
        out.update({j: states[j]["theta"] for j in st.plan.honest(g)})
    return out


def evaluate_version(st: TrainedState, thetas: dict[int, np.ndarray]) -> dict:
    plan = st.plan
    if len(plan.test_labels) == 0:
        return {"honest_test_accuracy": None, "ensemble_test_accuracy": None}
    acc = {j: evaluate(plan.specs[j], theta, plan.test_features, plan.test_labels)[0] for j, theta in thetas.items()}
    served = [served_worker(plan, g) for g in plan.groups]
    ensemble = ensemble_accuracy([plan.specs[j] for j in served], [thetas[j] for j in served],
                                 plan.test_features, plan.test_labels, st.config.unlearning.vote)
    return {"honest_test_accuracy": _stats(list(acc.values())), "ensemble_test_accuracy": round(ensemble, 6)}


def update_outputs(st: TrainedState) -> None:
    """``summary.json``, ``metrics.jsonl`` and ``accuracy.png`` show every published version."""
    versions = [{"model_version": v, **rec["evaluation"]} for v, _, rec in st.ledger.versions()]
    latest_version, latest = st.ledger.latest_version()
    summary_path = os.path.join(st.state_dir, "summary.json")
    try:
        with open(summary_path) as fh:
            summary = json.load(fh)
    except (OSError, ValueError):
        summary = {}
    summary.update({"model_version": latest_version, "worker_digests": latest["worker_digests"],
                    "group_digests": latest["group_digests"], "versions": versions,
                    "honest_test_accuracy": latest["evaluation"]["honest_test_accuracy"],
                    "ensemble_test_accuracy": latest["evaluation"]["ensemble_test_accuracy"],
                    "deleted_samples": len(st.published_ids())})
    _write_json(summary_path, summary)
    metrics_path = os.path.join(st.state_dir, "metrics.jsonl")
    rows = []
    if os.path.exists(metrics_path):
        with open(metrics_path) as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    rows = [r for r in rows if r.get("kind") != "model_version"]
    rows += [{"kind": "model_version", **v} for v in versions]
    tmp = metrics_path + ".tmp"
    with open(tmp, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, metrics_path)
    if versions[-1]["ensemble_test_accuracy"] is not None:
        write_accuracy_plot([r for r in rows if "round" in r], os.path.join(st.state_dir, "accuracy.png"),
                            title=plot_title(st.config), versions=versions)
