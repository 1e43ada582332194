"""``ostracon verify``: audit the whole chain of a state directory, read-only.

Ledger -> tombstone logs -> store files -> certificates -> ``state.json`` -> checkpoint hashes,
then a retrain from scratch on the source data minus the ledger's published deletions (with the
recorded schedule), compared digest for digest with the published version. Each kind of mismatch
is a distinct, named failure; a request that was acknowledged but not yet applied is reported as
pending, not as a mismatch. Nothing in the state directory is modified.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import SourceChangedError
from ..execution.training import train
from ..storage import statedir
from ..storage.ledger import LedgerError
from . import certificates
from .trained import (
    TrainedState,
    approximate_problems,
    checkpoint_problems,
    live_ids,
    open_state,
    recorded_digests,
    state_json_problems,
    store_problems,
    stored_ids,
)

log = logging.getLogger(__name__)

# Every failure verify can report: one name per kind of mismatch.
FAILURES = {
    "LEDGER_CORRUPT": "the deletion ledger is missing, unreadable or inconsistent",
    "SOURCE_CHANGED": "the source data differs from the data the state was trained on",
    "TOMBSTONE_MISMATCH": "a store's tombstone log differs from the ledger",
    "STORE_MISSING": "a worker's shard store is missing",
    "STORE_HASH_MISMATCH": "a store's rows.npz differs from its recorded sha256",
    "DELETED_ID_LIVE": "an id the ledger deleted is still present in a store",
    "CERTIFICATE_MISSING": "a certificate recorded in the ledger has no file",
    "CERTIFICATE_ALTERED": "a certificate file differs from the ledger's copy",
    "CERTIFICATE_UNKNOWN": "a certificate file the ledger never issued",
    "CERTIFIED_ID_NOT_DELETED": "a certificate lists an id that is live or not in the ledger",
    "STATE_JSON_MISMATCH": "state.json differs from the ledger's published version",
    "CHECKPOINT_MISSING": "a stage checkpoint is missing",
    "CHECKPOINT_HASH_MISMATCH": "a stage checkpoint differs from its recorded sha256",
    "MODEL_MISMATCH": "a published model differs from a retrain from scratch",
    "APPROXIMATE_NOT_VERIFIABLE": "a group serves an approximately unlearned model (unlearning debt): it cannot "
                                  "match a retrain; pass --allow-approximate to accept it",
}


def verify_state_dir(state_dir: str | os.PathLike[str], *, overrides: Mapping[str, Any] | None = None,
                     retrain: bool = True, allow_approximate: bool = False) -> dict[str, Any]:
    """Audit ``state_dir``; returns ``{"ok", "failures": [{"name", "detail"}], "pending", "groups",
    "approximate", ...}``. A group with unlearning debt is never a match: it is reported under
    ``approximate`` and fails as APPROXIMATE_NOT_VERIFIABLE unless ``allow_approximate``."""
    state_dir = os.fspath(state_dir)
    report: dict[str, Any] = {"state_dir": state_dir, "ok": False, "failures": [], "pending": [], "groups": {},
                    "approximate": {}, "allow_approximate": allow_approximate,
                    "deleted": 0, "model_version": None, "checks": []}
    statedir.require_state(state_dir)
    with statedir.exclusive(state_dir, "verify"):
        try:
            st = open_state(state_dir, overrides, readonly=True)
        except LedgerError as exc:
            _fail(report, "LEDGER_CORRUPT", str(exc))
            return report
        except SourceChangedError as exc:
            _fail(report, "SOURCE_CHANGED", str(exc))
            return report
        try:
            _audit(st, report, retrain, allow_approximate)
        finally:
            st.close()
    report["ok"] = not report["failures"]
    return report


def _fail(report: dict[str, Any], name: str, detail: str) -> None:
    report["failures"].append({"name": name, "detail": detail})


def _audit(st: TrainedState, report: dict[str, Any], retrain: bool, allow_approximate: bool) -> None:
    ledger = st.ledger
    version, record = ledger.latest_version()
    report["model_version"] = version
    unfinished = ledger.requests(unfinished_only=True)
    pending_ids = {i for r in unfinished for i in r.ids}
    pending_workers = {st.deletions[i].worker for i in pending_ids}
    pending_groups = {st.deletions[i].group for i in pending_ids}
    report["pending"] = [{"request_id": r.id, "ids": len(r.ids), "step": r.step.value} for r in unfinished]
    published = st.published_ids()
    report["deleted"] = len(published)

    report["checks"].append("stores")
    for j, problem in store_problems(st, pending=pending_ids).items():
        if j in pending_workers:
            continue  # a request is half-applied here: pending, not a mismatch
        if problem.startswith("missing"):
            _fail(report, "STORE_MISSING", f"worker {j}: {problem}")
        elif problem.startswith("rows.npz"):
            _fail(report, "STORE_HASH_MISMATCH", f"worker {j}: {problem}")
        else:
            _fail(report, "TOMBSTONE_MISMATCH", f"worker {j}: {problem}")
    stored = stored_ids(st)  # every store's ids, read once for the deletion and certificate checks
    live = live_ids(stored, published)
    for j, ids in live.items():
        _fail(report, "DELETED_ID_LIVE", f"worker {j} still holds deleted id(s) {', '.join(ids[:10])}")

    report["checks"].append("certificates")
    _audit_certificates(st, report, stored)

    report["checks"].append("state.json")
    if not any(r.step.is_published for r in unfinished):  # else it may show the version before
        for problem in state_json_problems(st):
            _fail(report, "STATE_JSON_MISMATCH", problem)

    report["checks"].append("checkpoints")
    for (g, s), problem in checkpoint_problems(st).items():
        if g in pending_groups:
            continue
        name = "CHECKPOINT_MISSING" if problem == "missing" else "CHECKPOINT_HASH_MISMATCH"
        _fail(report, name, f"{st.checkpoints.path(g, s)}: {problem}")
    for g, problem in approximate_problems(st).items():
        if g in pending_groups:
            continue
        name = "CHECKPOINT_MISSING" if problem == "missing" else "CHECKPOINT_HASH_MISMATCH"
        model = record.approximate_model(g)
        _fail(report, name, f"approximate model of group {g} ({model.file if model else '?'}): {problem}")

    debt = record.debts
    for key, owed in sorted(debt.items()):
        report["approximate"][key] = {"ids": len(owed.ids), "earliest_stage": owed.earliest_stage}
        if not allow_approximate and int(key) not in pending_groups:  # pending: its exact phase is still to run
            _fail(report, "APPROXIMATE_NOT_VERIFIABLE",
                  f"group {key}: approximate, not verifiable ({len(owed.ids)} id(s) deleted approximately; its "
                  f"checkpoints from stage {owed.earliest_stage} on still carry them)")

    if not retrain:
        return
    report["checks"].append("retrain")
    log.info("retraining from scratch without the %d deleted id(s) to compare digests", len(published))
    try:
        result = train(st.config, None, progress=False, exclude=published, index=st.index,
                       schedule=ledger.schedule(), digests=recorded_digests(ledger))
    except SourceChangedError as exc:  # a worker's rows of the source changed since training
        _fail(report, "SOURCE_CHANGED", str(exc))
        return
    got = result.summary
    indebted_workers = {str(j) for key in debt for j in st.plan.group_workers(int(key))}
    for key, expected in sorted(record.group_digests.items()):
        recomputed = got["group_digests"][key]
        if key in debt:  # approximate: never compared, never a match
            report["groups"][key] = {"expected": expected, "recomputed": recomputed, "match": None,
                                     "approximate": True}
            continue
        report["groups"][key] = {"expected": expected, "recomputed": recomputed, "match": expected == recomputed}
        if expected != recomputed:
            _fail(report, "MODEL_MISMATCH", f"group {key}: published {expected[:16]} != retrain {recomputed[:16]}")
    for j, digest in sorted(got["worker_digests"].items()):
        if j not in indebted_workers and record.worker_digests.get(j) != digest:
            _fail(report, "MODEL_MISMATCH", f"worker {j}: published {str(record.worker_digests.get(j))[:16]} "
                                            f"!= retrain {digest[:16]}")


def _audit_certificates(st: TrainedState, report: dict[str, Any], stored: Mapping[int, np.ndarray]) -> None:
    directory = os.path.join(st.state_dir, certificates.DIRECTORY)
    issued = st.ledger.certificates()
    on_disk = sorted(n for n in os.listdir(directory) if n.endswith(".json")) if os.path.isdir(directory) else []
    pending_requests = {r.id for r in st.ledger.requests(unfinished_only=True)}
    for name, (rid, _, body) in sorted(issued.items()):
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            if rid not in pending_requests:
                _fail(report, "CERTIFICATE_MISSING", f"{path} (request {rid})")
            continue
        with open(path, encoding="utf-8", errors="replace") as fh:
            if fh.read() != body:
                _fail(report, "CERTIFICATE_ALTERED", f"{path} differs from the ledger's copy")
    listed: dict[str, list[Any]] = {}
    for name in on_disk:
        path = os.path.join(directory, name)
        if name not in issued:
            _fail(report, "CERTIFICATE_UNKNOWN", f"{path} was not issued by this state's ledger")
        try:
            with open(path, encoding="utf-8") as fh:
                listed[path] = list(json.load(fh).get("deleted", []))
        except (ValueError, UnicodeDecodeError, AttributeError, TypeError):
            continue  # unreadable: already reported as altered or unknown
    # A certified id is wrong if the ledger never deleted it or any store holds it now, whatever the ledger says.
    certified = {i for ids in listed.values() for i in ids if isinstance(i, str)}
    live_now = {i for ids in live_ids(stored, certified).values() for i in ids}
    for path, ids in listed.items():
        wrong = [i for i in ids if not isinstance(i, str) or i not in st.deletions or i in live_now]
        if wrong:
            _fail(report, "CERTIFIED_ID_NOT_DELETED",
                  f"{path} lists id(s) that are live or not in the ledger: {', '.join(map(str, wrong[:10]))}")


def format_report(report: Mapping[str, Any]) -> str:
    lines = []
    for g, row in sorted(report["groups"].items()):
        if row.get("approximate"):
            debt = report["approximate"][g]
            lines.append(f"group {g}: APPROXIMATE, not verifiable ({debt['ids']} id(s) deleted approximately; "
                         f"unlearning debt from stage {debt['earliest_stage']})")
            continue
        lines.append(f"group {g}: {'MATCH' if row['match'] else 'MISMATCH'} expected {row['expected'][:16]} "
                     f"recomputed {row['recomputed'][:16]}")
    for f in report["failures"]:
        lines.append(f"FAILED {f['name']}: {f['detail']}")
    for p in report["pending"]:
        lines.append(f"PENDING request {p['request_id']} ({p['ids']} id(s), stopped after step {p['step']!r}): "
                     f"acknowledged, not yet applied; `ostracon unlearn --state-dir {report['state_dir']} --resume` "
                     "finishes it")
    if report["failures"]:
        names = sorted({f["name"] for f in report["failures"]})
        lines.append(f"verification FAILED: {len(report['failures'])} problem(s): {', '.join(names)}")
    else:
        approximate = sorted(report.get("approximate", {}))
        exact_groups = "" if not approximate else \
            f" (group(s) {', '.join(approximate)} approximate, not verifiable: accepted by --allow-approximate)"
        lines.append(f"verified: model version {report['model_version']} ({report['deleted']} deleted id(s)) matches "
                     "the ledger, the stores, the certificates and a retrain from scratch" + exact_groups
                     + ("; some requests are pending" if report["pending"] else ""))
    return "\n".join(lines)
