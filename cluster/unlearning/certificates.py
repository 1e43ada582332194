"""Deletion certificates: built once, kept in the ledger byte for byte, written exclusively.

A certificate file is never overwritten: it is created with ``os.link`` from a synced temporary
file (atomic, and fails if the name exists). Rewriting one after a crash is a no-op when the bytes
agree with the ledger, and an error when they do not.
"""

from __future__ import annotations

import json
import os
import time

from ..errors import OstraconError
from ..statedir import fsync_dir

KIND = "ostracon.deletion_certificate/v1"
DIRECTORY = "certificates"


class CertificateConflictError(OstraconError, RuntimeError):
    """A certificate file exists with other content than the ledger's: it is never overwritten."""


def certificate_name(request_id: int, version: int) -> str:
    return f"deletion-{request_id:06d}-v{version}.json"


def encode(cert: dict) -> str:
    return json.dumps(cert, indent=2, sort_keys=True) + "\n"


def write_exclusive(state_dir: str, name: str, body: str) -> str:
    """Create ``certificates/name`` holding ``body``; if it exists it must hold exactly ``body``."""
    directory = os.path.join(state_dir, DIRECTORY)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            if fh.read() == body:
                return path
        raise CertificateConflictError(f"{path} exists with other content than the ledger records; "
                                       "certificates are never overwritten (run `ostracon verify`)")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)
    finally:
        os.remove(tmp)
    fsync_dir(directory)
    return path


def _format_approximate(cert: dict) -> str:
    lines = [f"deleted {len(cert['deleted'])} id(s) APPROXIMATELY with {cert['method']} (request {cert['request_id']}); "
             f"model version {cert['model_version_before']} -> {cert['model_version_after']}"]
    for g, row in cert["groups"].items():
        before, after = row["metrics_before"], row["metrics_after"]

        def mean(metrics, key):
            return "n/a" if metrics.get(key) is None else f"{metrics[key]['mean']:.3f}"

        forget_before = "n/a" if before.get("UA") is None else f"{1 - before['UA']['mean']:.3f}"
        forget_after = "n/a" if after.get("UA") is None else f"{1 - after['UA']['mean']:.3f}"
        lines.append(f"  group {g}: gate passed; forget-set accuracy {forget_before} -> {forget_after}, test accuracy "
                     f"{mean(before, 'TA')} -> {mean(after, 'TA')}, MIA-efficacy {mean(after, 'MIA')}")
    for g, debt in cert.get("unlearning_debt", {}).items():
        lines.append(f"  unlearning debt: group {g} ({len(debt['ids'])} id(s)) from stage {debt['earliest_stage']}: "
                     "`ostracon verify` reports it as approximate; the next exact replay of the group clears it")
    if cert.get("not_updated"):
        lines.append(f"  no update needed for {len(cert['not_updated'])} id(s) held by workers that never read their data")
    lines.append(_cost_line(cert))
    if cert.get("certificate_path"):
        lines.append(f"  certificate: {cert['certificate_path']}")
    return "\n".join(lines)


def request_fields(st, request, version_before: int, version_after: int) -> dict:
    """What every certificate of a deletion request states: what was asked, what it deleted, where each id
    was, and the model versions it went between (``st``: the opened state, for the ids' placement)."""
    return {
        "request_id": request.id,
        "requested": request.requested,
        "deleted": request.ids,
        "already_deleted": [i for i in request.requested if i not in set(request.ids)],
        "placement": {i: {"group": st.deletions[i].group, "worker": st.deletions[i].worker,
                          "slice": st.deletions[i].slice} for i in request.ids},
        "model_version_before": version_before,
        "model_version_after": version_after,
    }


def _cost_line(cert: dict) -> str:
    return (f"  cost: {cert['gradient_evaluations']} gradient evaluations vs "
            f"{cert['full_retrain_gradient_evaluations']} for a full retrain (ratio {cert['cost_ratio']:.3f}); "
            f"{cert['wall_time_s']:.2f}s")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def format_certificate(cert: dict) -> str:
    """A few lines for a terminal."""
    if cert["status"] == "noop":
        return (f"nothing to delete: {len(cert['already_deleted'])} id(s) already deleted "
                f"(model version {cert['model_version']})")
    if cert["mode"] == "approximate":
        return _format_approximate(cert)
    lines = [f"deleted {len(cert['deleted'])} id(s) exactly (request {cert['request_id']}); model version "
             f"{cert['model_version_before']} -> {cert['model_version_after']}"]
    for phase in cert.get("phases", [])[:-1]:
        lines.append(f"  requested {cert['requested_mode']}: approximate phase"
                     f"{' (' + phase['method'] + ')' if phase.get('method') else ''}: {phase['outcome']}"
                     + (f" (model version {phase['model_version_after']})" if phase.get("model_version_after") else ""))
    for g, row in cert["groups"].items():
        why = f" ({row['reason']})" if row.get("reason") else ""
        lines.append(f"  group {g}: replayed stages {row['replayed_stages']} from "
                     f"{row['restored_checkpoint'] or 'the initial model'}{why}; digest {row['digest_after'][:16]}")
    if cert.get("not_replayed"):
        lines.append(f"  no replay needed for {len(cert['not_replayed'])} id(s): held by workers that never read "
                     "their data (Byzantine attackers); tombstoned only")
    for repair in cert.get("repairs", []):
        lines.append(f"  repaired: {repair}")
    if cert.get("failures"):
        lines.append(f"  worker failures survived: {len(cert['failures'])} (stages redone; see the certificate)")
    lines.append(_cost_line(cert))
    if cert.get("already_deleted"):
        lines.append(f"  already deleted before (no-op): {', '.join(cert['already_deleted'])}")
    if cert.get("certificate_path"):
        lines.append(f"  certificate: {cert['certificate_path']}")
    return "\n".join(lines)
