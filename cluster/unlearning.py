"""Exact unlearning: SISA over MoNNA.

Deleting sample ``x`` (worker ``j``, slice ``k``) from a trained state
directory: validate every id first (nothing changes on a bad request),
journal the request, tombstone the ids durably in the workers' shard stores,
restore each affected group's checkpoint from the end of stage ``k - 1``
(``k = 0``: the seeded initial model) and replay stages ``k..R-1``. Ids that
land in one group are coalesced into one replay from the earliest affected
stage. When every replay is complete the new checkpoints replace the old ones
(which trained on the deleted ids, and are destroyed), the new model version
is published, and a certificate is written.

Every draw is seeded by ``(seed, node, stage, step)`` and every sample's
placement depends only on its id, so the replayed models are bit-identical to
training from scratch on the surviving data (``verify_state_dir`` checks it).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Iterable, Mapping


from ostracon.nodes.models import parameter_digest
from ostracon.nodes.seeding import set_deterministic
from ostracon.nodes.shard_store import ShardStore

from .backends import Backend, make_backend
from .checkpoints import CheckpointStore, fsync_dir
from .config import Config, load
from .errors import RequestError
from .plan import RunPlan, make_plan
from .protocols import Session, elapsed
from .training import as_tensor, _write_json, served_worker, train

log = logging.getLogger(__name__)

MODES = ("exact",)
PENDING = "pending.json"
REPLAY_SUFFIX = ".replay"


class UnlearningError(RequestError):
    """A deletion request that cannot be carried out as given; nothing was changed."""


def load_state(state_dir: str | os.PathLike, overrides: Mapping | None = None) -> tuple[Config, dict]:
    state_dir = os.fspath(state_dir)
    state_path = os.path.join(state_dir, "state.json")
    if not os.path.isfile(state_path):
        raise FileNotFoundError(f"{state_dir} is not a trained state directory (no state.json); run `ostracon train -o` first")
    with open(state_path) as fh:
        state = json.load(fh)
    return load(os.path.join(state_dir, "config.json"), dict(overrides or {})), state


def locate(plan: RunPlan) -> dict[str, tuple[int, int, int]]:
    """Every training id -> (group, worker, slice), from the original data's placement."""
    where = {}
    for j, data in plan.data.items():
        g = plan.specs[j].group
        for sid, s in zip(data.ids.tolist(), data.slices.tolist()):
            where[sid] = (g, j, int(s))
    return where


def tombstoned(plan: RunPlan) -> set[str]:
    out: set[str] = set()
    for data in plan.data.values():
        if data.store_path and os.path.isdir(data.store_path):
            out |= ShardStore.read_tombstones(data.store_path)  # the log alone: no need to load the rows
    return out


def validate_request(ids: Iterable[str], where: Mapping[str, tuple], deleted: set[str],
                     test_ids: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """Split a request into (ids to delete now, ids already deleted); raise on anything malformed."""
    ids = list(ids)
    if not ids:
        raise UnlearningError("empty deletion request: give at least one sample id")
    bad_type = [repr(i) for i in ids if not isinstance(i, str) or not i]
    if bad_type:
        raise UnlearningError(f"sample ids must be non-empty strings, got: {', '.join(bad_type[:20])}")
    seen, dupes = set(), []
    for i in ids:
        if i in seen and i not in dupes:
            dupes.append(i)
        seen.add(i)
    if dupes:
        raise UnlearningError(f"duplicate sample id(s) in the request: {', '.join(dupes[:20])}")
    held_out = set(test_ids)
    in_test = [i for i in ids if i not in where and i in held_out]
    if in_test:
        raise UnlearningError(
            f"sample id(s) in the held-out test split, never trained on: {', '.join(in_test[:20])}"
        )
    unknown = [i for i in ids if i not in where]
    if unknown:
        more = f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else ""
        raise UnlearningError(f"unknown sample id(s) (not in the training data): {', '.join(unknown[:20])}{more}")
    already = [i for i in ids if i in deleted]
    return [i for i in ids if i not in deleted], already


def unlearn_state_dir(state_dir: str | os.PathLike, ids: Iterable[str], mode: str = "exact", *,
                      overrides: Mapping | None = None, backend: Backend | None = None) -> dict:
    """Delete ``ids`` from a trained state directory; returns the certificate (also written to disk)."""
    if mode not in MODES:
        raise UnlearningError(f"unknown mode {mode!r}; supported: {', '.join(MODES)}")
    began = time.perf_counter()
    state_dir = os.fspath(state_dir)
    config, state = load_state(state_dir, overrides)
    if config.deterministic:
        set_deterministic(config.threads)
    plan = make_plan(config, state_dir=state_dir)
    pending_path = os.path.join(state_dir, PENDING)
    if os.path.exists(pending_path):
        # A previous request was acknowledged (tombstoned) but its replay did not finish: finish it first.
        with open(pending_path) as fh:
            pending = json.load(fh)
        log.warning("finishing interrupted deletion of %d id(s) first", len(pending["ids"]))
        _replay_and_publish(state_dir, config, state, plan, pending, backend, began)
        config, state = load_state(state_dir, overrides)
        backend = None  # the previous backend was shut down
    where = locate(plan)
    fresh, already = validate_request(ids, where, tombstoned(plan), plan.test_ids.tolist())
    if not fresh:
        cert = _certificate_base(list(ids), where, state)
        cert.update({"status": "noop", "already_deleted": already, "wall_time_s": elapsed(began)})
        return cert
    groups: dict[int, int] = {}
    for i in fresh:
        g, _, s = where[i]
        groups[g] = min(groups.get(g, s), s)
    pending = {"ids": fresh, "already_deleted": already, "groups": {str(g): k for g, k in groups.items()},
               "model_version": state["model_version"], "requested": list(ids)}
    _write_json(pending_path, pending)  # journal first: the request is durable before any store changes
    by_worker: dict[int, list[str]] = {}
    for i in fresh:
        by_worker.setdefault(where[i][1], []).append(i)
    for j, worker_ids in sorted(by_worker.items()):
        ShardStore.from_arrays(*(getattr(plan.data[j], a) for a in ("ids", "features", "labels", "slices")),
                               path=plan.data[j].store_path).delete(worker_ids)
    return _replay_and_publish(state_dir, config, state, plan, pending, backend, began, where)


def _replay_and_publish(state_dir: str, config: Config, state: dict, plan: RunPlan, pending: dict,
                        backend: Backend | None, began: float, where: Mapping | None = None) -> dict:
    groups = {int(g): k for g, k in pending["groups"].items()}
    checkpoints = CheckpointStore(state_dir)
    backend = backend or make_backend(config)
    specs = [s for s in plan.specs if s.group in groups]
    data_digests: dict[tuple[int, int], str] = {}
    try:
        backend.start(specs, plan.data)  # stores re-open from disk: tombstones applied
        session = Session(plan, backend)
        for stage in range(min(groups.values()), config.unlearning.slices):
            starting = [g for g, k in groups.items() if k == stage]
            if stage > 0:
                for g in starting:
                    session.load_states(checkpoints.states(g, stage - 1))
            active = sorted(g for g, k in groups.items() if k <= stage)
            session.run_stage(active, stage)
            for g, info in checkpoints.save_stage(plan, session, active, stage, suffix=REPLAY_SUFFIX).items():
                data_digests[(g, stage)] = info["data_digest"]
        session.flush(sorted(groups))
        params = session.honest_parameters(sorted(groups))
        replay_cost = int(sum(session.gradient_evaluations.values()))
    finally:
        backend.shutdown()

    # The replacements are complete: destroy every checkpoint that trained on a deleted id.
    before = dict(state["checkpoints"])
    index = dict(before)
    for g, k in sorted(groups.items()):
        for stage in range(k, config.unlearning.slices):
            sha = checkpoints.promote(g, stage, REPLAY_SUFFIX)
            index[f"{g}/{stage}"] = {"data_digest": data_digests[(g, stage)], "sha256": sha}
    worker_digests = dict(state["worker_digests"])
    group_digests = dict(state["group_digests"])
    for j, theta in params.items():
        worker_digests[str(j)] = parameter_digest(as_tensor(theta))
    for g in groups:
        group_digests[str(g)] = worker_digests[str(served_worker(plan, g))]
    version = state["model_version"] + 1
    cert = _certificate_base(pending["requested"], where or locate(plan), state)
    cert.update({
        "status": "deleted",
        "deleted": pending["ids"],
        "already_deleted": pending["already_deleted"],
        "model_version_before": state["model_version"],
        "model_version_after": version,
        "groups": {
            str(g): {
                "restarted_from_stage": k,
                "restored_checkpoint": None if k == 0 else f"{g}/{k - 1}",
                "replayed_stages": list(range(k, config.unlearning.slices)),
                "checkpoints_before": {s: before[f"{g}/{s}"] for s in range(k, config.unlearning.slices)},
                "checkpoints_after": {s: index[f"{g}/{s}"] for s in range(k, config.unlearning.slices)},
                "digest_before": state["group_digests"][str(g)],
                "digest_after": group_digests[str(g)],
            }
            for g, k in sorted(groups.items())
        },
        "worker_digests": worker_digests,
        "group_digests": group_digests,
        "gradient_evaluations": replay_cost,
        "full_retrain_gradient_evaluations": state["gradient_evaluations"],
        "cost_ratio": round(replay_cost / max(1, state["gradient_evaluations"]), 6),
        "wall_time_s": elapsed(began),
    })
    cert_dir = os.path.join(state_dir, "certificates")
    os.makedirs(cert_dir, exist_ok=True)
    cert_path = os.path.join(cert_dir, f"deletion-v{version}.json")
    _write_json(cert_path, cert)
    cert["certificate_path"] = cert_path
    state = dict(state, model_version=version, worker_digests=worker_digests, group_digests=group_digests,
                 checkpoints=index)
    _write_json(os.path.join(state_dir, "state.json"), state)  # publish the new model version
    os.remove(os.path.join(state_dir, PENDING))
    fsync_dir(state_dir)
    return cert


def _certificate_base(requested: list, where: Mapping, state: dict) -> dict:
    return {
        "kind": "ostracon.deletion_certificate/v1",
        "mode": "exact",
        "requested": list(requested),
        "placement": {i: {"group": where[i][0], "worker": where[i][1], "slice": where[i][2]}
                      for i in requested if i in where},
        "model_version": state["model_version"],
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def verify_state_dir(state_dir: str | os.PathLike, *, overrides: Mapping | None = None) -> dict:
    """Retrain from scratch on the surviving data (recorded config and seed) and compare parameter digests."""
    config, state = load_state(state_dir, overrides)
    from .plan import load_config_dataset

    plan = make_plan(config, state_dir=state_dir)
    deleted = tombstoned(plan)
    dataset = load_config_dataset(config).without(deleted)
    result = train(config, None, progress=False, dataset=dataset)
    groups = {}
    for g, expected in sorted(state["group_digests"].items()):
        got = result.summary["group_digests"][g]
        groups[g] = {"expected": expected, "recomputed": got, "match": expected == got}
    workers_match = all(state["worker_digests"][j] == d for j, d in result.summary["worker_digests"].items())
    return {"ok": workers_match and all(r["match"] for r in groups.values()), "groups": groups,
            "workers_match": workers_match, "deleted": len(deleted)}


def format_certificate(cert: dict) -> str:
    if cert["status"] == "noop":
        return f"nothing to delete: {len(cert['already_deleted'])} id(s) already deleted (model version {cert['model_version']})"
    lines = [f"deleted {len(cert['deleted'])} id(s); model version {cert['model_version_before']} -> "
             f"{cert['model_version_after']}"]
    for g, row in cert["groups"].items():
        lines.append(f"  group {g}: replayed stages {row['replayed_stages']} from "
                     f"{row['restored_checkpoint'] or 'the initial model'}; digest {row['digest_after'][:16]}")
    lines.append(f"  cost: {cert['gradient_evaluations']} gradient evaluations vs "
                 f"{cert['full_retrain_gradient_evaluations']} for a full retrain (ratio {cert['cost_ratio']:.3f}); "
                 f"{cert['wall_time_s']:.2f}s")
    if cert.get("already_deleted"):
        lines.append(f"  already deleted before (no-op): {', '.join(cert['already_deleted'])}")
    if cert.get("certificate_path"):
        lines.append(f"  certificate: {cert['certificate_path']}")
    return "\n".join(lines)
