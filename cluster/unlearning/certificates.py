"""Deletion certificates: built once, kept in the ledger byte for byte, written exclusively.

A certificate file is never overwritten: it is created with ``os.link`` from a synced temporary
file (atomic, and fails if the name exists). Rewriting one after a crash is a no-op when the bytes
agree with the ledger, and an error when they do not.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ostracon.nodes.durable import create_exclusive

from ..errors import OstraconError
from ..storage.records import CERTIFICATE_KIND, Certificate, Request
from ..vocabulary import CertificateStatus, DeletionMode

if TYPE_CHECKING:
    from .trained import TrainedState

KIND = CERTIFICATE_KIND
DIRECTORY = "certificates"


class CertificateConflictError(OstraconError, RuntimeError):
    """A certificate file exists with other content than the ledger's: it is never overwritten."""


def certificate_name(request_id: int, version: int) -> str:
    return f"deletion-{request_id:06d}-v{version}.json"


def certificate_path(state_dir: str | os.PathLike[str], cert: Certificate) -> str:
    """Where ``cert`` is written in ``state_dir``."""
    return os.path.join(os.fspath(state_dir), DIRECTORY, certificate_name(cert.request_id, cert.model_version_after))


def write_exclusive(state_dir: str, name: str, body: str) -> str:
    """Create ``certificates/name`` holding ``body``; if it exists it must hold exactly ``body``."""
    path = os.path.join(state_dir, DIRECTORY, name)
    if create_exclusive(path, body.encode("utf-8")):
        return path
    with open(path, encoding="utf-8") as fh:
        if fh.read() == body:
            return path
    raise CertificateConflictError(f"{path} exists with other content than the ledger records; "
                                   "certificates are never overwritten (run `ostracon verify`)")


def request_fields(st: TrainedState, request: Request, version_before: int, version_after: int) -> dict[str, Any]:
    """What every certificate of a deletion request states: what was asked, what it deleted, where each id
    was, and the model versions it went between (``st``: the opened state, for the ids' placement)."""
    return {
        "request_id": request.id,
        "requested": request.requested,
        "deleted": request.ids,
        "already_deleted": request.already_deleted,
        "placement": {i: st.deletions[i].placement for i in request.ids},
        "model_version_before": version_before,
        "model_version_after": version_after,
    }


def _format_approximate(cert: Mapping[str, Any]) -> str:
    lines = [f"deleted {len(cert['deleted'])} id(s) APPROXIMATELY with {cert['method']} "
             f"(request {cert['request_id']}); "
             f"model version {cert['model_version_before']} -> {cert['model_version_after']}"]
    for g, row in cert["groups"].items():
        before, after = row["metrics_before"], row["metrics_after"]

        def mean(metrics: Mapping[str, Any], key: str) -> str:
            return "n/a" if metrics.get(key) is None else f"{metrics[key]['mean']:.3f}"

        forget_before = "n/a" if before.get("UA") is None else f"{1 - before['UA']['mean']:.3f}"
        forget_after = "n/a" if after.get("UA") is None else f"{1 - after['UA']['mean']:.3f}"
        lines.append(f"  group {g}: gate passed; forget-set accuracy {forget_before} -> {forget_after}, test accuracy "
                     f"{mean(before, 'TA')} -> {mean(after, 'TA')}, MIA-efficacy {mean(after, 'MIA')}")
    for g, debt in cert.get("unlearning_debt", {}).items():
        lines.append(f"  unlearning debt: group {g} ({len(debt['ids'])} id(s)) from stage {debt['earliest_stage']}: "
                     "`ostracon verify` reports it as approximate; the next exact replay of the group clears it")
    if cert.get("not_updated"):
        lines.append(f"  no update needed for {len(cert['not_updated'])} id(s) held by workers that never read "
                     "their data")
    lines.append(_cost_line(cert))
    if cert.get("certificate_path"):
        lines.append(f"  certificate: {cert['certificate_path']}")
    return "\n".join(lines)


def _cost_line(cert: Mapping[str, Any]) -> str:
    return (f"  cost: {cert['gradient_evaluations']} gradient evaluations vs "
            f"{cert['full_retrain_gradient_evaluations']} for a full retrain (ratio {cert['cost_ratio']:.3f}); "
            f"{cert['wall_time_s']:.2f}s")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def format_certificate(cert: Mapping[str, Any]) -> str:
    """A few lines for a terminal (``cert``: a certificate as JSON data, from disk or the service)."""
    if cert["status"] == CertificateStatus.NOOP:
        return (f"nothing to delete: {len(cert['already_deleted'])} id(s) already deleted "
                f"(model version {cert['model_version']})")
    if cert["mode"] == DeletionMode.APPROXIMATE:
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
